"""Checks that need the machine or the files, run before any data is loaded, encoded or written.

:class:`~fedpurel_lite.config.RunConfig` checks values and types on its own; :func:`preflight`
adds what a config alone cannot tell: that the method, PEFT and world are registered, the device
exists, the weights and the dataset are on this machine, the cache and output folders are
writable, and the clients can be formed: the long-tailed training set and the Dirichlet client
split are replayed from the world's per-class counts and class order, without loading an image.
Each failure is one :class:`~fedpurel_lite.errors.UserError` naming the config key.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..errors import ConfigError


def default_cache_dir() -> Path:
    """``$FEDPUREL_CACHE``, else the repository's ``data/cache``."""
    from ..data.features import DEFAULT_CACHE_DIR

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


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(".")


def _check_creatable(path: Path, key: str, shown: str) -> None:
    """Every existing ancestor of ``path`` is a folder, and the nearest one is writable (nothing is created)."""
    base = _nearest_existing(path.parent if path.parent != path else path)
    if not base.is_dir():
        raise ConfigError(f"{key}={shown}: the folder is not writable ({base} is a file, not a folder)")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={shown}: the folder {base} is not writable")


def check_file_destination(path: str | Path, key: str) -> None:
    """``path`` can be written as a file: it is not a folder (nor anything but a regular file), its folder is writable.

    An existing regular file there is replaced (it is the output the option names). Nothing is created.

    Raises
    ------
    ConfigError
        Naming ``key`` and the path.
    """
    p, shown = Path(path), repr(str(path))
    if "\x00" in str(path):
        raise ConfigError(f"{key}={shown}: a NUL character cannot be in a file name")
    if str(path) == "" or p.is_dir():
        raise ConfigError(f"{key}={shown} is a folder; name a file")
    if p.exists() and not p.is_file():
        raise ConfigError(f"{key}={shown} exists and is not a regular file")
    _check_creatable(p, key, shown)


def check_folder_destination(path: str | Path, key: str, files: Iterable[str] = (), folders: Iterable[str] = ()
                             ) -> None:
    """``path`` can be written as an output folder, holding the ``files`` and sub-``folders`` named.

    Nothing is created; an existing folder must be writable, a missing one creatable.

    Raises
    ------
    ConfigError
        ``path`` is an existing file, one of ``files`` is a folder, one of ``folders`` a file, or
        the folder cannot be written.
    """
    p, shown = Path(path), repr(str(path))
    if str(path) == "" or "\x00" in str(path):
        raise ConfigError(f"{key}={shown}: name a folder (no NUL character)")
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key}={shown} is an existing file; name a folder")
    for name in files:
        if (p / name).is_dir() or ((p / name).exists() and not (p / name).is_file()):
            raise ConfigError(f"{key}={shown}: {p / name} is in the way (a folder where the output file goes)")
    for name in folders:
        if (p / name).exists() and not (p / name).is_dir():
            raise ConfigError(f"{key}={shown}: {p / name} is in the way (a file where the output folder goes)")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}={shown}: the folder is not writable")
    else:
        _check_creatable(p, key, shown)


def check_paths(config: RunConfig) -> None:
    """The config's file and folder names can be handed to the file system (no NUL character).

    Raises
    ------
    ConfigError
        Naming the key.
    """
    for key, value in config.items():  # [world] and the world's own section
        if key.startswith("world.") and isinstance(value, str) and "\x00" in value:
            raise ConfigError(f"{key}={value!r}: a NUL character cannot be in a file or folder name")


def check_world_files(config: RunConfig) -> None:
    """Read the world's own split and class-name files now, bounded, before any image is read.

    The world's registered check (:func:`fedpurel_lite.worlds.check_files`; the folder world's
    :func:`~fedpurel_lite.worlds.folder.check_folder_files`).

    Raises
    ------
    UserError
        Naming the file (and the line).
    """
    from ..worlds import check_files

    check_files(config)


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


def longtail_size(pool_counts: np.ndarray, config: RunConfig, class_order: np.ndarray | None = None) -> int:
    """Training samples after the long-tail subsampling, from the pool's per-class counts.

    Raises
    ------
    ConfigError
        The profile asks a class for more images than its pool holds.
    """
    from ..data.partition import longtail_class_sizes

    return int(longtail_class_sizes(pool_counts, class_order, config).sum())


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
    from ..methods import get_method
    from ..peft import PEFTS

    method = get_method(config.method.name)
    if method.overrides:
        config = config.with_overrides(method.overrides)
    peft = PEFTS.get(config.method.peft)
    check_paths(config)
    check_device(config.world.device)
    if need_backbone is None:
        need_backbone = need_bank or peft.needs_backbone
    if need_bank:
        from ..data.partition import check_split
        from ..worlds import describe

        check_world_files(config)
        info = describe(config)
        check_split(info.train_counts_per_class, info.class_order, config)
        check_writable(cache_dir(config), "world.cache_dir")
    if need_backbone:  # after the dataset: a preset missing both names its data first
        from ..data.backbone import check_backbone

        check_backbone(config.world.backbone, config.world.pretrained or None)
    for key, folder in outputs:
        check_writable(folder, key)
