"""Dirichlet label partitions over clients, client test splits and the `Federation` they form.

Protocol (the reference loop): the long-tailed training indices of every class are split over the
K clients with proportions drawn from ``Dirichlet(alpha)``; a draw whose smallest client is below
``min_size`` is redrawn (bounded retries, then a clear error). Client test splits come from the
balanced test pool, split per class with the *same* shares (default, so each client's test
labels follow its own preference while tail classes stay represented), or sampled to match each
client's training label distribution (``"matched"``).

``federation.partition = "superclass"`` is the reference code's CIFAR split instead: the
long-tailed training set and the balanced test pool are pooled; every client draws
``pool // K`` samples one at a time, a coarse label from its own ``Dirichlet(superclass_beta)``
weights, then a fine class from its own ``Dirichlet(10)`` weights inside that coarse label, then a
random remaining sample of that class (an exhausted class or coarse label leaves the draw and the
weights are renormalised); the client order is shuffled and each client's pooled draw is split
back into its training and test part. A client's test split therefore follows its own skew and is
enriched in tail classes (a class's draws are training samples in proportion ``n_c / (n_c + test_c)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..config import RunConfig
from ..errors import ConfigError
from .longtail import assign_groups, class_counts, counts_by_class, longtail_subsample

#: Dirichlet draws a run tries before giving up on ``federation.min_client_size``
SPLIT_RETRIES = 100

#: ``federation.dirichlet_alpha`` at or above which the shares are as even as they get (the config's upper bound)
ALPHA_EVEN = 1e6


def dirichlet_shares(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10,
    max_retries: int = SPLIT_RETRIES,
) -> np.ndarray:
    """Per-class client shares ``[C, K]`` whose induced split gives every client ``>= min_size``.

    Parameters
    ----------
    labels : numpy.ndarray
        Training labels to split (classes ``0..C-1``).
    num_clients : int
        Number of clients ``K``.
    alpha : float
        Dirichlet concentration (> 0); small alpha = skewed clients.
    seed : int
        Seed of the draws.
    min_size : int
        Minimum number of training samples per client.
    max_retries : int
        Draws tried before giving up.

    Returns
    -------
    numpy.ndarray
        ``float64`` matrix, row ``c`` = shares of class ``c`` over the clients (sums to 1).

    Raises
    ------
    ValueError
        If ``alpha <= 0``, there are fewer samples than ``num_clients * min_size``, or no draw
        within ``max_retries`` met the minimum size.
    """
    labels = np.asarray(labels)
    if not alpha > 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha!r}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if labels.size < num_clients * min_size:
        raise ValueError(
            f"{labels.size} training samples cannot give {num_clients} clients at least {min_size} each"
        )
    class_sizes = np.bincount(labels)
    shares, best = _draw_shares(class_sizes, num_clients, alpha, seed, min_size, max_retries)
    if shares is not None:
        return shares
    advice = _split_advice(class_sizes, num_clients, alpha, seed, min_size, max_retries, best,
                           ("alpha", "num_clients", "min_client_size"))
    raise ValueError(f"no Dirichlet(alpha={alpha}) split over K={num_clients} clients gave every client >= "
                     f"{min_size} samples in {max_retries} draws (the best draw's smallest client: {best}); {advice}")


def _draw_shares(class_sizes: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int,
                 max_retries: int) -> tuple[np.ndarray | None, int]:
    """The draws of :func:`dirichlet_shares` from the class sizes alone.

    Returns the first shares whose smallest client has ``min_size`` samples (``None`` when no draw
    had) and the largest smallest client over the draws made.
    """
    rng = np.random.default_rng(seed)
    best = 0
    for _ in range(max_retries):
        shares = rng.dirichlet(np.full(num_clients, alpha), size=class_sizes.size)
        smallest = int(_split_counts(class_sizes, shares).sum(axis=0).min())
        best = max(best, smallest)
        if smallest >= min_size:
            return shares, best
    return None, best


def _split_advice(class_sizes: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int,
                  max_retries: int, best: int, keys: tuple[str, str, str]) -> str:
    """The knobs that make a failed Dirichlet split feasible, each checked by replaying the draws.

    A larger alpha is offered only when the replay at :data:`ALPHA_EVEN` finds a split (then the
    smallest power-of-ten multiple of alpha that does is named); a smaller ``min_size`` only when the
    best draw had a non-empty smallest client (``min_size <= best`` is then met by that draw).
    """
    alpha_key, clients_key, size_key = keys
    fixes, why = [], ""
    if alpha >= ALPHA_EVEN:
        why = f"{alpha_key}={alpha:g} is already at its largest; "
    elif _draw_shares(class_sizes, num_clients, ALPHA_EVEN, seed, min_size, max_retries)[0] is None:
        why = f"raising {alpha_key} does not help (not even to {ALPHA_EVEN:g}); "
    else:
        ladder = [alpha * 10.0 ** k for k in range(1, 13) if alpha * 10.0 ** k < ALPHA_EVEN]
        works = next((a for a in ladder
                      if _draw_shares(class_sizes, num_clients, a, seed, min_size, max_retries)[0] is not None),
                     ALPHA_EVEN)
        fixes.append(f"raise {alpha_key}={alpha:g} to {works:g}")
    if best >= 1:
        fixes.append(f"lower {size_key}={min_size} to {best}")
    fixes.append(f"lower {clients_key}={num_clients}")
    return why + ", or ".join(fixes)


def _split_counts(class_sizes: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Integer per-class, per-client counts ``[C, K]`` that sum to ``class_sizes`` exactly."""
    cuts = np.rint(np.cumsum(shares, axis=1) * class_sizes[:, None]).astype(np.int64)
    cuts[:, -1] = class_sizes
    return np.diff(cuts, axis=1, prepend=0)


