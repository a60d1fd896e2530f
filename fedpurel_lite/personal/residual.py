"""FedPuReL's residual personalization: a private branch whose logits ``l_L`` add to the frozen global model's.

Loss ``alpha CE(l_L, y) + (1 - alpha) CE(l_G + l_L, y)`` (``alpha = personalization.personal_alpha``),
inference ``l_G + l_L``; the branch persists across rounds.

``residual``       a zero-initialised :class:`~fedpurel_lite.core.ResidualHead` on the image features
                   (:func:`~fedpurel_lite.personal.base.head_features`), trained in closed form.
``residual-peft``  the reference code's variant: the branch is a full PEFT starting at zero-shot
                   (``l_L`` is a complete CLIP logit vector).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.registry import knob
from ..core.residual import ResidualHead, residual_gradients
from ..peft import PEFTModule
from .base import PersonalizationBase, head_features, register_personalization

if TYPE_CHECKING:
    from ..config import RunConfig


class _Residual(PersonalizationBase):
    """The residual family: logits, loss, step and kept branch logits shared by both kinds."""

    residual = True

    def _branch(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor) -> Tensor:
        """``l_L`` of inputs ``x`` (a head reads the image features)."""
        out: Tensor = personal(head_features(global_peft, x) if isinstance(personal, ResidualHead) else x)
        return out

    def logits(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, global_logits: Tensor | None,
               config: RunConfig | None) -> Tensor:
        """``l_G + l_L`` (``l_G`` computed when not given)."""
        if global_logits is None:
            global_logits = global_peft.predict_logits(x)
        return global_logits + self._branch(personal, global_peft, x)

    def loss(self, logits: Tensor, labels: Tensor, config: RunConfig, local_logits: Tensor | None = None) -> Tensor:
        """``alpha CE(l_L, y) + (1 - alpha) CE(l_G + l_L, y)`` with ``logits = l_G + l_L``, ``local_logits = l_L``."""
        if local_logits is None:
            raise ValueError("the residual loss needs the branch's own logits (local_logits)")
        alpha = config.personalization.personal_alpha
        return alpha * F.cross_entropy(local_logits, labels) + (1.0 - alpha) * F.cross_entropy(logits, labels)

    def step(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, y: Tensor, global_logits: Tensor | None,
             config: RunConfig, params: list[nn.Parameter]) -> tuple[Tensor, list[Tensor]]:
        """Autograd of the residual loss of the branch on the raw inputs."""
        if global_logits is None:
            global_logits = global_peft.predict_logits(x)
        local = personal(x)
        loss = self.loss(global_logits + local, y, config, local)
        return loss, list(torch.autograd.grad(loss, params))

    def branch_only(self, global_peft: PEFTModule) -> bool:
        return True

    @torch.no_grad()
    def branch_logits(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, batch_size: int) -> Tensor:
        """``l_L`` in batches (add the global logits for the personal model's)."""
        return torch.cat([personal(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


@dataclass(frozen=True)
class ResidualHeadConfig:
    """``[personal.residual]``: the linear residual head."""

    scale: float = knob(0.0, "logit scale of the head (0 = the backbone's)", range="[0, 1000]")
    bias: bool = knob(False, "a per-class bias in the head")


@register_personalization
class ResidualHeadKind(_Residual):
    """A zero-initialised linear residual head on the image features (persistent, fresh at first participation).

    ``personal.residual.scale`` (0: the backbone's logit scale) scales it, ``personal.residual.bias``
    adds a per-class bias.
    """

    name = "residual"
    description = "zero-initialised linear residual head on the image features"
    start = "new"
    suspect_keys = ("personal.residual.scale",)
    section = ResidualHeadConfig

    def new_module(self, global_peft: PEFTModule, config: RunConfig) -> nn.Module:
        cls = global_peft.class_features().detach()
        head = config.section(ResidualHeadConfig)
        scale = head.scale or global_peft.logit_scale
        return ResidualHead(cls.shape[1], cls.shape[0], scale, head.bias)

    def step(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, y: Tensor, global_logits: Tensor | None,
             config: RunConfig, params: list[nn.Parameter]) -> tuple[Tensor, list[Tensor]]:
        """Loss and gradients in closed form for a ResidualHead (:func:`~fedpurel_lite.core.residual_gradients`)."""
        if not isinstance(personal, ResidualHead):
            return super().step(personal, global_peft, x, y, global_logits, config, params)
        if global_logits is None:
            global_logits = global_peft.predict_logits(x)
        return residual_gradients(personal, global_logits, head_features(global_peft, x), y,
                                  config.personalization.personal_alpha)

    def branch_only(self, global_peft: PEFTModule) -> bool:
        """Only when the head reads the inputs themselves (cached features)."""
        return global_peft.inputs == "features"


@register_personalization
class ResidualPEFTKind(_Residual):
    """A private PEFT from zero-shot whose logits add to the global model's (the reference's personal branch)."""

    name = "residual-peft"
    description = "a private PEFT from zero-shot whose logits add to the global's"
    start = "zero-shot"
