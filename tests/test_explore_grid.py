"""The explorers' precomputed grids: the file format, the command, and the shipped files against the code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import explorer_config

ROOT = Path(__file__).resolve().parents[1]


def test_grid_text_is_canonical(tmp_path):
    from fedpurel_lite.views.explore_grid import GridStore, grid_text, point_key, rounded, write_grid

    assert rounded({"a": np.float32(1.23456), "b": [float("nan"), -0.0001, np.int64(3)], "c": np.array([0.5])}) == \
        {"a": 1.235, "b": [None, 0.0, 3], "c": [0.5]}
    assert str(rounded(-0.0001)) == "0.0", "no negative zero in the file"
    points = {point_key(100, 0.5): {"x": [1.0, float("inf")]}, point_key(10, 1.0): {"x": [2.0]}}
    text = grid_text("demo", {"rounds": 4}, {"imbalance_ratio": [10, 100]}, points)
    assert text == grid_text("demo", {"rounds": 4}, {"imbalance_ratio": [10, 100]}, dict(reversed(points.items())))
    path = write_grid(tmp_path / "g.json", "demo", {"rounds": 4}, {"imbalance_ratio": [10, 100]}, points)
    assert path.read_text() == text and json.loads(text)["points"]["100|0.5"] == {"x": [1.0, None]}
    store = GridStore.load(path)
    assert store.get(100, 0.5) == {"x": [1.0, None]} and store.get(100.0, 0.50) is not None
    assert store.get(50, 0.5) is None and sorted(store.values("x")) == [1.0, 2.0]
    assert GridStore.load(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert GridStore.load(tmp_path / "bad.json") is None


def test_the_command_checks_its_input_before_any_work(tmp_path, capsys):
    from fedpurel_lite.__main__ import main

    assert main(["explore-grid", "--config", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("")
    assert main(["explore-grid", "--out", str(tmp_path / "file")]) == 2


@pytest.mark.parametrize("name", ["bias_app", "federation"])
def test_shipped_grid_matches_the_embedded_protocol(name):
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.views import bias_app, widgets
    from fedpurel_lite.views.explore_grid import FOLDER, GridStore

    spec = {"bias_app": (bias_app.GRID_FILE, bias_app.GRID_ROUNDS, bias_app.APP_METHODS, bias_app.RATIOS,
                         bias_app.ALPHAS),
            "federation": (widgets.FEDERATION_GRID_FILE, widgets.FEDERATION_GRID_ROUNDS, widgets.FEDERATION_METHODS,
                           widgets.FEDERATION_RATIOS, widgets.FEDERATION_ALPHAS)}[name]
    store = GridStore.load(FOLDER / spec[0])
    assert store is not None, f"data/explore/{spec[0]} is missing: python -m fedpurel_lite explore-grid"
    config = RunConfig.load(ROOT / "configs" / "embedded.toml")
    assert store.matches(config, spec[1], spec[2]), \
        f"data/explore/{spec[0]} is for another protocol: python -m fedpurel_lite explore-grid --only {name}"
    assert all(store.get(r, a) is not None for r in spec[3] for a in spec[4]), "every slider setting is in the file"
    assert (FOLDER / spec[0]).stat().st_size < 1_000_000


def test_a_shipped_point_is_what_the_code_computes(core_one_thread):
    """One grid point re-run live (a short federation of the embedded world) equals the shipped numbers."""
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.engine import assembly
    from fedpurel_lite.views import widgets
    from fedpurel_lite.views.explore_grid import FOLDER, GridStore, rounded

    store = GridStore.load(FOLDER / widgets.FEDERATION_GRID_FILE)
    config = RunConfig.load(ROOT / "configs" / "embedded.toml")
    bank = assembly.load_bank(config, progress=False)
    assert store.matches(config, widgets.FEDERATION_GRID_ROUNDS, widgets.FEDERATION_METHODS, bank), \
        "the shipped grid was computed on another feature bank: python -m fedpurel_lite explore-grid"
    live = rounded(widgets.federation_point(bank, config.with_overrides({"workers": 1}), 100, 1.0, ("fedavg",),
                                            widgets.FEDERATION_GRID_ROUNDS))
    shipped = store.get(100, 1.0)["methods"]["fedavg"]
    for key in ("gm", "gm_tail"):
        np.testing.assert_allclose(live["methods"]["fedavg"][key], shipped[key], atol=0.02)
    for col, value in shipped["row"].items():
        assert value is None and live["methods"]["fedavg"]["row"][col] is None or \
            math.isclose(live["methods"]["fedavg"]["row"][col], value, abs_tol=0.02), col


def test_explorer_config_is_off_the_shipped_grid():
    from fedpurel_lite.views.explore_grid import FOLDER, GridStore

    store = GridStore.load(FOLDER / "federation.json")
    assert store is None or not store.matches(explorer_config(), 4, ("zero-shot", "fedavg", "fedpurel"))


def test_a_shipped_app_point_is_what_the_code_computes(core_one_thread):
    """One method of one app grid point re-run live equals the shipped numbers."""
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.engine import assembly
    from fedpurel_lite.views import bias_app
    from fedpurel_lite.views.explore_grid import FOLDER, GridStore, rounded

    store = GridStore.load(FOLDER / bias_app.GRID_FILE)
    config = RunConfig.load(ROOT / "configs" / "embedded.toml")
    bank = assembly.load_bank(config, progress=False)
    assert store.matches(config, bias_app.GRID_ROUNDS, bias_app.APP_METHODS, bank)
    live = rounded(bias_app.app_point(bank, config.with_overrides({"workers": 1}), 200, 5.0, ("fedavg",),
                                      bias_app.GRID_ROUNDS))
    shipped = store.get(200, 5.0)
    assert live["counts"] == shipped["counts"] and live["samples"] == shipped["samples"]
    for key in ("lean", "change", "grid"):
        np.testing.assert_allclose(np.array(live["methods"]["fedavg"][key], dtype=float),
                                   np.array(shipped["methods"]["fedavg"][key], dtype=float), atol=0.02)
    np.testing.assert_allclose(np.array(live["zero-shot"]["lean"], dtype=float),
                               np.array(shipped["zero-shot"]["lean"], dtype=float), atol=0.02)
