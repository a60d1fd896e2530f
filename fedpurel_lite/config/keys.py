"""Keys, types and values of :class:`~fedpurel_lite.config.RunConfig`: dotted and bare names, the keys of the earlier
layout (:data:`MOVED`), ``--set`` text parsed by a field's type, and the strict checks of one value.

Kept apart from :mod:`fedpurel_lite.config` so the config class stays short; imports no torch (a plugin's
section is looked up through :func:`fedpurel_lite.config.registry.sections` only when a key names a plugin).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import fields
from typing import Any, Protocol

from ..errors import ConfigError
from .checks import CHOICES, MAX_TEXT, RANGES, in_range, shown
from .registry import AXES, field_kind, sections, selected_plugin
from .sections import CORE

__all__ = ["ALIASES", "MOVED", "Selecting", "resolve_key", "selecting_value"]

_RANGES = RANGES

#: keys of the earlier layout -> ``(axis, plugin, key)`` of their new place (plugin ``""``: the
#: selected world's section). An old key is an error naming the new one.
MOVED: dict[str, tuple[str, str, str]] = {
    "method.n_ctx": ("peft", "prompt", "n_ctx"),
    "method.ctx_init": ("peft", "prompt", "ctx_init"),
    "method.class_specific": ("peft", "prompt", "class_specific"),
    "method.adapter_reduction": ("peft", "adapter", "reduction"),
    "method.adapter_ratio": ("peft", "adapter", "ratio"),
    "method.lora_rank": ("peft", "lora", "rank"),
    "method.lora_alpha": ("peft", "lora", "alpha"),
    "method.lora_towers": ("peft", "lora", "towers"),
    "world.variant": ("world", "shapes", "variant"),
    "world.root": ("world", "", "root"),
    "world.split_file": ("world", "folder", "split_file"),
    "world.test_split_file": ("world", "folder", "test_split_file"),
    "world.class_names_file": ("world", "folder", "class_names_file"),
    "baselines.prox_mu": ("objective", "prox", "mu"),
    "baselines.la_tau": ("objective", "la", "tau"),
    "baselines.interp_beta": ("personal", "interp", "beta"),
    "baselines.folio_theta": ("personal", "folio", "theta"),
    "personalization.residual_scale": ("personal", "residual", "scale"),
    "personalization.residual_bias": ("personal", "residual", "bias"),
}
#: bare names of the earlier layout that no section has any more
_MOVED_BARE = {old.split(".")[1]: old for old, new in MOVED.items() if old.split(".")[1] != new[2]}
#: why keys moved, by axis
_WHY = "each world, PEFT, stage-1 objective and personalization kind has its own section"


def _moved(old: str, world: str | None = None, shown_as: str | None = None) -> ConfigError:
    """The one-line error for a key of the earlier layout (``shown_as``: as the user wrote it), naming its new key."""
    axis, plugin, key = MOVED[old]
    why = _WHY
    if not plugin:  # a key several worlds' sections have: the selected world's, or all of them
        owners = [n for n, cls in sections(axis).items() if key in _names(cls)]
        if world not in owners:
            return ConfigError(f"{shown_as or old} moved to the world's own section: "
                               f"{', '.join(f'{axis}.{n}.{key}' for n in owners)} ({why}: [{axis}.<name>] {key} = "
                               "... in a TOML file)")
        plugin = world
    new = f"{axis}.{plugin}.{key}"
    return ConfigError(f"{shown_as or old} moved to {new} ({why}: [{axis}.{plugin}] {key} = ... in a TOML file, "
                       f"--set {new}=... on the command line)")


def _refuse_moved(table: str, given: Mapping[Any, Any], source: str) -> None:
    """Refuse a table of the earlier layout that no longer exists (``[baselines]``), naming the new keys.

    Raises
    ------
    ConfigError
        The table's first moved key and its new place; or, for a table whose keys all moved, where they went.
    """
    moved = next((f"{table}.{k}" for k in given if isinstance(k, str) and f"{table}.{k}" in MOVED), None)
    if moved:
        raise ConfigError(f"{source}: {_moved(moved)}")
    went = [f"{'.'.join(new)}" for old, new in MOVED.items() if old.split(".")[0] == table]
    if went:
        raise ConfigError(f"{source}: the table [{table}] is gone; its keys moved to {', '.join(went)} ({_WHY})")


def _names(section: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(section))



_TABLES: tuple[str, ...] = tuple(CORE)
_SECTION_CLASSES: dict[str, type] = dict(CORE)
#: the TOML tables: the core sections, then the axes that are only plugin tables ([peft])
_ALL_TABLES: tuple[str, ...] = (*_TABLES, *(a for a in AXES if a not in _TABLES))
_FIELD_TYPES: dict[str, str] = {f"{t}.{f.name}": str(f.type) for t in _TABLES for f in fields(_SECTION_CLASSES[t])}
_BARE: dict[str, list[str]] = {}
for _full in _FIELD_TYPES:
    _BARE.setdefault(_full.split(".")[1], []).append(_full)
#: bare names that stand for a section's ``name``
ALIASES: dict[str, str] = {"world": "world.name", "method": "method.name"}


class _Ambiguous(ConfigError):
    """A bare name of several plugins' sections, none of them selected."""


