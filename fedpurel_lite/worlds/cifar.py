"""CIFAR-10 / CIFAR-100 through torchvision, in the common :class:`World` shape.

Files are never fetched implicitly: pass ``download=True`` (or set ``FEDPUREL_DOWNLOAD=1``) to allow
torchvision to download them. Otherwise the python-version archives must already be extracted under
``root`` (default ``$FEDPUREL_DATA/cifar`` or ``data/cifar``), e.g. ``data/cifar/cifar-100-python/``;
in a config, ``[world.cifar100] root`` (``[world.cifar10] root``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpurel_lite.errors import ConfigError, IntegrityError, ResourceMissingError
from fedpurel_lite.worlds.base import DEFAULT_TEMPLATES, World, WorldInfo, knob, register_world

_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_FILES = {"cifar10": ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)],
          "cifar100": ["meta", "train", "test"]}
#: ``(classes, training images per class)`` of each dataset.
SIZES = {"cifar10": (10, 5000), "cifar100": (100, 500)}
#: CIFAR-100's 20 superclasses ("coarse labels") of the 100 fine class ids (alphabetical fine names), as
#: stored in the dataset's own ``train`` file; used when that file is not at hand.
CIFAR100_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
], dtype=np.int64)


def default_root() -> Path:
    """``$FEDPUREL_DATA/cifar`` when the variable is set, else ``data/cifar``."""
    base = os.environ.get("FEDPUREL_DATA")
    return Path(base) / "cifar" if base else Path("data") / "cifar"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


def check_cifar_files(name: str, root: str | Path | None = None, download: bool | None = None) -> Path:
    """Check that a CIFAR dataset is on disk (or may be downloaded) without reading it.

    Parameters
    ----------
    name : {"cifar10", "cifar100"}
    root : str or Path, optional
        Folder holding the extracted archive (default :func:`default_root`).
    download : bool, optional
        Downloading allowed; default from ``$FEDPUREL_DOWNLOAD`` (off).

    Returns
    -------
    Path
        The root folder.

    Raises
    ------
    ConfigError
        Not a CIFAR world name.
    ResourceMissingError
        The extracted files are missing and downloading is not allowed.
    """
    if name not in _FOLDERS:
        raise ConfigError(f"unknown CIFAR world {name!r}; choose from {sorted(_FOLDERS)}")
    root = Path(root) if root else default_root()
    download = _env_true("FEDPUREL_DOWNLOAD") if download is None else download
    folder = root / _FOLDERS[name]
    missing = [f for f in _FILES[name] if not (folder / f).is_file()]
    if missing and not download:
        what = f"the extracted folder {folder}" if not folder.is_dir() else f"{', '.join(missing)} in {folder}"
        raise ResourceMissingError(
            f"{name} files not found: expected {what} (from the python-version archive). Put it there, point "
            f"root=... or $FEDPUREL_DATA (uses $FEDPUREL_DATA/cifar), or allow the download with download=True / "
            "FEDPUREL_DOWNLOAD=1."
        )
    return root


def cifar100_coarse_labels(root: str | Path | None = None) -> np.ndarray:
    """The superclass of every CIFAR-100 fine class id, from the dataset when present.

    Read from ``cifar-100-python/train`` (its ``fine_labels`` and ``coarse_labels``) under ``root``
    (default :func:`default_root`) when that file exists; otherwise the shipped table
    :data:`CIFAR100_COARSE`.

    Raises
    ------
    IntegrityError
        The file's two label lists disagree with one fine-to-coarse mapping of 100 classes.
    """
    path = (Path(root) if root else default_root()) / _FOLDERS["cifar100"] / "train"
    if not path.is_file():
        return CIFAR100_COARSE.copy()
    import pickle

    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh, encoding="latin1")  # noqa: S301 - the dataset's own file format
        fine = np.asarray(data["fine_labels"], dtype=np.int64)
        coarse = np.asarray(data["coarse_labels"], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 - any failure: the file is not the dataset's
        raise IntegrityError(f"{path} has no readable fine_labels / coarse_labels ({exc}); replace it with a fresh "
                             "extraction of the python-version archive") from None
    table = np.full(100, -1, dtype=np.int64)
    table[fine] = coarse
    if fine.shape != coarse.shape or (table < 0).any() or not np.array_equal(table[fine], coarse):
        raise IntegrityError(f"{path}: fine_labels and coarse_labels do not form one mapping of 100 classes")
    return table


def load_cifar(name: str = "cifar100", root: str | Path | None = None, download: bool | None = None) -> World:
    """Load CIFAR-10 or CIFAR-100 (train pool 5,000 / 500 images per class, balanced test pool).

    Parameters
    ----------
    name : {"cifar10", "cifar100"}
    root : str or Path, optional
        Folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (default :func:`default_root`).
    download : bool, optional
        Allow torchvision to download; default from ``$FEDPUREL_DOWNLOAD`` (off).

    Returns
    -------
    World
        Images are torchvision datasets yielding ``(PIL image, label)``; ``class_order`` is the
        identity (label-id order, as in the long-tail literature); CIFAR-100 carries its 20
        superclasses as ``coarse_labels``.

    Raises
    ------
    ConfigError
        Not a CIFAR world name.
    ResourceMissingError
        The files are missing and downloading is not allowed (a ``FileNotFoundError`` too).
    IntegrityError
        The files fail torchvision's MD5 check.
    """
    from torchvision import datasets

    download = _env_true("FEDPUREL_DOWNLOAD") if download is None else download
    root = check_cifar_files(name, root, download)
    cls = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision's MD5 check of the archive files
        raise IntegrityError(f"{name} files in {root / _FOLDERS[name]} are damaged ({exc}); replace them with a "
                             "fresh extraction of the python-version archive, or delete them and use download=True"
                             ) from None
    class_names = [c.replace("_", " ") for c in train.classes]
    coarse = cifar100_coarse_labels(root) if name == "cifar100" else None
    return World(name=name, class_names=class_names, templates=list(DEFAULT_TEMPLATES), train_images=train,
                 train_labels=np.asarray(train.targets), test_images=test, test_labels=np.asarray(test.targets),
                 class_order=np.arange(len(class_names)), params={"version": 1, "dataset": name},
                 coarse_labels=coarse)


@dataclass(frozen=True)
class CifarConfig:
    """``[world.cifar10]`` / ``[world.cifar100]``: where the extracted archive is."""

    root: str = knob("", "folder holding cifar-10-batches-py / cifar-100-python ('' = $FEDPUREL_DATA/cifar or "
                     "data/cifar)")


def _register(name: str) -> None:
    classes, per_class = SIZES[name]

    def describe(section: CifarConfig) -> WorldInfo:
        check_cifar_files(name, section.root or None)
        return WorldInfo(name, classes, np.full(classes, per_class, dtype=np.int64), np.arange(classes))

    def load(section: CifarConfig, **extra: Any) -> World:
        return load_cifar(name, root=section.root or None, **extra)

    coarse = (lambda section: cifar100_coarse_labels(section.root or None)) if name == "cifar100" else None
    register_world(name, config=CifarConfig, describe=describe, coarse_labels=coarse,
                   description=f"{name.upper()} through torchvision ({classes} classes, {per_class} per class)")(load)


for _name in SIZES:
    _register(_name)
