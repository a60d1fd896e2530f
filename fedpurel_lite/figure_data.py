"""The data behind the figures: readable tables, rebuilt models and per-client measures.

Pure functions of finished runs (:class:`~fedpurel_lite.simulate.RunResult`) and a feature
bank; the drawing lives in :mod:`fedpurel_lite.plots`, which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SUMMARY_COLUMNS: dict[str, str] = {
    "gm_accuracy": "GM all", "gm_head": "GM head", "gm_medium": "GM med", "gm_tail": "GM tail",
    "gm_head_tail_gap": "GM H−T gap", "gm_acc_std": "GM acc std", "pm_accuracy": "PM all", "pm_tail": "PM tail",
}


def summary_table(table: Any, columns: Mapping[str, str] = SUMMARY_COLUMNS, decimals: int = 1) -> Any:
    """The comparison table of :func:`fedpurel_lite.simulate.compare`, reduced to readable columns.

    Parameters
    ----------
    table : pandas.DataFrame
        ``simulate.compare`` output (one row per method).
    columns : mapping
        Source column → display name, in display order.
    decimals : int
        Rounding (keeps printed tables stable under nbval).

    Returns
    -------
    pandas.DataFrame
    """
    out = table[list(columns)].rename(columns=dict(columns)).astype(float).round(decimals)
    out.index.name = "method"
    return out


def global_model(result: Any, bank: Any, backbone: Any = None) -> Any:
    """Rebuild the final global PEFT of a :class:`~fedpurel_lite.simulate.RunResult` (eval mode).

    Parameters
    ----------
    result : RunResult
        A finished run (its ``final_state`` holds ``global/<name>`` tensors).
    bank : FeatureBank-like
        The bank the run used.
    backbone : Backbone-like, optional
        Needed for ``peft="prompt"``.
    """
    from .config import RunConfig
    from .peft import build_peft

    config = RunConfig.from_dict(result.config)
    peft = build_peft(config.peft, bank, backbone, config)
    state = {k.split("/", 1)[1]: v for k, v in result.final_state.items() if k.startswith("global/")}
    if state:
        peft.load_shared_state(state)
    return peft.eval()


def personal_predictions(result: Any, bank: Any, backbone: Any = None) -> list[np.ndarray]:
    """Every client's final personal-model predictions on its test split (the global model's without one).

    Parameters
    ----------
    result : RunResult
        A finished run.
    bank : FeatureBank-like
        The bank the run used (the federation is rebuilt from the run's config).
    backbone : Backbone-like, optional
        Needed for ``peft="prompt"``.

    Returns
    -------
    list of numpy.ndarray
        Predicted labels per client, aligned with ``build_federation(...).client_test``.
    """
    import torch

    from .config import RunConfig
    from .methods import get_method
    from .partition import build_federation
    from .personalize import load_state, new_personal_module, predict_personal

    config = RunConfig.from_dict(result.config)
    fed = build_federation(np.asarray(bank.train_labels), np.asarray(bank.test_labels), bank.class_order, config)
    peft = global_model(result, bank, backbone)
    x_test = torch.as_tensor(bank.test_features).float()
    with torch.no_grad():
        logits = peft.predict_logits(x_test)
    kind = get_method(result.method).personal
    module = new_personal_module(kind, peft, config) if kind else None
    out = []
    for k, idx in enumerate(fed.client_test):
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        prefix = f"personal/{k}/"
        state = {n[len(prefix):]: t for n, t in result.final_state.items() if n.startswith(prefix)}
        if module is None or not state:
            out.append(logits[idx_t].argmax(dim=1).numpy())
            continue
        load_state(module, state)
        pl = predict_personal(kind, module, peft, x_test[idx_t], logits[idx_t], config)
        out.append(pl.argmax(dim=1).numpy())
    return out


def local_head_lean(client_counts: np.ndarray, y_true: Sequence[np.ndarray], y_pred: Sequence[np.ndarray],
                    mass: float = 0.5) -> np.ndarray:
    """How far each client's predictions lean to its own head classes, in percentage points.

    A client's *local head* is the smallest set of its most frequent training classes holding
    ``mass`` of its training images. The lean is the share of its test predictions that fall in
    the local head minus the share of its test labels that do: 0 for an unbiased model, positive
    when predictions pile onto the classes the client saw most.

    Parameters
    ----------
    client_counts : numpy.ndarray
        Client × class training counts (``partition.count_matrix``).
    y_true, y_pred : sequence of numpy.ndarray
        Each client's test labels and predictions.
    mass : float
        Share of the client's training images its local head covers (0 < mass <= 1).

    Returns
    -------
    numpy.ndarray
        One value per client.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must lie in (0, 1], got {mass!r}")
    out = []
    for counts, yt, yp in zip(np.asarray(client_counts), y_true, y_pred, strict=True):
        order = np.argsort(-counts, kind="stable")
        cum = np.cumsum(counts[order]) / max(counts.sum(), 1)
        head = order[: int(np.searchsorted(cum, mass - 1e-12)) + 1]
        in_pred = np.isin(np.asarray(yp), head).mean() if len(yp) else np.nan
        in_true = np.isin(np.asarray(yt), head).mean() if len(yt) else np.nan
        out.append(100.0 * (in_pred - in_true))
    return np.asarray(out, dtype=float)


def client_group_accuracy(groups: np.ndarray, y_true: Sequence[np.ndarray], y_pred: Sequence[np.ndarray],
                          group: int = 2) -> np.ndarray:
    """Each client's accuracy (percent) on the test samples of one class group (2 = tail).

    Parameters
    ----------
    groups : numpy.ndarray
        Group per class id (0 head, 1 medium, 2 tail).
    y_true, y_pred : sequence of numpy.ndarray
        Each client's test labels and predictions.
    group : int
        Which group.

    Returns
    -------
    numpy.ndarray
        One value per client; NaN for a client without test samples of the group.
    """
    groups = np.asarray(groups)
    out = []
    for yt, yp in zip(y_true, y_pred, strict=True):
        yt, yp = np.asarray(yt), np.asarray(yp)
        inside = groups[yt] == group
        out.append(100.0 * float(np.mean(yp[inside] == yt[inside])) if inside.any() else np.nan)
    return np.asarray(out, dtype=float)
