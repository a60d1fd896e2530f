"""The bias-transfer measures of ``metrics`` against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedpurel_lite.engine import metrics as m

NAN = float("nan")


def test_accuracy_change_keeps_missing_classes():
    out = m.accuracy_change(np.array([50.0, 80.0, NAN]), np.array([60.0, 70.0, 40.0]))
    assert np.allclose(out, [-10.0, 10.0, NAN], equal_nan=True)


def test_spearman_change_logcount_by_hand():
    # ranks of the change 3, 1, 2; of log count 2, 1, 3: d = 1, 0, -1, rho = 1 - 6*2 / (3*8) = 0.5
    assert m.spearman_change_logcount([3.0, 1.0, 2.0], [100, 10, 1000]) == pytest.approx(0.5)
    # a class without a change or without training images is left out
    assert m.spearman_change_logcount([3.0, 1.0, 2.0, NAN, 9.0], [100, 10, 1000, 5, 0]) == pytest.approx(0.5)
    assert m.spearman_change_logcount([1.0, 2.0, 3.0, 4.0], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert math.isnan(m.spearman_change_logcount([1.0, 2.0, NAN], [1, 2, 3]))


def test_spread_measures_by_hand():
    a = np.array([80.0, 20.0, NAN, 50.0])
    assert m.worst_class_accuracy(a) == 20.0
    assert m.harmonic_mean_accuracy([20.0, 40.0, NAN]) == pytest.approx(2 / (1 / 20 + 1 / 40))  # 26.67
    assert m.harmonic_mean_accuracy([20.0, 0.0]) == 0.0
    assert m.geometric_mean_accuracy([10.0, 40.0]) == pytest.approx(20.0)
    assert m.geometric_mean_accuracy([10.0, 0.0, NAN]) == 0.0
    assert m.per_class_accuracy_std([NAN, 10.0, 30.0]) == pytest.approx(10.0)
    groups = np.array([0, 0, 1, 2, 2])
    assert m.head_tail_gap([90.0, 70.0, 50.0, 20.0, 40.0], groups) == pytest.approx(80.0 - 30.0)
    assert all(math.isnan(f([NAN])) for f in (m.worst_class_accuracy, m.harmonic_mean_accuracy,
                                               m.geometric_mean_accuracy, m.per_class_accuracy_std))


def test_per_class_spread_collects_the_measures():
    out = m.per_class_spread(np.array([90.0, 70.0, 50.0, 20.0, 40.0]), np.array([0, 0, 1, 2, 2]))
    assert out == pytest.approx({"mean": 54.0, "worst_class": 20.0, "harmonic_mean": 5 / (1 / 90 + 1 / 70 + 1 / 50
                                                                                        + 1 / 20 + 1 / 40),
                                 "geometric_mean": (90 * 70 * 50 * 20 * 40) ** 0.2, "head_tail_gap": 50.0,
                                 "per_class_std": float(np.std([90, 70, 50, 20, 40]))})


def test_spread_std_matches_evaluate_predictions_acc_std():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(6), 5)
    pred = np.where(rng.random(y.size) < 0.6, y, rng.integers(0, 6, y.size))
    ev = m.evaluate_predictions(y, pred, 6, np.array([0, 0, 1, 1, 2, 2]))
    assert m.per_class_accuracy_std(ev["per_class"]) == pytest.approx(ev["acc_std"])
    assert m.head_tail_gap(ev["per_class"], np.array([0, 0, 1, 1, 2, 2])) == pytest.approx(ev["head_tail_gap"])


def test_reliability_bins_by_hand():
    conf = np.array([0.1, 0.3, 0.35, 0.9, 0.95, 0.0, 1.0])
    correct = np.array([1, 0, 1, 1, 1, 0, 1], dtype=bool)
    b = m.reliability_bins(conf, correct, n_bins=4)
    assert np.allclose(b["edges"], [0, 0.25, 0.5, 0.75, 1.0])
    assert b["count"].tolist() == [2, 2, 0, 3]
    assert np.allclose(b["confidence"], [0.05, 0.325, NAN, 0.95], equal_nan=True)
    assert np.allclose(b["accuracy"], [0.5, 0.5, NAN, 1.0], equal_nan=True)
    # right-closed bins: a confidence on an inner edge belongs to the bin below
    assert m.reliability_bins([0.25, 0.5], [True, True], n_bins=4)["count"].tolist() == [1, 1, 0, 0]


def test_expected_calibration_error_by_hand():
    conf = np.array([0.1, 0.3, 0.35, 0.9, 0.95, 0.0, 1.0])
    correct = np.array([1, 0, 1, 1, 1, 0, 1], dtype=bool)
    # (2/7)|0.5 - 0.05| + (2/7)|0.5 - 0.325| + (3/7)|1 - 0.95| = 1.4 / 7 = 0.2
    assert m.expected_calibration_error(conf, correct, n_bins=4) == pytest.approx(20.0)
    assert m.expected_calibration_error([0.75] * 4, [1, 1, 1, 0]) == pytest.approx(0.0)
    assert math.isnan(m.expected_calibration_error([], []))


def test_calibration_by_group_uses_the_true_class():
    groups = np.array([0, 2, 1])  # class 0 head, class 1 tail, class 2 medium (no samples)
    labels = np.array([0, 0, 1])
    conf = np.array([0.9, 0.9, 0.7])
    correct = np.array([True, False, True])
    out = m.calibration_by_group(conf, correct, labels, groups)
    assert out["head"] == pytest.approx(40.0)  # |0.5 - 0.9|
    assert out["tail"] == pytest.approx(30.0)  # |1 - 0.7|
    assert math.isnan(out["medium"])
    assert out["overall"] == pytest.approx(100 * (2 / 3 * 0.4 + 1 / 3 * 0.3))


def test_local_head_mask_by_hand_and_as_local_head_lean():
    assert m.local_head_mask(np.array([5, 30, 10, 50, 5])).tolist() == [False, False, False, True, False]
    assert m.local_head_mask(np.array([5, 30, 10, 50, 5]), mass=0.6).tolist() == [False, True, False, True, False]
    assert m.local_head_mask(np.array([2, 2, 1])).tolist() == [True, True, False]  # 0.4 < 0.5: two classes
    with pytest.raises(ValueError, match="mass"):
        m.local_head_mask(np.array([1, 2]), mass=0.0)
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 30, size=(4, 9))
    truths = [rng.integers(0, 9, 20) for _ in range(4)]
    preds = [rng.integers(0, 9, 20) for _ in range(4)]
    lean = m.local_head_lean(counts, truths, preds)
    for k in range(4):
        head = m.local_head_mask(counts[k])
        assert lean[k] == pytest.approx(100 * (head[preds[k]].mean() - head[truths[k]].mean()))


def test_bias_transfer_grid_by_hand():
    groups = np.array([0, 0, 2, 2, 1])  # classes 0, 1 global head; 2, 3 global tail; 4 medium (left out)
    counts = np.array([[10, 0, 8, 0, 0],   # client A: local head {0}
                       [0, 1, 0, 9, 0]])   # client B: local head {3}
    y_true = [np.array([0, 0, 1, 2, 3, 4]), np.array([1, 3, 3, 2])]
    y_pred = [np.array([0, 1, 1, 0, 3, 4]), np.array([1, 3, 0, 2])]
    g = m.bias_transfer_grid(counts, groups, y_true, y_pred)
    # head G/head L: A 1 of 2; head G/tail L: A 1/1, B 1/1; tail G/head L: B 1/2; tail G/tail L: A 1/2, B 1/1
    assert g["samples"].tolist() == [[2, 2], [2, 3]]
    assert np.allclose(g["accuracy"], [[50.0, 100.0], [50.0, 200 / 3]])
    assert np.allclose(g["client_mean"], [[50.0, 100.0], [50.0, 75.0]])
    assert g["clients"].tolist() == [[1, 2], [1, 2]]
    assert m.GRID_ROWS == ("global head", "global tail") and m.GRID_COLUMNS == ("local head", "local tail")


def test_bias_transfer_grid_empty_cell_is_nan():
    g = m.bias_transfer_grid(np.array([[5, 1]]), np.array([0, 2]), [np.array([0, 0])], [np.array([0, 1])])
    assert np.allclose(g["accuracy"], [[50.0, NAN], [NAN, NAN]], equal_nan=True)
    assert g["samples"].tolist() == [[2, 0], [0, 0]] and g["clients"].tolist() == [[1, 0], [0, 0]]


def test_purification_per_round_by_hand():
    history = [
        {"round": 0, "telemetry": {"decisions": 4, "projected": 1, "cos_sum": -2.0, "cos_count": 4,
                                   "projected_share": 0.25, "mean_cos": -0.5, "task_loss": 1.0, "align_loss": 0.1}},
        {"round": 1, "telemetry": {"decisions": 0, "projected": 0, "cos_sum": 0.0, "cos_count": 0,
                                   "projected_share": None, "mean_cos": None, "task_loss": 0.9, "align_loss": 0.0}},
        {"round": 2, "telemetry": {"decisions": 6, "projected": 6, "cos_sum": -1.0, "cos_count": 2,
                                   "projected_share": 1.0, "mean_cos": -0.5, "task_loss": 0.8, "align_loss": 0.2}},
    ]
    out = m.purification_per_round(history)
    assert out["round"].tolist() == [0, 1, 2]
    assert np.allclose(out["projected_share"], [0.25, NAN, 1.0], equal_nan=True)
    assert np.allclose(out["mean_cos"], [-0.5, NAN, -0.5], equal_nan=True)
    assert out["decisions"].tolist() == [4, 0, 6]
    assert float(out["total_projected_share"]) == pytest.approx(7 / 10)
    assert float(out["total_mean_cos"]) == pytest.approx(-3 / 6)
    none = m.purification_per_round([{"round": 0, "telemetry": {"decisions": 0, "cos_count": 0}}])
    assert math.isnan(float(none["total_projected_share"])) and math.isnan(float(none["total_mean_cos"]))
