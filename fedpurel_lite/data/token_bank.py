"""TokenBank: a feature bank plus the vision tower's input tokens of every image, cached once.

A PEFT inside the image tower (vision LoRA) cannot train on cached final features, but the tower's
prefix -- patch embedding, class token, positional embedding and ``ln_pre`` -- is frozen, so its
output (the first block's input, ``[tokens, width]`` per image) is computed once per world and
backbone and cached like the features. Every step then runs only the transformer blocks. Against
caching the preprocessed images instead, the tokens cost more disk (``17 x 128`` floats per image
on the embedded world, 8.7 KB vs 3 KB) but need no world rendering, no image transform and no
patch embedding at run time, and they serve any backbone and any image transform unchanged.

Cache (``cache_dir``): ``<key>.safetensors`` + ``<key>.json`` (manifest: every input, the tensor
file's SHA-256, shapes and ``manifest_sha256`` over all of it) + ``<key>.lock``, written and
checked by :mod:`fedpurel_lite.data.cache_entry` like the feature cache: stale entries are rebuilt,
damaged or altered ones are reported once (:class:`~fedpurel_lite.data.features.FeatureCacheWarning`),
moved aside (``<file>.corrupt-<n>``) and rebuilt. The vision prefix is open_clip's private
``_embeds``, read through :mod:`fedpurel_lite.data.openclip_adapter`; this module knows nothing of
the PEFTs that train on the tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbone import Backbone, resolve_device
from .cache_entry import entry_key, load_or_build_entry, read_entry, write_entry
from .features import DEFAULT_CACHE_DIR, FeatureBank, feature_inputs, image_batches
from .openclip_adapter import vision_tokens
from .safe_load import load_json

if TYPE_CHECKING:
    pass

__all__ = ["TokenBank", "encode_tokens", "load_or_build_tokens", "token_inputs"]

_TENSORS = ("train_tokens", "test_tokens")


@dataclass
class TokenBank:
    """A :class:`~fedpurel_lite.data.features.FeatureBank` (every attribute readable here) plus vision tokens.

    Attributes
    ----------
    features : FeatureBank
        Final image features, labels, zero-shot text features, logit scale, class data.
    train_tokens, test_tokens : torch.Tensor
        ``float32 [N, tokens, width]``: the input of the vision tower's first block.
    token_manifest : dict
        The token cache's manifest.
    token_path : Path or None
        The token cache entry (without suffix).
    """

    features: FeatureBank
    train_tokens: torch.Tensor
    test_tokens: torch.Tensor
    token_manifest: dict[str, Any] = field(default_factory=dict)
    token_path: Path | None = None
    #: what a PEFT reading this bank gets (:class:`~fedpurel_lite.data.bank.Bank`): the vision tokens
    inputs: ClassVar[Literal["tokens"]] = "tokens"

    def __getattr__(self, name: str) -> Any:  # anything else of the feature bank (num_classes, path, ...)
        inner = self.__dict__.get("features")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    @property
    def train_features(self) -> torch.Tensor:
        """The feature bank's final training-image features (the teacher reads these)."""
        return self.features.train_features

    @property
    def test_features(self) -> torch.Tensor:
        """The feature bank's final test-image features."""
        return self.features.test_features

    @property
    def train_labels(self) -> torch.Tensor:
        """Training labels."""
        return self.features.train_labels

    @property
    def test_labels(self) -> torch.Tensor:
        """Test labels."""
        return self.features.test_labels

    @property
    def text_features(self) -> torch.Tensor:
        """The zero-shot classifier ``[C, D]``."""
        return self.features.text_features

    @property
    def logit_scale(self) -> float:
        """CLIP's ``exp(logit_scale)``."""
        return self.features.logit_scale

    @property
    def class_names(self) -> list[str]:
        """Class names."""
        return self.features.class_names

    @property
    def class_order(self) -> np.ndarray:
        """Class ids head to tail."""
        return self.features.class_order

    @property
    def manifest(self) -> dict[str, Any]:
        """The feature cache's manifest (the token cache's is :attr:`token_manifest`)."""
        return self.features.manifest

    def zero_shot_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on final image features (the feature bank's)."""
        return self.features.zero_shot_logits(features)

    @property
    def train_inputs(self) -> torch.Tensor:
        """What a token-input PEFT reads for the training images."""
        return self.train_tokens

    @property
    def test_inputs(self) -> torch.Tensor:
        """What a token-input PEFT reads for the test images."""
        return self.test_tokens


@torch.no_grad()
def encode_tokens(backbone: Backbone, images: Any, batch_size: int = 500, progress: bool = True,
                  desc: str = "tokens") -> torch.Tensor:
    """The frozen vision prefix of every image, ``float32 [N, tokens, width]`` (on the CPU).

    ``images`` as in :func:`~fedpurel_lite.data.features.encode_images` (``uint8`` array or dataset).
    """
    visual: Any = backbone.model.visual
    device = next(backbone.model.parameters()).device
    out = []
    bar = tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False)
    for x in image_batches(backbone, images, batch_size):
        out.append(vision_tokens(visual, x.to(device)).cpu())
        bar.update(len(x))
    bar.close()
    return torch.cat(out) if out else torch.empty(0, 0, 0)


