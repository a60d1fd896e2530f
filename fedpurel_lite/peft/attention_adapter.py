"""FedCLIP-style attention adapter: a learned soft mask over the image-feature dimensions.

``a = softmax(W_2 tanh(W_1 x + b_1) + b_2)`` over the ``D`` feature dimensions (two ``D x D``
layers), the image feature becomes ``normalise(a * x)`` and the logits are cosine against the
frozen zero-shot text features (one fixed template in the reference code: ``world.templates =
"single"``). With ``W_2 = 0, b_2 = 0`` (the default init here) the mask is uniform, ``a = 1/D``,
so ``normalise(a * x) = x`` and the adapter starts exactly at zero-shot; ``zero_init = False``
draws both layers like ``nn.Linear`` does (the reference code's init; seeded by ``run.seed``).

The reference pairs this adapter with its own losses: stage-1 purification against plain KL at
``T = 1``, and a stage-2 personal branch trained on the fused logits only, ``CE(l_G + l_L)``
(``personalization.personal_alpha = 0``). The method record :data:`FUSION_METHOD` states that
pairing as data: ``method.name = "fedpurel-attn"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PEFTModule, knob, register_peft


@dataclass(frozen=True)
class AttentionAdapterConfig:
    """``[peft.attention-adapter]``: how the adapter starts."""

    zero_init: bool = knob(True, "start the second layer at zero (uniform mask: zero-shot at init); false draws "
                                 "it like nn.Linear, as the reference code does")


#: the reference pairing as a method record (registered by :mod:`fedpurel_lite.methods`): stage-1
#: objective, personalization kind and the config keys the method forces
FUSION_METHOD: dict[str, Any] = {
    "name": "fedpurel-attn",
    "stage1": "purify-kl",
    "personal": "residual-peft",
    "description": "reference attention-adapter FedPuReL: plain-KL purification, a private attention adapter "
                   "trained on the fused logits only (CE(l_G + l_L), personal_alpha = 0)",
    "overrides": {"method.peft": "attention-adapter", "personalization.personal_alpha": 0.0},
}

#: the methods this plugin adds
METHOD_RECORDS: list[dict[str, Any]] = [FUSION_METHOD]


class AttentionAdapter(PEFTModule):
    """Soft attention over the feature dimensions: ``normalise(softmax(mlp(x)) * x)``, cosine logits.

    Parameters
    ----------
    text_features : Tensor
        ``[C, D]`` frozen zero-shot classifier.
    logit_scale : float
        The backbone's logit scale.
    zero_init : bool
        Second layer at zero (starts at zero-shot) or ``nn.Linear``'s init.
    generator : torch.Generator, optional
        Source of the random inits (``nn.Linear``'s bounds, drawn from this generator).
    """

    text: Tensor

    def __init__(self, text_features: Tensor, logit_scale: float, zero_init: bool = True,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        dim = text_features.shape[1]
        self.register_buffer("text", F.normalize(text_features.detach().float().clone(), dim=-1))
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        bound = dim ** -0.5  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
        layers = (self.fc1,) if zero_init else (self.fc1, self.fc2)
        with torch.no_grad():
            for layer in layers:
                for p in (layer.weight, layer.bias):
                    p.copy_((torch.rand(p.shape, generator=generator) * 2.0 - 1.0) * bound)
            if zero_init:
                self.fc2.weight.zero_()
                self.fc2.bias.zero_()
        self.logit_scale = float(logit_scale)

    def attention(self, x: Tensor) -> Tensor:
        """The mask ``softmax(fc2(tanh(fc1(x))))`` over the feature dimensions, ``[B, D]`` (rows sum to 1)."""
        return torch.softmax(self.fc2(torch.tanh(self.fc1(x))), dim=1)

    def image_features(self, x: Tensor) -> Tensor:
        return F.normalize(self.attention(x) * x, dim=-1)

    def class_features(self) -> Tensor:
        return self.text


@register_peft("attention-adapter", config=AttentionAdapterConfig,
               description="FedCLIP-style attention mask over the image features (reference)")
def build_attention_adapter(bank: Any, backbone: Any, config: Any) -> AttentionAdapter:
    """An :class:`AttentionAdapter` at the bank's zero-shot text features (first layer seeded by ``run.seed``)."""
    gen = torch.Generator().manual_seed(config.run.seed + 7919)
    return AttentionAdapter(torch.as_tensor(bank.text_features).float(), float(bank.logit_scale),
                            zero_init=config.section(AttentionAdapterConfig).zero_init, generator=gen)
