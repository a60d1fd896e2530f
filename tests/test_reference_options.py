"""The reference-code protocol options: config rules, drop_last, shared SGD, clamped KL, superclass split."""

import pickle

import numpy as np
import pytest
import torch

from fedpurel_lite.config import RunConfig
from fedpurel_lite.data.features import _inputs, _key
from fedpurel_lite.data.partition import build_federation, count_matrix, superclass_split
from fedpurel_lite.engine.checkpoint import Checkpoint, check_resumable
from fedpurel_lite.engine.local import SHARED_STATE_ATTR, batches, stage1_optimizer
from fedpurel_lite.errors import ConfigError, IntegrityError
from fedpurel_lite.purify import aligned_kl, logit_gradients
from fedpurel_lite.worlds import coarse_labels_of
from fedpurel_lite.worlds.cifar import CIFAR100_COARSE, cifar100_coarse_labels

TRAIN = np.repeat(np.arange(100), 500)
TEST = np.repeat(np.arange(100), 100)


def test_defaults_are_the_toolkits_own():
    cfg = RunConfig()
    assert (cfg.federation.partition, cfg.world.templates, cfg.stage1.optimizer_scope, cfg.stage1.drop_last,
            cfg.purification.kl_log) == ("per-class", "ensemble", "client-round", False, "exact")


@pytest.mark.parametrize("pairs, pattern", [
    (["optimizer_scope=shared"], "run.workers=1"),
    (["partition=superclass", "test_split=matched"], "test_split"),
    (["kl_log=log"], "exact, clamped"),
    (["templates=many"], "ensemble, single"),
    (["superclass_beta=0"], r"allowed \(0, "),
])
def test_bad_combinations_and_values(pairs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        RunConfig().with_overrides(pairs)


def test_drop_last_keeps_the_order_and_a_single_short_batch():
    full = batches(70, 32, torch.Generator().manual_seed(0))
    dropped = batches(70, 32, torch.Generator().manual_seed(0), drop_last=True)
    assert [len(b) for b in full] == [32, 32, 6] and [len(b) for b in dropped] == [32, 32]
    assert all(torch.equal(a, b) for a, b in zip(full, dropped, strict=False))
    assert [len(b) for b in batches(20, 32, torch.Generator(), drop_last=True)] == [20]
    assert [len(b) for b in batches(64, 32, torch.Generator(), drop_last=True)] == [32, 32]


def test_shared_optimizer_state_carries_over_and_client_round_is_fresh():
    lin = torch.nn.Linear(3, 2)
    params = list(lin.parameters())
    shared = RunConfig().with_overrides(["optimizer_scope=shared", "workers=1"]).stage1
    opt = stage1_optimizer(lin, params, shared)
    opt.step([torch.ones_like(p) for p in params])
    again = stage1_optimizer(lin, params, shared)
    assert again.buffers is getattr(lin, SHARED_STATE_ATTR) and again.buffers[0] is not None
    fresh = stage1_optimizer(torch.nn.Linear(3, 2), params, RunConfig().stage1)
    assert fresh.buffers == [None, None]


def test_shared_optimizer_refuses_resume():
    cfg = RunConfig().with_overrides(["optimizer_scope=shared", "workers=1"]).to_dict()
    point = Checkpoint(0, "fedpurel", cfg, [], {})
    with pytest.raises(ConfigError, match="cannot be resumed"):
        check_resumable(point, cfg, "fedpurel")


@pytest.mark.parametrize("aligned", [True, False])
def test_clamped_kl_closed_form_matches_autograd(aligned):
    torch.manual_seed(0)
    f = (torch.randn(16, 40) * 40).requires_grad_()
    z, y = torch.randn(16, 40) * 40, torch.randint(0, 40, (16,))
    loss, _, _ = aligned_kl(f, z, aligned, clamped=True)
    (g,) = torch.autograd.grad(loss, f)
    _, _, align, g_align = logit_gradients(f.detach(), y, z, aligned, clamped=True)
    _, _, _, g_exact = logit_gradients(f.detach(), y, z, aligned)
    torch.testing.assert_close(g_align, g, atol=1e-7, rtol=1e-5)
    assert abs(float(align) - float(loss.detach())) < 1e-5
    assert (g_align - g_exact).abs().max() > 1e-3  # entries below 1e-12 pass no gradient


def test_superclass_split_pools_and_follows_each_clients_skew():
    lt = build_federation(TRAIN, TEST, None, RunConfig()).train_idx
    train, test = superclass_split(TRAIN[lt], TEST, CIFAR100_COARSE, 20, 1.0, seed=5)
    pool = len(lt) + len(TEST)
    assert all(len(a) + len(b) == pool // 20 for a, b in zip(train, test, strict=True))
    assert len(np.unique(np.concatenate(train))) == sum(map(len, train))
    assert len(np.unique(np.concatenate(test))) == sum(map(len, test))
    tr = count_matrix(train, CIFAR100_COARSE[TRAIN[lt]], 20)
    te = count_matrix(test, CIFAR100_COARSE[TEST], 20)
    corr = np.corrcoef(tr, te)[:20, 20:]  # client i's training vs client j's test superclass counts
    own, other = np.diag(corr).mean(), corr[~np.eye(20, dtype=bool)].mean()
    assert own > other + 0.4  # a client's test superclasses follow its own training ones
    again, _ = superclass_split(TRAIN[lt], TEST, CIFAR100_COARSE, 20, 1.0, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(train, again, strict=True))


def test_superclass_federation_on_the_shapes_world_uses_colour():
    cfg = RunConfig().with_overrides(["partition=superclass", "superclass_beta=0.1"])
    fed = build_federation(TRAIN, TEST, None, cfg)
    assert fed.num_clients == 20 and fed.client_sizes().min() >= 10
    np.testing.assert_allclose(fed.shares.sum(axis=1), 1.0)
    colours = coarse_labels_of("shapes")
    assert np.array_equal(colours[[0, 9, 10, 99]], [0, 0, 1, 9])
    with pytest.raises(ConfigError, match="has none"):
        build_federation(TRAIN, TEST, None, cfg.with_overrides(["world=cifar10"]))


def test_cifar100_coarse_labels_from_the_dataset_file_or_the_table(tmp_path):
    assert np.array_equal(cifar100_coarse_labels(tmp_path), CIFAR100_COARSE)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = np.arange(100).repeat(2)
    mapping = (np.arange(100) * 7) % 20
    with open(folder / "train", "wb") as fh:
        pickle.dump({"fine_labels": fine.tolist(), "coarse_labels": mapping[fine].tolist()}, fh)
    assert np.array_equal(cifar100_coarse_labels(tmp_path), mapping)
    with open(folder / "train", "wb") as fh:
        pickle.dump({"fine_labels": [0, 0], "coarse_labels": [1, 2]}, fh)
    with pytest.raises(IntegrityError, match="one mapping"):
        cifar100_coarse_labels(tmp_path)


def test_the_feature_cache_key_tells_the_templates_apart():
    class Fake:
        name, pretrained, weights_id, preprocess_cfg, preprocess = "m", "p", "w", {}, "t"

    one = _key(_inputs(Fake(), "shapes:{}", ["a photo of a {}."]))
    many = _key(_inputs(Fake(), "shapes:{}", ["a {}.", "a photo of a {}."]))
    assert one != many
