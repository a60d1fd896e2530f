"""CIFAR-10 / CIFAR-100 through torchvision, in the common :class:`World` shape.

Files are never fetched implicitly: pass ``download=True`` (or set ``FEDPUREL_DOWNLOAD=1``) to allow
torchvision to download them. Otherwise the python-version archives must already be extracted under
``root`` (default ``$FEDPUREL_DATA/cifar`` or ``data/cifar``), e.g. ``data/cifar/cifar-100-python/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedpurel_lite.worlds.base import DEFAULT_TEMPLATES, World

_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def default_root() -> Path:
    """``$FEDPUREL_DATA/cifar`` when the variable is set, else ``data/cifar``."""
    base = os.environ.get("FEDPUREL_DATA")
    return Path(base) / "cifar" if base else Path("data") / "cifar"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


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
    FileNotFoundError
        The files are missing and downloading is not allowed.
    """
    from torchvision import datasets

    if name not in _FOLDERS:
        raise ValueError(f"unknown CIFAR world {name!r}; choose from {sorted(_FOLDERS)}")
    root = Path(root) if root is not None else default_root()
    download = _env_true("FEDPUREL_DOWNLOAD") if download is None else download
    if not (root / _FOLDERS[name]).is_dir() and not download:
        raise FileNotFoundError(
            f"{name} files not found: expected the extracted folder {root / _FOLDERS[name]} "
            f"(from the python-version archive). Put it there, point root=... or $FEDPUREL_DATA "
            f"(uses $FEDPUREL_DATA/cifar), or allow the download with download=True / FEDPUREL_DOWNLOAD=1."
        )
    cls = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
    train = cls(str(root), train=True, download=download)
    test = cls(str(root), train=False, download=download)
    class_names = [c.replace("_", " ") for c in train.classes]
    return World(name=name, class_names=class_names, templates=list(DEFAULT_TEMPLATES), train_images=train,
                 train_labels=np.asarray(train.targets), test_images=test, test_labels=np.asarray(test.targets),
                 class_order=np.arange(len(class_names)), params={"version": 1, "dataset": name})
