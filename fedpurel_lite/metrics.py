"""Accuracy, macro-F1, head/medium/tail means and named balance measures.

All label-based metrics go through scikit-learn with the full label set given explicitly, so a
class absent from a client's test split or never predicted is handled the same way everywhere:

- per-class accuracy is ``NaN`` for a class with no test sample (it has no accuracy) and ``0``
  for a class that is present but never predicted correctly;
- group means (head / medium / tail) average the classes of the group that have test samples; a
  class at 0 % counts (the reference code drops it, which inflates the means);
- macro-F1 uses ``zero_division=0`` over the classes present in ``y_true`` (as the reference).

The paper's "Balancedness" is not defined in any source we have, so nothing here carries that
name. The balance measures are named for what they compute.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from .longtail import GROUP_NAMES

#: the scalar metrics of the global model on the balanced test set, recorded every round
SCALAR_KEYS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "head", "medium", "tail", "acc_std",
                                "head_tail_gap", "spearman_logcount", "pred_kl")
#: the per-client metrics of a model on the client test splits
CLIENT_KEYS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "head", "medium", "tail")


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of every class ``0..num_classes-1``; ``NaN`` where the class has no test sample."""
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def group_means(per_class: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Mean per-class accuracy within head / medium / tail (``NaN`` for a group with no data)."""
    out = {}
    for g, name in enumerate(GROUP_NAMES):
        values = per_class[(np.asarray(groups) == g) & ~np.isnan(per_class)]
        out[name] = float(values.mean()) if values.size else float("nan")
    return out


def prediction_kl(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, eps: float = 1e-6) -> float:
    """KL(predicted label distribution ‖ true label distribution), in nats.

    Zero when the model predicts every class as often as it occurs; ``log C - H(pred)`` on a
    balanced test set, so it grows as predictions pile onto a few (head) classes. ``eps``
    smooths classes that are predicted but absent from ``y_true``.
    """
    q = np.bincount(y_pred, minlength=num_classes).astype(np.float64)
    p = np.bincount(y_true, minlength=num_classes).astype(np.float64) + eps
    p /= p.sum()
    q /= q.sum()
    mask = q > 0
    return float(np.sum(q[mask] * np.log(q[mask] / p[mask])))


def evaluate_predictions(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    groups: np.ndarray | None = None,
    train_counts: np.ndarray | None = None,
) -> dict[str, float | np.ndarray]:
    """Every metric of one model on one test set.

    Parameters
    ----------
    y_true, y_pred : numpy.ndarray
        True and predicted labels.
    num_classes : int
        Size of the label space (all classes, present or not).
    groups : numpy.ndarray, optional
        Head/medium/tail group per class (``longtail.assign_groups``); adds ``head``,
        ``medium``, ``tail`` and ``head_tail_gap``.
    train_counts : numpy.ndarray, optional
        Training images per class; adds ``spearman_logcount``.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``per_class`` (array), ``acc_std``
        (std of per-class accuracy, percentage points), ``pred_kl``, and the optional keys
        above. Accuracies are in percent.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    present = np.unique(y_true)
    per_class = per_class_accuracy(y_true, y_pred, num_classes) * 100.0
    out: dict[str, float | np.ndarray] = {
        "accuracy": float(np.mean(y_true == y_pred) * 100.0),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0) * 100.0),
        "per_class": per_class,
        "acc_std": float(np.nanstd(per_class)),
        "pred_kl": prediction_kl(y_true, y_pred, num_classes),
    }
    if groups is not None:
        means = group_means(per_class, groups)
        out.update(means)
        out["head_tail_gap"] = means["head"] - means["tail"]
    if train_counts is not None:
        valid = ~np.isnan(per_class)
        rho = spearmanr(per_class[valid], np.log(np.asarray(train_counts, dtype=np.float64)[valid]))
        out["spearman_logcount"] = float(rho.statistic) if valid.sum() > 2 else float("nan")
    return out


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn's balanced accuracy (mean recall over classes present in ``y_true``), in percent."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        return float(balanced_accuracy_score(y_true, y_pred) * 100.0)


def client_metrics(truths: Sequence[np.ndarray], preds: Sequence[np.ndarray], num_classes: int,
                   groups: np.ndarray) -> dict[str, np.ndarray]:
    """Per-client metrics of many small test splits at once (one bincount, no per-client sklearn call).

    Same definitions as :func:`fedpurel_lite.metrics.evaluate_predictions` (tested equal):
    accuracy, balanced accuracy (mean recall over present classes), macro-F1 over present classes
    with ``zero_division=0``, per-class recall (NaN for absent classes) and head/medium/tail means
    of the present classes; all in percent. Calling scikit-learn 41 times per round would cost
    about as much as the training itself.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``head``, ``medium``, ``tail`` (``[K]``)
        and ``per_class`` (``[K, C]``).
    """
    k, c = len(truths), num_classes
    sizes = np.array([len(t) for t in truths])
    client = np.repeat(np.arange(k), sizes)
    yt = np.concatenate(truths).astype(np.int64)
    yp = np.concatenate(preds).astype(np.int64)
    cm = np.bincount((client * c + yt) * c + yp, minlength=k * c * c).reshape(k, c, c)
    tp = cm[:, np.arange(c), np.arange(c)].astype(np.float64)
    support = cm.sum(axis=2).astype(np.float64)
    predicted = cm.sum(axis=1).astype(np.float64)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / np.maximum(support, 1), np.nan) * 100.0
        f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1), np.nan) * 100.0
        out = {"accuracy": tp.sum(1) / np.maximum(sizes, 1) * 100.0,
               "balanced_accuracy": np.nanmean(recall, axis=1),
               "macro_f1": np.nanmean(f1, axis=1), "per_class": recall}
    groups = np.asarray(groups)
    for g, name in enumerate(("head", "medium", "tail")):
        sub = recall[:, groups == g]
        valid = ~np.isnan(sub)
        out[name] = np.where(valid.any(1), np.nansum(sub, axis=1) / np.maximum(valid.sum(1), 1), np.nan)
    return out


def evaluate_clients(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
                     groups: np.ndarray) -> dict[str, Any]:
    """Means over clients of the per-client metrics, plus the same metrics pooled over all splits.

    Returns
    -------
    dict
        The :data:`CLIENT_KEYS` means over clients (``NaN`` where no client has a value),
        ``per_client_accuracy`` ``[K]`` and ``pooled`` (the same keys over all splits together,
        with its ``per_class`` accuracy and ``acc_std``).
    """
    per = client_metrics(truths, preds, num_classes, groups)
    block: dict[str, Any] = {}
    for key in CLIENT_KEYS:
        vals = per[key]
        block[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    block["per_client_accuracy"] = per["accuracy"]
    pooled = client_metrics([np.concatenate(truths)], [np.concatenate(preds)], num_classes, groups)
    block["pooled"] = {key: float(pooled[key][0]) for key in CLIENT_KEYS}
    block["pooled"]["per_class"] = pooled["per_class"][0]
    block["pooled"]["acc_std"] = float(np.nanstd(pooled["per_class"][0]))
    return block


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
