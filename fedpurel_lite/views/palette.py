"""One palette for every figure: a fixed style per method and a fixed colour per class group.

A method is drawn in the same colour, line style and marker in every figure, whatever order
or subset of methods a figure shows (colours never come from a position in a list). The
colours are the Okabe–Ito set, completed by three of Paul Tol's colour-blind-safe colours; each
method also has its own marker, so two methods never differ by colour alone. Methods of one
family share a colour and differ by line style (``fedpurel-global``, dashed, is the global model
of ``fedpurel``, solid).

The groups are ordinal (head → medium → tail), so their colours go from dark to light (Tol's
"high-contrast" scheme): they stay apart for colour-blind readers and in greyscale.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..data.longtail import GROUP_NAMES

# Okabe–Ito
BLACK, ORANGE, SKY_BLUE, GREEN, BLUE, VERMILLION, PURPLE = (
    "#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7")
# Paul Tol (muted / high-contrast)
WINE, BROWN, INDIGO, GREY = "#882255", "#661100", "#332288", "#8C8C8C"
REFERENCE = "#4D4D4D"  # reference lines that are not a method (0, "orthogonal", ...)


@dataclass(frozen=True)
class Style:
    """How one method is drawn: colour, line style, marker and bar hatch."""

    colour: str
    linestyle: str = "-"
    marker: str = "o"
    hatch: str = ""

    def line(self) -> dict:
        """Keyword arguments for ``Axes.plot``."""
        return {"color": self.colour, "linestyle": self.linestyle, "marker": self.marker}

    def bar(self) -> dict:
        """Keyword arguments for ``Axes.bar`` (hatched bars keep a white edge between hatch lines)."""
        return {"color": self.colour, "hatch": self.hatch or None, "edgecolor": "white" if self.hatch else None}


#: every built-in method's style (``fedpurel_lite.methods``; a test checks the two lists agree);
#: a plugin's own method is drawn in a colour picked from its label
METHOD_STYLES: dict[str, Style] = {
    "zero-shot": Style(BLACK, "--", "x"),
    "fedavg": Style(BLUE, "-", "o"),
    "promptfl": Style(BLUE, "-.", "8"),
    "fedprox": Style(BLUE, ":", "v"),
    "fedpurel-global-noproj": Style(BLUE, (0, (5, 1, 1, 1)), "1"),
    "fedavg-la": Style(SKY_BLUE, "-", "s", ".."),
    "fedpurel": Style(VERMILLION, "-", "*", "//"),
    "fedpurel-global": Style(VERMILLION, "--", "D", "//"),
    "fedpurel-linear": Style(VERMILLION, ":", "P", "//"),
    "fedpurel-global-kl": Style(ORANGE, "--", "^", "\\\\"),
    "fedpurel-kl": Style(ORANGE, "-", "X", "\\\\"),
    "fedpurel-noproj": Style(WINE, "-", "d", "xx"),
    "local-ft": Style(GREEN, "-", "<"),
    "interp": Style(PURPLE, "-", ">"),
    "folio": Style(BROWN, "-", "p"),
    "fedrep": Style(INDIGO, "-", "h"),
    "local-only": Style(GREY, ":", "H"),
}

#: labels of the series that name a method in other words
ALIASES: dict[str, str] = {"zero-shot clip": "zero-shot", "clip": "zero-shot"}

#: colours of labels that name no method, picked by a hash of the label (never by position)
EXTRA_COLOURS: tuple[str, ...] = ("#44AA99", "#AA4499", "#117733", "#DDCC77", "#88CCEE", "#999933")

GROUP_COLOURS: dict[str, str] = dict(zip(GROUP_NAMES, ("#004488", "#BB5566", "#DDAA33"), strict=True))


def method_of(label: str) -> str | None:
    """The registered method a series label names, or ``None``.

    Exact names win; otherwise the longest method name the label starts with, followed by a
    space, comma or parenthesis (``"FedAvg, 40 rounds"`` and ``"fedavg (measured)"`` are
    ``fedavg``), case-insensitively.
    """
    key = str(label).strip().lower()
    if key in METHOD_STYLES:
        return key
    if key in ALIASES:
        return ALIASES[key]
    for alias, name in ALIASES.items():
        if key.startswith(alias + " ") or key.startswith(alias + ","):
            return name
    best = None
    for name in METHOD_STYLES:
        if key.startswith(name) and (len(key) == len(name) or key[len(name)] in " ,(:;") and (
                best is None or len(name) > len(best)):
            best = name
    return best


def style(label: str) -> Style:
    """The style of a series: its method's, or a fixed colour chosen from the label text."""
    name = method_of(label)
    if name is not None:
        return METHOD_STYLES[name]
    pick = zlib.crc32(str(label).encode()) % len(EXTRA_COLOURS)
    return Style(EXTRA_COLOURS[pick], "-", "o")


