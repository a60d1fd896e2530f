"""Worlds (FLamby-style, one shape for all): ``load_world("shapes" | "cifar10" | "cifar100" | "folder")``."""

from __future__ import annotations

from typing import Any

from fedpurel_lite.worlds.base import World

WORLDS = ("shapes", "cifar10", "cifar100", "folder")

__all__ = ["WORLDS", "World", "load_world"]


def load_world(name: str, **kwargs: Any) -> World:
    """Load a world by name.

    Parameters
    ----------
    name : {"shapes", "cifar10", "cifar100", "folder"}
    **kwargs
        Passed to :func:`~fedpurel_lite.worlds.shapes.load_shapes` (``domain``, ``shift``, ``seed``),
        :func:`~fedpurel_lite.worlds.cifar.load_cifar` (``root``, ``download``) or
        :func:`~fedpurel_lite.worlds.folder.load_folder` (``root``, ``split_file``).

    Returns
    -------
    World
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
    raise ValueError(f"unknown world {name!r}; choose from {WORLDS}")
