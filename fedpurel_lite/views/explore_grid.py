"""Precomputed answers of the slow explorers: every setting of their sliders' grids, one JSON file each.

The bias-transfer app (:mod:`fedpurel_lite.views.bias_app`) and notebook 06's federation explorer
(:class:`fedpurel_lite.views.widgets.FederationExplorer`) re-run reduced federations when a slider moves,
which takes seconds to minutes. ``python -m fedpurel_lite explore-grid`` runs every setting of their
grids once, under the pinned CPU kernels, and writes what the figures draw into
``data/explore/<name>.json``; an explorer whose protocol matches a file's fingerprint answers a
setting on the grid from it and runs live only off the grid.

A file holds ``format``, ``name``, ``fingerprint`` (the protocol without the varied keys, the
rounds, the methods and the feature bank's manifest hash), ``axes`` and ``points`` (setting key
→ the point's JSON, :func:`point_key`). The points' floats are rounded to :data:`DECIMALS`; every
object is written with sorted keys, so the same numbers give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..config import RunConfig
from ..errors import UserError

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "data" / "explore"
FORMAT = 1
DECIMALS = 3
#: keys the explorers vary or that cannot change the numbers: left out of a protocol's fingerprint
VARIED_KEYS: frozenset[str] = frozenset({
    "longtail.imbalance_ratio", "federation.dirichlet_alpha", "federation.rounds", "method.name",
    "world.cache_dir", "world.device", "run.workers", "run.num_threads", "run.eval_batch_size"})


class Progress(Protocol):
    """Told before each run of a live computation: run ``k`` (1-based) of ``n``, and what it runs."""

    def __call__(self, k: int, n: int, label: str) -> None: ...


class Superseded(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by a progress callback to stop a live computation whose answer is no longer wanted."""


def point_key(imbalance_ratio: float, dirichlet_alpha: float) -> str:
    """The key of one setting in a grid file, e.g. ``"100|0.5"``."""
    return f"{float(imbalance_ratio):g}|{float(dirichlet_alpha):g}"


