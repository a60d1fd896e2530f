import hashlib

import matplotlib.pyplot as plt
import numpy as np

from fedpurel_lite import plots
from fedpurel_lite.longtail import assign_groups, class_counts


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _draw(seed):
    counts = class_counts(500, 100, 100)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    plots.class_profile(counts, assign_groups(counts), ax=axes[0], title="profile")
    plots.accuracy_vs_frequency({"model": rng.uniform(0, 100, 100)}, counts, ax=axes[1])
    return fig


def test_saved_png_is_byte_identical_on_rerun(tmp_path):
    a = plots.save_figure(_draw(0), "fig", folder=tmp_path / "a")
    b = plots.save_figure(_draw(0), "fig.png", folder=tmp_path / "b")
    c = plots.save_figure(_draw(1), "fig", folder=tmp_path / "c")
    plt.close("all")
    assert a.name == "fig.png" and a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)  # the figure depends on the data
    assert b"Software" not in a.read_bytes() and not list(tmp_path.rglob("*.tmp"))


# ----------------------------------------------------------------------------- series figures and figure data
def test_local_head_lean_by_hand():
    counts = np.array([[60, 30, 10, 0], [0, 0, 5, 95]])
    y_true = [np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3])]
    # client 0: local head at mass 0.5 = {0} (60 %); predictions all class 0 -> 100 % vs 25 % true
    # client 1: local head = {3}; predictions match the labels -> no lean
    lean = plots.local_head_lean(counts, y_true, [np.zeros(4, int), np.array([0, 1, 2, 3])], mass=0.5)
    np.testing.assert_allclose(lean, [75.0, 0.0])
    # a larger mass widens the local head: {0, 1} -> predictions 100 % in head vs 50 % true
    np.testing.assert_allclose(plots.local_head_lean(counts[:1], y_true[:1], [np.zeros(4, int)], mass=0.8), [50.0])
    # leaning away from the head is negative
    np.testing.assert_allclose(plots.local_head_lean(counts[:1], y_true[:1], [np.full(4, 3)]), [-25.0])
    import pytest

    with pytest.raises(ValueError, match="mass"):
        plots.local_head_lean(counts, y_true, y_true, mass=0)


def test_personal_predictions_match_the_simulator(core_one_thread):
    from conftest import core_make_bank

    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.partition import build_federation
    from fedpurel_lite.simulate import run

    cfg = RunConfig(num_clients=5, participation=0.4, rounds=3, imbalance_ratio=10, min_client_size=5, lr=0.2,
                    personal_lr=0.5, batch_size=16, seed=3)
    core_bank = core_make_bank(noise=2.0, text_noise=2.0)  # hard enough that models disagree
    fed = build_federation(np.asarray(core_bank.train_labels), np.asarray(core_bank.test_labels),
                           core_bank.class_order, cfg)
    for method in ("fedpurel", "folio", "fedavg"):
        res = run(cfg.with_overrides({"method": method}), bank=core_bank, progress=False)
        preds = plots.personal_predictions(res, core_bank)
        accs = [100 * np.mean(p == np.asarray(core_bank.test_labels)[t]) for p, t in zip(preds, fed.client_test,
                                                                                         strict=True)]
        np.testing.assert_allclose(accs, res.history[-1]["pm"]["per_client_accuracy"], atol=1e-9)
        gm_acc = res.history[-1]["gm"]["accuracy"]
        logits = plots.global_model(res, core_bank).predict_logits(core_bank.test_features)
        assert 30 < gm_acc < 95
        assert abs(100 * np.mean(logits.argmax(1).numpy() == core_bank.test_labels.numpy()) - gm_acc) < 1e-9
        if method != "fedavg":  # the personal models differ from the global one
            assert accs != res.history[-1]["gm_clients"]["per_client_accuracy"]


def test_summary_table_selects_and_rounds():
    import pandas as pd

    df = pd.DataFrame({k: [1.234, 5.678] for k in plots.SUMMARY_COLUMNS} | {"time_s": [1.0, 2.0]},
                      index=pd.Index(["a", "b"], name="method"))
    out = plots.summary_table(df)
    assert list(out.columns) == list(plots.SUMMARY_COLUMNS.values()) and "time_s" not in out
    assert out.loc["a", "GM all"] == 1.2 and out.loc["b", "PM tail"] == 5.7


def _draw_series(seed):
    import pandas as pd
    import torch

    from fedpurel_lite import purify

    rng = np.random.default_rng(seed)
    counts = class_counts(500, 20, 100)
    groups = assign_groups(counts)
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    table = rng.integers(0, 50, size=(4, 20))
    shares = pd.DataFrame(rng.dirichlet([1, 1, 1], 4) * 100, columns=["head", "medium", "tail"])
    plots.group_share_bars(shares, ax=axes[0, 0])
    plots.client_histograms(table, np.arange(20), groups, [0, 1], axes=axes[0, 1:3])
    plots.accuracy_shift({"m": rng.normal(0, 10, 20)}, counts, ax=axes[0, 3])
    frame = pd.DataFrame(rng.uniform(0, 100, (5, 3)), columns=["head", "medium", "tail"])
    plots.group_curves(frame, ax=axes[1, 0], reference={"head": 50, "medium": 50, "tail": 50})
    g, ga = torch.tensor([2.0, 0.4]), torch.tensor([-1.0, 1.1])
    plots.projection_2d(g.numpy(), ga.numpy(), purify.project(g, ga)[0].numpy(), ax=axes[1, 1])
    plots.temperature_alignment(rng.normal(size=20), 3 * rng.normal(size=20), 0.5, 2.0, axes=axes[1, 2:4])
    return fig


def test_series_figures_are_byte_identical_on_rerun(tmp_path):
    a = plots.save_figure(_draw_series(0), "s", folder=tmp_path / "a")
    b = plots.save_figure(_draw_series(0), "s", folder=tmp_path / "b")
    c = plots.save_figure(_draw_series(1), "s", folder=tmp_path / "c")
    plt.close("all")
    assert _digest(a) == _digest(b) != _digest(c)


def test_method_bars_and_scatter(tmp_path):
    fig, (a, b) = plt.subplots(1, 2)
    plots.method_bars({"x": 1.0, "y": 3.0}, "acc", ax=a, reference=2.0, highlight=("y",))
    plots.scatter_xy({"m": (np.arange(3), np.arange(3))}, "x", "y", ax=b)
    assert [p.get_height() for p in a.patches] == [1.0, 3.0]
    assert a.patches[1].get_facecolor() != a.patches[0].get_facecolor()
    plt.close(fig)
