"""The figures of the bias-transfer report, drawn on :class:`matplotlib.figure.Figure` objects.

Every function takes the report's run views (:class:`fedpurel_lite.views.report.RunView`, with their
measures computed) and returns a new figure; nothing touches pyplot's state or the global
backend, so the report can be written from a notebook, a script or the command line alike.
:func:`save_png` writes a figure with fixed metadata and DPI, so the same data gives the same
bytes. Methods keep one colour everywhere (:func:`method_colour`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..data.longtail import GROUP_NAMES
from ..engine.metrics import GRID_COLUMNS, GRID_ROWS
from . import palette

DPI = 110
ZERO_SHOT = "#7f7f7f"
MODEL_LABELS = {"zero-shot": "zero-shot", "global": "global model", "personal": "personal models"}


def method_colour(name: str) -> str:
    """The fixed colour of a method in the series' palette (:func:`fedpurel_lite.views.palette.colour`)."""
    return palette.colour(name)


def save_png(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG at :data:`DPI` without the ``Software`` stamp, through a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    tmp.replace(path)
    return path


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(ax: Axes, **kw: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=7, **kw)


def _zero_shot_view(views: Sequence[Any]) -> Any:
    """The run whose recorded zero-shot arrays draw the zero-shot reference (``None`` without arrays)."""
    return next((v for v in views if v.arrays), None)


def _compared(views: Sequence[Any]) -> list[Any]:
    """The runs drawn next to the zero-shot reference (a run that is the reference is drawn as it)."""
    return [v for v in views if not v.is_zero_shot]


def convergence_figure(views: Sequence[Any]) -> Figure:
    """Global-model accuracy and tail accuracy (balanced test set) and personal-model accuracy over rounds."""
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (("gm", "accuracy", "global model, overall"), ("gm", "tail", "global model, tail"),
              ("pm", "accuracy", "personal models, overall (client splits)"))
    zs = _zero_shot_view(views) if len(_compared(views)) == len(views) else None
    for ax, (part, key, title) in zip(axes, panels, strict=True):
        for v in views:
            ys = [np.nan if h[part].get(key) is None else h[part][key] for h in v.result.history]
            ax.plot(np.arange(1, len(ys) + 1), ys, color=method_colour(v.method), ls=v.style, lw=1.4, label=v.label)
        if zs is not None:
            ref = zs.measures["test" if part == "gm" else "clients"]["zero-shot"]["groups"][key]
            ax.axhline(ref, color=ZERO_SHOT, ls="--", lw=1, label="zero-shot")
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title, fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(views) + 1, 7),
               frameon=False, fontsize=8)
    return fig


