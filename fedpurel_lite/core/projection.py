"""Gradient purification: remove the part of the task gradient that conflicts with the alignment gradient.

ProGrad rule: with ``g = grad L_task`` and ``g_a = grad L_align``, if ``cos(g, g_a) < 0`` then
``g <- g - lambda <g, g_a_hat> g_a_hat``; ``g_a`` itself is never added. The decision is taken on
the whole flattened gradient (``"global"``, the paper's formula) or per tensor (``"tensor"``, the
reference code).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def project(g: Tensor, g_align: Tensor, lambda_proj: float = 1.0) -> tuple[Tensor, float, bool]:
    """ProGrad rule on one (flattened) gradient.

    Returns ``g - lambda <g, g_hat_a> g_hat_a`` when ``cos(g, g_align) < 0``, else ``g`` unchanged.

    Parameters
    ----------
    g : Tensor
        Task gradient (any shape; treated as one flattened vector).
    g_align : Tensor
        Alignment gradient of the same shape.
    lambda_proj : float
        Strength of the removal (1 = the paper's formula: the result is orthogonal to ``g_align``).

    Returns
    -------
    (g_new, cosine, fired)
        ``cosine`` is NaN when either gradient is zero (then nothing fires).
    """
    na = torch.linalg.vector_norm(g_align)
    ng = torch.linalg.vector_norm(g)
    if na.item() == 0.0 or ng.item() == 0.0:
        return g, float("nan"), False
    dot = torch.dot(g.reshape(-1), g_align.reshape(-1))
    cos = (dot / (na * ng)).item()
    if cos < 0.0:
        return g - (lambda_proj * dot / (na * na)) * g_align, cos, True
    return g, cos, False


def project_gradients(
    task: list[Tensor], align: list[Tensor], lambda_proj: float = 1.0, granularity: str = "global"
) -> tuple[list[Tensor], list[float], list[bool]]:
    """Project a list of per-tensor task gradients against the alignment gradients.

    Parameters
    ----------
    task, align : list of Tensor
        Gradients of ``L_task`` and ``L_align`` for the same parameters.
    lambda_proj : float
        Strength of the removal (1 = the paper's formula).
    granularity : {"global", "tensor"}
        One decision on the concatenated gradient, or one per tensor (reference code).

    Returns
    -------
    (grads, cosines, fired)
        New gradients, and one cosine / fired flag per decision.
    """
    if granularity == "global":
        flat_g = torch.cat([t.reshape(-1) for t in task])
        flat_a = torch.cat([a.reshape(-1) for a in align])
        new, cos, fired = project(flat_g, flat_a, lambda_proj)
        if fired:
            out, start = [], 0
            for t in task:
                out.append(new[start:start + t.numel()].view_as(t))
                start += t.numel()
            return out, [cos], [True]
        return list(task), [cos], [False]
    if granularity == "tensor":
        results = [project(t, a, lambda_proj) for t, a in zip(task, align, strict=True)]
        return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]
    raise ValueError(f"projection granularity must be 'global' or 'tensor', got {granularity!r}")




def purified_gradients(
    task_loss: Tensor, align_loss: Tensor, params: Sequence[Tensor], lambda_proj: float = 1.0,
    granularity: str = "global",
) -> list[Tensor]:
    """Autograd gradients of ``task_loss`` for ``params``, purified against those of ``align_loss``.

    The convenience entry point for an ordinary training loop: both gradients by
    :func:`torch.autograd.grad`, then :func:`project_gradients`. A parameter that a loss does not
    reach gets a zero gradient.

    Parameters
    ----------
    task_loss, align_loss : Tensor
        Scalar losses computed from ``params`` (e.g. cross-entropy and :func:`aligned_kl`).
    params : sequence of Tensor
        The trainable tensors.
    lambda_proj : float
        Strength of the removal (1 = the paper's formula).
    granularity : {"global", "tensor"}
        One decision on the concatenated gradient, or one per tensor.

    Returns
    -------
    list of Tensor
        One gradient per parameter, e.g. to assign to ``p.grad`` before ``optimizer.step()``.
    """
    params = list(params)
    task = torch.autograd.grad(task_loss, params, retain_graph=True, allow_unused=True)
    align = torch.autograd.grad(align_loss, params, allow_unused=True)
    task_z = [torch.zeros_like(p) if g is None else g for p, g in zip(params, task, strict=True)]
    align_z = [torch.zeros_like(p) if g is None else g for p, g in zip(params, align, strict=True)]
    return project_gradients(task_z, align_z, lambda_proj, granularity)[0]
