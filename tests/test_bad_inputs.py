"""Every bad input gives one clear ``error:`` line before any work, and nothing already written is lost.

Each case runs the real command line (``python -m fedpurel_lite run ...``, in this process so
loading the data or training can be trapped) from a folder holding files that must survive:
the run's output folder with a file in it, and for the resume cases a checkpoint of a finished
two-round run. Categories: config values and types through ``--set`` and through a TOML file,
the machine and the files (device, weights, datasets, folders), split files, checkpoints and
output folders.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedpurel_lite.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "configs" / "embedded.toml"
WORLD_TABLE = '[world]\nname = "shapes"\nbackbone = "fedpurel-tiny"\n'

# (id, extra --set pairs, TOML text replacing the preset or None, expected message regex)
SET_CASES = [
    ("lr-inf", ["lr=inf", "rounds=2"], "stage1.lr=inf: allowed a finite number"),
    ("lr-nan", ["lr=nan"], "stage1.lr=nan: allowed a finite number"),
    ("lr-zero", ["lr=0"], r"stage1.lr=0.0: allowed \(0, 100\]"),
    ("weight-decay-inf", ["weight_decay=inf"], "stage1.weight_decay=inf: allowed a finite number"),
    ("lambda-inf", ["lambda_proj=inf"], "purification.lambda_proj=inf: allowed a finite number"),
    ("la-tau-inf", ["objective.la.tau=inf"], "objective.la.tau=inf: allowed a finite number"),
    ("rounds-float", ["rounds=1.5"], "federation.rounds='1.5': allowed an integer"),
    ("rounds-bool", ["rounds=true"], "federation.rounds='true': allowed an integer"),
    ("rounds-zero", ["rounds=0"], r"federation.rounds=0: allowed \[1, 1000000\]"),
    ("clients-float", ["num_clients=1.5"], "federation.num_clients='1.5': allowed an integer"),
    ("batch-float", ["batch_size=2.7"], "stage1.batch_size='2.7': allowed an integer"),
    ("seed-negative", ["seed=-1"], r"run.seed=-1: allowed \[0, 4294967295\]"),
    ("seed-too-big", ["seed=4294967296"], r"run.seed=4294967296: allowed \[0, 4294967295\]"),
    ("participation-zero", ["participation=0"], r"federation.participation=0.0: allowed \(0, 1\]"),
    ("participation-big", ["participation=1.5"], r"federation.participation=1.5: allowed \(0, 1\]"),
    ("alpha-zero", ["dirichlet_alpha=0"], r"federation.dirichlet_alpha=0.0: allowed \(0, 1000000\]"),
    ("ratio-fraction", ["imbalance_ratio=0.01"], r"longtail.imbalance_ratio=0.01: allowed \[1, 10000\]"),
    ("personal-alpha", ["personal_alpha=1.2"], r"personalization.personal_alpha=1.2: allowed \[0, 1\]"),
    ("bool-capital", ["class_specific=False"], "peft.prompt.class_specific='False': allowed true or false"),
    ("bool-yes", ["track_cos=yes"], "purification.track_cos='yes': allowed true or false"),
    ("device-name", ["device=gpu"], "world.device='gpu': allowed one of cpu, cuda, auto"),
    ("profile-name", ["profile=linear"], "longtail.profile='linear': allowed one of exp, step"),
    ("projection-name", ["projection=both"], "purification.projection='both': allowed one of global, tensor"),
    ("workers-negative", ["workers=-1"], r"run.workers=-1: allowed \[0, 1024\]"),
    ("unknown-key", ["lrr=0.1"], "unknown config key 'lrr'; did you mean lr"),
    ("ambiguous-key", ["name=fedavg"], "ambiguous: write one of world.name, method.name"),
    ("key-twice", ["lr=0.1", "stage1.lr=0.2"], "stage1.lr is given twice"),
    ("no-equals", ["rounds"], "override 'rounds' must look like key=value"),
    ("unknown-method", ["method=fedavgg"], "method.name='fedavgg': unknown method; allowed one of"),
    ("unknown-peft", ["peft=no-such-peft"], "method.peft='no-such-peft': unknown PEFT; allowed one of"),
    ("lora-rank", ["peft.lora.rank=0"], r"peft.lora.rank=0: allowed \[1, 1024\]"),
    ("lora-towers", ["peft.lora.towers=audio"], "peft.lora.towers='audio': allowed one of vision, text, both"),
    ("old-key-moved", ["lora_rank=4"], r"lora_rank moved to peft.lora.rank"),
    ("too-many-clients", ["num_clients=5000"], r"federation.num_clients=5000: allowed <= \d+"),
    ("split-infeasible", ["num_clients=1084", "participation=0.01"],
     r"federation.num_clients=1084: no Dirichlet split .*; raising federation.dirichlet_alpha does not help \(not "
     r"even to 1e\+06\); lower federation.min_client_size=10 to \d, or lower federation.num_clients=1084$"),
    ("split-too-skewed", ["num_clients=500", "dirichlet_alpha=0.01"],
     r"federation.num_clients=500: no Dirichlet split .*; raise federation.dirichlet_alpha=0.01 to 1, or lower "
     r"federation.num_clients=500$"),
    ("split-alpha-at-top", ["num_clients=200", "dirichlet_alpha=1e6", "min_client_size=54"],
     r"federation.dirichlet_alpha=1e\+06 is already at its largest; lower federation.min_client_size=54 to \d+, "
     r"or lower federation.num_clients=200$"),
    ("clients-beyond-range", ["num_clients=100000"], r"federation.num_clients=100000: allowed \[1, 10000\]"),
    ("unknown-backbone", ["backbone=ViT-Q-99"], "ViT-Q-99"),
    ("backbone-without-weights", ["backbone=ViT-B-32"], r"needs weights: .*--set pretrained="),
    ("missing-weights-file", ["backbone=ViT-B-32", "pretrained=/nonexistent/w.safetensors"],
     "/nonexistent/w.safetensors"),
    ("unknown-world", ["world=imagenet"], "unknown world 'imagenet'"),
    ("folder-without-root", ["world=folder"], "folder"),
    ("cifar-missing", ["world=cifar100", "world.cifar100.root=/nonexistent/cifar"], "/nonexistent/cifar"),
    ("unknown-variant", ["world.shapes.variant=grouped"],
     "world.shapes.variant='grouped': allowed one of stratified, shape-grouped"),
    ("variant-of-another-world", ["world=cifar100", "world.shapes.variant=shape-grouped"],
     "a setting of the shapes world, but world.name='cifar100'"),
]

TOML_CASES = [
    ("toml-rounds-float", "[federation]\nrounds = 1.5\n", "federation.rounds=1.5 is a float; allowed an integer"),
    ("toml-clients-float", "[federation]\nnum_clients = 1.5\n", "federation.num_clients=1.5 is a float"),
    ("toml-batch-float", "[stage1]\nbatch_size = 2.7\n", "stage1.batch_size=2.7 is a float"),
    ("toml-rounds-bool", "[federation]\nrounds = true\n", "federation.rounds=True is a bool"),
    ("toml-lr-string", '[stage1]\nlr = "0.1"\n', "stage1.lr='0.1' is a str; allowed a finite number"),
    ("toml-lr-nan", "[stage1]\nlr = nan\n", "stage1.lr=nan: allowed a finite number"),
    ("toml-unknown-table", "[optimisation]\nlr = 0.1\n", r"unknown table\(s\) \[optimisation\]"),
    ("toml-unknown-key", "[stage1]\nlearning_rate = 0.1\n", r"unknown key\(s\) stage1.learning_rate"),
    ("toml-duplicate-key", "[stage1]\nlr = 0.1\nlr = 0.2\n", "is not valid TOML"),
    ("toml-garbage", "this is not toml\n", "is not valid TOML"),
    ("toml-flat-key", "rounds = 3\n", r"rounds = 3 belongs in its table: \[federation\]"),
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def trapped(monkeypatch):
    """Fail the test if any data is loaded or any training starts."""
    import fedpurel_lite.engine.assembly as assembly
    import fedpurel_lite.engine.simulate as simulate

    def work(*args, **kwargs):
        raise AssertionError("work started before the bad input was reported")

    monkeypatch.setattr(assembly, "load_bank", work)
    monkeypatch.setattr(simulate, "run", work)


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(["run", *args])
    err = capsys.readouterr().err
    return code, err


def _assert_one_error_line(code: int, err: str, pattern: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize(("pairs", "pattern"), [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES])
def test_bad_set_values(pairs, pattern, tmp_path, capsys, trapped):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = _snapshot(tmp_path)
    code, err = _cli(["--config", str(EMBEDDED), "--out", str(out), "--set", *pairs], capsys)
    _assert_one_error_line(code, err, pattern)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("text", "pattern"), [c[1:] for c in TOML_CASES], ids=[c[0] for c in TOML_CASES])
def test_bad_toml_files(text, pattern, tmp_path, capsys, trapped):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(WORLD_TABLE + text if text.startswith("[") and "[world]" not in text else text)
    before = _snapshot(tmp_path)
    code, err = _cli(["--config", str(cfg), "--out", str(tmp_path / "out")], capsys)
    _assert_one_error_line(code, err, pattern)
    assert _snapshot(tmp_path) == before


def test_missing_config_file(tmp_path, capsys, trapped):
    code, err = _cli(["--config", str(tmp_path / "nope.toml")], capsys)
    _assert_one_error_line(code, err, "nope.toml'?: file not found")


def _blocked_folder(tmp_path: Path) -> Path:
    """A folder path that cannot be created (its parent is a file), even for root."""
    (tmp_path / "a-file").write_text("x")
    return tmp_path / "a-file" / "sub"


@pytest.mark.parametrize("which", ["cache", "out"])
def test_unwritable_folders(which, tmp_path, capsys, trapped):
    blocked = _blocked_folder(tmp_path)
    args = (["--set", f"cache_dir={blocked}", "--out", str(tmp_path / "out")] if which == "cache"
            else ["--out", str(blocked)])
    code, err = _cli(["--config", str(EMBEDDED), *args], capsys)
    key = "world.cache_dir" if which == "cache" else "--out"
    _assert_one_error_line(code, err, f"{key}=.*not writable")


def test_cuda_without_a_gpu(tmp_path, capsys, trapped):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = _cli(["--config", str(EMBEDDED), "--out", str(tmp_path / "o"), "--set", "device=cuda"], capsys)
    _assert_one_error_line(code, err, "world.device='cuda': this machine has no CUDA device")


# ----------------------------------------------------------------------------- split files
def _image_tree(root: Path, split: object) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / cls / f"{i}.png")
    (root / "split.json").write_text(split if isinstance(split, str) else json.dumps(split))


@pytest.mark.parametrize(("split", "pattern"), [
    ('{"train": ["cat/0.png",', r"split.json.*line 1"),
    ({"train": ["../../etc/passwd"], "test": ["cat/1.png"]}, r"\.\./\.\./etc/passwd"),
    ({"train": ["/etc/passwd"], "test": ["cat/1.png"]}, "/etc/passwd"),
    ({"train": ["cat/0.png", "cat/9.png"], "test": ["dog/0.png"]}, "cat/9.png"),
    ({"train": "cat/0.png", "test": []}, "split.json"),
], ids=["malformed-json", "escapes-root", "absolute-path", "missing-image", "not-a-list"])
def test_bad_split_files(split, pattern, tmp_path, capsys, trapped):
    root = tmp_path / "imgs"
    _image_tree(root, split)
    before = _snapshot(tmp_path)
    code, err = _cli(["--config", str(EMBEDDED), "--out", str(tmp_path / "out"), "--set", "world=folder",
                      f"world.folder.root={root}", "backbone=fedpurel-tiny"], capsys)
    _assert_one_error_line(code, err, pattern)
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- checkpoints and output folders
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished two-round run of the embedded preset (result.json + checkpoint/)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", "--config", str(EMBEDDED), "--quiet", "--out", str(out), "--set", "rounds=2"]) == 0
    return out


def _tamper_tensors(ckpt: Path) -> None:
    path = sorted(ckpt.glob("round_*.safetensors"))[-1]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_manifest(ckpt: Path) -> None:
    path = sorted(ckpt.glob("round_*.json"))[-1]
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(("prepare", "args", "pattern"), [
    (lambda out: shutil.rmtree(out / "checkpoint"), ["--resume"], "no checkpoint in .*checkpoint to resume from"),
    (lambda out: _tamper_tensors(out / "checkpoint"), ["--resume"],
     r"round_00001.safetensors: content does not match its recorded SHA-256.*last complete round is 0"),
    (lambda out: _truncate_manifest(out / "checkpoint"), ["--resume"],
     r"round_00001.json: not readable JSON.*last complete round is 0: pass --resume-round 0"),
    (None, ["--resume", "--set", "rounds=3", "lr=0.02"], r"other settings \(stage1.lr: 0.01 there, 0.02 now\)"),
    (None, ["--resume", "--set", "rounds=1"], "federation.rounds=1 is below the 2 rounds the checkpoint has"),
    (None, ["--resume-round", "0"], "--resume-round needs --resume"),
    (None, ["--set", "rounds=2", "method=fedavg"], "holds a different run .*method.name: 'fedpurel' there"),
    (None, ["--set", "rounds=3"], r"holds a different run \(federation.rounds: 2 there, 3 now\)"),
    (lambda out: (out / "result.json").unlink(), ["--set", "rounds=2"], "holds an unfinished run of this config"),
], ids=["no-checkpoint", "altered-tensors", "truncated-manifest", "changed-setting", "fewer-rounds",
        "round-without-resume", "other-method", "other-rounds", "unfinished-without-resume"])
def test_bad_resumes_and_output_folders(prepare, args, pattern, finished_run, tmp_path, capsys, trapped):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    if prepare is not None:
        prepare(out)
    before = _snapshot(tmp_path)
    code, err = _cli(["--config", str(EMBEDDED), "--out", str(out), *args], capsys)
    _assert_one_error_line(code, err, pattern)
    assert _snapshot(tmp_path) == before


def test_damaged_newest_round_resumes_from_the_offered_round(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "result.json").unlink()
    _tamper_tensors(out / "checkpoint")
    assert main(["run", "--config", str(EMBEDDED), "--quiet", "--out", str(out), "--set", "rounds=2", "--resume",
                 "--resume-round", "0"]) == 0
    capsys.readouterr()
    fresh = json.loads((finished_run / "result.json").read_text())
    again = json.loads((out / "result.json").read_text())
    strip = [[{k: v for k, v in h.items() if k != "time_s"} for h in r["history"]] for r in (fresh, again)]
    assert strip[0] == strip[1]
    assert list((out / "checkpoint").glob("round_00001.safetensors.damaged-*"))  # set aside, not deleted


def test_debug_shows_the_traceback_and_a_subprocess_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedpurel_lite", "run", "--config", str(EMBEDDED), "--set",
                           "lr=inf"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: stage1.lr=inf: allowed a finite number"
    assert proc.stdout == ""
    debug = subprocess.run([sys.executable, "-m", "fedpurel_lite", "run", "--config", str(EMBEDDED), "--debug",
                            "--set", "lr=inf"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr



# ----------------------------------------------------------------------------- hostile values, through a real process
# (id, --set pairs after rounds=1, outcome, pattern): "error" = one error: line (exit 2) before any work, the
# output folder never created; "stopped" = the finite guard's one error: line after training began, no result
# written; "finite" = exit 0 with every final tensor finite.
HOSTILE = [
    ("lambda-huge", ["lambda_proj=1e308"], "error", r"purification.lambda_proj=1e\+308: allowed \[0, 10\]"),
    ("la-tau-huge", ["method=fedavg-la", "tau=1e308"], "error", r"objective.la.tau=1e\+308: allowed \[0, 100\]"),
    ("prox-mu-huge", ["method=fedprox", "mu=1e308"], "error", r"objective.prox.mu=1e\+308: allowed \[0, 1000\]"),
    ("lora-alpha-huge", ["peft=lora", "peft.lora.alpha=1e308"], "error",
     r"peft.lora.alpha=1e\+308: allowed \(0, 1024\]"),
    ("momentum-one-lr-huge", ["momentum=0.9999999999", "lr=1000"], "error", r"stage1.lr=1000.0: allowed \(0, 100\]"),
    ("momentum-one", ["momentum=0.9999999999"], "error", r"stage1.momentum=0.9999999999: allowed \[0, 0.999\]"),
    ("lr-huge", ["lr=1e308"], "error", r"stage1.lr=1e\+308: allowed \(0, 100\]"),
    ("weight-decay-huge", ["weight_decay=1e308"], "error", r"stage1.weight_decay=1e\+308: allowed \[0, 1\]"),
    ("decay-grows", ["lr=100", "weight_decay=1"], "error", r"stage1.lr \* stage1.weight_decay = 100 \* 1 = 100: "
     r"allowed < 2 \(1 \+ stage1.momentum\) = 3.8"),
    ("batch-2-63", ["batch_size=9223372036854775808"], "error",
     r"stage1.batch_size=9223372036854775808: allowed \[1, 1000000\]"),
    ("ratio-huge", ["imbalance_ratio=1e308"], "error", r"longtail.imbalance_ratio=1e\+308: allowed \[1, 10000\]"),
    ("dirichlet-huge", ["dirichlet_alpha=1e308"], "error",
     r"^error: federation.dirichlet_alpha=1e\+308: allowed \(0, 1000000\]$"),
    ("many-clients-dirichlet", ["num_clients=1084", "participation=0.01"], "error",
     r"^error: federation.num_clients=1084: no Dirichlet split .* raising federation.dirichlet_alpha does not help"),
    ("prox-diverges", ["method=fedprox", "objective.prox.mu=1000", "lr=1", "num_clients=4"], "stopped",
     r"^error: training became non-finite in round 0, client \d+, stage 1 \(local training of the shared PEFT\), "
     r"at step \d+ the loss is (nan|inf); most likely at fault: objective.prox.mu=1000 .*no round completed"),
    ("edges-finite", ["lr=100", "momentum=0.999", "lambda_proj=10", "personal_lr=100", "num_clients=4"], "finite", ""),
]


@pytest.mark.parametrize(("pairs", "outcome", "pattern"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_values_end_finite_or_in_one_error_line(pairs, outcome, pattern, tmp_path):
    import math

    from safetensors.torch import load_file

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fedpurel_lite", "run", "--config", str(EMBEDDED), "--quiet",
                           "--out", str(out), "--set", "rounds=1", *pairs], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    if outcome == "finite":
        assert proc.returncode == 0, proc.stderr
        state = load_file(out / "final_state.safetensors")
        assert state and all(bool(t.isfinite().all()) for t in state.values() if t.is_floating_point())
        result = json.loads((out / "result.json").read_text())
        assert math.isfinite(result["history"][-1]["gm"]["accuracy"])
        return
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    assert "raise alpha" not in lines[0]
    if outcome == "error":
        assert not out.exists()
    else:
        assert not (out / "result.json").exists() and not (out / "final_state.safetensors").exists()
        assert not list(out.rglob("round_*"))
