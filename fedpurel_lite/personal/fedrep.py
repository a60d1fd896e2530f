"""FedRep/FedPer-style personalization: a personal cosine classifier on the global model's image features.

The classifier (a :class:`~fedpurel_lite.peft.TextAnchoredHead`) starts from the global class
features at a client's first participation and persists; the global model's image features are frozen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..peft import PEFTModule, TextAnchoredHead
from .base import PersonalizationBase, register_personalization

if TYPE_CHECKING:
    from ..config import RunConfig


@register_personalization
class FedRep(PersonalizationBase):
    """A persistent personal cosine classifier on the frozen global image features."""

    name = "fedrep"
    description = "a personal cosine classifier on the global image features"
    start = "new"

    def new_module(self, global_peft: PEFTModule, config: RunConfig) -> nn.Module:
        return TextAnchoredHead(global_peft.class_features().detach(), global_peft.logit_scale)

    def logits(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, global_logits: Tensor | None,
               config: RunConfig | None) -> Tensor:
        with torch.no_grad():
            img = global_peft.image_features(x)
        out: Tensor = personal(img)
        return out