def colour(label: str) -> str:
    """The colour of a series (see :func:`style`)."""
    return style(label).colour


def group_colour(group: str | int) -> str:
    """Colour of a class group, by name (``"head"``) or index (0 = head)."""
    name = GROUP_NAMES[group] if isinstance(group, (int, np.integer)) else str(group)
    return GROUP_COLOURS[name]


def legend(ax, where: str = "right", handles: Iterable | None = None, **kwargs):
    """Place ``ax``'s legend outside the data: ``"right"`` of the axes, ``"below"`` it, ``"above"`` it, or ``"none"``.

    Returns the legend (``None`` for ``"none"`` or when nothing is labelled).
    """
    if where == "none":
        return None
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    else:
        handles = list(handles)
        labels = [h.get_label() for h in handles]
    if not handles:
        return None
    opts = {"frameon": False, "fontsize": 8}
    if where == "right":
        opts.update(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    elif where == "below":
        opts.update(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=min(len(handles), 4))
    elif where == "above":
        opts.update(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncols=min(len(handles), 4))
    else:
        raise ValueError(f"legend position must be right, below, above or none, got {where!r}")
    opts.update(kwargs)
    return ax.legend(handles, labels, **opts)


def figure_legend(fig, **kwargs):
    """One legend for a multi-panel figure, right of all panels: every distinct label of its axes, once.

    Draw the panels with ``legend_at="none"`` and call this once; returns the legend (``None``
    when nothing is labelled).
    """
    handles, labels = [], []
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not handles:
        return None
    right = max(ax.get_position().x1 for ax in fig.axes) + 0.01  # next to the rightmost panel
    opts = {"loc": "center left", "bbox_to_anchor": (right, 0.5), "frameon": False, "fontsize": 8}
    opts.update(kwargs)
    return fig.legend(handles, labels, **opts)


def integer_ticks(axis) -> None:
    """Integer tick positions only (rounds, counts): no 2.5th round."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


# ----------------------------------------------------------------------------- colour-vision checks
# Machado, Oliveira & Fernandes (2009), severity 1.0, applied to linear RGB
_CVD = {
    "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "tritanopia": np.array([[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                            [0.004733, 0.691367, 0.303900]]),
}


def _lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours in [0, 1], shape ``[..., 3]``."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def simulate_cvd(colours: Iterable[str], kind: str) -> np.ndarray:
    """sRGB in [0, 1] of ``colours`` as seen with a colour-vision deficiency (``"normal"`` returns them)."""
    from matplotlib.colors import to_rgb

    rgb = np.array([to_rgb(c) for c in colours], dtype=float)
    if kind == "normal":
        return rgb
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    sim = np.clip(lin @ _CVD[kind].T, 0, 1)
    return np.where(sim <= 0.0031308, 12.92 * sim, 1.055 * sim ** (1 / 2.4) - 0.055)


def min_distance(colours: Iterable[str], kind: str = "normal") -> float:
    """Smallest CIE76 colour difference between any two of ``colours`` under a vision ``kind``."""
    lab = _lab(simulate_cvd(list(colours), kind))
    d = np.linalg.norm(lab[:, None, :] - lab[None, :, :], axis=-1)
    return float(d[np.triu_indices(len(lab), 1)].min())
