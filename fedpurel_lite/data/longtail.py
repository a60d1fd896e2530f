"""Long-tailed class profiles, long-tailed subsampling and head/medium/tail groups.

Convention
----------
Every function here takes the imbalance as an **imbalance ratio** ``IF >= 1`` ("ratio 100":
the head class has 100 times as many training images as the tail class). Code and papers that
write it as a fraction ``0 < f <= 1`` ("imb_factor 0.01") convert explicitly with
:func:`ratio_from_fraction`.

Class ranks run from head (rank 0) to tail (rank ``C - 1``). Which class id sits at which rank is
a separate parameter, the *class order*: label-id order for CIFAR (as in the literature) or a
fixed seeded permutation for worlds whose ids carry structure (the shapes world groups ids by
colour).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Profile = Literal["exp", "step"]
GroupConvention = Literal["reference", "oltr"]

GROUP_NAMES: tuple[str, str, str] = ("head", "medium", "tail")
HEAD, MEDIUM, TAIL = 0, 1, 2


def ratio_from_fraction(fraction: float) -> float:
    """Convert an imbalance written as a fraction ``0 < f <= 1`` into a ratio ``1 / f``.

    Parameters
    ----------
    fraction : float
        Tail-to-head size ratio, e.g. ``0.01``.

    Returns
    -------
    float
        The imbalance ratio ``IF = 1 / fraction`` (``100.0`` for ``0.01``).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"imbalance fraction must lie in (0, 1], got {fraction!r}")
    return 1.0 / fraction


def check_ratio(imbalance_ratio: float) -> float:
    """Validate an imbalance ratio and return it as a float.

    Raises
    ------
    ValueError
        If ``imbalance_ratio < 1`` (a fraction was probably passed: use
        :func:`ratio_from_fraction`).
    """
    value = float(imbalance_ratio)
    if not np.isfinite(value) or value < 1.0:
        raise ValueError(
            f"imbalance_ratio must be >= 1 (e.g. 100 for 'IF=100'), got {imbalance_ratio!r}; "
            "for the fraction form (0.01) use longtail.ratio_from_fraction"
        )
    return value


def class_counts(
    n_max: int, num_classes: int, imbalance_ratio: float, profile: Profile = "exp"
) -> np.ndarray:
    """Per-rank training counts of a long-tailed profile.

    ``exp``: ``n_r = int(n_max * IF ** (-r / (C - 1)))`` (Cao et al. / the reference code).
    ``step``: the first half of the ranks keep ``n_max``, the rest get ``int(n_max / IF)``.

    Parameters
    ----------
    n_max : int
        Images of the head class (500 for CIFAR-100).
    num_classes : int
        Number of classes ``C``.
    imbalance_ratio : float
        ``IF >= 1``.
    profile : {"exp", "step"}
        Shape of the profile.

    Returns
    -------
    numpy.ndarray
        ``int64`` array of length ``C``, in rank order (head first).
    """
    ratio = check_ratio(imbalance_ratio)
    if num_classes < 1 or n_max < 1:
        raise ValueError(f"need num_classes >= 1 and n_max >= 1, got {num_classes}, {n_max}")
    ranks = np.arange(num_classes, dtype=np.float64)
    if profile == "exp":
        denom = max(num_classes - 1, 1)
        counts = [int(n_max * (1.0 / ratio) ** (r / denom)) for r in ranks]
    elif profile == "step":
        counts = [n_max if r < num_classes // 2 else int(n_max / ratio) for r in ranks]
    else:
        raise ValueError(f"profile must be 'exp' or 'step', got {profile!r}")
    return np.maximum(np.asarray(counts, dtype=np.int64), 1)


def counts_by_class(rank_counts: np.ndarray, class_order: np.ndarray) -> np.ndarray:
    """Map per-rank counts onto class ids: ``out[class_order[r]] = rank_counts[r]``."""
    order = np.asarray(class_order)
    if sorted(order.tolist()) != list(range(len(rank_counts))):
        raise ValueError("class_order must be a permutation of 0..C-1 matching the profile length")
    out = np.empty(len(rank_counts), dtype=np.int64)
    out[order] = rank_counts
    return out


def longtail_subsample(
    labels: np.ndarray,
    imbalance_ratio: float,
    class_order: np.ndarray | None = None,
    profile: Profile = "exp",
    seed: int = 1,
) -> np.ndarray:
    """Indices of a long-tailed subset of a balanced labelled pool.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels of the pool, classes ``0..C-1``.
    imbalance_ratio : float
        ``IF >= 1``.
    class_order : numpy.ndarray, optional
        Class ids from head to tail; label-id order when omitted.
    profile : {"exp", "step"}
        Profile shape (see :func:`class_counts`).
    seed : int
        Seed of the per-class random draw.

    Returns
    -------
    numpy.ndarray
        Sorted ``int64`` indices into ``labels``.
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1
    pool = np.bincount(labels, minlength=num_classes)
    order = np.arange(num_classes) if class_order is None else np.asarray(class_order)
    targets = counts_by_class(class_counts(int(pool.max()), num_classes, imbalance_ratio, profile), order)
    short = np.flatnonzero(targets > pool)
    if short.size:
        c = int(short[0])
        raise ValueError(f"class {c} has {pool[c]} images in the pool but the profile asks for {targets[c]}")
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=targets[c], replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def assign_groups(
    train_counts: np.ndarray,
    convention: GroupConvention = "reference",
    head_above: int = 100,
    tail_at_most: int = 20,
) -> np.ndarray:
    """Head / medium / tail group of every class from its training count.

    ``reference`` (default, the FedPuReL code): head ``n > 100``, medium ``21..100``,
    tail ``n <= 20``. ``oltr`` (Liu et al. 2019): tail ``n < 20`` instead.

    Parameters
    ----------
    train_counts : numpy.ndarray
        Training images per class id.
    convention : {"reference", "oltr"}
        Where the tail boundary sits.
    head_above, tail_at_most : int
        Thresholds of the ``reference`` convention (``oltr`` uses ``tail_at_most - 1``).

    Returns
    -------
    numpy.ndarray
        ``int64`` group per class: 0 head, 1 medium, 2 tail (see :data:`GROUP_NAMES`).
    """
    counts = np.asarray(train_counts)
    if convention == "reference":
        tail_max = tail_at_most
    elif convention == "oltr":
        tail_max = tail_at_most - 1
    else:
        raise ValueError(f"convention must be 'reference' or 'oltr', got {convention!r}")
    groups = np.full(counts.shape, MEDIUM, dtype=np.int64)
    groups[counts > head_above] = HEAD
    groups[counts <= tail_max] = TAIL
    return groups


def group_sizes(groups: np.ndarray) -> dict[str, int]:
    """Number of classes in each group, keyed by group name."""
    sizes = np.bincount(np.asarray(groups), minlength=3)
    return {name: int(n) for name, n in zip(GROUP_NAMES, sizes, strict=True)}
