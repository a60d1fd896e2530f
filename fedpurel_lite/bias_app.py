"""The bias-transfer app (``apps/bias_transfer.ipynb``, served by Voilà with ``make app``).

A reader picks an imbalance ratio, a Dirichlet α and some personalization methods; the app runs a
reduced federation (``rounds`` rounds) of zero-shot and each picked method on that federation and
shows, for the personal models on the client splits,

1. every class's accuracy change against zero-shot, against its training frequency;
2. head / medium / tail accuracy per method;
3. every client's head lean (:func:`fedpurel_lite.metrics.local_head_lean`).

Runs are slow (seconds per method), so every finished run is kept, keyed by
``(imbalance ratio, α, method, rounds)``: ticking a method off and on, or going back to a
setting, is instant, and the default setting is computed when the app starts. As in every
explorer, :func:`bias_view` is a pure function, and the app keeps its result in ``.data``.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import plots
from .assembly import personal_predictions
from .config import RunConfig
from .longtail import GROUP_NAMES
from .metrics import local_head_lean
from .partition import build_federation, count_matrix
from .widgets import LABEL_STYLE, _Explorer, no_group_note

#: methods a reader can pick (the personalization methods of notebook 05, FedAvg as the reference)
APP_METHODS: tuple[str, ...] = ("fedavg", "local-ft", "fedrep", "interp", "folio", "fedpurel-noproj", "fedpurel")
DEFAULT_METHODS: tuple[str, ...] = ("fedavg", "folio", "fedpurel")
RATIOS: tuple[int, ...] = (10, 25, 50, 100, 200)
ALPHAS: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0)


def _federation(bank: Any, config: RunConfig) -> Any:
    return build_federation(np.asarray(bank.train_labels), np.asarray(bank.test_labels), bank.class_order, config)


def bias_view(bank: Any, config: RunConfig, imbalance_ratio: float, dirichlet_alpha: float,
              methods: tuple[str, ...], rounds: int, runs: dict | None = None) -> dict[str, Any]:
    """Personal models of ``methods`` (and zero-shot) on one reduced federation, with their bias measures.

    Parameters
    ----------
    bank : FeatureBank-like
        Cached features.
    config : RunConfig
        The protocol; imbalance ratio, Dirichlet α and rounds are replaced.
    imbalance_ratio, dirichlet_alpha : float
        The setting.
    methods : tuple of str
        Registered methods to compare (zero-shot is always added as the reference).
    rounds : int
        Rounds of each reduced run.
    runs : dict, optional
        A cache of finished runs and their per-client lean, keyed by
        ``(imbalance_ratio, alpha, method, rounds)``; filled in place.

    Returns
    -------
    dict
        ``config``; ``counts`` (training images per class) and ``groups``; ``shift`` (method → per-class
        accuracy change of the personal models against zero-shot, points, pooled over the client
        splits); ``groups_pm`` (method → overall / head / medium / tail PM accuracy); ``lean``
        (method → head lean per client); ``table`` (one row per method); ``results``.
    """
    from .simulate import run

    runs = {} if runs is None else runs
    cfg = config.with_overrides({"imbalance_ratio": float(imbalance_ratio), "dirichlet_alpha": float(dirichlet_alpha),
                                 "rounds": int(rounds)})
    fed = _federation(bank, cfg)
    train_labels, test_labels = np.asarray(bank.train_labels), np.asarray(bank.test_labels)
    client_counts = count_matrix(fed.client_train, train_labels, fed.num_classes)
    y_true = [test_labels[idx] for idx in fed.client_test]
    results, lean = {}, {}
    for method in ("zero-shot", *[m for m in methods if m != "zero-shot"]):
        key = (float(imbalance_ratio), float(dirichlet_alpha), method, int(rounds))
        if key not in runs:  # a run and its per-client lean, computed once per setting
            result = run(cfg.with_overrides({"method": method}), bank=bank, progress=False, federation=fed)
            runs[key] = (result, local_head_lean(client_counts, y_true, personal_predictions(result, bank)))
        results[method], lean[method] = runs[key]
    lean = {m: lean[m] for m in methods}
    pm = {m: r.history[-1]["pm"] for m, r in results.items()}
    zero = np.asarray(pm["zero-shot"]["pooled"]["per_class"], dtype=float)
    shift = {m: np.asarray(pm[m]["pooled"]["per_class"], dtype=float) - zero for m in methods}
    groups_pm = {m: {k: float("nan") if pm[m][k] is None else float(pm[m][k]) for k in ("accuracy", *GROUP_NAMES)}
                 for m in results}
    table = pd.DataFrame({"PM all": {m: g["accuracy"] for m, g in groups_pm.items()},
                          "PM tail": {m: g["tail"] for m, g in groups_pm.items()},
                          "mean head lean": {m: float(np.nanmean(v)) for m, v in lean.items()}})
    table.index.name = "method"
    return {"config": cfg, "counts": np.asarray(fed.train_counts), "groups": np.asarray(fed.groups),
            "shift": shift, "groups_pm": groups_pm, "lean": lean, "table": table.round(1), "results": results}


class BiasTransferApp(_Explorer):
    """Imbalance ratio, Dirichlet α and method check boxes → per-class change, group bars and client lean.

    Parameters
    ----------
    bank : FeatureBank-like
        Cached features.
    config : RunConfig
        The protocol (its ratio and α are the starting setting when they are among the choices).
    rounds : int
        Rounds of each reduced run.
    methods : tuple of str
        Methods ticked at the start.
    draw : bool
        Draw (``False`` in tests without a front end).
    """

    def __init__(self, bank: Any, config: RunConfig, rounds: int = 10, methods: tuple[str, ...] = DEFAULT_METHODS,
                 draw: bool = True) -> None:
        self.bank, self.config, self.rounds = bank, config, int(rounds)
        self.runs: dict = {}
        ratio = int(config.longtail.imbalance_ratio) if int(config.longtail.imbalance_ratio) in RATIOS else 100
        alpha = float(config.federation.dirichlet_alpha) if float(config.federation.dirichlet_alpha) in ALPHAS else 1.0
        self.ratio = w.SelectionSlider(options=list(RATIOS), value=ratio, description="imbalance ratio IF",
                                       continuous_update=False, style=LABEL_STYLE, layout=w.Layout(width="24em"))
        self.alpha = w.SelectionSlider(options=list(ALPHAS), value=alpha, description="Dirichlet α",
                                       continuous_update=False, style=LABEL_STYLE, layout=w.Layout(width="20em"))
        self.boxes = {m: w.Checkbox(value=m in methods, description=m, indent=False, style=LABEL_STYLE,
                                    layout=w.Layout(width="10em")) for m in APP_METHODS}
        self.table = w.Output()
        super().__init__([self.ratio, self.alpha, *self.boxes.values()], draw)
        self.widget = w.VBox([w.HBox([self.ratio, self.alpha, self.status]),
                              w.HBox([w.HTML("<b>methods:</b>"), *self.boxes.values()]), self.table, self.output])

    @property
    def methods(self) -> tuple[str, ...]:
        """The ticked methods, in the app's fixed order."""
        return tuple(m for m, box in self.boxes.items() if box.value)

    def compute(self) -> dict[str, Any]:
        return bias_view(self.bank, self.config, self.ratio.value, self.alpha.value, self.methods, self.rounds,
                         self.runs)

    def draw(self) -> plt.Figure:
        fig = plt.figure(figsize=(13, 7.2))
        grid = fig.add_gridspec(2, 2, height_ratios=[1.1, 1], hspace=0.45, wspace=0.25)
        a, b, c = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
        setting = f"IF = {self.ratio.value}, α = {self.alpha.value}, {self.rounds} rounds"
        if not self.methods:
            for ax in (a, b, c):
                ax.set_axis_off()
            a.text(0, 0.5, "tick at least one method", fontsize=12, transform=a.transAxes)
            return fig
        plots.accuracy_shift(self.data["shift"], self.data["counts"], ax=a, legend_at="none",
                             title=f"personal models, per class ({setting})",
                             ylabel="accuracy change vs zero-shot (points)")
        plots.group_bars(self.data["groups_pm"], ax=b, legend_at="none", title="personal models by group")
        plots.lean_bars(self.data["lean"], ax=c, legend_at="none", title="each client's head lean")
        if (self.data["groups"] == 2).sum() == 0:
            no_group_note(c, "tail", f"IF = {self.ratio.value} (the lean still counts each client's own head)")
            c.texts[-1].set_position((0.5, 0.9))
        plots.figure_legend(fig)
        return fig
