"""The residual head: a zero-initialised linear map from features to a logit residual ``l_L``."""

from __future__ import annotations

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
        return self.scale * self.linear(x)
