"""The analysis arrays a run records, their result file, and the bias-transfer report (API and command line)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpurel_lite.config import RunConfig
from fedpurel_lite.engine.metrics import client_metrics
from fedpurel_lite.engine.results import ANALYSIS, RunResult
from fedpurel_lite.engine.simulate import run
from fedpurel_lite.errors import IntegrityError
from fedpurel_lite.views.palette import METHOD_STYLES
from fedpurel_lite.views.report import REPORT_HTML, load_runs, views_of, write_report
from fedpurel_lite.views.report_figures import FIGURES, method_colour

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "configs" / "embedded.toml"
pytestmark = pytest.mark.usefixtures("core_one_thread")


def _cfg(**kw):
    base = dict(num_clients=5, participation=0.4, rounds=3, imbalance_ratio=10, min_client_size=5, lr=0.2,
                personal_lr=0.2, batch_size=16, seed=3)
    base.update(kw)
    return RunConfig().with_overrides(base)


@pytest.fixture(scope="module")
def run_dirs(core_bank, tmp_path_factory):
    """Three small runs on the synthetic bank, saved as run folders."""
    root = tmp_path_factory.mktemp("runs")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [run(_cfg(method=m), bank=core_bank, progress=False).save(root / m) for m in ("fedavg", "interp",
                                                                                             "fedpurel")]
    finally:
        torch.set_num_threads(old)


def _embedded_figures(page: Path) -> dict[str, bytes]:
    """Figure name -> the PNG bytes embedded in the page (no figure is a separate file)."""
    found = re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)' alt='[^']*' title='([^']+)'",
                       page.read_text())
    return {name: base64.b64decode(data) for data, name in found}


def test_analysis_arrays_match_the_last_round(run_dirs, core_bank):
    res = RunResult.load(run_dirs[2])
    a = {k: v.numpy() for k, v in res.analysis.items()}
    n, k, c = len(core_bank.test_labels), 5, 20
    assert a["test_labels"].shape == a["gm_pred"].shape == a["gm_confidence"].shape == a["zs_correct"].shape == (n,)
    assert a["client_counts"].shape == (k, c) and a["zs_per_class"].shape == (c,)
    assert a["client_counts"].sum() == sum(res.federation["client_train_sizes"])
    assert a["client_test_offsets"].tolist() == np.cumsum([0, *res.federation["client_test_sizes"]]).tolist()
    assert ((a["gm_confidence"] > 0) & (a["gm_confidence"] <= 1)).all()
    last = res.history[-1]
    assert np.isclose(a["gm_correct"].mean() * 100, last["gm"]["accuracy"])
    assert np.array_equal(a["gm_correct"], a["gm_pred"] == a["test_labels"])
    off, truth = a["client_test_offsets"], a["test_labels"][a["client_test_index"]]
    split = [slice(off[i], off[i + 1]) for i in range(k)]
    groups = np.array(res.federation["groups"])
    per = client_metrics([truth[s] for s in split], [a["pm_pred"][s] for s in split], c, groups)
    assert np.allclose(per["accuracy"], last["pm"]["per_client_accuracy"])
    assert np.array_equal(a["pm_correct"], a["pm_pred"] == truth)


def test_zero_shot_reference_is_the_zero_shot_method(run_dirs, core_bank):
    zs = run(_cfg(method="zero-shot", rounds=1), bank=core_bank, progress=False)
    recorded = RunResult.load(run_dirs[0]).analysis["zs_per_class"].numpy()
    assert np.allclose(np.array(zs.history[-1]["gm"]["per_class"], dtype=float), recorded, equal_nan=True)
    assert torch.equal(zs.analysis["zs_pred"], zs.analysis["gm_pred"])


def test_resumed_run_records_identical_arrays(core_bank, tmp_path):
    cfg = _cfg(method="fedpurel", rounds=4)
    full = run(cfg, bank=core_bank, progress=False)

    def stop(r, entry):
        if r == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, bank=core_bank, progress=False, checkpoint_dir=tmp_path, on_round_end=stop)
    resumed = run(cfg, bank=core_bank, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert set(resumed.analysis) == set(full.analysis)
    assert all(torch.equal(resumed.analysis[k], full.analysis[k]) for k in full.analysis)


def test_analysis_file_is_hashed_and_checked(run_dirs, tmp_path):
    res = RunResult.load(run_dirs[1])
    out = res.save(tmp_path / "r")
    meta = json.loads((out / "result.json").read_text())
    assert len(meta["analysis_sha256"]) == 64 and (out / ANALYSIS).is_file()
    back = RunResult.load(out)
    assert all(torch.equal(back.analysis[k], res.analysis[k]) for k in res.analysis)
    data = bytearray((out / ANALYSIS).read_bytes())
    data[-1] ^= 1
    (out / ANALYSIS).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="analysis.safetensors: content does not match"):
        RunResult.load(out)
    # a result without arrays (an older folder, a Flower run) loads, and no stale file stays beside it
    res.analysis = {}
    res.save(out)
    assert not (out / ANALYSIS).exists() and RunResult.load(out).analysis == {}


def test_report_writes_every_figure_and_references_it(run_dirs, tmp_path):
    page = write_report(load_runs(run_dirs[:2]), tmp_path / "rep")
    assert page.name == REPORT_HTML
    assert [p.name for p in page.parent.iterdir()] == [REPORT_HTML]  # one self-contained file
    images = _embedded_figures(page)
    assert sorted(images) == sorted(FIGURES)
    for name, png in images.items():
        assert len(png) > 5000, name
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    for heading in ("Bias-transfer grid", "Expected calibration error", "Head lean", "worst class",
                    "harmonic mean", "geometric mean", "per-class std"):
        assert heading in text
    assert "balancedness" not in text.lower()


def test_report_is_byte_identical_when_rewritten(run_dirs, tmp_path):
    results = load_runs(run_dirs)
    a, b = write_report(results, tmp_path / "a").parent, write_report(results, tmp_path / "b").parent
    assert [p.name for p in a.iterdir()] == [p.name for p in b.iterdir()] == [REPORT_HTML]
    assert (a / REPORT_HTML).read_bytes() == (b / REPORT_HTML).read_bytes()


def test_report_of_results_without_arrays_and_repeated_methods(run_dirs, tmp_path):
    old = RunResult.load(run_dirs[0])
    old.analysis = {}
    old.save(tmp_path / "old")
    results = load_runs([run_dirs[0], tmp_path / "old", run_dirs[2]])
    assert list(results) == ["fedavg [fedavg]", "fedavg [old]", "fedpurel"]
    views = views_of(results)
    assert [v.style for v in views] == ["-", "--", "-"]
    page = write_report(views, tmp_path / "rep")
    assert sorted(_embedded_figures(page)) == sorted(FIGURES)
    assert "<td>fedavg [old]</td><td>fedavg</td>" in page.read_text()


def test_method_colours_are_the_series_palette():
    assert method_colour("fedpurel") == METHOD_STYLES["fedpurel"].colour != method_colour("fedavg")
    assert method_colour("my-method") == method_colour("my-method")  # unregistered: stable across processes


def test_report_command_on_two_run_folders(run_dirs, tmp_path):
    out = tmp_path / "rep"
    code = ("import sys, matplotlib; from fedpurel_lite.__main__ import main; "
            "raw = lambda: dict.__getitem__(matplotlib.rcParams, 'backend'); backend = raw(); "
            "rc = main(sys.argv[1:]); assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
            "assert raw() == backend, 'backend switched'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "report", str(run_dirs[0]), str(run_dirs[2]), "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out / REPORT_HTML}" in done.stdout
    assert sorted(_embedded_figures(out / REPORT_HTML)) == sorted(FIGURES)
    assert [p.name for p in out.iterdir()] == [REPORT_HTML]  # the lock is gone, no figure file beside
    bad = subprocess.run([sys.executable, "-m", "fedpurel_lite", "report", str(tmp_path / "nowhere"), "--out",
                          str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "result.json: missing" in bad.stderr


@pytest.mark.slow  # whole processes started, killed or resumed: the complete suite's tier, not make check's
def test_embedded_run_folders_give_a_report(tmp_path):
    """Two 2-round ``run`` folders of the embedded default, then ``report`` on them (the command line end to end)."""
    dirs = [tmp_path / m for m in ("fedavg", "fedpurel")]
    for d in dirs:
        done = subprocess.run([sys.executable, "-m", "fedpurel_lite", "run", "--config", str(EMBEDDED), "--quiet",
                               "--set", "rounds=2", f"method.name={d.name}", "--out", str(d)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert (d / ANALYSIS).stat().st_size < 500_000  # 10,000 test images
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "fedpurel_lite", "report", *map(str, dirs), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert sorted(_embedded_figures(out / REPORT_HTML)) == sorted(FIGURES)
    assert all(len(png) > 5000 for png in _embedded_figures(out / REPORT_HTML).values())


def test_local_mass_sets_the_clients_own_head(run_dirs, tmp_path, capsys):
    from fedpurel_lite.__main__ import main

    results = load_runs(run_dirs[:1])
    half, most = views_of(results), views_of(results, local_mass=0.9)
    grid_half = half[0].measures["clients"]["personal"]["grid"]["samples"]
    grid_most = most[0].measures["clients"]["personal"]["grid"]["samples"]
    assert grid_half.sum() == grid_most.sum() and grid_most[:, 0].sum() > grid_half[:, 0].sum()
    assert main(["report", str(run_dirs[0]), "--local-mass", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--local-mass 0.0: allowed a share in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
