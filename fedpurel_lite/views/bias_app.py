"""The bias-transfer app (``apps/bias_transfer.ipynb``, served by Voilà with ``make app``).

A reader picks an imbalance ratio, a Dirichlet α and some personalization methods; the app shows,
for the personal models of a reduced federation (``rounds`` rounds) on the client splits,

1. every class's accuracy change against zero-shot, against its training frequency (trend lines
   only from :data:`TREND_ONLY_FROM` methods on, so many methods stay readable);
2. head / medium / tail accuracy per method;
3. every client's head lean (:func:`fedpurel_lite.engine.metrics.local_head_lean`), with a note on what a
   negative lean means whenever one shows;
4. the bias-transfer grid (:func:`fedpurel_lite.engine.metrics.bias_transfer_grid`: the class's global
   group × the client's own head or the rest);
5. expected calibration error by group (:func:`fedpurel_lite.engine.metrics.calibration_by_group`).

Every setting of the sliders' grid (:data:`RATIOS` × :data:`ALPHAS`, every method of
:data:`APP_METHODS`, :data:`GRID_ROUNDS` rounds) is answered from ``data/explore/bias_app.json``
(``python -m fedpurel_lite explore-grid``), so the app starts and answers without training, and
without loading the feature bank. Anything else (other rounds, another protocol or bank) is run
here, "run k of n" on the status line, and every finished run is kept, keyed by
``(imbalance ratio, α, method, rounds)``. As in every explorer, :func:`bias_view` is a pure
function, and the app keeps its result in ``.data``. The axes are the same at every setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..config import RunConfig
from ..data.longtail import GROUP_NAMES
from . import plots
from .explore_grid import Progress
from .widgets import LABEL_STYLE, _Explorer, _padded, plain_log_ticks

#: methods a reader can pick (the personalization methods of notebook 05, FedAvg as the reference)
APP_METHODS: tuple[str, ...] = ("fedavg", "local-ft", "fedrep", "interp", "folio", "fedpurel-noproj", "fedpurel")
DEFAULT_METHODS: tuple[str, ...] = ("fedavg", "folio", "fedpurel")
RATIOS: tuple[int, ...] = (10, 25, 50, 100, 200)
ALPHAS: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0)
GRID_ROUNDS = 10
GRID_FILE = "bias_app.json"
#: from this many methods on, the per-class panel draws trend lines only (no cloud of points)
TREND_ONLY_FROM = 5
#: the bias-transfer grid's cells, as the app labels them (global group, the client's own head or not)
CELLS: tuple[str, ...] = ("head G\nown head", "head G\nrest", "tail G\nown head", "tail G\nrest")
ECE_KEYS: tuple[str, ...] = ("overall", *GROUP_NAMES)


def _client_block(measures: dict[str, Any]) -> dict[str, Any]:
    """What the app draws of one model's measures on the client splits."""
    return {"groups": measures["groups"], "ece": measures["ece"], "lean": measures["lean"],
            "grid": measures["grid"]["accuracy"], "change": measures["change"], "rho": measures["erosion_rho"]}


