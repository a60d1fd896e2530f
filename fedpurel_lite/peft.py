"""Trainable parts on top of the frozen CLIP: shared PEFT modules and the personal residual head.

Every module here maps **cached, L2-normalised image features** ``[B, D]`` to logits ``[B, C]``
and is split into two pieces the methods can combine without knowing which PEFT they train:

- :meth:`PEFTModule.image_features` -- the (possibly adapted) normalised image features ``[B, D]``;
- :meth:`PEFTModule.class_features` -- the normalised class (text) features ``[C, D]``;

so ``forward(x) = logit_scale * image_features(x) @ class_features().T``. The shared tensors a
federation averages are the module's trainable parameters, exchanged by name through
:meth:`PEFTModule.shared_state` / :meth:`PEFTModule.load_shared_state`.

Modules
-------
``TextAnchoredHead``  cosine classifier whose weights start at the zero-shot text features.
``PromptLearner``     CoOp context vectors run through the frozen open_clip text tower.
``FeatureAdapter``    CLIP-Adapter-style residual MLP on the image features (zero-initialised
                      output layer, so it starts at zero-shot), cosine logits against frozen text.
``ResidualHead``      the personal branch: a zero-initialised linear map features -> logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .prompt_tower import SharedPrefixTower, supports

PEFT_KINDS: tuple[str, ...] = ("head", "prompt", "adapter")


class PEFTModule(nn.Module):
    """Base class: cosine logits between adapted image features and class features.

    Attributes
    ----------
    logit_scale : float
        The backbone's (exponentiated) logit scale, fixed.
    """

    logit_scale: float

    def image_features(self, x: Tensor) -> Tensor:
        """Normalised image features used by the classifier (identity by default)."""
        return x

    def class_features(self) -> Tensor:
        """Normalised class features ``[C, D]``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.logit_scale * self.image_features(x) @ self.class_features().t()

    def forward_with_pullback(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], list[Tensor]]]:
        """Logits and a function pulling stacked logit cotangents back to the trainable tensors.

        ``pullback(G)`` takes ``G`` of shape ``[k, B, C]`` (``k`` cotangents, e.g. the task and the
        alignment gradient) and returns one ``[k, *p.shape]`` tensor per trainable parameter (order
        of :meth:`trainable_parameters`): ``sum_bc G[i, b, c] d logits[b, c] / d p``. The default
        uses one batched autograd pass; subclasses may give a closed form.
        """
        logits = self(x)
        params = self.trainable_parameters()

        def pullback(cotangents: Tensor) -> list[Tensor]:
            return list(torch.autograd.grad(logits, params, cotangents, is_grads_batched=True))

        return logits.detach(), pullback

    def shared_names(self) -> list[str]:
        """Names of the trainable (shared) tensors, in a fixed order."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters, in the order of :meth:`shared_names`."""
        return [p for _, p in self.named_parameters() if p.requires_grad]

    def shared_state(self) -> dict[str, Tensor]:
        """Detached copies of the trainable tensors, keyed by name."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_shared_state(self, state: dict[str, Tensor]) -> None:
        """Copy tensors produced by :meth:`shared_state` (same names and shapes) into the module."""
        params = dict(self.named_parameters())
        names = self.shared_names()
        if set(state) != set(names):
            raise KeyError(f"shared state has keys {sorted(state)}, expected {sorted(names)}")
        with torch.no_grad():
            for n in names:
                params[n].copy_(state[n])

    def frozen_modules(self) -> list[Any]:
        """Frozen backbone pieces shared by reference (never copied by :meth:`clone`)."""
        return []

    def clone(self) -> PEFTModule:
        """A deep copy whose trainable tensors are independent; frozen backbone pieces are shared."""
        memo = {id(m): m for m in self.frozen_modules()}
        return copy.deepcopy(self, memo)

    @torch.no_grad()
    def predict_logits(self, x: Tensor, batch_size: int = 4096) -> Tensor:
        """Logits of many samples in batches, class features computed once (no grad)."""
        cls = self.class_features()
        out = [self.logit_scale * self.image_features(x[i:i + batch_size]) @ cls.t()
               for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out) if out else x.new_zeros(0, cls.shape[0])


class TextAnchoredHead(PEFTModule):
    """Cosine classifier initialised at the zero-shot text features.

    Parameters
    ----------
    text_features : Tensor
        ``[C, D]`` zero-shot classifier (normalised or not; rows are normalised in forward).
    logit_scale : float
        The backbone's logit scale (fixed).
    """

    def __init__(self, text_features: Tensor, logit_scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(F.normalize(text_features.detach().float().clone(), dim=-1))
        self.logit_scale = float(logit_scale)

    def class_features(self) -> Tensor:
        return F.normalize(self.weight, dim=-1)

    def forward_with_pullback(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], list[Tensor]]]:
        """Closed form for the cosine head (no autograd graph; about 10x faster than autograd here)."""
        with torch.no_grad():
            w = self.weight
            norm = torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min(1e-12)
            wn = w / norm
            logits = self.logit_scale * x @ wn.t()

        def pullback(cotangents: Tensor) -> list[Tensor]:
            with torch.no_grad():
                d_wn = self.logit_scale * torch.matmul(cotangents.transpose(1, 2), x)  # [k, C, D]
                d_w = (d_wn - wn * (d_wn * wn).sum(-1, keepdim=True)) / norm
            return [d_w]

        return logits, pullback


class FeatureAdapter(PEFTModule):
    """CLIP-Adapter-style residual MLP on the image features, cosine logits against frozen text.

    ``x' = normalise((1 - r) * x + r * up(relu(down(x))))`` with ``up`` zero-initialised, so the
    adapter starts exactly at zero-shot (a final ReLU as in CLIP-Adapter is dropped: with a zero
    output layer it would block every gradient).

    Parameters
    ----------
    text_features : Tensor
        ``[C, D]`` frozen zero-shot classifier.
    logit_scale : float
        The backbone's logit scale.
    reduction : int
        Bottleneck ``D // reduction``.
    ratio : float
        Residual ratio ``r`` (CLIP-Adapter uses 0.2).
    """

    def __init__(self, text_features: Tensor, logit_scale: float, reduction: int = 4, ratio: float = 0.2) -> None:
        super().__init__()
        dim = text_features.shape[1]
        hidden = max(dim // reduction, 1)
        self.register_buffer("text", F.normalize(text_features.detach().float().clone(), dim=-1))
        self.down = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(hidden, dim, bias=False)
        nn.init.zeros_(self.up.weight)
        self.ratio = float(ratio)
        self.logit_scale = float(logit_scale)

    def image_features(self, x: Tensor) -> Tensor:
        return F.normalize((1.0 - self.ratio) * x + self.ratio * self.up(F.relu(self.down(x))), dim=-1)

    def class_features(self) -> Tensor:
        return self.text


def _text_tower(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the text attributes (``CLIP`` itself or ``CustomTextCLIP.text``)."""
    tower = model.text if hasattr(model, "text") and hasattr(model.text, "token_embedding") else model
    for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
        if not hasattr(tower, attr):
            raise TypeError(f"{type(model).__name__} has no text attribute {attr!r}; PromptLearner needs an "
                            "open_clip CLIP/CustomTextCLIP with a TextTransformer tower")
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
    if pool not in ("argmax", "eos"):
        raise TypeError(f"PromptLearner supports argmax/eos pooling, the model pools with {pool!r}")
    if getattr(tower, "cls_emb", None) is not None:
        raise TypeError("PromptLearner does not support text towers with a CLS embedding (CoCa)")
    return tower, pool


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
        Encode with :class:`~fedpurel_lite.prompt_tower.SharedPrefixTower` (the shared prefix once,
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
        tower, pool = _text_tower(model)
        self.logit_scale = float(logit_scale)
        self.pool = pool
        self.eos_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        # frozen text modules (shared references, not trained, excluded from the shared state)
        self._frozen = {"transformer": tower.transformer, "ln_final": tower.ln_final}
        for module in self._frozen.values():
            module.requires_grad_(False)
        proj = getattr(tower, "text_projection", None)
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
        attn_mask = getattr(tower, "attn_mask", None)
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


class ResidualHead(nn.Module):
    """Personal branch: zero-initialised linear map image features -> logit residual ``l_L``.

    ``l_L = scale * x @ W.T`` (``+ scale * b`` with ``bias=True``), zero at init, so
    ``l_G + l_L = l_G`` and the personal model starts equal to the global one. No bias by default:
    a bias learns the client's (long-tailed) label prior directly and pushes the tail down.

    Parameters
    ----------
    dim, num_classes : int
        Feature dimension ``D`` and number of classes ``C``.
    scale : float
        Fixed output scale (the backbone's logit scale keeps weights in cosine-classifier units).
    bias : bool
        Learn a per-class bias too.
    """

    def __init__(self, dim: int, num_classes: int, scale: float = 1.0, bias: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes, bias=bias)
        nn.init.zeros_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.linear(x)


def build_peft(kind: str, bank: Any, backbone: Any = None, config: Any = None) -> PEFTModule:
    """Build the shared trainable part named ``kind`` for a feature bank.

    Parameters
    ----------
    kind : {"head", "prompt", "adapter"}
        Which PEFT.
    bank : FeatureBank-like
        Needs ``text_features`` ``[C, D]``, ``logit_scale`` and (prompt) ``class_names``.
    backbone : Backbone-like, optional
        Needs ``model`` and ``tokenizer``; required for ``"prompt"``.
    config : RunConfig, optional
        Uses ``n_ctx``, ``seed`` and ``extra`` keys ``ctx_init`` (str), ``class_specific`` (bool),
        ``adapter_reduction`` (int), ``adapter_ratio`` (float).

    Returns
    -------
    PEFTModule
    """
    extra = dict(getattr(config, "extra", {}) or {})
    text = torch.as_tensor(bank.text_features).float()
    scale = float(bank.logit_scale)
    if kind == "head":
        return TextAnchoredHead(text, scale)
    if kind == "adapter":
        return FeatureAdapter(text, scale, int(extra.get("adapter_reduction", 4)),
                              float(extra.get("adapter_ratio", 0.2)))
    if kind == "prompt":
        if backbone is None:
            raise ValueError("peft='prompt' needs the backbone (open_clip model + tokenizer)")
        gen = torch.Generator().manual_seed(int(getattr(config, "seed", 0)) + 7919)
        return PromptLearner(backbone.model, backbone.tokenizer, list(bank.class_names), scale,
                             n_ctx=int(getattr(config, "n_ctx", 4)), ctx_init=extra.get("ctx_init") or None,
                             class_specific=bool(extra.get("class_specific", False)), generator=gen)
    raise ValueError(f"unknown peft kind {kind!r}; valid: {list(PEFT_KINDS)}")
