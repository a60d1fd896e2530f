"""`RunConfig`: every knob of a run as typed, nested sections that match the TOML tables.

A preset (``configs/*.toml``) has one table per section::

    [world]          name, backbone, pretrained, templates, cache_dir, device
    [world.<name>]   the world's own knobs: [world.shapes] variant; [world.folder] root, split_file,
                     test_split_file, class_names_file; [world.cifar100] root; ...
    [longtail]       imbalance_ratio, profile, group_convention
    [federation]     num_clients, participation, rounds, dirichlet_alpha, min_client_size, test_split,
                     partition, superclass_beta
    [method]         name, peft
    [peft.<name>]    the PEFT's own knobs: [peft.prompt] n_ctx, ctx_init, class_specific;
                     [peft.adapter] reduction, ratio; [peft.lora] rank, alpha, towers; ...
    [stage1]         lr, momentum, weight_decay, batch_size, local_epochs, optimizer_scope, drop_last
    [purification]   projection, lambda_proj, bisection_iters, track_cos, kl_log
    [personalization] personal_alpha, personal_lr, personal_epochs, personal_momentum, residual_scale, residual_bias
    [baselines]      prox_mu, la_tau, interp_beta, folio_theta
    [run]            seed, eval_batch_size, workers, num_threads

The ``[world.<name>]`` and ``[peft.<name>]`` tables are the plugins' own config sections: each world
and PEFT module declares a frozen dataclass of its knobs (:func:`fedpurel_lite.registry.knob`: default,
help text, range or choices) and registers it with the plugin; the plugin reads it with
:meth:`RunConfig.section`. A config keeps every section that differs from its defaults, and writes
(:meth:`RunConfig.to_dict`, :meth:`RunConfig.save`, results and checkpoints) the selected world's and
PEFT's sections in full.

Types are strict: an integer field rejects floats and booleans, every float is finite, a boolean
is ``true`` or ``false``, a string holds no control character and at most 4096 characters; every
number lies in its range (:data:`~fedpurel_lite.config_checks.RANGES` and the sections' own, all
bounded above); unknown tables, unknown keys and keys given twice are errors, and a key of an
earlier layout (``method.lora_rank``) names its new place (:data:`MOVED`). Overrides (``--set`` on
the command line, :meth:`RunConfig.with_overrides` in Python) name a key as ``section.key``,
``axis.plugin.key`` (``peft.lora.rank``) or by its bare name when that is unique (``lr``,
``rounds``, ``n_ctx``); a bare name of several plugins' sections means the selected plugin's
(``world=cifar100 root=/data`` sets ``world.cifar100.root``). ``world`` and ``method`` name the
world's and the method's ``name``. Every bad value raises one
:class:`~fedpurel_lite.errors.ConfigError` naming the key, the value and what is allowed, in one
line, whatever the input (any type, size or nesting: values are shown shortened); no other
exception escapes. Checks that need the machine or the files (device, weights, dataset, writable
folders, clients against samples) live in :mod:`fedpurel_lite.preflight` and also run before any work.

This module imports no torch, so a bad value is reported at once: a plugin's section is looked up
(importing its package, :func:`fedpurel_lite.registry.sections`) only when the config names a
plugin key or is written out.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, cast

import tomli_w

from .config_checks import CHOICES, MAX_SEED, MAX_TEXT, RANGES, check_combinations, in_range, one_line, shown
from .errors import ConfigError
from .registry import AXES, field_kind, section_names, sections

__all__ = ["CHOICES", "MAX_SEED", "MOVED", "PluginSections", "RunConfig", "resolve_key"]

T = TypeVar("T")


@dataclass(frozen=True)
class WorldCfg:
    """World, backbone and where things live (the world's own knobs: its ``[world.<name>]`` section)."""

    name: str = "shapes"  # a registered world: shapes (embedded), cifar100, cifar10, folder, ...
    backbone: str = "fedpurel-tiny"  # an open_clip name, hf-hub:org/repo or local-dir:/path
    pretrained: str = ""  # "" = the embedded model's shipped weights; a file, tag or "random" otherwise
    templates: str = "ensemble"  # zero-shot text features: the world's template ensemble, or "a photo of a {}."
    cache_dir: str = ""  # "" = $FEDPUREL_CACHE or the repository's data/cache
    device: str = "cpu"  # cpu, cuda or auto (cuda when available)


@dataclass(frozen=True)
class LongTailCfg:
    """The long-tailed training set."""

    imbalance_ratio: float = 100.0  # IF >= 1 ("ratio 100"); see longtail.ratio_from_fraction
    profile: str = "exp"  # exp, step, or given (the world's training list is long-tailed already: kept whole)
    group_convention: str = "reference"  # tail <= 20 (reference) or < 20 (oltr)


@dataclass(frozen=True)
class FederationCfg:
    """Clients, their data and the rounds."""

    num_clients: int = 20
    participation: float = 0.4
    rounds: int = 100
    dirichlet_alpha: float = 1.0
    min_client_size: int = 10
    test_split: str = "shares"
    partition: str = "per-class"  # per-class Dirichlet shares, or superclass x fine-class draws (pooled train + test)
    superclass_beta: float = 1.0  # partition="superclass": Dirichlet concentration over the coarse labels


@dataclass(frozen=True)
class MethodCfg:
    """The named method and its shared trainable part (the PEFT's own knobs: its ``[peft.<name>]`` section)."""

    name: str = "fedpurel"
    peft: str = "head"


@dataclass(frozen=True)
class Stage1Cfg:
    """Local training of the shared PEFT (fresh SGD per client-round by default)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    local_epochs: int = 1
    optimizer_scope: str = "client-round"  # fresh SGD per client-round, or one SGD state for all (shared)
    drop_last: bool = False  # drop a client's last partial batch (when it has at least one full batch)


@dataclass(frozen=True)
class PurificationCfg:
    """Gradient purification against the temperature-aligned KL."""

    projection: str = "global"  # whole flattened gradient, or per tensor
    lambda_proj: float = 1.0
    bisection_iters: int = 16  # temperature search steps
    track_cos: bool = False  # record the CE/alignment cosine also for unpurified methods
    kl_log: str = "exact"  # alignment KL: exact log_softmax, or log(p.clamp_min(1e-12))


@dataclass(frozen=True)
class PersonalizationCfg:
    """Stage 2: the personal branch of every sampled client."""

    personal_alpha: float = 0.9  # weight of CE(l_L) against CE(l_G + l_L)
    personal_lr: float = 0.01
    personal_epochs: int = 1
    personal_momentum: float = 0.0
    residual_scale: float = 0.0  # linear residual head: logit scale (0 = the backbone's)
    residual_bias: bool = False  # linear residual head: per-class bias


@dataclass(frozen=True)
class BaselinesCfg:
    """Knobs of the comparison methods."""

    prox_mu: float = 0.01
    la_tau: float = 1.0
    interp_beta: float = 0.5
    folio_theta: float = 0.2


@dataclass(frozen=True)
class RunCfg:
    """Seed and execution (``workers`` and ``num_threads`` never change a number)."""

    seed: int = 1
    eval_batch_size: int = 1024
    workers: int = 0  # clients trained at once (threads); 0 = automatic
    num_threads: int = 0  # torch threads per client step; 0 = automatic (1 on the CPU)


_RANGES = RANGES  # the allowed ranges (kept under their old name)

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
}
#: bare names of the earlier layout that no section has any more
_MOVED_BARE = {old.split(".")[1]: old for old, new in MOVED.items() if old.split(".")[1] != new[2]}


def _moved(old: str, world: str | None = None, shown_as: str | None = None) -> ConfigError:
    """The one-line error for a key of the earlier layout (``shown_as``: as the user wrote it), naming its new key."""
    axis, plugin, key = MOVED[old]
    why = "each world and PEFT has its own section"
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


def _names(section: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(section))


class PluginSections:
    """The plugins' config sections of a :class:`RunConfig` that differ from their defaults (immutable).

    Keyed by ``(axis, plugin)`` (``("peft", "lora")``); a section not held is at its defaults.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[tuple[str, str], Any]] = ()) -> None:
        kept = {k: v for k, v in items if v != type(v)()}
        self._items: tuple[tuple[tuple[str, str], Any], ...] = tuple(sorted(kept.items(), key=lambda kv: kv[0]))

    def get(self, axis: str, plugin: str) -> Any:
        """The section of ``plugin`` on ``axis``, or ``None`` when it is at its defaults."""
        return next((v for k, v in self._items if k == (axis, plugin)), None)

    def items(self) -> tuple[tuple[tuple[str, str], Any], ...]:
        """``((axis, plugin), section)`` pairs, sorted."""
        return self._items

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PluginSections) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"PluginSections({dict(self._items)!r})"


