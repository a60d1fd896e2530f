"""The open_clip adapter: the one user of open_clip internals, a version check, one clear line on a change."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch

from fedpurel_lite.data import openclip_adapter as oa
from fedpurel_lite.errors import UserError

PACKAGE = Path(oa.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-init tiny open_clip CLIP (vision: 1 block, patch 8 -> 17 tokens)."""
    import open_clip

    from conftest import register_tiny_clip

    name = register_tiny_clip(tmp_path_factory.mktemp("adapter_cfg"), "adapter-test-tiny", patch_size=8)
    torch.manual_seed(0)
    return open_clip.create_model(name, pretrained=None).eval().requires_grad_(False)


def test_the_pinned_open_clip_is_the_tested_one():
    assert oa.installed_version() == oa.TESTED_VERSION
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert oa.check_version()


def test_another_version_warns_once_naming_both(monkeypatch):
    monkeypatch.setattr(oa, "installed_version", lambda: "99.0.0")
    monkeypatch.setattr(oa, "_checked", [])
    with pytest.warns(oa.OpenClipVersionWarning, match=rf"open_clip 99\.0\.0 is installed.*{oa.TESTED_VERSION}"):
        assert not oa.check_version()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not oa.check_version()  # once per process


@pytest.mark.parametrize("attr", ["_embeds", "_pool"])
def test_a_vision_tower_without_its_private_methods_is_one_clear_line(tiny, monkeypatch, attr):
    visual = tiny.visual
    oa.check_vision(visual)  # the real tower passes
    monkeypatch.delattr(type(visual), attr)  # what an open_clip release that renamed it would look like
    with pytest.raises(oa.OpenClipChanged) as err:
        oa.check_vision(visual)
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg
    assert f"VisionTransformer has no {attr!r}" in msg and f"tested with open_clip {oa.TESTED_VERSION}" in msg
    assert f"open_clip_torch=={oa.TESTED_VERSION}" in msg


def test_a_changed_block_is_one_clear_line_and_a_foreign_block_a_type_error(tiny, monkeypatch):
    blk = tiny.visual.transformer.resblocks[0]
    assert oa.block_problem(blk) is None
    monkeypatch.delattr(blk, "ls_1")
    with pytest.raises(oa.OpenClipChanged, match=r"ResidualAttentionBlock has no 'ls_1'"):
        oa.check_blocks(tiny.visual.transformer)

    class Foreign(torch.nn.Module):  # not open_clip's block: unsupported, not "open_clip changed"
        pass

    assert oa.block_problem(Foreign()) == "Foreign with attention NoneType"


def test_vision_prefix_and_suffix_give_encode_image(tiny):
    images = torch.randn(3, 3, 32, 32)
    tokens = oa.vision_tokens(tiny.visual, images)
    assert tokens.shape == (3, 17, 32) and tokens.dtype == torch.float32
    x = tiny.visual.transformer(tokens)
    ref = torch.nn.functional.normalize(tiny.encode_image(images), dim=-1)
    assert torch.allclose(oa.vision_pool(tiny.visual, x), ref, atol=1e-5)


def test_block_view_holds_the_frozen_pieces_by_reference(tiny):
    blk = tiny.transformer.resblocks[0]
    view = oa.block_view(blk)
    assert view.in_proj_weight is blk.attn.in_proj_weight and view.mlp is blk.mlp
    assert view.heads == blk.attn.num_heads and [v.ln_1 for v in oa.block_views(tiny.transformer)] == [blk.ln_1]


def test_text_tower_reads_the_tower_and_refuses_what_it_cannot_run(tiny):
    tower = oa.text_tower(tiny)
    assert tower.transformer is tiny.transformer and tower.pool == "argmax" and tower.attn_mask is not None
    with pytest.raises(TypeError, match="Linear has no text attribute 'token_embedding'; LoRA needs"):
        oa.text_tower(torch.nn.Linear(2, 2), user="LoRA")


def _private_open_clip_uses(path: Path) -> set[str]:
    """The private open_clip methods (``._embeds``, ``._pool``) a module calls."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr in ("_embeds",
                                                                                                       "_pool")}


def test_only_the_adapter_calls_open_clip_private_methods():
    users = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if _private_open_clip_uses(p)}
    assert users == {"data/openclip_adapter.py"}
