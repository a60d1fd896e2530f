"""CLIP-Adapter: a residual MLP on the image features, cosine logits against the frozen text features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PEFTCost, PEFTModule, knob, register_peft


class FeatureAdapter(PEFTModule):
    """CLIP-Adapter-style residual MLP on the image features, cosine logits against frozen text.

    ``x' = normalise((1 - r) * x + r * up(relu(down(x))))`` with ``up`` zero-initialised, so the
    adapter starts exactly at zero-shot (a final ReLU as in CLIP-Adapter is dropped: with a zero
    output layer it would block every gradient).

    Parameters
    ----------
    text_features : Tensor
        ``[C, D]`` frozen zero-shot classifier.
    logit_scale : float
        The backbone's logit scale.
    reduction : int
        Bottleneck ``D // reduction``.
    ratio : float
        Residual ratio ``r`` (CLIP-Adapter uses 0.2).
    """

    def __init__(self, text_features: Tensor, logit_scale: float, reduction: int = 4, ratio: float = 0.2) -> None:
        super().__init__()
        dim = text_features.shape[1]
        hidden = max(dim // reduction, 1)
        self.register_buffer("text", F.normalize(text_features.detach().float().clone(), dim=-1))
        self.down = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(hidden, dim, bias=False)
        nn.init.zeros_(self.up.weight)
        self.ratio = float(ratio)
        self.logit_scale = float(logit_scale)

    def image_features(self, x: Tensor) -> Tensor:
        return F.normalize((1.0 - self.ratio) * x + self.ratio * self.up(F.relu(self.down(x))), dim=-1)

    def class_features(self) -> Tensor:
        return self.text


@dataclass(frozen=True)
class AdapterConfig:
    """``[peft.adapter]``: the CLIP-Adapter's knobs."""

    reduction: int = knob(4, "hidden width = feature dim / reduction", range="[1, 1024]")
    ratio: float = knob(0.2, "residual mix r of the adapted features (CLIP-Adapter: 0.2)", range="[0, 1]")


@register_peft("adapter", config=AdapterConfig, description="CLIP-Adapter residual MLP on the image features",
               cost=PEFTCost(0.04, 0.1, lambda section, dims, classes:
                             2 * dims["embed"] * max(dims["embed"] // max(int(section.reduction), 1), 1)))
def build_adapter(bank: Any, backbone: Any, config: Any) -> FeatureAdapter:
    """A :class:`FeatureAdapter` with ``peft.adapter.reduction`` and ``peft.adapter.ratio``."""
    opts = config.section(AdapterConfig)
    return FeatureAdapter(torch.as_tensor(bank.text_features).float(), float(bank.logit_scale), opts.reduction,
                          opts.ratio)
