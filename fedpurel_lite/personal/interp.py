"""Parameter-level fusion: the personal model is ``phi = beta phi_G + (1 - beta) phi_k``.

The persistent local ``phi_k`` (initialised from the global model) is trained through the mixed
model with the global part frozen; ``beta = personal.interp.beta``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn
from torch.func import functional_call

from ..config.registry import knob
from ..peft import PEFTModule
from .base import PersonalizationBase, register_personalization

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass(frozen=True)
class InterpConfig:
    """``[personal.interp]``: the interpolation weight."""

    beta: float = knob(0.5, "weight of the global model in phi = beta phi_G + (1 - beta) phi_k", range="[0, 1]")


@register_personalization
class Interpolation(PersonalizationBase):
    """Global/local parameter interpolation."""

    name = "interp"
    description = "global/local parameter interpolation"
    start = "global"
    section = InterpConfig

    def logits(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, global_logits: Tensor | None,
               config: RunConfig | None) -> Tensor:
        if config is None:
            raise ValueError("parameter interpolation needs the config (personal.interp.beta)")
        beta = config.section(InterpConfig).beta
        g_state = global_peft.shared_state()
        mixed = {n: beta * g_state[n] + (1.0 - beta) * p for n, p in personal.named_parameters() if p.requires_grad}
        out: Tensor = functional_call(personal, mixed, (x,), strict=False)
        return out
