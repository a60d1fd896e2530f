"""Registries: the pieces a run is assembled from, found by name with their declared capabilities.

As open_clip finds model configs by name, the toolkit finds its PEFTs
(:data:`fedpurel_lite.peft.PEFTS`), stage-1 objectives (:data:`fedpurel_lite.purify.OBJECTIVES`)
and personalization kinds (:data:`fedpurel_lite.personalize.PERSONALIZATIONS`) here. Each entry is
a small frozen dataclass (a *spec*) that says what the piece needs (the backbone, the zero-shot
teacher, ...), so validation messages, choices and dispatch all come from one place: adding a
PEFT is one decorated builder in one module, with no ``peft == "..."`` check anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

S = TypeVar("S")


class Registry(Generic[S]):
    """Named specs of one kind of piece.

    Parameters
    ----------
    kind : str
        What the entries are, for messages (``"PEFT"``).
    key : str
        The config key that selects an entry (``"method.peft"``), for messages.
    """

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self._specs: dict[str, S] = {}

    def add(self, name: str, spec: S) -> S:
        """Register ``spec`` under ``name`` (a name can be registered once)."""
        if name in self._specs:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._specs[name] = spec
        return spec

    def decorator(self, make: Callable[..., S], name: str, **capabilities: object) -> Callable:
        """A decorator registering ``make(name=name, build=fn, **capabilities)`` for the function."""
        def register(fn: Callable) -> Callable:
            self.add(name, make(name=name, build=fn, **capabilities))
            return fn

        return register

    def get(self, name: str) -> S:
        """The spec registered as ``name``.

        Raises
        ------
        ConfigError
            Unknown name, listing the registered ones.
        """
        try:
            return self._specs[name]
        except KeyError:
            raise ConfigError(f"{self.key}={name!r}: unknown {self.kind}; allowed one of "
                              f"{', '.join(self._specs)}") from None

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order."""
        return tuple(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def specs(self) -> tuple[S, ...]:
        """Registered specs in registration order."""
        return tuple(self._specs.values())
