"""The bias-transfer app without a front end: its pure view, its precomputed grid, its run cache and its controls."""

from __future__ import annotations

import json
import threading

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PathCollection

from conftest import explorer_config


def test_bias_view_measures_the_personal_models(core_bank, core_one_thread):
    from fedpurel_lite.data.partition import build_federation, count_matrix
    from fedpurel_lite.engine.assembly import personal_predictions
    from fedpurel_lite.engine.metrics import local_head_lean
    from fedpurel_lite.views.bias_app import CELLS, bias_view

    runs: dict = {}
    view = bias_view(core_bank, explorer_config(), 10, 1.0, ("fedavg", "fedpurel"), rounds=2, runs=runs)
    assert view["config"].federation.rounds == 2 and set(view["results"]) == {"fedavg", "fedpurel"}
    assert set(view["shift"]) == set(view["lean"]) == {"fedavg", "fedpurel"}
    assert view["shift"]["fedavg"].shape == (20,) and view["lean"]["fedpurel"].shape == (5,)
    assert list(view["table"].index) == ["zero-shot", "fedavg", "fedpurel"]
    assert view["table"].loc["zero-shot", "PM all"] == round(view["groups_pm"]["zero-shot"]["accuracy"], 1)
    # the lean drawn is the metric of the run's own personal predictions (an independent path)
    cfg = view["config"]
    labels, test = np.asarray(core_bank.train_labels), np.asarray(core_bank.test_labels)
    fed = build_federation(labels, test, core_bank.class_order, cfg)
    want = local_head_lean(count_matrix(fed.client_train, labels, fed.num_classes), [test[i] for i in fed.client_test],
                           personal_predictions(view["results"]["fedpurel"], core_bank))
    np.testing.assert_allclose(view["lean"]["fedpurel"], want)
    # the grid and calibration sit beside the lean, for zero-shot too
    assert set(view["grid"]) == set(view["ece"]) == {"zero-shot", "fedavg", "fedpurel"}
    assert list(view["grid"]["fedavg"]) == list(CELLS) and view["samples"].sum() > 0
    assert 0 <= view["ece"]["fedpurel"]["overall"] <= 100
    assert len(runs) == 2
    again = bias_view(core_bank, explorer_config(), 10, 1.0, ("fedpurel",), rounds=2, runs=runs)
    assert len(runs) == 2, "finished runs are reused"
    assert again["results"]["fedpurel"] is view["results"]["fedpurel"]


@pytest.fixture
def tiny_grid(core_bank, tmp_path):
    """A grid file of the app for the synthetic bank: two settings, one round, every method."""
    from fedpurel_lite.views import bias_app
    from fedpurel_lite.views.explore_grid import fingerprint, point_key, write_grid

    cfg, runs = explorer_config(), {}
    points = {point_key(r, 1.0): bias_app.app_point(core_bank, cfg, r, 1.0, bias_app.APP_METHODS, 1, runs)
              for r in (10, 25)}
    path = write_grid(tmp_path / "bias_app.json", "bias_app", fingerprint(cfg, 1, bias_app.APP_METHODS, core_bank),
                      {"imbalance_ratio": [10, 25], "dirichlet_alpha": [1.0]}, points)
    return path, runs


def test_app_answers_grid_settings_from_the_file(core_bank, core_one_thread, tiny_grid):
    from fedpurel_lite.views.bias_app import BiasTransferApp, bias_view

    path, runs = tiny_grid
    app = BiasTransferApp(core_bank, explorer_config(), rounds=1, methods=("fedavg", "folio"), draw=False, grid=path)
    assert app.store is not None and app.runs == {}, "a grid setting runs nothing"
    app.ratio.value = 25
    app.boxes["fedpurel"].value = True
    assert app.runs == {} and app.data["config"].longtail.imbalance_ratio == 25
    live = bias_view(core_bank, explorer_config(), 25, 1.0, ("fedavg", "folio", "fedpurel"), 1, runs)
    for m in ("fedavg", "folio", "fedpurel"):
        np.testing.assert_allclose(app.data["shift"][m], live["shift"][m], atol=1e-3)
        np.testing.assert_allclose(app.data["lean"][m], live["lean"][m], atol=1e-3)
    assert (app.data["table"] - live["table"]).abs().max().max() <= 0.1 + 1e-9  # 1-decimal rounding of 3-decimal values
    app.ratio.value = 50  # off the file's grid: runs here, and keeps them
    assert len(app.runs) == 3 and app.data["config"].longtail.imbalance_ratio == 50


def test_grid_file_of_another_protocol_or_bank_is_not_used(core_bank, tiny_grid):
    from fedpurel_lite.views.bias_app import APP_METHODS
    from fedpurel_lite.views.explore_grid import GridStore

    store = GridStore.load(tiny_grid[0])
    assert store.matches(explorer_config(), 1, APP_METHODS, core_bank)
    assert store.matches(explorer_config(imbalance_ratio=50, workers=2), 1, APP_METHODS), "varied keys do not count"
    assert not store.matches(explorer_config(seed=4), 1, APP_METHODS, core_bank)
    assert not store.matches(explorer_config(), 2, APP_METHODS, core_bank)
    assert not store.matches(explorer_config(), 1, APP_METHODS[:3], core_bank)
    core_bank.logit_scale += 1.0
    try:
        assert not store.matches(explorer_config(), 1, APP_METHODS, core_bank)
    finally:
        core_bank.logit_scale -= 1.0


