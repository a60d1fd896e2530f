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
    [objective.<name>] the method's stage-1 objective's own knobs: [objective.prox] mu; [objective.la] tau
    [personalization] personal_alpha, personal_lr, personal_epochs, personal_momentum
    [personal.<name>] the method's personalization kind's own knobs: [personal.interp] beta;
                     [personal.folio] theta; [personal.residual] scale, bias
    [run]            seed, eval_batch_size, workers, num_threads

The ``[world.<name>]``, ``[peft.<name>]``, ``[objective.<name>]`` and ``[personal.<name>]`` tables
are the plugins' own config sections: each world, PEFT, stage-1 objective and personalization kind
declares a frozen dataclass of its knobs (:func:`fedpurel_lite.config.registry.knob`: default, help text,
range or choices) and registers it with the plugin; the plugin reads it with
:meth:`RunConfig.section`. The world and the PEFT are selected by ``world.name`` and ``method.peft``,
the objective and the personalization kind by the method (``method.name``: its ``stage1`` and
``personal``). A config keeps every section that differs from its defaults, and writes
(:meth:`RunConfig.to_dict`, :meth:`RunConfig.save`, results and checkpoints) the selected plugins'
sections in full.

Types are strict: an integer field rejects floats and booleans, every float is finite, a boolean
is ``true`` or ``false``, a string holds no control character and at most 4096 characters; every
number lies in its range (:data:`~fedpurel_lite.config.checks.RANGES` and the sections' own, all
bounded above); unknown tables, unknown keys and keys given twice are errors, and a key of an
earlier layout (``method.lora_rank``, ``baselines.prox_mu``) names its new place (:data:`MOVED`).
Overrides (``--set`` on the command line, :meth:`RunConfig.with_overrides` in Python) name a key as ``section.key``,
``axis.plugin.key`` (``peft.lora.rank``) or by its bare name when that is unique (``lr``,
``rounds``, ``n_ctx``, ``mu``); a bare name of several plugins' sections means the selected plugin's
(``world=cifar100 root=/data`` sets ``world.cifar100.root``). ``world`` and ``method`` name the
world's and the method's ``name``. Every bad value raises one
:class:`~fedpurel_lite.errors.ConfigError` naming the key, the value and what is allowed, in one
line, whatever the input (any type, size or nesting: values are shown shortened); no other
exception escapes. Checks that need the machine or the files (device, weights, dataset, writable
folders, clients against samples) live in :mod:`fedpurel_lite.engine.preflight` and also run before any work.

This module imports no torch, so a bad value is reported at once: a plugin's section is looked up
(importing its package, :func:`fedpurel_lite.config.registry.sections`) only when the config names a
plugin key or is written out, and the method's record (which selects the objective and the
personalization kind) only when one of those is asked for. The section classes live in
:mod:`fedpurel_lite.config.sections`, the keys and the checks of one value in
:mod:`fedpurel_lite.config.keys`, the value tables and the rules that tie two keys together in
:mod:`fedpurel_lite.config.checks`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, cast

import tomli_w

from ..errors import ConfigError
from .checks import CHOICES, MAX_SEED, RANGES, check_combinations, one_line, shown
from .keys import (
    _ALL_TABLES,
    _BARE,
    _MOVED_BARE,
    _SECTION_CLASSES,
    _TABLES,
    ALIASES,
    MOVED,
    _Ambiguous,
    _check_section,
    _check_value,
    _known_tables,
    _listed,
    _moved,
    _name,
    _put,
    _refuse_moved,
    _section_from,
    _selection,
    _split_pair,
    _typed,
    resolve_key,
)
from .registry import AXES, section_names, sections, selected_plugin
from .sections import (
    FederationCfg,
    LongTailCfg,
    MethodCfg,
    PersonalizationCfg,
    PluginSections,
    PurificationCfg,
    RunCfg,
    Stage1Cfg,
    WorldCfg,
)

__all__ = ["ALIASES", "CHOICES", "MAX_SEED", "MOVED", "FederationCfg", "LongTailCfg", "MethodCfg", "PersonalizationCfg",
           "PluginSections", "PurificationCfg", "RunCfg", "RunConfig", "Stage1Cfg", "WorldCfg", "resolve_key"]

T = TypeVar("T")
_RANGES = RANGES  # the allowed ranges (kept under their old name)


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
        """The plugin the config selects on ``axis``; ``""`` when none.

        ``"world"``: ``world.name``; ``"peft"``: ``method.peft``; ``"objective"`` and ``"personal"``:
        the method's ``stage1`` and ``personal`` (looking up ``method.name``, which imports torch).
        """
        table, key = AXES[axis].key.split(".")
        return selected_plugin(axis, str(getattr(getattr(self, table), key)))

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
            chosen = self.selected(axis) if full else ""
            if chosen and chosen not in held:
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
            if isinstance(key, str) and key in _MOVED_BARE and not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {_moved(_MOVED_BARE[key], None, key)}")
            if isinstance(key, str) and key not in _ALL_TABLES and isinstance(value, Mapping):
                _refuse_moved(key, value, source)
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
            moved = next((f"{table}.{k}" for k in given if f"{table}.{k}" in MOVED), None)
            if moved:
                raise ConfigError(f"{source}: {_moved(moved, world_name)}")
            subtables = {k: v for k, v in given.items() if table in AXES and k not in known and isinstance(v, Mapping)}
            given_sections.extend((table, k, v) for k, v in subtables.items())
            unknown = sorted((k for k in given if k not in known and k not in subtables), key=str)
            if unknown and table not in _TABLES:
                first = unknown[0]
                raise ConfigError(f"{source}: {table}.{_name(first)} = {shown(given[first])}: [{table}] holds "
                                  f"one table per plugin ([{table}.<name>] key = value); known: {_known_tables(table)}")
            if unknown:
                more = f"; its plugins' tables are [{table}.<name>]" if table in AXES else ""
                raise ConfigError(f"{source}: unknown key(s) {_listed(f'{table}.{_name(k)}' for k in unknown)}; "
                                  f"[{table}] has {', '.join(known)}{more}")
            plain = {k: v for k, v in given.items() if k in known}
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




assert _TABLES == tuple(f.name for f in fields(RunConfig) if f.name != "plugins"), "RunConfig and CORE differ"
