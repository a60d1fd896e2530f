"""BitFit: tune only the bias terms of the frozen CLIP vision tower, on cached vision tokens.

Every block of the vision transformer keeps its weights frozen; the PEFT adds a trainable offset,
zero at init, to each bias: the attention's packed q/k/v input projection and its output
projection, the MLP's linear layers and (``include_norms``) the two LayerNorms. The tower's
frozen prefix (patch embedding, class token, positions, ``ln_pre``) is cached per image as for
vision LoRA, so a step runs only the blocks, ``ln_post`` at the class token and the projection;
the class features are the frozen zero-shot classifier. With the offsets at zero the model is
zero-shot CLIP. The key bias is kept for completeness although it cannot change the attention
(it adds the same score to every key of a query), so its gradient is zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.openclip_adapter import Block, block_view, check_vision, pools_first_token, resblocks, vision_pool
from .base import PEFTModule, knob, register_peft

#: images per pass of the tower without grad (evaluation, the frozen global model)
NO_GRAD_ROWS = 256


@dataclass(frozen=True)
class BitFitConfig:
    """``[peft.bitfit]``: which biases of the vision tower train."""

    include_norms: bool = knob(True, "also tune the biases of every block's two LayerNorms (BitFit tunes every bias)")


def _biased(blk: Block) -> list[nn.Module]:
    """The layers of ``blk`` whose biases BitFit offsets (``TypeError`` if one has none or is not plain)."""
    layers = [blk.ln_1, blk.out_proj, blk.ln_2, *blk.mlp.children()]
    weighted = [m for m in layers if any(True for _ in m.parameters(recurse=False))]
    if blk.in_proj_bias is None or any(not isinstance(m, (nn.Linear, nn.LayerNorm)) or m.bias is None
                                       for m in weighted):
        raise TypeError("BitFit needs biased LayerNorm/Linear layers and a parameter-free MLP activation in every "
                        "vision block")
    return weighted


def _bias(layer: nn.Module) -> Tensor:
    """The frozen bias of a layer checked by :func:`_biased`."""
    return cast(Tensor, layer.bias)


def _layer_norm(module: nn.Module, x: Tensor, offsets: nn.ParameterDict, key: str) -> Tensor:
    ln = cast(nn.LayerNorm, module)
    bias = _bias(ln) + offsets[key] if key in offsets else _bias(ln)
    return F.layer_norm(x, ln.normalized_shape, ln.weight, bias, ln.eps)


def block_forward(blk: nn.Module | Block, x: Tensor, offsets: nn.ParameterDict, query: int | None = None) -> Tensor:
    """One open_clip ``ResidualAttentionBlock`` on ``x`` ``[B, L, width]`` with its biases offset.

    Equal to ``blk(x)`` when the offsets are zero (tested). With ``query`` only that token's output
    is computed (``[B, 1, width]``; keys and values still come from every token), exact for a last
    block whose other outputs are never read.
    """
    blk = blk if isinstance(blk, Block) else block_view(blk)
    h = _layer_norm(blk.ln_1, x, offsets, "ln_1")
    weight, bias = blk.in_proj_weight, cast(Tensor, blk.in_proj_bias) + offsets["qkv"]
    b, _, width = x.shape
    heads = blk.heads
    if query is None:
        q, k, v = F.linear(h, weight, bias).chunk(3, dim=-1)
    else:
        x = x[:, query:query + 1]
        q = F.linear(h[:, query:query + 1], weight[:width], bias[:width])
        k, v = F.linear(h, weight[width:], bias[width:]).chunk(2, dim=-1)
    q, k, v = (t.reshape(b, t.shape[1], heads, width // heads).transpose(1, 2) for t in (q, k, v))
    scores = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1)
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, q.shape[2], width)
    x = x + blk.ls_1(F.linear(out, cast(Tensor, blk.out_proj.weight), _bias(blk.out_proj) + offsets["out"]))
    h = _layer_norm(blk.ln_2, x, offsets, "ln_2")
    for name, layer in blk.mlp.named_children():
        h = F.linear(h, layer.weight, _bias(layer) + offsets[name]) if isinstance(layer, nn.Linear) else layer(h)
    return cast(Tensor, x + blk.ls_2(h))


def _offsets(blk: Block, include_norms: bool) -> nn.ParameterDict:
    """Zero offsets for the biases of one block, keyed ``qkv``, ``out``, the MLP's layer names (and ``ln_*``)."""
    shapes = {"qkv": cast(Tensor, blk.in_proj_bias).shape, "out": _bias(blk.out_proj).shape}
    shapes.update({name: _bias(m).shape for name, m in blk.mlp.named_children() if isinstance(m, nn.Linear)})
    if include_norms:
        shapes.update(ln_1=_bias(blk.ln_1).shape, ln_2=_bias(blk.ln_2).shape)
    return nn.ParameterDict({k: nn.Parameter(torch.zeros(s)) for k, s in shapes.items()})


