"""Server side of a round: the client sampler, and FedAvg (from the core) over the clients' named tensors.

The sampler is stateless: the clients of round ``t`` come from a NumPy generator seeded with
``(seed, t)`` only, so the draw is reproducible, independent of any training randomness, and a
resumed run (or a Flower ServerApp) draws the same clients without saved RNG state.
"""

from __future__ import annotations

import numpy as np

from ..core import fedavg

__all__ = ["ClientSampler", "fedavg", "num_sampled"]

_SAMPLER_STREAM = 0x5A3D1E  # separates the sampler's seed stream from the training streams


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
