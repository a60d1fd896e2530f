import hashlib

import matplotlib.pyplot as plt
import numpy as np

from fedpurel_lite.data.longtail import assign_groups, class_counts
from fedpurel_lite.views import plots


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
