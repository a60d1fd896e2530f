"""The core sections of :class:`~fedpurel_lite.config.RunConfig` (one frozen dataclass per TOML table) and the
holder of the plugins' own sections (:class:`PluginSections`).

Kept apart from :mod:`fedpurel_lite.config` so the dataclasses stay short; imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["CORE", "FederationCfg", "LongTailCfg", "MethodCfg", "PersonalizationCfg", "PluginSections",
           "PurificationCfg", "RunCfg", "Stage1Cfg", "WorldCfg"]


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
    """The named method and its shared trainable part.

    The PEFT's own knobs are its ``[peft.<name>]`` section; the method's stage-1 objective and
    personalization kind keep theirs in ``[objective.<name>]`` and ``[personal.<name>]``.
    """

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
    """Gradient purification against the temperature-aligned KL (the purified objectives' and ``track_cos``'s)."""

    projection: str = "global"  # whole flattened gradient, or per tensor
    lambda_proj: float = 1.0
    bisection_iters: int = 16  # temperature search steps
    track_cos: bool = False  # record the CE/alignment cosine also for unpurified methods
    kl_log: str = "exact"  # alignment KL: exact log_softmax, or log(p.clamp_min(1e-12))


@dataclass(frozen=True)
class PersonalizationCfg:
    """Stage 2: the personal branch of every sampled client (a kind's own knobs: its ``[personal.<name>]`` section)."""

    personal_alpha: float = 0.9  # weight of CE(l_L) against CE(l_G + l_L)
    personal_lr: float = 0.01
    personal_epochs: int = 1
    personal_momentum: float = 0.0


@dataclass(frozen=True)
class RunCfg:
    """Seed and execution (``workers`` and ``num_threads`` never change a number)."""

    seed: int = 1
    eval_batch_size: int = 1024
    workers: int = 0  # clients trained at once (threads); 0 = automatic
    num_threads: int = 0  # torch threads per client step; 0 = automatic (1 on the CPU)



#: the core tables in order: TOML table -> its section class
CORE: dict[str, type] = {"world": WorldCfg, "longtail": LongTailCfg, "federation": FederationCfg, "method": MethodCfg,
                         "stage1": Stage1Cfg, "purification": PurificationCfg, "personalization": PersonalizationCfg,
                         "run": RunCfg}


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

