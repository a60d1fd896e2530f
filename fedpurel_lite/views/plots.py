"""Figures of the series: pure functions of data and results, written with fixed metadata.

Every figure the notebooks keep goes through :func:`save_figure`, which fixes the DPI, strips
the PNG's ``Software`` stamp and writes atomically, so re-running a notebook on the same machine
and package versions rewrites byte-identical files.

The module never selects a matplotlib backend: in Jupyter the inline backend stays in charge, and
figures drawn off-screen (the contact sheet) use :class:`matplotlib.figure.Figure` directly.
Colours, line styles and markers come from :mod:`fedpurel_lite.views.palette` (a fixed style per method
and per class group); legends sit outside the data (``legend="right"``, ``"below"``, ``"above"``
or ``"none"``). The two-panel helpers live in :mod:`fedpurel_lite.views.plots_more` (importable from
here); the data the figures draw comes from :mod:`fedpurel_lite.engine.metrics`, :mod:`fedpurel_lite.engine.results`
and :mod:`fedpurel_lite.engine.assembly`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from ..data.longtail import GROUP_NAMES
from .palette import (  # noqa: F401  (the palette is part of this module's public names)
    GROUP_COLOURS,
    METHOD_STYLES,
    REFERENCE,
    colour,
    figure_legend,
    integer_ticks,
    legend,
    method_of,
    style,
)

COMMITTED_FIGURES = Path(__file__).resolve().parents[2] / "figures"
"""The repository's ``figures/``: what the README and the site show."""
FIGURES_ENV = "FEDPUREL_FIGURES"
"""Environment variable: a folder that replaces ``figures/`` as the target (the tests set a temporary one)."""
FIGURES = Path(os.environ.get(FIGURES_ENV) or COMMITTED_FIGURES)
"""Where figures are written: ``$FEDPUREL_FIGURES`` when set (read at import), else ``figures/``."""
CHECK_ENV = "FEDPUREL_FIGURES_CHECK"
"""Environment variable: ``1`` makes every figure saved elsewhere than ``figures/`` equal the committed one there."""
DPI = 110


class FigureMismatchError(AssertionError):
    """A figure drawn under the tests differs from the committed one (or none is committed)."""
MARKERS_PER_LINE = 10


def save_figure(fig: Any, name: str | Path, folder: Path | None = None) -> Path:
    """Write ``fig`` as PNG with fixed metadata and DPI; return the path.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure (a pyplot figure or an off-screen ``Figure``).
    name : str or Path
        File name (``.png`` added if missing); relative names go to ``folder``.
    folder : Path, optional
        Target folder, :data:`FIGURES` by default.

    Raises
    ------
    FigureMismatchError
        With ``FEDPUREL_FIGURES_CHECK=1``, when a figure saved without ``folder`` to a target other
        than ``figures/`` is not byte-identical to the committed ``figures/<name>``: how the tests
        check that what the notebooks draw is what the repository shows.
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
    committed = COMMITTED_FIGURES / path.name
    if folder is None and os.environ.get(CHECK_ENV) == "1" and path.resolve() != committed.resolve():
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            raise FigureMismatchError(f"{path.name} differs from the committed figures/{path.name} (or it is not "
                                      "committed): run `make demo` (pinned kernels) and commit figures/")
    return path


def _axes(ax: plt.Axes | None, figsize: tuple[float, float]) -> plt.Axes:
    return ax if ax is not None else plt.subplots(figsize=figsize)[1]


def _reference(ax: plt.Axes, value: float | None, label: str) -> None:
    """A horizontal reference line: a method's level (``"zero-shot"``) in its colour, anything else dotted grey."""
    if value is None or not np.isfinite(value):
        return
    if method_of(label) is not None:  # a method's level: its colour, dashed
        ax.axhline(value, color=style(label).colour, ls="--", lw=1.2, label=label)
    else:
        ax.axhline(value, color=REFERENCE, ls=":", lw=1.2, label=label)


def group_handles() -> list[Patch]:
    """Legend handles of the three class groups (one distinct swatch each)."""
    return [Patch(facecolor=GROUP_COLOURS[g], label=g) for g in GROUP_NAMES]


