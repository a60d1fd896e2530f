"""The bias-transfer app without a front end: its pure view, its run cache and its controls."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from conftest import explorer_config


def test_bias_view_measures_the_personal_models(core_bank, core_one_thread):
    from fedpurel_lite.bias_app import bias_view

    runs: dict = {}
    view = bias_view(core_bank, explorer_config(), 10, 1.0, ("fedavg", "fedpurel"), rounds=2, runs=runs)
    assert view["config"].federation.rounds == 2 and set(view["results"]) == {"zero-shot", "fedavg", "fedpurel"}
    assert set(view["shift"]) == set(view["lean"]) == {"fedavg", "fedpurel"}
    assert view["shift"]["fedavg"].shape == (20,) and view["lean"]["fedpurel"].shape == (5,)
    assert list(view["table"].index) == ["zero-shot", "fedavg", "fedpurel"]
    # the zero-shot row is the reference: no change against itself
    assert view["table"].loc["zero-shot", "PM all"] == round(view["groups_pm"]["zero-shot"]["accuracy"], 1)
    assert len(runs) == 3
    again = bias_view(core_bank, explorer_config(), 10, 1.0, ("fedpurel",), rounds=2, runs=runs)
    assert len(runs) == 3, "finished runs are reused"
    assert again["results"]["fedpurel"] is view["results"]["fedpurel"]


def test_app_controls_recompute(core_bank, core_one_thread):
    from fedpurel_lite.bias_app import BiasTransferApp

    app = BiasTransferApp(core_bank, explorer_config(), rounds=1, methods=("fedavg",), draw=False)
    assert app.methods == ("fedavg",) and app.data["config"].longtail.imbalance_ratio == 10
    app.boxes["fedpurel"].value = True  # ticking a method: the app recomputes
    assert set(app.data["lean"]) == {"fedavg", "fedpurel"}
    app.alpha.value = 0.1
    assert app.data["config"].federation.dirichlet_alpha == 0.1
    assert app.status.value == "" and not any(s.disabled for s in app.sliders)


def test_app_draws_headless_even_without_methods(core_bank, core_one_thread):
    from fedpurel_lite.bias_app import BiasTransferApp

    app = BiasTransferApp(core_bank, explorer_config(), rounds=1, methods=("fedavg",), draw=False)
    fig = app.draw()
    assert len(fig.axes) == 3 and fig.legends
    plt.close(fig)
    app.boxes["fedavg"].value = False
    fig = app.draw()
    assert any("at least one method" in t.get_text() for ax in fig.axes for t in ax.texts)
    plt.close(fig)
    assert np.isfinite(app.data["table"].loc["zero-shot", "PM all"])
