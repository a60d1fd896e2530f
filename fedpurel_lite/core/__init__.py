"""The small core: FedPuReL's math on plain tensors and any ``nn.Module`` (imports only torch and numpy).

Everything else in the package (banks, PEFTs, the round loop, the Flower apps, the views) is built
on these functions; they know nothing about CLIP, configs or federations, so they drop into an
ordinary PyTorch training loop (see ``examples/core_loop.py``).

Stage 1 -- purified training against a frozen teacher
-----------------------------------------------------
:func:`aligned_kl`
    Temperature-aligned KL(teacher || student): per-sample temperatures (found without gradient
    by :func:`find_temperature`, a bisection in ``log tau`` on ``[TAU_LO, TAU_HI]``) bring both
    distributions to the mean of their entropies; ``aligned=False`` is the plain KL at ``T = 1``.
:func:`aligned_temperatures`, :func:`find_temperature`, :func:`entropy`
    The temperature search and its building blocks.
:func:`logit_gradients`
    Cross-entropy and alignment losses with their gradients with respect to the logits, in closed
    form (for engines that pull logit gradients back themselves).
:func:`project`, :func:`project_gradients`
    The ProGrad rule: when ``cos(g, g_a) < 0``, remove ``lambda`` times the component of the task
    gradient ``g`` along the alignment gradient ``g_a`` (one flattened vector, or per tensor).
:func:`purified_gradients`
    Both losses' autograd gradients for a list of parameters, projected: assign them to
    ``p.grad`` and step any optimizer.

Server
------
:func:`fedavg`
    Weighted average of the clients' state dicts (weights = sample counts).

Stage 2 -- personal residual
----------------------------
:class:`ResidualHead`
    Zero-initialised linear head giving a logit residual ``l_L``; the personal model is ``l_G + l_L``.
:func:`residual_loss`, :func:`residual_gradients`
    ``alpha CE(l_L, y) + (1 - alpha) CE(l_G + l_L, y)``, by autograd or in closed form.
"""

from __future__ import annotations

from .alignment import (
    P_FLOOR,
    TAU_HI,
    TAU_LO,
    aligned_kl,
    aligned_temperatures,
    entropy,
    find_temperature,
    logit_gradients,
)
from .fedavg import fedavg
from .projection import project, project_gradients, purified_gradients
from .residual import ResidualHead, residual_gradients, residual_loss

__all__ = [
    "P_FLOOR",
    "TAU_HI",
    "TAU_LO",
    "ResidualHead",
    "aligned_kl",
    "aligned_temperatures",
    "entropy",
    "fedavg",
    "find_temperature",
    "logit_gradients",
    "project",
    "project_gradients",
    "purified_gradients",
    "residual_gradients",
    "residual_loss",
]
