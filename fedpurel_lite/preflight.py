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

from .config import RunConfig
from .errors import ConfigError, IntegrityError, ResourceMissingError

#: largest class-name or OLTR list file read (the iNaturalist-2018 lists are about 30 MB)
MAX_TEXT_BYTES = 1024 * 1024 * 1024


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


def _check_entry_text(entry: object, source: Path) -> None:
    """A listed path the file system can be asked about (no NUL character)."""
    if isinstance(entry, str) and "\x00" in entry:
        raise IntegrityError(f"split file {source}: the entry {entry!r} holds a NUL character; not a file path")


def check_paths(config: RunConfig) -> None:
    """The config's file and folder names can be handed to the file system (no NUL character).

    Raises
    ------
    ConfigError
        Naming the key.
    """
    for key in ("root", "split_file", "test_split_file", "class_names_file", "cache_dir", "pretrained", "backbone"):
        value = getattr(config.world, key)
        if isinstance(value, str) and "\x00" in value:
            raise ConfigError(f"world.{key}={value!r}: a NUL character cannot be in a file or folder name")


def check_world_files(config: RunConfig) -> None:
    """Read the folder world's split and class-name files now, bounded, before any image is read.

    A split file is parsed through :func:`fedpurel_lite.safe_load.load_json` (size, nesting, UTF-8);
    with OLTR lists and ``world.class_names_file``, every class must be named, checked from the
    lists alone, so a bad class-name file is reported before the world's images are loaded.

    Raises
    ------
    UserError
        Naming the file (and the line).
    """
    from .safe_load import load_json, read_bounded

    world = config.world
    if world.name != "folder" or not world.root:
        return
    root = Path(world.root)
    split_file = world.split_file or "split.json"
    split_path = Path(split_file) if Path(split_file).is_absolute() else root / split_file
    if not split_file.endswith(".txt"):
        if split_path.is_file():
            split = load_json(split_path, "split file")
            for part in split.values() if isinstance(split, dict) else ():
                for entry in part if isinstance(part, list) else ():
                    _check_entry_text(entry, split_path)
        return
    from .worlds.folder import _oltr_names, oltr_test_file, read_oltr_list

    test_file = Path(oltr_test_file(split_file, world.test_split_file or None))
    lists = [split_path, test_file if test_file.is_absolute() else root / test_file]
    if not all(p.is_file() for p in lists):
        return  # describe_world names the missing list
    read = []
    for path in lists:
        read_bounded(path, "split file", MAX_TEXT_BYTES)
        try:
            read.append(read_oltr_list(path))
        except (ValueError, OverflowError) as exc:  # a label that is not a plain integer
            raise IntegrityError(f"split file {path}: a label is not an integer in 0..2^63 ({exc})") from None
    for (entries, _), path in zip(read, lists, strict=True):
        for entry in entries:
            _check_entry_text(entry, path)
    train, labels = read[0][1], np.concatenate([r[1] for r in read])
    if labels.size and int(labels.max()) >= max(len(train), 1):
        raise IntegrityError(f"split file {lists[int(read[1][1].max(initial=-1)) == int(labels.max())]}: label "
                             f"{int(labels.max())}, but labels must run 0..C-1 with training images for each, and "
                             f"{lists[0]} lists {len(train)} training images")
    if not world.class_names_file:
        return
    names_path = Path(world.class_names_file)
    names_path = names_path if names_path.is_absolute() else root / names_path
    if not names_path.is_file():
        raise ResourceMissingError(f"class-name file {names_path} not found (world.class_names_file)")
    read_bounded(names_path, "class-name file", MAX_TEXT_BYTES)
    if labels.size:
        _oltr_names(read[0][0] + read[1][0], labels, int(labels.max()) + 1, names_path)


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
    from .partition import longtail_class_sizes

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
    from .methods import get_method
    from .peft import PEFTS

    method = get_method(config.method.name)
    if method.overrides:
        config = config.with_overrides(method.overrides)
    peft = PEFTS.get(config.method.peft)
    check_paths(config)
    check_device(config.world.device)
    if need_backbone is None:
        need_backbone = need_bank or peft.needs_backbone
    if need_bank:
        from .partition import check_split
        from .worlds import describe_world

        check_world_files(config)
        info = describe_world(config.world.name, config.world.root or None, config.world.split_file or None,
                              config.world.test_split_file or None, variant=config.world.variant)
        check_split(info.train_counts_per_class, info.class_order, config)
        check_writable(cache_dir(config), "world.cache_dir")
    if need_backbone:  # after the dataset: a preset missing both names its data first
        from .backbone import check_backbone

        check_backbone(config.world.backbone, config.world.pretrained or None)
    for key, folder in outputs:
        check_writable(folder, key)
