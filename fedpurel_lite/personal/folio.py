"""PromptFolio-style feature-level fusion of a global and a local PEFT.

Class (text) and image features are mixed ``(1 - theta) global + theta local``
(``theta = personal.folio.theta``), normalised, and give cosine logits; the persistent local PEFT
(initialised from the global model) is trained through the mix with the global part frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.registry import knob
from ..peft import PEFTModule
from .base import PersonalizationBase, register_personalization

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass(frozen=True)
class FolioConfig:
    """``[personal.folio]``: the feature mix."""

    theta: float = knob(0.2, "weight of the local features in the mix (1 - theta) global + theta local",
                        range="[0, 1]")


@register_personalization
class Folio(PersonalizationBase):
    """Global/local feature mix."""

    name = "folio"
    description = "global/local feature mix (PromptFolio-style)"
    start = "global"
    section = FolioConfig

    def logits(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, global_logits: Tensor | None,
               config: RunConfig | None) -> Tensor:
        if config is None or not isinstance(personal, PEFTModule):
            raise ValueError("the feature mix needs the config (personal.folio.theta) and a PEFT as the local part")
        theta = config.section(FolioConfig).theta
        with torch.no_grad():
            g_cls = global_peft.class_features()
            g_img = global_peft.image_features(x)
        cls = F.normalize((1.0 - theta) * g_cls + theta * personal.class_features(), dim=-1)
        img = F.normalize((1.0 - theta) * g_img + theta * personal.image_features(x), dim=-1)
        out: Tensor = personal.logit_scale * img @ cls.t()
        return out
