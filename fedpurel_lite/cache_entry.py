"""One cache entry on disk: ``<base>.safetensors`` plus a ``<base>.json`` manifest that pins it.

The manifest records what the tensors were computed from (``inputs``), the SHA-256 of the tensor
file and the tensor shapes, and carries a digest of all its own fields, so a damaged or hand-edited
entry is detected before it is used. The feature cache and the vision-token cache share this
format and this writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import torch

from .backbone import sha256_file

#: the manifest field holding the digest of all the other fields
DIGEST = "manifest_sha256"


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the canonical JSON of every manifest field but :data:`DIGEST` (tensor hash included)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def write_entry(base: Path, tensors: dict[str, torch.Tensor], manifest: dict) -> dict:
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
