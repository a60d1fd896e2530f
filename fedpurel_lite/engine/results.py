"""What a run leaves behind: per-round records, their summary, and the result folder.

A run's output folder holds ``result.json`` (method, the full config, the per-round history, the
summary, the federation), ``final_state.safetensors`` (the global and personal tensors) and, for a
simulated run, ``analysis.safetensors`` (the final predictions and counts behind the bias-transfer
report), all written atomically; ``result.json`` carries the SHA-256 of each tensor file, so a
result read back is checked whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..errors import IntegrityError

FORMAT_VERSION = 2
RESULT_JSON = "result.json"
FINAL_STATE = "final_state.safetensors"
ANALYSIS = "analysis.safetensors"
#: keys that may differ between two runs that give the same numbers
RUNTIME_KEYS: tuple[str, ...] = ("run.workers", "run.num_threads")


def clean_json(value: Any) -> Any:
    """JSON-safe copy: arrays to lists, NaN/inf to ``None``, numpy scalars to Python."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean_json(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def summarise(history: list[dict], last: int = 10) -> dict[str, dict[str, dict[str, float | None]]]:
    """Last-round values and means over the last ``last`` rounds of every scalar metric."""
    out: dict[str, dict[str, dict[str, float | None]]] = {"last": {}, f"last{last}": {}}
    if not history:
        return out
    tail = history[-last:]
    for part in ("gm", "pm", "gm_clients"):
        out["last"][part] = {k: v for k, v in history[-1][part].items() if not isinstance(v, (list, dict))}
        keys = out["last"][part].keys()
        out[f"last{last}"][part] = clean_json({k: float(np.nanmean([_num(h[part][k]) for h in tail]))
                                               if any(h[part][k] is not None for h in tail) else None for k in keys})
    return out


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> str:
    """The JSON text that content hashes are taken over (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a unique temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def tensor_bytes(tensors: Mapping[str, Tensor]) -> bytes:
    """A safetensors serialisation of ``tensors`` (moved to the CPU, contiguous)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def read_tensors(path: Path, expected_sha256: str) -> dict[str, Tensor]:
    """Tensors of a safetensors file whose content must hash to ``expected_sha256``.

    Raises
    ------
    IntegrityError
        The file is missing, altered or not a safetensors file.
    """
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if sha256_bytes(data) != expected_sha256:
        raise IntegrityError(f"{path}: content does not match its recorded SHA-256 (altered or truncated)")
    try:
        return load(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure of a hashed file is damage
        raise IntegrityError(f"{path}: not a readable safetensors file ({exc})") from None


@dataclass
class RunResult:
    """Everything one run produced.

    Attributes
    ----------
    method : str
        Method name.
    config : dict
        The run's :class:`~fedpurel_lite.config.RunConfig` as a nested dict.
    history : list of dict
        One entry per round: ``round``, ``clients``, ``gm`` (global model, balanced test set),
        ``gm_clients`` and ``pm`` (global / personal models on the client test splits: means over
        clients, group means, a ``pooled`` block over all client splits), ``telemetry``
        (purification), ``personal`` (stage-2 loss), ``time_s``.
    summary : dict
        ``last`` and ``last10`` scalar metrics per part.
    federation : dict
        Client train/test sizes, class counts and groups.
    final_state : dict of Tensor
        ``global/<name>`` shared tensors and ``personal/<client>/<name>`` personal tensors.
    analysis : dict of Tensor
        The final-state arrays of the bias-transfer analysis
        (:func:`fedpurel_lite.engine.simulate.final_analysis`); empty when the run did not record them.
    """

    method: str
    config: dict
    history: list[dict]
    summary: dict
    federation: dict
    final_state: dict[str, Tensor] = field(default_factory=dict, repr=False)
    analysis: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        """JSON-ready dict (everything except the tensors)."""
        return clean_json({"format": FORMAT_VERSION, "method": self.method, "config": self.config,
                           "history": self.history, "summary": self.summary, "federation": self.federation})

    def save(self, out_dir: str | Path) -> Path:
        """Write ``result.json``, ``final_state.safetensors`` and (if recorded) ``analysis.safetensors`` atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = tensor_bytes(self.final_state)
        atomic_write(out / FINAL_STATE, data)
        meta = {**self.to_json(), "final_state_sha256": sha256_bytes(data)}
        if self.analysis:
            extra = tensor_bytes(self.analysis)
            atomic_write(out / ANALYSIS, extra)
            meta["analysis_sha256"] = sha256_bytes(extra)
        elif (out / ANALYSIS).exists():
            (out / ANALYSIS).unlink()  # an older run's arrays must not sit beside this result
        atomic_write(out / RESULT_JSON, json.dumps(meta, indent=1).encode())
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> RunResult:
        """Read a result written by :meth:`save`, checking the tensor file against its hash.

        Raises
        ------
        IntegrityError
            ``result.json`` is unreadable or the tensor file does not match it.
        """
        out = Path(out_dir)
        data = read_json(out / RESULT_JSON)
        try:
            tensors = read_tensors(out / FINAL_STATE, data["final_state_sha256"])
            analysis = read_tensors(out / ANALYSIS, data["analysis_sha256"]) if "analysis_sha256" in data else {}
            return cls(data["method"], data["config"], data["history"], data["summary"], data["federation"], tensors,
                       analysis)
        except KeyError as exc:
            raise IntegrityError(f"{out / RESULT_JSON}: missing field {exc}") from None

    def frame(self, part: str = "gm") -> Any:
        """Scalar history of ``part`` (``gm``, ``pm``, ``gm_clients``, ``telemetry``) as a DataFrame."""
        import pandas as pd

        rows = [{"round": h["round"], **{k: v for k, v in h[part].items() if not isinstance(v, (list, dict))}}
                for h in self.history]
        return pd.DataFrame(rows).set_index("round").astype(float)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; damage is an :class:`IntegrityError` naming the file."""
    from ..data.safe_load import load_json

    data = load_json(path, what="")  # size and nesting bounded; every failure an IntegrityError naming the file
    if not isinstance(data, dict):
        raise IntegrityError(f"{path}: expected a JSON object")
    return data


def config_differences(saved: Mapping[str, Any], now: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """``key: saved -> now`` for every dotted key whose value differs (``ignore``d keys aside)."""
    out = []
    for section in sorted(set(saved) | set(now)):
        a, b = saved.get(section, {}) or {}, now.get(section, {}) or {}
        for key in sorted(set(a) | set(b)):
            full = f"{section}.{key}"
            if full not in ignore and a.get(key) != b.get(key):
                out.append(f"{full}: {a.get(key)!r} there, {b.get(key)!r} now")
    return out


def federation_info(fed: Any) -> dict[str, Any]:
    """The federation as recorded in a result: client sizes, class counts and groups."""
    return clean_json({"client_train_sizes": [len(p) for p in fed.client_train],
                       "client_test_sizes": [len(p) for p in fed.client_test],
                       "train_counts": fed.train_counts, "groups": fed.groups})


# ----------------------------------------------------------------------------- the run


SUMMARY_COLUMNS: dict[str, str] = {
    "gm_accuracy": "GM all", "gm_head": "GM head", "gm_medium": "GM med", "gm_tail": "GM tail",
    "gm_head_tail_gap": "GM H−T gap", "gm_acc_std": "GM acc std", "pm_accuracy": "PM all", "pm_tail": "PM tail",
}


def summary_table(table: Any, columns: Mapping[str, str] = SUMMARY_COLUMNS, decimals: int = 1) -> Any:
    """The comparison table of :func:`fedpurel_lite.engine.simulate.compare`, reduced to readable columns.

    Parameters
    ----------
    table : pandas.DataFrame
        ``simulate.compare`` output (one row per method).
    columns : mapping
        Source column → display name, in display order.
    decimals : int
        Rounding (keeps printed tables stable under nbval).

    Returns
    -------
    pandas.DataFrame
    """
    out = table[list(columns)].rename(columns=dict(columns)).astype(float).round(decimals)
    out.index.name = "method"
    return out
