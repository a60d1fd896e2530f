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
