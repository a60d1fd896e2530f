import numpy as np
import pytest

from fedpurel_lite.data.longtail import (
    assign_groups,
    class_counts,
    counts_by_class,
    group_sizes,
    longtail_subsample,
    ratio_from_fraction,
)


@pytest.mark.parametrize(
    ("ratio", "total", "tail", "ref_groups", "oltr_groups"),
    [
        (100, 10_847, 5, (35, 34, 31), (35, 35, 30)),
        (50, 12_608, 10, (41, 40, 19), (41, 41, 18)),
    ],
)
def test_cifar100_lt_sizes_and_groups(ratio, total, tail, ref_groups, oltr_groups):
    counts = class_counts(500, 100, ratio)
    assert counts.sum() == total
    assert counts[0] == 500 and counts[-1] == tail
    assert np.all(np.diff(counts) <= 0)
    assert tuple(group_sizes(assign_groups(counts)).values()) == ref_groups
    assert tuple(group_sizes(assign_groups(counts, "oltr")).values()) == oltr_groups


def test_fraction_form_is_converted_explicitly():
    assert ratio_from_fraction(0.01) == pytest.approx(100.0)
    np.testing.assert_array_equal(class_counts(500, 100, ratio_from_fraction(0.01)), class_counts(500, 100, 100))
    with pytest.raises(ValueError, match="ratio_from_fraction"):
        class_counts(500, 100, 0.01)
    with pytest.raises(ValueError):
        ratio_from_fraction(0.0)


def test_step_profile_and_ratio_one():
    step = class_counts(500, 10, 10, profile="step")
    np.testing.assert_array_equal(step, [500] * 5 + [50] * 5)
    assert np.all(class_counts(500, 10, 1) == 500)
    with pytest.raises(ValueError, match="profile"):
        class_counts(500, 10, 10, profile="linear")


def test_subsample_follows_class_order_and_seed():
    labels = np.repeat(np.arange(10), 50)
    order = np.array([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])
    idx = longtail_subsample(labels, 10, class_order=order, seed=1)
    got = np.bincount(labels[idx], minlength=10)
    np.testing.assert_array_equal(got, counts_by_class(class_counts(50, 10, 10), order))
    assert got[3] == 50 and got[7] == 5
    assert len(np.unique(idx)) == len(idx)
    np.testing.assert_array_equal(idx, longtail_subsample(labels, 10, class_order=order, seed=1))
    assert not np.array_equal(idx, longtail_subsample(labels, 10, class_order=order, seed=2))


def test_subsample_rejects_short_pool_and_bad_order():
    labels = np.concatenate([np.repeat(np.arange(4), 50), [4] * 3])
    with pytest.raises(ValueError, match="class 4"):
        longtail_subsample(labels, 2)
    with pytest.raises(ValueError, match="permutation"):
        counts_by_class(np.ones(3, dtype=int), np.array([0, 0, 1]))