def _known_tables(axis: str) -> str:
    return ", ".join(f"[{axis}.{n}]" for n, cls in sections(axis).items() if fields(cls)) or "none"


def _plugin_keys() -> dict[str, list[str]]:
    """Bare name -> ``axis.plugin.key`` of every plugin section's field (imports the plugin packages).

    Raises
    ------
    TypeError
        A plugin's name or field shadows a key of the core tables.
    """
    out: dict[str, list[str]] = {}
    for axis in AXES:
        for plugin, cls in sections(axis).items():
            if axis in _TABLES and plugin in _names(_SECTION_CLASSES[axis]):
                raise TypeError(f"{axis} plugin {plugin!r} is named like the key {axis}.{plugin}")
            for f in fields(cls):
                if f.name in _BARE or f.name in ALIASES:
                    raise TypeError(f"{cls.__name__}.{f.name} shadows the config key {f.name!r}; rename the field")
                out.setdefault(f.name, []).append(f"{axis}.{plugin}.{f.name}")
    return out


def selecting_value(axis: str, data: Mapping[str, Any]) -> str:
    """The value of the key that selects ``axis``'s plugin (:class:`~fedpurel_lite.config.registry.Axis`) in nested
    tables."""
    table, name = AXES[axis].key.split(".")
    given = data.get(table, {})
    if isinstance(given, Mapping) and name in given:
        return str(given[name])
    return str(getattr(_SECTION_CLASSES[table](), name))


class _Selection(Mapping[str, str]):
    """The plugin each axis selects, each found when first asked (a method's record imports torch)."""

    def __init__(self, plugin: Callable[[str], str]) -> None:
        self._plugin = plugin
        self._found: dict[str, str] = {}

    def __getitem__(self, axis: str) -> str:
        if axis not in AXES:
            raise KeyError(axis)
        if axis not in self._found:
            self._found[axis] = self._plugin(axis)
        return self._found[axis]

    def __iter__(self) -> Iterator[str]:
        return iter(AXES)

    def __len__(self) -> int:
        return len(AXES)


def _selection(data: Mapping[str, Any]) -> Mapping[str, str]:
    """The plugin each axis selects in a nested dict of tables (found lazily)."""
    return _Selection(lambda axis: selected_plugin(axis, selecting_value(axis, data)))


class Selecting(Protocol):
    """Something that names the selected plugin of each axis (a :class:`~fedpurel_lite.config.RunConfig`)."""

    def selected(self, axis: str) -> str: ...


def _chosen(selected: Selecting | Mapping[str, str] | None) -> Mapping[str, str]:
    if selected is None:
        return {}
    if isinstance(selected, Mapping):
        return selected
    return _Selection(selected.selected)


