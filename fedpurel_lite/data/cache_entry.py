"""One cache entry on disk: ``<base>.safetensors`` plus a ``<base>.json`` manifest that pins it.

The manifest records what the tensors were computed from (``inputs``), the SHA-256 of the tensor
file and the tensor shapes, and carries a digest of all its own fields, so a damaged or hand-edited
entry is detected before it is used. The feature cache and the vision-token cache share this
format, this writer (:func:`write_entry`), this reader (:func:`read_entry`) and this policy
(:func:`load_or_build_entry`): a stale entry is rebuilt; a damaged or altered one is reported once
(:class:`FeatureCacheWarning`), moved aside (``<file>.corrupt-<n>``, never deleted) and rebuilt;
concurrent builders of one entry are serialised by an advisory lock on ``<base>.lock``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from .safe_load import load_json

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: builders are not serialised
    fcntl = None  # type: ignore[assignment]

#: the manifest field holding the digest of all the other fields
DIGEST = "manifest_sha256"
T = TypeVar("T")


class FeatureCacheWarning(UserWarning):
    """A feature (or vision-token) cache file was damaged or altered; it was moved aside and the entry rebuilt."""


class Damaged(Exception):
    """``(path, reason)``: a cache file that must not be used."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def entry_key(inputs: dict[str, Any]) -> str:
    """The file stem of the entry computed from ``inputs``: ``<world>-<model>-<16 hex of their SHA-256>``."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    stem = f"{inputs['world'].split(':', 1)[0]}-{inputs['model']}"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) + f"-{digest}"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every manifest field but :data:`DIGEST` (tensor hash included)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def write_entry(base: Path, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``<base>.safetensors``, then ``<base>.json``, each via a unique temporary name and ``os.replace``.

    A reader never sees a half-written file, and concurrent writers of the same cache do not
    clobber each other's temporaries.

    Parameters
    ----------
    base : Path
        Cache entry path without suffix (its folder must exist).
    tensors : dict of str to Tensor
        What the safetensors file holds.
    manifest : dict
        The manifest's own fields; completed here with ``content_sha256``, ``shapes`` and the
        digest of the whole manifest.

    Returns
    -------
    dict
        The manifest as written.
    """
    from safetensors.torch import save_file

    mpath, tpath = base.with_suffix(".json"), base.with_suffix(".safetensors")
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    ttmp, mtmp = (p.with_name(f"{p.name}.{tag}.tmp") for p in (tpath, mpath))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(ttmp))
        manifest = {**manifest, "content_sha256": sha256_file(ttmp),
                    "shapes": {k: list(v.shape) for k, v in tensors.items()}}
        manifest[DIGEST] = manifest_digest(manifest)
        mtmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(ttmp, tpath)
        os.replace(mtmp, mpath)
    finally:
        for tmp in (ttmp, mtmp):
            tmp.unlink(missing_ok=True)
    return manifest


@contextmanager
def locked(base: Path) -> Iterator[None]:
    """Hold an exclusive advisory ``flock`` on ``<base>.lock`` (none on a read-only folder or without fcntl)."""
    try:
        handle = open(base.with_suffix(".lock"), "a+b")  # noqa: SIM115 - closing the file releases the lock
    except OSError:
        handle = None
    if handle is not None and fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


def move_aside(*paths: Path) -> list[str]:
    """Rename the existing ``paths`` to ``<name>.corrupt-<n>`` (one free ``n``); return the new names."""
    n = next(n for n in itertools.count(1) if not any(p.with_name(f"{p.name}.corrupt-{n}").exists() for p in paths))
    moved = [p for p in paths if p.exists()]
    for p in moved:
        os.replace(p, p.with_name(f"{p.name}.corrupt-{n}"))
    return [f"{p.name}.corrupt-{n}" for p in moved]


def read_entry(base: Path, inputs: dict[str, Any], names: tuple[str, ...],
               what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The intact entry's manifest and tensors; ``None`` if absent or stale (other ``inputs``).

    Parameters
    ----------
    base : Path
        The entry without suffix.
    inputs : dict
        What the entry must have been computed from.
    names : tuple of str
        The tensors the file must hold.
    what : str
        The manifest's name in messages (``"feature-cache manifest"``).

    Raises
    ------
    Damaged
        ``(path, reason)``: a file is missing, unreadable, altered, or its tensors do not fit the manifest.
    """
    from safetensors.torch import load_file

    mpath, tpath = base.with_suffix(".json"), base.with_suffix(".safetensors")
    if not mpath.exists():
        if tpath.exists():
            raise Damaged(mpath, "the manifest is missing (its tensor file is there)")
        return None
    try:
        manifest = load_json(mpath, what)  # bounded; damage is an IntegrityError (ValueError)
        altered = manifest_digest(manifest) != manifest[DIGEST]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise Damaged(mpath, f"the manifest is unreadable or has no valid {DIGEST} ({exc!r})") from None
    if altered:
        raise Damaged(mpath, "the manifest was altered (its SHA-256 does not match)")
    if manifest.get("inputs") != inputs:
        return None
    if not tpath.exists():
        raise Damaged(tpath, "the tensor file is missing (its manifest is there)")
    if sha256_file(tpath) != manifest.get("content_sha256"):
        raise Damaged(tpath, "the tensor file is truncated or altered (content hash mismatch)")
    try:
        tensors = load_file(str(tpath))
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use this cache
        raise Damaged(tpath, f"the tensor file does not load ({exc})") from None
    if set(tensors) != set(names) or {k: list(v.shape) for k, v in tensors.items()} != manifest.get("shapes"):
        raise Damaged(mpath, "its shapes do not fit the tensors")
    return manifest, tensors


def load_or_build_entry(base: Path, read: Callable[[], T | None], build: Callable[[], T], label: str,
                        stacklevel: int = 2) -> T:
    """Under the entry's lock: :func:`read` it, or report and move aside a damaged one, then build it.

    Parameters
    ----------
    base : Path
        The entry without suffix (its folder is created).
    read : callable
        Returns the entry, ``None`` when absent or stale, or raises :class:`Damaged`.
    build : callable
        Computes and writes the entry (called at most once, under the lock).
    label : str
        ``"Feature cache"`` / ``"Token cache"``: the warning's first words.
    stacklevel : int
        Where the :class:`FeatureCacheWarning` points (counted from the caller of this function).
    """
    base.parent.mkdir(parents=True, exist_ok=True)
    with locked(base):  # a second builder waits here, then reads the first one's cache
        try:
            entry = read()
        except Damaged as err:
            moved = move_aside(base.with_suffix(".json"), base.with_suffix(".safetensors"))
            entry, (path, reason) = None, err.args
            warnings.warn(f"{label} file {path} is damaged: {reason}. Moved aside as {', '.join(moved) or 'nothing'} "
                          "(kept for inspection) and rebuilding the cache.", FeatureCacheWarning,
                          stacklevel=stacklevel + 1)
        if entry is None:
            entry = build()
    return entry
