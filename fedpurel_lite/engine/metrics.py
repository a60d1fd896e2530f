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

from ..data.longtail import GROUP_NAMES

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

    Same definitions as :func:`fedpurel_lite.engine.metrics.evaluate_predictions` (tested equal):
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


# ----------------------------------------------------------------------------- bias-transfer analysis
#: rows and columns of :func:`bias_transfer_grid`
GRID_ROWS: tuple[str, str] = ("global head", "global tail")
GRID_COLUMNS: tuple[str, str] = ("local head", "local tail")


def accuracy_change(per_class: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-class accuracy change against a reference model, ``Δ_c = a_c − a_c^ref`` (``NaN`` kept)."""
    return np.asarray(per_class, dtype=float) - np.asarray(reference, dtype=float)


def spearman_change_logcount(change: np.ndarray, train_counts: np.ndarray) -> float:
    """The erosion slope: Spearman ``ρ(Δ_c, log n_c)`` over classes with a finite change and ``n_c > 0``.

    Average ranks for ties; ``NaN`` with < 3 classes or a constant input. Positive: accuracy moved to the head.
    """
    change, counts = np.asarray(change, dtype=float), np.asarray(train_counts, dtype=float)
    ok = np.isfinite(change) & (counts > 0)
    if ok.sum() < 3 or np.ptp(change[ok]) == 0 or np.ptp(counts[ok]) == 0:
        return float("nan")
    return float(spearmanr(change[ok], np.log(counts[ok])).statistic)


def _finite(per_class: np.ndarray) -> np.ndarray:
    values = np.asarray(per_class, dtype=float)
    return values[np.isfinite(values)]


def worst_class_accuracy(per_class: np.ndarray) -> float:
    """``min_c a_c`` over the classes with test samples (``NaN`` when none)."""
    a = _finite(per_class)
    return float(a.min()) if a.size else float("nan")


def harmonic_mean_accuracy(per_class: np.ndarray) -> float:
    """``C / Σ_c 1/a_c`` over the classes with test samples; 0 when any of them is at 0."""
    a = _finite(per_class)
    return float("nan") if not a.size else 0.0 if (a <= 0).any() else float(a.size / np.sum(1.0 / a))


def geometric_mean_accuracy(per_class: np.ndarray) -> float:
    """``exp(mean_c log a_c)`` over the classes with test samples; 0 when any of them is at 0."""
    a = _finite(per_class)
    return float("nan") if not a.size else 0.0 if (a <= 0).any() else float(np.exp(np.mean(np.log(a))))


def head_tail_gap(per_class: np.ndarray, groups: np.ndarray) -> float:
    """``mean_{c ∈ head} a_c − mean_{c ∈ tail} a_c`` over the classes with test samples."""
    means = group_means(np.asarray(per_class, dtype=float), groups)
    return means["head"] - means["tail"]


def per_class_accuracy_std(per_class: np.ndarray) -> float:
    """Population std ``sqrt(mean_c (a_c − ā)²)`` of per-class accuracy (``ddof = 0``, as ``acc_std``)."""
    a = _finite(per_class)
    return float(a.std()) if a.size else float("nan")


def per_class_spread(per_class: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """``mean``, ``worst_class``, ``harmonic_mean``, ``geometric_mean``, ``head_tail_gap``, ``per_class_std``."""
    a = _finite(per_class)
    return {"mean": float(a.mean()) if a.size else float("nan"), "worst_class": worst_class_accuracy(per_class),
            "harmonic_mean": harmonic_mean_accuracy(per_class), "geometric_mean": geometric_mean_accuracy(per_class),
            "head_tail_gap": head_tail_gap(per_class, groups), "per_class_std": per_class_accuracy_std(per_class)}


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Reliability-diagram data over equal-width bins ``B_b = (b/B, (b+1)/B]`` (confidence 0 in the first).

    Returns
    -------
    dict
        ``edges`` ``[B+1]``, ``count`` ``[B]``, and per bin the mean ``confidence`` and the
        ``accuracy`` (share correct), as fractions, ``NaN`` for an empty bin.
    """
    conf, hit = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": edges, "count": count,
                "confidence": np.where(count > 0, np.bincount(idx, conf, n_bins) / count, np.nan),
                "accuracy": np.where(count > 0, np.bincount(idx, hit, n_bins) / count, np.nan)}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """``ECE = 100 · Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|`` over :func:`reliability_bins`, in points."""
    bins = reliability_bins(confidence, correct, n_bins)
    n = bins["count"].sum()
    gap = np.abs(np.nan_to_num(bins["accuracy"]) - np.nan_to_num(bins["confidence"]))
    return float(100.0 * np.sum(bins["count"] / n * gap)) if n else float("nan")


