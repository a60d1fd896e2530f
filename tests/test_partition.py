import json
import re

import numpy as np
import pytest

from fedpurel_lite.config import RunConfig
from fedpurel_lite.data.longtail import class_counts
from fedpurel_lite.data.partition import (
    build_federation,
    check_split,
    count_frame,
    count_matrix,
    dirichlet_shares,
    label_entropy,
    split_by_shares,
)
from fedpurel_lite.errors import ConfigError
from fedpurel_lite.worlds import describe_world

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


# ----------------------------------------------------------------------------- the split replayed before loading
SHAPES_ORDER = describe_world("shapes").class_order
POOL = np.full(C, 500, dtype=np.int64)


def _outcome(call):
    """``None`` when ``call()`` succeeds, else its ConfigError's text."""
    try:
        call()
    except ConfigError as exc:
        return str(exc)
    return None


# (overrides, feasible): around the edge the feasibility is not monotone in K (320 yes, 322 no, 324 yes at alpha 0.1)
SPLIT_SETTINGS = [
    ({}, True),
    ({"num_clients": 320, "dirichlet_alpha": 0.1}, True),
    ({"num_clients": 322, "dirichlet_alpha": 0.1}, False),
    ({"num_clients": 324, "dirichlet_alpha": 0.1}, True),
    ({"num_clients": 1084, "participation": 0.01}, False),
    ({"num_clients": 500, "dirichlet_alpha": 0.01}, False),
    ({"num_clients": 80, "dirichlet_alpha": 0.05, "min_client_size": 40, "seed": 7}, True),
    ({"num_clients": 82, "dirichlet_alpha": 0.05, "min_client_size": 40, "seed": 7}, False),
    ({"num_clients": 770, "profile": "step", "imbalance_ratio": 10, "dirichlet_alpha": 0.1, "seed": 3}, True),
    ({"num_clients": 780, "profile": "step", "imbalance_ratio": 10, "dirichlet_alpha": 0.1, "seed": 3}, False),
]


@pytest.mark.parametrize(("overrides", "feasible"), SPLIT_SETTINGS, ids=[str(s[0]) for s in SPLIT_SETTINGS])
def test_preflight_replay_agrees_with_the_real_split(overrides, feasible):
    config = RunConfig().with_overrides(overrides)
    replayed = _outcome(lambda: check_split(POOL, SHAPES_ORDER, config))
    real = _outcome(lambda: build_federation(TRAIN, TEST, SHAPES_ORDER, config))
    assert replayed == real  # the same verdict and the same one-line message
    assert (replayed is None) == feasible, replayed
    if replayed is not None:
        assert "\n" not in replayed and replayed.startswith(f"federation.num_clients={config.federation.num_clients}:")


def test_replay_with_a_given_long_tail_and_label_order():
    counts = np.array([300, 120, 40, 9, 5, 3])  # the pool is the long-tailed set; a trailing class with no sample
    train = np.repeat(np.arange(counts.size), counts)
    test = np.repeat(np.arange(counts.size), 4)
    verdicts = []
    for k, alpha in ((10, 0.3), (40, 0.3), (45, 1.0), (48, 1.0)):
        config = RunConfig().with_overrides({"profile": "given", "num_clients": k, "dirichlet_alpha": alpha,
                                             "min_client_size": 9})
        real = _outcome(lambda c=config: build_federation(train, test, None, c))
        assert _outcome(lambda c=config: check_split(np.append(counts, 0), None, c)) == real
        verdicts.append(real is None)
    assert verdicts == [True, False, False, False]


def test_the_advice_names_only_knobs_that_help():
    replay = lambda **kw: _outcome(lambda: check_split(POOL, SHAPES_ORDER, RunConfig().with_overrides(kw)))  # noqa: E731
    # too many clients for any alpha: the most even split still leaves a client short
    many = replay(num_clients=1084)
    assert "raise federation.dirichlet_alpha" not in many and "does not help (not even to 1e+06)" in many
    assert many.endswith("lower federation.num_clients=1084")
    # a too skewed split: a larger alpha is offered, with a value the replay accepts
    skewed = replay(num_clients=500, dirichlet_alpha=0.01)
    offered = re.search(r"raise federation.dirichlet_alpha=0.01 to (\S+),", skewed)
    assert offered, skewed
    assert replay(num_clients=500, dirichlet_alpha=float(offered.group(1))) is None
    assert replay(num_clients=500, dirichlet_alpha=float(offered.group(1)) / 10) is not None
    # alpha already at its largest: never "raise"; the smaller minimum offered is met by a draw
    top = replay(num_clients=200, dirichlet_alpha=1e6, min_client_size=54)
    assert "raise" not in top and "federation.dirichlet_alpha=1e+06 is already at its largest" in top
    lowered = re.search(r"lower federation.min_client_size=54 to (\d+)", top)
    assert lowered, top
    assert replay(num_clients=200, dirichlet_alpha=1e6, min_client_size=int(lowered.group(1))) is None


