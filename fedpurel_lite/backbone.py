"""One factory over open_clip: the embedded tiny CLIP and real CLIPs, with clear offline errors.

``load_backbone()`` loads the shipped ``fedpurel-tiny`` weights (hash-checked) through open_clip.
``load_backbone("ViT-B-16-quickgelu", "openai")`` loads a real CLIP when its weights are in the
local cache (or the network is reachable); ``pretrained`` may also be a weights file path, and
``name`` may be ``"hf-hub:org/repo"`` or ``"local-dir:/path"``. When weights are neither cached nor
downloadable the call fails at once with :class:`BackboneUnavailableError` explaining how to
provide them offline.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
EMBEDDED_NAME = "fedpurel-tiny"
EMBEDDED_CONFIG = PACKAGE_DIR / "model_configs" / f"{EMBEDDED_NAME}.json"
#: The shipped weights: repository ``data/`` folder (override with ``$FEDPUREL_TINY_WEIGHTS``).
EMBEDDED_WEIGHTS = PACKAGE_DIR.parent / "data" / f"{EMBEDDED_NAME}.safetensors"
#: SHA-256 of the shipped weights file; produced by ``python -m fedpurel_lite pretrain``.
EMBEDDED_SHA256 = "84399832560b8ba5bfc98dd04a50aab31f12e0575d171b0386272e216746ba1e"

log = logging.getLogger(__name__)


class BackboneUnavailableError(RuntimeError):
    """Weights cannot be found locally and cannot be downloaded (offline)."""


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
    tokenizer: Any
    preprocess: Any
    name: str
    pretrained: str | None
    weights_id: str
    logit_scale: float

    @property
    def preprocess_cfg(self) -> dict:
        """open_clip's preprocessing config of the image tower (size, mean, std, interpolation...)."""
        return dict(getattr(self.model.visual, "preprocess_cfg", {}))


def register_embedded_config() -> None:
    """Register the package's model configs (``fedpurel-tiny``) with open_clip (idempotent)."""
    import open_clip

    if EMBEDDED_NAME not in open_clip.list_models():
        open_clip.add_model_config(EMBEDDED_CONFIG.parent)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def _resolve_tag(name: str, tag: str, cache_dir: str | None) -> tuple[str, dict]:
    """Return a local weights file for ``(name, tag)`` or raise BackboneUnavailableError fast."""
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
        if any((snap / f).is_file() for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")):
            return f"local-dir:{snap}"
    if not _network_ok():
        raise BackboneUnavailableError(_offline_help(f"Model 'hf-hub:{repo}'", _hf_cache_dir(cache_dir)))
    return f"hf-hub:{repo}"


def _local_dir_weights_id(folder: Path) -> str:
    for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (folder / f).is_file():
            return sha256_file(folder / f)
    raise BackboneUnavailableError(f"local-dir {folder} holds no open_clip_model.safetensors / .bin weights file")


def load_backbone(name: str = EMBEDDED_NAME, pretrained: str | None = None, device: str = "cpu",
                  cache_dir: str | None = None, check_hash: bool = True) -> Backbone:
    """Load a frozen CLIP through open_clip.

    Parameters
    ----------
    name : str
        ``"fedpurel-tiny"`` (embedded), an open_clip model name (``"ViT-B-16-quickgelu"``), or a
        schema name ``"hf-hub:org/repo"`` / ``"local-dir:/path"``.
    pretrained : str, optional
        A pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``) or a weights file path. For the
        embedded model the default is the shipped file (SHA-256 checked); ``None`` for other names
        means random init (useful for plumbing tests only).
    device : str
        Torch device.
    cache_dir : str, optional
        Weights cache folder passed to open_clip / huggingface_hub.
    check_hash : bool
        Verify the shipped embedded weights against :data:`EMBEDDED_SHA256`.

    Returns
    -------
    Backbone

    Raises
    ------
    ValueError
        Unknown model name or pretrained value.
    BackboneUnavailableError
        Weights neither cached locally nor downloadable.
    """
    import open_clip

    register_embedded_config()
    create_name, create_pretrained, extra = name, pretrained, {}
    if name.startswith("hf-hub:"):
        create_name, create_pretrained = _resolve_hf_hub(name[len("hf-hub:"):], cache_dir), None
        weights_id = name if create_name.startswith("hf-hub:") else _local_dir_weights_id(Path(create_name[10:]))
    elif name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise BackboneUnavailableError(f"local-dir {folder} has no open_clip_config.json")
        create_pretrained, weights_id = None, _local_dir_weights_id(folder)
    else:
        if name not in open_clip.list_models():
            raise ValueError(
                f"Unknown model name {name!r}. See the valid names with `open_clip.list_models()` "
                "(e.g. 'ViT-B-32', 'ViT-B-16-quickgelu', 'fedpurel-tiny'), their tags with "
                "`open_clip.list_pretrained()`, or use 'hf-hub:org/repo' / 'local-dir:/path'."
            )
        if name == EMBEDDED_NAME and pretrained is None:
            path = Path(os.environ.get("FEDPUREL_TINY_WEIGHTS", EMBEDDED_WEIGHTS))
            if not path.is_file():
                raise BackboneUnavailableError(f"Embedded weights file missing: {path} (run `python -m fedpurel_lite "
                                               "pretrain` to recreate it, or set $FEDPUREL_TINY_WEIGHTS)")
            weights_id = sha256_file(path)
            if check_hash and weights_id != EMBEDDED_SHA256:
                raise BackboneUnavailableError(f"Embedded weights {path} have SHA-256 {weights_id}, expected "
                                               f"{EMBEDDED_SHA256}; the file is corrupt or not the shipped one")
            create_pretrained = str(path)
        elif pretrained is None:
            weights_id = "random-init"
        elif os.path.isfile(pretrained):
            weights_id = sha256_file(pretrained)
        else:
            from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

            if not get_pretrained_cfg(name, pretrained):
                raise ValueError(f"pretrained={pretrained!r} is neither a file nor a known tag of {name!r}; "
                                 f"known tags: {list_pretrained_tags_by_model(name)}")
            create_pretrained, tag_cfg = _resolve_tag(name, pretrained, cache_dir)
            weights_id = f"{name}:{pretrained}"
            extra = {k2: tag_cfg[k1] for k1, k2 in (("mean", "image_mean"), ("std", "image_std"),
                     ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")) if k1 in tag_cfg}
            if tag_cfg.get("quick_gelu", False) != open_clip.get_model_config(name).get("quick_gelu", False):
                warnings.warn(f"QuickGELU mismatch: {name!r} with tag {pretrained!r}; the tag was trained with "
                              f"quick_gelu={tag_cfg.get('quick_gelu', False)} (use the '-quickgelu' model name)",
                              UserWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*No pretrained weights loaded.*")
        model, _, preprocess = open_clip.create_model_and_transforms(
            create_name, pretrained=create_pretrained, device=device, cache_dir=cache_dir, **extra)
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
