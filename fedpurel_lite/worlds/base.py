"""The shape every world shares (FLamby-style): images, labels, class names, templates, class order.

Also the world plugin interface: a world module registers itself in :data:`WORLD_PLUGINS` with
:func:`register_world` (its loader, its cheap description, its coarse labels, its config section),
so nothing outside the module names it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpurel_lite.config.registry import Registry, knob

__all__ = ["DEFAULT_TEMPLATES", "SINGLE_TEMPLATE", "WORLD_PLUGINS", "World", "WorldInfo", "WorldSpec",
           "by_count", "fingerprint_of", "knob", "register_world"]

#: Prompt templates used for worlds that have no better ones (CLIP-style, short).
DEFAULT_TEMPLATES: list[str] = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "itap of a {}.",
    "a close-up photo of a {}.",
]
#: The single template of the reference code's zero-shot teacher and text prompts (``world.templates = "single"``).
SINGLE_TEMPLATE = "a photo of a {}."


def fingerprint_of(name: str, params: dict[str, Any]) -> str:
    """``"<name>:<sorted JSON of params>"``, the fingerprint format of every world."""
    return f"{name}:{json.dumps(params, sort_keys=True, default=str)}"


@dataclass
class World:
    """A labelled image world with a train pool, a balanced test pool and a head-to-tail class order.

    Attributes
    ----------
    name : str
        Registry name (``"shapes"``, ``"cifar100"``, ...).
    class_names : list of str
        Human-readable class names, index = class id.
    templates : list of str
        Prompt format strings with one ``{}`` for the class name.
    train_images, test_images : numpy.ndarray or Dataset
        ``uint8`` arrays ``N x H x W x 3`` (shapes) or dataset objects yielding ``(PIL image, label)``.
    train_labels, test_labels : numpy.ndarray
        ``int64`` label arrays.
    class_order : numpy.ndarray
        Class ids ordered from head (rank 0) to tail; used by the long-tail assignment.
    params : dict
        Everything that determines the world's content; enters :meth:`fingerprint`.
    coarse_labels : numpy.ndarray, optional
        Coarse label of every class id (CIFAR-100's 20 superclasses, the shapes world's colour), for
        the superclass client split; ``None`` when the world has none.
    """

    name: str
    class_names: list[str]
    templates: list[str]
    train_images: Any
    train_labels: np.ndarray
    test_images: Any
    test_labels: np.ndarray
    class_order: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    coarse_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.train_labels = np.asarray(self.train_labels, dtype=np.int64)
        self.test_labels = np.asarray(self.test_labels, dtype=np.int64)
        self.class_order = np.asarray(self.class_order, dtype=np.int64)
        num_classes = len(self.class_names)
        if sorted(self.class_order.tolist()) != list(range(num_classes)):
            raise ValueError(f"class_order of world {self.name!r} is not a permutation of 0..{num_classes - 1}")
        if len(self.train_labels) != len(self.train_images) or len(self.test_labels) != len(self.test_images):
            raise ValueError(f"world {self.name!r}: images and labels differ in length")
        if self.coarse_labels is not None:
            self.coarse_labels = np.asarray(self.coarse_labels, dtype=np.int64)
            if self.coarse_labels.shape != (num_classes,):
                raise ValueError(f"world {self.name!r}: {self.coarse_labels.size} coarse labels for {num_classes} "
                                 "classes")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError(f"world {self.name!r}: every template needs one '{{}}' placeholder")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def fingerprint(self) -> str:
        """A stable string naming the world and every parameter that determines its content.

        Returns
        -------
        str
            ``"<name>:<sorted JSON of params>"``; caches compare it verbatim.
        """
        return fingerprint_of(self.name, self.params)

    def __repr__(self) -> str:  # the arrays are large: keep the repr short
        return (
            f"World(name={self.name!r}, classes={self.num_classes}, train={len(self.train_labels)}, "
            f"test={len(self.test_labels)}, params={self.params})"
        )


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
    test_size : int or None
        Images in the test pool when known before loading (for cost estimates).
    """

    name: str
    num_classes: int
    train_counts_per_class: np.ndarray
    class_order: np.ndarray | None = None
    test_size: int | None = None

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


def by_count(counts: np.ndarray) -> np.ndarray:
    """Class ids by decreasing training count, ties in label order (the class order of worlds ranked by their data)."""
    return np.lexsort((np.arange(len(counts)), -np.asarray(counts)))


@dataclass(frozen=True)
class WorldSpec:
    """A registered world.

    Every callable takes the world's config section (an instance of ``config``, the
    ``[world.<name>]`` table; ``None`` when the world has no section).

    Attributes
    ----------
    name : str
        Registry key (``world.name`` in a config).
    load : callable
        ``load(section, **extra) -> World``; ``extra`` are loader options that are not config
        keys (the shapes world's ``domain``, CIFAR's ``download``, ...).
    describe : callable
        ``describe(section) -> WorldInfo`` without reading or rendering an image (the pre-flight);
        its ``class_order`` is the loaded world's.
    config : type, optional
        The world's config section: a frozen dataclass of :func:`~fedpurel_lite.config.registry.knob` fields.
    coarse_labels : callable, optional
        ``coarse_labels(section) -> int64 [num_classes]``, a coarse label per class id without
        loading the images (``federation.partition = "superclass"``); ``None``: the world has none.
    fingerprint : callable, optional
        ``fingerprint(section) -> str``, the loaded world's :meth:`World.fingerprint` without loading
        it (caches are then found without rendering or reading the world).
    check_files : callable, optional
        ``check_files(section)`` reads the world's own list files now, bounded, and raises one
        :class:`~fedpurel_lite.errors.UserError` naming the file (the pre-flight, before any image).
    description : str
        One line for tables and messages.
    """

    name: str
    load: Callable[..., World]
    describe: Callable[[Any], WorldInfo]
    config: type | None = None
    coarse_labels: Callable[[Any], np.ndarray] | None = None
    fingerprint: Callable[[Any], str] | None = None
    check_files: Callable[[Any], None] | None = None
    description: str = ""


#: every registered world
WORLD_PLUGINS: Registry[WorldSpec] = Registry("world", "world.name", axis="world")


def register_world(name: str, *, describe: Callable[[Any], WorldInfo], config: type | None = None,
                   coarse_labels: Callable[[Any], np.ndarray] | None = None,
                   fingerprint: Callable[[Any], str] | None = None, check_files: Callable[[Any], None] | None = None,
                   description: str = "") -> Callable[[Callable[..., World]], Callable[..., World]]:
    """Decorator registering a loader ``fn(section, **extra) -> World`` as world ``name`` (see :class:`WorldSpec`)."""
    def register(fn: Callable[..., World]) -> Callable[..., World]:
        spec = WorldSpec(name, fn, describe, config, coarse_labels, fingerprint, check_files, description)
        WORLD_PLUGINS.add(name, spec, config)
        return fn

    return register