def calibration_by_group(confidence: np.ndarray, correct: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                         n_bins: int = 15) -> dict[str, float]:
    """ECE of all samples (``overall``) and of the samples whose true class is head / medium / tail (points)."""
    conf, hit = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    sample_group = np.asarray(groups)[np.asarray(labels, dtype=np.int64)]
    out = {"overall": expected_calibration_error(conf, hit, n_bins)}
    for g, name in enumerate(GROUP_NAMES):
        out[name] = expected_calibration_error(conf[sample_group == g], hit[sample_group == g], n_bins)
    return out


def local_head_mask(counts: np.ndarray, mass: float = 0.5) -> np.ndarray:
    """Class mask of a client's local head: its fewest most frequent classes holding ``mass`` of its images."""
    if not 0 < mass <= 1:
        raise ValueError(f"mass must lie in (0, 1], got {mass!r}")
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    cum = np.cumsum(counts[order]) / max(counts.sum(), 1)
    mask = np.zeros(counts.size, dtype=bool)
    mask[order[: int(np.searchsorted(cum, mass - 1e-12)) + 1]] = True
    return mask


def bias_transfer_grid(client_counts: np.ndarray, groups: np.ndarray, y_true: Sequence[np.ndarray],
                       y_pred: Sequence[np.ndarray], mass: float = 0.5) -> dict[str, np.ndarray]:
    """Client-split accuracy split four ways: global head / tail class × the client's local head / tail.

    Rows :data:`GRID_ROWS`: the sample's class is in the global head (group 0) or tail (group 2);
    medium classes are left out. Columns :data:`GRID_COLUMNS`: the class is in the client's local
    head (:func:`local_head_mask` of its training counts) or not (unseen classes included). A cell
    pools the clients, ``A[g, l] = 100 · Σ_k #{i ∈ S_k(g, l): ŷ_i = y_i} / Σ_k |S_k(g, l)|``.

    Returns
    -------
    dict
        ``accuracy`` (pooled ``[2, 2]``, ``NaN`` for an empty cell), ``client_mean`` (mean over
        the clients with samples in the cell), ``samples`` and ``clients`` (counts per cell).
    """
    groups = np.asarray(groups)
    hits, samples = np.zeros((2, 2)), np.zeros((2, 2), dtype=np.int64)
    per_client = []
    for counts, yt, yp in zip(np.asarray(client_counts), y_true, y_pred, strict=True):
        yt, yp = np.asarray(yt, dtype=np.int64), np.asarray(yp, dtype=np.int64)
        cell = np.full(yt.size, -1)
        cell[groups[yt] == 0], cell[groups[yt] == 2] = 0, 2
        cell = np.where(cell >= 0, cell + (~local_head_mask(counts, mass)[yt]), -1)  # 0, 1, 2, 3 or -1
        n = np.bincount(cell[cell >= 0], minlength=4)
        h = np.bincount(cell[cell >= 0], (yt == yp)[cell >= 0], minlength=4)
        samples += n.reshape(2, 2)
        hits += h.reshape(2, 2)
        per_client.append(np.where(n > 0, 100.0 * h / np.maximum(n, 1), np.nan).reshape(2, 2))
    stack = np.stack(per_client)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty cell
        return {"accuracy": np.where(samples > 0, 100.0 * hits / np.maximum(samples, 1), np.nan),
                "client_mean": np.nanmean(stack, axis=0), "samples": samples,
                "clients": np.isfinite(stack).sum(axis=0)}


def purification_per_round(history: Sequence[dict]) -> dict[str, np.ndarray]:
    """The recorded purification telemetry per round, and its run totals.

    Per round: ``projected_share = projected / decisions`` (share of purification decisions that
    projected the task gradient) and ``mean_cos = Σ cos / #cos`` (task vs alignment gradient),
    ``NaN`` where nothing was decided; totals ``total_projected_share = Σ_t projected_t / Σ_t
    decisions_t`` and ``total_mean_cos = Σ_t cos_sum_t / Σ_t cos_count_t`` (0-d arrays).
    """
    tele = [h.get("telemetry") or {} for h in history]

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if t.get(key) is None else float(t[key]) for t in tele], dtype=float)

    sums = {k: np.nansum(col(k)) for k in ("decisions", "projected", "cos_sum", "cos_count")}
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"round": np.array([int(h["round"]) for h in history], dtype=np.int64),
                "projected_share": col("projected_share"), "mean_cos": col("mean_cos"),
                "decisions": np.nan_to_num(col("decisions")), "task_loss": col("task_loss"),
                "align_loss": col("align_loss"),
                "total_projected_share": np.array(sums["projected"] / sums["decisions"] if sums["decisions"]
                                                  else np.nan),
                "total_mean_cos": np.array(sums["cos_sum"] / sums["cos_count"] if sums["cos_count"] else np.nan)}
