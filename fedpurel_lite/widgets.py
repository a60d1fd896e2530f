"""ipywidgets explorers of the series: sliders whose callbacks recompute data, then redraw.

Each explorer keeps the data behind its figure in ``.data`` and recomputes it with a *pure*
``*_view`` function, so tests (and nbval, which has no front end) drive it by setting a slider's
``value`` and reading ``.data``; drawing happens in an ``ipywidgets.Output`` only.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import plots
from .config import RunConfig
from .longtail import GROUP_NAMES, assign_groups, class_counts, counts_by_class
from .metrics import group_means, per_class_accuracy
from .partition import build_federation, count_matrix, label_entropy


def profile_view(zero_shot_per_class: np.ndarray, class_order: np.ndarray, imbalance_ratio: float,
                 n_max: int = 500) -> dict[str, Any]:
    """Class counts under an imbalance ratio, and the zero-shot group means they induce.

    Zero-shot accuracy does not depend on the training counts, so only the grouping moves.
    """
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


def federation_view(bank: Any, config: RunConfig, imbalance_ratio: float, dirichlet_alpha: float,
                    methods: tuple[str, ...] = FEDERATION_METHODS, rounds: int = 5) -> dict[str, Any]:
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

    Returns
    -------
    dict
        ``config`` (the reduced config), ``table`` (:func:`fedpurel_lite.results.summary_table` of the
        last round), ``curves`` (method → GM accuracy per round), ``tail_curves`` (method → GM tail
        accuracy per round), ``results`` (method → RunResult).
    """
    from .results import summary_table
    from .simulate import compare

    cfg = config.with_overrides({"imbalance_ratio": float(imbalance_ratio), "dirichlet_alpha": float(dirichlet_alpha),
                                 "rounds": int(rounds)})
    table = compare(cfg, list(methods), bank=bank, progress=False, last="last")
    results = table.attrs["results"]
    return {"config": cfg, "table": summary_table(table),
            "curves": {m: r.frame("gm")["accuracy"].tolist() for m, r in results.items()},
            "tail_curves": {m: r.frame("gm")["tail"].tolist() for m, r in results.items()},
            "results": results}


#: what the status line says while an explorer recomputes (its controls are disabled meanwhile)
BUSY = "<i>computing…</i>"
LABEL_STYLE = {"description_width": "initial"}  # never cut a control's label


class _Explorer:
    """Sliders + a status line + an output area; subclasses define ``compute`` and ``draw``.

    While ``update`` runs, the status line shows :data:`BUSY` and the controls are disabled, so a
    slow recomputation is visible and cannot be queued twice; afterwards the status is empty.
    """

    def __init__(self, sliders: list[w.Widget], draw: bool = True) -> None:
        self.sliders = sliders
        self.output = w.Output()
        self.status = w.HTML(value="", layout=w.Layout(min_width="9em"))
        self._draw_enabled = draw
        self.data: dict[str, Any] = {}
        for s in sliders:
            s.observe(lambda _change: self.update(), names="value")
        self.widget = w.VBox([w.HBox([*sliders, self.status]), self.output])
        self.update()

    def compute(self) -> dict[str, Any]:
        raise NotImplementedError

    def draw(self) -> plt.Figure:
        raise NotImplementedError

    def update(self) -> None:
        """Recompute ``.data`` from the sliders and redraw (status line busy meanwhile)."""
        self.status.value = BUSY
        for s in self.sliders:
            s.disabled = True
        try:
            self.data = self.compute()
            if self._draw_enabled:
                self._redraw()
        finally:
            for s in self.sliders:
                s.disabled = False
            self.status.value = ""

    def _redraw(self) -> None:
        """Redraw the table, when the explorer has one (a group without classes reads "—"), and the plot."""
        if hasattr(self, "table"):
            from IPython.display import display

            with self.table:
                self.table.clear_output(wait=True)
                display(show_table(self.data["table"]))
        with self.output:
            self.output.clear_output(wait=True)
            fig = self.draw()
            plt.show()
            plt.close(fig)


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

    def __init__(self, zero_shot_per_class: np.ndarray, class_order: np.ndarray, imbalance_ratio: float = 100,
                 draw: bool = True) -> None:
        self.zero_shot_per_class = np.asarray(zero_shot_per_class)
        self.class_order = np.asarray(class_order)
        self.ratio = _ratio_slider(imbalance_ratio)
        super().__init__([self.ratio], draw)

    def compute(self) -> dict[str, Any]:
        return profile_view(self.zero_shot_per_class, self.class_order, self.ratio.value)

    def draw(self) -> plt.Figure:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.2), width_ratios=[2, 1])
        plots.class_profile(self.data["counts"], self.data["groups"], ax=a, title=f"IF = {self.ratio.value}",
                            legend_at="above")
        plots.group_bars({"zero-shot": self.data["zero_shot"]}, ax=b, keys=GROUP_NAMES,
                         title="zero-shot accuracy by group")
        a.set_ylim(1, 1.5 * self.data["n_max"])  # the same axis at every setting
        return fig