def class_profile(counts: np.ndarray, groups: np.ndarray, ax: plt.Axes | None = None, title: str = "",
                  legend_at: str = "right") -> plt.Axes:
    """Bar chart of per-rank training counts (head → tail), coloured by group, log scale."""
    ax = _axes(ax, (7, 3))
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    colours = [GROUP_COLOURS[GROUP_NAMES[g]] for g in np.asarray(groups)[order]]
    ax.bar(np.arange(len(counts)), np.maximum(counts[order], 1e-9), color=colours, width=1.0)
    ax.set_yscale("log")
    ax.set_xlabel("class rank (head → tail)")
    ax.set_ylabel("training images")
    integer_ticks(ax.xaxis)
    legend(ax, legend_at, handles=group_handles())
    ax.set_title(title)
    return ax


def _trend(ax: plt.Axes, x: np.ndarray, y: np.ndarray, label: str) -> None:
    ok = ~np.isnan(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return
    slope, icpt = np.polyfit(x[ok], y[ok], 1)
    xs = np.linspace(x.min(), x.max(), 2)
    ax.plot(10**xs, slope * xs + icpt, lw=2, color=style(label).colour, ls=style(label).linestyle)


def _scatter_with_trends(ax: plt.Axes, values: Mapping[str, np.ndarray], counts: np.ndarray, alpha: float) -> None:
    """One scatter of per-class values against training count (log x) per model, each with its trend line."""
    x = np.log10(np.maximum(np.asarray(counts, dtype=float), 1))
    for label, v in values.items():
        v = np.asarray(v, dtype=float)
        ok = ~np.isnan(v)
        st = style(label)
        ax.scatter(10 ** x[ok], v[ok], s=14, alpha=alpha, label=label, color=st.colour, marker=st.marker)
        _trend(ax, x, v, label)


def accuracy_vs_frequency(per_class: Mapping[str, np.ndarray], counts: np.ndarray, ax: plt.Axes | None = None,
                          title: str = "", legend_at: str = "right") -> plt.Axes:
    """Per-class accuracy against training count (log x) for one or more models, with trend lines."""
    ax = _axes(ax, (6, 4))
    _scatter_with_trends(ax, per_class, counts, alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("per-class accuracy (%)")
    legend(ax, legend_at)
    ax.set_title(title)
    return ax


def accuracy_shift(shift: Mapping[str, np.ndarray], counts: np.ndarray, ax: plt.Axes | None = None,
                   title: str = "", legend_at: str = "right",
                   ylabel: str = "accuracy change vs zero-shot (points)") -> plt.Axes:
    """Per-class accuracy change (points, model − reference) against training count, with trend lines.

    Parameters
    ----------
    shift : mapping of str to numpy.ndarray
        Per-class differences in percentage points, one array per model.
    counts : numpy.ndarray
        Training images per class id (log x axis).
    ax : matplotlib.axes.Axes, optional
    title : str
    legend_at : str
        Legend position outside the data (:func:`fedpurel_lite.views.palette.legend`).
    ylabel : str
    """
    ax = _axes(ax, (6, 4))
    _scatter_with_trends(ax, shift, counts, alpha=0.55)
    ax.axhline(0, color=REFERENCE, lw=1, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel(ylabel)
    legend(ax, legend_at)
    ax.set_title(title)
    return ax


def client_heatmap(table: np.ndarray, class_order: np.ndarray, ax: plt.Axes | None = None, title: str = "",
                   vmax: float | None = None) -> plt.Axes:
    """Client × class count heatmap with classes sorted head → tail; colour = log(1 + images).

    ``vmax`` (in images) fixes the top of the colour bar, so heatmaps of different settings share
    one scale (the explorers pass the largest class size).
    """
    import seaborn as sns

    ax = _axes(ax, (9, 3.5))
    top = np.log1p(vmax) if vmax is not None else None
    sns.heatmap(np.log1p(np.asarray(table)[:, class_order]), ax=ax, cmap="mako_r", vmin=0.0, vmax=top,
                cbar_kws={"label": "log(1 + images)"}, xticklabels=False, yticklabels=True)
    ax.set_xlabel("class rank (head → tail)")
    ax.set_ylabel("client")
    ax.set_title(title)
    return ax


def group_bars(rows: Mapping[str, Mapping[str, float]], ax: plt.Axes | None = None, title: str = "",
               keys: Sequence[str] = ("accuracy", *GROUP_NAMES), legend_at: str = "right",
               ylim: tuple[float, float] | None = None) -> plt.Axes:
    """Grouped bars: one group of bars per metric key, one bar per model (row), each model in its style.

    A key without a value (NaN, e.g. the tail at a low imbalance ratio) is written as "no classes"
    instead of leaving a silent gap.
    """
    ax = _axes(ax, (7, 3.5))
    width = 0.8 / max(len(rows), 1)
    for i, (label, row) in enumerate(rows.items()):
        values = np.array([row.get(k, np.nan) for k in keys], dtype=float)
        ax.bar(np.arange(len(keys)) + i * width, np.nan_to_num(values), width=width, label=label,
               **style(label).bar())
    centres = np.arange(len(keys)) + width * (len(rows) - 1) / 2
    ax.set_xticks(centres, ["overall" if k == "accuracy" else k for k in keys])
    ax.set_ylim(*(ylim or (0, 100)))
    for c, k in zip(centres, keys, strict=True):
        if all(not np.isfinite(float(row.get(k, np.nan))) for row in rows.values()):
            ax.text(c, 0.5 * ax.get_ylim()[1], "no classes", ha="center", va="center", rotation=90, fontsize=8,
                    color=REFERENCE)
    ax.set_ylabel("accuracy (%)")
    legend(ax, legend_at if len(rows) > 1 else "none")
    ax.set_title(title)
    return ax


def curves(series: Mapping[str, Sequence[float]], ylabel: str, ax: plt.Axes | None = None, title: str = "",
           reference: float | None = None, reference_label: str = "zero-shot", legend_at: str = "right") -> plt.Axes:
    """Lines over rounds (1, 2, …), each in its method's style, with an optional horizontal reference."""
    ax = _axes(ax, (6, 3.5))
    for label, values in series.items():
        values = np.asarray(values, dtype=float)
        every = max(len(values) // MARKERS_PER_LINE, 1)
        ax.plot(np.arange(1, len(values) + 1), values, label=label, markevery=every, markersize=5, lw=1.6,
                **style(label).line())
    _reference(ax, reference, reference_label)
    ax.set_xlabel("round")
    integer_ticks(ax.xaxis)
    ax.set_ylabel(ylabel)
    legend(ax, legend_at)
    ax.set_title(title)
    return ax


def group_share_bars(shares: Any, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """Stacked horizontal bars: head / medium / tail share (%) of every client's training data.

    Parameters
    ----------
    shares : pandas.DataFrame
        One row per client, columns :data:`~fedpurel_lite.data.longtail.GROUP_NAMES` (percent).
    ax : matplotlib.axes.Axes, optional
        Target axes.
    title : str
        Axes title.
    """
    ax = _axes(ax, (4, 5))
    left = np.zeros(len(shares))
    for name in GROUP_NAMES:
        values = np.nan_to_num(np.asarray(shares[name], dtype=float))
        ax.barh(np.arange(len(shares)), values, left=left, color=GROUP_COLOURS[name], label=name, height=0.85)
        left += values
    ax.set_yticks(np.arange(len(shares)), [str(i) for i in shares.index], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of client data (%)")
    ax.legend(frameon=False, fontsize=8, ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.set_title(title, pad=22 if title else 6)
    return ax


def client_histograms(table: np.ndarray, class_order: np.ndarray, groups: np.ndarray, clients: Sequence[int],
                      axes: Sequence[plt.Axes] | None = None) -> list[plt.Axes]:
    """One bar chart per client: its training images per class, classes in global head → tail order.

    Parameters
    ----------
    table : numpy.ndarray
        Client × class count matrix (``partition.count_matrix``).
    class_order : numpy.ndarray
        Class ids from head to tail.
    groups : numpy.ndarray
        Group per class id (colours the bars; the legend sits right of the last chart).
    clients : sequence of int
        Which clients to draw.
    axes : sequence of Axes, optional
        One axes per client (a row of subplots is made when omitted).
    """
    if axes is None:
        axes = plt.subplots(1, len(clients), figsize=(3.2 * len(clients), 2.6), sharey=True)[1]
    axes = list(np.atleast_1d(axes))
    colours = [GROUP_COLOURS[GROUP_NAMES[g]] for g in np.asarray(groups)[class_order]]
    for ax, k in zip(axes, clients, strict=True):
        ax.bar(np.arange(len(class_order)), table[k, class_order], color=colours, width=1.0)
        ax.set_title(f"client {k}: {int(table[k].sum())} images", fontsize=9)
        ax.set_xlabel("class rank (head → tail)", fontsize=8)
        integer_ticks(ax.yaxis)
        integer_ticks(ax.xaxis)
    axes[0].set_ylabel("training images")
    legend(axes[-1], "right", handles=group_handles())
    return axes


def group_curves(frame: Any, ax: plt.Axes | None = None, title: str = "",
                 reference: Mapping[str, float] | None = None, ylabel: str = "accuracy (%)",
                 legend_at: str = "right") -> plt.Axes:
    """Head / medium / tail accuracy over rounds, with the reference (zero-shot) level of each group dashed.

    Parameters
    ----------
    frame : pandas.DataFrame
        Indexed by round with columns ``head``, ``medium``, ``tail`` (``RunResult.frame("gm")``).
    ax : matplotlib.axes.Axes, optional
    title : str
    reference : mapping, optional
        Group name → reference accuracy, drawn as a dashed line in the group's colour.
    ylabel : str
    legend_at : str
    """
    ax = _axes(ax, (6, 3.5))
    rounds = np.asarray(frame.index, dtype=int) + 1
    for name in GROUP_NAMES:
        ax.plot(rounds, np.asarray(frame[name], dtype=float), color=GROUP_COLOURS[name], label=name, lw=1.8)
        if reference is not None and np.isfinite(reference[name]):
            ax.axhline(reference[name], color=GROUP_COLOURS[name], ls="--", lw=1)
    if reference is not None:
        ax.plot([], [], color=REFERENCE, ls="--", lw=1, label="zero-shot level")
    ax.set_xlabel("round")
    integer_ticks(ax.xaxis)
    ax.set_ylabel(ylabel)
    legend(ax, legend_at)
    ax.set_title(title)
    return ax


def method_bars(values: Mapping[str, float], ylabel: str, ax: plt.Axes | None = None, title: str = "",
                reference: float | None = None, reference_label: str = "zero-shot",
                highlight: Sequence[str] = (), from_zero: bool = True, legend_at: str = "right") -> plt.Axes:
    """One mark per method (in the given order), each in its method's colour, with an optional reference line.

    ``from_zero=True`` draws bars from 0. ``from_zero=False`` draws each value as a point on a stem
    from the reference line and fits the y-axis to the values, so differences of a few points stay
    visible (accuracies near 50 % on a 0–100 axis look alike). ``highlight`` names get bold tick
    labels (every mark keeps its method's colour).
    """
    ax = _axes(ax, (6, 3.2))
    names = list(values)
    vals = np.array([values[n] for n in names], dtype=float)
    x = np.arange(len(names))
    if from_zero:
        for xi, n, v in zip(x, names, vals, strict=True):
            ax.bar(xi, v, **style(n).bar())
    else:
        base = reference if reference is not None else float(np.nanmin(vals))
        for xi, n, v in zip(x, names, vals, strict=True):
            st = style(n)
            ax.plot([xi, xi], [base, v], color=st.colour, lw=2.5, solid_capstyle="butt")
            ax.plot(xi, v, marker=st.marker, color=st.colour, markersize=10, ls="none")
        finite = vals[np.isfinite(vals)]
        lo = min(finite.min(), base) if finite.size else base
        hi = max(finite.max(), base) if finite.size else base
        pad = max(0.15 * (hi - lo), 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    _reference(ax, reference, reference_label)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    for tick, n in zip(ax.get_xticklabels(), names, strict=True):
        if n in highlight:
            tick.set_fontweight("bold")
    ax.set_ylabel(ylabel)
    legend(ax, legend_at)
    ax.set_title(title)
    return ax


def scatter_xy(points: Mapping[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str,
               ax: plt.Axes | None = None, title: str = "", legend_at: str = "right") -> plt.Axes:
    """Labelled point clouds (one style per entry), e.g. alignment distance against a balance measure."""
    ax = _axes(ax, (5, 3.6))
    for label, (x, y) in points.items():
        st = style(label)
        ax.scatter(np.asarray(x, float), np.asarray(y, float), s=22, alpha=0.8, label=label, color=st.colour,
                   marker=st.marker)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    legend(ax, legend_at)
    ax.set_title(title)
    return ax


from .plots_more import lean_bars, projection_2d, temperature_alignment  # noqa: E402, F401  (re-exported)
