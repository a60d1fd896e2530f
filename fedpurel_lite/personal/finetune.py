"""Parameter-level personalization by fine-tuning a PEFT copy with CE, predicting with it alone.

``local-ft``    restarts from the new global PEFT at every participation (FedAvg + local fine-tuning).
``local-only``  the floor: a PEFT the client trains alone from the zero-shot initial state (persistent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..peft import PEFTModule
from .base import PersonalizationBase, register_personalization

if TYPE_CHECKING:
    from ..config import RunConfig


class _FineTune(PersonalizationBase):
    """The fine-tuned copy's own logits; they never read the global model, so they can be kept."""

    def logits(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, global_logits: Tensor | None,
               config: RunConfig | None) -> Tensor:
        out: Tensor = personal(x)
        return out

    def branch_only(self, global_peft: PEFTModule) -> bool:
        return True

    @torch.no_grad()
    def predict(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, global_logits: Tensor | None,
                config: RunConfig | None, batch_size: int) -> Tensor:
        """The PEFT's own batched prediction (its class features computed once)."""
        if isinstance(personal, PEFTModule):
            return personal.predict_logits(x, batch_size)
        return super().predict(personal, global_peft, x, global_logits, config, batch_size)


@register_personalization
class LocalFineTune(_FineTune):
    """Fine-tune a copy of the new global PEFT at every participation."""

    name = "local-ft"
    description = "fine-tune a copy of the new global PEFT"
    start = "global-each-round"


@register_personalization
class LocalOnly(_FineTune):
    """Each client trains its own PEFT alone from zero-shot."""

    name = "local-only"
    description = "the client alone, from zero-shot"
    start = "zero-shot"
