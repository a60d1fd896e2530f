import numpy as np
import pytest

from fedpurel_lite.config import RunConfig
from fedpurel_lite.longtail import class_counts
from fedpurel_lite.partition import (
    build_federation,
    count_frame,
    count_matrix,
    dirichlet_shares,
    label_entropy,
    split_by_shares,
)

C = 100
TRAIN = np.repeat(np.arange(C), 500)
TEST = np.repeat(np.arange(C), 100)


def _fed(**kw):
    return build_federation(TRAIN, TEST, None, RunConfig().with_overrides(kw))


def test_every_index_used_exactly_once_and_minimum_size():
    fed = _fed(seed=3, min_client_size=50)
    assert len(fed.train_idx) == 10_847
    allocated = np.concatenate(fed.client_train)
    assert len(allocated) == len(fed.train_idx)
    np.testing.assert_array_equal(np.sort(allocated), np.sort(fed.train_idx))
    assert fed.client_sizes().min() >= 50 and fed.num_clients == 20
    tested = np.concatenate(fed.client_test)
    np.testing.assert_array_equal(np.sort(tested), np.arange(len(TEST)))  # shares: the test pool once


def test_partition_is_seeded():
    a, b, c = _fed(seed=1), _fed(seed=1), _fed(seed=2)
    for x, y in zip(a.client_train, b.client_train, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(len(x) != len(y) or not np.array_equal(x, y) for x, y in zip(a.client_train, c.client_train,
                                                                            strict=True))


def test_lower_alpha_gives_more_skewed_clients():
    def mean_entropy(alpha):
        fed = _fed(dirichlet_alpha=alpha, min_client_size=5, seed=4)
        return label_entropy(count_matrix(fed.client_train, TRAIN, C)).mean()

    h01, h1, h10 = mean_entropy(0.1), mean_entropy(1.0), mean_entropy(10.0)
    # measured (seed 4): 2.40, 3.62, 3.95 nats (log 100 = 4.61)
    assert h01 < h1 - 0.8 and h1 < h10 - 0.1


def test_shares_test_split_follows_training_preference():
    fed = _fed(seed=5)
    train_tab = count_matrix(fed.client_train, TRAIN, C)
    test_tab = count_matrix(fed.client_test, TEST, C)
    assert test_tab.sum(axis=0).tolist() == [100] * C
    # a client's most frequent training class is over-represented in its test split
    for k in range(fed.num_clients):
        top = int(np.argmax(train_tab[k] / fed.train_counts))
        assert test_tab[k, top] > 100 / fed.num_clients


def test_matched_test_split_follows_training_distribution():
    fed = _fed(seed=6, test_split="matched")
    train_tab = count_matrix(fed.client_train, TRAIN, C).astype(float)
    test_tab = count_matrix(fed.client_test, TEST, C).astype(float)
    for k in range(fed.num_clients):
        p, q = train_tab[k] / train_tab[k].sum(), test_tab[k] / test_tab[k].sum()
        assert np.abs(p - q).sum() < 0.15
        assert len(np.unique(fed.client_test[k])) == len(fed.client_test[k])


def test_impossible_minimum_fails_with_clear_message():
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(ValueError, match=r"alpha=0.01.*K=8.*smallest client"):
        dirichlet_shares(labels, 8, 0.01, seed=0, min_size=5, max_retries=5)
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_shares(labels, 20, 1.0, seed=0, min_size=5)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_shares(labels, 2, 0.0, seed=0)


def test_split_by_shares_counts_and_frame():
    labels = np.repeat(np.arange(3), [10, 6, 2])
    shares = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    parts = split_by_shares(labels, shares, seed=0)
    np.testing.assert_array_equal(count_matrix(parts, labels, 3), [[5, 6, 0], [5, 0, 2]])
    frame = count_frame(parts, labels, ["a", "b", "c"])
    assert frame.loc["client 1", "c"] == 2 and frame.shape == (2, 3)


def test_train_counts_and_groups_of_federation():
    fed = _fed()
    np.testing.assert_array_equal(fed.train_counts, class_counts(500, C, 100))
    assert np.bincount(fed.groups).tolist() == [35, 34, 31]
