"""World quality measures: the default head/medium/tail groups and a central linear-probe headroom."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported when a probe runs: the worlds package loads without it
    import torch


def default_groups(class_order: np.ndarray, n_max: int = 500, imbalance_ratio: float = 100.0) -> np.ndarray:
    """Head/medium/tail group per class id under the default long-tail assignment.

    Exponential profile ``n_r = int(n_max * IF ** (-r / (C - 1)))`` over ``class_order``; head
    ``n > 100``, medium ``21..100``, tail ``n <= 20`` (the reference convention).

    Parameters
    ----------
    class_order : numpy.ndarray
        Class ids from head to tail.
    n_max : int
        Head-class size.
    imbalance_ratio : float
        ``IF``.

    Returns
    -------
    numpy.ndarray
        ``int64`` group per class id (0 head, 1 medium, 2 tail).
    """
    from fedpurel_lite.data import longtail

    counts = longtail.counts_by_class(longtail.class_counts(n_max, len(class_order), imbalance_ratio, "exp"),
                                      np.asarray(class_order))
    return longtail.assign_groups(counts)


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor, weight_decay: float = 1e-4, max_iter: int = 40,
                          seed: int = 0) -> float:
    """Accuracy of a multinomial logistic regression trained with full-batch L-BFGS.

    Parameters
    ----------
    train_x, test_x : torch.Tensor
        Features ``[N, D]`` (standardised internally with training statistics).
    train_y, test_y : torch.Tensor
        Labels.
    weight_decay : float
        L2 penalty on the weights.
    max_iter : int
        L-BFGS iterations.
    seed : int
        Initialisation seed.

    Returns
    -------
    float
        Test accuracy in ``[0, 1]``.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    xtr, xte = (train_x - mu) / sd, (test_x - mu) / sd
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    lin = torch.nn.Linear(xtr.shape[1], num_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(xtr), train_y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(xte).argmax(1) == test_y).float().mean())
