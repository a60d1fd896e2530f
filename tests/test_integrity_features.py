"""Feature cache integrity: the manifest hashed whole, damage reported once and moved aside, atomic writes,
concurrent builders serialised by a lock, and the encoding device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import register_tiny_clip
from fedpurel_lite.data import features as fb
from fedpurel_lite.data.backbone import load_backbone, resolve_device
from fedpurel_lite.data.cache_entry import manifest_digest
from fedpurel_lite.errors import ConfigError
from fedpurel_lite.worlds import shapes

INTEGRITY_TINY = "integrity-test-tiny"


@pytest.fixture(scope="module")
def integrity_tiny(tmp_path_factory: pytest.TempPathFactory):
    """A random-init tiny backbone, a 200/100-image shapes world and the config folder (for subprocesses)."""
    cfg_dir = tmp_path_factory.mktemp("integrity_cfg")
    register_tiny_clip(cfg_dir, INTEGRITY_TINY, patch_size=8)
    torch.manual_seed(0)
    backbone = load_backbone(INTEGRITY_TINY, pretrained="random")
    world = shapes.load_shapes("target", shift=0.6, seed=0, n_train=2, n_test=1)
    return backbone, world, cfg_dir


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _flip(path: Path) -> None:
    """Flip one byte inside the tensor data."""
    data = bytearray(path.read_bytes())
    data[-300] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGES = {  # name -> (damage(manifest, tensors), which file the warning must name)
    "class_names": (lambda m, t: _edit_manifest(m, lambda d: d["class_names"].reverse()), "json"),
    "logit_scale": (lambda m, t: _edit_manifest(m, lambda d: d.update(logit_scale=d["logit_scale"] * 2)), "json"),
    "class_order": (lambda m, t: _edit_manifest(m, lambda d: d["class_order"].reverse()), "json"),
    "digest_removed": (lambda m, t: _edit_manifest(m, lambda d: d.pop("manifest_sha256")), "json"),
    "content_hash": (lambda m, t: _edit_manifest(m, lambda d: d.update(content_sha256="0" * 64)), "json"),
    "not_json": (lambda m, t: m.write_text('{"inputs": '), "json"),
    "manifest_missing": (lambda m, t: m.unlink(), "json"),
    "flip": (lambda m, t: _flip(t), "safetensors"),
    "truncate": (lambda m, t: t.write_bytes(t.read_bytes()[: t.stat().st_size // 2]), "safetensors"),
    "tensors_missing": (lambda m, t: t.unlink(), "safetensors"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damage_is_reported_once_moved_aside_and_rebuilt(integrity_tiny, tmp_path, damage: str) -> None:
    backbone, world, _ = integrity_tiny
    bank = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    mpath, tpath = bank.path.with_suffix(".json"), bank.path.with_suffix(".safetensors")
    do, named = DAMAGES[damage]
    do(mpath, tpath)
    damaged = {p.name: p.read_bytes() for p in (mpath, tpath) if p.exists()}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rebuilt = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    caught = [w for w in rec if issubclass(w.category, fb.FeatureCacheWarning)]
    assert len(caught) == 1, [str(w.message) for w in rec]
    assert bank.path.with_suffix("." + named).name in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller
    # the damaged files were moved aside byte for byte, not deleted
    for name, data in damaged.items():
        assert (tmp_path / f"{name}.corrupt-1").read_bytes() == data
    # rebuilt with the right values, and the new cache is intact
    assert rebuilt.class_names == world.class_names and np.array_equal(rebuilt.class_order, world.class_order)
    assert rebuilt.logit_scale == pytest.approx(backbone.logit_scale)
    assert torch.allclose(rebuilt.train_features, bank.train_features, atol=1e-6)
    manifest = json.loads(mpath.read_text())
    assert manifest["manifest_sha256"] == manifest_digest(manifest)
    assert manifest["content_sha256"] == fb.sha256_file(tpath)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    assert again.class_names == world.class_names


def test_second_damage_gets_a_new_suffix_and_a_resigned_forgery_is_still_checked(integrity_tiny, tmp_path) -> None:
    backbone, world, _ = integrity_tiny
    bank = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    mpath = bank.path.with_suffix(".json")
    for n in (1, 2):
        _flip(bank.path.with_suffix(".safetensors"))
        with pytest.warns(fb.FeatureCacheWarning, match=rf"\.safetensors\.corrupt-{n}"):
            fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.corrupt-*")) == sorted(
        f"{bank.path.name}.{ext}.corrupt-{n}" for ext in ("json", "safetensors") for n in (1, 2))

    def forge(d: dict) -> None:  # a consistent digest over fields that do not fit the tensors
        d["class_names"] = d["class_names"][:-1]
        d["manifest_sha256"] = manifest_digest(d)

    _edit_manifest(mpath, forge)
    with pytest.warns(fb.FeatureCacheWarning, match=mpath.name):
        rebuilt = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    assert rebuilt.num_classes == 100


def test_writes_use_unique_temporary_names_and_replace_the_manifest_last(integrity_tiny, tmp_path,
                                                                       monkeypatch) -> None:
    backbone, world, _ = integrity_tiny
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(fb.os, "replace", spy)
    bank = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False)
    assert [dst for _, dst in calls] == [bank.path.name + ".safetensors", bank.path.name + ".json"]
    for src, dst in calls:
        assert src.startswith(dst + f".{os.getpid()}-") and src.endswith(".tmp")
    assert not list(tmp_path.glob("*.tmp")) and (tmp_path / f"{bank.path.name}.lock").exists()


_CHILD = textwrap.dedent("""
    import json, sys, time, warnings
    from pathlib import Path
    import open_clip, torch
    from safetensors.torch import save_file
    from fedpurel_lite.data import features as fb
    from fedpurel_lite.data.backbone import load_backbone
    from fedpurel_lite.worlds import shapes

    cfg, cache, go, out = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    open_clip.add_model_config(cfg)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone = load_backbone(sys.argv[5], pretrained="random")
    world = shapes.load_shapes("target", shift=0.6, seed=0, n_train=2, n_test=1)
    builds, build = [], fb.FeatureBank.build.__func__

    def slow_build(cls, *args, **kwargs):  # widen the window in which the other process could interfere
        builds.append(1)
        time.sleep(1.5)
        return build(cls, *args, **kwargs)

    fb.FeatureBank.build = classmethod(slow_build)
    out.with_suffix(".ready").write_text("")
    while not go.exists():
        time.sleep(0.005)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        bank = fb.FeatureBank.load_or_build(backbone, world, cache_dir=cache, progress=False)
    save_file({"train": bank.train_features, "text": bank.text_features}, str(out.with_suffix(".safetensors")))
    out.write_text(json.dumps({"builds": len(builds), "warnings": [str(w.message) for w in rec],
                               "sha": bank.manifest["content_sha256"]}))
