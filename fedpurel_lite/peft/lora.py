"""LoRA: low-rank updates of the attention q/k/v projections of the frozen CLIP towers.

With LoRA in the vision tower the image features change with the trainable tensors, so cached
final features cannot be used: the PEFT reads the vision tower's cached **input tokens** (patch
embedding, class token, positions and ``ln_pre``, all frozen, see
:mod:`fedpurel_lite.data.token_bank`) and runs the blocks with their updates, ``ln_post``, the
projection, and cosine logits against the class features. With LoRA in the text tower only, it
reads cached image features like the other PEFTs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.openclip_adapter import pools_first_token, resblocks, text_tower, tower_width
from ..engine.lora_tower import LoRAFactors, check_blocks, check_vision, run_blocks, vision_pool
from .base import PEFTCost, PEFTModule, knob, register_peft

#: images per pass of the LoRA vision tower without grad (evaluation, the frozen global model)
NO_GRAD_ROWS = 256


class LoRACLIP(PEFTModule):
    """CLIP with LoRA factors on the q/k/v projections of every block of the chosen towers.

    ``W_t + scaling * B_t @ A_t`` for ``t`` in q, k, v, ``scaling = alpha / sqrt(rank)``, ``B = 0``
    at init, so the model starts at zero-shot CLIP. Only the factors train (and are averaged);
    the backbone is frozen, shared by reference and never copied. No dropout on the LoRA branch:
    every random draw of a run comes from its seeded generators.

    Parameters
    ----------
    model : nn.Module
        An open_clip ``CLIP`` (or ``CustomTextCLIP``).
    text_features : Tensor
        ``[C, D]`` zero-shot classifier (the class features when the text tower has no LoRA).
    logit_scale : float
        The backbone's logit scale.
    towers : {"vision", "text", "both"}
        Where the factors go.
    rank : int
        LoRA rank ``r``.
    alpha : float
        Scale numerator (``scaling = alpha / sqrt(rank)``).
    tokenizer : callable, optional
        Needed with LoRA in the text tower.
    class_names : list of str, optional
        Needed with LoRA in the text tower.
    templates : list of str, optional
        Text templates (``{}`` = class name) averaged into the class features, as the zero-shot
        classifier does (default ``"a photo of a {}."``).
    generator : torch.Generator, optional
        Source of the ``A`` inits.
    """

    def __init__(self, model: nn.Module, text_features: Tensor, logit_scale: float, towers: str = "vision",
                 rank: int = 8, alpha: float = 16.0, tokenizer: Any = None, class_names: list[str] | None = None,
                 templates: list[str] | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if towers not in ("vision", "text", "both"):
            raise ValueError(f"towers={towers!r}: allowed vision, text or both")
        self.logit_scale = float(logit_scale)
        self.scaling = float(alpha) / math.sqrt(rank)
        self.towers = towers
        self._frozen: dict[str, Any] = {}
        self.vision = self.text_lora = None
        if towers in ("vision", "both"):
            visual = model.visual
            check_vision(visual)
            visual.requires_grad_(False)
            self._frozen["visual"] = visual
            self.inputs = "tokens"
            self.last_query = 0 if pools_first_token(visual) else None
            width = tower_width(visual.transformer)
            self.vision = nn.ModuleList(LoRAFactors(width, rank, generator) for _ in resblocks(visual.transformer))
        if towers in ("text", "both"):
            self._init_text(model, tokenizer, class_names, templates or ["a photo of a {}."], rank, generator)
        else:
            self.register_buffer("text", F.normalize(text_features.detach().float().clone(), dim=-1))

    def _init_text(self, model: nn.Module, tokenizer: Any, class_names: list[str] | None, templates: list[str],
                   rank: int, generator: torch.Generator | None) -> None:
        if tokenizer is None or not class_names:
            raise ValueError("LoRA in the text tower needs the tokenizer and the class names")
        tower = text_tower(model, "LoRA")
        pool = tower.pool
        check_blocks(tower.transformer)
        proj = tower.text_projection
        for module in (tower.transformer, tower.ln_final):
            module.requires_grad_(False)
        if isinstance(proj, (nn.Parameter, nn.Module)):
            proj.requires_grad_(False)
        self._frozen.update(text_transformer=tower.transformer, ln_final=tower.ln_final, text_projection=proj)
        prompts = [t.format(n) for n in class_names for t in templates]
        tokens = tokenizer(prompts)
        eot = tokens.argmax(dim=-1) if pool == "argmax" else (tokens == tower.eos_id).int().argmax(dim=-1)
        attn_mask = tower.attn_mask
        # with a causal mask nothing after the last EOT reaches a pooled token: drop that padding (exact)
        length = int(eot.max()) + 1 if attn_mask is not None else tokens.shape[1]
        with torch.no_grad():
            emb = tower.token_embedding(tokens[:, :length]).float() + tower.positional_embedding[:length].float()
        self.register_buffer("text_embeddings", emb, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.register_buffer("attn_mask", None if attn_mask is None else attn_mask[:length, :length].clone(),
                             persistent=False)
        self.n_templates = len(templates)
        self.text_lora = nn.ModuleList(LoRAFactors(tower_width(tower.transformer), rank, generator)
                                       for _ in resblocks(tower.transformer))

    def frozen_modules(self) -> list[Any]:
        return [m for m in self._frozen.values() if m is not None]

    def _apply(self, fn: Any, recurse: bool = True) -> LoRACLIP:
        """``.to(device)`` / casts also reach the frozen towers (shared, so not registered submodules)."""
        super()._apply(fn, recurse)
        for m in self._frozen.values():
            if isinstance(m, nn.Module):
                m._apply(fn)
            elif m is not None:
                m.data = fn(m.data)
        return self

    def image_features(self, x: Tensor) -> Tensor:
        """Normalised image features: ``x`` itself (cached features), or the LoRA vision tower on tokens ``x``.

        Without grad the tower runs on at most :data:`NO_GRAD_ROWS` images at a time: every image
        is computed on its own rows, so the features are the same, and the smaller activations stay
        in the CPU caches (256 rows: a third less time than 1024).
        """
        if self.vision is None:
            return x
        visual = self._frozen["visual"]
        if not torch.is_grad_enabled() and x.shape[0] > NO_GRAD_ROWS:
            return torch.cat([self.image_features(x[i:i + NO_GRAD_ROWS]) for i in range(0, x.shape[0], NO_GRAD_ROWS)])
        return vision_pool(visual, run_blocks(visual.transformer, x, self.vision, self.scaling,
                                              last_query=self.last_query))

    def class_features(self) -> Tensor:
        if self.text_lora is None:
            return self.text
        x = run_blocks(self._frozen["text_transformer"], self.text_embeddings, self.text_lora, self.scaling,
                       self.attn_mask)
        x = self._frozen["ln_final"](x[torch.arange(x.shape[0], device=x.device), self.eot])
        proj = self._frozen["text_projection"]
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Module) else x @ proj
        x = F.normalize(x, dim=-1).reshape(-1, self.n_templates, x.shape[-1]).mean(dim=1)
        return F.normalize(x, dim=-1)


@dataclass(frozen=True)
class LoRAConfig:
    """``[peft.lora]``: the LoRA factors' knobs."""

    rank: int = knob(8, "rank r of the q/k/v updates", range="[1, 1024]")
    alpha: float = knob(16.0, "the update is scaled by alpha / sqrt(rank)", range="(0, 1024]")
    towers: str = knob("vision", "where the factors go: the vision tower, the text tower, or both",
                       choices=("vision", "text", "both"))