def app_point(bank: Any, config: RunConfig, imbalance_ratio: float, dirichlet_alpha: float,
              methods: tuple[str, ...], rounds: int, runs: dict | None = None,
              progress: Progress | None = None) -> dict[str, Any]:
    """The app's numbers at one setting, as plain values (a grid point, JSON-able).

    Parameters
    ----------
    bank : FeatureBank-like
        Cached features.
    config : RunConfig
        The protocol; imbalance ratio, Dirichlet α and rounds are replaced.
    imbalance_ratio, dirichlet_alpha : float
        The setting.
    methods : tuple of str
        Registered methods to run (zero-shot is measured from every run's recorded zero-shot predictions).
    rounds : int
        Rounds of each reduced run.
    runs : dict, optional
        Finished runs keyed by ``(imbalance_ratio, alpha, method, rounds)``; filled in place.
    progress : callable, optional
        Told ``(k, n, method)`` before each run that is not in ``runs``.

    Returns
    -------
    dict
        ``counts`` and ``groups`` (per class), ``samples`` (test samples per grid cell), ``zero-shot``
        (``None`` without methods) and ``methods`` (method → block), a block holding ``groups``
        (client-mean overall / head / medium / tail accuracy), ``ece`` (by group), ``lean`` (per
        client), ``grid`` (the 2 × 2 bias-transfer grid), ``change`` (per class, vs zero-shot) and
        ``rho`` (Spearman of the change with log count).
    """
    from ..data.partition import build_federation
    from ..engine.simulate import run
    from .report import views_of

    runs = {} if runs is None else runs
    cfg = config.with_overrides({"imbalance_ratio": float(imbalance_ratio), "dirichlet_alpha": float(dirichlet_alpha),
                                 "rounds": int(rounds)})
    fed = build_federation(np.asarray(bank.train_labels), np.asarray(bank.test_labels), bank.class_order, cfg)
    todo = [m for m in methods if (float(imbalance_ratio), float(dirichlet_alpha), m, int(rounds)) not in runs]
    for k, method in enumerate(todo, 1):
        if progress is not None:
            progress(k, len(todo), method)
        key = (float(imbalance_ratio), float(dirichlet_alpha), method, int(rounds))
        runs[key] = run(cfg.with_overrides({"method": method}), bank=bank, progress=False, federation=fed)
    results = {m: runs[(float(imbalance_ratio), float(dirichlet_alpha), m, int(rounds))] for m in methods}
    views = views_of(results) if results else []
    out: dict[str, Any] = {"counts": np.asarray(fed.train_counts), "groups": np.asarray(fed.groups),
                           "samples": None, "zero-shot": None, "methods": {}}
    for view in views:
        clients = view.measures["clients"]
        out["methods"][view.method] = _client_block(clients["personal"])
        if out["zero-shot"] is None:
            out["zero-shot"] = {k: v for k, v in _client_block(clients["zero-shot"]).items()
                                if k not in ("change", "rho")}
            out["samples"] = clients["personal"]["grid"]["samples"]
    return out


def _arr(values: Any) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))], dtype=float)


def _groups(block: dict[str, Any]) -> dict[str, float]:
    return {k: float("nan") if block["groups"].get(k) is None else float(block["groups"][k])
            for k in ("accuracy", *GROUP_NAMES)}


def bias_frame(point: dict[str, Any], config: RunConfig, methods: tuple[str, ...]) -> dict[str, Any]:
    """:func:`bias_view`'s dictionary (without ``results``) for ``methods`` from a point (:func:`app_point`)."""
    blocks = {m: point["methods"][m] for m in methods}
    zs = point["zero-shot"]
    rows = ({"zero-shot": zs} if zs is not None else {}) | blocks
    groups_pm = {m: _groups(b) for m, b in rows.items()}
    lean = {m: _arr(b["lean"]) for m, b in blocks.items()}
    ece = {m: {k: float("nan") if b["ece"].get(k) is None else float(b["ece"][k]) for k in ECE_KEYS}
           for m, b in rows.items()}
    table = pd.DataFrame({"PM all": {m: g["accuracy"] for m, g in groups_pm.items()},
                          "PM tail": {m: g["tail"] for m, g in groups_pm.items()},
                          "mean head lean": {m: float(np.nanmean(_arr(b["lean"]))) for m, b in rows.items()},
                          "ECE": {m: e["overall"] for m, e in ece.items()}}, index=list(rows))
    table.index.name = "method"
    return {"config": config, "counts": np.asarray(point["counts"]), "groups": np.asarray(point["groups"]),
            "shift": {m: _arr(b["change"]) for m, b in blocks.items()}, "groups_pm": groups_pm, "lean": lean,
            "zero_shot_lean": _arr(zs["lean"]) if zs is not None else None,
            "grid": {m: dict(zip(CELLS, _arr(b["grid"]), strict=True)) for m, b in rows.items()},
            "samples": _arr(point["samples"]) if point["samples"] is not None else None,
            "ece": ece, "table": table.round(1)}


