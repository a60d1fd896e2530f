"""The attention adapter and BitFit PEFTs: zero-shot starts, exact tower pass, shared state, short runs, fusion loss."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_pullback_matches_autograd, register_tiny_clip
from fedpurel_lite.config import RunConfig
from fedpurel_lite.data.openclip_adapter import vision_tokens
from fedpurel_lite.data.token_bank import TokenBank
from fedpurel_lite.errors import ConfigError
from fedpurel_lite.peft import PEFTS, build_peft
from fedpurel_lite.peft.attention_adapter import FUSION_METHOD, AttentionAdapter, AttentionAdapterConfig
from fedpurel_lite.peft.bitfit import BitFitCLIP, BitFitConfig, block_forward

pytestmark = pytest.mark.usefixtures("core_one_thread")

NAMES = ["red star", "blue circle", "green square", "yellow heart"]


@pytest.fixture(scope="module")
def bitfit_clip(tmp_path_factory):
    """A random-init tiny open_clip (vision: 2 blocks of width 32, patch 8 -> 17 tokens) and its tokenizer."""
    import open_clip

    name = register_tiny_clip(tmp_path_factory.mktemp("bitfit_cfg"), "bitfit-test-tiny", embed_dim=16, patch_size=8)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    blocks = model.visual.transformer.resblocks
    blocks.append(copy.deepcopy(blocks[0]))
    with torch.no_grad():  # open_clip starts biases at zero: give them values so an offset path is visible
        for n, p in model.visual.named_parameters():
            if n.endswith("bias"):
                p.normal_(0.0, 0.1)
    model.requires_grad_(False)
    return model, open_clip.get_tokenizer(name)


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(NAMES)).repeat_interleave(n // len(NAMES))
    colour = torch.randn(len(NAMES), 3, 1, 1, generator=torch.Generator().manual_seed(0))
    return colour[labels] + 0.8 * torch.randn(len(labels), 3, 32, 32, generator=g), labels


def _token_bank(model, n_train: int = 160, n_test: int = 40) -> TokenBank:
    xtr, ytr = _images(n_train, 1)
    xte, yte = _images(n_test, 2)
    with torch.no_grad():
        feats = [F.normalize(model.encode_image(x).float(), dim=-1) for x in (xtr, xte)]
    text = F.normalize(torch.randn(len(NAMES), feats[0].shape[1], generator=torch.Generator().manual_seed(5)), dim=-1)
    features = SimpleNamespace(train_features=feats[0], train_labels=ytr, test_features=feats[1], test_labels=yte,
                               text_features=text, logit_scale=18.0, class_names=list(NAMES),
                               class_order=np.arange(len(NAMES)))
    return TokenBank(features, vision_tokens(model.visual, xtr), vision_tokens(model.visual, xte))


def _zero_shot(bank, x: torch.Tensor) -> torch.Tensor:
    return bank.logit_scale * x @ F.normalize(torch.as_tensor(bank.text_features), dim=-1).t()


def _perturb(peft, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in peft.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------- attention adapter


def test_attention_adapter_starts_at_zero_shot(core_bank):
    peft = build_peft("attention-adapter", core_bank)
    assert isinstance(peft, AttentionAdapter) and PEFTS.get("attention-adapter").inputs_for(RunConfig()) == "features"
    x = core_bank.test_features[:50]
    a = peft.attention(x)
    torch.testing.assert_close(a, torch.full_like(a, 1.0 / x.shape[1]))  # uniform mask at init
    torch.testing.assert_close(peft(x), _zero_shot(core_bank, x), atol=1e-5, rtol=0)
    torch.testing.assert_close(peft.predict_logits(x, batch_size=7), peft(x), atol=1e-5, rtol=0)
    # the reference init (both layers drawn) does not start at zero-shot, and its mask still sums to one
    drawn = build_peft("attention-adapter", core_bank, config=RunConfig().with_overrides(
        {"peft.attention-adapter.zero_init": False}))
    assert (drawn(x) - _zero_shot(core_bank, x)).abs().max() > 1e-3
    torch.testing.assert_close(drawn.attention(x).sum(dim=1), torch.ones(50))


def test_attention_adapter_trains_both_layers_and_is_seeded(core_bank):
    cfg = RunConfig()
    peft = build_peft("attention-adapter", core_bank, config=cfg)
    again = build_peft("attention-adapter", core_bank, config=cfg)
    other = build_peft("attention-adapter", core_bank, config=cfg.with_overrides({"run.seed": 2}))
    assert torch.equal(peft.fc1.weight, again.fc1.weight) and not torch.equal(peft.fc1.weight, other.fc1.weight)
    assert sorted(peft.shared_names()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    opt = torch.optim.SGD(peft.parameters(), lr=5.0)
    x, y = core_bank.train_features[:64], core_bank.train_labels[:64]
    fc1 = peft.fc1.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(peft(x), y).backward()
        opt.step()
    assert peft.fc2.weight.abs().sum() > 0 and not torch.equal(peft.fc1.weight, fc1)
    assert torch.equal(peft.text, again.text)  # the text side stays the zero-shot classifier


def test_config_sections_are_the_plugins_own(tmp_path):
    cfg = RunConfig().with_overrides(["zero_init=false", "peft.bitfit.include_norms=false"])
    assert cfg.section(AttentionAdapterConfig) == AttentionAdapterConfig(zero_init=False)
    assert cfg.section(BitFitConfig) == BitFitConfig(include_norms=False)
    assert RunConfig().section(BitFitConfig).include_norms and RunConfig().section(AttentionAdapterConfig).zero_init
    path = tmp_path / "run.toml"
    cfg.save(path)
    assert RunConfig.load(path) == cfg
    with pytest.raises(ConfigError, match="include_norms"):
        RunConfig().with_overrides({"peft.bitfit.include_norms": "maybe"})


def test_fusion_method_is_plain_kl_and_fused_ce_only():
    from fedpurel_lite.engine.assembly import with_method
    from fedpurel_lite.engine.personalize import PERSONALIZATIONS, personal_loss
    from fedpurel_lite.methods import get_method
    from fedpurel_lite.purify import OBJECTIVES

    method = get_method(FUSION_METHOD["name"])
    assert OBJECTIVES.get(method.stage1).aligned is False and OBJECTIVES.get(method.stage1).purify
    assert PERSONALIZATIONS.get(method.personal).residual
    cfg, _ = with_method(RunConfig().with_overrides({"method.name": method.name}))
    assert cfg.personalization.personal_alpha == 0.0 and cfg.method.peft == "attention-adapter"
    g = torch.Generator().manual_seed(0)
    glob, local = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.arange(8) % 5
    loss = personal_loss(FUSION_METHOD["personal"], glob + local, y, cfg, local)
    torch.testing.assert_close(loss, F.cross_entropy(glob + local, y))  # the fusion CE only
    assert not torch.allclose(personal_loss(FUSION_METHOD["personal"], glob + local, y, RunConfig(), local), loss)


def test_attention_adapter_short_run_with_its_fusion_loss(core_bank):
    from fedpurel_lite.engine.simulate import run

    cfg = RunConfig().with_overrides(dict(num_clients=5, participation=0.4, rounds=2, imbalance_ratio=10,
                                          min_client_size=5, lr=0.2, personal_lr=0.2, batch_size=16, seed=3,
                                          method=FUSION_METHOD["name"]))
    res = run(cfg, bank=core_bank, progress=False)
    assert res.config["personalization"]["personal_alpha"] == 0.0 and res.method == FUSION_METHOD["name"]
    last = res.history[-1]
    for model in ("gm", "pm"):
        assert all(math.isfinite(v) for v in last[model].values() if isinstance(v, float)), model
        assert 0.0 <= last[model]["accuracy"] <= 100.0
    assert math.isfinite(last["personal"]["loss"]) and last["telemetry"]["steps"] > 0
    glob = {k: v for k, v in res.final_state.items() if k.startswith("global/")}
    assert {k.split("/", 1)[1] for k in glob} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert float(glob["global/fc2.weight"].abs().sum()) > 0  # it trained away from the uniform mask


# ----------------------------------------------------------------------------- BitFit


@pytest.mark.parametrize("query", [None, 0])
def test_bitfit_block_at_zero_offsets_equals_open_clip(bitfit_clip, query):
    model, _ = bitfit_clip
    peft = BitFitCLIP(model, torch.randn(len(NAMES), 16), 18.0)
    x = torch.randn(3, 17, 32, generator=torch.Generator().manual_seed(0))
    blk = model.visual.transformer.resblocks[0]
    want = blk(x)
    want = want if query is None else want[:, query:query + 1]
    torch.testing.assert_close(block_forward(blk, x, peft.offsets[0], query), want, atol=1e-5, rtol=1e-5)


def test_bitfit_starts_at_zero_shot_and_offsets_only_biases(bitfit_clip):
    model, _ = bitfit_clip
    bank = _token_bank(model)
    cfg = RunConfig().with_overrides({"method.peft": "bitfit"})
    peft = build_peft("bitfit", bank, SimpleNamespace(model=model, tokenizer=None), cfg)
    assert isinstance(peft, BitFitCLIP) and PEFTS.get("bitfit").inputs_for(cfg) == "tokens"
    torch.testing.assert_close(peft(bank.test_tokens), _zero_shot(bank, bank.test_features), atol=1e-4, rtol=0)
    names = peft.shared_names()
    keys = ("qkv", "out", "c_fc", "c_proj", "ln_1", "ln_2")
    assert set(names) == {f"offsets.{i}.{k}" for i in range(2) for k in keys}
    assert sum(p.numel() for p in peft.trainable_parameters()) == 2 * (3 * 32 + 32 + 4 * 32 + 32 + 32 + 32)
    no_norms = BitFitCLIP(model, bank.text_features, 18.0, include_norms=False)
    assert not any(".ln_" in n for n in no_norms.shared_names())
    # a step moves the offsets (not the key part of qkv: a key bias cannot change the attention)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = F.cross_entropy(peft(bank.train_tokens[:32]), bank.train_labels[:32])
    grads = dict(zip(names, torch.autograd.grad(loss, peft.trainable_parameters()), strict=True))
    qkv = grads["offsets.1.qkv"]
    assert qkv[:32].abs().sum() > 0 and qkv[64:].abs().sum() > 0
    assert qkv[32:64].abs().max() < 1e-6 * qkv.abs().max()
    assert all(g.abs().sum() > 0 for n, g in grads.items() if not n.endswith("qkv"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the tower is never changed


def test_bitfit_no_grad_chunks_and_clone(bitfit_clip, monkeypatch):
    import fedpurel_lite.peft.bitfit as bitfit

    model, _ = bitfit_clip
    bank = _token_bank(model)
    peft = BitFitCLIP(model, bank.text_features, 18.0)
    _perturb(peft)
    with torch.no_grad():
        whole = peft.image_features(bank.test_tokens)
        monkeypatch.setattr(bitfit, "NO_GRAD_ROWS", 7)
        torch.testing.assert_close(peft.image_features(bank.test_tokens), whole, atol=1e-6, rtol=0)
    twin = peft.clone()
    assert twin._frozen["visual"] is model.visual
    assert twin.offsets[0]["qkv"] is not peft.offsets[0]["qkv"]
    assert (peft(bank.test_tokens) - _zero_shot(bank, bank.test_features)).abs().max() > 1e-3  # offsets matter


@pytest.mark.parametrize("kind", ["attention-adapter", "bitfit"])
def test_shared_state_roundtrip_and_pullback(kind, core_bank, bitfit_clip):
    model, _ = bitfit_clip
    if kind == "bitfit":
        bank = _token_bank(model, 40, 8)
        peft, x = BitFitCLIP(model, bank.text_features, 18.0), bank.train_tokens[:6]
    else:
        peft, x = build_peft(kind, core_bank), core_bank.train_features[:6]
    _perturb(peft)
    state = peft.shared_state()
    assert list(state) == peft.shared_names()
    fresh = peft.clone()
    _perturb(fresh, 0.5)
    assert not torch.allclose(fresh(x), peft(x))
    fresh.load_shared_state(state)
    torch.testing.assert_close(fresh(x), peft(x))
    with torch.no_grad():
        peft.trainable_parameters()[0].add_(1.0)
    assert not torch.equal(state[peft.shared_names()[0]], peft.trainable_parameters()[0])  # a copy, not a view
    with pytest.raises(KeyError):
        peft.load_shared_state({"nope": torch.zeros(1)})
    assert_pullback_matches_autograd(peft, x, torch.randn(2, *peft(x).shape, generator=torch.Generator()))


def test_bitfit_short_federated_run(bitfit_clip):
    from fedpurel_lite.engine.simulate import run

    model, tok = bitfit_clip
    cfg = RunConfig().with_overrides(dict(method="fedpurel", peft="bitfit", num_clients=3, participation=0.67,
                                          rounds=2, imbalance_ratio=4, min_client_size=5, lr=0.05, personal_lr=0.05,
                                          batch_size=16, seed=3))
    res = run(cfg, bank=_token_bank(model), backbone=SimpleNamespace(model=model, tokenizer=tok), progress=False)
    last = res.history[-1]
    for m in ("gm", "pm"):
        assert all(math.isfinite(v) for v in last[m].values() if isinstance(v, float)), m
    assert math.isfinite(last["personal"]["loss"]) and last["telemetry"]["steps"] > 0
    glob = [v for k, v in res.final_state.items() if k.startswith("global/")]
    assert len(glob) == 12 and any(float(v.abs().sum()) > 0 for v in glob)
