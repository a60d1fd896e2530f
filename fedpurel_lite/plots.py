"""Figures of the series: pure functions of data and results, written with fixed metadata.

Every figure the notebooks keep goes through :func:`save_figure`, which fixes the DPI, strips
the PNG's ``Software`` stamp and writes atomically, so re-running a notebook on the same machine
and package versions rewrites byte-identical files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from .longtail import GROUP_NAMES  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "figures"
DPI = 110
GROUP_COLOURS = dict(zip(GROUP_NAMES, sns.color_palette("deep", 3), strict=True))


def save_figure(fig: plt.Figure, name: str | Path, folder: Path | None = None) -> Path:
    """Write ``fig`` as PNG with fixed metadata and DPI; return the path.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    name : str or Path
        File name (``.png`` added if missing); relative names go to ``folder``.
    folder : Path, optional
        Target folder, ``figures/`` of the repository by default.
    """
    path = Path(name)
    if path.suffix != ".png":
        path = path.with_suffix(".png")
    if not path.is_absolute():
        path = (folder or FIGURES) / path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    tmp.replace(path)
    return path


def class_profile(counts: np.ndarray, groups: np.ndarray, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """Bar chart of per-rank training counts (head → tail), coloured by group, log scale."""
    ax = ax or plt.subplots(figsize=(7, 3))[1]
    order = np.argsort(-counts, kind="stable")
    colours = [GROUP_COLOURS[GROUP_NAMES[g]] for g in groups[order]]
    ax.bar(np.arange(len(counts)), counts[order], color=colours, width=1.0)
    ax.set_yscale("log")
    ax.set_xlabel("class rank (head → tail)")
    ax.set_ylabel("training images")
    for name, colour in GROUP_COLOURS.items():
        ax.bar([], [], color=colour, label=name)
    ax.legend(frameon=False)
    ax.set_title(title)
    return ax


def accuracy_vs_frequency(
    per_class: Mapping[str, np.ndarray], counts: np.ndarray, ax: plt.Axes | None = None, title: str = ""
) -> plt.Axes:
    """Per-class accuracy against training count (log x) for one or more models, with trend lines."""
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    x = np.log10(np.asarray(counts, dtype=float))
    for label, acc in per_class.items():
        ok = ~np.isnan(acc)
        ax.scatter(10 ** x[ok], acc[ok], s=12, alpha=0.6, label=label)
        slope, icpt = np.polyfit(x[ok], acc[ok], 1)
        xs = np.linspace(x.min(), x.max(), 2)
        ax.plot(10**xs, slope * xs + icpt, lw=2)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("per-class accuracy (%)")
    ax.legend(frameon=False)
    ax.set_title(title)
    return ax


def client_heatmap(table: np.ndarray, class_order: np.ndarray, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """Client × class count heatmap with classes sorted head → tail."""
    ax = ax or plt.subplots(figsize=(9, 3.5))[1]
    sns.heatmap(np.log1p(table[:, class_order]), ax=ax, cmap="mako_r", cbar_kws={"label": "log(1 + images)"},
                xticklabels=False, yticklabels=True)
    ax.set_xlabel("class rank (head → tail)")
    ax.set_ylabel("client")
    ax.set_title(title)
    return ax


def group_bars(rows: Mapping[str, Mapping[str, float]], ax: plt.Axes | None = None, title: str = "",
               keys: Sequence[str] = ("accuracy", *GROUP_NAMES)) -> plt.Axes:
    """Grouped bars: one group of bars per metric key, one bar per model (row)."""
    ax = ax or plt.subplots(figsize=(7, 3.5))[1]
    width = 0.8 / max(len(rows), 1)
    for i, (label, row) in enumerate(rows.items()):
        ax.bar(np.arange(len(keys)) + i * width, [row[k] for k in keys], width=width, label=label)
    ax.set_xticks(np.arange(len(keys)) + width * (len(rows) - 1) / 2, ["overall" if k == "accuracy" else k
                                                                        for k in keys])
    ax.set_ylabel("accuracy (%)")
    ax.legend(frameon=False, fontsize=8, ncols=2)
    ax.set_title(title)
    return ax


def curves(series: Mapping[str, Sequence[float]], ylabel: str, ax: plt.Axes | None = None, title: str = "",
           reference: float | None = None, reference_label: str = "zero-shot") -> plt.Axes:
    """Lines over rounds, with an optional horizontal reference (e.g. zero-shot)."""
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    for label, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=label)
    if reference is not None:
        ax.axhline(reference, color="0.3", ls="--", lw=1, label=reference_label)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title)
    return ax