def resolve_key(key: str, selected: Selecting | Mapping[str, str] | None = None) -> str:
    """The dotted ``section.key`` (or ``axis.plugin.key``) of a dotted or bare key.

    Parameters
    ----------
    key : str
        ``stage1.lr``, ``lr``, ``peft.lora.rank``, ``rank``, ...
    selected : RunConfig or mapping, optional
        The selected plugin of each axis (``{"world": "folder"}``): a bare name of several
        plugins' sections then means the selected plugin's.

    Raises
    ------
    ConfigError
        An unknown key (with close names), a key of the earlier layout (naming its new key), or an
        ambiguous bare name.
    """
    if not isinstance(key, str):
        raise ConfigError(f"config key {shown(key)} is a {type(key).__name__}; keys are strings")
    key = key.strip()
    if key in _FIELD_TYPES:
        return key
    if key in ALIASES:
        return ALIASES[key]
    chosen = _chosen(selected)
    world = chosen.get("world")
    if key in MOVED or key in _MOVED_BARE:
        raise _moved(_MOVED_BARE.get(key, key), world, key)
    if "." not in key and len(_BARE.get(key, [])) == 1:
        return _BARE[key][0]
    if len(_BARE.get(key, [])) > 1:
        raise ConfigError(f"config key {key!r} is ambiguous: write one of {', '.join(_BARE[key])}")
    parts = key.split(".")
    if len(parts) == 3 and parts[0] in AXES:
        cls = sections(parts[0]).get(parts[1])
        if cls is None:
            raise ConfigError(f"unknown config key {shown(key)}: {parts[0]} {parts[1]!r} has no config section; "
                              f"known: {_known_tables(parts[0])}")
        if parts[2] in _names(cls):
            return key
        raise ConfigError(f"unknown config key {shown(key)}; [{parts[0]}.{parts[1]}] has {', '.join(_names(cls))}")
    plugin = _plugin_keys()
    if "." not in key and key in plugin:
        found = plugin[key]
        if len(found) == 1:
            return found[0]
        mine = [k for k in found if chosen.get(k.split(".")[0]) == k.split(".")[1]]
        if len(mine) == 1:
            return mine[0]
        raise _Ambiguous(f"config key {key!r} is ambiguous: write one of {', '.join(found)} (a bare name means the "
                         "selected plugin's)")
    import difflib

    names = [*_FIELD_TYPES, *_BARE, *ALIASES, *plugin, *(k for v in plugin.values() for k in v)]
    near = difflib.get_close_matches(key[:100], names, n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else "; keys look like section.key (see configs/)"
    raise ConfigError(f"unknown config key {shown(key)}{hint}")


def _put(data: dict[str, dict[str, Any]], full: str, value: Any, seen: set[str]) -> None:
    """Set the dotted key ``full`` in nested ``data`` (a ``--set`` text parsed by the field's type)."""
    if full in seen:
        raise ConfigError(f"{full} is given twice")
    seen.add(full)
    parts = full.split(".")
    value = _parse_text(full, _kind(full), value) if isinstance(value, str) else value
    if len(parts) == 2:
        data[parts[0]][parts[1]] = value
    else:
        table = data.setdefault(parts[0], {})
        section = table.get(parts[1])
        if not isinstance(section, dict):
            section = table[parts[1]] = {}
        section[parts[2]] = value


def _kind(full: str) -> str:
    """The type name of a resolved key."""
    if full in _FIELD_TYPES:
        return _FIELD_TYPES[full]
    axis, plugin, name = full.split(".")
    return next(field_kind(f) for f in fields(sections(axis)[plugin]) if f.name == name)


def _section_from(axis: str, plugin: Any, values: Mapping[Any, Any], source: str) -> Any:
    """A plugin's section from a table of its keys, strictly typed and checked."""
    cls = sections(axis).get(plugin) if isinstance(plugin, str) else None
    if cls is None:
        raise ConfigError(f"{source}: unknown table [{axis}.{_name(plugin)}]; known: {_known_tables(axis)}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted((k for k in values if k not in known), key=str)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {_listed(f'{axis}.{plugin}.{_name(k)}' for k in unknown)}; "
                          f"[{axis}.{plugin}] has {', '.join(known) or 'no keys'}")
    section = cls(**{k: _typed(f"{axis}.{plugin}.{k}", field_kind(known[k]), v) for k, v in values.items()})
    _check_section(f"{axis}.{plugin}", section)
    return section


def _check_section(prefix: str, section: Any) -> None:
    """Type, choice and range checks of a section's fields, from the ranges and choices declared with them."""
    for f in fields(section):
        key, value = f"{prefix}.{f.name}", getattr(section, f.name)
        _typed(key, field_kind(f), value)
        choices, spec = f.metadata.get("choices"), f.metadata.get("range")
        if choices and value not in choices:
            raise ConfigError(f"{key}={shown(value)}: allowed one of {', '.join(choices)}")
        if spec and not in_range(value, spec):
            raise ConfigError(f"{key}={shown(value)}: allowed {spec}")


def _listed(names: Iterable[str], most: int = 5) -> str:
    """The first ``most`` names, comma-separated, then how many more."""
    items = list(names)
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def _name(key: Any) -> str:
    """A table or key name as given, for a message (quoted when it is not a plain printable string)."""
    return key if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 60 else shown(key)


def _split_pair(pair: str) -> tuple[str, str]:
    if not isinstance(pair, str):
        raise ConfigError(f"override {shown(pair)} is a {type(pair).__name__}; write key=value")
    if "=" not in pair:
        raise ConfigError(f"override {shown(pair)} must look like key=value")
    key, value = pair.split("=", 1)
    return key.strip(), value.strip()


_INT = re.compile(r"[+-]?\d+")


def _parse_text(key: str, kind: str, text: str) -> Any:
    """A ``--set`` value parsed by the field's type (strings are taken as they are)."""
    if kind == "str":
        return text
    if kind == "bool":
        if text in ("true", "false"):
            return text == "true"
        raise ConfigError(f"{key}={shown(text)}: allowed true or false")
    if kind == "int":
        if _INT.fullmatch(text.replace("_", "")):
            if len(text) > 100:  # beyond every range (and Python's limit on digits read)
                raise ConfigError(f"{key}={shown(text)}: allowed {_RANGES.get(key, 'a smaller integer')}")
            try:
                return int(text)
            except ValueError:  # misplaced underscores
                pass
        raise ConfigError(f"{key}={shown(text)}: allowed an integer")
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{key}={shown(text)}: allowed a finite number") from None
    return value


def _typed(key: str, kind: str, value: Any) -> Any:
    """``value`` checked against the field's type (ints are ints, floats finite, bools bools)."""
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                value = float(value)
            except OverflowError:  # an integer beyond the float range
                value = math.inf
        if ok and not math.isfinite(value):
            raise ConfigError(f"{key}={shown(value)}: allowed a finite number")
    else:
        ok = isinstance(value, str)
        if ok and len(value) > MAX_TEXT:
            raise ConfigError(f"{key}={shown(value)}: {len(value)} characters; allowed at most {MAX_TEXT}")
        bad = next((c for c in value if unicodedata.category(c) in _CONTROL), None) if ok else None
        if bad is not None:
            raise ConfigError(f"{key}={shown(value)}: holds the control character {bad!r}; allowed printable text")
    if not ok:
        raise ConfigError(f"{key}={shown(value)} is a {type(value).__name__}; allowed {_KIND_TEXT[kind]}")
    return value


#: Unicode categories a text field refuses: control characters, lone surrogates, line and paragraph separators
_CONTROL = ("Cc", "Cs", "Zl", "Zp")
_KIND_TEXT = {"bool": "true or false", "int": "an integer", "float": "a finite number", "str": "a string"}


def _check_value(key: str, value: Any) -> None:
    """Range and choice checks of one field (types are checked by :func:`_typed`)."""
    _typed(key, _FIELD_TYPES[key], value)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}={shown(value)}: allowed one of {', '.join(CHOICES[key])}")
    if key in _RANGES and not in_range(value, _RANGES[key]):
        raise ConfigError(f"{key}={shown(value)}: allowed {_RANGES[key]}")

