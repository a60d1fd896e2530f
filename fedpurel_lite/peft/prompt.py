"""CoOp prompt learning: learnable context vectors run through the frozen open_clip text tower."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.openclip_adapter import text_tower
from ..engine.prompt_tower import SharedPrefixTower, supports
from .base import PEFTCost, PEFTModule, knob, register_peft


class PromptLearner(PEFTModule):
    """CoOp: learnable context vectors + class-name tokens through the frozen open_clip text tower.

    The prompt of class ``c`` is ``[SOT] ctx_1 .. ctx_n  <class name tokens> . [EOT]`` (class token
    at the end), run batch-first through the text transformer and pooled at the EOT token
    (argmax of the token ids), then projected and normalised.

    Parameters
    ----------
    model : nn.Module
        An open_clip ``CLIP`` (or ``CustomTextCLIP``); its text tower is frozen (``requires_grad``
        off), shared by reference, never copied.
    tokenizer : callable
        The model's tokenizer (list of str -> LongTensor ``[N, L]``).
    class_names : list of str
        Class names in label order.
    logit_scale : float
        The backbone's logit scale.
    n_ctx : int
        Number of context vectors (ignored when ``ctx_init`` is given: its token count is used).
    ctx_init : str, optional
        Initialise the context from these words' token embeddings (e.g. ``"a photo of a"``);
        otherwise ``N(0, 0.02^2)`` (the reference code).
    class_specific : bool
        One context per class (CSC) instead of a generic shared context.
    generator : torch.Generator, optional
        Generator for the random context init.
    shared_prefix : bool
        Encode with :class:`~fedpurel_lite.engine.prompt_tower.SharedPrefixTower` (the shared prefix once,
        each suffix packed, the last block at EOT only) when the tower supports it; ``False``
        forces the plain pass of all ``C`` padded prompts (same features up to float rounding).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        class_names: list[str],
        logit_scale: float,
        n_ctx: int = 4,
        ctx_init: str | None = None,
        class_specific: bool = False,
        generator: torch.Generator | None = None,
        shared_prefix: bool = True,
    ) -> None:
        super().__init__()
        tower = text_tower(model, "PromptLearner")
        pool = tower.pool
        self.logit_scale = float(logit_scale)
        self.pool = pool
        self.eos_id = tower.eos_id
        # frozen text modules (shared references, not trained, excluded from the shared state)
        self._frozen = {"transformer": tower.transformer, "ln_final": tower.ln_final}
        for module in self._frozen.values():
            module.requires_grad_(False)
        proj = tower.text_projection
        self._proj = proj
        if isinstance(proj, nn.Parameter):
            proj.requires_grad_(False)
        elif isinstance(proj, nn.Module):
            proj.requires_grad_(False)
        emb_layer = tower.token_embedding
        width = emb_layer.weight.shape[1]
        names = [n.replace("_", " ") for n in class_names]
        if ctx_init:
            init_ids = tokenizer([ctx_init])[0]
            n_ctx = int((init_ids > 0).sum().item()) - 2  # minus SOT and EOT
            ctx_words = ctx_init
        else:
            ctx_words = " ".join(["X"] * n_ctx)
        tokens = tokenizer([f"{ctx_words} {name}." for name in names])
        if pool == "argmax":
            eot = tokens.argmax(dim=-1)
        else:
            eot = (tokens == self.eos_id).int().argmax(dim=-1)
        attn_mask = tower.attn_mask
        # With a causal mask nothing after the last EOT can reach a pooled position: drop that padding
        # (exact; about 40 % less compute for short class names in a 77- or 16-token context).
        length = int(eot.max()) + 1 if attn_mask is not None else tokens.shape[1]
        tokens = tokens[:, :length]
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        with torch.no_grad():
            emb = emb_layer(tokens).float()
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", emb[:, 1 + n_ctx:].clone(), persistent=False)
        self.register_buffer("pos", tower.positional_embedding.detach().float()[:length].clone(), persistent=False)
        self.register_buffer("attn_mask", None if attn_mask is None else attn_mask[:length, :length].clone(),
                             persistent=False)
        if ctx_init:
            ctx = emb[0, 1:1 + n_ctx].clone()
            if class_specific:
                ctx = ctx.unsqueeze(0).repeat(len(names), 1, 1)
        else:
            shape = (len(names), n_ctx, width) if class_specific else (n_ctx, width)
            ctx = torch.randn(shape, generator=generator) * 0.02
        self.ctx = nn.Parameter(ctx)
        self.n_ctx = n_ctx
        self.class_specific = class_specific
        self.tower = None
        if shared_prefix and supports(tower.transformer, self.attn_mask):
            self.tower = SharedPrefixTower(tower.transformer, tower.ln_final, proj, self.suffix, self.pos, eot,
                                           1 + n_ctx)

    def frozen_modules(self) -> list[Any]:
        return [*self._frozen.values(), self._proj]

    def _apply(self, fn: Any, recurse: bool = True) -> PromptLearner:
        """``.to(device)`` / casts also reach the frozen text tower (shared, so not a registered submodule)."""
        super()._apply(fn, recurse)
        for module in self._frozen.values():
            module._apply(fn)
        if isinstance(self._proj, nn.Module):
            self._proj._apply(fn)
        elif self._proj is not None:
            self._proj.data = fn(self._proj.data)
        return self

    def prompt_embeddings(self) -> Tensor:
        """Token embeddings of the ``C`` prompts ``[C, L, width]`` (prefix, context, suffix)."""
        num = self.prefix.shape[0]
        ctx = self.ctx if self.class_specific else self.ctx.unsqueeze(0).expand(num, -1, -1)
        return torch.cat([self.prefix, ctx, self.suffix], dim=1)

    def class_features(self) -> Tensor:
        if self.tower is not None:
            ctx = self.ctx if self.class_specific else self.ctx.unsqueeze(0)
            sot = self.prefix if self.class_specific else self.prefix[:1]
            return self.tower(torch.cat([sot, ctx], dim=1))
        x = self.prompt_embeddings() + self.pos
        x = self._frozen["transformer"](x, attn_mask=self.attn_mask)
        x = self._frozen["ln_final"](x)
        x = x[torch.arange(x.shape[0], device=x.device), self.eot]
        if self._proj is not None:
            x = self._proj(x) if isinstance(self._proj, nn.Module) else x @ self._proj
        return F.normalize(x, dim=-1)


