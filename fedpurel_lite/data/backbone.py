"""One factory over open_clip: the embedded tiny CLIP and real CLIPs, with clear offline errors.

``load_backbone()`` loads the shipped ``fedpurel-tiny`` weights (hash-checked) through open_clip.
``load_backbone("ViT-B-16-quickgelu", "openai")`` loads a real CLIP when its weights are in the
local cache (or the network is reachable); ``pretrained`` may also be a weights file path, and
``name`` may be ``"hf-hub:org/repo"`` or ``"local-dir:/path"``. When weights are neither cached nor
downloadable the call fails at once with :class:`BackboneUnavailableError` explaining how to
provide them offline. Other models than the embedded one need weights (file, tag or folder); random
init only by name, ``pretrained="random"``. :func:`check_backbone` checks all that without building.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedpurel_lite.data.cache_entry import sha256_file
from fedpurel_lite.errors import ConfigError, ResourceMissingError

__all__ = ["EMBEDDED_NAME", "EMBEDDED_SHA256", "EMBEDDED_WEIGHTS", "RANDOM_INIT", "Backbone",
           "BackboneUnavailableError", "check_backbone", "load_backbone", "register_embedded_config",
           "resolve_device", "sha256_file", "zero_shot_classifier"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]
EMBEDDED_NAME = "fedpurel-tiny"
EMBEDDED_CONFIG = PACKAGE_DIR / "model_configs" / f"{EMBEDDED_NAME}.json"
#: The shipped weights: repository ``data/`` folder (override with ``$FEDPUREL_TINY_WEIGHTS``).
EMBEDDED_WEIGHTS = PACKAGE_DIR.parent / "data" / f"{EMBEDDED_NAME}.safetensors"
#: SHA-256 of the shipped weights file; produced by ``python -m fedpurel_lite pretrain``.
EMBEDDED_SHA256 = "84399832560b8ba5bfc98dd04a50aab31f12e0575d171b0386272e216746ba1e"
#: ``pretrained`` value asking for a randomly initialised model (plumbing tests only).
RANDOM_INIT = "random"
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

log = logging.getLogger(__name__)


class BackboneUnavailableError(ResourceMissingError):
    """Weights cannot be found locally and cannot be downloaded (offline)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``"cpu"``, ``"cuda"`` (``"cuda:1"``...) or ``"auto"`` into a usable torch device.

    Parameters
    ----------
    device : str or torch.device or None
        ``"auto"`` picks CUDA when available, else the CPU; ``None`` means ``"cpu"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        Not a device name, or a CUDA device on a machine without CUDA.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device={device!r} is not a device; use 'cpu', 'cuda' (or 'cuda:<index>') or "
                          "'auto' (CUDA when available)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available on this machine; use device='cpu' or "
                          "device='auto' (CLI: --set device=auto)")
    return dev


@dataclass
class Backbone:
    """A frozen open_clip model with what the toolkit needs around it.

    Attributes
    ----------
    model : torch.nn.Module
        open_clip ``CLIP`` in eval mode, parameters frozen.
    tokenizer : callable
        open_clip tokenizer (list of str -> LongTensor ``[N, context_length]``).
    preprocess : callable
        Eval image transform (PIL image -> normalised tensor).
    name, pretrained : str, str or None
        What was asked for.
    weights_id : str
        Hash (files) or tag string identifying the weights, for cache fingerprints.
    logit_scale : float
        ``exp(model.logit_scale)``.
    """

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor]
    name: str
    pretrained: str | None
    weights_id: str
    logit_scale: float

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """open_clip's preprocessing config of the image tower (size, mean, std, interpolation...)."""
        return dict(getattr(self.model.visual, "preprocess_cfg", {}))


def register_embedded_config() -> None:
    """Register the package's model configs (``fedpurel-tiny``) with open_clip (idempotent)."""
    import open_clip

    if EMBEDDED_NAME not in open_clip.list_models():
        open_clip.add_model_config(EMBEDDED_CONFIG.parent)


