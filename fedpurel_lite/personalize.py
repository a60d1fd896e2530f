"""Stage 2: personal models -- FedPuReL's residual learning and the baselines it is compared with.

Every personalization kind is a set of pure functions of tensors, a config and a generator, so
the simulator and a Flower ClientApp share them. A client's personal state is a plain
``{name: tensor}`` dict; :func:`start_state` says what a client trains from in a round,
:func:`new_personal_module` builds a working module to load it into.

Kinds
-----
``residual``     FedPuReL: zero-initialised :class:`~fedpurel_lite.peft.ResidualHead` ``l_L`` on
                 the image features, loss ``alpha CE(l_L) + (1-alpha) CE(l_G + l_L)`` against the
                 frozen global model, inference ``l_G + l_L``. Persistent across rounds.
``residual-peft`` the reference code's variant: the personal branch is a full PEFT starting at
                 zero-shot (``l_L`` is a complete CLIP logit vector), same loss and inference.
``local-ft``     parameter-level: copy the new global PEFT, fine-tune it with CE, predict with it
                 (restarted from the global model at every participation).
``fedrep``       FedRep/FedPer-style: a persistent personal cosine classifier (initialised from the
                 global class features at first participation) on the global model's image features.
``interp``       parameter-level fusion: ``phi = beta phi_G + (1-beta) phi_k``; the persistent local
                 ``phi_k`` (initialised from the global) is trained through the mixed model.
``folio``        PromptFolio-style feature-level fusion: class (text) and image features
                 ``(1-theta) global + theta local``, cosine logits; the local PEFT is trained through
                 the mix with the global part frozen.
``local-only``   floor: a PEFT trained by the client alone from the zero-shot initial state.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .peft import PEFTModule, ResidualHead, TextAnchoredHead
from .purify import batches, make_optimizer

PERSONAL_KINDS: tuple[str, ...] = ("residual", "residual-peft", "local-ft", "fedrep", "interp", "folio",
                                   "local-only")


def _check_kind(kind: str) -> None:
    if kind not in PERSONAL_KINDS:
        raise ValueError(f"unknown personalization {kind!r}; valid: {list(PERSONAL_KINDS)}")


def new_personal_module(kind: str, global_peft: PEFTModule, config: Any) -> nn.Module:
    """A working personal module of ``kind`` (its tensors are overwritten by :func:`load_state`).

    Parameters
    ----------
    kind : str
        One of :data:`PERSONAL_KINDS`.
    global_peft : PEFTModule
        The shared PEFT (for shapes, the logit scale and the frozen backbone pieces).
    config : RunConfig
        ``extra["residual_scale"]`` (default: the backbone's logit scale) scales the residual head,
        ``extra["residual_bias"]`` (default False) adds a per-class bias to it.
    """
    _check_kind(kind)
    if kind == "residual":
        cls = global_peft.class_features().detach()
        extra = dict(getattr(config, "extra", {}) or {})
        scale = float(extra.get("residual_scale", global_peft.logit_scale))
        return ResidualHead(cls.shape[1], cls.shape[0], scale, bool(extra.get("residual_bias", False)))
    if kind == "fedrep":
        return TextAnchoredHead(global_peft.class_features().detach(), global_peft.logit_scale)
    return global_peft.clone()


def module_state(module: nn.Module) -> dict[str, Tensor]:
    """Detached copies of a personal module's trainable tensors."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def load_state(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy a personal state into a working module (names must match its trainable tensors)."""
    params = dict(module.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise KeyError(f"personal state has unknown tensors {missing}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def start_state(
    kind: str,
    previous: dict[str, Tensor] | None,
    global_peft: PEFTModule,
    initial_state: dict[str, Tensor],
    config: Any,
) -> dict[str, Tensor]:
    """The personal state a client trains from (or is evaluated with) in the current round.

    Parameters
    ----------
    kind : str
        Personalization kind.
    previous : dict, optional
        The client's stored state (``None`` before its first participation).
    global_peft : PEFTModule
        The current (frozen) global model.
    initial_state : dict
        The PEFT's initial (zero-shot) shared state, for ``local-only`` and ``residual-peft``.
    config : RunConfig
        Passed to :func:`new_personal_module`.
    """
    _check_kind(kind)
    if kind == "local-ft":
        return global_peft.shared_state()
    if previous is not None:
        return {n: t.clone() for n, t in previous.items()}
    if kind in ("local-only", "residual-peft"):
        return {n: t.clone() for n, t in initial_state.items()}
    if kind in ("interp", "folio"):
        return global_peft.shared_state()
    return module_state(new_personal_module(kind, global_peft, config))


def personal_logits(
    kind: str,
    personal: nn.Module,
    global_peft: PEFTModule,
    features: Tensor,
    global_logits: Tensor | None = None,
    config: Any = None,
) -> Tensor:
    """Logits of the personal model of ``kind`` (differentiable w.r.t. ``personal`` only).

    ``global_logits`` (the frozen global model's logits of ``features``) is used by the residual
    kinds and computed when omitted.
    """
    _check_kind(kind)
    if kind in ("residual", "residual-peft"):
        if global_logits is None:
            global_logits = global_peft.predict_logits(features)
        return global_logits + personal(features)
    if kind in ("local-ft", "local-only"):
        return personal(features)
    if kind == "fedrep":
        with torch.no_grad():
            img = global_peft.image_features(features)
        return personal(img)
    if kind == "interp":
        beta = float(getattr(config, "interp_beta", 0.5))
        g_state = global_peft.shared_state()
        mixed = {n: beta * g_state[n] + (1.0 - beta) * p for n, p in personal.named_parameters()
                 if p.requires_grad}
        return functional_call(personal, mixed, (features,), strict=False)
    # folio
    theta = float(getattr(config, "folio_theta", 0.2))
    with torch.no_grad():
        g_cls = global_peft.class_features()
        g_img = global_peft.image_features(features)
    cls = F.normalize((1.0 - theta) * g_cls + theta * personal.class_features(), dim=-1)
    img = F.normalize((1.0 - theta) * g_img + theta * personal.image_features(features), dim=-1)
    return personal.logit_scale * img @ cls.t()


def personal_loss(kind: str, logits: Tensor, labels: Tensor, config: Any,
                  local_logits: Tensor | None = None) -> Tensor:
    """Training loss of a personal model.

    Residual kinds: ``alpha CE(l_L, y) + (1 - alpha) CE(l_G + l_L, y)`` with ``logits = l_G + l_L``
    and ``local_logits = l_L``, ``alpha = config.personal_alpha``. Others: ``CE(logits, y)``.
    """
    if kind in ("residual", "residual-peft"):
        alpha = float(config.personal_alpha)
        return alpha * F.cross_entropy(local_logits, labels) + (1.0 - alpha) * F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels)


def train_personal(
    kind: str,
    personal: nn.Module,
    global_peft: PEFTModule,
    features: Tensor,
    labels: Tensor,
    config: Any,
    generator: torch.Generator,
    global_logits: Tensor | None = None,
) -> dict[str, float]:
    """Stage-2 training of one client's personal module, in place, with the global model frozen.

    A fresh SGD per client-round (``personal_lr``, momentum ``extra["personal_momentum"]``
    (default 0, as the reference), no weight decay), ``personal_epochs`` passes over the client's
    data in ``batch_size`` batches.

    Returns
    -------
    dict
        ``steps`` and the mean ``loss``.
    """
    _check_kind(kind)
    extra = dict(getattr(config, "extra", {}) or {})
    params = [p for p in personal.parameters() if p.requires_grad]
    opt = make_optimizer(params, config.personal_lr, float(extra.get("personal_momentum", 0.0)), 0.0)
    residual = kind in ("residual", "residual-peft")
    if residual and global_logits is None:
        global_logits = global_peft.predict_logits(features)
    steps, total = 0, 0.0
    personal.train()
    closed = kind == "residual" and isinstance(personal, ResidualHead)
    for _ in range(int(config.personal_epochs)):
        for idx in batches(features.shape[0], int(config.batch_size), generator):
            x, y = features[idx], labels[idx]
            if closed:
                loss, grads = _residual_step(personal, global_logits[idx], x, y, float(config.personal_alpha))
            elif residual:
                local = personal(x)
                loss = personal_loss(kind, global_logits[idx] + local, y, config, local)
                grads = list(torch.autograd.grad(loss, params))
            else:
                loss = personal_loss(kind, personal_logits(kind, personal, global_peft, x, None, config), y, config)
                grads = list(torch.autograd.grad(loss, params))
            opt.step(grads)
            steps += 1
            total += float(loss.detach())
    return {"steps": steps, "loss": total / max(steps, 1)}


@torch.no_grad()
def _residual_step(head: ResidualHead, global_logits: Tensor, x: Tensor, y: Tensor,
                   alpha: float) -> tuple[Tensor, list[Tensor]]:
    """Residual loss and its gradients for a :class:`ResidualHead` in closed form (no autograd).

    ``dL/dl_L = (alpha (softmax(l_L) - Y) + (1 - alpha) (softmax(l_G + l_L) - Y)) / B``, then
    ``dW = scale * G^T x`` (and ``db = scale * sum_b G`` with a bias). Equal to autograd (tested).
    """
    b = x.shape[0]
    rows = torch.arange(b, device=x.device)
    local = head(x)
    lp_l = F.log_softmax(local, dim=-1)
    lp_f = F.log_softmax(global_logits + local, dim=-1)
    loss = -(alpha * lp_l[rows, y] + (1.0 - alpha) * lp_f[rows, y]).mean()
    g = alpha * lp_l.exp() + (1.0 - alpha) * lp_f.exp()
    g[rows, y] -= 1.0
    g *= head.scale / b
    grads = [g.t() @ x]
    if head.linear.bias is not None:
        grads.append(g.sum(dim=0))
    return loss, grads


@torch.no_grad()
def predict_personal(
    kind: str,
    personal: nn.Module,
    global_peft: PEFTModule,
    features: Tensor,
    global_logits: Tensor | None = None,
    config: Any = None,
    batch_size: int = 4096,
) -> Tensor:
    """Batched no-grad logits of a personal model (see :func:`personal_logits`)."""
    if kind in ("local-ft", "local-only") and isinstance(personal, PEFTModule):
        return personal.predict_logits(features, batch_size)
    out = []
    for i in range(0, features.shape[0], batch_size):
        gl = None if global_logits is None else global_logits[i:i + batch_size]
        out.append(personal_logits(kind, personal, global_peft, features[i:i + batch_size], gl, config))
    return torch.cat(out)
