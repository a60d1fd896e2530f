"""The residual head: a zero-initialised linear map from features to a logit residual ``l_L``, and its loss.

The personal model's logits are ``l_G + l_L`` with the global logits ``l_G`` frozen; the residual
loss is ``alpha CE(l_L, y) + (1 - alpha) CE(l_G + l_L, y)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResidualHead(nn.Module):
    """Personal branch: zero-initialised linear map image features -> logit residual ``l_L``.

    ``l_L = scale * x @ W.T`` (``+ scale * b`` with ``bias=True``), zero at init, so
    ``l_G + l_L = l_G`` and the personal model starts equal to the global one. No bias by default:
    a bias learns the client's (long-tailed) label prior directly and pushes the tail down.

    Parameters
    ----------
    dim, num_classes : int
        Feature dimension ``D`` and number of classes ``C``.
    scale : float
        Fixed output scale (the backbone's logit scale keeps weights in cosine-classifier units).
    bias : bool
        Learn a per-class bias too.
    """

    def __init__(self, dim: int, num_classes: int, scale: float = 1.0, bias: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes, bias=bias)
        nn.init.zeros_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        """The logit residual ``l_L`` of features ``x`` (``[B, D]`` -> ``[B, C]``)."""
        out: Tensor = self.linear(x)
        return self.scale * out


def residual_loss(global_logits: Tensor, local_logits: Tensor, labels: Tensor, alpha: float) -> Tensor:
    """The residual loss ``alpha CE(l_L, y) + (1 - alpha) CE(l_G + l_L, y)`` (mean over the batch).

    Parameters
    ----------
    global_logits : Tensor
        ``[B, C]`` logits ``l_G`` of the frozen global model (no gradient flows into them).
    local_logits : Tensor
        ``[B, C]`` residual ``l_L`` (e.g. a :class:`ResidualHead`'s output).
    labels : Tensor
        ``[B]`` class indices.
    alpha : float
        Weight of the residual's own cross-entropy, in ``[0, 1]``.

    Returns
    -------
    Tensor
        Scalar loss; the personal model predicts ``l_G + l_L``.
    """
    fused = global_logits.detach() + local_logits
    return alpha * F.cross_entropy(local_logits, labels) + (1.0 - alpha) * F.cross_entropy(fused, labels)


@torch.no_grad()
def residual_gradients(head: ResidualHead, global_logits: Tensor, x: Tensor, labels: Tensor,
                       alpha: float) -> tuple[Tensor, list[Tensor]]:
    """:func:`residual_loss` of a :class:`ResidualHead` and its gradients, in closed form (no autograd).

    ``dL/dl_L = (alpha (softmax(l_L) - Y) + (1 - alpha) (softmax(l_G + l_L) - Y)) / B``, then
    ``dW = scale * G^T x`` (and ``db = scale * sum_b G`` with a bias). Equal to autograd (tested).

    Parameters
    ----------
    head : ResidualHead
        The residual head (not modified).
    global_logits : Tensor
        ``[B, C]`` frozen global logits ``l_G``.
    x : Tensor
        ``[B, D]`` the head's input features.
    labels : Tensor
        ``[B]`` class indices.
    alpha : float
        As in :func:`residual_loss`.

    Returns
    -------
    (loss, grads)
        The scalar loss and the gradients of ``head.linear``'s weight (and bias), in parameter order.
    """
    b = x.shape[0]
    rows = torch.arange(b, device=x.device)
    local = head(x)
    lp_l = F.log_softmax(local, dim=-1)
    lp_f = F.log_softmax(global_logits + local, dim=-1)
    loss = -(alpha * lp_l[rows, labels] + (1.0 - alpha) * lp_f[rows, labels]).mean()
    g = alpha * lp_l.exp() + (1.0 - alpha) * lp_f.exp()
    g[rows, labels] -= 1.0
    g *= head.scale / b
    grads = [g.t() @ x]
    if head.linear.bias is not None:
        grads.append(g.sum(dim=0))
    return loss, grads