def _hf_cache_dir(cache_dir: str | None) -> str:
    if cache_dir:
        return cache_dir
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _network_ok(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_help(what: str, cache: str) -> str:
    return (
        f"{what} is not in the local cache ({cache}) and the network is unreachable. Provide it offline: "
        "pass pretrained='/path/to/open_clip_model.safetensors' (a weights file), or name='local-dir:/path' "
        "(a folder with open_clip_config.json + weights), or copy the Hugging Face snapshot into the cache "
        "(set HF_HUB_CACHE / HF_HOME, or cache_dir=...; HF_HUB_OFFLINE=1 serves from cache only)."
    )


def _resolve_tag(name: str, tag: str, cache_dir: str | None, download: bool = True) -> tuple[str, dict[str, Any]]:
    """A local weights file for ``(name, tag)`` (``""`` when it would be downloaded but ``download`` is off)."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        candidates = ["open_clip_model.safetensors", filename or "open_clip_pytorch_model.bin"]
        if filename.endswith(".bin"):
            candidates.insert(0, filename[: -len(".bin")] + ".safetensors")
        for cand in candidates:
            hit = try_to_load_from_cache(repo, cand, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit, cfg
        where = f"{_hf_cache_dir(cache_dir)} (repo {repo})"
    else:
        url_cache = cache_dir or os.path.expanduser("~/.cache/clip")
        hit = os.path.join(url_cache, os.path.basename(cfg.get("url", "")))
        if cfg.get("url") and os.path.isfile(hit):
            return hit, cfg
        where = url_cache
    if not _network_ok():
        raise BackboneUnavailableError(_offline_help(f"Weights for model {name!r} with pretrained={tag!r}", where))
    if not download:
        return "", cfg
    try:
        return download_pretrained(cfg, cache_dir=cache_dir), cfg
    except Exception as exc:  # noqa: BLE001 - wrapped into one clear error
        raise BackboneUnavailableError(f"Downloading {name!r}/{tag!r} failed: {exc}") from None


def _resolve_hf_hub(repo: str, cache_dir: str | None) -> str:
    """Turn ``hf-hub:repo`` into ``local-dir:<snapshot>`` when cached, else fail fast offline."""
    from huggingface_hub import try_to_load_from_cache

    cfg = try_to_load_from_cache(repo, "open_clip_config.json", cache_dir=cache_dir)
    if isinstance(cfg, str):
        snap = Path(cfg).parent
        if any((snap / f).is_file() for f in _WEIGHT_FILES):
            return f"local-dir:{snap}"
    if not _network_ok():
        raise BackboneUnavailableError(_offline_help(f"Model 'hf-hub:{repo}'", _hf_cache_dir(cache_dir)))
    return f"hf-hub:{repo}"


def _folder_weights(folder: Path, what: str) -> Path:
    for f in _WEIGHT_FILES:
        if (folder / f).is_file():
            return folder / f
    raise BackboneUnavailableError(f"{what} {folder} holds no weights file ({' or '.join(_WEIGHT_FILES)}); put "
                                   "the open_clip weights there or pass pretrained=<weights file>")


def _check_name(name: str) -> None:
    import open_clip

    models = open_clip.list_models()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=3)
        hint = f"Did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(
            f"Unknown model name {name!r} (setting backbone). {hint}See the valid names with "
            "`open_clip.list_models()` (e.g. 'ViT-B-32', 'ViT-B-16-quickgelu', 'fedpurel-tiny'), their tags with "
            "`open_clip.list_pretrained()`, or use 'hf-hub:org/repo' / 'local-dir:/path'."
        )


def _embedded_weights(check_hash: bool) -> tuple[Path, str]:
    path = Path(os.environ.get("FEDPUREL_TINY_WEIGHTS", EMBEDDED_WEIGHTS))
    if not path.is_file():
        raise BackboneUnavailableError(f"Embedded weights file missing: {path} (run `python -m fedpurel_lite "
                                       "pretrain` to recreate it, or set $FEDPUREL_TINY_WEIGHTS)")
    weights_id = sha256_file(path)
    if check_hash and weights_id != EMBEDDED_SHA256:
        raise BackboneUnavailableError(f"Embedded weights {path} have SHA-256 {weights_id}, expected "
                                       f"{EMBEDDED_SHA256}; the file is corrupt or not the shipped one (restore it "
                                       "from the repository or run `python -m fedpurel_lite pretrain`)")
    return path, weights_id


def _known_tags(name: str, show: int = 6) -> str:
    from open_clip.pretrained import list_pretrained_tags_by_model

    tags = list_pretrained_tags_by_model(name)
    more = f", ... ({len(tags)} in all: open_clip.list_pretrained())" if len(tags) > show else ""
    return f"known tags: {', '.join(tags[:show]) or 'none'}{more}"


def _plan(name: str, pretrained: str | None, cache_dir: str | None, check_hash: bool,
          build: bool) -> tuple[str, str | None, str, dict[str, Any]]:
    """Validate ``(name, pretrained)`` and find the weights: ``(create name, create pretrained, weights_id, extra)``.

    With ``build=False`` nothing is downloaded and user weight files are not hashed (pre-flight).
    """
    import open_clip

    register_embedded_config()
    pretrained = pretrained or None
    if name.startswith("hf-hub:"):
        create_name = _resolve_hf_hub(name[len("hf-hub:"):], cache_dir)
        if create_name.startswith("hf-hub:") or not build:
            return create_name, None, name, {}
        return create_name, None, sha256_file(_folder_weights(Path(create_name[10:]), "hf-hub snapshot")), {}
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise BackboneUnavailableError(f"local-dir {folder} has no open_clip_config.json (setting backbone="
                                           f"{name!r}); point it at a folder with open_clip_config.json + weights")
        weights = _folder_weights(folder, "local-dir")
        return name, None, sha256_file(weights) if build else str(weights), {}
    _check_name(name)
    if pretrained is None and name == EMBEDDED_NAME:
        path, weights_id = _embedded_weights(check_hash)
        return name, str(path), weights_id, {}
    if pretrained is None:
        raise ConfigError(f"model {name!r} needs weights: pass pretrained=<file, tag or folder> (CLI: --set "
                          f"pretrained=...); {_known_tags(name)}; pretrained={RANDOM_INIT!r} builds a random-init "
                          "model (plumbing tests only)")
    if pretrained == RANDOM_INIT:
        return name, None, "random-init", {}
    if os.path.isdir(pretrained):
        weights = _folder_weights(Path(pretrained), "pretrained folder")
        return name, str(weights), sha256_file(weights) if build else str(weights), {}
    if os.path.isfile(pretrained):
        return name, pretrained, sha256_file(pretrained) if build else pretrained, {}
    from open_clip.pretrained import get_pretrained_cfg

    if not get_pretrained_cfg(name, pretrained):
        if os.sep in pretrained or pretrained.endswith((".safetensors", ".bin", ".pt", ".pth")):
            raise BackboneUnavailableError(f"pretrained={pretrained!r}: no such weights file or folder; check "
                                           "the path (CLI: --set pretrained=/path/to/open_clip_model.safetensors)")
        raise ConfigError(f"pretrained={pretrained!r} is neither a file, a folder nor a known tag of {name!r}; "
                          f"{_known_tags(name)} (or {RANDOM_INIT!r} for random init)")
    create_pretrained, tag_cfg = _resolve_tag(name, pretrained, cache_dir, download=build)
    extra = {k2: tag_cfg[k1] for k1, k2 in (("mean", "image_mean"), ("std", "image_std"),
             ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")) if k1 in tag_cfg}
    if build and tag_cfg.get("quick_gelu", False) != open_clip.get_model_config(name).get("quick_gelu", False):
        warnings.warn(f"QuickGELU mismatch: {name!r} with tag {pretrained!r}; the tag was trained with "
                      f"quick_gelu={tag_cfg.get('quick_gelu', False)} (use the '-quickgelu' model name)",
                      UserWarning, stacklevel=3)
    return name, create_pretrained, f"{name}:{pretrained}", extra


def check_backbone(name: str, pretrained: str | None, cache_dir: str | None = None) -> None:
    """Pre-flight check of a backbone setting, without building the model.

    Validates the model name and that the weights can be found locally (a file that exists, a tag
    whose weights are cached, a local-dir with its files, the shipped embedded weights); weights
    that are not local pass only when the network is reachable (they would be downloaded).

    Parameters
    ----------
    name : str
        As for :func:`load_backbone`.
    pretrained : str or None
        As for :func:`load_backbone` (``None`` / ``""``: the embedded model's shipped weights).
    cache_dir : str, optional
        Weights cache folder, as for :func:`load_backbone`.

    Raises
    ------
    ConfigError
        Unknown model name or tag, or a non-embedded model without weights.
    BackboneUnavailableError
        Weights neither on this machine nor downloadable (a :class:`ResourceMissingError`).
    """
    _plan(name, pretrained, cache_dir, check_hash=True, build=False)


def load_backbone(name: str = EMBEDDED_NAME, pretrained: str | None = None, device: str = "cpu",
                  cache_dir: str | None = None, check_hash: bool = True) -> Backbone:
    """Load a frozen CLIP through open_clip.

    Parameters
    ----------
    name : str
        ``"fedpurel-tiny"`` (embedded), an open_clip model name (``"ViT-B-16-quickgelu"``), or a
        schema name ``"hf-hub:org/repo"`` / ``"local-dir:/path"``.
    pretrained : str, optional
        A pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``), a weights file path, a folder
        holding ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``), or
        ``"random"`` for a random-init model (plumbing tests only). ``None`` / ``""`` is allowed
        only for the embedded model (its shipped file, SHA-256 checked).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
    cache_dir : str, optional
        Weights cache folder passed to open_clip / huggingface_hub.
    check_hash : bool
        Verify the shipped embedded weights against :data:`EMBEDDED_SHA256`.

    Returns
    -------
    Backbone

    Raises
    ------
    ConfigError
        Unknown model name or tag, a non-embedded model without weights, or an unusable device.
    BackboneUnavailableError
        Weights neither cached locally nor downloadable (a :class:`ResourceMissingError`).
    """
    import open_clip

    dev, pretrained = resolve_device(device), pretrained or None
    create_name, create_pretrained, weights_id, extra = _plan(name, pretrained, cache_dir, check_hash, build=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*No pretrained weights loaded.*")
        model, _, preprocess = open_clip.create_model_and_transforms(
            create_name, pretrained=create_pretrained, device=dev, cache_dir=cache_dir, **extra)
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(create_name, cache_dir=cache_dir)
    return Backbone(model=model, tokenizer=tokenizer, preprocess=preprocess, name=name, pretrained=pretrained,
                    weights_id=weights_id, logit_scale=float(model.logit_scale.exp().item()))


@torch.no_grad()
def zero_shot_classifier(backbone: Backbone, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """Zero-shot text classifier: template-averaged, L2-normalised text features per class.

    Parameters
    ----------
    backbone : Backbone
    class_names : list of str
    templates : list of str
        Format strings with ``{}``.

    Returns
    -------
    torch.Tensor
        ``float32 [C, D]``, rows L2-normalised.
    """
    import open_clip

    device = next(backbone.model.parameters()).device
    weights = open_clip.build_zero_shot_classifier(backbone.model, backbone.tokenizer, list(class_names),
                                                   list(templates), num_classes_per_batch=50, device=device)
    return torch.nn.functional.normalize(weights.T.float().cpu(), dim=-1).contiguous()
