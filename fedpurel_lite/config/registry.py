"""Registries: the pieces a run is assembled from, found by name with their declared capabilities and config sections.

As open_clip finds model configs by name, the toolkit finds its worlds
(:data:`fedpurel_lite.worlds.WORLD_PLUGINS`), PEFTs (:data:`fedpurel_lite.peft.PEFTS`), stage-1
objectives (:data:`fedpurel_lite.purify.OBJECTIVES`) and personalization kinds
(:data:`fedpurel_lite.engine.personalize.PERSONALIZATIONS`) here. Each entry is a small frozen dataclass
(a *spec*) that says what the piece needs (the backbone, the zero-shot teacher, ...), so validation
messages, choices and dispatch all come from one place: adding a PEFT is one decorated builder in
one module, with no ``peft == "..."`` check anywhere else.

A plugin of an *axis* (:data:`AXES`: ``world``, ``peft``, ``objective``, ``personal``) may declare
its own **config section**: a frozen dataclass of its knobs, each field made with :func:`knob`
(default, help text, range or choices). It becomes the TOML table ``[<axis>.<plugin>]``
(``[peft.lora] rank = 8``, ``[objective.prox] mu = 0.01``) of :class:`~fedpurel_lite.config.RunConfig`,
settable as ``--set peft.lora.rank=4``, and the plugin reads it with ``config.section(LoRAConfig)``.
A config selects one plugin per axis (:class:`Axis`): directly by a key (``method.peft``) or through
the record that key names (``method.name`` names a method, whose ``stage1`` is the objective). This
module imports no torch: the config finds the sections by importing the axis's package
(:func:`sections`), and a method's record (:func:`selected_plugin`), only when it needs them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

from ..errors import ConfigError

S = TypeVar("S")
T = TypeVar("T")



class Axis(NamedTuple):
    """A plugin axis with config sections: where its plugins register and how a config selects one.

    Attributes
    ----------
    package : str
        The package whose modules register the axis's plugins (imported to find their sections).
    key : str
        The core config key that selects the plugin (``"method.peft"``), or that names the record
        which does (``"method.name"``).
    record : str
        ``""`` when ``key`` names the plugin itself; else ``"module:function"``, a function from the
        key's value to its record (``"fedpurel_lite.methods:get_method"``), imported only when asked.
    field : str
        The record's attribute that names the plugin (``"stage1"``; its ``None``: no plugin).
    """

    package: str
    key: str
    record: str = ""
    field: str = ""


#: the plugin axes with config sections, by TOML table
AXES: dict[str, Axis] = {
    "world": Axis("fedpurel_lite.worlds", "world.name"),
    "peft": Axis("fedpurel_lite.peft", "method.peft"),
    "objective": Axis("fedpurel_lite.purify", "method.name", "fedpurel_lite.methods:get_method", "stage1"),
    "personal": Axis("fedpurel_lite.personal", "method.name", "fedpurel_lite.methods:get_method", "personal"),
}
#: field types a section may declare (what TOML and ``--set`` can give)
SECTION_TYPES = ("bool", "int", "float", "str")
_SECTIONS: dict[str, dict[str, type]] = {axis: {} for axis in AXES}


def knob(default: T, help: str, *, range: str | None = None,  # noqa: A002 - the dataclass metadata's names
         choices: tuple[str, ...] | None = None) -> T:
    """A field of a plugin's config section: its default, help text and allowed values.

    Parameters
    ----------
    default : bool, int, float or str
        The default (the plugin's behaviour when the key is not set).
    help : str
        One line for ``--help``-style listings and the docs.
    range : str, optional
        Allowed interval of a number, as shown in messages: ``"[1, 64]"``, ``"(0, 1024]"`` (bounded above).
    choices : tuple of str, optional
        Allowed values of a string.
    """
    return dataclasses.field(default=default, metadata={"help": help, "range": range, "choices": choices})


def register_section(axis: str, name: str, config: type) -> None:
    """Declare ``config`` (a frozen dataclass of :func:`knob` fields) as the section ``[axis.name]``.

    Raises
    ------
    TypeError
        ``config`` is not a frozen dataclass, a field has no default, no help text or a type other
        than bool, int, float or str.
    ValueError
        The axis is unknown, or ``name`` already has a section.
    """
    if axis not in AXES:
        raise ValueError(f"unknown plugin axis {axis!r}; known: {', '.join(AXES)}")
    params = getattr(config, "__dataclass_params__", None)
    if not dataclasses.is_dataclass(config) or params is None or not params.frozen:
        raise TypeError(f"the config section of {axis} {name!r} must be a frozen dataclass, got {config!r}")
    for f in dataclasses.fields(config):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind not in SECTION_TYPES:
            raise TypeError(f"{config.__name__}.{f.name}: type {kind}; a config field is one of {SECTION_TYPES}")
        if f.default is dataclasses.MISSING or not f.metadata.get("help"):
            raise TypeError(f"{config.__name__}.{f.name}: every config field needs a default and help text "
                            "(make it with fedpurel_lite.config.registry.knob)")
    if name in _SECTIONS[axis]:
        raise ValueError(f"{axis} {name!r} already has a config section")
    _SECTIONS[axis][name] = config


def sections(axis: str) -> dict[str, type]:
    """The config sections of an axis's plugins by plugin name (imports the axis's package first)."""
    importlib.import_module(AXES[axis].package)
    return dict(_SECTIONS[axis])


def selected_plugin(axis: str, value: str) -> str:
    """The plugin of ``axis`` that the value of its selecting key (:attr:`Axis.key`) selects.

    The value itself, or the plugin its record names (importing the record's module: a method's
    record imports torch); ``""`` when the record names none or the value names no record.
    """
    spec = AXES[axis]
    if not spec.record:
        return value
    module, function = spec.record.split(":")
    try:
        record = getattr(importlib.import_module(module), function)(value)
    except ConfigError:  # an unknown method: preflight names it; it selects no plugin here
        return ""
    return getattr(record, spec.field) or ""


def section_names(config: type) -> list[tuple[str, str]]:
    """``(axis, plugin)`` of every section registered with the class ``config`` (already imported plugins)."""
    return [(axis, name) for axis, found in _SECTIONS.items() for name, cls in found.items() if cls is config]


def field_kind(f: dataclasses.Field[Any]) -> str:
    """``"bool"``, ``"int"``, ``"float"`` or ``"str"``: a section field's type as a name."""
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


class Registry(Generic[S]):
    """Named specs of one kind of piece.

    Parameters
    ----------
    kind : str
        What the entries are, for messages (``"PEFT"``).
    key : str
        The config key that selects an entry (``"method.peft"``), for messages.
    axis : str, optional
        The plugin axis (:data:`AXES`) whose config sections the entries declare.
    """

    def __init__(self, kind: str, key: str, axis: str | None = None) -> None:
        self.kind = kind
        self.key = key
        self.axis = axis
        self._specs: dict[str, S] = {}

    def add(self, name: str, spec: S, config: type | None = None) -> S:
        """Register ``spec`` under ``name`` (a name can be registered once), with its config section."""
        if name in self._specs:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if config is not None:
            if self.axis is None:
                raise ValueError(f"{self.kind} entries have no config sections")
            register_section(self.axis, name, config)
        self._specs[name] = spec
        return spec

    def decorator(self, make: Callable[..., S], name: str, **capabilities: object) -> Callable[[Any], Any]:
        """A decorator registering ``make(name=name, build=fn, **capabilities)`` for the function."""
        def register(fn: Any) -> Any:
            config = capabilities.get("config")
            self.add(name, make(name=name, build=fn, **capabilities), config if isinstance(config, type) else None)
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
