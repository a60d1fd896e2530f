"""`RunConfig`: every protocol knob of a run, TOML load/save and validation before any work.

The defaults are the embedded offline world at the paper's federation protocol (20 clients,
40 % participation, 100 rounds, IF = 100, Dirichlet 1.0). ``configs/`` holds the presets.
Every invalid value raises one :class:`ValueError` naming the field, the value and what is
allowed, before any data is loaded or anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

CHOICES: dict[str, tuple[str, ...]] = {
    "profile": ("exp", "step"),
    "group_convention": ("reference", "oltr"),
    "test_split": ("shares", "matched"),
    "peft": ("head", "prompt", "adapter"),
    "projection": ("global", "tensor"),
    "device": ("cpu", "cuda", "auto"),
}


@dataclass
class RunConfig:
    """All knobs of one federated run (see ``paper.md`` §3 and ``design.md`` §4).

    Attributes are grouped as world/backbone, long tail, federation, method, optimisation,
    purification, personalization, baselines and bookkeeping. Use :meth:`load` /
    :meth:`save` for TOML and :meth:`with_overrides` for ``key=value`` strings.
    """

    # world and backbone
    world: str = "shapes"
    backbone: str = "fedpurel-tiny"
    pretrained: str = ""  # "" = the backbone's default weights
    cache_dir: str = ""  # "" = $FEDPUREL_CACHE or the repository's data/cache
    device: str = "cpu"
    # long tail
    imbalance_ratio: float = 100.0  # IF >= 1 ("ratio 100"); see longtail.ratio_from_fraction
    profile: str = "exp"
    group_convention: str = "reference"
    # federation
    num_clients: int = 20
    participation: float = 0.4
    rounds: int = 100
    dirichlet_alpha: float = 1.0
    min_client_size: int = 10
    test_split: str = "shares"
    # method and trainable part
    method: str = "fedpurel"
    peft: str = "head"
    n_ctx: int = 4
    # stage 1 (shared PEFT) optimisation
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    local_epochs: int = 1
    # gradient purification
    projection: str = "global"
    lambda_proj: float = 1.0
    # stage 2 (personal) optimisation
    personal_alpha: float = 0.9
    personal_lr: float = 0.01
    personal_epochs: int = 1
    # baselines
    prox_mu: float = 0.01
    la_tau: float = 1.0
    interp_beta: float = 0.5
    folio_theta: float = 0.2
    # bookkeeping
    seed: int = 1
    eval_batch_size: int = 1024
    workers: int = 0  # clients trained at once (threads); 0 = automatic (workers.resolve_workers); same numbers
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self, num_train_samples: int | None = None) -> RunConfig:
        """Check every field; with ``num_train_samples`` also the client count against it.

        Raises
        ------
        ValueError
            One clear message naming the field, its value and the allowed range.
        """
        _check(self.imbalance_ratio >= 1.0 and math.isfinite(self.imbalance_ratio), "imbalance_ratio",
               self.imbalance_ratio, ">= 1 (ratio form, e.g. 100; for 0.01 use ratio_from_fraction)")
        _check(self.dirichlet_alpha > 0 and math.isfinite(self.dirichlet_alpha), "dirichlet_alpha",
               self.dirichlet_alpha, "> 0")
        _check(0.0 < self.participation <= 1.0, "participation", self.participation, "(0, 1]")
        for name in ("num_clients", "rounds", "batch_size", "local_epochs", "personal_epochs",
                     "eval_batch_size", "n_ctx"):
            _check(int(getattr(self, name)) >= 1, name, getattr(self, name), ">= 1")
        _check(self.workers >= 0, "workers", self.workers, ">= 0 (0 = automatic)")
        _check(self.min_client_size >= 1, "min_client_size", self.min_client_size, ">= 1")
        for name in ("lr", "personal_lr"):
            _check(getattr(self, name) > 0, name, getattr(self, name), "> 0")
        for name in ("momentum", "personal_alpha", "interp_beta", "folio_theta"):
            _check(0.0 <= getattr(self, name) <= 1.0, name, getattr(self, name), "[0, 1]")
        for name in ("weight_decay", "lambda_proj", "prox_mu", "la_tau"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        for name, allowed in CHOICES.items():
            _check(getattr(self, name) in allowed, name, getattr(self, name), f"one of {allowed}")
        if num_train_samples is not None:
            need = self.num_clients * self.min_client_size
            _check(need <= num_train_samples, "num_clients", self.num_clients,
                   f"<= {num_train_samples // self.min_client_size} (the long-tailed training set has "
                   f"{num_train_samples} samples and every client needs min_client_size="
                   f"{self.min_client_size})")
        return self

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build a config from a mapping, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**{k: _coerce(k, v) for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view (TOML/JSON friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a TOML preset (flat keys, or grouped under tables which are flattened)."""
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
        flat: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(value, dict) and key != "extra":
                flat.update(value)
            else:
                flat[key] = value
        return cls.from_dict(flat)

    def save(self, path: str | Path) -> None:
        """Write the config as TOML (atomically)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(tomli_w.dumps(self.to_dict()))
        tmp.replace(path)

    def with_overrides(self, pairs: Iterable[str] | Mapping[str, Any]) -> RunConfig:
        """A copy with ``key=value`` strings (CLI ``--set``) or a mapping applied, validated.

        ``extra.name=value`` sets one key of :attr:`extra`; a string value there is read as a TOML
        value when it parses as one (``extra.class_specific=true``, ``extra.num_threads=2``).
        """
        items = pairs.items() if isinstance(pairs, Mapping) else (_split_pair(p) for p in pairs)
        data = self.to_dict()
        for key, value in items:
            if key.startswith("extra."):
                data["extra"] = {**data["extra"], key[len("extra."):]: _toml_value(value)}
            else:
                data[key] = value
        return RunConfig.from_dict(data)


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"invalid config: {name}={value!r}; allowed: {allowed}")


def _split_pair(pair: str) -> tuple[str, str]:
    if "=" not in pair:
        raise ValueError(f"override {pair!r} must look like key=value")
    key, value = pair.split("=", 1)
    return key.strip(), value.strip()


def _toml_value(value: Any) -> Any:
    """``"2"`` -> 2, ``"true"`` -> True, ``"a photo of a"`` -> itself; non-strings unchanged."""
    if not isinstance(value, str):
        return value
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


_TYPES = {f.name: f.type for f in fields(RunConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Turn strings from the command line into the field's type; reject impossible values."""
    kind = _TYPES[name]
    if not isinstance(value, str) or kind == "str":
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"invalid config: {name}={value!r}; allowed: a {kind}") from None
    if kind == "bool":
        return value.lower() in ("1", "true", "yes")
    return value
