"""Checkpoints survive kill -9 anywhere, resume bit-for-bit, and detect any alteration."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedpurel_lite.engine.checkpoint import find_resume_point, read_checkpoint, save_checkpoint
from fedpurel_lite.engine.results import canonical_json, sha256_bytes
from fedpurel_lite.errors import IntegrityError

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "configs" / "embedded.toml"
ROUNDS = 12


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fedpurel_lite", "run", "--config", str(EMBEDDED), "--quiet", "--out", str(out),
            "--set", f"rounds={ROUNDS}", "seed=5", *extra]


def _history(out: Path) -> list[dict]:
    data = json.loads((out / "result.json").read_text())
    return [{k: v for k, v in h.items() if k != "time_s"} for h in data["history"]]


def _newest_round(ckpt: Path) -> int:
    rounds = [int(p.name[6:11]) for p in ckpt.glob("round_*.json")] if ckpt.is_dir() else []
    return max(rounds, default=-1)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(_cmd(out), check=True, capture_output=True, timeout=600, cwd=ROOT)
    return out


@pytest.mark.slow  # whole processes started, killed or resumed: the complete suite's tier, not make check's
def test_kill_9_at_random_points_then_resume_gives_identical_results(uninterrupted, tmp_path):
    rng = random.Random(20261129)
    out = tmp_path / "run"
    kills = 0
    for target in (2, 6, 9):
        args = ["--resume"] if kills else []
        proc = subprocess.Popen(_cmd(out, *args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while _newest_round(out / "checkpoint") < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.12))  # somewhere inside the next round or its checkpoint write
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 2, "the run finished before it could be killed"
    assert not (out / "result.json").exists()
    done = subprocess.run(_cmd(out, "--resume"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert _history(out) == _history(uninterrupted)
    a, b = load_file(str(out / "final_state.safetensors")), load_file(str(uninterrupted / "final_state.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _tensors() -> dict[str, torch.Tensor]:
    return {"global/w": torch.arange(6.0).reshape(2, 3), "personal/0/w": torch.ones(3)}


def _config(rounds: int = 5) -> dict:
    return {"federation": {"rounds": rounds}, "run": {"seed": 1, "workers": 0, "num_threads": 0}}


def test_a_kill_between_the_tensor_file_and_the_manifest_leaves_the_previous_round(tmp_path):
    for r in range(3):
        save_checkpoint(tmp_path, r, _config(), "fedavg", [{"round": i} for i in range(r + 1)], _tensors())
    # killed while writing round 3: its tensor file landed, its manifest did not, a temporary file is left
    (tmp_path / "round_00003.safetensors").write_bytes(b"partial")
    (tmp_path / ".round_00003.json.123.tmp").write_text("{")
    point = find_resume_point(tmp_path)
    assert point.round == 2 and len(point.history) == 3
    assert torch.equal(point.tensors["global/w"], _tensors()["global/w"])
    assert sorted(p.name for p in tmp_path.glob("round_*.json")) == ["round_00001.json", "round_00002.json"]


@pytest.mark.parametrize("edit", ["history", "config", "tensor-hash", "tensors"])
def test_any_alteration_is_detected_and_named(tmp_path, edit):
    save_checkpoint(tmp_path, 0, _config(), "fedavg", [{"round": 0, "gm": {"accuracy": 50.0}}], _tensors())
    manifest = tmp_path / "round_00000.json"
    meta = json.loads(manifest.read_text())
    if edit == "history":
        meta["history"][0]["gm"]["accuracy"] = 99.0
    elif edit == "config":
        meta["config"]["run"]["seed"] = 2
    elif edit == "tensor-hash":
        meta["tensors"]["sha256"] = "0" * 64
    if edit == "tensors":
        from safetensors.torch import save_file

        save_file({"global/w": torch.zeros(2, 3), "personal/0/w": torch.ones(3)},
                  str(tmp_path / meta["tensors"]["file"]))
    else:
        manifest.write_text(json.dumps(meta))
    which = "round_00000.safetensors" if edit == "tensors" else "round_00000.json"
    with pytest.raises(IntegrityError, match=rf"{which}: content does not match its recorded SHA-256"):
        read_checkpoint(tmp_path, 0)
    with pytest.raises(IntegrityError, match="no complete round is left"):
        find_resume_point(tmp_path)


def test_only_the_two_newest_rounds_are_kept_and_paths_stay_inside(tmp_path):
    for r in range(4):
        save_checkpoint(tmp_path, r, _config(), "fedavg", [], _tensors())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_00002.json", "round_00002.safetensors",
                                                          "round_00003.json", "round_00003.safetensors"]
    # a manifest (with a valid hash) that names a file outside its folder is read inside it, never outside
    outside = tmp_path.parent / "outside.safetensors"
    outside.write_bytes((tmp_path / "round_00003.safetensors").read_bytes())
    meta = json.loads((tmp_path / "round_00003.json").read_text())
    meta.pop("manifest_sha256")
    meta["tensors"]["file"] = "../outside.safetensors"
    meta["manifest_sha256"] = sha256_bytes(canonical_json(meta).encode())
    (tmp_path / "round_00003.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match=f"{tmp_path}/outside.safetensors: cannot be read"):
        read_checkpoint(tmp_path, 3)
