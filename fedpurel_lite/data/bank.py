"""The bank a run reads: what every bank offers (:class:`Bank`) and the one place it is built (:func:`build_bank`).

A bank holds a world encoded once under the frozen backbone: the labels, the class names and
head-to-tail order, the zero-shot teacher (text features and logit scale) and, for the PEFT, its
**inputs** -- the cached final image features (:class:`~fedpurel_lite.data.features.FeatureBank`) or,
for a PEFT inside the image tower, the tower's cached input tokens on top of them
(:class:`~fedpurel_lite.data.token_bank.TokenBank`). The bank says which (``bank.inputs``); the PEFT's
registry entry says which it reads (``PEFTSpec.inputs_for(config)``); :func:`build_bank` gives it.

The flow is one way::

    build_bank(config)
      -> world_source(config)            the world plugin's fingerprint and loader (worlds.source)
      -> features.FeatureBank            feature cache (cache_entry); the backbone encodes a cold one
      -> token_bank.load_or_build_tokens only when the PEFT reads tokens (cache_entry; the vision
                                         prefix through openclip_adapter)

and none of those modules imports the assembly, the PEFTs or this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
import torch

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..worlds.base import World
    from .backbone import Backbone
    from .features import FeatureBank

__all__ = ["Bank", "FeatureSource", "InputKind", "backbone_for", "build_bank", "input_kind", "model_inputs",
           "world_source"]

#: what a PEFT reads: cached final image features ``[N, D]`` or the vision tower's input tokens ``[N, L, width]``
InputKind = Literal["features", "tokens"]


class FeatureSource(Protocol):
    """The least a bank holds: features and labels of both splits, and the zero-shot teacher's pieces.

    Attributes
    ----------
    train_features, test_features : torch.Tensor
        ``float32 [N, D]`` L2-normalised final image features (the teacher reads these).
    train_labels, test_labels : torch.Tensor
        ``int64 [N]``.
    text_features : torch.Tensor
        ``float32 [C, D]`` zero-shot classifier, rows L2-normalised.
    logit_scale : float
        CLIP's ``exp(logit_scale)``.
    class_names : list of str
    class_order : numpy.ndarray
        Class ids head to tail.
    """

    @property
    def train_features(self) -> torch.Tensor: ...

    @property
    def test_features(self) -> torch.Tensor: ...

    @property
    def train_labels(self) -> torch.Tensor: ...

    @property
    def test_labels(self) -> torch.Tensor: ...

    @property
    def text_features(self) -> torch.Tensor: ...

    @property
    def logit_scale(self) -> float: ...

    @property
    def class_names(self) -> list[str]: ...

    @property
    def class_order(self) -> np.ndarray: ...


class Bank(FeatureSource, Protocol):
    """What every bank offers the engine: a :class:`FeatureSource` plus the PEFT's inputs, the teacher and the manifest.

    Attributes
    ----------
    inputs : {"features", "tokens"}
        What :attr:`train_inputs` / :attr:`test_inputs` hold.
    train_inputs, test_inputs : torch.Tensor
        What the PEFT reads: ``float32 [N, D]`` features or ``[N, L, width]`` tokens.
    manifest : dict
        The feature cache's manifest (inputs such as the templates, class data, hashes).
    """

    @property
    def inputs(self) -> InputKind: ...

    @property
    def train_inputs(self) -> torch.Tensor: ...

    @property
    def test_inputs(self) -> torch.Tensor: ...

    @property
    def manifest(self) -> dict[str, Any]: ...

    def zero_shot_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The teacher: ``logit_scale * features @ text_features.T`` (``[N, C]``)."""
        ...


def input_kind(bank: FeatureSource) -> InputKind:
    """What ``bank`` holds for the PEFT: its declared ``inputs`` (features for a :class:`FeatureSource` without one)."""
    kind = getattr(bank, "inputs", "features")
    if kind == "features" or kind == "tokens":
        return "features" if kind == "features" else "tokens"
    raise TypeError(f"{type(bank).__name__}.inputs is {kind!r}; a bank holds 'features' or 'tokens'")


