"""`RunConfig`: every knob of a run as typed, nested sections that match the TOML tables.

A preset (``configs/*.toml``) has one table per section::

    [world]          name, backbone, pretrained, root, split_file, test_split_file, class_names_file,
                     templates, variant, cache_dir, device
    [longtail]       imbalance_ratio, profile, group_convention
    [federation]     num_clients, participation, rounds, dirichlet_alpha, min_client_size, test_split,
                     partition, superclass_beta
    [method]         name, peft, n_ctx, ctx_init, class_specific, adapter_reduction, adapter_ratio,
                     lora_rank, lora_alpha, lora_towers
    [stage1]         lr, momentum, weight_decay, batch_size, local_epochs, optimizer_scope, drop_last
    [purification]   projection, lambda_proj, bisection_iters, track_cos, kl_log
    [personalization] personal_alpha, personal_lr, personal_epochs, personal_momentum, residual_scale, residual_bias
    [baselines]      prox_mu, la_tau, interp_beta, folio_theta
    [run]            seed, eval_batch_size, workers, num_threads

Types are strict: an integer field rejects floats and booleans, every float is finite, a boolean
is ``true`` or ``false``, a string holds no control character and at most 4096 characters; every
number lies in its range (:data:`~fedpurel_lite.config_checks.RANGES`, all bounded above);
unknown tables, unknown keys and keys given twice are errors. Overrides
(``--set`` on the command line, :meth:`RunConfig.with_overrides` in Python) name a key as
``section.key`` or by its bare name, which is unique across sections (``lr``, ``rounds``);
``world`` and ``method`` name the world's and the method's ``name``. Every bad value raises one
:class:`~fedpurel_lite.errors.ConfigError` naming the key, the value and what is allowed, in one
line, whatever the input (any type, size or nesting: values are shown shortened); no other
exception escapes. Checks
that need the machine or the files (device, weights, dataset, writable folders, clients against
samples) live in :mod:`fedpurel_lite.preflight` and also run before any work.

This module imports no torch, so a bad value is reported at once.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from .config_checks import CHOICES, MAX_SEED, MAX_TEXT, RANGES, check_combinations, in_range, one_line, shown
from .errors import ConfigError

__all__ = ["CHOICES", "MAX_SEED", "RunConfig", "resolve_key"]



@dataclass(frozen=True)
class WorldCfg:
    """World, backbone and where things live."""

    name: str = "shapes"  # shapes (embedded), cifar100, cifar10, folder
    backbone: str = "fedpurel-tiny"  # an open_clip name, hf-hub:org/repo or local-dir:/path
    pretrained: str = ""  # "" = the embedded model's shipped weights; a file, tag or "random" otherwise
    root: str = ""  # dataset folder (cifar*, folder); "" = $FEDPUREL_DATA or data/
    split_file: str = ""  # folder world: split file relative to root; "" = split.json or train/ + test/
    test_split_file: str = ""  # folder world, OLTR .txt lists: the test list; "" = split_file with train -> test
    class_names_file: str = ""  # folder world, OLTR .txt lists: "<label or folder> <name>" lines; "" = folder names
    templates: str = "ensemble"  # zero-shot text features: the world's template ensemble, or "a photo of a {}."
    variant: str = "stratified"  # shapes world: target variant (colour drift, class order), see worlds.shapes
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
    """The named method and its shared trainable part (PEFT)."""

    name: str = "fedpurel"
    peft: str = "head"
    n_ctx: int = 4  # prompt: context tokens
    ctx_init: str = ""  # prompt: initial context words ("" = random init)
    class_specific: bool = False  # prompt: one context per class
    adapter_reduction: int = 4  # adapter: hidden width = dim / reduction
    adapter_ratio: float = 0.2  # adapter: residual mix
    lora_rank: int = 8  # lora: rank r of the q/k/v updates
    lora_alpha: float = 16.0  # lora: the update is scaled by lora_alpha / sqrt(lora_rank)
    lora_towers: str = "vision"  # lora: on the vision tower, the text tower, or both


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


@dataclass(frozen=True)
class RunConfig:
    """All knobs of one federated run, one typed section per TOML table (see the module doc).

    Use :meth:`load` / :meth:`save` for TOML, :meth:`with_overrides` for ``key=value`` strings
    or a mapping, and :meth:`get` to read a dotted key.
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

    def __post_init__(self) -> None:
        for key, value in self.items():
            _check_value(key, value)
        check_combinations(self)

    # ------------------------------------------------------------------ access
    def items(self) -> Iterable[tuple[str, Any]]:
        """``(section.key, value)`` for every field, in declaration order."""
        for sec in fields(self):
            section = getattr(self, sec.name)
            for f in fields(section):
                yield f"{sec.name}.{f.name}", getattr(section, f.name)

    def get(self, key: str) -> Any:
        """The value of a dotted (``stage1.lr``) or bare (``lr``) key."""
        section, name = resolve_key(key).split(".")
        return getattr(getattr(self, section), name)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict, one entry per section (TOML/JSON friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> RunConfig:
        """Build a config from a nested mapping (``{"stage1": {"lr": 0.1}}``), strictly typed.

        Raises
        ------
        ConfigError
            An unknown table or key, a value of the wrong type or out of range.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a config is a table of tables, got {shown(data)}")
        names = {sec.name for sec in fields(cls)}
        for key, value in data.items():
            if (isinstance(key, str) and key not in names and not isinstance(value, Mapping)
                    and len(_BARE.get(key, [])) == 1):
                raise ConfigError(f"{source}: {key} = {shown(value)} belongs in its table: "
                                  f"[{_BARE[key][0].split('.')[0]}]")
        sections = {}
        for sec in fields(cls):
            given = data.get(sec.name, {})
            if not isinstance(given, Mapping):
                raise ConfigError(f"{source}: [{sec.name}] must be a table, got {shown(given)}")
            known = {f.name: f for f in fields(sec.default_factory)}  # type: ignore[misc]
            unknown = sorted((k for k in given if k not in known), key=str)
            if unknown:
                raise ConfigError(f"{source}: unknown key(s) {_listed(f'{sec.name}.{_name(k)}' for k in unknown)}; "
                                  f"[{sec.name}] has {', '.join(known)}")
            sections[sec.name] = sec.default_factory(  # type: ignore[misc]
                **{k: _typed(f"{sec.name}.{k}", known[k].type, v) for k, v in given.items()})
        unknown = sorted((k for k in data if k not in sections), key=str)
        if unknown:
            raise ConfigError(f"{source}: unknown table(s) {_listed(f'[{_name(k)}]' for k in unknown)}; "
                              f"known tables: {', '.join(f'[{k}]' for k in sections)}")
        return cls(**sections)

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
            or a mapping ``{key: value}`` of Python values; keys dotted or bare.

        Raises
        ------
        ConfigError
            An unknown key, a key given twice, a value of the wrong type or out of range.
        """
        items = list(pairs.items()) if isinstance(pairs, Mapping) else [_split_pair(p) for p in pairs]
        data = self.to_dict()
        seen: set[str] = set()
        for key, value in items:
            if not isinstance(key, str):
                raise ConfigError(f"config key {shown(key)} is a {type(key).__name__}; keys are strings")
            full = resolve_key(key)
            if full in seen:
                raise ConfigError(f"{full} is given twice")
            seen.add(full)
            section, name = full.split(".")
            kind = _FIELD_TYPES[full]
            data[section][name] = _parse_text(full, kind, value) if isinstance(value, str) else value
        return RunConfig.from_dict(data, source="--set")

    def differences(self, other: RunConfig) -> list[str]:
        """Dotted keys whose values differ between ``self`` and ``other``."""
        theirs = dict(other.items())
        return [k for k, v in self.items() if theirs[k] != v]


# ---------------------------------------------------------------------- keys and types
_FIELD_TYPES: dict[str, str] = {f"{sec.name}.{f.name}": str(f.type) for sec in fields(RunConfig)
                                for f in fields(sec.default_factory)}  # type: ignore[misc]
_BARE: dict[str, list[str]] = {}
for _full in _FIELD_TYPES:
    _BARE.setdefault(_full.split(".")[1], []).append(_full)
#: bare names that stand for a section's ``name``
ALIASES: dict[str, str] = {"world": "world.name", "method": "method.name"}


def resolve_key(key: str) -> str:
    """The dotted ``section.key`` of a dotted or bare key.

    Raises
    ------
    ConfigError
        An unknown key (with the known ones of its section, or close names).
    """
    if not isinstance(key, str):
        raise ConfigError(f"config key {shown(key)} is a {type(key).__name__}; keys are strings")
    key = key.strip()
    if key in _FIELD_TYPES:
        return key
    if key in ALIASES:
        return ALIASES[key]
    if "." not in key and len(_BARE.get(key, [])) == 1:
        return _BARE[key][0]
    if len(_BARE.get(key, [])) > 1:
        raise ConfigError(f"config key {key!r} is ambiguous: write one of {', '.join(_BARE[key])}")
    import difflib

    near = difflib.get_close_matches(key[:100], [*_FIELD_TYPES, *_BARE, *ALIASES], n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else "; keys look like section.key (see configs/)"
    raise ConfigError(f"unknown config key {shown(key)}{hint}")


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

