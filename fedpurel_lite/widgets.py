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
            "group_sizes": np.bincount(groups, minlength=3)}


def partition_view(train_labels: np.ndarray, test_labels: np.ndarray, class_order: np.ndarray,
                   imbalance_ratio: float, dirichlet_alpha: float, num_clients: int = 20,
                   seed: int = 1) -> dict[str, Any]:
    """Client × class table, per-client head/medium/tail shares and label entropy of a federation."""
    cfg = RunConfig(imbalance_ratio=imbalance_ratio, dirichlet_alpha=dirichlet_alpha, num_clients=num_clients,
                    min_client_size=5, seed=seed)
    fed = build_federation(train_labels, test_labels, class_order, cfg)
    table = count_matrix(fed.client_train, train_labels, fed.num_classes)
    by_group = np.stack([table[:, fed.groups == g].sum(axis=1) for g in range(3)], axis=1)
    shares = pd.DataFrame(by_group / by_group.sum(axis=1, keepdims=True) * 100, columns=list(GROUP_NAMES),
                          index=[f"client {k}" for k in range(num_clients)]).round(1)
    return {"federation": fed, "table": table, "group_shares": shares, "entropy": label_entropy(table)}


class _Explorer:
    """Sliders + an output area; subclasses define ``compute`` and ``draw``."""

    def __init__(self, sliders: list[w.Widget], draw: bool = True) -> None:
        self.sliders = sliders
        self.output = w.Output()
        self._draw_enabled = draw
        self.data: dict[str, Any] = {}
        for s in sliders:
            s.observe(lambda _change: self.update(), names="value")
        self.widget = w.VBox([w.HBox(sliders), self.output])
        self.update()

    def compute(self) -> dict[str, Any]:
        raise NotImplementedError

    def draw(self) -> plt.Figure:
        raise NotImplementedError

    def update(self) -> None:
        """Recompute ``.data`` from the sliders and redraw."""
        self.data = self.compute()
        if self._draw_enabled:
            with self.output:
                self.output.clear_output(wait=True)
                fig = self.draw()
                plt.show()
                plt.close(fig)


def _ratio_slider(value: float) -> w.IntSlider:
    return w.IntSlider(value=int(value), min=1, max=200, step=1, description="imbalance IF",
                       continuous_update=False)


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
        plots.class_profile(self.data["counts"], self.data["groups"], ax=a, title=f"IF = {self.ratio.value}")
        plots.group_bars({"zero-shot": self.data["zero_shot"]}, ax=b, keys=GROUP_NAMES,
                         title="zero-shot accuracy by group")
        return fig


class PartitionExplorer(_Explorer):
    """Imbalance-ratio and Dirichlet-alpha sliders → client × class heatmap and group shares (notebook 02)."""

    def __init__(self, train_labels: np.ndarray, test_labels: np.ndarray, class_order: np.ndarray,
                 imbalance_ratio: float = 100, dirichlet_alpha: float = 1.0, num_clients: int = 20,
                 draw: bool = True) -> None:
        self._args = (np.asarray(train_labels), np.asarray(test_labels), np.asarray(class_order))
        self.num_clients = num_clients
        self.ratio = _ratio_slider(imbalance_ratio)
        self.alpha = w.SelectionSlider(options=[0.05, 0.1, 0.3, 0.5, 1.0, 3.0, 10.0], value=dirichlet_alpha,
                                       description="Dirichlet α", continuous_update=False)
        super().__init__([self.ratio, self.alpha], draw)

    def compute(self) -> dict[str, Any]:
        return partition_view(*self._args, self.ratio.value, self.alpha.value, self.num_clients)

    def draw(self) -> plt.Figure:
        fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.6), width_ratios=[3, 1])
        plots.client_heatmap(self.data["table"], self._args[2], ax=a,
                             title=f"IF = {self.ratio.value}, α = {self.alpha.value}")
        self.data["group_shares"].plot.barh(stacked=True, ax=b, legend=False,
                                            color=[plots.GROUP_COLOURS[g] for g in GROUP_NAMES])
        b.set_xlabel("share of client data (%)")
        b.invert_yaxis()
        b.set_yticks([])
        return fig


def zero_shot_per_class(bank: Any) -> np.ndarray:
    """Zero-shot per-class accuracy (percent) of a FeatureBank on its balanced test pool."""
    pred = bank.zero_shot_logits(bank.test_features).argmax(dim=1).numpy()
    return per_class_accuracy(bank.test_labels.numpy(), pred, len(bank.class_names)) * 100.0

