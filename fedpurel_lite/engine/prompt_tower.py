"""Prompt encoding that does each token's work once: a shared-prefix pass through a causal text tower.

CoOp runs ``C`` prompts ``[SOT] ctx_1 .. ctx_n <class tokens> . [EOT]`` through the frozen text
transformer at every training step. In a causal transformer a token only sees the tokens before
it, so

1. the prefix ``[SOT] ctx_1 .. ctx_n`` has the same hidden states in every prompt (generic
   context): it is computed **once**, not ``C`` times, and its keys/values are shared by all
   classes' suffixes;
2. nothing after a prompt's EOT token reaches the pooled EOT state: each class's suffix is packed
   to its own length (no padding to the longest class name) for every position-wise op (layer
   norms, projections, MLP), and only attention sees a padded ``[C, S]`` view;
3. the last block is only needed at the EOT token: its queries, attention output and MLP are
   computed for one row per class (keys and values for all).

The result equals the plain tower's pooled, projected features up to float rounding (tested against
``PromptLearner``'s plain path and ``encode_text``), with the gradient flowing to the context as
usual. On the embedded tiny CLIP (prefix 5 of 11 tokens) a forward + backward costs about a third
of the plain pass; the saving grows with the context length.

Supported: open_clip ``Transformer`` stacks of ``ResidualAttentionBlock`` (``nn.MultiheadAttention``
with packed in-projection, no cross-attention) under a causal mask. :func:`supports` says whether a
tower qualifies; :class:`~fedpurel_lite.peft.PromptLearner` falls back to the plain pass otherwise.
The blocks are read through :mod:`fedpurel_lite.data.openclip_adapter` (the one user of open_clip's
internals) as :class:`~fedpurel_lite.data.openclip_adapter.Block` views.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.openclip_adapter import Block, block_problem, block_views, grad_checkpointing, resblocks


def supports(transformer: nn.Module, attn_mask: Tensor | None) -> bool:
    """Whether :class:`SharedPrefixTower` can run ``transformer`` under ``attn_mask``.

    Needs a causal mask (``-inf`` strictly above the diagonal, 0 elsewhere) and blocks with an
    ``nn.MultiheadAttention`` (packed in-projection, no dropout, no bias_k/v) between ``ln_1`` and
    ``ln_2`` / ``mlp``, without cross-attention.
    """
    if attn_mask is None or attn_mask.dim() != 2 or grad_checkpointing(transformer):
        return False
    n = attn_mask.shape[0]
    causal = torch.full((n, n), float("-inf"), device=attn_mask.device).triu(1)
    if not torch.equal(attn_mask.float(), causal):
        return False
    blocks = resblocks(transformer, strict=False)
    return len(blocks) > 0 and all(block_problem(block, no_dropout=True) is None for block in blocks)


class SharedPrefixTower(nn.Module):
    """Encode ``C`` causal prompts sharing a learnable prefix, pooled at each prompt's EOT token.

    The frozen pieces are held by reference (not registered as submodules, never copied).

    Parameters
    ----------
    transformer, ln_final : nn.Module
        The frozen text transformer (see :func:`supports`) and final layer norm.
    proj : nn.Parameter or nn.Module or None
        The text projection.
    suffix : Tensor
        ``[C, S, W]`` token embeddings after the prefix (class tokens, ".", EOT, padding).
    pos : Tensor
        ``[L, W]`` positional embeddings, ``L >= P + S``.
    eot : Tensor
        ``[C]`` absolute position of each prompt's EOT token (``>= P``).
    prefix_len : int
        ``P``: SOT plus the context tokens.
    """

    suffix_packed: Tensor
    pos_prefix: Tensor
    pad_index: Tensor
    cls_of: Tensor
    pos_of: Tensor
    eot_row: Tensor
    mask: Tensor
    eot_mask: Tensor

    def __init__(self, transformer: nn.Module, ln_final: nn.Module, proj: Any, suffix: Tensor, pos: Tensor,
                 eot: Tensor, prefix_len: int) -> None:
        super().__init__()
        self._frozen = (transformer, ln_final, proj)
        num, s_max, _ = suffix.shape
        p = int(prefix_len)
        lengths = (eot - p + 1).long()  # suffix tokens up to and including EOT
        if int(lengths.min()) < 1 or int(lengths.max()) > s_max:
            raise ValueError("every EOT must lie in the suffix")
        offsets = torch.cumsum(lengths, 0) - lengths
        cls_of = torch.repeat_interleave(torch.arange(num), lengths)
        pos_of = torch.arange(int(lengths.sum())) - offsets[cls_of]
        # padded [C, S] view -> packed rows; padding repeats a class's last token (masked out as a key
        # by causality, its query rows are discarded)
        j = torch.arange(s_max).clamp_max(lengths.unsqueeze(1) - 1)
        self.register_buffer("suffix_packed", (suffix + pos[p:p + s_max])[cls_of, pos_of], persistent=False)
        self.register_buffer("pos_prefix", pos[:p].clone(), persistent=False)
        self.register_buffer("pad_index", offsets.unsqueeze(1) + j, persistent=False)
        self.register_buffer("cls_of", cls_of, persistent=False)
        self.register_buffer("pos_of", pos_of, persistent=False)
        self.register_buffer("eot_row", offsets + lengths - 1, persistent=False)
        keys = torch.arange(p + s_max)
        # suffix query i (absolute p + i) sees the prefix and suffix keys j <= i
        self.register_buffer("mask", keys.unsqueeze(0) <= p + torch.arange(s_max).unsqueeze(1), persistent=False)
        # the EOT query of class c sees the prefix and its own suffix keys
        self.register_buffer("eot_mask", (keys.unsqueeze(0) < p + lengths.unsqueeze(1))[:, None, None, :],
                             persistent=False)

    def forward(self, prefix: Tensor) -> Tensor:
        """Normalised pooled features ``[C, D]`` for prefix embeddings ``[1 or C, P, W]`` (without positions)."""
        transformer, ln_final, proj = self._frozen
        blocks = block_views(transformer)
        hp = prefix + self.pos_prefix  # [Cp, P, W]
        hs = self.suffix_packed  # [T, W]
        for block in blocks[:-1]:
            hp, hs = self._block(block, hp, hs)
        x = ln_final(self._last_block(blocks[-1], hp, hs))
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Module) else x @ proj
        return F.normalize(x, dim=-1)

    def _suffix_attention(self, q: Tensor, kp: Tensor, vp: Tensor, ks: Tensor, vs: Tensor, heads: int,
                          mask: Tensor) -> Tensor:
        """Attention of per-class queries ``[C, Nq, W]`` over the (shared) prefix and the padded suffix."""
        num = self.pad_index.shape[0]
        k = torch.cat([kp.expand(num, -1, -1), ks[self.pad_index]], dim=1)
        v = torch.cat([vp.expand(num, -1, -1), vs[self.pad_index]], dim=1)
        out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads), attn_mask=mask)
        return out.transpose(-3, -2).flatten(-2)

    def _block(self, block: Block, hp: Tensor, hs: Tensor) -> tuple[Tensor, Tensor]:
        heads, width = block.heads, hp.shape[-1]
        qp, kp, vp = torch.split(F.linear(block.ln_1(hp), block.in_proj_weight, block.in_proj_bias), width, -1)
        qs, ks, vs = torch.split(F.linear(block.ln_1(hs), block.in_proj_weight, block.in_proj_bias), width, -1)
        op = F.scaled_dot_product_attention(_heads(qp, heads), _heads(kp, heads), _heads(vp, heads), is_causal=True)
        op = op.transpose(-3, -2).flatten(-2)
        os = self._suffix_attention(qs[self.pad_index], kp, vp, ks, vs, heads, self.mask)[self.cls_of, self.pos_of]
        hp = hp + block.ls_1(block.out_proj(op))
        hs = hs + block.ls_1(block.out_proj(os))
        hp = hp + block.ls_2(block.mlp(block.ln_2(hp)))
        hs = hs + block.ls_2(block.mlp(block.ln_2(hs)))
        return hp, hs

    def _last_block(self, block: Block, hp: Tensor, hs: Tensor) -> Tensor:
        """The last block at the EOT rows only: ``[C, W]``."""
        heads, width = block.heads, hp.shape[-1]
        w, b = block.in_proj_weight, block.in_proj_bias
        _, kp, vp = torch.split(F.linear(block.ln_1(hp), w, b), width, -1)
        ks, vs = torch.split(F.linear(block.ln_1(hs), w[width:], None if b is None else b[width:]), width, -1)
        he = hs[self.eot_row]
        qe = F.linear(block.ln_1(he), w[:width], None if b is None else b[:width])
        o = self._suffix_attention(qe.unsqueeze(1), kp, vp, ks, vs, heads, self.eot_mask).squeeze(1)
        he = he + block.ls_1(block.out_proj(o))
        out: Tensor = he + block.ls_2(block.mlp(block.ln_2(he)))
        return out


def _heads(x: Tensor, heads: int) -> Tensor:
    """``[..., N, W]`` -> ``[..., H, N, W / H]``."""
    return torch.unflatten(x, -1, (heads, -1)).transpose(-3, -2)
