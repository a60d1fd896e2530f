"""ipywidgets explorers of the series: sliders whose callbacks recompute data, then redraw.

Each explorer keeps the data behind its figure in ``.data`` and recomputes it with a *pure*
``*_view`` function, so tests (and nbval, which has no front end) drive it by setting a slider's
``value`` and reading ``.data``; drawing happens in an ``ipywidgets.Output`` only.
"""

from __future__ import annotations

import base64
import html
import io
import threading
from pathlib import Path
from typing import Any

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from ..config import RunConfig
from ..data.longtail import GROUP_NAMES, assign_groups, class_counts, counts_by_class
from ..data.partition import build_federation, count_matrix, label_entropy
from . import plots
from .explore_grid import Progress, Superseded


def profile_view(zero_shot_per_class: np.ndarray, class_order: np.ndarray, imbalance_ratio: float,
                 n_max: int = 500) -> dict[str, Any]:
    """Class counts under an imbalance ratio, and the zero-shot group means they induce.

    Zero-shot accuracy does not depend on the training counts, so only the grouping moves.
    """
    from ..engine.metrics import group_means

    counts = counts_by_class(class_counts(n_max, len(class_order), imbalance_ratio), class_order)
    groups = assign_groups(counts)
    return {"counts": counts, "groups": groups, "zero_shot": group_means(zero_shot_per_class, groups),
            "group_sizes": np.bincount(groups, minlength=3), "n_max": int(n_max)}


def partition_view(train_labels: np.ndarray, test_labels: np.ndarray, class_order: np.ndarray,
                   imbalance_ratio: float, dirichlet_alpha: float, num_clients: int = 20,
                   seed: int = 1) -> dict[str, Any]:
    """Client × class table, per-client head/medium/tail shares and label entropy of a federation."""
    cfg = RunConfig().with_overrides({"imbalance_ratio": float(imbalance_ratio), "min_client_size": 5,
                                      "dirichlet_alpha": float(dirichlet_alpha), "num_clients": num_clients,
                                      "seed": seed})
    fed = build_federation(train_labels, test_labels, class_order, cfg)
    table = count_matrix(fed.client_train, train_labels, fed.num_classes)
    by_group = np.stack([table[:, fed.groups == g].sum(axis=1) for g in range(3)], axis=1)
    shares = pd.DataFrame(by_group / by_group.sum(axis=1, keepdims=True) * 100, columns=list(GROUP_NAMES),
                          index=[f"client {k}" for k in range(num_clients)]).round(1)
    return {"federation": fed, "table": table, "group_shares": shares, "entropy": label_entropy(table)}


FEDERATION_METHODS: tuple[str, ...] = ("zero-shot", "fedavg", "fedpurel")
#: the federation explorer's grid (its sliders' choices) and the rounds its precomputed file holds
FEDERATION_RATIOS: tuple[int, ...] = (10, 20, 50, 100, 200)
FEDERATION_ALPHAS: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0)
FEDERATION_GRID_ROUNDS = 4
FEDERATION_GRID_FILE = "federation.json"


def _reduced(config: RunConfig, imbalance_ratio: float, dirichlet_alpha: float, rounds: int) -> RunConfig:
    return config.with_overrides({"imbalance_ratio": float(imbalance_ratio), "dirichlet_alpha": float(dirichlet_alpha),
                                  "rounds": int(rounds)})


