"""Stage 2: personal models -- FedPuReL's residual learning and the baselines it is compared with.

Every personalization kind is a plugin (:mod:`fedpurel_lite.personal`): one class implementing
:class:`~fedpurel_lite.personal.Personalization`, found by name in :data:`PERSONALIZATIONS`. The
functions here are the engine's side, shared by the simulator and a Flower ClientApp: they take a
kind's name, find its plugin and run it -- the training loop (:func:`train_personal`), batched
prediction and the state plumbing. A client's personal state is a plain ``{name: tensor}`` dict;
:func:`start_state` says what a client trains from in a round, :func:`new_personal_module` builds
a working module to load it into. The residual branch's head is
:class:`~fedpurel_lite.core.ResidualHead`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..core.residual import ResidualHead
from ..peft import PEFTModule
from ..personal import PERSONALIZATIONS, Personalization, State, head_features, module_state
from .finite import check_loss
from .local import batches, make_optimizer

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["PERSONALIZATIONS", "PERSONAL_KINDS", "Personalization", "ResidualHead", "branch_logits", "branch_only",
           "head_features", "load_state", "module_state", "new_personal_module", "personal_logits", "personal_loss",
           "predict_personal", "start_state", "train_personal"]

#: every registered personalization kind's name
PERSONAL_KINDS: tuple[str, ...] = PERSONALIZATIONS.names()


def kind_of(kind: str) -> Personalization:
    """The plugin of the personalization kind ``kind`` (a :class:`~fedpurel_lite.errors.ConfigError` if unknown)."""
    return PERSONALIZATIONS.get(kind)


def new_personal_module(kind: str, global_peft: PEFTModule, config: RunConfig) -> nn.Module:
    """A working personal module of ``kind`` (its tensors are overwritten by :func:`load_state`).

    Parameters
    ----------
    kind : str
        One of :data:`PERSONAL_KINDS`.
    global_peft : PEFTModule
        The shared PEFT (for shapes, the logit scale and the frozen backbone pieces).
    config : RunConfig
        The kind's settings (e.g. ``personal.residual.scale`` and ``bias`` of the residual head).
    """
    return kind_of(kind).new_module(global_peft, config)


def load_state(module: nn.Module, state: State) -> None:
    """Copy a personal state into a working module (names must match its trainable tensors)."""
    params = dict(module.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise KeyError(f"personal state has unknown tensors {missing}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def start_state(kind: str, previous: State | None, global_peft: PEFTModule, initial_state: State,
                config: RunConfig) -> State:
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
        The PEFT's initial (zero-shot) shared state.
    config : RunConfig
        Passed to :func:`new_personal_module`.
    """
    return kind_of(kind).start_state(previous, global_peft, initial_state, config)


def personal_logits(kind: str, personal: nn.Module, global_peft: PEFTModule, features: Tensor,
                    global_logits: Tensor | None = None, config: RunConfig | None = None) -> Tensor:
    """Logits of the personal model of ``kind`` (differentiable w.r.t. ``personal`` only).

    ``global_logits`` (the frozen global model's logits of ``features``) is used by the residual
    kinds and computed when omitted.
    """
    return kind_of(kind).logits(personal, global_peft, features, global_logits, config)


def personal_loss(kind: str, logits: Tensor, labels: Tensor, config: RunConfig,
                  local_logits: Tensor | None = None) -> Tensor:
    """Training loss of a personal model (residual kinds: ``local_logits`` is the branch's own ``l_L``)."""
    return kind_of(kind).loss(logits, labels, config, local_logits)


def train_personal(kind: str, personal: nn.Module, global_peft: PEFTModule, features: Tensor, labels: Tensor,
                   config: RunConfig, generator: torch.Generator, global_logits: Tensor | None = None
                   ) -> dict[str, float]:
    """Stage-2 training of one client's personal module, in place, with the global model frozen.

    A fresh SGD per client-round (``personal_lr``, momentum ``personal_momentum`` (default 0, as
    the reference), no weight decay), ``personal_epochs`` passes over the client's data in
    ``stage1.batch_size`` batches; every batch's loss and gradients come from the kind's
    :meth:`~fedpurel_lite.personal.Personalization.step`. A non-finite loss raises
    :class:`~fedpurel_lite.errors.NonFiniteError` before its step is applied.

    Returns
    -------
    dict
        ``steps`` and the mean ``loss``.
    """
    plugin = kind_of(kind)
    pc = config.personalization
    params = [p for p in personal.parameters() if p.requires_grad]
    opt = make_optimizer(params, pc.personal_lr, pc.personal_momentum, 0.0)
    if plugin.residual and global_logits is None:
        global_logits = global_peft.predict_logits(features)
    steps, total = 0, 0.0
    personal.train()
    for _ in range(pc.personal_epochs):
        for idx in batches(features.shape[0], config.stage1.batch_size, generator):
            gl = None if global_logits is None else global_logits[idx]
            loss, grads = plugin.step(personal, global_peft, features[idx], labels[idx], gl, config, params)
            value = float(loss.detach())
            check_loss(value, steps + 1)
            opt.step(grads)
            steps += 1
            total += value
    return {"steps": steps, "loss": total / max(steps, 1)}


def branch_only(kind: str, global_peft: PEFTModule) -> bool:
    """The personal branch's logits read only the inputs, not the global model (so they can be kept)."""
    return kind_of(kind).branch_only(global_peft)


@torch.no_grad()
def branch_logits(kind: str, personal: nn.Module, global_peft: PEFTModule, features: Tensor,
                  batch_size: int = 4096) -> Tensor:
    """The personal branch's own logits for a :func:`branch_only` kind, batched as :func:`predict_personal`.

    Residual kinds give ``l_L`` (add the global logits for the personal model's); the others give
    the personal logits. Bit-identical to the matching part of :func:`predict_personal`.
    """
    return kind_of(kind).branch_logits(personal, global_peft, features, batch_size)


@torch.no_grad()
def predict_personal(kind: str, personal: nn.Module, global_peft: PEFTModule, features: Tensor,
                     global_logits: Tensor | None = None, config: RunConfig | None = None,
                     batch_size: int = 4096) -> Tensor:
    """Batched no-grad logits of a personal model (see :func:`personal_logits`)."""
    return kind_of(kind).predict(personal, global_peft, features, global_logits, config, batch_size)


def personal_plus_global(kind: str, global_logits: Tensor, branch: Tensor) -> Tensor:
    """The personal logits from the branch's kept logits: ``l_G + l_L`` for a residual kind, else the branch's."""
    return global_logits + branch if kind_of(kind).residual else branch
