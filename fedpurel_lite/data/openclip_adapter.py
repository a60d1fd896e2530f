"""The only module that reaches into open_clip's internals; everything else goes through it.

The towers this package trains on (vision LoRA, the shared-prefix prompt tower, text LoRA) rely on
parts of open_clip that are not its public API: the vision tower's private ``_embeds`` (patch
embedding, class token, positions, ``ln_pre``) and ``_pool`` (``ln_post`` and pooling), the text
tower's embeddings, mask and pooling attributes, and the layout of a ``ResidualAttentionBlock``
(``ln_1``, a packed ``nn.MultiheadAttention``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``). They are
read here and handed on as plain views (:class:`Block`, :class:`TextTower`).

This module was written against open_clip :data:`TESTED_VERSION`. Another installed version gives
one :class:`OpenClipVersionWarning` the first time an internal is used; an internal that is gone
gives one :class:`OpenClipChanged` line naming the tested version and the missing attribute.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError

#: the open_clip version whose internals this module was written and tested against
TESTED_VERSION = "3.3.0"
#: the distribution that provides ``open_clip``
DISTRIBUTION = "open_clip_torch"
_checked: list[str] = []


class OpenClipChanged(UserError):
    """The installed open_clip lacks an internal this package relies on (its code changed)."""


class OpenClipVersionWarning(UserWarning):
    """The installed open_clip is not the version this package's internals were tested with."""


