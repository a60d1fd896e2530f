"""Checks that need the machine or the files, run before any data is loaded, encoded or written.

:class:`~fedpurel_lite.config.RunConfig` checks values and types on its own; :func:`preflight`
adds what a config alone cannot tell: that the method, PEFT and world are registered, the device
exists, the weights and the dataset are on this machine, the cache and output folders are
writable, and the long-tailed training set (computed from the world's metadata, without loading
an image) has enough samples for the clients. Each failure is one
:class:`~fedpurel_lite.errors.UserError` naming the config key.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .config import RunConfig
from .errors import ConfigError


def default_cache_dir() -> Path:
    """``$FEDPUREL_CACHE``, else the repository's ``data/cache``."""
    from .features import DEFAULT_CACHE_DIR

    return Path(os.environ.get("FEDPUREL_CACHE") or DEFAULT_CACHE_DIR)


def cache_dir(config: RunConfig) -> Path:
    """The feature-cache folder a config uses."""
    return Path(config.world.cache_dir) if config.world.cache_dir else default_cache_dir()


def check_writable(folder: str | Path, key: str) -> None:
    """``folder`` exists (or can be created) and a file can be written in it.

    Raises
    ------
    ConfigError
        Naming ``key`` and the folder.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}={str(folder)!r}: the folder is not writable ({exc.strerror or exc})") from None


def check_device(name: str) -> None:
    """``world.device`` names a device this machine has.

    Raises
    ------
    ConfigError
        ``cuda`` without a CUDA device.
    """
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("world.device='cuda': this machine has no CUDA device (torch.cuda.is_available() is "
                              "False); use cpu or auto")


def longtail_size(pool_counts: np.ndarray, config: RunConfig) -> int:
    """Training samples after the long-tail subsampling, from the pool's per-class counts.

    Raises
    ------
    ConfigError
        The profile asks a class for more images than its pool holds.
    """
    from .longtail import class_counts

    pool = np.asarray(pool_counts, dtype=np.int64)
    if config.longtail.profile == "given":  # the pool is the long-tailed set
        return int(pool.sum())
    targets = class_counts(int(pool.max()), len(pool), config.longtail.imbalance_ratio, config.longtail.profile)
    if (np.sort(targets)[::-1] > np.sort(pool)[::-1]).any():
        raise ConfigError(f"longtail.imbalance_ratio={config.longtail.imbalance_ratio:g}: the world's pool is too "
                          "small for this profile")
    return int(targets.sum())


def preflight(config: RunConfig, outputs: Iterable[tuple[str, str | Path]] = (), need_bank: bool = True,
              need_backbone: bool | None = None) -> None:
    """Every check that can be made before the run loads or writes anything.

    Parameters
    ----------
    config : RunConfig
        The run (the method's overrides already applied or not: both are checked).
    outputs : iterable of (key, folder)
        Folders the run will write, with the option that names them (``("--out", "runs/x")``).
    need_bank : bool
        The feature bank will be loaded from the world (not handed in): check the world, the
        backbone, the cache folder and the client count.
    need_backbone : bool, optional
        The backbone will be loaded (default: when ``need_bank`` or the PEFT needs it).

    Raises
    ------
    UserError
        The first failed check, naming the key.
    """
    from .methods import get_method
    from .peft import PEFTS

    method = get_method(config.method.name)
    if method.overrides:
        config = config.with_overrides(method.overrides)
    peft = PEFTS.get(config.method.peft)
    check_device(config.world.device)
    if need_backbone is None:
        need_backbone = need_bank or peft.needs_backbone
    if need_bank:
        from .partition import check_client_count
        from .worlds import describe_world

        info = describe_world(config.world.name, config.world.root or None, config.world.split_file or None,
                              config.world.test_split_file or None)
        check_client_count(config.federation.num_clients, config.federation.min_client_size,
                           longtail_size(info.train_counts_per_class, config))
        check_writable(cache_dir(config), "world.cache_dir")
    if need_backbone:  # after the dataset: a preset missing both names its data first
        from .backbone import check_backbone

        check_backbone(config.world.backbone, config.world.pretrained or None)
    for key, folder in outputs:
        check_writable(folder, key)
