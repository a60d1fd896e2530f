"""Shared trainable parts (PEFTs) on top of the frozen CLIP, found by name in :data:`PEFTS`.

Modules
-------
``head``     :class:`TextAnchoredHead`, cosine classifier whose weights start at the zero-shot text features.
``prompt``   :class:`PromptLearner`, CoOp context vectors run through the frozen open_clip text tower.
``adapter``  :class:`FeatureAdapter`, CLIP-Adapter residual MLP on the image features (starts at zero-shot).
``lora``     :class:`LoRACLIP`, LoRA on the attention q/k/v of the vision (and/or text) tower, on cached
             vision tokens (starts at zero-shot).
``attention_adapter`` :class:`AttentionAdapter`, FedCLIP-style softmax mask over the image features (the
             reference code's adapter; its method ``fedpurel-attn`` pairs it with the fused loss).
``bitfit``   :class:`BitFitCLIP`, offsets on every bias of the frozen vision tower, on cached vision tokens.

Every sub-module of this package is imported here, so a new PEFT is one module that decorates its
builder with :func:`register_peft` (plus its test); nothing else names it. What the engine needs to
know about it (inputs, backbone, suspect settings, cost) is declared there as capabilities. Its knobs are its own
config section (``[peft.<name>]``): a frozen dataclass of :func:`knob` fields passed as
``register_peft(..., config=...)`` and read by the builder with ``config.section(ItsConfig)``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ..errors import ConfigError
from .base import PEFTS, PEFTCost, PEFTModule, PEFTSpec, knob, register_peft

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

from .adapter import AdapterConfig, FeatureAdapter  # noqa: E402
from .head import TextAnchoredHead  # noqa: E402
from .lora import LoRACLIP, LoRAConfig  # noqa: E402
from .prompt import PromptConfig, PromptLearner  # noqa: E402

__all__ = ["PEFTS", "AdapterConfig", "FeatureAdapter", "LoRACLIP", "LoRAConfig", "PEFTCost", "PEFTModule", "PEFTSpec",
           "PromptConfig", "PromptLearner", "TextAnchoredHead", "build_peft", "knob", "register_peft"]


def build_peft(kind: str, bank: Any, backbone: Any = None, config: Any = None) -> PEFTModule:
    """Build the registered PEFT ``kind`` for a feature bank.

    Parameters
    ----------
    kind : str
        A name in :data:`PEFTS` (``"head"``, ``"prompt"``, ``"adapter"``, ``"lora"``, ...).
    bank : FeatureBank-like
        ``text_features`` ``[C, D]``, ``logit_scale`` and ``class_names`` (and ``manifest``, whose
        templates a text-tower LoRA averages).
    backbone : Backbone-like, optional
        ``model`` and ``tokenizer``; required when the PEFT's spec says ``needs_backbone``.
    config : RunConfig, optional
        Its ``run`` section and the PEFT's own section ``[peft.<kind>]`` (defaults when omitted).

    Returns
    -------
    PEFTModule

    Raises
    ------
    ConfigError
        Unknown kind, or a missing backbone for a PEFT that needs one.
    """
    spec = PEFTS.get(kind)
    if spec.needs_backbone and backbone is None:
        raise ConfigError(f"method.peft={kind!r} needs the backbone (open_clip model + tokenizer)")
    if config is None:
        from ..config import RunConfig

        config = RunConfig()
    return spec.build(bank, backbone, config)
