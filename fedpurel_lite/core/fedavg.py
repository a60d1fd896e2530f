"""FedAvg: the sample-size-weighted average of the clients' named tensors (state dicts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor


def fedavg(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Weighted average of named tensors, ``sum_k w_k / sum_j w_j * state_k``.

    Parameters
    ----------
    states : sequence of mapping
        One ``{name: tensor}`` per client, all with the same names and shapes.
    weights : sequence of float
        Non-negative client weights (training sample counts); at least one positive.

    Returns
    -------
    dict
        The averaged tensors (float64 accumulation, cast back to each tensor's dtype).

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
