"""Worlds (FLamby-style, one shape for all), found by name in :data:`WORLD_PLUGINS`.

Every module of this package is imported here; a world module registers itself with
:func:`~fedpurel_lite.worlds.base.register_world` (its loader, its cheap description with the
class order, its coarse labels, its config section ``[world.<name>]``), so a new world is one
module and nothing outside it names it. The shipped worlds: ``shapes`` (embedded, rendered),
``cifar10`` / ``cifar100`` (torchvision) and ``folder`` (your own images, JSON split or OLTR lists).

Use them through a config (:func:`describe`, :func:`coarse_labels`, :func:`source`) or by name
with the loader's options (:func:`load_world`, :func:`describe_world`, :func:`coarse_labels_of`).
:func:`describe` is the cheap pre-flight: class count, per-class training-pool sizes and the
head-to-tail class order from constants, file listings or a split file, without rendering or
reading any image.

A world module must not import torch at import time (the config looks the sections up at once).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

from fedpurel_lite.errors import ConfigError
from fedpurel_lite.worlds.base import WORLD_PLUGINS, World, WorldInfo, WorldSpec, register_world

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

#: the registered world names
WORLDS: tuple[str, ...] = WORLD_PLUGINS.names()

__all__ = ["WORLDS", "WORLD_PLUGINS", "World", "WorldInfo", "WorldSpec", "check_files", "coarse_labels",
           "coarse_labels_of", "describe", "describe_world", "load_world", "register_world", "source"]


def _spec(name: str) -> WorldSpec:
    if name not in WORLD_PLUGINS:
        raise ConfigError(f"unknown world {name!r} (setting world); choose from {', '.join(WORLD_PLUGINS)}")
    return WORLD_PLUGINS.get(name)


def _section(spec: WorldSpec, options: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The world's section from loader-style options (``None`` = the default), and the options it has no key for."""
    if spec.config is None:
        return None, dict(options)
    keys = {f.name for f in dataclasses.fields(spec.config)}
    given = {k: str(v) if isinstance(v, PurePath) else v for k, v in options.items() if k in keys and v is not None}
    return spec.config(**given), {k: v for k, v in options.items() if k not in keys}


def _config_section(config: Any) -> tuple[WorldSpec, Any]:
    spec = _spec(config.world.name)
    return spec, config.plugin_section("world", spec.name)


# ---------------------------------------------------------------------- from a config
def describe(config: Any) -> WorldInfo:
    """Describe the config's world cheaply (no image is rendered or read), for the pre-flight.

    Parameters
    ----------
    config : RunConfig
        Its ``world.name`` and the world's section ``[world.<name>]``.

    Raises
    ------
    ConfigError
        Unknown world name, or a required key missing (the folder world's ``root``).
    ResourceMissingError
        Dataset files or folder missing.
    IntegrityError
        A malformed or unsafe split file.
    """
    spec, section = _config_section(config)
    return spec.describe(section)


def check_files(config: Any) -> None:
    """Read the config's world's own list files now, bounded, before any image (nothing for worlds without any).

    Raises
    ------
    UserError
        Naming the file (and the line).
    """
    spec, section = _config_section(config)
    if spec.check_files is not None:
        spec.check_files(section)


def coarse_labels(config: Any, num_classes: int | None = None) -> np.ndarray:
    """The config's world's coarse label per class id, without loading its images.

    Raises
    ------
    ConfigError
        The world has no coarse labels (``federation.partition="superclass"`` needs them), or the
        table does not fit ``num_classes``.
    """
    spec, section = _config_section(config)
    return _coarse(spec, section, num_classes)


def source(config: Any) -> tuple[str, Callable[[], World]]:
    """The config's world fingerprint and a function that loads it (without loading it when the world can tell)."""
    spec, section = _config_section(config)
    if spec.fingerprint is not None:
        return spec.fingerprint(section), lambda: spec.load(section)
    world = spec.load(section)
    return world.fingerprint(), lambda: world


def _coarse(spec: WorldSpec, section: Any, num_classes: int | None) -> np.ndarray:
    if spec.coarse_labels is None:
        having = ", ".join(s.name for s in WORLD_PLUGINS.specs() if s.coarse_labels is not None)
        raise ConfigError(f"federation.partition='superclass' needs coarse labels, and world {spec.name!r} has none "
                          f"(worlds with coarse labels: {having}); use partition='per-class'")
    table = np.asarray(spec.coarse_labels(section), dtype=np.int64)
    if num_classes is not None and table.size != num_classes:
        raise ConfigError(f"world {spec.name!r}: {table.size} coarse labels for {num_classes} classes")
    return table


# ---------------------------------------------------------------------- by name, with the loaders' options
def describe_world(name: str, root: str | None = None, split_file: str | None = None,
                   test_split_file: str | None = None, variant: str | None = None) -> WorldInfo:
    """Describe a world by name cheaply (no image is rendered or read).

    Parameters
    ----------
    name : str
        A registered world (:data:`WORLDS`).
    root, split_file, test_split_file, variant : str, optional
        Keys of the world's section (``None``: its default); keys the world has none of are ignored.

    Raises
    ------
    ConfigError, ResourceMissingError, IntegrityError
        As :func:`describe`.
    """
    spec = _spec(name)
    options = {"root": root, "split_file": split_file, "test_split_file": test_split_file, "variant": variant}
    return spec.describe(_section(spec, options)[0])


def coarse_labels_of(name: str, root: str | None = None, num_classes: int | None = None) -> np.ndarray:
    """A world's coarse label per class id by name, without loading its images (see :func:`coarse_labels`).

    Parameters
    ----------
    name : str
        World name (``"shapes"``: the colour; ``"cifar100"``: the 20 superclasses, read from the
        dataset's ``train`` file when present, else the shipped table).
    root : str, optional
        Dataset folder.
    num_classes : int, optional
        Checked against the table's length when given.
    """
    spec = _spec(name)
    return _coarse(spec, _section(spec, {"root": root})[0], num_classes)


def load_world(name: str, **kwargs: Any) -> World:
    """Load a world by name.

    Parameters
    ----------
    name : str
        A registered world (:data:`WORLDS`).
    **kwargs
        Keys of the world's section (``root``, ``split_file``, ``variant``, ...; ``None``: the
        default) and its loader's other options (the shapes world's ``domain``, ``shift``,
        ``seed``; CIFAR's ``download``; the folder world's ``templates``).

    Raises
    ------
    ConfigError
        Unknown world name.
    ResourceMissingError
        Dataset files missing (see the loaders).
    IntegrityError
        Damaged dataset files or a malformed split file.
    """
    spec = _spec(name)
    section, extra = _section(spec, kwargs)
    return spec.load(section, **extra) if section is not None else spec.load(None, **extra)
