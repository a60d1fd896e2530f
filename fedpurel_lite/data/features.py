"""FeatureBank: a world's images encoded once by the frozen image tower, cached in safetensors.

Cache (``cache_dir``): ``<key>.safetensors``, ``<key>.json`` (manifest: every input, class data, the
tensor file's SHA-256 and, over all of it, ``manifest_sha256``) and ``<key>.lock`` (serialises
builders), written, checked and rebuilt by :mod:`fedpurel_lite.data.cache_entry`: stale caches are
rebuilt; damaged or altered ones are reported once, moved aside (``<file>.corrupt-<n>``, never
deleted) and rebuilt. Writes are atomic, manifest last. No pickle.

This module encodes and caches; it does not decide which bank a run needs
(:func:`fedpurel_lite.data.bank.build_bank` does).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fedpurel_lite import __version__, kernels
from fedpurel_lite.data import cache_entry
from fedpurel_lite.data.backbone import Backbone, load_backbone, resolve_device, zero_shot_classifier
from fedpurel_lite.data.cache_entry import DIGEST, FeatureCacheWarning, entry_key, sha256_file
from fedpurel_lite.worlds.base import World

__all__ = ["DEFAULT_CACHE_DIR", "FORMAT_VERSION", "FeatureBank", "FeatureCacheWarning", "encode_images",
           "feature_inputs", "image_batches", "load_embedded_bank", "sha256_file"]

log = logging.getLogger(__name__)
FORMAT_VERSION = 2
#: Default cache folder: ``$FEDPUREL_CACHE`` or the repository's ``data/cache`` (shared whatever the cwd).
DEFAULT_CACHE_DIR = Path(os.environ.get("FEDPUREL_CACHE", Path(__file__).resolve().parents[2] / "data" / "cache"))
_TENSORS = ("train_features", "train_labels", "test_features", "test_labels", "text_features")


class _Preprocessed(torch.utils.data.Dataset[torch.Tensor]):
    """Applies the backbone's eval transform to a dataset or an image array (PIL path)."""

    def __init__(self, images: Any, preprocess: Any) -> None:
        self.images, self.preprocess = images, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        item = self.images[i]
        img = item[0] if isinstance(item, tuple) else item
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        x: torch.Tensor = self.preprocess(img)
        return x


def _fast_path_ok(images: Any, backbone: Backbone) -> bool:
    """``uint8 [N,H,W,3]`` arrays at the model's size take a tensor path (checked against preprocess)."""
    cfg = backbone.preprocess_cfg
    size = cfg.get("size", None)
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[1:] == (*size, 3)):
        return False
    probe = images[: min(8, len(images))]
    fast = _to_tensor(probe, cfg)
    slow = torch.stack([_Preprocessed(probe, backbone.preprocess)[i] for i in range(len(probe))])
    return bool(torch.allclose(fast, slow, atol=1e-5))


def _to_tensor(images: np.ndarray, cfg: dict[str, Any]) -> torch.Tensor:
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
    x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    return (x - mean) / std


def image_batches(backbone: Backbone, images: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """The images preprocessed by the backbone's eval transform, ``batch_size`` at a time (``[b, 3, H, W]``).

    ``uint8 [N,H,W,3]`` arrays at the model's size take a tensor path (checked against the
    transform on the first images); anything else goes through the transform image by image.
    """
    if _fast_path_ok(images, backbone):
        cfg = backbone.preprocess_cfg
        return (_to_tensor(images[i : i + batch_size], cfg) for i in range(0, len(images), batch_size))
    return iter(torch.utils.data.DataLoader(_Preprocessed(images, backbone.preprocess), batch_size=batch_size))


@torch.no_grad()
def encode_images(backbone: Backbone, images: Any, batch_size: int = 500, progress: bool = True,
                  desc: str = "encode") -> torch.Tensor:
    """Encode images with the frozen image tower into L2-normalised ``float32 [N, D]`` features.

    Parameters
    ----------
    backbone : Backbone
    images : numpy.ndarray or Dataset
        ``uint8 [N,H,W,3]`` array or a dataset yielding ``(PIL image, label)`` / PIL images.
    batch_size : int
        Images per forward pass.
    progress : bool
        Show a tqdm progress bar.
    desc : str
        Progress-bar label.

    Returns
    -------
    torch.Tensor
    """
    model: Any = backbone.model
    device = next(model.parameters()).device
    out = []
    bar = tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False)
    for x in image_batches(backbone, images, batch_size):
        out.append(F.normalize(model.encode_image(x.to(device)).float(), dim=-1).cpu())
        bar.update(len(x))
    bar.close()
    return torch.cat(out) if out else torch.empty(0, 0)


