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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def check_blocks(transformer: nn.Module) -> None:
    """Raise ``TypeError`` unless every block is a plain open_clip ``ResidualAttentionBlock``.

    Supported: batch-first towers whose attention is an ``nn.MultiheadAttention`` with one packed
    q/k/v projection, no extra key/value biases and no cross-attention.
    """
    if not getattr(transformer, "batch_first", True):
        raise TypeError("LoRA needs a batch-first open_clip Transformer")
    for i, blk in enumerate(transformer.resblocks):
        attn = getattr(blk, "attn", None)
        ok = (isinstance(attn, nn.MultiheadAttention) and attn.in_proj_weight is not None
              and attn.bias_k is None and not attn.add_zero_attn and attn.batch_first
              and not hasattr(blk, "ln_1_kv") and hasattr(blk, "ln_1") and hasattr(blk, "mlp"))
        if not ok:
            raise TypeError(f"LoRA supports open_clip ResidualAttentionBlock towers; block {i} is "
                            f"{type(blk).__name__} with attention {type(attn).__name__}")


def block_forward(blk: nn.Module, x: Tensor, lora: LoRAFactors | None, scaling: float,
                  attn_mask: Tensor | None = None, query: int | None = None) -> Tensor:
    """One ``ResidualAttentionBlock`` forward on ``x`` ``[B, L, width]`` with LoRA on q/k/v.

    Equal to ``blk(x, attn_mask=attn_mask)`` when the update is zero (tested). Without grad the
    update is merged into the projection matrix (one matmul). With ``query`` only that token's
    output is computed (``[B, 1, width]``; keys and values still come from every token): exact
    for a last block whose other outputs are never read.
    """
    attn = blk.attn
    h = blk.ln_1(x)
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if lora is not None and not torch.is_grad_enabled():
        weight = weight + lora.merged(scaling)
        lora = None
    b, n, width = x.shape
    heads = attn.num_heads
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
    x = x + blk.ls_1(attn.out_proj(out))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def run_blocks(transformer: nn.Module, x: Tensor, factors: nn.ModuleList | None, scaling: float,
               attn_mask: Tensor | None = None, last_query: int | None = None) -> Tensor:
    """All blocks of ``transformer`` on batch-first ``x``, block ``i`` with ``factors[i]`` (or none).

    ``last_query``: the last block computes only that token (see :func:`block_forward`).
    """
    last = len(transformer.resblocks) - 1
    for i, blk in enumerate(transformer.resblocks):
        x = block_forward(blk, x, None if factors is None else factors[i], scaling, attn_mask,
                          last_query if i == last else None)
    return x


def check_vision(visual: nn.Module) -> None:
    """Raise ``TypeError`` unless ``visual`` is an open_clip ``VisionTransformer`` LoRA can run."""
    for attr in ("_embeds", "_pool", "transformer", "ln_post"):
        if not hasattr(visual, attr):
            raise TypeError(f"vision LoRA needs an open_clip VisionTransformer; {type(visual).__name__} has no "
                            f"{attr!r}")
    if getattr(visual, "attn_pool", None) is not None:
        raise TypeError("vision LoRA does not support attention-pooling towers (CoCa)")
    check_blocks(visual.transformer)


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
    was = visual.training
    visual.eval()  # patch dropout off
    try:
        return visual._embeds(images).float()
    finally:
        visual.train(was)


def vision_pool(visual: nn.Module, x: Tensor) -> Tensor:
    """The frozen suffix: pooling with ``ln_post`` and the projection -> L2-normalised features ``[B, D]``."""
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return F.normalize(pooled, dim=-1)
