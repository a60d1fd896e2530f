"""More figures of the series: the purification geometry, temperature alignment and per-client lean.

Importable from :mod:`fedpurel_lite.views.plots` like every other figure function; the same palette
(:mod:`fedpurel_lite.views.palette`) and the same rule (legends outside the data) apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from .palette import BLUE, GREEN, ORANGE, REFERENCE, figure_legend, legend, style

#: the three vectors of the projection figure (not methods, so not method colours)
VECTOR_COLOURS = {"task gradient g": ORANGE, "alignment gradient g_a": BLUE, "purified update": GREEN}


def projection_2d(g_task: np.ndarray, g_align: np.ndarray, g_new: np.ndarray, ax: plt.Axes | None = None,
                  title: str = "", legend_at: str = "below") -> plt.Axes:
    """The purification rule drawn in the plane: task gradient, alignment gradient and the projected update.

    Parameters
    ----------
    g_task, g_align, g_new : numpy.ndarray
        2-D vectors: ``grad L_task``, ``grad L_align`` and the result of ``purify.project``.
    ax : matplotlib.axes.Axes, optional
    title : str
    legend_at : str
        Legend position outside the data.
    """
    ax = ax if ax is not None else plt.subplots(figsize=(4, 4))[1]
    vectors = {"task gradient g": np.asarray(g_task, float), "alignment gradient g_a": np.asarray(g_align, float),
               "purified update": np.asarray(g_new, float)}
    for label, v in vectors.items():
        c = VECTOR_COLOURS[label]
        ls = "--" if label == "purified update" else "-"
        ax.annotate("", xy=(v[0], v[1]), xytext=(0, 0),
                    arrowprops={"arrowstyle": "-|>", "color": c, "lw": 2.2, "ls": ls, "shrinkA": 0, "shrinkB": 0})
        ax.plot([], [], color=c, lw=2.2, ls=ls, label=label)
    a_hat = vectors["alignment gradient g_a"] / np.linalg.norm(vectors["alignment gradient g_a"])
    removed = vectors["task gradient g"] - vectors["purified update"]
    if np.linalg.norm(removed) > 0:
        end = vectors["task gradient g"]
        ax.plot([end[0], end[0] - removed[0]], [end[1], end[1] - removed[1]], color=REFERENCE, ls=":", lw=1.5,
                label="removed component")
    perp = np.array([-a_hat[1], a_hat[0]])
    ax.plot(*np.stack([-1.6 * perp, 1.6 * perp]).T, color="0.75", lw=1, zorder=0)
    allv = np.stack([*vectors.values(), np.zeros(2)])
    lo, hi = allv.min(axis=0) - 0.4, allv.max(axis=0) + 0.4
    span = max(hi - lo)
    centre = (hi + lo) / 2
    ax.set_xlim(centre[0] - span / 2, centre[0] + span / 2)
    ax.set_ylim(centre[1] - span / 2, centre[1] + span / 2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    legend(ax, legend_at, **({"ncols": 2} if legend_at in ("below", "above") else {}))
    ax.set_title(title, fontsize=10)
    return ax


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def _entropy(p: np.ndarray) -> float:
    return float(-(p * np.log(np.clip(p, 1e-12, None))).sum())


def temperature_alignment(teacher: np.ndarray, student: np.ndarray, tau_teacher: float, tau_student: float,
                          axes: Sequence[plt.Axes] | None = None, top: int = 12,
                          class_names: Sequence[str] | None = None, student_label: str = "fedavg") -> list[plt.Axes]:
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
    student_label : str
        The fine-tuned model's method (its colour); the teacher is drawn in zero-shot's.
    """
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)[1]
    teacher, student = np.asarray(teacher, float), np.asarray(student, float)
    pairs = {"T = 1": (_softmax(teacher), _softmax(student)),
             f"aligned (τ_zs = {tau_teacher:.2f}, τ_ft = {tau_student:.2f})":
                 (_softmax(teacher / tau_teacher), _softmax(student / tau_student))}
    best = np.argsort(-(_softmax(teacher) + _softmax(student)), kind="stable")[:top]
    names = [class_names[c] for c in best] if class_names is not None else [str(c) for c in best]
    zs, ft = style("zero-shot"), style(student_label)
    for k, (ax, (label, (pt, ps))) in enumerate(zip(axes, pairs.items(), strict=True)):
        x = np.arange(len(best))
        ax.bar(x - 0.2, pt[best], width=0.4, color="0.55", edgecolor=zs.colour, hatch="..",
               label="zero-shot (teacher)" if k == 0 else "_")
        ax.bar(x + 0.2, ps[best], width=0.4, color=ft.colour, label="fine-tuned (student)" if k == 0 else "_")
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{label}\nentropy: zero-shot {_entropy(pt):.2f}, fine-tuned {_entropy(ps):.2f} nats",
                     fontsize=9)
    figure_legend(axes[0].figure)
    axes[0].set_ylabel("probability")
    return list(axes)


def lean_bars(lean: Mapping[str, np.ndarray], ax: plt.Axes | None = None, title: str = "",
              legend_at: str = "right") -> plt.Axes:
    """Each client's head lean (points) for one or more methods: grouped bars, clients on the x axis."""
    ax = ax if ax is not None else plt.subplots(figsize=(8, 3.2))[1]
    width = 0.8 / max(len(lean), 1)
    n = max((len(v) for v in lean.values()), default=0)
    for i, (label, values) in enumerate(lean.items()):
        ax.bar(np.arange(len(values)) + i * width, np.nan_to_num(np.asarray(values, float)), width=width,
               label=label, **style(label).bar())
    ax.axhline(0, color=REFERENCE, lw=1, ls=":")
    ax.set_xticks(np.arange(n) + width * (len(lean) - 1) / 2, [str(k) for k in range(n)], fontsize=7)
    ax.set_xlabel("client")
    ax.set_ylabel("head lean (points)")
    legend(ax, legend_at)
    ax.set_title(title)
    return ax