def rounded(value: Any, decimals: int = DECIMALS) -> Any:
    """A JSON-safe copy: arrays to lists, floats rounded, NaN/inf to ``None``, numpy scalars to Python."""
    import numpy as np

    if isinstance(value, Mapping):
        return {str(k): rounded(v, decimals) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return rounded(value.tolist(), decimals)
    if isinstance(value, (list, tuple)):
        return [rounded(v, decimals) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return round(v, decimals) + 0.0 if math.isfinite(v) else None  # + 0.0: no "-0.0"
    return value


def config_fingerprint(config: RunConfig) -> dict[str, Any]:
    """The protocol's settings that a grid point depends on (every key but :data:`VARIED_KEYS`)."""
    return {k: v for k, v in config.items() if k not in VARIED_KEYS}


def bank_fingerprint(bank: Any) -> str:
    """The feature bank's identity: what it encodes (its cache inputs), or a SHA-256 over its tensors.

    A cached bank is identified by the inputs of its cache entry (backbone, weights, world,
    transform, templates) without the kernel path it was encoded on: a pinned and a native
    encoding of the same world differ only in the last bits, and answer the same grid.
    """
    inputs = (getattr(bank, "manifest", None) or {}).get("inputs")
    h = hashlib.sha256()
    if isinstance(inputs, Mapping):
        h.update(json.dumps({k: v for k, v in inputs.items() if k != "kernels"}, sort_keys=True).encode())
        return h.hexdigest()
    import numpy as np

    for name in ("train_features", "train_labels", "test_features", "test_labels", "text_features"):
        h.update(np.ascontiguousarray(np.asarray(getattr(bank, name))).tobytes())
    h.update(repr(float(bank.logit_scale)).encode())
    return h.hexdigest()


def fingerprint(config: RunConfig, rounds: int, methods: Sequence[str], bank: Any | None) -> dict[str, Any]:
    """What a grid file must match: the protocol, rounds, methods and (when given) the bank."""
    out: dict[str, Any] = {"config": config_fingerprint(config), "rounds": int(rounds), "methods": list(methods)}
    if bank is not None:
        out["bank"] = bank_fingerprint(bank)
    return out


class GridStore:
    """One explorer's precomputed grid, read from its JSON file.

    Parameters
    ----------
    data : dict
        The file's content (:func:`write_grid`).
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = dict(data)
        self.points: dict[str, Any] = dict(self.data.get("points", {}))

    @classmethod
    def load(cls, path: str | Path) -> GridStore | None:
        """The grid in ``path``, or ``None`` when there is no such file or it is of another format."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return cls(data) if data.get("format") == FORMAT else None

    def matches(self, config: RunConfig, rounds: int, methods: Sequence[str], bank: Any | None = None) -> bool:
        """Whether the grid was computed for this protocol, rounds and methods (and this bank, when given)."""
        fp = self.data.get("fingerprint", {})
        want = json.loads(json.dumps(fingerprint(config, rounds, methods, None)))  # as a file holds it
        if any(fp.get(k) != v for k, v in want.items()):
            return False
        return bank is None or fp.get("bank") == bank_fingerprint(bank)

    def get(self, imbalance_ratio: float, dirichlet_alpha: float) -> dict[str, Any] | None:
        """The point of one setting, or ``None`` off the grid."""
        return self.points.get(point_key(imbalance_ratio, dirichlet_alpha))

    def values(self, *path: str) -> list[float]:
        """Every finite number found under ``path`` (keys, ``*`` = every key) in every point (for fixed axes)."""
        found: list[float] = []

        def walk(node: Any, rest: tuple[str, ...]) -> None:
            if rest:
                if isinstance(node, Mapping):
                    for k, v in node.items():
                        if rest[0] in ("*", k):
                            walk(v, rest[1:])
                return
            if isinstance(node, Mapping):
                for v in node.values():
                    walk(v, ())
            elif isinstance(node, list):
                for v in node:
                    walk(v, ())
            elif isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node):
                found.append(float(node))

        for point in self.points.values():
            walk(point, path)
        return found


def grid_text(name: str, fp: Mapping[str, Any], axes: Mapping[str, Sequence[float]],
              points: Mapping[str, Any]) -> str:
    """The file text of a grid: sorted keys, one point per line (small diffs, same bytes for the same numbers)."""
    head = {"format": FORMAT, "name": name, "fingerprint": fp, "axes": {k: list(v) for k, v in axes.items()}}
    lines = ["{"]
    for k in sorted(head):
        lines.append(f"{json.dumps(k)}: {json.dumps(head[k], sort_keys=True, allow_nan=False)},")
    lines.append('"points": {')
    keys = sorted(points)
    for i, k in enumerate(keys):
        comma = "," if i < len(keys) - 1 else ""
        lines.append(f"{json.dumps(k)}: {json.dumps(rounded(points[k]), sort_keys=True, allow_nan=False)}{comma}")
    lines.append("}}")
    return "\n".join(lines) + "\n"


def write_grid(path: Path, name: str, fp: Mapping[str, Any], axes: Mapping[str, Sequence[float]],
               points: Mapping[str, Any]) -> Path:
    """Write a grid file atomically (:func:`grid_text`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(grid_text(name, fp, axes, points), encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- the grids
PointFn = Callable[[Any, RunConfig, float, float], dict[str, Any]]


def _grids() -> dict[str, dict[str, Any]]:
    """name → what its explorer runs: the file, the axes, methods, rounds and the point function."""
    from . import bias_app, widgets

    return {
        "bias_app": {"file": bias_app.GRID_FILE, "ratios": bias_app.RATIOS, "alphas": bias_app.ALPHAS,
                     "methods": bias_app.APP_METHODS, "rounds": bias_app.GRID_ROUNDS,
                     "point": lambda bank, cfg, r, a: bias_app.app_point(bank, cfg, r, a, bias_app.APP_METHODS,
                                                                         bias_app.GRID_ROUNDS)},
        "federation": {"file": widgets.FEDERATION_GRID_FILE, "ratios": widgets.FEDERATION_RATIOS,
                       "alphas": widgets.FEDERATION_ALPHAS, "methods": widgets.FEDERATION_METHODS,
                       "rounds": widgets.FEDERATION_GRID_ROUNDS,
                       "point": lambda bank, cfg, r, a: widgets.federation_point(
                           bank, cfg, r, a, widgets.FEDERATION_METHODS, widgets.FEDERATION_GRID_ROUNDS)},
    }


def compute_grid(name: str, bank: Any, config: RunConfig, out: Path, log: Callable[[str], None] = print) -> Path:
    """Run every setting of one explorer's grid and write its file.

    Parameters
    ----------
    name : {"bias_app", "federation"}
        Which explorer.
    bank : FeatureBank-like
        The features the explorer will be given.
    config : RunConfig
        The protocol (its imbalance ratio, α, rounds and method are set per point).
    out : Path
        Folder of the file.
    log : callable
        Told one line per finished point.
    """
    spec = _grids()[name]
    cfg = config.with_overrides({"run.workers": 1})  # one core, whatever the machine has
    points: dict[str, Any] = {}
    start = time.perf_counter()
    settings = [(r, a) for r in spec["ratios"] for a in spec["alphas"]]
    for i, (ratio, alpha) in enumerate(settings, 1):
        t = time.perf_counter()
        points[point_key(ratio, alpha)] = spec["point"](bank, cfg, ratio, alpha)
        log(f"{name}: {i}/{len(settings)} IF = {ratio:g}, α = {alpha:g} in {time.perf_counter() - t:.1f} s")
    fp = fingerprint(config, spec["rounds"], spec["methods"], bank)
    axes = {"imbalance_ratio": spec["ratios"], "dirichlet_alpha": spec["alphas"]}
    path = write_grid(out / spec["file"], name, fp, axes, points)
    log(f"{name}: {len(settings)} points in {time.perf_counter() - start:.0f} s → {path} "
        f"({path.stat().st_size / 1024:.0f} KiB)")
    return path


def _pin() -> None:
    """The pinned CPU kernels (one thread, fixed ISA paths), before torch does any work."""
    try:
        from ..kernels import pin
    except ImportError:  # a checkout without the pinning module: one thread at least
        import torch

        torch.set_num_threads(1)
        return
    pin()


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m fedpurel_lite explore-grid``: precompute the explorers' grids into ``data/explore/``."""
    parser = argparse.ArgumentParser(prog="python -m fedpurel_lite explore-grid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=("bias_app", "federation"), default=None,
                        help="which explorer's grid (default: both)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "embedded.toml"), help="protocol preset (TOML)")
    parser.add_argument("--out", default=str(FOLDER), help="folder of the grid files")
    args = parser.parse_args(list(argv) if argv is not None else None)
    config = RunConfig.load(args.config)  # a bad preset is one error line before any work
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder")
    _pin()
    from ..engine import assembly

    bank = assembly.load_bank(config, progress=False)
    for name in args.only or ("bias_app", "federation"):
        compute_grid(name, bank, config, out)
    return 0
