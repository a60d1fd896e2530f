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
checked as :mod:`fedpurel_lite.features` does: stale entries are rebuilt, damaged or altered ones
are reported once (:class:`~fedpurel_lite.features.FeatureCacheWarning`), moved aside
(``<file>.corrupt-<n>``) and rebuilt.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import features as fb
from .backbone import Backbone, resolve_device, sha256_file
from .cache_entry import DIGEST, manifest_digest, write_entry
from .lora_tower import vision_tokens
from .safe_load import load_json

_TENSORS = ("train_tokens", "test_tokens")


@dataclass
class TokenBank:
    """A :class:`~fedpurel_lite.features.FeatureBank` (every attribute readable here) plus vision tokens.

    Attributes
    ----------
    features : FeatureBank-like
        Final image features, labels, zero-shot text features, logit scale, class data.
    train_tokens, test_tokens : torch.Tensor
        ``float32 [N, tokens, width]``: the input of the vision tower's first block.
    token_manifest : dict
        The token cache's manifest.
    token_path : Path or None
        The token cache entry (without suffix).
    """

    features: Any
    train_tokens: torch.Tensor
    test_tokens: torch.Tensor
    token_manifest: dict = field(default_factory=dict)
    token_path: Path | None = None

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("features")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

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

    ``images`` as in :func:`~fedpurel_lite.features.encode_images` (``uint8`` array or dataset).
    """
    visual = backbone.model.visual
    device = next(backbone.model.parameters()).device
    if fb._fast_path_ok(images, backbone):
        cfg = backbone.preprocess_cfg
        batches = (fb._to_tensor(images[i:i + batch_size], cfg) for i in range(0, len(images), batch_size))
    else:
        data = fb._Preprocessed(images, backbone.preprocess)
        batches = iter(torch.utils.data.DataLoader(data, batch_size=batch_size))
    out = []
    bar = tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False)
    for x in batches:
        out.append(vision_tokens(visual, x.to(device)).cpu())
        bar.update(len(x))
    bar.close()
    return torch.cat(out) if out else torch.empty(0, 0, 0)


def token_inputs(backbone: Backbone, world_fingerprint: str) -> dict:
    """Everything a token cache entry depends on (the feature cache's inputs without the templates)."""
    inputs = fb._inputs(backbone, world_fingerprint, [])
    inputs.pop("templates")
    return {**inputs, "kind": "vision-tokens"}


def _read(base: Path, inputs: dict) -> dict[str, torch.Tensor] | None:
    """The intact entry's tensors; ``None`` if absent or stale; raises ``features._Damaged`` otherwise."""
    from safetensors.torch import load_file

    mpath, tpath = base.with_suffix(".json"), base.with_suffix(".safetensors")
    if not mpath.exists():
        if tpath.exists():
            raise fb._Damaged(mpath, "the manifest is missing (its tensor file is there)")
        return None
    try:
        manifest = load_json(mpath, "vision-token cache manifest")
        altered = manifest_digest(manifest) != manifest[DIGEST]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise fb._Damaged(mpath, f"the manifest is unreadable or has no valid {DIGEST} ({exc!r})") from None
    if altered:
        raise fb._Damaged(mpath, "the manifest was altered (its SHA-256 does not match)")
    if manifest.get("inputs") != inputs:
        return None
    if not tpath.exists():
        raise fb._Damaged(tpath, "the tensor file is missing (its manifest is there)")
    if sha256_file(tpath) != manifest.get("content_sha256"):
        raise fb._Damaged(tpath, "the tensor file is truncated or altered (content hash mismatch)")
    try:
        t = load_file(str(tpath))
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use this cache
        raise fb._Damaged(tpath, f"the tensor file does not load ({exc})") from None
    if set(t) != set(_TENSORS) or {k: list(v.shape) for k, v in t.items()} != manifest.get("shapes"):
        raise fb._Damaged(mpath, "its shapes do not fit the tensors")
    return t


def _save(base: Path, tensors: dict[str, torch.Tensor], inputs: dict) -> dict:
    """Write the tensors, then the manifest (:func:`~fedpurel_lite.cache_entry.write_entry`)."""
    return write_entry(base, tensors, {"inputs": inputs})


def load_or_build_tokens(features: Any, backbone: Backbone, world_fingerprint: str, make_world: Callable[[], Any],
                         cache_dir: str | Path | None = None, progress: bool = True, batch_size: int = 500,
                         device: str | None = None) -> TokenBank:
    """The :class:`TokenBank` of ``features``: tokens from an intact cache entry, else encoded and cached.

    Parameters
    ----------
    features : FeatureBank-like
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
    base = Path(cache_dir if cache_dir is not None else fb.DEFAULT_CACHE_DIR) / f"tokens-{fb._key(inputs)}"
    base.parent.mkdir(parents=True, exist_ok=True)
    with fb._locked(base):
        try:
            tensors = _read(base, inputs)
        except fb._Damaged as err:
            moved = fb._move_aside(base.with_suffix(".json"), base.with_suffix(".safetensors"))
            tensors, (path, reason) = None, err.args
            warnings.warn(f"Token cache file {path} is damaged: {reason}. Moved aside as "
                          f"{', '.join(moved) or 'nothing'} (kept for inspection) and rebuilding the cache.",
                          fb.FeatureCacheWarning, stacklevel=2)
        if tensors is None:
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
            _save(base, tensors, inputs)
    manifest = load_json(base.with_suffix(".json"), "vision-token cache manifest")
    return TokenBank(features, tensors["train_tokens"], tensors["test_tokens"], manifest, base)


def model_inputs(bank: Any, split: str) -> torch.Tensor:
    """What the PEFT reads for ``split`` (``"train"`` or ``"test"``): tokens of a TokenBank, else features."""
    inputs = getattr(bank, f"{split}_inputs", None)
    return inputs if inputs is not None else getattr(bank, f"{split}_features")
