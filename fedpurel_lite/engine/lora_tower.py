"""LoRA on the attention q/k/v of open_clip transformer towers, run over frozen blocks.

The frozen blocks (open_clip ``ResidualAttentionBlock`` with an ``nn.MultiheadAttention``) are
never modified or copied: :func:`run_blocks` recomputes each block's forward from its frozen
weights with plain tensor operations and adds the low-rank update
``scaling * B @ A`` to the q, k and v input projections. Writing the attention out (instead of
calling ``nn.MultiheadAttention``) keeps the pass differentiable under ``torch.func``-style
batched gradients (``is_grads_batched``), and lets a no-grad pass merge ``W + scaling * B @ A``
into one matrix per block.

The vision tower splits into a frozen prefix, :func:`vision_tokens` (patch embedding, class
token, positional embedding, ``ln_pre``: computed once per image and cached), the blocks with
LoRA, and a frozen suffix, :func:`vision_pool` (``ln_post`` at the pooled token, projection).
Those two and the block layout are open_clip internals, read only through
:mod:`fedpurel_lite.data.openclip_adapter` (re-exported here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.openclip_adapter import Block, block_view, check_blocks, check_vision, resblocks, vision_pool, vision_tokens

__all__ = ["TARGETS", "LoRAFactors", "block_forward", "check_blocks", "check_vision", "run_blocks", "vision_pool",
           "vision_tokens"]

#: the attention input projections that carry LoRA factors, in the order of ``in_proj_weight``
TARGETS: tuple[str, ...] = ("q", "k", "v")


class LoRAFactors(nn.Module):
    """Low-rank factors ``A_t`` ``[r, width]`` and ``B_t`` ``[width, r]`` for q, k and v of one block.

    ``A`` is Kaiming-uniform (``a = sqrt(5)``, i.e. ``U(-1/sqrt(width), 1/sqrt(width))``), ``B`` is
    zero, so the update ``B @ A`` is zero at init and the tower equals the frozen one.

    Parameters
    ----------
    width : int
        The block's model width.
    rank : int
        LoRA rank ``r``.
    generator : torch.Generator, optional
        Source of the ``A`` init.
    """

    def __init__(self, width: int, rank: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(width)
        for t in TARGETS:
            a = (torch.rand(rank, width, generator=generator) * 2.0 - 1.0) * bound
            setattr(self, f"{t}_A", nn.Parameter(a))
            setattr(self, f"{t}_B", nn.Parameter(torch.zeros(width, rank)))

    def delta(self, h: Tensor, scaling: float) -> list[Tensor]:
        """The updates of the q, k and v projections of ``h`` ``[..., width]``, each ``[..., width]``.

        One matmul with the stacked ``A`` factors, then one per ``B``; returned unstacked, so they
        add to q, k and v without concatenating (and splitting again in the backward pass).
        """
        a = torch.cat([getattr(self, f"{t}_A") for t in TARGETS])  # [3r, width]
        u = (h @ a.t()).chunk(len(TARGETS), dim=-1)
        return [scaling * (ui @ getattr(self, f"{t}_B").t()) for ui, t in zip(u, TARGETS, strict=True)]

    def merged(self, scaling: float) -> Tensor:
        """``scaling * B @ A`` for q, k, v stacked like ``in_proj_weight`` (``[3 width, width]``)."""
        return scaling * torch.cat([getattr(self, f"{t}_B") @ getattr(self, f"{t}_A") for t in TARGETS])


def block_forward(blk: nn.Module | Block, x: Tensor, lora: LoRAFactors | None, scaling: float,
                  attn_mask: Tensor | None = None, query: int | None = None) -> Tensor:
    """One ``ResidualAttentionBlock`` forward on ``x`` ``[B, L, width]`` with LoRA on q/k/v.

    ``blk``: the open_clip block (checked with :func:`check_blocks`) or its
    :class:`~fedpurel_lite.data.openclip_adapter.Block` view. Equal to ``blk(x, attn_mask=attn_mask)``
    when the update is zero (tested). Without grad the update is merged into the projection matrix
    (one matmul). With ``query`` only that token's output is computed (``[B, 1, width]``; keys and
    values still come from every token): exact for a last block whose other outputs are never read.
    """
    blk = blk if isinstance(blk, Block) else block_view(blk)
    h = blk.ln_1(x)
    weight, bias = blk.in_proj_weight, blk.in_proj_bias
    if lora is not None and not torch.is_grad_enabled():
        weight = weight + lora.merged(scaling)
        lora = None
    b, n, width = x.shape
    heads = blk.heads
    if query is None:
        q, k, v = F.linear(h, weight, bias).chunk(3, dim=-1)
        if lora is not None:
            dq, dk, dv = lora.delta(h, scaling)
            q, k, v = q + dq, k + dk, v + dv
    else:
        x = x[:, query:query + 1]
        q = F.linear(h[:, query:query + 1], weight[:width], None if bias is None else bias[:width])
        k, v = F.linear(h, weight[width:], None if bias is None else bias[width:]).chunk(2, dim=-1)
        if lora is not None:
            dq, dk, dv = lora.delta(h, scaling)
            q, k, v = q + dq[:, query:query + 1], k + dk, v + dv
        if attn_mask is not None:
            attn_mask = attn_mask[query:query + 1]
    q, k, v = (t.reshape(b, t.shape[1], heads, width // heads).transpose(1, 2) for t in (q, k, v))
    scores = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores + attn_mask.to(scores.dtype)
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, q.shape[2], width)
    x = x + blk.ls_1(blk.out_proj(out))
    y: Tensor = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return y


def run_blocks(transformer: nn.Module, x: Tensor, factors: nn.ModuleList | None, scaling: float,
               attn_mask: Tensor | None = None, last_query: int | None = None) -> Tensor:
    """All blocks of ``transformer`` on batch-first ``x``, block ``i`` with ``factors[i]`` (or none).

    ``last_query``: the last block computes only that token (see :func:`block_forward`).
    """
    blocks = resblocks(transformer)
    last = len(blocks) - 1
    for i, blk in enumerate(blocks):
        lora: LoRAFactors | None = None if factors is None else factors[i]  # type: ignore[assignment]
        x = block_forward(blk, x, lora, scaling, attn_mask,
                          last_query if i == last else None)
    return x
