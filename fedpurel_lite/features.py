"""FeatureBank: a world's images encoded once by the frozen image tower, cached in safetensors.

Cache layout (``cache_dir``): ``<key>.safetensors`` (tensors) and ``<key>.json`` (manifest). The
manifest records every input (model name, weights hash/tag, world fingerprint, transform,
templates, package version) and the SHA-256 of the tensor file. A cache whose inputs differ is
stale and rebuilt; one whose file is unreadable or whose content hash differs is reported with a
warning naming the file and rebuilt, never used. No pickle: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fedpurel_lite import __version__
from fedpurel_lite.backbone import Backbone, load_backbone, sha256_file, zero_shot_classifier
from fedpurel_lite.worlds.base import World

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
#: Default cache folder: ``$FEDPUREL_CACHE`` or the repository's ``data/cache`` (independent of the cwd,
#: so notebooks in ``notebooks/`` share the cache with the CLI and the tests).
DEFAULT_CACHE_DIR = Path(os.environ.get("FEDPUREL_CACHE", Path(__file__).resolve().parent.parent / "data" / "cache"))
_TENSORS = ("train_features", "train_labels", "test_features", "test_labels", "text_features")


class _Preprocessed(torch.utils.data.Dataset):
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
        return self.preprocess(img)


def _fast_path_ok(images: Any, backbone: Backbone) -> bool:
    """``uint8 [N,H,W,3]`` arrays at the model's size take a tensor path (checked against preprocess)."""
    cfg = backbone.preprocess_cfg
    size = cfg.get("size", None)
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4):
        return False
    if tuple(images.shape[1:3]) != size or images.shape[3] != 3:
        return False
    probe = images[: min(8, len(images))]
    fast = _to_tensor(probe, cfg)
    slow = torch.stack([_Preprocessed(probe, backbone.preprocess)[i] for i in range(len(probe))])
    return bool(torch.allclose(fast, slow, atol=1e-5))


def _to_tensor(images: np.ndarray, cfg: dict) -> torch.Tensor:
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
    x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    return (x - mean) / std


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
    model = backbone.model
    device = next(model.parameters()).device
    out = []
    bar = tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False)
    if _fast_path_ok(images, backbone):
        cfg = backbone.preprocess_cfg
        batches = (_to_tensor(images[i : i + batch_size], cfg) for i in range(0, len(images), batch_size))
    else:
        batches = iter(torch.utils.data.DataLoader(_Preprocessed(images, backbone.preprocess), batch_size=batch_size))
    for x in batches:
        out.append(F.normalize(model.encode_image(x.to(device)).float(), dim=-1).cpu())
        bar.update(len(x))
    bar.close()
    return torch.cat(out) if out else torch.empty(0, 0)


def _transform_id(backbone: Backbone) -> str:
    return f"{backbone.preprocess_cfg}|{backbone.preprocess}".replace("\n", " ")


def _inputs(backbone: Backbone, world_fingerprint: str, templates: list[str]) -> dict:
    return {"format": FORMAT_VERSION, "package_version": __version__, "model": backbone.name,
            "pretrained": backbone.pretrained, "weights_id": backbone.weights_id, "world": world_fingerprint,
            "transform": _transform_id(backbone), "templates": list(templates)}


def _key(inputs: dict) -> str:
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return f"{inputs['world'].split(':', 1)[0]}-{inputs['model'].replace('/', '_').replace(':', '_')}-{digest}"


