"""Dirichlet label partitions over clients, client test splits and the `Federation` they form.

Protocol (the reference loop): the long-tailed training indices of every class are split over the
K clients with proportions drawn from ``Dirichlet(alpha)``; a draw whose smallest client is below
``min_size`` is redrawn (bounded retries, then a clear error). Client test splits come from the
balanced test pool, split per class with the *same* shares (default, so each client's test
labels follow its own preference while tail classes stay represented), or sampled to match each
client's training label distribution (``"matched"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import RunConfig
from .longtail import assign_groups, longtail_subsample


def dirichlet_shares(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10, max_retries: int = 100
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
    rng = np.random.default_rng(seed)
    smallest = 0
    for _ in range(max_retries):
        shares = rng.dirichlet(np.full(num_clients, alpha), size=class_sizes.size)
        sizes = _split_counts(class_sizes, shares).sum(axis=0)
        smallest = int(sizes.min())
        if smallest >= min_size:
            return shares
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split over K={num_clients} clients gave every client >= "
        f"{min_size} samples in {max_retries} draws (smallest client: {smallest}); raise alpha, "
        "lower num_clients or min_client_size"
    )


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
        The Dirichlet shares ``[C, K]`` behind the split.
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
    train_labels: np.ndarray, test_labels: np.ndarray, class_order: np.ndarray | None, config: RunConfig
) -> Federation:
    """Long-tail the training pool, split it over clients and give each client a test split.

    Parameters
    ----------
    train_labels, test_labels : numpy.ndarray
        Labels of the (balanced) training pool and the balanced test pool.
    class_order : numpy.ndarray, optional
        Class ids from head to tail (label order when ``None``).
    config : RunConfig
        Uses ``imbalance_ratio``, ``profile``, ``group_convention``, ``num_clients``,
        ``dirichlet_alpha``, ``min_client_size``, ``test_split`` and ``seed``.
    """
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    num_classes = int(train_labels.max()) + 1
    train_idx = longtail_subsample(train_labels, config.imbalance_ratio, class_order, config.profile, config.seed)
    lt_labels = train_labels[train_idx]
    config.validate(num_train_samples=len(train_idx))
    shares = dirichlet_shares(lt_labels, config.num_clients, config.dirichlet_alpha, config.seed + 1,
                              config.min_client_size)
    client_train = [train_idx[p] for p in split_by_shares(lt_labels, shares, config.seed + 2)]
    if config.test_split == "shares":
        client_test = split_by_shares(test_labels, shares, config.seed + 3)
    else:
        size = len(test_labels) // config.num_clients
        client_test = matched_test_splits([train_labels[p] for p in client_train], test_labels, size,
                                          config.seed + 3)
    counts = np.bincount(lt_labels, minlength=num_classes)
    return Federation(train_idx, client_train, client_test, counts,
                      assign_groups(counts, config.group_convention), shares)
