"""Stage 2: personal models -- FedPuReL's residual learning and the baselines it is compared with.

Every personalization kind is a set of pure functions of tensors, a config and a generator, so
the simulator and a Flower ClientApp share them. A client's personal state is a plain
``{name: tensor}`` dict; :func:`start_state` says what a client trains from in a round,
:func:`new_personal_module` builds a working module to load it into.

Kinds
-----
``residual``     FedPuReL: zero-initialised :class:`~fedpurel_lite.peft.ResidualHead` ``l_L`` on
                 the image features (:func:`head_features`), loss ``alpha CE(l_L) + (1-alpha) CE(l_G + l_L)``
                 against the frozen global model, inference ``l_G + l_L``. Persistent across rounds.
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

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .core.residual import ResidualHead
from .finite import check_loss
from .local import batches, make_optimizer
from .peft import PEFTModule, TextAnchoredHead
from .registry import Registry


@dataclass(frozen=True)
class PersonalSpec:
    """A registered personalization kind.

    Attributes
    ----------
    name : str
        Registry key (a method's ``personal``).
    residual : bool
        The personal logits are ``l_G + l_L`` and the loss is the residual loss.
    start : {"global-each-round", "zero-shot", "global", "new"}
        What a client trains from: the new global model at every participation, then its own
        state (``global`` / ``zero-shot`` / a ``new`` module at the first participation).
    description : str
        One line.
    """

    name: str
    residual: bool
    start: str
    description: str


#: every registered personalization kind
PERSONALIZATIONS: Registry[PersonalSpec] = Registry("personalization kind", "personalization")
for _spec in (
    PersonalSpec("residual", True, "new", "zero-initialised linear residual head on the image features"),
    PersonalSpec("residual-peft", True, "zero-shot", "a private PEFT from zero-shot whose logits add to the global's"),
    PersonalSpec("local-ft", False, "global-each-round", "fine-tune a copy of the new global PEFT"),
    PersonalSpec("fedrep", False, "new", "a personal cosine classifier on the global image features"),
    PersonalSpec("interp", False, "global", "global/local parameter interpolation"),
    PersonalSpec("folio", False, "global", "global/local feature mix (PromptFolio-style)"),
    PersonalSpec("local-only", False, "zero-shot", "the client alone, from zero-shot"),
):
    PERSONALIZATIONS.add(_spec.name, _spec)
PERSONAL_KINDS: tuple[str, ...] = PERSONALIZATIONS.names()


def new_personal_module(kind: str, global_peft: PEFTModule, config: Any) -> nn.Module:
    """A working personal module of ``kind`` (its tensors are overwritten by :func:`load_state`).

    Parameters
    ----------
    kind : str
        One of :data:`PERSONAL_KINDS`.
    global_peft : PEFTModule
        The shared PEFT (for shapes, the logit scale and the frozen backbone pieces).
    config : RunConfig
        ``personalization.residual_scale`` (0: the backbone's logit scale) scales the residual head,
        ``personalization.residual_bias`` adds a per-class bias to it.
    """
    PERSONALIZATIONS.get(kind)
    if kind == "residual":
        cls = global_peft.class_features().detach()
        scale = config.personalization.residual_scale or global_peft.logit_scale
        return ResidualHead(cls.shape[1], cls.shape[0], scale, config.personalization.residual_bias)
    if kind == "fedrep":
        return TextAnchoredHead(global_peft.class_features().detach(), global_peft.logit_scale)
    return global_peft.clone()


def head_features(global_peft: PEFTModule, x: Tensor) -> Tensor:
    """The image features a personal head reads for inputs ``x`` (no grad).

    ``x`` itself when the PEFT reads cached features (unchanged from before any PEFT), the frozen
    global model's image features when it reads vision tokens (a head cannot read tokens).
    """
    if global_peft.inputs == "features":
        return x
    with torch.no_grad():
        return global_peft.image_features(x)


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
    start = PERSONALIZATIONS.get(kind).start
    if start == "global-each-round":
        return global_peft.shared_state()
    if previous is not None:
        return {n: t.clone() for n, t in previous.items()}
    if start == "zero-shot":
        return {n: t.clone() for n, t in initial_state.items()}
    if start == "global":
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
    if PERSONALIZATIONS.get(kind).residual:
        if global_logits is None:
            global_logits = global_peft.predict_logits(features)
        branch_input = head_features(global_peft, features) if isinstance(personal, ResidualHead) else features
        return global_logits + personal(branch_input)
    if kind in ("local-ft", "local-only"):
        return personal(features)
    if kind == "fedrep":
        with torch.no_grad():
            img = global_peft.image_features(features)
        return personal(img)
    if kind == "interp":
        beta = config.baselines.interp_beta
        g_state = global_peft.shared_state()
        mixed = {n: beta * g_state[n] + (1.0 - beta) * p for n, p in personal.named_parameters()
                 if p.requires_grad}
        return functional_call(personal, mixed, (features,), strict=False)
    # folio
    theta = config.baselines.folio_theta
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
    and ``local_logits = l_L``, ``alpha = personalization.personal_alpha``. Others: ``CE(logits, y)``.
    """
    if PERSONALIZATIONS.get(kind).residual:
        alpha = config.personalization.personal_alpha
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

    A fresh SGD per client-round (``personal_lr``, momentum ``personal_momentum`` (default 0, as
    the reference), no weight decay), ``personal_epochs`` passes over the client's data in
    ``stage1.batch_size`` batches. A non-finite loss raises
    :class:`~fedpurel_lite.errors.NonFiniteError` before its step is applied.

    Returns
    -------
    dict
        ``steps`` and the mean ``loss``.
    """
    pc = config.personalization
    params = [p for p in personal.parameters() if p.requires_grad]
    opt = make_optimizer(params, pc.personal_lr, pc.personal_momentum, 0.0)
    residual = PERSONALIZATIONS.get(kind).residual
    if residual and global_logits is None:
        global_logits = global_peft.predict_logits(features)
    steps, total = 0, 0.0
    personal.train()
    closed = kind == "residual" and isinstance(personal, ResidualHead)
    for _ in range(pc.personal_epochs):
        for idx in batches(features.shape[0], config.stage1.batch_size, generator):
            x, y = features[idx], labels[idx]
            if closed:
                loss, grads = _residual_step(personal, global_logits[idx], head_features(global_peft, x), y,
                                             pc.personal_alpha)
            elif residual:
                local = personal(x)
                loss = personal_loss(kind, global_logits[idx] + local, y, config, local)
                grads = list(torch.autograd.grad(loss, params))
            else:
                loss = personal_loss(kind, personal_logits(kind, personal, global_peft, x, None, config), y, config)
                grads = list(torch.autograd.grad(loss, params))
            value = float(loss.detach())
            check_loss(value, steps + 1)
            opt.step(grads)
            steps += 1
            total += value
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


def branch_only(kind: str, global_peft: PEFTModule) -> bool:
    """The personal branch's logits read only the inputs, not the global model (so they can be kept).

    True for ``residual-peft`` (``l_L``), ``local-ft`` and ``local-only`` (the personal logits), and
    for ``residual`` when its head reads the inputs themselves (cached features).
    """
    if kind in ("residual-peft", "local-ft", "local-only"):
        return True
    return kind == "residual" and global_peft.inputs == "features"


@torch.no_grad()
def branch_logits(kind: str, personal: nn.Module, global_peft: PEFTModule, features: Tensor,
                  batch_size: int = 4096) -> Tensor:
    """The personal branch's own logits for a :func:`branch_only` kind, batched as :func:`predict_personal`.

    Residual kinds give ``l_L`` (add the global logits for the personal model's); the others give
    the personal logits. Bit-identical to the matching part of :func:`predict_personal`.
    """
    if not PERSONALIZATIONS.get(kind).residual:
        return predict_personal(kind, personal, global_peft, features, None, None, batch_size)
    return torch.cat([personal(features[i:i + batch_size]) for i in range(0, features.shape[0], batch_size)])


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