def _transform_id(backbone: Backbone) -> str:
    return f"{backbone.preprocess_cfg}|{backbone.preprocess}".replace("\n", " ")


def feature_inputs(backbone: Backbone, world_fingerprint: str, templates: list[str]) -> dict[str, Any]:
    """Everything a feature cache entry depends on (its key is :func:`~fedpurel_lite.data.cache_entry.entry_key` of
    it)."""
    return {"format": FORMAT_VERSION, "package_version": __version__, "model": backbone.name,
            "pretrained": backbone.pretrained, "weights_id": backbone.weights_id, "world": world_fingerprint,
            "transform": _transform_id(backbone), "templates": list(templates), "kernels": kernels.tag()}


_inputs, _key = feature_inputs, entry_key  # the names older callers import


@dataclass
class FeatureBank:
    """Cached image features of a world under a frozen backbone, plus its zero-shot classifier.

    Attributes
    ----------
    train_features, test_features, train_labels, test_labels : torch.Tensor
        ``float32 [N, D]`` L2-normalised features, ``int64 [N]`` labels.
    text_features : torch.Tensor
        ``float32 [C, D]`` zero-shot classifier, rows L2-normalised.
    logit_scale : float
        CLIP's ``exp(logit_scale)``.
    class_names, class_order : list of str, numpy.ndarray
        Class names; class ids head to tail.
    manifest : dict
        Inputs, class data, content hash, shapes and ``manifest_sha256`` of the cache.
    """

    train_features: torch.Tensor
    train_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    text_features: torch.Tensor
    logit_scale: float
    class_names: list[str]
    class_order: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    #: what a PEFT reading this bank gets (:class:`~fedpurel_lite.data.bank.Bank`): the cached features
    inputs: ClassVar[Literal["features"]] = "features"

    @property
    def train_inputs(self) -> torch.Tensor:
        """What a feature-input PEFT reads for the training images: ``train_features``."""
        return self.train_features

    @property
    def test_inputs(self) -> torch.Tensor:
        """What a feature-input PEFT reads for the test images: ``test_features``."""
        return self.test_features

    def zero_shot_logits(self, features: torch.Tensor) -> torch.Tensor:
        """CLIP zero-shot logits ``logit_scale * features @ text_features.T`` (``[N, C]``)."""
        return self.logit_scale * features @ self.text_features.T

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @classmethod
    def build(cls, backbone: Backbone, world: World, progress: bool = True, batch_size: int = 500,
              device: str | None = None) -> FeatureBank:
        """Encode ``world`` with ``backbone`` (no cache involved).

        Parameters
        ----------
        backbone : Backbone
        world : World
        progress : bool
            Show progress bars while encoding.
        batch_size : int
            Images per forward pass.
        device : {"cpu", "cuda", "auto"}, optional
            Where to encode (``"auto"``: CUDA if available); default: the backbone's device.

        Returns
        -------
        FeatureBank
            CPU ``float32`` features whatever the device.
        """
        model = backbone.model
        home = next(model.parameters()).device
        dev = home if device is None else resolve_device(device)
        model.to(dev)
        try:
            text = zero_shot_classifier(backbone, world.class_names, world.templates)
            tr = encode_images(backbone, world.train_images, batch_size, progress, f"{world.name} train")
            te = encode_images(backbone, world.test_images, batch_size, progress, f"{world.name} test")
        finally:
            model.to(home)
        manifest = {"inputs": feature_inputs(backbone, world.fingerprint(), world.templates),
                    "class_names": list(world.class_names), "class_order": world.class_order.tolist(),
                    "logit_scale": backbone.logit_scale, "encoded_on": dev.type}
        return cls(tr, torch.from_numpy(world.train_labels.copy()), te, torch.from_numpy(world.test_labels.copy()),
                   text, backbone.logit_scale, list(world.class_names), world.class_order.copy(), manifest)

    def save(self, path: str | Path) -> None:
        """Write ``<path>.safetensors`` then ``<path>.json`` (see
        :func:`~fedpurel_lite.data.cache_entry.write_entry`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        manifest = {k: v for k, v in self.manifest.items() if k != DIGEST}
        self.manifest = cache_entry.write_entry(path, {k: getattr(self, k) for k in _TENSORS}, manifest)
        self.path = path

    @classmethod
    def _read(cls, base: Path, inputs: dict[str, Any]) -> FeatureBank | None:
        """The intact cache at ``base``; ``None`` if absent or stale; raises ``cache_entry.Damaged`` otherwise."""
        entry = cache_entry.read_entry(base, inputs, _TENSORS, "feature-cache manifest")
        if entry is None:
            if base.with_suffix(".json").exists():
                log.info("Feature cache %s is stale (inputs differ); rebuilding", base.with_suffix(".json"))
            return None
        manifest, t = entry
        try:
            names, order = manifest["class_names"], np.asarray(manifest["class_order"], dtype=np.int64)
            scale = float(manifest["logit_scale"])
            ok = (isinstance(names, list) and all(isinstance(n, str) for n in names) and math.isfinite(scale)
                  and len(names) == len(t["text_features"]) == len(order) and scale > 0
                  and sorted(order.tolist()) == list(range(len(names))))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise cache_entry.Damaged(base.with_suffix(".json"),
                                      "its class names, class order or logit scale do not fit the tensors")
        return cls(t["train_features"], t["train_labels"], t["test_features"], t["test_labels"], t["text_features"],
                   scale, list(names), order, manifest, base)

    @classmethod
    def _load_or_build(cls, cache_dir: str | Path | None, inputs: dict[str, Any],
                       make: Callable[[], tuple[Backbone, World]], progress: bool, batch_size: int,
                       device: str | None) -> FeatureBank:
        """Under the entry's lock: read the cache, or report and move aside a damaged one, build and save."""
        base = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR) / entry_key(inputs)

        def build() -> FeatureBank:
            backbone, world = make()
            bank = cls.build(backbone, world, progress, batch_size, device=device)
            bank.save(base)
            return bank

        return cache_entry.load_or_build_entry(base, lambda: cls._read(base, inputs), build, "Feature cache",
                                               stacklevel=3)

    @classmethod
    def load_or_build(cls, backbone: Backbone, world: World, cache_dir: str | Path | None = None,
                      progress: bool = True, batch_size: int = 500, device: str | None = None) -> FeatureBank:
        """Reuse a matching, intact cache in ``cache_dir``; otherwise encode the world and write the cache.

        Parameters
        ----------
        backbone : Backbone
        world : World
        cache_dir : str or Path, optional
            Cache folder (created if needed; default :data:`DEFAULT_CACHE_DIR`). Concurrent builders of
            one entry are serialised by a lock: the second waits, then reuses the first's cache.
        progress : bool
            Show progress bars while encoding.
        batch_size : int
            Images per forward pass.
        device : {"cpu", "cuda", "auto"}, optional
            Where to encode if the cache must be built (default: where the backbone is).

        Returns
        -------
        FeatureBank
            A damaged or altered cache gives one :class:`FeatureCacheWarning` naming the file.
        """
        inputs = feature_inputs(backbone, world.fingerprint(), world.templates)
        return cls._load_or_build(cache_dir, inputs, lambda: (backbone, world), progress, batch_size, device)


