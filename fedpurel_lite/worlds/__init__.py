"""Worlds (FLamby-style, one shape for all): ``load_world("shapes" | "cifar10" | "cifar100" | "folder")``.

:func:`describe_world` is the cheap pre-flight: class count, per-class training-pool sizes and the
head-to-tail class order from constants, file listings or a split file, without rendering or reading any image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from fedpurel_lite.errors import ConfigError
from fedpurel_lite.worlds.base import World

WORLDS = ("shapes", "cifar10", "cifar100", "folder")

__all__ = ["WORLDS", "World", "WorldInfo", "coarse_labels_of", "describe_world", "load_world"]


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"unknown world {name!r} (setting world); choose from {', '.join(WORLDS)}")


@dataclass(frozen=True, eq=False)
class WorldInfo:
    """What a config needs to know about a world before loading it.

    Attributes
    ----------
    name : str
        Registry name.
    num_classes : int
        Number of classes.
    train_counts_per_class : numpy.ndarray
        ``int64 [num_classes]`` training-pool images per class id (read-only).
    class_order : numpy.ndarray
        ``int64 [num_classes]`` class ids from head to tail, the loaded world's ``class_order``
        (read-only; label order when not given).
    """

    name: str
    num_classes: int
    train_counts_per_class: np.ndarray
    class_order: np.ndarray | None = None

    def __post_init__(self) -> None:
        counts = np.array(self.train_counts_per_class, dtype=np.int64)
        counts.setflags(write=False)
        object.__setattr__(self, "train_counts_per_class", counts)
        if counts.shape != (self.num_classes,):
            raise ValueError(f"world {self.name!r}: {counts.shape[0]} counts for {self.num_classes} classes")
        order = np.arange(self.num_classes) if self.class_order is None else self.class_order
        order = np.array(order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(self.num_classes)):
            raise ValueError(f"class_order of world {self.name!r} is not a permutation of 0..{self.num_classes - 1}")
        order.setflags(write=False)
        object.__setattr__(self, "class_order", order)


def _by_count(counts: np.ndarray) -> np.ndarray:
    """Class ids by decreasing training count, ties in label order (the folder world's class order)."""
    return np.lexsort((np.arange(len(counts)), -np.asarray(counts)))


def describe_world(name: str, root: str | None = None, split_file: str | None = None,
                   test_split_file: str | None = None, variant: str | None = None) -> WorldInfo:
    """Describe a world cheaply (no image is rendered or read), for config validation.

    Parameters
    ----------
    name : {"shapes", "cifar10", "cifar100", "folder"}
    root : str, optional
        Dataset folder: CIFAR (default ``$FEDPUREL_DATA/cifar`` or ``data/cifar``) or the image
        folder (required for ``"folder"``).
    split_file : str, optional
        Folder world's split file (``None`` / ``""``: ``split.json``, else ``train/`` + ``test/``); a
        ``.txt`` file is an OLTR-style training list.
    test_split_file : str, optional
        Folder world, OLTR lists: the test list (default: the training list's name with ``train`` -> ``test``).
    variant : str, optional
        Shapes world: the target variant (``world.variant``; default the loader's), which sets the class order.

    Returns
    -------
    WorldInfo

    Raises
    ------
    ConfigError
        Unknown world name, or ``"folder"`` without ``root``.
    ResourceMissingError
        Dataset files or folder missing (CIFAR without download allowed, folder, listed images).
    IntegrityError
        A malformed or unsafe split file.
    """
    if name == "shapes":
        from fedpurel_lite.worlds import shapes

        n = len(shapes.CLASS_NAMES)
        v = shapes.VARIANTS.get(variant or shapes.DEFAULT_VARIANT)
        if v is None:
            raise ConfigError(f"world.variant={variant!r}: choose from {', '.join(shapes.VARIANTS)}")
        order = shapes.shapes_class_order(0) if v.shape_rank is None else shapes.shape_grouped_order(v.shape_rank, 0)
        return WorldInfo(name, n, np.full(n, shapes.N_TRAIN_PER_CLASS, dtype=np.int64), order)
    if name in ("cifar10", "cifar100"):
        from fedpurel_lite.worlds.cifar import SIZES, check_cifar_files

        check_cifar_files(name, root)
        n, per_class = SIZES[name]
        return WorldInfo(name, n, np.full(n, per_class, dtype=np.int64), np.arange(n))
    if name == "folder" and str(split_file or "").endswith(".txt"):
        from fedpurel_lite.worlds.folder import resolve_oltr

        _, labels, _ = resolve_oltr(root, str(split_file), test_split_file)
        n = int(max(labels["train"].max(), labels["test"].max(initial=0))) + 1
        counts = np.bincount(labels["train"], minlength=n)
        return WorldInfo(name, n, counts, _by_count(counts))
    if name == "folder":
        from fedpurel_lite.worlds.folder import resolve_split, split_classes

        split, _ = resolve_split(root, split_file)
        classes = split_classes(split)
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[PurePosixPath(p).parts[0]] for p in split["train"]]
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
        return WorldInfo(name, len(classes), counts, _by_count(counts))
    raise _unknown(name)


def coarse_labels_of(name: str, root: str | None = None, num_classes: int | None = None) -> np.ndarray:
    """A world's coarse label per class id, without loading its images.

    Parameters
    ----------
    name : str
        World name: ``"shapes"`` (the colour) or ``"cifar100"`` (the 20 superclasses, read from the
        dataset's ``train`` file when present, else the shipped table).
    root : str, optional
        CIFAR folder.
    num_classes : int, optional
        Checked against the table's length when given.

    Raises
    ------
    ConfigError
        The world has no coarse labels (``federation.partition="superclass"`` needs them), or the
        table does not fit the classes.
    """
    if name == "shapes":
        from fedpurel_lite.worlds.shapes import COARSE_LABELS

        table = COARSE_LABELS.copy()
    elif name == "cifar100":
        from fedpurel_lite.worlds.cifar import cifar100_coarse_labels

        table = cifar100_coarse_labels(root)
    else:
        raise ConfigError(f"federation.partition='superclass' needs coarse labels, and world {name!r} has none "
                          "(shapes: colour; cifar100: its 20 superclasses); use partition='per-class'")
    if num_classes is not None and table.size != num_classes:
        raise ConfigError(f"world {name!r}: {table.size} coarse labels for {num_classes} classes")
    return table


def load_world(name: str, **kwargs: Any) -> World:
    """Load a world by name.

    Parameters
    ----------
    name : {"shapes", "cifar10", "cifar100", "folder"}
    **kwargs
        Passed to :func:`~fedpurel_lite.worlds.shapes.load_shapes` (``domain``, ``shift``, ``seed``, ``variant``),
        :func:`~fedpurel_lite.worlds.cifar.load_cifar` (``root``, ``download``) or
        :func:`~fedpurel_lite.worlds.folder.load_folder` (``root``, ``split_file``).

    Returns
    -------
    World

    Raises
    ------
    ConfigError
        Unknown world name.
    ResourceMissingError
        Dataset files missing (see the loaders).
    IntegrityError
        Damaged dataset files or a malformed split file.
    """
    if name == "shapes":
        from fedpurel_lite.worlds.shapes import load_shapes

        return load_shapes(**kwargs)
    if name in ("cifar10", "cifar100"):
        from fedpurel_lite.worlds.cifar import load_cifar

        return load_cifar(name, **kwargs)
    if name == "folder":
        from fedpurel_lite.worlds.folder import load_folder

        return load_folder(**kwargs)
    raise _unknown(name)