def token_inputs(backbone: Backbone, world_fingerprint: str) -> dict[str, Any]:
    """Everything a token cache entry depends on (the feature cache's inputs without the templates)."""
    inputs = feature_inputs(backbone, world_fingerprint, [])
    inputs.pop("templates")
    return {**inputs, "kind": "vision-tokens"}


def load_or_build_tokens(features: FeatureBank, backbone: Backbone, world_fingerprint: str,
                         make_world: Callable[[], Any], cache_dir: str | Path | None = None, progress: bool = True,
                         batch_size: int = 500, device: str | None = None) -> TokenBank:
    """The :class:`TokenBank` of ``features``: tokens from an intact cache entry, else encoded and cached.

    Parameters
    ----------
    features : FeatureBank
        The same world's feature bank under the same backbone.
    backbone : Backbone
    world_fingerprint : str
        The world's fingerprint (part of the cache key).
    make_world : callable
        Returns the :class:`~fedpurel_lite.worlds.base.World` (called only when encoding).
    cache_dir : str or Path, optional
        Cache folder (default: the feature cache's).
    progress : bool
        Progress bars while encoding.
    batch_size : int
        Images per pass.
    device : str, optional
        Where to encode (default: where the backbone is).

    Returns
    -------
    TokenBank
        A damaged or altered entry gives one ``FeatureCacheWarning`` naming the file.
    """
    inputs = token_inputs(backbone, world_fingerprint)
    base = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR) / f"tokens-{entry_key(inputs)}"

    def read() -> dict[str, torch.Tensor] | None:
        entry = read_entry(base, inputs, _TENSORS, "vision-token cache manifest")
        return None if entry is None else entry[1]

    def build() -> dict[str, torch.Tensor]:
        world = make_world()
        model = backbone.model
        home = next(model.parameters()).device
        model.to(resolve_device(device) if device is not None else home)
        try:
            tensors = {"train_tokens": encode_tokens(backbone, world.train_images, batch_size, progress,
                                                     f"{world.name} train tokens"),
                       "test_tokens": encode_tokens(backbone, world.test_images, batch_size, progress,
                                                    f"{world.name} test tokens")}
        finally:
            model.to(home)
        write_entry(base, tensors, {"inputs": inputs})
        return tensors

    tensors = load_or_build_entry(base, read, build, "Token cache", stacklevel=2)
    manifest = load_json(base.with_suffix(".json"), "vision-token cache manifest")
    return TokenBank(features, tensors["train_tokens"], tensors["test_tokens"], manifest, base)