def model_inputs(bank: FeatureSource, split: str) -> torch.Tensor:
    """What the PEFT reads for ``split`` (``"train"`` or ``"test"``): the bank's tokens or its features."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: 'train' or 'test'")
    kind = input_kind(bank)
    x: torch.Tensor = getattr(bank, f"{split}_inputs" if kind == "tokens" else f"{split}_features")
    return x


def _device(config: RunConfig) -> str:
    from .backbone import resolve_device

    return str(resolve_device(config.world.device))


def backbone_for(config: RunConfig) -> Backbone:
    """The config's backbone on its device (open_clip model, tokenizer, preprocessing)."""
    from .backbone import load_backbone

    return load_backbone(config.world.backbone, config.world.pretrained or None, device=_device(config))


def _is_embedded(config: RunConfig) -> bool:
    """The shipped defaults: the embedded world and tiny CLIP, whose cache key is known without rendering the world."""
    world, shipped = config.world, type(config.world)()
    return (world.name, world.backbone, world.pretrained) == (shipped.name, shipped.backbone, shipped.pretrained)


def world_source(config: RunConfig) -> tuple[str, Callable[[], World]]:
    """The config's world fingerprint and a function that loads the world (without loading it when it can tell)."""
    from .. import worlds

    return worlds.source(config)


def _feature_bank(config: RunConfig, backbone: Backbone | None, progress: bool) -> Bank:
    """The world's feature bank under the config's backbone, from the feature cache or encoded."""
    from ..engine.preflight import cache_dir
    from ..worlds.base import SINGLE_TEMPLATE
    from . import features

    device = _device(config)
    single = [SINGLE_TEMPLATE] if config.world.templates == "single" else None
    if _is_embedded(config) and backbone is None:
        variant = config.plugin_section("world", config.world.name).variant
        return features.load_embedded_bank(cache_dir=cache_dir(config), progress=progress, device=device,
                                           templates=single, variant=variant)
    if backbone is None:
        backbone = backbone_for(config)
    world = world_source(config)[1]()
    if single:  # the world's text features from the one template (the cache key holds the templates)
        world.templates = single
    return features.FeatureBank.load_or_build(backbone, world, cache_dir(config), progress=progress, device=device)


def build_bank(config: RunConfig, backbone: Backbone | None = None, progress: bool = True, *,
               features: FeatureSource | None = None, inputs: InputKind | None = None) -> Bank:
    """The bank a run of ``config`` reads: the one place that decides features or tokens and calls the caches.

    Parameters
    ----------
    config : RunConfig
        Its world (what to encode, where to cache, on which device) and its PEFT (what it reads).
    backbone : Backbone, optional
        Reused when a cache must be built (loaded otherwise; never for a warm embedded cache).
    progress : bool
        Progress bars while encoding.
    features : Bank, optional
        A bank of this world already in memory (not re-read from the cache): returned as it is when
        it holds the inputs asked for, its feature bank when features are asked of a token bank,
        the token bank on top of it when tokens are asked of a feature bank.
    inputs : {"features", "tokens"}, optional
        What the bank must hold (default: what the config's PEFT declares it reads).

    Returns
    -------
    Bank
        A :class:`~fedpurel_lite.data.features.FeatureBank` or a :class:`~fedpurel_lite.data.token_bank.TokenBank`.
    """
    from .token_bank import TokenBank

    if inputs is None:
        from ..peft import PEFTS

        inputs = PEFTS.get(config.method.peft).inputs_for(config)  # type: ignore[assignment]
    bank = features if features is not None else _feature_bank(config, backbone, progress)
    if inputs == input_kind(bank):
        return cast(Bank, bank)  # a bare FeatureSource given by the caller is used as it is
    if inputs == "features":
        if isinstance(bank, TokenBank):
            inner: Bank = bank.features
            return inner
        raise TypeError(f"a {type(bank).__name__} holds {input_kind(bank)!r}, not features")
    from ..engine.preflight import cache_dir
    from .token_bank import load_or_build_tokens

    if backbone is None:
        backbone = backbone_for(config)
    fingerprint, make_world = world_source(config)
    return load_or_build_tokens(cast("FeatureBank", bank), backbone, fingerprint, make_world, cache_dir(config),
                                progress, device=_device(config))
