"""What a run will cost, estimated before it starts, and the bounds a command applies up front.

:func:`bound_resources` is the last check before a command starts work:

- ``run.workers`` and ``run.num_threads`` are clipped to the cores this process may use (and
  their product to the cores), with one ``warning:`` line each -- neither ever changes a number;
- :func:`estimate_cost` gives the run's time, disk and memory; the estimate is printed before a
  long run (over :data:`LONG_RUN_S`) and a large cache is announced with its size before it is
  written; when the disk or memory it needs exceeds what is free (or the time :data:`MAX_RUN_S`),
  the command stops with one ``error:`` line naming the override flag (``--ignore-resources``).

The estimate is coarse by design (within a factor of a few): time from per-client-round costs
measured on the embedded world on a shared 2-core CPU (``bench/bench_protocol.py``, the README's
benchmark table), scaled by the optimisation steps a client-round takes; disk and memory from
the tensor sizes the config implies (feature and token caches, checkpoints with their history,
the result folder).
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError

#: runs estimated longer than this get their estimate printed before they start
LONG_RUN_S = 600.0
#: runs estimated longer than this are refused unless --ignore-resources is given
MAX_RUN_S = 7 * 86400.0
#: caches larger than this are announced with their size before they are written
ANNOUNCE_BYTES = 100 * 1024 * 1024
#: bytes of a per-class history entry in the JSON and in memory (three per-class lists per round, measured)
HISTORY_BYTES_PER_CLASS = 60
FLOAT = 4


@dataclass
class Cost:
    """A run's estimated cost.

    Attributes
    ----------
    seconds : float or None
        Wall time (``None``: not estimated for this backbone).
    disk : int
        Bytes written: caches, checkpoints (two rounds kept), the result folder.
    memory : int
        Peak resident bytes (bank, token cache, model copies, history).
    caches : dict of str to int
        Bytes of each cache the run writes when it is cold (announced when large).
    """

    seconds: float | None
    disk: int
    memory: int
    caches: dict[str, int]


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (``None`` where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def free_disk(path: Path) -> int | None:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    for parent in (path, *path.parents):
        if parent.exists():
            try:
                return shutil.disk_usage(parent).free
            except OSError:
                return None
    return None


def _mb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.0f} MB"


def _duration(s: float) -> str:
    if s >= 86400 * 365:
        return f"{s / (86400 * 365):,.0f} years"
    if s >= 86400:
        return f"{s / 86400:,.1f} days"
    if s >= 3600:
        return f"{s / 3600:,.1f} h"
    return f"{s / 60:,.1f} min" if s >= 60 else f"{s:.0f} s"


def _backbone_dims(name: str) -> dict[str, int] | None:
    """embed_dim, vision width / tokens / layers, text width of an open_clip config (``None`` if unknown)."""
    try:
        import open_clip

        from ..data.backbone import register_embedded_config

        register_embedded_config()
        cfg = open_clip.get_model_config(name)
    except Exception:  # noqa: BLE001 - an unknown model is preflight's to report; here: no estimate
        return None
    if not cfg:
        return None
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    size, patch = v.get("image_size", 224), v.get("patch_size", 16)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return {"embed": int(cfg.get("embed_dim", 512)), "v_width": int(v.get("width", 768)),
            "v_layers": int(v.get("layers", 12)) if isinstance(v.get("layers", 12), int) else 12,
            "tokens": (int(size) // int(patch)) ** 2 + 1, "t_width": int(t.get("width", 512))}


def estimate_cost(config: RunConfig, train_pool: int, train_size: int, test_size: int, classes: int,
                  runs: int = 1, checkpoints: bool = True) -> Cost:
    """Time, disk and memory of ``runs`` runs of ``config`` (see the module docstring).

    Parameters
    ----------
    config : RunConfig
    train_pool, train_size, test_size : int
        Images of the world's training pool (encoded into the caches), of the long-tailed
        training set, and of the test set.
    classes : int
        Number of classes.
    runs : int
        Runs of this size (``compare``: one per method).
    checkpoints : bool
        The runs write round checkpoints.
    """
    dims = _backbone_dims(config.world.backbone) or {"embed": 512, "v_width": 768, "v_layers": 12, "tokens": 197,
                                                     "t_width": 512}
    fed, s1, pers = config.federation, config.stage1, config.personalization
    images = train_pool + test_size
    from ..peft import PEFTS

    spec = PEFTS.get(config.method.peft)
    caches = {"feature cache": images * dims["embed"] * FLOAT}
    if spec.inputs_for(config) == "tokens":
        caches["vision-token cache"] = images * dims["tokens"] * dims["v_width"] * FLOAT
    per_round = max(1, round(fed.participation * fed.num_clients))
    client_images = max(train_size / max(fed.num_clients, 1), 1)
    steps = (s1.local_epochs * math.ceil(client_images / s1.batch_size)
             + pers.personal_epochs * math.ceil(client_images / s1.batch_size))
    ref = RunConfig()
    ref_steps = (ref.stage1.local_epochs + ref.personalization.personal_epochs) * math.ceil(
        train_size / ref.federation.num_clients / ref.stage1.batch_size)
    seconds = None
    if config.world.backbone == ref.world.backbone and spec.cost is not None:
        seconds = runs * fed.rounds * (per_round * spec.cost.client_round_s * steps / max(ref_steps, 1)
                                       + spec.cost.eval_round_s)
    section = config.plugin_section("peft", config.method.peft) if spec.config is not None else None
    trainable = spec.cost.trainable(section, dims, classes) if spec.cost is not None else classes * dims["embed"]
    state = (1 + fed.num_clients) * trainable * FLOAT
    history = fed.rounds * classes * HISTORY_BYTES_PER_CLASS
    result = state + history + test_size * 40
    disk = sum(caches.values()) + runs * (result + (2 * (state + history) if checkpoints else 0))
    memory = sum(caches.values()) + 2 * history + 4 * state + 400 * 1024 * 1024  # + interpreter and libraries
    return Cost(seconds, int(disk), int(memory), caches)


def clip_threads(config: RunConfig) -> RunConfig:
    """``run.workers`` and ``run.num_threads`` clipped to the cores this process may use (a warning each)."""
    from .workers import available_cores

    cores = available_cores()
    workers, threads = config.run.workers, config.run.num_threads
    changes: dict[str, int] = {}
    if workers > cores:
        warnings.warn(f"run.workers={workers}: this machine gives this process {cores} cores; using {cores}",
                      stacklevel=3)
        changes["run.workers"] = workers = cores
    if threads > cores:
        warnings.warn(f"run.num_threads={threads}: this machine gives this process {cores} cores; using {cores}",
                      stacklevel=3)
        changes["run.num_threads"] = threads = cores
    if workers and threads and workers * threads > cores:
        fit = max(cores // workers, 1)
        warnings.warn(f"run.workers={workers} x run.num_threads={threads} exceeds the {cores} cores; using "
                      f"{fit} thread(s) per worker", stacklevel=3)
        changes["run.num_threads"] = fit
    return config.with_overrides(changes) if changes else config


def bound_resources(config: RunConfig, outputs: Iterable[Path] = (), ignore: bool = False, runs: int = 1,
                    checkpoints: bool = True) -> RunConfig:
    """Clip the threads, print the estimate of a long run, announce large caches, refuse what does not fit.

    Parameters
    ----------
    config : RunConfig
    outputs : iterable of Path
        Folders the command writes (their file system's free space is checked too).
    ignore : bool
        ``--ignore-resources``: start even when the estimate exceeds the free disk or memory.
    runs : int
        Runs the command makes with this config (``compare``: one per method).
    checkpoints : bool
        The runs write round checkpoints.

    Returns
    -------
    RunConfig
        ``config`` with the clipped thread counts.

    Raises
    ------
    ConfigError
        The estimated disk or memory exceeds what is free (naming ``--ignore-resources``).
    """
    from ..data.longtail import class_counts
    from ..worlds import describe
    from .preflight import cache_dir

    config = clip_threads(config)
    try:
        info = describe(config)
    except Exception:  # noqa: BLE001 - preflight has reported what it could; no estimate without the world
        return config
    pool = info.train_counts_per_class
    if config.longtail.profile == "given":
        train = int(pool.sum())
    else:
        profile: Any = config.longtail.profile  # "exp" or "step" here ("given" is handled above)
        train = int(class_counts(int(pool.max()), len(pool), config.longtail.imbalance_ratio, profile).sum())
    test = info.test_size if info.test_size is not None else int(pool.sum() // 5)
    cost = estimate_cost(config, int(pool.sum()), train, test, info.num_classes, runs, checkpoints)
    if cost.seconds is not None and cost.seconds > LONG_RUN_S:
        print(f"estimate: about {_duration(cost.seconds)} on a 2-core CPU, {_mb(cost.disk)} of disk, "
              f"{_mb(cost.memory)} of memory", flush=True)
    for name, size in cost.caches.items():
        if size > ANNOUNCE_BYTES:
            print(f"note: the {name} of this world and backbone takes {_mb(size)} in {cache_dir(config)} "
                  "(written once when missing, reused after)", flush=True)
    where = [cache_dir(config), *outputs]
    free = min((f for f in (free_disk(Path(p)) for p in where) if f is not None), default=None)
    memory = available_memory()
    problems = []
    if cost.seconds is not None and cost.seconds > MAX_RUN_S:
        problems.append(f"about {_duration(cost.seconds)} on a 2-core CPU, more than {_duration(MAX_RUN_S)}")
    if free is not None and cost.disk > free:
        problems.append(f"about {_mb(cost.disk)} of disk, {_mb(free)} free")
    if memory is not None and cost.memory > memory:
        problems.append(f"about {_mb(cost.memory)} of memory, {_mb(memory)} available")
    if problems and not ignore:
        raise ConfigError(f"this run needs {' and '.join(problems)} (federation.rounds={config.federation.rounds}, "
                          f"{config.federation.num_clients} clients, peft={config.method.peft}); reduce it, or pass "
                          "--ignore-resources to start anyway")
    if problems:
        warnings.warn(f"--ignore-resources: starting although the run needs {' and '.join(problems)}", stacklevel=2)
    return config