def test_superclass_partition_is_replayed_for_the_client_count_only():
    config = RunConfig().with_overrides({"partition": "superclass", "num_clients": 1084})
    assert check_split(POOL, SHAPES_ORDER, config) is None
    with pytest.raises(ConfigError, match="federation.num_clients=2000: allowed <= 1084"):
        check_split(POOL, SHAPES_ORDER, config.with_overrides({"num_clients": 2000}))


def test_a_profile_larger_than_the_pool_is_refused_by_the_replay():
    small = POOL.copy()
    small[SHAPES_ORDER[0]] = 499  # the head class cannot give the profile's 500 ... it is the pool's maximum
    small[SHAPES_ORDER[1]] = 10  # ... but rank 1 asks for more than 10
    with pytest.raises(ConfigError, match=r"longtail.imbalance_ratio=100: class \d+ has 10 images"):
        check_split(small, SHAPES_ORDER, RunConfig())


#: sha256 (first 16 hex digits) of the default federation's client index lists, computed before the replay existed
EXPECTED_DIGEST = "5a7d59aa27c78796"


def test_the_real_split_is_unchanged():
    """Digests of the default federation's index lists, measured before the replay was added."""
    import hashlib

    fed = build_federation(TRAIN, TEST, SHAPES_ORDER, RunConfig())
    digest = hashlib.sha256()
    for part in fed.client_train + fed.client_test:
        digest.update(np.asarray(part, dtype=np.int64).tobytes())
    assert fed.client_sizes()[:5].tolist() == [552, 443, 507, 727, 467]
    assert digest.hexdigest()[:16] == EXPECTED_DIGEST


# ----------------------------------------------------------------------------- the class order known before loading
def test_describe_world_gives_the_loaded_shapes_class_order(monkeypatch):
    from fedpurel_lite.worlds import load_world, shapes

    def pools(*args, **kwargs):  # no rendering: the class order does not depend on the images
        labels = np.arange(C, dtype=np.int64)
        return np.zeros((C, 1, 1, 3), np.uint8), labels, np.zeros((C, 1, 1, 3), np.uint8), labels

    monkeypatch.setattr(shapes, "_pools", pools)
    orders = {}
    for variant in shapes.VARIANTS:
        orders[variant] = describe_world("shapes", variant=variant).class_order
        np.testing.assert_array_equal(orders[variant], load_world("shapes", variant=variant).class_order)
    assert len({o.tobytes() for o in orders.values()}) == len(orders) > 1
    np.testing.assert_array_equal(describe_world("shapes").class_order, orders[shapes.DEFAULT_VARIANT])


@pytest.mark.parametrize("layout", ["split.json", "oltr"])
def test_describe_world_gives_the_loaded_folder_class_order(layout, tmp_path):
    from fedpurel_lite.worlds import load_world

    counts = {"ant": 2, "bee": 5, "cat": 2, "dog": 7, "eel": 1}  # ties: label order
    train, lines = [], []
    for label, (cls, n) in enumerate(counts.items()):
        (tmp_path / cls).mkdir()
        for i in range(n + 1):
            (tmp_path / cls / f"{i}.png").write_bytes(b"x")
        train += [f"{cls}/{i}.png" for i in range(n)]
        lines += [(f"{cls}/{i}.png {label}", i < n) for i in range(n + 1)]
    if layout == "split.json":
        tests = [f"{cls}/{n}.png" for cls, n in counts.items()]
        (tmp_path / "split.json").write_text(json.dumps({"train": train, "test": tests}))
        kwargs = {}
    else:
        (tmp_path / "train.txt").write_text("\n".join(t for t, is_train in lines if is_train))
        (tmp_path / "test.txt").write_text("\n".join(t for t, is_train in lines if not is_train))
        kwargs = {"split_file": "train.txt"}
    info = describe_world("folder", str(tmp_path), **kwargs)
    world = load_world("folder", root=str(tmp_path), **kwargs)
    assert info.class_order.tolist() == world.class_order.tolist() == [3, 1, 0, 2, 4]