@dataclass(frozen=True)
class PromptConfig:
    """``[peft.prompt]``: the CoOp context's knobs."""

    n_ctx: int = knob(4, "context tokens (ignored when ctx_init is given: its token count is used)", range="[1, 64]")
    ctx_init: str = knob("", "initial context words, e.g. 'a photo of a' ('' = random init)")
    class_specific: bool = knob(False, "one context per class (CSC) instead of one shared context")


@register_peft("prompt", config=PromptConfig, needs_backbone=True, concurrent_clients=True,
               cost=PEFTCost(0.56, 1.0, lambda section, dims, classes:
                             int(section.n_ctx) * dims["t_width"] * (classes if section.class_specific else 1)),
               description="CoOp context through the frozen text tower (PromptFL when federated)")
def build_prompt(bank: Any, backbone: Any, config: Any) -> PromptLearner:
    """A :class:`PromptLearner` (``peft.prompt.n_ctx``, ``ctx_init``, ``class_specific``; seeded by ``run.seed``)."""
    gen = torch.Generator().manual_seed(config.run.seed + 7919)
    opts = config.section(PromptConfig)
    return PromptLearner(backbone.model, backbone.tokenizer, list(bank.class_names), float(bank.logit_scale),
                         n_ctx=opts.n_ctx, ctx_init=opts.ctx_init or None, class_specific=opts.class_specific,
                         generator=gen)
