"""PEFT modules: shapes, zero-shot starts, the shared-state interface and the CoOp prompt learner."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_pullback_matches_autograd
from fedpurel_lite.engine.personalize import ResidualHead
from fedpurel_lite.peft import FeatureAdapter, PromptLearner, TextAnchoredHead, build_peft

pytestmark = pytest.mark.usefixtures("core_one_thread")


def _zero_shot(bank, x):
    return bank.logit_scale * x @ F.normalize(bank.text_features, dim=-1).t()


@pytest.mark.parametrize("kind", ["head", "adapter"])
def test_feature_pefts_start_at_zero_shot(core_bank, kind):
    peft = build_peft(kind, core_bank)
    x = core_bank.test_features[:50]
    out = peft(x)
    assert out.shape == (50, len(core_bank.class_names))
    torch.testing.assert_close(out, _zero_shot(core_bank, x), atol=1e-5, rtol=0)
    torch.testing.assert_close(peft.predict_logits(x, batch_size=7), out, atol=1e-5, rtol=0)


def test_shared_state_roundtrip_and_independence(core_bank):
    head = build_peft("head", core_bank)
    state = head.shared_state()
    assert list(state) == ["weight"] == head.shared_names()
    with torch.no_grad():
        head.weight.add_(1.0)
    assert not torch.equal(state["weight"], head.weight)  # a copy, not a view
    head.load_shared_state(state)
    torch.testing.assert_close(head.weight, state["weight"])
    with pytest.raises(KeyError):
        head.load_shared_state({"nope": state["weight"]})


def test_adapter_shares_only_mlp(core_bank):
    adapter = build_peft("adapter", core_bank, config=None)
    assert isinstance(adapter, FeatureAdapter)
    assert sorted(adapter.shared_state()) == ["down.weight", "up.weight"]
    # the frozen text features are a buffer, not shared or trained
    assert "text" not in adapter.shared_state()


def test_adapter_learns_from_zero_init(core_bank):
    adapter = build_peft("adapter", core_bank)
    opt = torch.optim.SGD(adapter.parameters(), lr=0.5)
    x, y = core_bank.train_features[:64], core_bank.train_labels[:64]
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(adapter(x), y).backward()
        opt.step()
    assert adapter.up.weight.abs().sum() > 0 and adapter.down.weight.grad.abs().sum() > 0


def test_residual_head_starts_at_zero():
    head = ResidualHead(16, 5, scale=18.0)
    x = F.normalize(torch.randn(8, 16), dim=-1)
    assert torch.equal(head(x), torch.zeros(8, 5))
    glob = torch.randn(8, 5)
    assert torch.equal(glob + head(x), glob)  # personal model = global model at init


def test_text_anchored_head_uses_logit_scale(core_bank):
    head = TextAnchoredHead(core_bank.text_features * 3.0, 7.5)
    x = core_bank.test_features[:4]
    torch.testing.assert_close(head(x), 7.5 * x @ F.normalize(core_bank.text_features, dim=-1).t())


def test_build_peft_errors(core_bank):
    with pytest.raises(ValueError, match="unknown PEFT; allowed one of"):
        build_peft("no-such-peft", core_bank)
    with pytest.raises(ValueError, match="backbone"):
        build_peft("prompt", core_bank)


NAMES = ["red star", "blue circle", "green_big square", "yellow heart"]


@pytest.mark.parametrize("class_specific", [False, True])
def test_prompt_learner_reproduces_template_zero_shot(core_tiny_clip, class_specific):
    model, tok = core_tiny_clip
    pl = PromptLearner(model, tok, NAMES, 18.0, ctx_init="a photo of a", class_specific=class_specific)
    assert pl.n_ctx == 4
    assert pl.ctx.shape == ((len(NAMES), 4, 64) if class_specific else (4, 64))
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]), normalize=True)
        ours = pl.class_features()
    assert (ours - ref).abs().max().item() < 1e-5


def test_prompt_learner_random_ctx_trains_only_ctx(core_tiny_clip):
    model, tok = core_tiny_clip
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pl = PromptLearner(model, tok, NAMES, 18.0, n_ctx=3, generator=torch.Generator().manual_seed(0))
    assert pl.shared_names() == ["ctx"] and pl.ctx.shape == (3, 64)
    assert 0.005 < pl.ctx.std().item() < 0.05  # N(0, 0.02^2)
    x = F.normalize(torch.randn(6, 32), dim=-1)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    opt = torch.optim.SGD(pl.trainable_parameters(), lr=1.0)
    ctx0 = pl.ctx.detach().clone()
    loss = F.cross_entropy(pl(x), y)
    loss.backward()
    opt.step()
    assert not torch.equal(pl.ctx, ctx0)
    for n, p in model.named_parameters():  # the backbone never changes
        assert torch.equal(p, before[n]), n
    clone = pl.clone()
    assert clone.ctx is not pl.ctx and clone._frozen["transformer"] is pl._frozen["transformer"]


@pytest.mark.parametrize("kind", ["head", "adapter"])
def test_pullback_matches_autograd(core_bank, kind):
    peft = build_peft(kind, core_bank)
    with torch.no_grad():
        for p in peft.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    x = core_bank.train_features[:16]
    cot = torch.randn(2, 16, len(core_bank.class_names))
    assert_pullback_matches_autograd(peft, x, cot)


def test_prompt_learner_moves_its_frozen_text_tower(core_tiny_clip, core_bank):
    """``.to()``/casts reach the shared frozen tower too (a CUDA run failed before this)."""
    import copy

    model, tokenizer = core_tiny_clip
    model = copy.deepcopy(model)
    learner = PromptLearner(model, tokenizer, core_bank.class_names[:5], logit_scale=18.0, n_ctx=2)
    learner.double()
    assert next(model.transformer.parameters()).dtype == torch.float64
    assert learner(core_bank.test_features[:3].double()).dtype == torch.float64


def test_a_pefts_own_section_reaches_its_builder(core_bank):
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.peft import PEFTS, AdapterConfig, LoRAConfig

    dim = core_bank.text_features.shape[1]
    cfg = RunConfig().with_overrides(["peft=adapter", "peft.adapter.reduction=2", "ratio=0.5"])
    adapter = build_peft("adapter", core_bank, None, cfg)
    assert cfg.section(AdapterConfig) == AdapterConfig(reduction=2, ratio=0.5)
    assert (adapter.down.out_features, adapter.ratio) == (dim // 2, 0.5)
    assert build_peft("adapter", core_bank).down.out_features == dim // 4  # the section's default
    lora = PEFTS.get("lora")
    assert lora.config is LoRAConfig and lora.inputs_for(RunConfig()) == "tokens"
    assert lora.inputs_for(RunConfig().with_overrides({"towers": "text"})) == "features"