def lora_inputs(config: Any) -> str:
    """Tokens when the vision tower carries LoRA factors, cached features otherwise."""
    return "features" if config.section(LoRAConfig).towers == "text" else "tokens"


@register_peft("lora", config=LoRAConfig, needs_backbone=True, concurrent_clients=True, inputs=lora_inputs,
               suspect_keys=("peft.lora.alpha",), cost=PEFTCost(1.48, 5.3, lambda section, dims, classes: (
                   3 * 2 * int(section.rank) * dims["v_width"] * dims["v_layers"] * (2 if section.towers == "both"
                                                                                    else 1))),
               description="LoRA on the attention q/k/v of the frozen CLIP (vision tower by default)")
def build_lora(bank: Any, backbone: Any, config: Any) -> LoRACLIP:
    """A :class:`LoRACLIP` (``peft.lora.rank``, ``alpha``, ``towers``; seeded by ``run.seed``).

    With LoRA in the text tower the class features average the templates the bank's zero-shot
    classifier was built from (so the model starts at its zero-shot logits).
    """
    gen = torch.Generator().manual_seed(config.run.seed + 104729)
    templates = (getattr(bank, "manifest", None) or {}).get("inputs", {}).get("templates")
    opts = config.section(LoRAConfig)
    return LoRACLIP(backbone.model, torch.as_tensor(bank.text_features).float(), float(bank.logit_scale),
                    towers=opts.towers, rank=opts.rank, alpha=opts.alpha, tokenizer=backbone.tokenizer,
                    class_names=list(bank.class_names), templates=templates, generator=gen)