def test_app_controls_recompute(core_bank, core_one_thread):
    from fedpurel_lite.views.bias_app import BiasTransferApp

    app = BiasTransferApp(core_bank, explorer_config(), rounds=1, methods=("fedavg",), draw=False)
    assert app.methods == ("fedavg",) and app.data["config"].longtail.imbalance_ratio == 10
    app.boxes["fedpurel"].value = True  # ticking a method: the app recomputes
    assert set(app.data["lean"]) == {"fedavg", "fedpurel"}
    app.alpha.value = 0.1
    assert app.data["config"].federation.dirichlet_alpha == 0.1
    assert app.status.value == "" and not any(s.disabled for s in app.sliders)


def test_presses_from_the_front_end_are_queued_and_coalesced(core_bank, core_one_thread, monkeypatch):
    from fedpurel_lite.views import widgets
    from fedpurel_lite.views.bias_app import BiasTransferApp

    app = BiasTransferApp(core_bank, explorer_config(), rounds=1, methods=("fedavg", "fedpurel"), draw=False)
    assert len(app.runs) == 2
    seen: list[str] = []
    app.status.observe(lambda change: seen.append(change["new"]), names="value")
    release, compute = threading.Event(), app.compute

    def held(settings, progress=None):  # the first setting is still running while the reader presses on
        release.wait(60)
        return compute(settings, progress)

    monkeypatch.setattr(app, "compute", held)
    monkeypatch.setattr(widgets, "from_front_end", lambda: True)  # as if a reader pressed the keys
    for ratio in (25, 50, 100):
        app.ratio.value = ratio
        assert not app.ratio.disabled, "controls stay live: a press is never dropped"
    assert "computing" in app.status.value
    release.set()
    app.wait(timeout=120)
    assert app.data["config"].longtail.imbalance_ratio == 100 and app.shown[0] == 100
    assert any("run 1 of 2" in s for s in seen), seen
    assert app.status.value == ""
    assert sorted({key[0] for key in app.runs}) == [10.0, 100.0], "settings passed over are not run"
    app.ratio.value = 10  # a kept setting answers at once, even from the front end
    assert app.data["config"].longtail.imbalance_ratio == 10 and app._worker is None


def test_app_draws_fixed_axes_notes_outside_the_data(core_bank, core_one_thread, tiny_grid):
    from fedpurel_lite.views.bias_app import APP_METHODS, BiasTransferApp

    app = BiasTransferApp(core_bank, explorer_config(), rounds=1, methods=("fedavg",), draw=False, grid=tiny_grid[0])
    fig = app.draw()
    assert len(fig.axes) == 5 and fig.legends
    limits = [ax.get_ylim() for ax in fig.axes]
    assert any("Head lean:" in t.get_text() for t in fig.texts), "notes are figure text, under the panels"
    assert not any("lean" in t.get_text() for ax in fig.axes for t in ax.texts), "no note inside a panel"
    plt.close(fig)
    app.ratio.value = 25
    for box in app.boxes.values():
        box.value = True
    fig = app.draw()
    assert [ax.get_ylim() for ax in fig.axes] == limits, "the same axes at every setting"
    shift_ax = fig.axes[0]
    assert len(app.methods) == len(APP_METHODS) and not shift_ax.collections, "many methods: trend lines only"
    assert len(shift_ax.lines) >= len(APP_METHODS)
    plt.close(fig)
    app.boxes["fedpurel"].value = False
    for box in list(app.boxes.values())[1:]:
        box.value = False
    fig = app.draw()
    assert any(isinstance(c, PathCollection) for c in fig.axes[0].collections), "one method: the points"
    plt.close(fig)
    app.boxes["fedavg"].value = False
    fig = app.draw()
    assert any("at least one method" in t.get_text() for ax in fig.axes for t in ax.texts)
    plt.close(fig)


def test_notes_say_when_the_tail_is_empty():
    from fedpurel_lite.views.bias_app import figure_notes

    data = {"groups": np.array([0, 1, 1]), "lean": {"fedavg": np.array([2.0])}, "zero_shot_lean": np.array([0.0])}
    notes = figure_notes(10, data)
    assert notes[0].startswith("No tail classes at IF = 10") and len(notes) == 2
    assert len(figure_notes(100, {**data, "groups": np.array([0, 1, 2])})) == 1


def test_negative_lean_is_explained():
    from fedpurel_lite.views.bias_app import lean_note

    assert lean_note({"fedavg": np.array([1.0, 2.0])}, np.array([0.0])) == ""
    note = lean_note({"fedavg": np.array([-3.0, 1.0]), "folio": np.array([2.0])}, np.array([-0.5, 0.5]))
    assert "fedavg" in note and "folio" not in note and "less often" in note and "+0.0" in note


def test_the_app_renders_its_widget(core_bank, core_one_thread, tiny_grid):
    from fedpurel_lite.views.bias_app import BiasTransferApp

    app = BiasTransferApp(core_bank, explorer_config(), rounds=1, grid=tiny_grid[0])
    (out,) = app.output.outputs
    assert out["data"]["image/png"] and "text/html" in app.table.outputs[0]["data"]
    json.dumps(app.output.outputs)  # what the front end and a saved notebook receive is plain JSON