def split_by_shares(labels: np.ndarray, shares: np.ndarray, seed: int) -> list[np.ndarray]:
    """Split positions ``0..len(labels)-1`` over clients, each class by its row of ``shares``.

    Every position is used exactly once; within a class the order is a seeded shuffle.
    """
    labels = np.asarray(labels)
    num_classes, num_clients = shares.shape
    counts = _split_counts(np.bincount(labels, minlength=num_classes), shares)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        for k, chunk in enumerate(np.split(members, np.cumsum(counts[c])[:-1])):
            parts[k].append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


#: Dirichlet concentration of the fine classes inside a coarse label (the reference code's constant)
FINE_ALPHA = 10.0


def _pick(weights: np.ndarray, rng: np.random.Generator) -> int:
    """One index drawn with probabilities proportional to ``weights``."""
    cum = np.cumsum(weights)
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(weights) - 1)


def superclass_draw(pool_labels: np.ndarray, coarse_labels: np.ndarray, num_clients: int, beta: float,
                    rng: np.random.Generator, fine_alpha: float = FINE_ALPHA) -> list[np.ndarray]:
    """One superclass draw: ``len(pool) // K`` pooled positions per client (see the module doc).

    Parameters
    ----------
    pool_labels : numpy.ndarray
        Fine labels of the pooled samples.
    coarse_labels : numpy.ndarray
        Coarse label of every fine class (``[C]``).
    num_clients : int
    beta : float
        Dirichlet concentration over the coarse labels.
    rng : numpy.random.Generator
    fine_alpha : float
        Dirichlet concentration over the fine classes inside a coarse label.

    Returns
    -------
    list of numpy.ndarray
        Sorted pooled positions per client, in the shuffled client order; no position twice.
    """
    coarse_labels = np.asarray(coarse_labels, dtype=np.int64)
    queues = {int(c): list(rng.permutation(np.flatnonzero(pool_labels == c))) for c in np.unique(pool_labels)}
    fines = {int(g): [c for c in np.flatnonzero(coarse_labels == g).tolist() if c in queues]
             for g in np.unique(coarse_labels)}
    fines = {g: f for g, f in fines.items() if f}
    per_client = len(pool_labels) // num_clients
    parts = []
    for _ in range(num_clients):
        groups = sorted(fines)
        g_w = list(rng.dirichlet(np.full(len(groups), beta)))
        f_w = {g: list(rng.dirichlet(np.full(len(fines[g]), fine_alpha))) for g in groups}
        taken = []
        for _ in range(per_client):
            gi = _pick(np.asarray(g_w), rng)
            g = groups[gi]
            fi = _pick(np.asarray(f_w[g]), rng)
            c = fines[g][fi]
            taken.append(queues[c].pop())
            if not queues[c]:
                del fines[g][fi], f_w[g][fi]
                if not fines[g]:
                    del fines[g], groups[gi], g_w[gi]
        parts.append(np.sort(np.asarray(taken, dtype=np.int64)))
    return [parts[i] for i in rng.permutation(num_clients)]