class PartitionExplorer(_Explorer):
    """Imbalance-ratio and Dirichlet-alpha sliders → client × class heatmap and group shares (notebook 02)."""

    def __init__(self, train_labels: np.ndarray, test_labels: np.ndarray, class_order: np.ndarray,
                 imbalance_ratio: float = 100, dirichlet_alpha: float = 1.0, num_clients: int = 20,
                 draw: bool = True) -> None:
        self._args = (np.asarray(train_labels), np.asarray(test_labels), np.asarray(class_order))
        self.num_clients = num_clients
        self.ratio = _ratio_slider(imbalance_ratio)
        self.alpha = _alpha_slider([0.05, 0.1, 0.3, 0.5, 1.0, 3.0, 10.0], dirichlet_alpha)
        self.n_max = int(np.bincount(self._args[0]).max())
        super().__init__([self.ratio, self.alpha], draw)

    def compute(self) -> dict[str, Any]:
        return partition_view(*self._args, self.ratio.value, self.alpha.value, self.num_clients)

    def draw(self) -> plt.Figure:
        fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.6), width_ratios=[3, 1])
        plots.client_heatmap(self.data["table"], self._args[2], ax=a, vmax=self.n_max,
                             title=f"IF = {self.ratio.value}, α = {self.alpha.value}")
        self.data["group_shares"].plot.barh(stacked=True, ax=b, legend=False,
                                            color=[plots.GROUP_COLOURS[g] for g in GROUP_NAMES])
        b.set_xlabel("share of client data (%)")
        b.set_xlim(0, 100)
        b.invert_yaxis()
        b.set_yticks([])
        plots.legend(b, "above", handles=plots.group_handles(), ncols=3, bbox_to_anchor=(0.5, 1.0))
        return fig


class FederationExplorer(_Explorer):
    """Imbalance-ratio and Dirichlet-alpha sliders → a reduced federation re-run live: table and curves (notebook 06).

    Every slider change rebuilds the federation and re-runs ``methods`` for ``rounds`` rounds
    (seconds on the embedded bank); ``.data`` holds :func:`federation_view`'s output.
    """

    def __init__(self, bank: Any, config: RunConfig, methods: tuple[str, ...] = FEDERATION_METHODS,
                 rounds: int = 5, imbalance_ratio: float | None = None, dirichlet_alpha: float | None = None,
                 draw: bool = True) -> None:
        self.bank, self.config, self.methods, self.rounds = bank, config, tuple(methods), int(rounds)
        self.ratio = _ratio_slider(config.longtail.imbalance_ratio if imbalance_ratio is None else imbalance_ratio)
        alpha = config.federation.dirichlet_alpha if dirichlet_alpha is None else dirichlet_alpha
        options = sorted({0.05, 0.1, 0.3, 0.5, 1.0, 3.0, 10.0, float(alpha)})
        self.alpha = _alpha_slider(options, float(alpha))
        self.table = w.Output()
        super().__init__([self.ratio, self.alpha], draw)
        self.widget = w.VBox([w.HBox([*self.sliders, self.status]), self.table, self.output])

    def compute(self) -> dict[str, Any]:
        return federation_view(self.bank, self.config, self.ratio.value, self.alpha.value, self.methods,
                               self.rounds)

    def draw(self) -> plt.Figure:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.2))
        zero = self.data["curves"].get("zero-shot")
        title = f"IF = {self.ratio.value}, α = {self.alpha.value}, {self.rounds} rounds"
        plots.curves({m: v for m, v in self.data["curves"].items() if m != "zero-shot"}, "GM accuracy (%)", ax=a,
                     reference=zero[-1] if zero else None, title=title, legend_at="none")
        ztail = self.data["tail_curves"].get("zero-shot")
        tails = {m: v for m, v in self.data["tail_curves"].items() if m != "zero-shot"}
        if all(np.isnan(np.asarray(v, dtype=float)).all() for v in self.data["tail_curves"].values()):
            b.set_title("tail classes")
            b.set_xticks([])
            b.set_yticks([])
            no_group_note(b, "tail", f"IF = {self.ratio.value}")
        else:
            plots.curves(tails, "GM tail accuracy (%)", ax=b, reference=ztail[-1] if ztail else None,
                         title="tail classes", legend_at="none")
        plots.legend(b, "right", handles=a.get_legend_handles_labels()[0])  # one legend for both panels
        return fig


def zero_shot_per_class(bank: Any) -> np.ndarray:
    """Zero-shot per-class accuracy (percent) of a FeatureBank on its balanced test pool."""
    pred = bank.zero_shot_logits(bank.test_features).argmax(dim=1).numpy()
    return per_class_accuracy(bank.test_labels.numpy(), pred, len(bank.class_names)) * 100.0