@dataclass(frozen=True)
class RunConfig:
    """All knobs of one federated run, one typed section per TOML table (see the module doc).

    Use :meth:`load` / :meth:`save` for TOML, :meth:`with_overrides` for ``key=value`` strings
    or a mapping, :meth:`get` to read a dotted key and :meth:`section` for a plugin's own section.
    """

    world: WorldCfg = field(default_factory=WorldCfg)
    longtail: LongTailCfg = field(default_factory=LongTailCfg)
    federation: FederationCfg = field(default_factory=FederationCfg)
    method: MethodCfg = field(default_factory=MethodCfg)
    stage1: Stage1Cfg = field(default_factory=Stage1Cfg)
    purification: PurificationCfg = field(default_factory=PurificationCfg)
    personalization: PersonalizationCfg = field(default_factory=PersonalizationCfg)
    baselines: BaselinesCfg = field(default_factory=BaselinesCfg)
    run: RunCfg = field(default_factory=RunCfg)
    plugins: PluginSections = field(default_factory=PluginSections)

    def __post_init__(self) -> None:
        for key, value in self._core_items():
            _check_value(key, value)
        for (axis, plugin), section in self.plugins.items():
            _check_section(f"{axis}.{plugin}", section)
        check_combinations(self)

    # ------------------------------------------------------------------ access
    def _core_items(self) -> Iterator[tuple[str, Any]]:
        for table in _TABLES:
            section = getattr(self, table)
            for f in fields(section):
                yield f"{table}.{f.name}", getattr(section, f.name)

    def items(self) -> Iterable[tuple[str, Any]]:
        """``(key, value)`` for every field, in declaration order, then the written plugin sections' keys."""
        yield from self._core_items()
        for axis, plugin, section in self._written_sections():
            for f in fields(section):
                yield f"{axis}.{plugin}.{f.name}", getattr(section, f.name)

    def selected(self, axis: str) -> str:
        """The plugin the config selects on ``axis`` (``"world"``: ``world.name``, ``"peft"``: ``method.peft``)."""
        table, key = AXES[axis][1].split(".")
        return str(getattr(getattr(self, table), key))

    def section(self, config: type[T], plugin: str | None = None) -> T:
        """A plugin's own config section, typed by its class (``config.section(LoRAConfig).rank``).

        Parameters
        ----------
        config : type
            The section's class, as the plugin registered it.
        plugin : str, optional
            The plugin name, when several plugins share the class (default: the selected one).

        Raises
        ------
        ValueError
            The class is not a registered section (or names several plugins, none selected).
        """
        found = section_names(config)
        if plugin is not None:
            found = [(a, p) for a, p in found if p == plugin]
        elif len(found) > 1:
            found = [(a, p) for a, p in found if p == self.selected(a)]
        if len(found) != 1:
            raise ValueError(f"{config.__name__} is the config section of {len(found)} registered plugins; name one")
        axis, name = found[0]
        held = self.plugins.get(axis, name)
        return cast(T, held if held is not None else config())

    def plugin_section(self, axis: str, plugin: str) -> Any:
        """The section of ``plugin`` on ``axis`` by name (its defaults when not set; ``None``: it has none)."""
        held = self.plugins.get(axis, plugin)
        if held is not None:
            return held
        cls = sections(axis).get(plugin)
        return cls() if cls is not None else None

    def get(self, key: str) -> Any:
        """The value of a dotted (``stage1.lr``, ``peft.lora.rank``) or bare (``lr``) key."""
        parts = resolve_key(key, self).split(".")
        if len(parts) == 3:
            return getattr(self.plugin_section(parts[0], parts[1]), parts[2])
        return getattr(getattr(self, parts[0]), parts[1])

    # ------------------------------------------------------------------ (de)serialisation
    def _written_sections(self, full: bool = True) -> list[tuple[str, str, Any]]:
        """``(axis, plugin, section)``: the selected plugins' sections (``full``) and every one not at its defaults."""
        out = []
        for axis in AXES:
            held = {p: s for (a, p), s in self.plugins.items() if a == axis}
            chosen = self.selected(axis)
            if full and chosen not in held:
                cls = sections(axis).get(chosen)
                if cls is not None and fields(cls):
                    out.append((axis, chosen, cls()))
            out.extend((axis, p, s) for p, s in held.items())
        return out

    def _tables(self, full: bool = True) -> dict[str, dict[str, Any]]:
        data: dict[str, dict[str, Any]] = {t: dataclasses.asdict(getattr(self, t)) for t in _TABLES}
        for axis, plugin, section in self._written_sections(full):
            data.setdefault(axis, {})[plugin] = dataclasses.asdict(section)
        return data

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict, one entry per table; the selected plugins' sections in full (TOML/JSON friendly)."""
        return self._tables(full=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> RunConfig:
        """Build a config from nested tables (``{"stage1": {"lr": 0.1}, "peft": {"lora": {"rank": 4}}}``), strictly.

        Raises
        ------
        ConfigError
            An unknown table or key, a key of the earlier layout (naming its new key), a value of
            the wrong type or out of range.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a config is a table of tables, got {shown(data)}")
        for key, value in data.items():
            if (isinstance(key, str) and key not in _TABLES and key not in AXES and not isinstance(value, Mapping)
                    and len(_BARE.get(key, [])) == 1):
                raise ConfigError(f"{source}: {key} = {shown(value)} belongs in its table: "
                                  f"[{_BARE[key][0].split('.')[0]}]")
        world = data.get("world")
        world_name = world.get("name") if isinstance(world, Mapping) else None
        tables: dict[str, Any] = {}
        given_sections: list[tuple[str, Any, Any]] = []
        for table in _ALL_TABLES:
            given = data.get(table, {})
            if not isinstance(given, Mapping):
                raise ConfigError(f"{source}: [{table}] must be a table, got {shown(given)}")
            known = {f.name: f for f in fields(_SECTION_CLASSES[table])} if table in _TABLES else {}
            plain = {}
            for k, v in given.items():
                if k in known:
                    plain[k] = v
                elif f"{table}.{k}" in MOVED:
                    raise ConfigError(f"{source}: {_moved(f'{table}.{k}', world_name)}")
                elif table in AXES and isinstance(v, Mapping):
                    given_sections.append((table, k, v))
                elif table in AXES and table not in _TABLES:
                    raise ConfigError(f"{source}: {table}.{_name(k)} = {shown(v)}: [{table}] holds one table per "
                                      f"plugin ([{table}.<name>] key = value); known: {_known_tables(table)}")
                else:
                    more = f"; its plugins' tables are [{table}.<name>]" if table in AXES else ""
                    raise ConfigError(f"{source}: unknown key(s) {_listed(f'{table}.{_name(x)}' for x in given if x not in known and not (table in AXES and isinstance(given[x], Mapping)))}; "  # noqa: E501
                                      f"[{table}] has {', '.join(known)}{more}")
            if table in _TABLES:
                tables[table] = _SECTION_CLASSES[table](**{k: _typed(f"{table}.{k}", str(known[k].type), v)
                                                           for k, v in plain.items()})
        unknown = sorted((k for k in data if k not in _ALL_TABLES), key=str)
        if unknown:
            raise ConfigError(f"{source}: unknown table(s) {_listed(f'[{_name(k)}]' for k in unknown)}; "
                              f"known tables: {', '.join(f'[{k}]' for k in _ALL_TABLES)}")
        plugins = [((axis, plugin), _section_from(axis, plugin, values, source))
                   for axis, plugin, values in given_sections]
        return cls(**tables, plugins=PluginSections(plugins))

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a TOML preset (one table per section).

        Raises
        ------
        ConfigError
            The file is missing or not valid TOML (duplicate keys included), or a value is bad.
        """
        name = shown(str(path))
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {name} not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {name} is not valid TOML: {one_line(str(exc))}") from None
        except RecursionError:
            raise ConfigError(f"config file {name} is nested too deeply to be a config") from None
        except OSError as exc:
            raise ConfigError(f"config file {name} cannot be read ({exc.strerror or type(exc).__name__})") from None
        except ValueError:  # a path with a NUL byte
            raise ConfigError(f"config file {name}: not a valid path") from None
        return cls.from_dict(raw, source=one_line(str(path)))

    def save(self, path: str | Path) -> None:
        """Write the config as TOML (atomically)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(tomli_w.dumps(self.to_dict()))
        tmp.replace(path)

    def with_overrides(self, pairs: Iterable[str] | Mapping[str, Any]) -> RunConfig:
        """A copy with overrides applied, checked.

        Parameters
        ----------
        pairs : iterable of str or mapping
            ``"key=value"`` strings (the CLI's ``--set``; the value is parsed by the field's type)
            or a mapping ``{key: value}`` of Python values; keys dotted or bare. A bare name of
            several plugins' sections means the selected plugin's, after the overrides that
            select plugins (``{"world": "folder", "root": "/data"}``).

        Raises
        ------
        ConfigError
            An unknown or moved key, a key given twice, a value of the wrong type or out of range.
        """
        items = list(pairs.items()) if isinstance(pairs, Mapping) else [_split_pair(p) for p in pairs]
        data = self._tables(full=False)
        seen: set[str] = set()
        later: list[tuple[str, Any]] = []
        for key, value in items:
            if not isinstance(key, str):
                raise ConfigError(f"config key {shown(key)} is a {type(key).__name__}; keys are strings")
            try:
                full = resolve_key(key, _selection(data))
            except _Ambiguous:
                later.append((key, value))
                continue
            _put(data, full, value, seen)
        if later:
            chosen = _selection(data)
            for key, value in later:
                _put(data, resolve_key(key, chosen), value, seen)
        return RunConfig.from_dict(data, source="--set")

    def differences(self, other: RunConfig) -> list[str]:
        """Dotted keys whose values differ between ``self`` and ``other``."""
        mine, theirs = dict(self.items()), dict(other.items())
        return [k for k in dict.fromkeys([*mine, *theirs])
                if (mine[k] if k in mine else self.get(k)) != (theirs[k] if k in theirs else other.get(k))]


# ---------------------------------------------------------------------- keys and types
_TABLES: tuple[str, ...] = tuple(f.name for f in fields(RunConfig) if f.name != "plugins")
_SECTION_CLASSES: dict[str, type] = {f.name: f.default_factory for f in fields(RunConfig)  # type: ignore[misc]
                                     if f.name != "plugins"}
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


def _selection(data: Mapping[str, Any]) -> dict[str, str]:
    """The plugin each axis selects in a nested dict of tables."""
    out = {}
    for axis, (_, key) in AXES.items():
        table, name = key.split(".")
        value = data.get(table, {}).get(name, getattr(_SECTION_CLASSES[table](), name))
        out[axis] = value
    return out


def resolve_key(key: str, selected: RunConfig | Mapping[str, str] | None = None) -> str:
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
    world = (selected.selected("world") if isinstance(selected, RunConfig)
             else (selected or {}).get("world"))
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
        chosen = {a: selected.selected(a) for a in AXES} if isinstance(selected, RunConfig) else dict(selected or {})
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

