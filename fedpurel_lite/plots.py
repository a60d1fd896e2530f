"""Figures of the series: pure functions of data and results, written with fixed metadata.

Every figure the notebooks keep goes through :func:`save_figure`, which fixes the DPI, strips
the PNG's ``Software`` stamp and writes atomically, so re-running a notebook on the same machine
and package versions rewrites byte-identical files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

if not matplotlib.get_backend().startswith("module://"):  # keep Jupyter's inline / widget backends
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


# ----------------------------------------------------------------------------- series figures
def group_share_bars(shares: Any, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """Stacked horizontal bars: head / medium / tail share (%) of every client's training data.

    Parameters
    ----------
    shares : pandas.DataFrame
        One row per client, columns :data:`~fedpurel_lite.longtail.GROUP_NAMES` (percent).
    ax : matplotlib.axes.Axes, optional
        Target axes.
    title : str
        Axes title.
    """
    ax = ax or plt.subplots(figsize=(4, 5))[1]
    left = np.zeros(len(shares))
    for name in GROUP_NAMES:
        values = np.asarray(shares[name], dtype=float)
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
        Group per class id (colours the bars).
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
    axes[0].set_ylabel("training images")
    return axes


def accuracy_shift(shift: Mapping[str, np.ndarray], counts: np.ndarray, ax: plt.Axes | None = None,
                   title: str = "") -> plt.Axes:
    """Per-class accuracy change (points, model − reference) against training count, with trend lines.

    Parameters
    ----------
    shift : mapping of str to numpy.ndarray
        Per-class differences in percentage points, one array per model.
    counts : numpy.ndarray
        Training images per class id (log x axis).
    ax : matplotlib.axes.Axes, optional
    title : str
    """
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    x = np.log10(np.asarray(counts, dtype=float))
    for label, delta in shift.items():
        delta = np.asarray(delta, dtype=float)
        ok = ~np.isnan(delta)
        points = ax.scatter(10 ** x[ok], delta[ok], s=12, alpha=0.55, label=label)
        slope, icpt = np.polyfit(x[ok], delta[ok], 1)
        xs = np.linspace(x.min(), x.max(), 2)
        ax.plot(10**xs, slope * xs + icpt, lw=2, color=points.get_facecolor()[0][:3])
    ax.axhline(0, color="0.3", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("accuracy change vs zero-shot (points)")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title)
    return ax


def group_curves(frame: Any, ax: plt.Axes | None = None, title: str = "",
                 reference: Mapping[str, float] | None = None, ylabel: str = "accuracy (%)") -> plt.Axes:
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
    """
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    rounds = np.asarray(frame.index, dtype=int) + 1
    for name in GROUP_NAMES:
        ax.plot(rounds, np.asarray(frame[name], dtype=float), color=GROUP_COLOURS[name], label=name)
        if reference is not None:
            ax.axhline(reference[name], color=GROUP_COLOURS[name], ls="--", lw=1)
    if reference is not None:
        ax.plot([], [], color="0.3", ls="--", lw=1, label="zero-shot")
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=8, ncols=2)
    ax.set_title(title)
    return ax


def projection_2d(g_task: np.ndarray, g_align: np.ndarray, g_new: np.ndarray, ax: plt.Axes | None = None,
                  title: str = "") -> plt.Axes:
    """The purification rule drawn in the plane: task gradient, alignment gradient and the projected update.

    Parameters
    ----------
    g_task, g_align, g_new : numpy.ndarray
        2-D vectors: ``grad L_task``, ``grad L_align`` and the result of ``purify.project``.
    ax : matplotlib.axes.Axes, optional
    title : str
    """
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    vectors = {"task gradient g": (np.asarray(g_task, float), "C3"),
               "alignment gradient g_a": (np.asarray(g_align, float), "C0"),
               "purified update": (np.asarray(g_new, float), "C2")}
    for label, (v, colour) in vectors.items():
        ax.annotate("", xy=(v[0], v[1]), xytext=(0, 0),
                    arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 2.2, "shrinkA": 0, "shrinkB": 0})
        ax.plot([], [], color=colour, lw=2.2, label=label)
    a_hat = vectors["alignment gradient g_a"][0] / np.linalg.norm(vectors["alignment gradient g_a"][0])
    removed = vectors["task gradient g"][0] - vectors["purified update"][0]
    if np.linalg.norm(removed) > 0:
        end = vectors["task gradient g"][0]
        ax.plot([end[0], end[0] - removed[0]], [end[1], end[1] - removed[1]], color="0.4", ls=":", lw=1.5)
    perp = np.array([-a_hat[1], a_hat[0]])
    ax.plot(*np.stack([-1.6 * perp, 1.6 * perp]).T, color="0.75", lw=1, zorder=0)
    allv = np.stack([v for v, _ in vectors.values()] + [np.zeros(2)])
    lo, hi = allv.min(axis=0) - 0.4, allv.max(axis=0) + 0.4
    span = max(hi - lo)
    centre = (hi + lo) / 2
    ax.set_xlim(centre[0] - span / 2, centre[0] + span / 2)
    ax.set_ylim(centre[1] - span / 2, centre[1] + span / 2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=10)
    return ax