def superclass_split(lt_labels: np.ndarray, test_labels: np.ndarray, coarse_labels: np.ndarray, num_clients: int,
                     beta: float, seed: int, min_size: int = 10, max_retries: int = 100
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The superclass split of the pooled training and test samples (see the module doc).

    Parameters
    ----------
    lt_labels, test_labels : numpy.ndarray
        Labels of the long-tailed training set and of the balanced test pool.
    coarse_labels : numpy.ndarray
        Coarse label of every fine class.
    num_clients : int
    beta : float
        Dirichlet concentration over the coarse labels (> 0).
    seed : int
    min_size : int
        Minimum training samples per client; a draw that misses it is redrawn.
    max_retries : int
        Draws tried before giving up.

    Returns
    -------
    (client_train, client_test)
        Per-client positions into ``lt_labels`` and into ``test_labels``.

    Raises
    ------
    ValueError
        A coarse table that does not cover the classes, or no draw met ``min_size``.
    """
    lt_labels, test_labels = np.asarray(lt_labels), np.asarray(test_labels)
    coarse_labels = np.asarray(coarse_labels)
    num_classes = int(max(lt_labels.max(), test_labels.max())) + 1
    if coarse_labels.shape != (num_classes,):
        raise ValueError(f"the coarse-label table has {coarse_labels.size} entries for {num_classes} classes")
    if not beta > 0:
        raise ValueError(f"superclass beta must be > 0, got {beta!r}")
    pool = np.concatenate([lt_labels, test_labels])
    n_train = len(lt_labels)
    rng = np.random.default_rng(seed)
    smallest = 0
    for _ in range(max_retries):
        parts = superclass_draw(pool, coarse_labels, num_clients, beta, rng)
        train = [p[p < n_train] for p in parts]
        smallest = min(len(t) for t in train)
        if smallest >= min_size:
            return train, [p[p >= n_train] - n_train for p in parts]
    raise ValueError(f"no superclass split (beta={beta}) over K={num_clients} clients gave every client >= {min_size} "
                     f"training samples in {max_retries} draws (smallest: {smallest}); raise "
                     "federation.superclass_beta, lower num_clients or min_client_size")


def matched_test_splits(
    client_train_labels: list[np.ndarray], test_labels: np.ndarray, size: int, seed: int
) -> list[np.ndarray]:
    """Test splits whose label distribution follows each client's training distribution.

    Each client draws about ``size`` test positions, ``round(size * share_c)`` of class ``c``
    (capped by the class's test pool), without replacement within the client; different clients
    may share test images.
    """
    test_labels = np.asarray(test_labels)
    num_classes = int(test_labels.max()) + 1
    pools = [np.flatnonzero(test_labels == c) for c in range(num_classes)]
    rng = np.random.default_rng(seed)
    splits = []
    for labels in client_train_labels:
        share = np.bincount(labels, minlength=num_classes) / max(len(labels), 1)
        take = np.minimum(np.rint(share * size).astype(np.int64), [len(p) for p in pools])
        chosen = [rng.choice(pools[c], size=take[c], replace=False) for c in np.flatnonzero(take)]
        splits.append(np.sort(np.concatenate(chosen)).astype(np.int64))
    return splits


def count_matrix(parts: list[np.ndarray], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Client × class count table ``[K, C]`` of index lists ``parts`` into ``labels``."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts]).astype(np.int64)


def count_frame(parts: list[np.ndarray], labels: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """The client × class table as a DataFrame (rows ``client 0..K-1``, columns class names)."""
    table = count_matrix(parts, labels, len(class_names))
    return pd.DataFrame(table, index=[f"client {k}" for k in range(len(parts))], columns=class_names)


def label_entropy(table: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row's label distribution; lower = more skewed client."""
    p = table / np.clip(table.sum(axis=1, keepdims=True), 1, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=1)


@dataclass
class Federation:
    """The long-tailed training subset, its clients and their test splits.

    Attributes
    ----------
    train_idx : numpy.ndarray
        Long-tailed subset, indices into the training pool.
    client_train, client_test : list of numpy.ndarray
        Per-client indices into the training pool / the balanced test pool.
    train_counts : numpy.ndarray
        Long-tailed training images per class id.
    groups : numpy.ndarray
        Head (0) / medium (1) / tail (2) group per class id.
    shares : numpy.ndarray
        The Dirichlet shares ``[C, K]`` behind the split (``partition="superclass"``: each class's
        training samples' shares over the clients, as drawn).
    """

    train_idx: np.ndarray
    client_train: list[np.ndarray]
    client_test: list[np.ndarray]
    train_counts: np.ndarray
    groups: np.ndarray
    shares: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.train_counts.size)

    @property
    def num_clients(self) -> int:
        return len(self.client_train)

    def client_sizes(self) -> np.ndarray:
        """Training samples per client (the FedAvg weights)."""
        return np.array([len(p) for p in self.client_train], dtype=np.int64)


def build_federation(
    train_labels: np.ndarray, test_labels: np.ndarray, class_order: np.ndarray | None, config: RunConfig,
    coarse_labels: np.ndarray | None = None,
) -> Federation:
    """Long-tail the training pool, split it over clients and give each client a test split.

    Parameters
    ----------
    train_labels, test_labels : numpy.ndarray
        Labels of the (balanced) training pool and the balanced test pool.
    class_order : numpy.ndarray, optional
        Class ids from head to tail (label order when ``None``).
    config : RunConfig
        Its ``longtail`` and ``federation`` sections and ``run.seed``.
    coarse_labels : numpy.ndarray, optional
        Coarse label per class for ``federation.partition="superclass"`` (default: the world's,
        :func:`fedpurel_lite.worlds.coarse_labels`).

    Raises
    ------
    ConfigError
        Too many clients, or a superclass split of a world without coarse labels or with no valid draw.
    """
    lt, fc, seed = config.longtail, config.federation, config.run.seed
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    num_classes = int(train_labels.max()) + 1
    if lt.profile == "given":  # the world's training list is the long-tailed set (OLTR lists)
        train_idx = np.arange(len(train_labels), dtype=np.int64)
    else:
        train_idx = longtail_subsample(train_labels, lt.imbalance_ratio, class_order, lt.profile, seed)
    lt_labels = train_labels[train_idx]
    check_client_count(fc.num_clients, fc.min_client_size, len(train_idx))
    counts = np.bincount(lt_labels, minlength=num_classes)
    groups = assign_groups(counts, lt.group_convention)
    if fc.partition == "superclass":
        if coarse_labels is None:
            from ..worlds import coarse_labels as coarse_labels_of

            coarse_labels = coarse_labels_of(config, num_classes)
        try:
            parts, client_test = superclass_split(lt_labels, test_labels, coarse_labels, fc.num_clients,
                                                  fc.superclass_beta, seed + 1, fc.min_client_size)
        except ValueError as exc:
            raise ConfigError(f"federation.partition='superclass': {exc}") from None
        table = count_matrix(parts, lt_labels, num_classes).T.astype(np.float64)
        shares = table / np.clip(table.sum(axis=1, keepdims=True), 1, None)
        return Federation(train_idx, [train_idx[p] for p in parts], client_test, counts, groups, shares)
    shares, best = _draw_shares(np.bincount(lt_labels), fc.num_clients, fc.dirichlet_alpha, seed + 1,
                                fc.min_client_size, SPLIT_RETRIES)
    if shares is None:
        raise _split_error(np.bincount(lt_labels), config, best)
    client_train = [train_idx[p] for p in split_by_shares(lt_labels, shares, seed + 2)]
    if fc.test_split == "shares":
        client_test = split_by_shares(test_labels, shares, seed + 3)
    else:
        size = len(test_labels) // fc.num_clients
        client_test = matched_test_splits([train_labels[p] for p in client_train], test_labels, size, seed + 3)
    return Federation(train_idx, client_train, client_test, counts, groups, shares)


def longtail_class_sizes(pool_counts: np.ndarray, class_order: np.ndarray | None, config: RunConfig) -> np.ndarray:
    """Training samples per class id after the long-tail subsampling, from the pool's per-class counts alone.

    The counts :func:`build_federation` keeps (``longtail.profile="given"``: the pool itself).

    Parameters
    ----------
    pool_counts : numpy.ndarray
        Training-pool images per class id.
    class_order : numpy.ndarray, optional
        Class ids from head to tail (label order when ``None``), the world's ``class_order``.
    config : RunConfig
        Its ``longtail`` section.

    Raises
    ------
    ConfigError
        The profile asks a class for more images than its pool holds.
    """
    lt = config.longtail
    pool = np.asarray(pool_counts, dtype=np.int64)
    if lt.profile == "given":
        return pool.copy()
    order = np.arange(pool.size) if class_order is None else np.asarray(class_order)
    targets = counts_by_class(class_counts(int(pool.max()), pool.size, lt.imbalance_ratio, lt.profile), order)
    short = np.flatnonzero(targets > pool)
    if short.size:
        c = int(short[0])
        raise ConfigError(f"longtail.imbalance_ratio={lt.imbalance_ratio:g}: class {c} has {pool[c]} images in the "
                          f"world's training pool but the {lt.profile!r} profile asks for {targets[c]}")
    return targets


def check_split(pool_counts: np.ndarray, class_order: np.ndarray | None, config: RunConfig) -> None:
    """Replay the client split from per-class counts alone and refuse a config whose split would fail.

    The long-tailed counts are computed as the run computes them (:func:`longtail_class_sizes`),
    then :func:`build_federation`'s Dirichlet draws are replayed (same seed, same
    ``federation.min_client_size`` rule, same retries): no image, label list or feature is needed,
    and the verdict is the real split's. ``federation.partition="superclass"`` is checked for the
    client count only (its draws need the test pool and the coarse labels).

    Parameters
    ----------
    pool_counts : numpy.ndarray
        Training-pool images per class id (:attr:`fedpurel_lite.worlds.WorldInfo.train_counts_per_class`).
    class_order : numpy.ndarray, optional
        The world's head-to-tail class order (:attr:`fedpurel_lite.worlds.WorldInfo.class_order`).
    config : RunConfig
        Its ``longtail`` and ``federation`` sections and ``run.seed``.

    Raises
    ------
    ConfigError
        One line naming the knobs: too many clients, a pool too small for the profile, or no
        Dirichlet draw that gives every client ``federation.min_client_size`` samples (advising
        a larger ``federation.dirichlet_alpha`` only where that helps).
    """
    fc = config.federation
    sizes = longtail_class_sizes(pool_counts, class_order, config)
    check_client_count(fc.num_clients, fc.min_client_size, int(sizes.sum()))
    if fc.partition == "superclass":
        return
    sizes = np.trim_zeros(sizes, "b")  # the run's np.bincount of the long-tailed labels
    shares, best = _draw_shares(sizes, fc.num_clients, fc.dirichlet_alpha, config.run.seed + 1,
                                fc.min_client_size, SPLIT_RETRIES)
    if shares is None:
        raise _split_error(sizes, config, best)


def _split_error(class_sizes: np.ndarray, config: RunConfig, best: int) -> ConfigError:
    """The one-line error of a Dirichlet split that found no draw (the same before and after loading)."""
    fc = config.federation
    advice = _split_advice(class_sizes, fc.num_clients, fc.dirichlet_alpha, config.run.seed + 1, fc.min_client_size,
                           SPLIT_RETRIES, best,
                           ("federation.dirichlet_alpha", "federation.num_clients", "federation.min_client_size"))
    return ConfigError(f"federation.num_clients={fc.num_clients}: no Dirichlet split "
                       f"(federation.dirichlet_alpha={fc.dirichlet_alpha:g}) of the {int(np.sum(class_sizes))} "
                       f"long-tailed training samples gave every client >= federation.min_client_size="
                       f"{fc.min_client_size} in {SPLIT_RETRIES} draws (the best draw's smallest client: {best}); "
                       f"{advice}")


def check_client_count(num_clients: int, min_client_size: int, num_train_samples: int) -> None:
    """Every client must be able to hold ``min_client_size`` of the long-tailed training samples.

    Raises
    ------
    ConfigError
        Naming ``federation.num_clients`` and the largest count allowed.
    """
    if num_clients * min_client_size > num_train_samples:
        raise ConfigError(f"federation.num_clients={num_clients}: allowed <= {num_train_samples // min_client_size} "
                          f"(the long-tailed training set has {num_train_samples} samples and every client needs "
                          f"federation.min_client_size={min_client_size})")
