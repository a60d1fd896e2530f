"""Round checkpoints: written atomically after every round, verified whole when read back.

After round ``r`` the simulator writes ``round_<r>.safetensors`` (the global and personal
tensors) and then ``round_<r>.json``, a manifest with the method, the full config, the history so
far, the SHA-256 of the tensor file and a SHA-256 over the manifest's own content. Both go
through a temporary file and an atomic rename, and the manifest is written last, so a process
killed at any moment leaves the previous round complete. The two newest complete rounds are
kept.

Resuming (:func:`find_resume_point`) takes the newest round whose manifest and tensors verify;
when the newest is damaged it stops with a message naming the file and the last complete round
(resume from it explicitly with ``resume_round``). Damaged files are moved aside, never deleted.
A checkpoint written with a different setting is refused, naming the keys; ``federation.rounds``
may grow on resume, but never shrink below the rounds already completed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import ConfigError, IntegrityError, ResourceMissingError, UserError
from .results import (
    RESULT_JSON,
    RUNTIME_KEYS,
    atomic_write,
    canonical_json,
    clean_json,
    config_differences,
    read_json,
    read_tensors,
    sha256_bytes,
    tensor_bytes,
)

FORMAT_VERSION = 2
KEEP = 2
_NAME = re.compile(r"round_(\d{5,})\.json")


@dataclass
class Checkpoint:
    """A verified round checkpoint.

    Attributes
    ----------
    round : int
        The last completed round (0-based).
    method : str
    config : dict
        The nested config it was written with.
    history : list of dict
        The per-round records up to ``round``.
    tensors : dict of Tensor
        ``global/<name>`` and ``personal/<client>/<name>``.
    """

    round: int
    method: str
    config: dict
    history: list[dict]
    tensors: dict[str, Tensor]


def _stem(round_idx: int) -> str:
    return f"round_{round_idx:05d}"


def save_checkpoint(directory: str | Path, round_idx: int, config: dict, method: str, history: list[dict],
                    tensors: dict[str, Tensor]) -> Path:
    """Write the checkpoint of round ``round_idx`` (tensors first, manifest last) and prune old rounds.

    Returns
    -------
    Path
        The manifest written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = _stem(round_idx)
    data = tensor_bytes(tensors)
    atomic_write(directory / f"{stem}.safetensors", data)
    meta = clean_json({"format": FORMAT_VERSION, "round": round_idx, "method": method, "config": config,
                       "history": history, "tensors": {"file": f"{stem}.safetensors", "sha256": sha256_bytes(data)}})
    meta["manifest_sha256"] = sha256_bytes(canonical_json(meta).encode())
    path = directory / f"{stem}.json"
    atomic_write(path, json.dumps(meta).encode())
    for old in sorted(_rounds(directory))[:-KEEP]:
        for suffix in (".json", ".safetensors"):
            (directory / f"{_stem(old)}{suffix}").unlink(missing_ok=True)
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return path


def _rounds(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in directory.glob("round_*.json") if (m := _NAME.fullmatch(p.name)))


def read_checkpoint(directory: str | Path, round_idx: int) -> Checkpoint:
    """Read and verify the checkpoint of one round.

    Raises
    ------
    IntegrityError
        The manifest or the tensor file is missing, altered or unreadable (the message names it).
    """
    path = Path(directory) / f"{_stem(round_idx)}.json"
    meta = read_json(path)
    recorded = meta.pop("manifest_sha256", None)
    try:
        body = canonical_json(meta)
    except ValueError:
        body = ""
    if recorded is None or sha256_bytes(body.encode()) != recorded:
        raise IntegrityError(f"{path}: content does not match its recorded SHA-256 (altered or truncated)")
    try:
        if meta["format"] != FORMAT_VERSION or meta["round"] != round_idx:
            raise IntegrityError(f"{path}: format {meta['format']} / round {meta['round']} not expected here")
        if not (_is_config(meta["config"]) and isinstance(meta["method"], str) and isinstance(meta["history"], list)
                and isinstance(meta["tensors"]["file"], str) and isinstance(meta["tensors"]["sha256"], str)):
            raise TypeError("config, method, history or tensors of the wrong type")
        tensors = read_tensors(Path(directory) / Path(meta["tensors"]["file"]).name, meta["tensors"]["sha256"])
        return Checkpoint(meta["round"], meta["method"], meta["config"], meta["history"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, IntegrityError):
            raise
        raise IntegrityError(f"{path}: missing or malformed field ({exc})") from None


def _is_config(value: Any) -> bool:
    """A nested config as written: a dict of section dicts."""
    return isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())


def _set_aside(directory: Path, round_idx: int) -> None:
    for suffix in (".json", ".safetensors"):
        path = directory / f"{_stem(round_idx)}{suffix}"
        if path.exists():
            n = 0
            while (target := path.with_name(f"{path.name}.damaged-{n}")).exists():
                n += 1
            path.rename(target)