def erosion_figure(views: Sequence[Any]) -> Figure:
    """Per-class accuracy change against zero-shot vs training images of the class, with least-squares trends."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (where, model, title) in zip(axes, (("test", "global", "global model, balanced test set"),
                                                ("clients", "personal", "personal models, pooled client splits")),
                                         strict=True):
        drawn = False
        for v in _compared(views):
            m = v.measures[where].get(model)
            if m is None or not np.isfinite(m["change"]).any():
                continue
            x = np.log10(np.maximum(v.train_counts, 1).astype(float))
            y = np.asarray(m["change"], dtype=float)
            ok = np.isfinite(y)
            colour = method_colour(v.method)
            ax.scatter(10 ** x[ok], y[ok], s=10, alpha=0.45, color=colour)
            slope, icpt = np.polyfit(x[ok], y[ok], 1)
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(10 ** xs, slope * xs + icpt, color=colour, ls=v.style, lw=2,
                    label=f"{v.label} (ρ = {m['erosion_rho']:+.2f})")
            drawn = True
        if not drawn:
            _note(ax, "no per-class predictions recorded")
            continue
        ax.axhline(0, color="0.3", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class")
        ax.set_title(title, fontsize=10)
        _legend(ax)
    axes[0].set_ylabel("accuracy change vs zero-shot (points)")
    return fig


def _bars(ax: Axes, series: list[tuple[str, str, str, Sequence[float]]], ticks: Sequence[str]) -> None:
    """Grouped bars: ``series`` of (label, colour, hatch, values), one group per tick."""
    width = 0.8 / max(len(series), 1)
    for i, (label, colour, hatch, values) in enumerate(series):
        ax.bar(np.arange(len(ticks)) + i * width, values, width=width, color=colour, hatch=hatch, label=label,
               edgecolor="white" if not hatch else "0.2", lw=0.4)
    ax.set_xticks(np.arange(len(ticks)) + width * (len(series) - 1) / 2, ticks, fontsize=8)


def group_bars_figure(views: Sequence[Any]) -> Figure:
    """Overall / head / medium / tail accuracy of the global model (test set) and the personal models (client mean)."""
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    keys = ("accuracy", *GROUP_NAMES)
    zs = _zero_shot_view(views)
    for ax, (where, model, title) in zip(axes, (("test", "global", "global model, balanced test set"),
                                                ("clients", "personal", "personal models, mean over clients")),
                                         strict=True):
        series = [("zero-shot", ZERO_SHOT, "", [zs.measures[where]["zero-shot"]["groups"][k] for k in keys])] \
            if zs is not None else []
        series += [(v.label, method_colour(v.method), "" if v.style == "-" else "//",
                    [v.measures[where][model]["groups"][k] for k in keys]) for v in _compared(views)]
        _bars(ax, series, ["overall" if k == "accuracy" else k for k in keys])
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("accuracy (%)")
    _legend(axes[1], ncols=2)
    return fig


def calibration_figure(views: Sequence[Any]) -> Figure:
    """Reliability diagrams and expected calibration error by group, global model and personal models."""
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    zs = _zero_shot_view(views)
    for row, (where, model, title) in enumerate((("test", "global", "global model, balanced test set"),
                                                 ("clients", "personal", "personal models, client splits"))):
        rel, bars = axes[row]
        entries = ([("zero-shot", ZERO_SHOT, "-", zs.measures[where]["zero-shot"])] if zs is not None else [])
        entries += [(v.label, method_colour(v.method), v.style, v.measures[where][model]) for v in _compared(views)
                    if v.arrays]
        if not entries:
            _note(rel, "no confidences recorded")
            _note(bars, "no confidences recorded")
            continue
        rel.plot([0, 1], [0, 1], color="0.75", lw=1)
        for label, colour, style, m in entries:
            b = m["reliability"]
            ok = b["count"] > 0
            rel.plot(b["confidence"][ok], b["accuracy"][ok], marker="o", ms=3, color=colour, ls=style, lw=1.2,
                     label=f"{label} (ECE {m['ece']['overall']:.1f})")
        rel.set_xlim(0, 1)
        rel.set_ylim(0, 1)
        rel.set_xlabel("confidence (max softmax probability)")
        rel.set_ylabel("accuracy")
        rel.set_title(f"reliability, {title}", fontsize=10)
        _legend(rel)
        keys = ("overall", *GROUP_NAMES)
        _bars(bars, [(label, colour, "" if style == "-" else "//", [m["ece"][k] for k in keys])
                     for label, colour, style, m in entries], keys)
        bars.set_ylabel("expected calibration error (points)")
        bars.set_title(f"ECE by true-class group, {title}", fontsize=10)
    return fig


def grid_figure(views: Sequence[Any]) -> Figure:
    """The bias-transfer grid of every run: zero-shot, global and personal accuracy in the four class cells."""
    shown = [v for v in _compared(views) if v.arrays]
    cols = min(max(len(shown), 1), 3)
    rows = max(1, -(-len(shown) // cols))
    fig = Figure(figsize=(4.2 * cols, 3.3 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    for ax, v in zip(axes, shown, strict=False):
        colour = method_colour(v.method)
        grid = v.measures["clients"]["personal"]["grid"]
        ticks = [f"{r.split()[1]} G\n{c.split()[1]} L\nn = {n}" for (r, c), n in
                 zip([(r, c) for r in GRID_ROWS for c in GRID_COLUMNS], np.ravel(grid["samples"]), strict=True)]
        _bars(ax, [(MODEL_LABELS[model], c, h, np.ravel(v.measures["clients"][model]["grid"]["accuracy"]))
                   for model, c, h in (("zero-shot", ZERO_SHOT, ""), ("global", colour, "//"),
                                       ("personal", colour, ""))], ticks)
        ax.set_title(v.label, fontsize=10)
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    if not shown:
        _note(axes[0], "no client predictions recorded")
    for ax in axes[::cols]:
        ax.set_ylabel("accuracy on client splits (%)")
    fig.legend(handles=[Patch(facecolor=ZERO_SHOT, label="zero-shot"),
                        Patch(facecolor="white", edgecolor="0.2", hatch="//", label="global model (run colour)"),
                        Patch(facecolor="0.35", label="personal models (run colour)")],
               loc="outside upper center", ncols=3, frameon=False, fontsize=8)
    return fig


def head_lean_figure(views: Sequence[Any]) -> Figure:
    """Per-client head lean of the personal models (share of predictions in the client's own head minus truth)."""
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    ax = fig.subplots()
    shown = [v for v in _compared(views) if v.arrays]
    if not shown:
        _note(ax, "no client predictions recorded")
        return fig
    k = len(shown[0].measures["clients"]["personal"]["lean"])
    width = 0.8 / len(shown)
    for i, v in enumerate(shown):
        ax.bar(np.arange(k) + i * width, v.measures["clients"]["personal"]["lean"], width=width,
               color=method_colour(v.method), hatch="" if v.style == "-" else "//", label=v.label)
    lean_zs = shown[0].measures["clients"]["zero-shot"]["lean"]
    ax.scatter(np.arange(k) + width * (len(shown) - 1) / 2, lean_zs, marker="_", s=120, color="k", zorder=3,
               label="zero-shot")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(np.arange(k) + width * (len(shown) - 1) / 2, [str(c) for c in range(k)], fontsize=7)
    ax.set_xlabel("client")
    ax.set_ylabel("head lean (points)")
    ax.set_title("personal models: predicted minus true share of the client's own head classes", fontsize=10)
    _legend(ax, ncols=3)
    return fig


def purification_figure(views: Sequence[Any]) -> Figure:
    """Share of purification decisions that projected, and the mean task–alignment gradient cosine, per round."""
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    shown = [v for v in views if v.measures["purification"]["decisions"].sum() > 0]
    for ax, key, ylabel in zip(axes, ("projected_share", "mean_cos"),
                               ("projected share of decisions", "mean cos(task, alignment gradient)"), strict=True):
        if not shown:
            _note(ax, "no run purifies its gradients")
            continue
        for v in shown:
            tel = v.measures["purification"]
            ax.plot(tel["round"] + 1, tel[key], color=method_colour(v.method), ls=v.style, lw=1.4, label=v.label)
        if key == "mean_cos":
            ax.axhline(0, color="0.3", lw=0.8, ls="--")
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        _legend(ax)
    return fig


#: file name -> (figure function, caption) of the report, in page order
FIGURES: dict[str, tuple[Any, str]] = {
    "convergence.png": (convergence_figure, "Convergence: accuracy over rounds (dashed: zero-shot)."),
    "erosion_map.png": (erosion_figure, "Erosion map: per-class accuracy change against zero-shot vs the class's "
                                        "training images; ρ is the Spearman correlation with log count."),
    "group_bars.png": (group_bars_figure, "Head / medium / tail accuracy, last round."),
    "calibration.png": (calibration_figure, "Calibration: reliability diagrams (15 equal-width bins) and expected "
                                            "calibration error by the true class's group."),
    "bias_transfer_grid.png": (grid_figure, "Bias-transfer grid: accuracy on the client splits by the class's global "
                                            "group (G: head or tail; medium left out) and the client's own head (L: "
                                            "its most frequent classes holding the share of its training images "
                                            "stated above) or the rest; n = test samples in the cell."),
    "head_lean.png": (head_lean_figure, "Per-client head lean of the personal models (0 = unbiased)."),
    "purification.png": (purification_figure, "Purification telemetry per round (runs that purify)."),
}