def bias_view(bank: Any, config: RunConfig, imbalance_ratio: float, dirichlet_alpha: float,
              methods: tuple[str, ...], rounds: int, runs: dict | None = None,
              progress: Progress | None = None) -> dict[str, Any]:
    """Personal models of ``methods`` on one reduced federation, with their bias measures.

    Parameters are those of :func:`app_point`.

    Returns
    -------
    dict
        ``config``; ``counts`` (training images per class) and ``groups``; ``shift`` (method → per-class
        accuracy change of the personal models against zero-shot, points, pooled over the client
        splits); ``groups_pm`` (zero-shot and method → overall / head / medium / tail PM accuracy);
        ``lean`` (method → head lean per client) and ``zero_shot_lean``; ``grid`` (zero-shot and
        method → accuracy per :data:`CELLS` cell) and ``samples`` (test samples per cell); ``ece``
        (zero-shot and method → ECE by group); ``table`` (one row per model); ``results``.
    """
    runs = {} if runs is None else runs
    point = app_point(bank, config, imbalance_ratio, dirichlet_alpha, methods, rounds, runs, progress)
    cfg = config.with_overrides({"imbalance_ratio": float(imbalance_ratio), "dirichlet_alpha": float(dirichlet_alpha),
                                 "rounds": int(rounds)})
    view = bias_frame(point, cfg, methods)
    view["results"] = {m: runs[(float(imbalance_ratio), float(dirichlet_alpha), m, int(rounds))] for m in methods}
    return view