@functools.cache
def installed_version() -> str:
    """The installed open_clip version (``"unknown"`` when its metadata cannot be read)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        import open_clip

        return str(getattr(open_clip, "__version__", "unknown"))


def check_version() -> bool:
    """Whether the installed open_clip is :data:`TESTED_VERSION`; warns once per process when not."""
    found = installed_version()
    if found != TESTED_VERSION and found not in _checked:
        _checked.append(found)
        warnings.warn(f"open_clip {found} is installed; fedpurel_lite uses open_clip internals tested with "
                      f"{TESTED_VERSION} ({DISTRIBUTION}=={TESTED_VERSION}); a changed internal raises "
                      "OpenClipChanged", OpenClipVersionWarning, stacklevel=3)
    return found == TESTED_VERSION


def changed(owner: Any, attr: str) -> OpenClipChanged:
    """The one-line error for an open_clip object ``owner`` that lacks ``attr``."""
    name = owner if isinstance(owner, str) else type(owner).__name__
    return OpenClipChanged(f"open_clip {installed_version()} changed: {name} has no {attr!r} (fedpurel_lite was "
                           f"tested with open_clip {TESTED_VERSION}; install {DISTRIBUTION}=={TESTED_VERSION})")


def require(obj: Any, *attrs: str) -> None:
    """Raise :class:`OpenClipChanged` naming the first of ``attrs`` that ``obj`` lacks."""
    check_version()
    for attr in attrs:
        if not hasattr(obj, attr):
            raise changed(obj, attr)


# ----------------------------------------------------------------------------- transformer blocks

#: what a ``ResidualAttentionBlock`` of open_clip :data:`TESTED_VERSION` holds (and the towers read)
BLOCK_PARTS = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")


class Block(NamedTuple):
    """The frozen pieces of one open_clip ``ResidualAttentionBlock``, by reference.

    ``x + ls_1(out_proj(attention(ln_1(x))))``, then ``+ ls_2(mlp(ln_2(.)))``, with the packed
    q/k/v input projection ``in_proj_weight`` ``[3 width, width]`` and ``heads`` heads.
    """

    ln_1: nn.Module
    in_proj_weight: Tensor
    in_proj_bias: Tensor | None
    heads: int
    out_proj: nn.Module
    ls_1: nn.Module
    ln_2: nn.Module
    mlp: nn.Module
    ls_2: nn.Module


def block_problem(blk: nn.Module, *, no_dropout: bool = False) -> str | None:
    """Why ``blk`` is not a plain batch-first ``ResidualAttentionBlock`` (``None`` when it is).

    Plain: an ``nn.MultiheadAttention`` with one packed, batch-first q/k/v projection, no extra
    key/value biases, no zero attention, no cross-attention (``ln_1_kv``) and, with
    ``no_dropout``, no attention dropout. A ``ResidualAttentionBlock`` without one of
    :data:`BLOCK_PARTS` raises :class:`OpenClipChanged` (open_clip's block changed).
    """
    if type(blk).__name__ == "ResidualAttentionBlock":
        require(blk, *BLOCK_PARTS)
    attn = getattr(blk, "attn", None)
    ok = (isinstance(attn, nn.MultiheadAttention) and attn.in_proj_weight is not None and attn._qkv_same_embed_dim
          and attn.bias_k is None and not attn.add_zero_attn and attn.batch_first
          and not hasattr(blk, "ln_1_kv") and all(hasattr(blk, a) for a in BLOCK_PARTS)
          and not (no_dropout and attn.dropout))
    return None if ok else f"{type(blk).__name__} with attention {type(attn).__name__}"


def resblocks(transformer: nn.Module, strict: bool = True) -> list[nn.Module]:
    """The blocks of an open_clip ``Transformer``, in order.

    Without ``resblocks``: :class:`OpenClipChanged` when ``strict``, else ``[]`` (not a tower of blocks).
    """
    if not strict and not hasattr(transformer, "resblocks"):
        return []
    require(transformer, "resblocks")
    blocks: Any = transformer.resblocks  # open_clip objects are read untyped here, and only here
    return list(blocks)


def check_blocks(transformer: nn.Module) -> None:
    """Raise ``TypeError`` unless every block of ``transformer`` is plain (see :func:`block_problem`)."""
    if not getattr(transformer, "batch_first", True):
        raise TypeError("LoRA needs a batch-first open_clip Transformer")
    for i, blk in enumerate(resblocks(transformer)):
        problem = block_problem(blk)
        if problem is not None:
            raise TypeError(f"LoRA supports open_clip ResidualAttentionBlock towers; block {i} is {problem}")


def block_view(blk: nn.Module) -> Block:
    """The :class:`Block` of a plain open_clip ``ResidualAttentionBlock`` (checked with :func:`check_blocks`)."""
    b: Any = blk
    attn = b.attn
    return Block(b.ln_1, attn.in_proj_weight, attn.in_proj_bias, int(attn.num_heads), attn.out_proj, b.ls_1, b.ln_2,
                 b.mlp, b.ls_2)


def block_views(transformer: nn.Module) -> list[Block]:
    """:func:`block_view` of every block of ``transformer``."""
    return [block_view(b) for b in resblocks(transformer)]


def tower_width(transformer: nn.Module) -> int:
    """The model width of an open_clip ``Transformer``."""
    require(transformer, "width")
    t: Any = transformer
    return int(t.width)


def grad_checkpointing(transformer: nn.Module) -> bool:
    """Whether the tower recomputes its blocks in the backward pass (open_clip's ``grad_checkpointing``)."""
    return bool(getattr(transformer, "grad_checkpointing", False))


# ----------------------------------------------------------------------------- vision tower

def check_vision(visual: nn.Module) -> None:
    """Raise unless ``visual`` is an open_clip ``VisionTransformer`` whose blocks vision LoRA can run.

    Raises
    ------
    TypeError
        Not a ViT (no ``transformer``), an attention-pooling tower (CoCa), or unsupported blocks.
    OpenClipChanged
        A ``VisionTransformer`` without the private ``_embeds`` / ``_pool`` (or ``ln_post``, ``proj``).
    """
    if not hasattr(visual, "transformer"):
        raise TypeError(f"vision LoRA needs an open_clip VisionTransformer; {type(visual).__name__} has no "
                        "'transformer'")
    require(visual, "_embeds", "_pool", "ln_post", "proj")
    if getattr(visual, "attn_pool", None) is not None:
        raise TypeError("vision LoRA does not support attention-pooling towers (CoCa)")
    v: Any = visual
    check_blocks(v.transformer)


def pools_first_token(visual: nn.Module) -> bool:
    """Whether the tower pools its class token (``pool_type == "tok"``), so only token 0 leaves the last block."""
    return getattr(visual, "pool_type", "tok") == "tok"


@torch.no_grad()
def vision_tokens(visual: nn.Module, images: Tensor) -> Tensor:
    """The frozen prefix of the vision tower: patch embedding, class token, positions, ``ln_pre``.

    Parameters
    ----------
    visual : open_clip VisionTransformer
    images : Tensor
        Preprocessed images ``[B, 3, H, W]``.

    Returns
    -------
    Tensor
        ``float32 [B, tokens, width]``, the input of the first block.
    """
    require(visual, "_embeds")
    v: Any = visual
    was = visual.training
    visual.eval()  # patch dropout off
    try:
        tokens: Tensor = v._embeds(images).float()
        return tokens
    finally:
        visual.train(was)


def vision_pool(visual: nn.Module, x: Tensor) -> Tensor:
    """The frozen suffix: pooling with ``ln_post`` and the projection -> L2-normalised features ``[B, D]``."""
    v: Any = visual
    pooled, _ = v._pool(x)
    if v.proj is not None:
        pooled = pooled @ v.proj
    return F.normalize(pooled, dim=-1)


# ----------------------------------------------------------------------------- text tower

@dataclass(frozen=True)
class TextTower:
    """The frozen text tower of an open_clip ``CLIP`` / ``CustomTextCLIP``, by reference.

    Attributes
    ----------
    module : nn.Module
        The object holding the pieces (the CLIP itself, or its ``text`` tower).
    token_embedding, positional_embedding : nn.Module, Tensor
    transformer, ln_final : nn.Module
    text_projection : Tensor or nn.Module or None
    attn_mask : Tensor or None
        The causal mask (``None``: bidirectional).
    pool : {"argmax", "eos"}
        Pool at the highest token id (CLIP's EOT) or at the first ``eos_id`` token.
    eos_id : int or None
        The EOT token id for pool types other than ``"argmax"``.
    """

    module: nn.Module
    token_embedding: nn.Module
    positional_embedding: Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Any
    attn_mask: Tensor | None
    pool: str
    eos_id: int | None


def text_tower(model: nn.Module, user: str = "PromptLearner") -> TextTower:
    """The :class:`TextTower` of an open_clip model (``CLIP`` itself, or ``CustomTextCLIP.text``).

    Parameters
    ----------
    model : nn.Module
    user : str
        Who needs the tower, for the error message.

    Raises
    ------
    TypeError
        ``model`` is not an open_clip ``CLIP`` / ``CustomTextCLIP`` with a ``TextTransformer``, pools
        other than at the EOT token (``argmax`` / ``eos``), or has a CLS embedding (CoCa).
    """
    check_version()
    m: Any = model
    tower: Any = m.text if hasattr(m, "text") and hasattr(m.text, "token_embedding") else m
    for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
        if not hasattr(tower, attr):
            raise TypeError(f"{type(model).__name__} has no text attribute {attr!r}; {user} needs an "
                            "open_clip CLIP/CustomTextCLIP with a TextTransformer tower")
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
    if pool not in ("argmax", "eos"):
        raise TypeError(f"{user} supports argmax/eos pooling, the model pools with {pool!r}")
    if getattr(tower, "cls_emb", None) is not None:
        raise TypeError(f"{user} does not support text towers with a CLS embedding (CoCa)")
    return TextTower(tower, tower.token_embedding, tower.positional_embedding, tower.transformer, tower.ln_final,
                     getattr(tower, "text_projection", None), getattr(tower, "attn_mask", None), pool,
                     getattr(tower, "text_eos_id", getattr(tower, "eos_id", None)))