def temperature_alignment(teacher: np.ndarray, student: np.ndarray, tau_teacher: float, tau_student: float,
                          axes: Sequence[plt.Axes] | None = None, top: int = 12,
                          class_names: Sequence[str] | None = None) -> list[plt.Axes]:
    """One sample's zero-shot (teacher) and fine-tuned (student) class probabilities, at T = 1 and aligned.

    Parameters
    ----------
    teacher, student : numpy.ndarray
        The sample's logits ``[C]``.
    tau_teacher, tau_student : float
        Its entropy-matched temperatures (``purify.aligned_kl``).
    axes : two Axes, optional
    top : int
        Classes shown (the union of both models' most likely classes, by teacher probability).
    class_names : sequence of str, optional
        Tick labels.
    """
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)[1]

    def softmax(v: np.ndarray) -> np.ndarray:
        e = np.exp(v - v.max())
        return e / e.sum()

    def entropy(p: np.ndarray) -> float:
        return float(-(p * np.log(np.clip(p, 1e-12, None))).sum())

    teacher, student = np.asarray(teacher, float), np.asarray(student, float)
    pairs = {"T = 1": (softmax(teacher), softmax(student)),
             f"aligned (τ_zs = {tau_teacher:.2f}, τ_ft = {tau_student:.2f})":
                 (softmax(teacher / tau_teacher), softmax(student / tau_student))}
    best = np.argsort(-(softmax(teacher) + softmax(student)), kind="stable")[:top]
    names = [class_names[c] for c in best] if class_names is not None else [str(c) for c in best]
    for ax, (label, (pt, ps)) in zip(axes, pairs.items(), strict=True):
        x = np.arange(len(best))
        ax.bar(x - 0.2, pt[best], width=0.4, color="0.55", label=f"zero-shot (H = {entropy(pt):.2f})")
        ax.bar(x + 0.2, ps[best], width=0.4, color="C3", label=f"fine-tuned (H = {entropy(ps):.2f})")
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
        ax.set_title(label, fontsize=10)
        ax.legend(frameon=False, fontsize=8)
    axes[0].set_ylabel("probability")
    return list(axes)


def method_bars(values: Mapping[str, float], ylabel: str, ax: plt.Axes | None = None, title: str = "",
                reference: float | None = None, reference_label: str = "zero-shot",
                highlight: Sequence[str] = ()) -> plt.Axes:
    """One bar per method (in the given order), optional reference line; ``highlight`` bars in green."""
    ax = ax or plt.subplots(figsize=(6, 3.2))[1]
    names = list(values)
    colours = ["C2" if n in highlight else "0.6" for n in names]
    ax.bar(np.arange(len(names)), [values[n] for n in names], color=colours)
    if reference is not None:
        ax.axhline(reference, color="0.3", ls="--", lw=1, label=reference_label)
        ax.legend(frameon=False, fontsize=8)
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax


def scatter_xy(points: Mapping[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str,
               ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """Labelled point clouds (one colour per entry), e.g. alignment distance against a balance measure."""
    ax = ax or plt.subplots(figsize=(5, 3.6))[1]
    for label, (x, y) in points.items():
        ax.scatter(np.asarray(x, float), np.asarray(y, float), s=16, alpha=0.75, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title)
    return ax
