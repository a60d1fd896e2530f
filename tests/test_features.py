"""FeatureBank: encoding, cache reuse / staleness / corruption, and the embedded world's quality bars."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from conftest import register_tiny_clip
from fedpurel_lite.data import features as fb
from fedpurel_lite.data.backbone import load_backbone
from fedpurel_lite.data.cache_entry import manifest_digest
from fedpurel_lite.engine.metrics import group_means, per_class_accuracy
from fedpurel_lite.worlds import shapes
from fedpurel_lite.worlds.quality import default_groups, linear_probe_accuracy

FEATURES_TINY = "features-test-tiny"


@pytest.fixture(scope="module")
def features_tiny(tmp_path_factory: pytest.TempPathFactory):
    """A random-init tiny backbone and a 300/200-image shapes world."""
    register_tiny_clip(tmp_path_factory.mktemp("features_cfg"), FEATURES_TINY, patch_size=8)
    torch.manual_seed(0)
    backbone = load_backbone(FEATURES_TINY, pretrained="random")
    world = shapes.load_shapes("target", shift=0.6, seed=0, n_train=3, n_test=2)
    return backbone, world


def _no_encoding(*args, **kwargs):
    raise AssertionError("the cache should have been used")


def test_build_shapes_and_normalisation(features_tiny, tmp_path) -> None:
    backbone, world = features_tiny
    bank = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    assert bank.train_features.shape == (300, 16) and bank.test_features.shape == (200, 16)
    assert bank.text_features.shape == (100, 16) and bank.train_labels.dtype == torch.int64
    assert torch.allclose(bank.train_features.norm(dim=-1), torch.ones(300), atol=1e-5)
    assert torch.equal(bank.train_labels, torch.from_numpy(world.train_labels))
    logits = bank.zero_shot_logits(bank.test_features)
    assert logits.shape == (200, 100)
    assert torch.allclose(logits, bank.logit_scale * bank.test_features @ bank.text_features.T)
    assert np.array_equal(bank.class_order, world.class_order)
    m = bank.manifest
    assert m["inputs"]["world"] == world.fingerprint() and m["inputs"]["weights_id"] == "random-init"
    assert len(m["content_sha256"]) == 64 and "transform" in m["inputs"]


def test_fast_array_path_equals_the_open_clip_preprocess(features_tiny) -> None:
    backbone, world = features_tiny
    images = world.test_images[:40]
    fast = fb.encode_images(backbone, images, batch_size=16, progress=False)
    from PIL import Image

    pil = [Image.fromarray(a) for a in images]  # a plain dataset of PIL images: the open_clip transform path
    slow = fb.encode_images(backbone, pil, batch_size=16, progress=False)
    assert fb._fast_path_ok(images, backbone) and not fb._fast_path_ok(pil, backbone)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_encoding_matches_a_bare_encode_image_loop(features_tiny) -> None:
    backbone, world = features_tiny
    images = world.train_images[:64]
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    cfg = backbone.preprocess_cfg
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(backbone.model.encode_image(x), dim=-1)
    assert torch.allclose(fb.encode_images(backbone, images, progress=False), ref, atol=1e-5)


def test_cache_is_reused(features_tiny, tmp_path, monkeypatch) -> None:
    backbone, world = features_tiny
    first = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(fb, "encode_images", _no_encoding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    assert torch.equal(first.train_features, again.train_features)
    assert again.manifest["content_sha256"] == first.manifest["content_sha256"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1 and not list(tmp_path.glob("*.tmp"))


def test_stale_cache_is_rebuilt(features_tiny, tmp_path) -> None:
    backbone, world = features_tiny
    bank = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    manifest = bank.path.with_suffix(".json")
    doctored = json.loads(manifest.read_text())
    doctored["inputs"]["world"] = "shapes:something-else"
    doctored["manifest_sha256"] = manifest_digest(doctored)  # intact but stale: rebuilt without a warning
    manifest.write_text(json.dumps(doctored))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rebuilt = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    assert rebuilt.manifest["inputs"]["world"] == world.fingerprint()
    assert json.loads(manifest.read_text())["inputs"]["world"] == world.fingerprint()
    # a different world (another shift) never reads this cache: it gets its own file
    other = shapes.load_shapes("target", shift=0.3, seed=0, n_train=3, n_test=2)
    fb.FeatureBank.load_or_build(backbone, other, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_corrupt_cache_is_reported_and_rebuilt(features_tiny, tmp_path, damage: str) -> None:
    backbone, world = features_tiny
    bank = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    tensors, manifest = bank.path.with_suffix(".safetensors"), bank.path.with_suffix(".json")
    data = bytearray(tensors.read_bytes())
    if damage == "truncate":
        tensors.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) - 500 : len(data) - 480] = bytes(b ^ 0x5A for b in data[len(data) - 500 : len(data) - 480])
        tensors.write_bytes(bytes(data))
    else:
        manifest.write_text("{not json")
    bad = tensors if damage != "manifest" else manifest
    with pytest.warns(UserWarning, match=str(bad.name)):
        rebuilt = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    assert torch.allclose(rebuilt.train_features, bank.train_features, atol=1e-6)
    assert fb.sha256_file(tensors) == json.loads(manifest.read_text())["content_sha256"]


# ---------------------------------------------------------------- the embedded world (shipped weights)


@pytest.fixture(scope="module")
def features_embedded() -> fb.FeatureBank:
    """The shipped tiny CLIP on the shapes target world (cached under the repository's data/cache)."""
    return fb.load_embedded_bank(progress=False)


def test_embedded_bank_sizes(features_embedded) -> None:
    bank = features_embedded
    assert np.bincount(bank.train_labels.numpy()).tolist() == [500] * 100
    assert np.bincount(bank.test_labels.numpy()).tolist() == [100] * 100
    assert bank.train_features.dtype == torch.float32 and bank.text_features.shape[0] == 100
    assert np.array_equal(bank.class_order, shapes.shapes_class_order(0))


def test_embedded_zero_shot_band_and_flat_groups(features_embedded) -> None:
    bank = features_embedded
    pred = bank.zero_shot_logits(bank.test_features).argmax(1)
    per_class = per_class_accuracy(bank.test_labels.numpy(), pred.numpy(), 100)
    zs = per_class.mean()
    assert 0.45 <= zs <= 0.70, zs
    groups = group_means(per_class, default_groups(bank.class_order))
    assert max(groups.values()) - min(groups.values()) <= 0.05, groups


def test_embedded_linear_probe_headroom(features_embedded) -> None:
    bank = features_embedded
    zs = (bank.zero_shot_logits(bank.test_features).argmax(1) == bank.test_labels).float().mean().item()
    probe = linear_probe_accuracy(bank.train_features, bank.train_labels, bank.test_features, bank.test_labels)
    assert probe - zs >= 0.15, (probe, zs)