def federation_point(bank: Any, config: RunConfig, imbalance_ratio: float, dirichlet_alpha: float,
                     methods: tuple[str, ...] = FEDERATION_METHODS, rounds: int = 5, runs: dict | None = None,
                     progress: Progress | None = None) -> dict[str, Any]:
    """What the federation explorer draws at one setting, as plain numbers (a grid point, JSON-able).

    Returns
    -------
    dict
        ``methods``: method → ``gm`` and ``gm_tail`` (GM accuracy and tail accuracy per round, ``None``
        without tail classes) and ``row`` (the last round's :data:`~fedpurel_lite.engine.results.SUMMARY_COLUMNS`
        sources). With ``runs``, the :class:`RunResult` objects are kept there, keyed by
        ``(imbalance_ratio, alpha, method, rounds)``.
    """
    from ..engine.results import SUMMARY_COLUMNS
    from ..engine.simulate import run

    runs = {} if runs is None else runs
    cfg = _reduced(config, imbalance_ratio, dirichlet_alpha, rounds)
    fed = build_federation(np.asarray(bank.train_labels), np.asarray(bank.test_labels), bank.class_order, cfg)
    out: dict[str, Any] = {}
    for k, method in enumerate(methods, 1):
        key = (float(imbalance_ratio), float(dirichlet_alpha), method, int(rounds))
        if key not in runs:
            if progress is not None:
                progress(k, len(methods), method)
            runs[key] = run(cfg.with_overrides({"method": method}), bank=bank, progress=False, federation=fed)
        res = runs[key]
        last = res.summary["last"]
        row = {col: last[col.split("_", 1)[0]].get(col.split("_", 1)[1]) for col in SUMMARY_COLUMNS}
        out[method] = {"gm": [h["gm"]["accuracy"] for h in res.history],
                       "gm_tail": [h["gm"]["tail"] for h in res.history], "row": row}
    return {"methods": out}