# ----------------------------------------------------------------------------- drawing
def trend_lines(shift: dict[str, np.ndarray], counts: np.ndarray, ax: Any) -> None:
    """Per-class change against training count as least-squares trend lines only (one per model, log x)."""
    x = np.log10(np.maximum(np.asarray(counts, dtype=float), 1))
    for label, values in shift.items():
        y = np.asarray(values, dtype=float)
        ok = np.isfinite(y)
        if ok.sum() < 2 or np.ptp(x[ok]) == 0:
            continue
        slope, icpt = np.polyfit(x[ok], y[ok], 1)
        xs = np.linspace(x.min(), x.max(), 2)
        st = plots.style(label)
        ax.plot(10 ** xs, slope * xs + icpt, lw=2, color=st.colour, ls=st.linestyle, label=label)
    ax.axhline(0, color=plots.REFERENCE, lw=1, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")


def lean_strips(lean: dict[str, np.ndarray], ax: Any) -> None:
    """Each model's per-client head lean as a column of dots, with the mean over clients as a bar."""
    offsets = np.linspace(-0.25, 0.25, max(len(next(iter(lean.values()), [])), 1))
    for i, (label, values) in enumerate(lean.items()):
        v = np.asarray(values, dtype=float)
        st = plots.style(label)
        ax.scatter(i + offsets[: len(v)], v, s=12, color=st.colour, marker=st.marker, alpha=0.8, label=label)
        ax.hlines(np.nanmean(v), i - 0.35, i + 0.35, color=st.colour, lw=2.5)
    ax.axhline(0, color=plots.REFERENCE, lw=1, ls=":")
    ax.set_xticks(range(len(lean)), list(lean), rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(lean) - 0.4)
    ax.set_ylabel("head lean (points)")


def lean_note(lean: dict[str, np.ndarray], zero_shot_lean: np.ndarray | None) -> str:
    """A sentence on negative head lean when some model's mean lean is below zero ("" otherwise)."""
    negative = [m for m, v in lean.items() if np.nanmean(v) < 0]
    if not negative:
        return ""
    zs = "" if zero_shot_lean is None else f"; zero-shot CLIP's mean lean here is {np.nanmean(zero_shot_lean):+.1f}"
    return (f"Negative head lean ({', '.join(negative)}): these personal models predict a client's own head "
            "classes less often than those classes occur in its test split: they shift predictions away from what "
            f"the client saw most, toward the other classes{zs}.")


class BiasTransferApp(_Explorer):
    """Imbalance ratio, Dirichlet α and method check boxes → per-class change, groups, lean, grid and ECE.

    Parameters
    ----------
    bank : FeatureBank-like or None
        Cached features; ``None`` loads them from ``config`` only when a setting must be run.
    config : RunConfig
        The protocol (its ratio and α are the starting setting when they are among the choices).
    rounds : int
        Rounds of each reduced run.
    methods : tuple of str
        Methods ticked at the start.
    draw : bool
        Draw (``False`` in tests without a front end).
    grid : path, optional
        The precomputed grid file (default ``data/explore/bias_app.json``).
    """

    def __init__(self, bank: Any, config: RunConfig, rounds: int = GRID_ROUNDS,
                 methods: tuple[str, ...] = DEFAULT_METHODS, draw: bool = True, grid: str | Path | None = None) -> None:
        from .explore_grid import FOLDER, GridStore

        self._bank, self.config, self.rounds = bank, config, int(rounds)
        self.runs: dict = {}
        store = GridStore.load(Path(grid) if grid is not None else FOLDER / GRID_FILE)
        self.store = store if store is not None and store.matches(config, self.rounds, APP_METHODS, bank) else None
        ratio = int(config.longtail.imbalance_ratio) if int(config.longtail.imbalance_ratio) in RATIOS else 100
        alpha = float(config.federation.dirichlet_alpha) if float(config.federation.dirichlet_alpha) in ALPHAS else 1.0
        self.ratio = w.SelectionSlider(options=list(RATIOS), value=ratio, description="imbalance ratio IF",
                                       continuous_update=False, style=LABEL_STYLE, layout=w.Layout(width="24em"))
        self.alpha = w.SelectionSlider(options=list(ALPHAS), value=alpha, description="Dirichlet α",
                                       continuous_update=False, style=LABEL_STYLE, layout=w.Layout(width="20em"))
        self.boxes = {m: w.Checkbox(value=m in methods, description=m, indent=False, style=LABEL_STYLE,
                                    layout=w.Layout(width="10em")) for m in APP_METHODS}
        self.table = w.Output()
        self.caption = w.HTML(value="", layout=w.Layout(min_width="12em"))  # the setting the plot shows
        self._limits = self._axis_limits()
        super().__init__([self.ratio, self.alpha, *self.boxes.values()], draw)
        self.widget = w.VBox([w.HBox([self.ratio, self.alpha, self.status, self.caption]),
                              w.HBox([w.HTML("<b>methods:</b>"), *self.boxes.values()]), self.table, self.output])

    @property
    def bank(self) -> Any:
        """The feature bank (loaded from the config on first use)."""
        if self._bank is None:
            from ..engine.assembly import load_bank

            self._bank = load_bank(self.config, progress=False)
        return self._bank

    @property
    def methods(self) -> tuple[str, ...]:
        """The ticked methods, in the app's fixed order."""
        return tuple(m for m, box in self.boxes.items() if box.value)

    def settings(self) -> tuple:
        return (self.ratio.value, self.alpha.value, self.methods)

    def _axis_limits(self) -> dict[str, tuple[float, float]]:
        """Fixed y ranges: from the whole precomputed grid, else wide defaults."""
        if self.store is None:
            return {"change": (-60.0, 60.0), "lean": (-40.0, 40.0), "ece": (0.0, 40.0)}
        lean = self.store.values("methods", "*", "lean") + self.store.values("zero-shot", "lean")
        top = max(abs(v) for v in _padded(lean, 5))
        change = _padded(self.store.values("methods", "*", "change"), 10, -100, 100)
        return {"change": change, "lean": (-top, top),
                "ece": _padded(self.store.values("methods", "*", "ece") + self.store.values("zero-shot", "ece"),
                               5, 0, 100)}

    def _config(self, ratio: float, alpha: float) -> RunConfig:
        return self.config.with_overrides({"imbalance_ratio": float(ratio), "dirichlet_alpha": float(alpha),
                                           "rounds": self.rounds})

    def lookup(self, settings: tuple) -> dict[str, Any] | None:
        ratio, alpha, methods = settings
        point = self.store.get(ratio, alpha) if self.store is not None else None
        if point is not None:
            return bias_frame(point, self._config(ratio, alpha), methods)
        if all((float(ratio), float(alpha), m, self.rounds) in self.runs for m in methods):
            return self.compute(settings)
        return None

    def compute(self, settings: tuple, progress: Progress | None = None) -> dict[str, Any]:
        ratio, alpha, methods = settings
        return bias_view(self.bank, self.config, ratio, alpha, methods, self.rounds, self.runs, progress)

    def _redraw(self) -> None:
        super()._redraw()
        ratio, alpha, methods = self.shown
        self.caption.value = f"<small>shown: IF = {ratio}, α = {alpha}, {len(methods)} method(s)</small>"

    def draw(self) -> Figure:
        fig = Figure(figsize=(13, 8.8))
        grid = fig.add_gridspec(2, 6, height_ratios=[1.1, 1], hspace=0.5, wspace=1.3, left=0.06, right=0.86,
                                top=0.96, bottom=0.27)
        shift_ax, groups_ax = fig.add_subplot(grid[0, :3]), fig.add_subplot(grid[0, 3:])
        lean_ax, grid_ax, ece_ax = (fig.add_subplot(grid[1, :2]), fig.add_subplot(grid[1, 2:4]),
                                    fig.add_subplot(grid[1, 4:]))
        ratio, alpha, methods = self.shown
        setting = f"IF = {ratio}, α = {alpha}, {self.rounds} round{'' if self.rounds == 1 else 's'}"
        if not methods:
            for ax in fig.axes:
                ax.set_axis_off()
            shift_ax.text(0, 0.5, "tick at least one method", fontsize=12, transform=shift_ax.transAxes)
            return fig
        d = self.data
        counts = d["counts"]
        if len(methods) >= TREND_ONLY_FROM:
            trend_lines(d["shift"], counts, shift_ax)
            shift_ax.set_ylabel("accuracy change vs zero-shot (points)")
            shift_ax.set_title(f"per-class change, trend lines ({setting})", fontsize=10)
        else:
            plots.accuracy_shift(d["shift"], counts, ax=shift_ax, legend_at="none", title="")
            shift_ax.set_title(f"per-class change of the personal models ({setting})", fontsize=10)
        shift_ax.set_xlim(1, 2 * max(int(counts.max()), 1))
        plain_log_ticks(shift_ax.xaxis)
        shift_ax.set_ylim(*self._limits["change"])
        plots.group_bars(d["groups_pm"], ax=groups_ax, legend_at="none")
        groups_ax.set_title("personal models by group (mean over clients)", fontsize=10)
        lean_strips({"zero-shot": d["zero_shot_lean"], **d["lean"]}, lean_ax)
        lean_ax.set_ylim(*self._limits["lean"])
        lean_ax.set_title("each client's head lean (bar: mean)", fontsize=10)
        plots.group_bars(d["grid"], ax=grid_ax, keys=CELLS, legend_at="none")
        grid_ax.set_title("bias-transfer grid (G: global group)", fontsize=10)
        grid_ax.tick_params(axis="x", labelsize=7)
        plots.group_bars(d["ece"], ax=ece_ax, keys=ECE_KEYS, legend_at="none", ylim=self._limits["ece"])
        ece_ax.set_title("calibration by group", fontsize=10)
        ece_ax.set_ylabel("ECE (points)")
        plots.figure_legend(fig)
        notes = figure_notes(ratio, d)
        fig.text(0.06, 0.165, "\n".join(_wrap(n) for n in notes), va="top", ha="left", fontsize=9, color="0.2")
        return fig


def figure_notes(ratio: float, data: dict[str, Any]) -> list[str]:
    """The notes under the app's figure (never drawn over data): an empty tail group, negative lean, the lean."""
    notes = []
    if not (np.asarray(data["groups"]) == 2).any():
        notes.append(f"No tail classes at IF = {ratio} (a tail class has at most 20 training images): the tail "
                     "bars and the grid's tail cells are empty; the lean still counts each client's own head.")
    note = lean_note(data["lean"], data["zero_shot_lean"])
    if note:
        notes.append(note)
    notes.append("Head lean: share of a client's test predictions in its own head classes (its most frequent "
                 "classes holding half its training images) minus their share of its test labels; 0 = unbiased.")
    return notes


def _wrap(text: str, width: int = 140) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