def find_resume_point(directory: str | Path, resume_round: int | None = None) -> Checkpoint:
    """The checkpoint to resume from: the newest complete round, or ``resume_round``.

    Parameters
    ----------
    directory : path
        The run's checkpoint folder.
    resume_round : int, optional
        Resume from this completed round instead of the newest (after a damaged newest round;
        the rounds after it are moved aside).

    Raises
    ------
    ResourceMissingError
        No checkpoint in ``directory``.
    IntegrityError
        The round to resume from is damaged; the message names the file and the newest round
        that verifies, if any.
    """
    directory = Path(directory)
    rounds = _rounds(directory) if directory.is_dir() else []
    if not rounds:
        raise ResourceMissingError(f"no checkpoint in {directory} to resume from; run without --resume to start "
                                   "a new run")
    target = rounds[-1] if resume_round is None else resume_round
    if target not in rounds:
        raise UserError(f"--resume-round {target}: {directory} holds rounds {rounds}")
    try:
        point = read_checkpoint(directory, target)
    except IntegrityError as exc:
        good = []
        for r in reversed(rounds):
            if r != target:
                try:
                    read_checkpoint(directory, r)
                    good.append(r)
                    break
                except IntegrityError:
                    continue
        offer = (f"; the last complete round is {good[0]}: pass --resume-round {good[0]} to continue from it"
                 if good else "; no complete round is left: start a new run")
        raise IntegrityError(f"checkpoint damaged: {exc}{offer}") from None
    for later in (r for r in rounds if r > target):
        _set_aside(directory, later)
    return point


def check_resumable(point: Checkpoint, config: dict[str, Any], method: str) -> None:
    """Refuse to resume a checkpoint under another method or setting, or with fewer rounds.

    Raises
    ------
    UserError
        Naming every key that differs (as ``section.key``) or the rounds already completed; a
        :class:`ConfigError` for ``stage1.optimizer_scope="shared"``, whose SGD state no checkpoint holds.
    """
    if config.get("stage1", {}).get("optimizer_scope") == "shared":
        raise ConfigError("stage1.optimizer_scope='shared' cannot be resumed: its SGD state (carried from client to "
                          "client) is not in the round checkpoints, so a resumed run would silently differ; start "
                          "the run again without resume, or use optimizer_scope='client-round'")
    diff = config_differences(point.config, config, RUNTIME_KEYS + ("federation.rounds",))
    if point.method != method:
        diff.insert(0, f"method.name: {point.method!r} there, {method!r} now")
    if diff:
        raise UserError("the checkpoint was written with other settings (" + "; ".join(diff) + "); resume with the "
                        "same config, or start a new run with another --out")
    rounds = config["federation"]["rounds"]
    if rounds < point.round + 1:
        raise UserError(f"federation.rounds={rounds} is below the {point.round + 1} rounds the checkpoint has "
                        "completed; resuming may extend a run but never rewrites its history")


def clear_checkpoints(directory: str | Path) -> None:
    """Remove the round files of ``directory`` (a fresh run into a checkpoint folder starts clean)."""
    directory = Path(directory)
    for r in _rounds(directory) if directory.is_dir() else []:
        for suffix in (".json", ".safetensors"):
            (directory / f"{_stem(r)}{suffix}").unlink(missing_ok=True)


def check_output_dir(out_dir: str | Path, config: dict[str, Any], method: str, resume: bool = False,
                     overwrite: bool = False) -> None:
    """Refuse an output folder that holds another run, or an unfinished run when not resuming.

    The folder's run is read from its ``result.json`` or, for an unfinished run, from the newest
    manifest in ``checkpoint/``. Re-running the same finished config may rewrite its own
    (identical) result; ``overwrite`` allows replacing anything. A resumed run is checked against
    its checkpoint instead (:func:`check_resumable`).

    Raises
    ------
    UserError
        The folder holds a run of another method or setting, or an unfinished run and neither
        ``resume`` nor ``overwrite`` was asked for.
    """
    out = Path(out_dir)
    if overwrite or resume or not out.is_dir():
        return
    ckpt = out / "checkpoint"
    rounds = _rounds(ckpt) if ckpt.is_dir() else []
    finished = (out / RESULT_JSON).exists()
    if not finished and not rounds:
        return
    try:
        saved = read_json(out / RESULT_JSON if finished else ckpt / f"{_stem(rounds[-1])}.json")
    except IntegrityError:
        saved = {}
    if not _is_config(saved.get("config")):
        saved = {**saved, "config": {}}  # damaged: compared as an empty config, so it differs and is named
    diff = config_differences(saved.get("config", {}), config, RUNTIME_KEYS)
    if saved.get("method") != method:
        diff.insert(0, f"method.name: {saved.get('method')!r} there, {method!r} now")
    if diff:
        raise UserError(f"output folder {out} holds a different run ({'; '.join(diff[:3])}); choose another "
                        "--out, or pass --overwrite to replace it")
    if not finished:
        raise UserError(f"output folder {out} holds an unfinished run of this config (round {rounds[-1] + 1} of "
                        f"{config['federation']['rounds']}); pass --resume to continue it, or --overwrite to start "
                        "over")
