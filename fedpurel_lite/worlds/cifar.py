"""CIFAR-10 / CIFAR-100 through torchvision, in the common :class:`World` shape.

Files are never fetched implicitly: pass ``download=True`` (or set ``FEDPUREL_DOWNLOAD=1``) to allow
torchvision to download them. Otherwise the python-version archives must already be extracted under
``root`` (default ``$FEDPUREL_DATA/cifar`` or ``data/cifar``), e.g. ``data/cifar/cifar-100-python/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedpurel_lite.errors import ConfigError, IntegrityError, ResourceMissingError
from fedpurel_lite.worlds.base import DEFAULT_TEMPLATES, World

_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_FILES = {"cifar10": ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)],
          "cifar100": ["meta", "train", "test"]}
#: ``(classes, training images per class)`` of each dataset.
SIZES = {"cifar10": (10, 5000), "cifar100": (100, 500)}


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
        identity (label-id order, as in the long-tail literature).

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
    return World(name=name, class_names=class_names, templates=list(DEFAULT_TEMPLATES), train_images=train,
                 train_labels=np.asarray(train.targets), test_images=test, test_labels=np.asarray(test.targets),
                 class_order=np.arange(len(class_names)), params={"version": 1, "dataset": name})
