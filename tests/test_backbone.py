"""Backbone factory: random-init plumbing, the shipped weights, local files, offline errors."""

from __future__ import annotations

import json
import shutil
import time

import open_clip
import pytest
import torch

from conftest import register_tiny_clip
from fedpurel_lite.data import backbone as bb
from fedpurel_lite.errors import ConfigError, ResourceMissingError, UserError

WORLDS_TINY = "worlds-test-tiny"


@pytest.fixture(scope="module")
def worlds_tiny_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register a tiny random-init CLIP config (no download) and return its name."""
    return register_tiny_clip(tmp_path_factory.mktemp("worlds_cfg"), WORLDS_TINY)


def test_random_init_backbone_is_frozen_and_classifies(worlds_tiny_name: str) -> None:
    torch.manual_seed(0)
    b = bb.load_backbone(worlds_tiny_name, pretrained="random")
    assert b.weights_id == "random-init" and not b.model.training
    assert not any(p.requires_grad for p in b.model.parameters())
    assert b.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)
    names, templates = ["red star", "blue ring", "green cross"], ["a {}.", "a photo of a {}."]
    w = bb.zero_shot_classifier(b, names, templates)
    assert w.shape == (3, 16) and w.dtype == torch.float32
    assert torch.allclose(w.norm(dim=-1), torch.ones(3), atol=1e-5)
    ref = open_clip.build_zero_shot_classifier(b.model, b.tokenizer, names, templates).T
    assert torch.allclose(w, ref, atol=1e-6)


def test_shipped_weights_load_through_open_clip_and_match_the_pin() -> None:
    assert bb.EMBEDDED_WEIGHTS.stat().st_size <= 20 * 2**20
    assert bb.sha256_file(bb.EMBEDDED_WEIGHTS) == bb.EMBEDDED_SHA256
    b = bb.load_backbone()
    assert b.weights_id == bb.EMBEDDED_SHA256 and b.name == "fedpurel-tiny"
    from safetensors.torch import load_file

    state = load_file(str(bb.EMBEDDED_WEIGHTS))
    assert state["visual.conv1.weight"].dtype == torch.float16
    assert torch.equal(b.model.visual.conv1.weight, state["visual.conv1.weight"].float())
    assert 5.0 < b.logit_scale <= 100.0


def test_corrupt_shipped_weights_are_refused(tmp_path, monkeypatch) -> None:
    bad = tmp_path / "tiny.safetensors"
    data = bytearray(bb.EMBEDDED_WEIGHTS.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setenv("FEDPUREL_TINY_WEIGHTS", str(bad))
    with pytest.raises(bb.BackboneUnavailableError, match="SHA-256"):
        bb.load_backbone()
    monkeypatch.setenv("FEDPUREL_TINY_WEIGHTS", str(tmp_path / "missing.safetensors"))
    with pytest.raises(bb.BackboneUnavailableError, match="pretrain"):
        bb.load_backbone()


def test_weights_file_and_local_dir_give_the_same_model(worlds_tiny_name: str, tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = open_clip.create_model(worlds_tiny_name)
    folder = tmp_path / "tiny"
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    cfg = {"model_cfg": open_clip.get_model_config(worlds_tiny_name), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    a = bb.load_backbone(worlds_tiny_name, pretrained=str(folder / "open_clip_model.safetensors"))
    b = bb.load_backbone(f"local-dir:{folder}")
    assert a.weights_id == b.weights_id == bb.sha256_file(folder / "open_clip_model.safetensors")
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    shutil.rmtree(folder)
    with pytest.raises(bb.BackboneUnavailableError):
        bb.load_backbone(f"local-dir:{folder}")


def test_missing_real_model_fails_fast_and_clearly(tmp_path) -> None:
    t0 = time.time()
    with pytest.raises(bb.BackboneUnavailableError) as err:
        bb.load_backbone("ViT-B-32", "openai", cache_dir=str(tmp_path))
    assert time.time() - t0 < 10
    msg = str(err.value)
    assert "ViT-B-32" in msg and str(tmp_path) in msg and "local-dir:" in msg and "HF_HUB_OFFLINE" in msg
    assert err.value.__cause__ is None  # no chained huggingface traceback


def test_offline_env_fails_immediately_for_hf_hub(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(bb.BackboneUnavailableError, match="hf-hub:timm/some-clip"):
        bb.load_backbone("hf-hub:timm/some-clip", cache_dir=str(tmp_path))
    assert time.time() - t0 < 1.0


def test_unknown_names_and_tags_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="list_models"):
        bb.load_backbone("ViT-Z-99")
    with pytest.raises(ConfigError, match="Did you mean 'ViT-B-32'") as err:
        bb.load_backbone("ViT-B-33")
    assert str(err.value).count("Did you mean") == 1 and "ViT-B-33" in str(err.value)
    with pytest.raises(ConfigError, match="known tags: openai"):
        bb.load_backbone("ViT-B-32", "no-such-tag")
    with pytest.raises(ConfigError, match="known tags"):
        bb.check_backbone("ViT-B-32", "no-such-tag")


def test_error_types() -> None:
    assert issubclass(bb.BackboneUnavailableError, ResourceMissingError)
    assert issubclass(bb.BackboneUnavailableError, FileNotFoundError) and issubclass(ConfigError, UserError)


@pytest.mark.parametrize("pretrained", [None, ""])
def test_non_embedded_model_without_weights_is_refused(worlds_tiny_name: str, pretrained, monkeypatch) -> None:
    monkeypatch.setattr(open_clip, "create_model_and_transforms", _no_build)
    for call in (bb.load_backbone, bb.check_backbone):
        with pytest.raises(ConfigError, match=rf"model '{worlds_tiny_name}' needs weights: pass "
                                              r"pretrained=<file, tag or folder> \(CLI: --set pretrained=\.\.\.\)"):
            call(worlds_tiny_name, pretrained)
    with pytest.raises(ConfigError, match="known tags: openai, laion400m_e31.*in all"):
        bb.check_backbone("ViT-B-32", None)


def _no_build(*args, **kwargs):
    raise AssertionError("check_backbone must not build the model")


def test_check_backbone_finds_weights_without_building(worlds_tiny_name: str, tmp_path, monkeypatch) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(2)
    folder = tmp_path / "tiny"
    folder.mkdir()
    save_file(open_clip.create_model(worlds_tiny_name).state_dict(), str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config(
        worlds_tiny_name), "preprocess_cfg": {}}))
    from_folder = bb.load_backbone(worlds_tiny_name, pretrained=str(folder))  # a folder holding the weights
    assert from_folder.weights_id == bb.sha256_file(folder / "open_clip_model.safetensors")
    monkeypatch.setattr(open_clip, "create_model_and_transforms", _no_build)
    for name, pretrained in [(bb.EMBEDDED_NAME, None), (bb.EMBEDDED_NAME, ""), (worlds_tiny_name, "random"),
                             (worlds_tiny_name, str(folder / "open_clip_model.safetensors")),
                             (worlds_tiny_name, str(folder)), (f"local-dir:{folder}", None)]:
        assert bb.check_backbone(name, pretrained) is None
    with pytest.raises(bb.BackboneUnavailableError, match="no such weights file"):
        bb.check_backbone(worlds_tiny_name, str(tmp_path / "missing.safetensors"))
    with pytest.raises(bb.BackboneUnavailableError, match="holds no weights file"):
        bb.check_backbone(worlds_tiny_name, str(tmp_path))
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(bb.BackboneUnavailableError, match="local-dir"):
        bb.check_backbone(f"local-dir:{folder}", None)
    with pytest.raises(bb.BackboneUnavailableError) as err:
        bb.check_backbone("ViT-B-32", "openai", cache_dir=str(tmp_path))
    assert str(tmp_path) in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    with pytest.raises(ConfigError, match="Unknown model name"):
        bb.check_backbone("ViT-Z-99", "openai")
    monkeypatch.setenv("FEDPUREL_TINY_WEIGHTS", str(tmp_path / "missing.safetensors"))
    with pytest.raises(bb.BackboneUnavailableError, match="pretrain"):
        bb.check_backbone(bb.EMBEDDED_NAME, None)


def test_device_auto(worlds_tiny_name: str) -> None:
    b = bb.load_backbone(worlds_tiny_name, pretrained="random", device="auto")
    assert next(b.model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device='tpu'"):
        bb.load_backbone(worlds_tiny_name, pretrained="random", device="tpu")