class BitFitCLIP(PEFTModule):
    """The frozen open_clip vision tower with a trainable offset on every block bias (zero at init).

    Parameters
    ----------
    model : nn.Module
        An open_clip ``CLIP`` whose vision tower is a ``VisionTransformer`` (never modified or copied).
    text_features : Tensor
        ``[C, D]`` zero-shot classifier (the class features, frozen).
    logit_scale : float
        The backbone's logit scale.
    include_norms : bool
        Offset the LayerNorm biases too.
    """

    inputs = "tokens"
    text: Tensor

    def __init__(self, model: nn.Module, text_features: Tensor, logit_scale: float,
                 include_norms: bool = True) -> None:
        super().__init__()
        visual = cast(nn.Module, model.visual)
        check_vision(visual)
        blocks = [block_view(b) for b in resblocks(cast(nn.Module, visual.transformer))]
        for blk in blocks:
            _biased(blk)
        visual.requires_grad_(False)
        self._frozen: dict[str, nn.Module] = {"visual": visual}
        self.last_query = 0 if pools_first_token(visual) else None
        self.register_buffer("text", F.normalize(text_features.detach().float().clone(), dim=-1))
        self.offsets = nn.ModuleList(_offsets(blk, include_norms) for blk in blocks)
        self.logit_scale = float(logit_scale)

    def frozen_modules(self) -> list[Any]:
        return list(self._frozen.values())

    def _apply(self, fn: Any, recurse: bool = True) -> BitFitCLIP:
        """``.to(device)`` / casts also reach the frozen tower (shared, so not a registered submodule)."""
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self._frozen["visual"]._apply(fn)  # type: ignore[no-untyped-call]
        return self

    def image_features(self, x: Tensor) -> Tensor:
        """Normalised image features of vision tokens ``x`` ``[B, L, width]`` (no-grad passes in chunks)."""
        if not torch.is_grad_enabled() and x.shape[0] > NO_GRAD_ROWS:
            return torch.cat([self.image_features(x[i:i + NO_GRAD_ROWS]) for i in range(0, x.shape[0], NO_GRAD_ROWS)])
        visual = self._frozen["visual"]
        blocks = resblocks(cast(nn.Module, visual.transformer))
        last = len(blocks) - 1
        for i, (blk, offsets) in enumerate(zip(blocks, self.offsets, strict=True)):
            x = block_forward(blk, x, cast(nn.ParameterDict, offsets), self.last_query if i == last else None)
        return vision_pool(visual, x)

    def class_features(self) -> Tensor:
        return self.text


@register_peft("bitfit", config=BitFitConfig, needs_backbone=True, concurrent_clients=True, inputs="tokens",
               description="BitFit: offsets on every bias of the frozen vision tower (cached vision tokens)")
def build_bitfit(bank: Any, backbone: Any, config: Any) -> BitFitCLIP:
    """A :class:`BitFitCLIP` on the backbone's vision tower, class features = the bank's zero-shot classifier."""
    return BitFitCLIP(backbone.model, torch.as_tensor(bank.text_features).float(), float(bank.logit_scale),
                      include_norms=config.section(BitFitConfig).include_norms)