def _nan(values: Any) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def federation_frame(point: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """:func:`federation_view`'s dictionary (without ``results``) from a grid point."""
    from ..engine.results import summary_table

    methods = point["methods"]
    rows = pd.DataFrame.from_dict({m: {k: np.nan if v is None else v for k, v in p["row"].items()}
                                   for m, p in methods.items()}, orient="index")
    return {"config": config, "table": summary_table(rows),
            "curves": {m: _nan(p["gm"]) for m, p in methods.items()},
            "tail_curves": {m: _nan(p["gm_tail"]) for m, p in methods.items()}}


def federation_view(bank: Any, config: RunConfig, imbalance_ratio: float, dirichlet_alpha: float,
                    methods: tuple[str, ...] = FEDERATION_METHODS, rounds: int = 5, runs: dict | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
    """A *reduced* federation (few rounds) of several methods under one imbalance ratio and Dirichlet alpha.

    Parameters
    ----------
    bank : FeatureBank-like
        Cached features (shared by every re-run, so only the federation and training are redone).
    config : RunConfig
        The protocol; its imbalance ratio, Dirichlet alpha and rounds are replaced.
    imbalance_ratio, dirichlet_alpha : float
        The slider values.
    methods : tuple of str
        Registered method names, compared on the same federation.
    rounds : int
        Rounds of the reduced run.
    runs : dict, optional
        Finished runs, keyed by ``(imbalance_ratio, alpha, method, rounds)``; filled in place.
    progress : callable, optional
        Told ``(k, n, method)`` before each new run.

    Returns
    -------
    dict
        ``config`` (the reduced config), ``table`` (:func:`fedpurel_lite.engine.results.summary_table` of the
        last round), ``curves`` (method → GM accuracy per round), ``tail_curves`` (method → GM tail
        accuracy per round), ``results`` (method → RunResult).
    """
    runs = {} if runs is None else runs
    point = federation_point(bank, config, imbalance_ratio, dirichlet_alpha, methods, rounds, runs, progress)
    view = federation_frame(point, _reduced(config, imbalance_ratio, dirichlet_alpha, rounds))
    view["results"] = {m: runs[(float(imbalance_ratio), float(dirichlet_alpha), m, int(rounds))] for m in methods}
    return view


#: what the status line says while an explorer recomputes (its controls stay live: presses are kept)
BUSY = "<i>computing…</i>"
LABEL_STYLE = {"description_width": "initial"}  # never cut a control's label
#: resolution of the explorers' images
PNG_DPI = 90


def from_front_end() -> bool:
    """Whether the running code answers a widget message from the front end (a reader moved a control).

    Code run in a cell (or a test, or nbclient) is not: there a slider set in code must update
    ``.data`` before the next line runs.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover  (IPython comes with ipywidgets)
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return False
    try:
        parent = kernel.get_parent("shell")
    except Exception:  # noqa: BLE001  (an older kernel: treat as code)
        return False
    return (parent or {}).get("header", {}).get("msg_type") == "comm_msg"


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (fixed DPI, no ``Software`` stamp: the same figure gives the same bytes).

    Drawn once, at the figure's own size (no tight bounding box, which draws twice): the explorers
    lay their figures out with fixed margins that hold the legends and notes.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI, metadata={"Software": None})
    return buf.getvalue()


def plain_log_ticks(axis: Any) -> None:
    """Label a log axis 1, 10, 100 instead of 10⁰, 10¹, 10² (no mathtext: a plot redraws in a fraction of the time)."""
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _display_data(data: dict[str, str]) -> tuple[dict[str, Any], ...]:
    return ({"output_type": "display_data", "data": data, "metadata": {}},)


class _Explorer:
    """Sliders + a status line + an output area; subclasses define ``compute`` and ``draw``.

    A setting the explorer can answer at once (``lookup``: precomputed or already computed) is
    drawn straight away. Any other setting is computed by ``compute``, with "run k of n" on the
    status line: in code (a cell, a test) before the setter returns; after a reader's key press
    in a background thread, so the controls stay live. Presses made meanwhile are not dropped:
    the computation of a setting that is no longer wanted stops at its next run, and the latest
    setting is computed next (finished runs are kept). :meth:`wait` waits for that thread.
    """

    #: the explorer computes every setting in well under a second (no background thread needed)
    instant = False

    def __init__(self, sliders: list[w.Widget], draw: bool = True) -> None:
        self.sliders = sliders
        self.output = w.Output()
        self.status = w.HTML(value="", layout=w.Layout(min_width="9em"))
        self._draw_enabled = draw
        self.data: dict[str, Any] = {}
        self.shown: tuple | None = None  # the setting .data belongs to
        self._lock = threading.Lock()  # guards the request state below
        self._show_lock = threading.Lock()  # one redraw at a time
        self._wanted = 0  # number of the latest request
        self._pending: tuple[int, tuple] | None = None
        self._worker: threading.Thread | None = None
        for s in sliders:
            s.observe(self._changed, names="value")
        self.widget = w.VBox([w.HBox([*sliders, self.status]), self.output])
        self.update()

    # ------------------------------------------------------------------ what subclasses define
    def settings(self) -> tuple:
        """The controls' current values (the key of a setting)."""
        return tuple(s.value for s in self.sliders)

    def lookup(self, settings: tuple) -> dict[str, Any] | None:
        """The data of ``settings`` when it is known without computing (precomputed or kept), else ``None``."""
        return None

    def compute(self, settings: tuple, progress: Progress | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def draw(self) -> Figure:
        raise NotImplementedError

    # ------------------------------------------------------------------ updating
    def update(self) -> None:
        """Answer the controls' current setting now (looked up, or computed with progress) and redraw."""
        with self._lock:
            self._wanted += 1
            ticket = self._wanted
        settings = self.settings()
        data = self.lookup(settings)
        if data is None:
            data = self.compute(settings, self._progress(ticket))
        self._show(ticket, settings, data)

    def _changed(self, _change: Any) -> None:
        if self.instant or not from_front_end() or self.lookup(self.settings()) is not None:
            self.update()
            return
        with self._lock:  # a reader's press that needs runs: to the background, latest setting wins
            self._wanted += 1
            self._pending = (self._wanted, self.settings())
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="explorer", daemon=True)
                self._worker.start()
        self.status.value = BUSY

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._pending is None:
                    self._worker = None
                    return
                ticket, settings = self._pending
                self._pending = None
            try:
                data = self.compute(settings, self._progress(ticket))
            except Superseded:
                continue
            except Exception as exc:  # noqa: BLE001  (shown to the reader; the controls stay usable)
                self.status.value = f"<b>error:</b> {html.escape(str(exc))}"
                continue
            self._show(ticket, settings, data)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until no background computation is running (tests; a cell after a reader's presses)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def _progress(self, ticket: int) -> Progress:
        def progress(k: int, n: int, label: str) -> None:
            if ticket != self._wanted:
                raise Superseded
            self.status.value = f"<i>computing… run {k} of {n}</i> ({html.escape(label)})"

        return progress

    def _show(self, ticket: int, settings: tuple, data: dict[str, Any]) -> None:
        with self._show_lock:
            if ticket != self._wanted:  # a newer setting was asked for meanwhile
                return
            self.data, self.shown = data, settings
            if self._draw_enabled:
                self._redraw()
            if self._pending is None:
                self.status.value = ""

    def _redraw(self) -> None:
        """Redraw the table, when the explorer has one (a group without classes reads "—"), and the plot."""
        if hasattr(self, "table"):
            shown = show_table(self.data["table"])
            self.table.outputs = _display_data({"text/html": shown._repr_html_(), "text/plain": shown.to_string()})
        fig = self.draw()
        png = base64.b64encode(figure_png(fig)).decode("ascii")
        width, height = fig.get_size_inches() * PNG_DPI
        self.output.outputs = _display_data({"image/png": png, "text/plain": f"<Figure size {width:.0f}x{height:.0f}>"})


def _ratio_slider(value: float) -> w.IntSlider:
    return w.IntSlider(value=int(value), min=1, max=200, step=1, description="imbalance ratio IF",
                       continuous_update=False, style=LABEL_STYLE, layout=w.Layout(width="26em"))


def _alpha_slider(options: list[float], value: float) -> w.SelectionSlider:
    return w.SelectionSlider(options=options, value=value, description="Dirichlet α", continuous_update=False,
                             style=LABEL_STYLE, layout=w.Layout(width="22em"))


def no_group_note(ax: plt.Axes, group: str, setting: str) -> None:
    """Write "no <group> classes at <setting>" in an empty axes (instead of leaving it blank)."""
    ax.text(0.5, 0.5, f"no {group} classes at {setting}", transform=ax.transAxes, ha="center", va="center",
            fontsize=10, color=plots.REFERENCE)


def show_table(table: pd.DataFrame) -> pd.DataFrame:
    """A table for display: numbers with one decimal, a missing value (a group without classes) as "—", not NaN.

    A plain DataFrame of strings (not a pandas ``Styler``, whose HTML carries a random id), so a
    saved notebook shows the same bytes on every run.
    """
    return table.map(lambda v: "—" if pd.isna(v) else f"{v:.1f}")


class ProfileExplorer(_Explorer):
    """Imbalance-ratio slider → class-count profile and zero-shot accuracy by group (notebook 01)."""

    instant = True

    def __init__(self, zero_shot_per_class: np.ndarray, class_order: np.ndarray, imbalance_ratio: float = 100,
                 draw: bool = True) -> None:
        self.zero_shot_per_class = np.asarray(zero_shot_per_class)
        self.class_order = np.asarray(class_order)
        self.ratio = _ratio_slider(imbalance_ratio)
        super().__init__([self.ratio], draw)

    def compute(self, settings: tuple, progress: Progress | None = None) -> dict[str, Any]:
        return profile_view(self.zero_shot_per_class, self.class_order, settings[0])

    def draw(self) -> Figure:
        fig = Figure(figsize=(11, 3.6))
        a, b = fig.subplots(1, 2, width_ratios=[2, 1])
        fig.subplots_adjust(left=0.07, right=0.98, top=0.76, bottom=0.15, wspace=0.25)
        plots.class_profile(self.data["counts"], self.data["groups"], ax=a, title=f"IF = {self.shown[0]}",
                            legend_at="above")
        plain_log_ticks(a.yaxis)
        plots.group_bars({"zero-shot": self.data["zero_shot"]}, ax=b, keys=GROUP_NAMES,
                         title="zero-shot accuracy by group")
        a.set_ylim(1, 1.5 * self.data["n_max"])  # the same axis at every setting
        a.set_xlim(-1, len(self.data["counts"]))
        return fig


class PartitionExplorer(_Explorer):
    """Imbalance-ratio and Dirichlet-alpha sliders → client × class heatmap and group shares (notebook 02)."""

    instant = True

    def __init__(self, train_labels: np.ndarray, test_labels: np.ndarray, class_order: np.ndarray,
                 imbalance_ratio: float = 100, dirichlet_alpha: float = 1.0, num_clients: int = 20,
                 draw: bool = True) -> None:
        self._args = (np.asarray(train_labels), np.asarray(test_labels), np.asarray(class_order))
        self.num_clients = num_clients
        self.ratio = _ratio_slider(imbalance_ratio)
        self.alpha = _alpha_slider([0.05, 0.1, 0.3, 0.5, 1.0, 3.0, 10.0], dirichlet_alpha)
        self.n_max = int(np.bincount(self._args[0]).max())
        super().__init__([self.ratio, self.alpha], draw)

    def compute(self, settings: tuple, progress: Progress | None = None) -> dict[str, Any]:
        return partition_view(*self._args, settings[0], settings[1], self.num_clients)

    def draw(self) -> Figure:
        fig = Figure(figsize=(12, 3.8))
        a, b = fig.subplots(1, 2, width_ratios=[3, 1])
        fig.subplots_adjust(left=0.07, right=0.98, top=0.8, bottom=0.12, wspace=0.12)
        plots.client_heatmap(self.data["table"], self._args[2], ax=a, vmax=self.n_max,
                             title=f"IF = {self.shown[0]}, α = {self.shown[1]}")
        self.data["group_shares"].plot.barh(stacked=True, ax=b, legend=False,
                                            color=[plots.GROUP_COLOURS[g] for g in GROUP_NAMES])
        b.set_xlabel("share of client data (%)")
        b.set_xlim(0, 100)
        b.invert_yaxis()
        b.set_yticks([])
        plots.legend(b, "above", handles=plots.group_handles(), ncols=3, bbox_to_anchor=(0.5, 1.0))
        return fig


def _choices(grid: tuple[float, ...], value: float, kind: type) -> list:
    """A slider's choices: the grid, plus ``value`` when it is off the grid (computed live)."""
    return sorted({kind(v) for v in grid} | {kind(value)})


def _padded(values: list[float], step: float, low: float | None = None,
            high: float | None = None) -> tuple[float, float]:
    """An axis range covering ``values``, widened to multiples of ``step`` (and clipped to ``low``/``high``)."""
    lo, hi = (min(values), max(values)) if values else (0.0, 100.0)
    lo, hi = np.floor(lo / step) * step, np.ceil(hi / step) * step
    if hi <= lo:
        hi = lo + step
    return (lo if low is None else max(lo, low)), (hi if high is None else min(hi, high))


class FederationExplorer(_Explorer):
    """Imbalance-ratio and Dirichlet-alpha sliders → a reduced federation: table and curves (notebook 06).

    Every setting of the sliders' grid (:data:`FEDERATION_RATIOS` × :data:`FEDERATION_ALPHAS`) is
    answered from ``data/explore/federation.json`` (``python -m fedpurel_lite explore-grid``) when
    the protocol, bank, methods and rounds match the file; any other setting (or protocol) re-runs
    ``methods`` for ``rounds`` rounds on the rebuilt federation, "run k of n" on the status line,
    and keeps the runs. ``.data`` holds :func:`federation_view`'s output (``results`` only for a
    setting run here). The axes are the same at every setting.
    """

    def __init__(self, bank: Any, config: RunConfig, methods: tuple[str, ...] = FEDERATION_METHODS,
                 rounds: int = 5, imbalance_ratio: float | None = None, dirichlet_alpha: float | None = None,
                 draw: bool = True, grid: str | Path | None = None) -> None:
        from .explore_grid import FOLDER, GridStore

        self.bank, self.config, self.methods, self.rounds = bank, config, tuple(methods), int(rounds)
        self.runs: dict = {}
        store = GridStore.load(Path(grid) if grid is not None else FOLDER / FEDERATION_GRID_FILE)
        self.store = store if store is not None and store.matches(config, self.rounds, self.methods, bank) else None
        ratio = int(config.longtail.imbalance_ratio if imbalance_ratio is None else imbalance_ratio)
        alpha = float(config.federation.dirichlet_alpha if dirichlet_alpha is None else dirichlet_alpha)
        self.ratio = w.SelectionSlider(options=_choices(FEDERATION_RATIOS, ratio, int), value=ratio,
                                       description="imbalance ratio IF", continuous_update=False, style=LABEL_STYLE,
                                       layout=w.Layout(width="26em"))
        self.alpha = _alpha_slider(_choices(FEDERATION_ALPHAS, alpha, float), alpha)
        self.table = w.Output()
        self._limits = self._axis_limits()
        super().__init__([self.ratio, self.alpha], draw)
        self.widget = w.VBox([w.HBox([*self.sliders, self.status]), self.table, self.output])

    def _axis_limits(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Fixed y ranges of the two panels: the grid's range when precomputed, else 0 – 100."""
        if self.store is None:
            return (0.0, 100.0), (0.0, 100.0)
        return (_padded(self.store.values("methods", "*", "gm"), 5, 0, 100),
                _padded(self.store.values("methods", "*", "gm_tail"), 5, 0, 100))

    def lookup(self, settings: tuple) -> dict[str, Any] | None:
        ratio, alpha = settings
        point = self.store.get(ratio, alpha) if self.store is not None else None
        if point is not None:
            return federation_frame(point, _reduced(self.config, ratio, alpha, self.rounds))
        keys = [(float(ratio), float(alpha), m, self.rounds) for m in self.methods]
        if all(k in self.runs for k in keys):
            return self.compute(settings)
        return None

    def compute(self, settings: tuple, progress: Progress | None = None) -> dict[str, Any]:
        return federation_view(self.bank, self.config, settings[0], settings[1], self.methods, self.rounds,
                               self.runs, progress)

    def draw(self) -> Figure:
        fig = Figure(figsize=(11, 3.4))
        a, b = fig.subplots(1, 2)
        fig.subplots_adjust(left=0.07, right=0.84, top=0.88, bottom=0.15, wspace=0.28)
        ratio, alpha = self.shown
        zero = self.data["curves"].get("zero-shot")
        title = f"IF = {ratio}, α = {alpha}, {self.rounds} rounds"
        plots.curves({m: v for m, v in self.data["curves"].items() if m != "zero-shot"}, "GM accuracy (%)", ax=a,
                     reference=zero[-1] if zero else None, title=title, legend_at="none")
        ztail = self.data["tail_curves"].get("zero-shot")
        tails = {m: v for m, v in self.data["tail_curves"].items() if m != "zero-shot"}
        if all(np.isnan(np.asarray(v, dtype=float)).all() for v in self.data["tail_curves"].values()):
            b.set_title(f"tail classes: none at IF = {ratio}")
            b.set_xlabel("round")
        else:
            plots.curves(tails, "GM tail accuracy (%)", ax=b, reference=ztail[-1] if ztail else None,
                         title="tail classes", legend_at="none")
        for ax, limits in zip((a, b), self._limits, strict=True):  # the same axes at every setting
            ax.set_ylim(*limits)
            ax.set_xlim(0.5, self.rounds + 0.5)
        plots.legend(b, "right", handles=a.get_legend_handles_labels()[0])  # one legend for both panels
        return fig


def zero_shot_per_class(bank: Any) -> np.ndarray:
    """Zero-shot per-class accuracy (percent) of a FeatureBank on its balanced test pool."""
    from ..engine.metrics import per_class_accuracy

    pred = bank.zero_shot_logits(bank.test_features).argmax(dim=1).numpy()
    return per_class_accuracy(bank.test_labels.numpy(), pred, len(bank.class_names)) * 100.0

