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

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from .longtail import GROUP_NAMES


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