""")


@pytest.mark.slow  # whole processes started, killed or resumed: the complete suite's tier, not make check's
def test_two_processes_building_the_same_cache(integrity_tiny, tmp_path, monkeypatch) -> None:
    backbone, world, cfg_dir = integrity_tiny
    cache, go = tmp_path / "cache", tmp_path / "go"
    outs = [tmp_path / f"child{i}.json" for i in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(cfg_dir / f"{INTEGRITY_TINY}.json"), str(cache),
                               str(go), str(out), INTEGRITY_TINY], env=env, stderr=subprocess.PIPE, text=True)
             for out in outs]
    deadline = time.time() + 240
    while not all(o.with_suffix(".ready").exists() for o in outs):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        time.sleep(0.05)
    go.write_text("")  # both start building at once
    for p in procs:
        assert p.wait(timeout=240) == 0, p.stderr.read()
    results = [json.loads(o.read_text()) for o in outs]
    assert sorted(r["builds"] for r in results) == [0, 1]  # the second waited, then reused the first's cache
    assert all(r["warnings"] == [] for r in results) and results[0]["sha"] == results[1]["sha"]
    from safetensors.torch import load_file

    a, b = (load_file(str(o.with_suffix(".safetensors"))) for o in outs)
    assert torch.equal(a["train"], b["train"]) and torch.equal(a["text"], b["text"])
    assert len(list(cache.glob("*.safetensors"))) == 1 and not list(cache.glob("*.tmp"))
    assert not list(cache.glob("*.corrupt-*"))
    monkeypatch.setattr(fb, "encode_images", lambda *a, **k: pytest.fail("the cache should be valid"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bank = fb.FeatureBank.load_or_build(backbone, world, cache_dir=cache, progress=False)
    assert torch.equal(bank.train_features, a["train"])


def test_build_device_is_honoured_and_features_stay_on_cpu(integrity_tiny, monkeypatch) -> None:
    backbone, world, _ = integrity_tiny
    seen = []
    encode = fb.encode_images

    def spy(bb, *args, **kwargs):
        seen.append(next(bb.model.parameters()).device.type)
        return encode(bb, *args, **kwargs)

    monkeypatch.setattr(fb, "encode_images", spy)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    ref = fb.FeatureBank.build(backbone, world, progress=False, device="cpu")
    bank = fb.FeatureBank.build(backbone, world, progress=False, device="auto")
    assert seen == ["cpu", "cpu", expected, expected] and bank.manifest["encoded_on"] == expected
    assert next(backbone.model.parameters()).device.type == "cpu"  # moved back afterwards
    assert bank.train_features.device.type == "cpu" and bank.train_features.dtype == torch.float32
    assert torch.allclose(bank.train_features, ref.train_features, atol=1e-4)
    assert torch.allclose(bank.text_features, ref.text_features, atol=1e-4)


def test_load_or_build_and_embedded_bank_take_a_device(integrity_tiny, tmp_path, monkeypatch) -> None:
    backbone, world, _ = integrity_tiny
    with pytest.raises(ConfigError, match="device='gpu'"):
        fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False, device="gpu")
    bank = fb.FeatureBank.load_or_build(backbone, world, cache_dir=tmp_path, progress=False, device="auto")
    assert bank.train_features.device.type == "cpu"
    asked = []

    def fake_backbone(device="cpu", **kwargs):
        asked.append(device)
        return backbone

    small = shapes.load_shapes("target", shift=0.6, seed=0, n_train=1, n_test=1)
    monkeypatch.setattr(fb, "load_backbone", fake_backbone)
    monkeypatch.setattr(shapes, "load_shapes", lambda *a, **k: small)
    emb = fb.load_embedded_bank(cache_dir=tmp_path / "emb", progress=False, device="auto")
    assert asked == ["auto"] and emb.train_features.shape[0] == 100


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="'gpu'.*'auto'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
