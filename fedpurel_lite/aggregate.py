"""Server side of a round: sample-size-weighted FedAvg over named tensors and the client sampler.

The sampler is stateless: the clients of round ``t`` come from a NumPy generator seeded with
``(seed, t)`` only, so the draw is reproducible, independent of any training randomness, and a
resumed run (or a Flower ServerApp) draws the same clients without saved RNG state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

_SAMPLER_STREAM = 0x5A3D1E  # separates the sampler's seed stream from the training streams


def fedavg(states: Sequence[dict[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Weighted average of named tensors, ``sum_k w_k / sum_j w_j * state_k``.

    Parameters
    ----------
    states : sequence of dict
        One ``{name: tensor}`` per client, all with the same names and shapes.
    weights : sequence of float
        Non-negative client weights (training sample counts); at least one positive.

    Returns
    -------
    dict
        The averaged tensors (fp32 accumulation, cast back to each tensor's dtype).

    Raises
    ------
    ValueError
        On an empty input, mismatched names or non-positive total weight.
    """
    if len(states) == 0 or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states and {len(weights)} weights")
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"FedAvg weights must be >= 0 with a positive sum, got {list(weights)}")
    w = w / w.sum()
    names = list(states[0])
    for s in states[1:]:
        if list(s) != names and set(s) != set(names):
            raise ValueError(f"client states have different tensor names: {sorted(s)} vs {sorted(names)}")
    out = {}
    for n in names:
        stacked = torch.stack([s[n].detach().double() for s in states])
        avg = torch.tensordot(w.to(stacked.device), stacked, dims=1)
        out[n] = avg.to(states[0][n].dtype)
    return out


def num_sampled(num_clients: int, participation: float) -> int:
    """Clients per round after round 0: ``max(int(participation * K), 1)`` (the reference rule)."""
    return max(int(participation * num_clients), 1)


class ClientSampler:
    """Seeded client sampler: round 0 all clients, later rounds ``max(int(frac*K), 1)`` of them.

    Parameters
    ----------
    num_clients : int
        ``K``.
    participation : float
        Fraction ``frac`` in ``(0, 1]``.
    seed : int
        Run seed.
    """

    def __init__(self, num_clients: int, participation: float, seed: int) -> None:
        if num_clients < 1 or not 0.0 < participation <= 1.0:
            raise ValueError(f"need num_clients >= 1 and participation in (0, 1], got {num_clients}, "
                             f"{participation}")
        self.num_clients = int(num_clients)
        self.participation = float(participation)
        self.seed = int(seed)

    def sample(self, round_idx: int) -> np.ndarray:
        """Sorted client ids of round ``round_idx`` (uniform, without replacement)."""
        if round_idx == 0:
            return np.arange(self.num_clients, dtype=np.int64)
        rng = np.random.default_rng([self.seed, int(round_idx), _SAMPLER_STREAM])
        m = num_sampled(self.num_clients, self.participation)
        return np.sort(rng.choice(self.num_clients, size=m, replace=False)).astype(np.int64)
