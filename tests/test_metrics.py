import numpy as np
import pytest

from fedpurel_lite.engine.metrics import evaluate_predictions, local_head_lean, per_class_accuracy, prediction_kl

# 4 classes: 0 head, 1 head, 2 medium, 3 tail. Class 3 is never predicted right (0 %).
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
Y_PRED = np.array([0, 0, 0, 1, 1, 0, 2, 0, 0, 1])
GROUPS = np.array([0, 0, 1, 2])
COUNTS = np.array([400, 200, 50, 10])


def test_hand_computed_values():
    m = evaluate_predictions(Y_TRUE, Y_PRED, 4, GROUPS, COUNTS)
    np.testing.assert_allclose(m["per_class"], [75.0, 50.0, 50.0, 0.0])
    assert m["accuracy"] == pytest.approx(50.0)  # 5 of 10
    assert m["balanced_accuracy"] == pytest.approx(43.75)  # (75+50+50+0)/4
    # F1: class0 P=3/6 R=3/4 -> 0.6; class1 P=1/3 R=1/2 -> 0.4; class2 P=1 R=1/2 -> 2/3; class3 0
    assert m["macro_f1"] == pytest.approx((0.6 + 0.4 + 2 / 3 + 0.0) / 4 * 100)
    assert m["head"] == pytest.approx(62.5) and m["medium"] == pytest.approx(50.0)
    assert m["tail"] == pytest.approx(0.0)  # a class at 0 % still counts
    assert m["head_tail_gap"] == pytest.approx(62.5)
    assert m["acc_std"] == pytest.approx(np.std([75.0, 50.0, 50.0, 0.0]))
    # per-class accuracy is perfectly rank-correlated with the log training count here
    assert m["spearman_logcount"] == pytest.approx(np.corrcoef([4, 2.5, 2.5, 1], [4, 3, 2, 1])[0, 1])


def test_class_absent_from_client():
    # a client without class 2 and 3 in its test split: NaN accuracy, excluded from its group
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 3, 1, 1])
    pc = per_class_accuracy(y_true, y_pred, 4)
    assert pc[0] == 0.5 and pc[1] == 1.0 and np.isnan(pc[2]) and np.isnan(pc[3])
    m = evaluate_predictions(y_true, y_pred, 4, GROUPS)
    assert m["head"] == pytest.approx(75.0)
    assert np.isnan(m["medium"]) and np.isnan(m["tail"])
    assert m["balanced_accuracy"] == pytest.approx(75.0)
    # macro-F1 over present classes 0,1: class0 P=1 R=.5 -> 2/3; class1 P=1 R=1 -> 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2 * 100)


def test_prediction_kl():
    y = np.array([0, 1, 2, 3])
    assert prediction_kl(y, y, 4) == pytest.approx(0.0, abs=1e-5)
    collapsed = prediction_kl(y, np.zeros(4, dtype=int), 4)
    half = prediction_kl(y, np.array([0, 0, 2, 2]), 4)
    assert collapsed == pytest.approx(np.log(4), abs=1e-4)  # all mass on one of 4 classes
    assert half == pytest.approx(np.log(2), abs=1e-4)


def test_local_head_lean_by_hand():
    counts = np.array([[60, 30, 10, 0], [0, 0, 5, 95]])
    y_true = [np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3])]
    # client 0: local head at mass 0.5 = {0} (60 %); predictions all class 0 -> 100 % vs 25 % true
    # client 1: local head = {3}; predictions match the labels -> no lean
    lean = local_head_lean(counts, y_true, [np.zeros(4, int), np.array([0, 1, 2, 3])], mass=0.5)
    np.testing.assert_allclose(lean, [75.0, 0.0])
    # a larger mass widens the local head: {0, 1} -> predictions 100 % in head vs 50 % true
    np.testing.assert_allclose(local_head_lean(counts[:1], y_true[:1], [np.zeros(4, int)], mass=0.8), [50.0])
    # leaning away from the head is negative
    np.testing.assert_allclose(local_head_lean(counts[:1], y_true[:1], [np.full(4, 3)]), [-25.0])
    with pytest.raises(ValueError, match="mass"):
        local_head_lean(counts, y_true, y_true, mass=0)
