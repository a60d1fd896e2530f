"""The text-anchored head: a cosine classifier whose class weights start at the zero-shot text features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PEFTCost, PEFTModule, register_peft


class TextAnchoredHead(PEFTModule):
    """Cosine classifier initialised at the zero-shot text features.

    Parameters
    ----------
    text_features : Tensor
        ``[C, D]`` zero-shot classifier (normalised or not; rows are normalised in forward).
    logit_scale : float
        The backbone's logit scale (fixed).
    """

    def __init__(self, text_features: Tensor, logit_scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(F.normalize(text_features.detach().float().clone(), dim=-1))
        self.logit_scale = float(logit_scale)

    def class_features(self) -> Tensor:
        return F.normalize(self.weight, dim=-1)

    def forward_with_pullback(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], list[Tensor]]]:
        """Closed form for the cosine head (no autograd graph; about 10x faster than autograd here)."""
        with torch.no_grad():
            w = self.weight
            norm = torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min(1e-12)
            wn = w / norm
            logits = self.logit_scale * x @ wn.t()

        def pullback(cotangents: Tensor) -> list[Tensor]:
            with torch.no_grad():
                d_wn = self.logit_scale * torch.matmul(cotangents.transpose(1, 2), x)  # [k, C, D]
                d_w = (d_wn - wn * (d_wn * wn).sum(-1, keepdim=True)) / norm
            return [d_w]

        return logits, pullback


@register_peft("head", description="text-anchored cosine head (one weight row per class, from zero-shot)",
               cost=PEFTCost(0.03, 0.1, lambda section, dims, classes: classes * dims["embed"]))
def build_head(bank: Any, backbone: Any, config: Any) -> TextAnchoredHead:
    """A :class:`TextAnchoredHead` at the bank's zero-shot text features."""
    return TextAnchoredHead(torch.as_tensor(bank.text_features).float(), float(bank.logit_scale))