@dataclass
class FeatureBank:
    """Cached image features of a world under a frozen backbone, plus its zero-shot classifier.

    Attributes
    ----------
    train_features, test_features : torch.Tensor
        ``float32 [N, D]``, L2-normalised.
    train_labels, test_labels : torch.Tensor
        ``int64 [N]``.
    text_features : torch.Tensor
        ``float32 [C, D]`` zero-shot classifier, rows L2-normalised.
    logit_scale : float
        CLIP's ``exp(logit_scale)``.
    class_names : list of str
    class_order : numpy.ndarray
        Class ids head to tail.
    manifest : dict
        Inputs, content hash and shapes of the cache.
    """

    train_features: torch.Tensor
    train_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    text_features: torch.Tensor
    logit_scale: float
    class_names: list[str]
    class_order: np.ndarray
    manifest: dict = field(default_factory=dict)
    path: Path | None = None

    def zero_shot_logits(self, features: torch.Tensor) -> torch.Tensor:
        """CLIP zero-shot logits ``logit_scale * features @ text_features.T`` (``[N, C]``)."""
        return self.logit_scale * features @ self.text_features.T

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @classmethod
    def build(cls, backbone: Backbone, world: World, progress: bool = True, batch_size: int = 500) -> FeatureBank:
        """Encode ``world`` with ``backbone`` (no cache involved)."""
        text = zero_shot_classifier(backbone, world.class_names, world.templates)
        tr = encode_images(backbone, world.train_images, batch_size, progress, f"{world.name} train")
        te = encode_images(backbone, world.test_images, batch_size, progress, f"{world.name} test")
        manifest = {"inputs": _inputs(backbone, world.fingerprint(), world.templates),
                    "class_names": list(world.class_names), "class_order": world.class_order.tolist(),
                    "logit_scale": backbone.logit_scale}
        return cls(tr, torch.from_numpy(world.train_labels.copy()), te, torch.from_numpy(world.test_labels.copy()),
                   text, backbone.logit_scale, list(world.class_names), world.class_order.copy(), manifest)

    def save(self, path: str | Path) -> None:
        """Write ``<path>.safetensors`` and ``<path>.json`` atomically (tensors first, manifest last)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).contiguous() for k in _TENSORS}
        tmp = path.with_suffix(".safetensors.tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path.with_suffix(".safetensors"))
        self.manifest.update(content_sha256=sha256_file(path.with_suffix(".safetensors")),
                             shapes={k: list(v.shape) for k, v in tensors.items()})
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest, indent=1, sort_keys=True))
        os.replace(tmp, path.with_suffix(".json"))
        self.path = path

    @classmethod
    def _try_load(cls, path: Path, inputs: dict) -> FeatureBank | None:
        """Load a matching, intact cache or return ``None`` (warning on corruption)."""
        from safetensors.torch import load_file

        mpath, tpath = path.with_suffix(".json"), path.with_suffix(".safetensors")
        if not mpath.exists() and not tpath.exists():
            return None
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            warnings.warn(f"Feature cache manifest {mpath} is unreadable ({exc}); rebuilding", stacklevel=3)
            return None
        if manifest.get("inputs") != inputs:
            log.info("Feature cache %s is stale (inputs differ); rebuilding", mpath)
            return None
        try:
            digest = sha256_file(tpath)
        except OSError as exc:
            warnings.warn(f"Feature cache {tpath} is unreadable ({exc}); rebuilding", stacklevel=3)
            return None
        if digest != manifest.get("content_sha256"):
            warnings.warn(f"Feature cache {tpath} is corrupt (content hash mismatch); rebuilding", stacklevel=3)
            return None
        try:
            t = load_file(str(tpath))
            if {k: list(v.shape) for k, v in t.items()} != manifest.get("shapes"):
                raise ValueError("tensor shapes differ from the manifest")
        except Exception as exc:  # noqa: BLE001 - any failure means: do not use this cache
            warnings.warn(f"Feature cache {tpath} is unreadable ({exc}); rebuilding", stacklevel=3)
            return None
        return cls(t["train_features"], t["train_labels"], t["test_features"], t["test_labels"], t["text_features"],
                   float(manifest["logit_scale"]), list(manifest["class_names"]),
                   np.asarray(manifest["class_order"], dtype=np.int64), manifest, path)

    @classmethod
    def load_or_build(cls, backbone: Backbone, world: World, cache_dir: str | Path | None = None,
                      progress: bool = True, batch_size: int = 500) -> FeatureBank:
        """Reuse a matching cache in ``cache_dir``; otherwise encode the world and write the cache.

        Parameters
        ----------
        backbone : Backbone
        world : World
        cache_dir : str or Path, optional
            Cache folder (created if needed); default :data:`DEFAULT_CACHE_DIR`.
        progress : bool
            Show progress bars while encoding.
        batch_size : int
            Images per forward pass.

        Returns
        -------
        FeatureBank
        """
        inputs = _inputs(backbone, world.fingerprint(), world.templates)
        path = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR) / _key(inputs)
        bank = cls._try_load(path, inputs)
        if bank is None:
            bank = cls.build(backbone, world, progress, batch_size)
            bank.save(path)
        return bank


def load_embedded_bank(cache_dir: str | Path | None = None, shift: float | None = None, seed: int = 0,
                       progress: bool = True) -> FeatureBank:
    """The default backbone (shipped tiny CLIP) on the shapes target world, cached.

    A warm cache is read without rendering the world (about a second); a cold one renders and
    encodes 60,000 images.

    Parameters
    ----------
    cache_dir : str or Path, optional
        Feature cache folder (default :data:`DEFAULT_CACHE_DIR`).
    shift : float, optional
        Target shift (default :data:`fedpurel_lite.worlds.shapes.DEFAULT_SHIFT`).
    seed : int
        World seed.
    progress : bool
        Show progress bars when encoding.

    Returns
    -------
    FeatureBank
    """
    from fedpurel_lite.worlds import shapes

    t0 = time.time()
    backbone = load_backbone()
    shift = shapes.DEFAULT_SHIFT if shift is None else shift
    inputs = _inputs(backbone, shapes.shapes_fingerprint("target", shift, seed), shapes.TEMPLATES)
    cache_dir = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR)
    bank = FeatureBank._try_load(cache_dir / _key(inputs), inputs)
    if bank is None:
        bank = FeatureBank.load_or_build(backbone, shapes.load_shapes("target", shift, seed), cache_dir, progress)
    log.info("embedded bank ready in %.1fs", time.time() - t0)
    return bank
