"""Shared-prefix prompt encoding: same features and gradients as the plain tower, fallback where unsupported."""

from __future__ import annotations

import pytest
import torch

from fedpurel_lite.engine.prompt_tower import SharedPrefixTower, supports
from fedpurel_lite.peft import PromptLearner

pytestmark = pytest.mark.usefixtures("core_one_thread")

# names of 1, 2 and 3 tokens, so the packed suffixes have different lengths
NAMES = ["star", "blue circle", "green_big square", "yellow heart", "red", "tiny pale ring"]


def _model(tmp_path_factory, name, **text_extra):
    import open_clip

    from conftest import register_tiny_clip

    register_tiny_clip(tmp_path_factory.mktemp(name), name, embed_dim=32, text_width=64, text_layers=3, **text_extra)
    torch.manual_seed(1)
    model = open_clip.create_model(name, pretrained=None)
    return model.eval(), open_clip.get_tokenizer(name)


@pytest.fixture(scope="module", params=["plain", "layerscale-linearproj"])
def tiny(request, tmp_path_factory):
    """The plain CLIP text tower, and a CustomTextCLIP one with LayerScale and an nn.Linear projection."""
    extra = {} if request.param == "plain" else {"ls_init_value": 0.5, "proj_bias": True}
    return _model(tmp_path_factory, f"tower-{request.param}", **extra)


def _pair(model, tok, class_specific):
    fast = PromptLearner(model, tok, NAMES, 18.0, n_ctx=4, class_specific=class_specific,
                         generator=torch.Generator().manual_seed(0))
    plain = PromptLearner(model, tok, NAMES, 18.0, n_ctx=4, class_specific=class_specific, shared_prefix=False)
    with torch.no_grad():
        fast.ctx.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(2))  # far from any init
        plain.ctx.copy_(fast.ctx)
    return fast, plain


@pytest.mark.parametrize("class_specific", [False, True])
def test_shared_prefix_equals_plain_tower_features_and_gradients(tiny, class_specific):
    model, tok = tiny
    fast, plain = _pair(model, tok, class_specific)
    assert isinstance(fast.tower, SharedPrefixTower) and plain.tower is None
    a, b = fast.class_features(), plain.class_features()
    assert a.shape == (len(NAMES), 32)
    assert (a - b).abs().max().item() < 1e-5
    weights = torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    ga = torch.autograd.grad((a * weights).sum(), fast.ctx)[0]
    gb = torch.autograd.grad((b * weights).sum(), plain.ctx)[0]
    assert ga.abs().max().item() > 1e-3  # a real gradient reaches the context
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)


def test_shared_prefix_reproduces_encode_text_at_template_init(tiny):
    model, tok = tiny
    pl = PromptLearner(model, tok, NAMES, 18.0, ctx_init="a photo of a")
    assert pl.tower is not None
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]), normalize=True)
        assert (pl.class_features() - ref).abs().max().item() < 1e-5


def test_batched_pullback_through_the_tower_matches_autograd(tiny):
    model, tok = tiny
    fast, _ = _pair(model, tok, False)
    x = torch.nn.functional.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(4)), dim=-1)
    cot = torch.randn(2, 5, len(NAMES), generator=torch.Generator().manual_seed(5))
    logits, pullback = fast.forward_with_pullback(x)
    got = pullback(cot)[0]
    for i in range(2):
        want = torch.autograd.grad(fast(x), fast.ctx, cot[i])[0]
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-4)


def test_unsupported_towers_fall_back_to_the_plain_pass(tmp_path_factory):
    model, tok = _model(tmp_path_factory, "tower-bidirectional", no_causal_mask=True)
    tower = model.text if hasattr(model, "text") else model
    assert not supports(tower.transformer, None)
    pl = PromptLearner(model, tok, NAMES, 18.0, ctx_init="a photo of a")
    assert pl.tower is None  # no causal mask: every token sees the class name, nothing to share
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]), normalize=True)
        assert (pl.class_features() - ref).abs().max().item() < 1e-5


def test_supports_rejects_a_non_causal_mask(tiny):
    model, _ = tiny
    tower = model.text if hasattr(model, "text") else model
    mask = tower.attn_mask
    assert supports(tower.transformer, mask)
    assert not supports(tower.transformer, torch.zeros_like(mask))
    assert not supports(tower.transformer, mask[:, :4])