def load_embedded_bank(cache_dir: str | Path | None = None, shift: float | None = None, seed: int = 0,
                       progress: bool = True, device: str = "cpu", templates: list[str] | None = None,
                       variant: str = "stratified") -> FeatureBank:
    """The default backbone (shipped tiny CLIP) on the shapes target world, cached.

    A warm cache is read without rendering the world (about a second); a cold one renders and encodes 60,000 images.

    Parameters
    ----------
    cache_dir : str or Path, optional
        Feature cache folder (default :data:`DEFAULT_CACHE_DIR`).
    shift, seed : float, int
        Target shift (default :data:`fedpurel_lite.worlds.shapes.DEFAULT_SHIFT`) and world seed.
    progress, device : bool, {"cpu", "cuda", "auto"}
        Progress bars, and where the backbone encodes a cold cache (``"auto"``: CUDA when available).
    templates : list of str, optional
        Zero-shot text templates (default: the world's 7; part of the cache key).
    variant : str
        Target variant (:data:`fedpurel_lite.worlds.shapes.VARIANTS`).

    Returns
    -------
    FeatureBank
    """
    from fedpurel_lite.worlds import shapes
    backbone, templates = load_backbone(device=device), list(templates or shapes.TEMPLATES)
    shift = shapes.DEFAULT_SHIFT if shift is None else shift
    inputs = feature_inputs(backbone, shapes.shapes_fingerprint("target", shift, seed, variant=variant), templates)
    world = lambda: (backbone, replace(shapes.load_shapes("target", shift, seed, variant=variant),  # noqa: E731
                                       templates=templates))
    return FeatureBank._load_or_build(cache_dir, inputs, world, progress, 500, None)
