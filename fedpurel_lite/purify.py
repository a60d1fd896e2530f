"""Stage-1 objectives: the registered losses a client trains the shared PEFT with (FedPuReL's purification).

The math lives in the small core (:mod:`fedpurel_lite.core`: the temperature-aligned KL, the
ProGrad projection) and is re-exported here. This module adds what the engine needs on top: every
stage-1 objective is a plugin -- a subclass of :class:`Objective` registered in
:data:`OBJECTIVES` with :func:`register_objective` -- that says what it needs (the zero-shot
teacher), which config keys are its knobs, declares its own config section (``[objective.prox] mu``,
read with ``config.section(ProxConfig)``; the section of the method's objective is written with
every run), and overrides a few hooks of one local step, as Flower's strategies override a few
hooks of one round loop:

- :meth:`Objective.begin` -- per client-round state (a logit bias, the anchor of a proximal term);
- :meth:`Objective.regularize` -- add a term to the task loss and its gradients;
- :meth:`Objective.combine` -- turn the task and alignment gradients into the update direction.

Per batch the student logits ``f`` (trainable PEFT) and the teacher logits ``z`` (frozen
zero-shot CLIP) give

- the task loss ``L_task = CE(f, y)``;
- the alignment loss ``L_align = KL(p_t || p_s)`` with ``p_t = softmax(z / tau_t)`` and
  ``p_s = softmax(f / tau_s)``, its logarithms exact (``log_softmax``, default) or, as the reference
  code, ``log(p.clamp_min(1e-12))`` (``clamped``: an entry of ``p_s`` below ``1e-12`` then passes no
  gradient). The temperatures are found per sample, without gradient, by
  vectorised bisection on ``[0.05, 20]`` so that both distributions reach the per-sample target
  entropy ``H* = (H(softmax z) + H(softmax f)) / 2`` (the "temperature-aligned KL", TKL). The
  ablation ``purify-kl`` uses the plain KL at ``T = 1``;
- the update direction: ``g = grad L_task``; if ``cos(g, g_a) < 0`` with ``g_a = grad L_align``,
  ``g <- g - lambda <g, g_a_hat> g_a_hat`` (ProGrad rule). ``g_a`` itself is never added. The
  projection acts on the whole flattened trainable gradient (default, the paper's formula) or
  per tensor (the reference code).

The local epochs that call these hooks are in :mod:`fedpurel_lite.engine.local`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar

import torch
from torch import Tensor

from .config.registry import Registry, knob
from .core import (
    P_FLOOR,
    TAU_HI,
    TAU_LO,
    aligned_kl,
    aligned_temperatures,
    entropy,
    find_temperature,
    logit_gradients,
    project,
    project_gradients,
)

__all__ = [
    "OBJECTIVES", "P_FLOOR", "TAU_HI", "TAU_LO", "LogitAdjustedConfig", "Objective", "ObjectiveConfig",
    "ObjectiveRound", "ProxConfig", "aligned_kl", "aligned_temperatures", "entropy", "find_temperature",
    "logit_gradients", "project", "project_gradients", "register_objective",
]

T = TypeVar("T")


class _PurificationKnobs(Protocol):
    @property
    def projection(self) -> str: ...

    @property
    def lambda_proj(self) -> float: ...

    @property
    def track_cos(self) -> bool: ...


class ObjectiveConfig(Protocol):
    """The parts of a run config the objectives read (a :class:`~fedpurel_lite.config.RunConfig` has them)."""

    @property
    def purification(self) -> _PurificationKnobs: ...

    def section(self, config: type[T], plugin: str | None = None) -> T:
        """An objective's own config section, typed by its class."""
        ...


@dataclass
class ObjectiveRound:
    """What an objective keeps for one client-round (made by :meth:`Objective.begin`).

    Attributes
    ----------
    logit_bias : Tensor or None
        ``[C]`` added to the student logits inside the task loss (logit adjustment).
    anchor : list of Tensor or None
        The trainable tensors at the start of the round (a proximal term's centre).
    """

    logit_bias: Tensor | None = None
    anchor: list[Tensor] | None = None


class Objective:
    """A stage-1 objective; this base class is plain cross-entropy. Subclasses override hooks.

    Class attributes
    ----------------
    name : str
        Registry key (a method's ``stage1``).
    description : str
        One line.
    needs_teacher : bool
        Uses the zero-shot teacher's logits (and so the alignment gradient at every step).
    purify : bool
        Projects the task gradient against the alignment gradient (:meth:`combine`).
    aligned : bool
        The alignment loss is the temperature-aligned KL (else the plain KL at ``T = 1``).
    proximal, logit_adjusted : bool
        Capabilities, for the messages that name an objective's knobs (the hooks carry the behaviour).
    knobs : tuple of str
        Dotted config keys this objective reads (its step gain: a non-finite loss names them).
    section : type or None
        Its own config section (a frozen dataclass of :func:`~fedpurel_lite.config.registry.knob` fields),
        the TOML table ``[objective.<name>]``; ``None``: it has no knobs of its own.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False
    purify: ClassVar[bool] = False
    aligned: ClassVar[bool] = True
    proximal: ClassVar[bool] = False
    logit_adjusted: ClassVar[bool] = False
    knobs: ClassVar[tuple[str, ...]] = ()
    section: ClassVar[type | None] = None

    def tracks(self, config: ObjectiveConfig) -> bool:
        """Whether a step forms the alignment gradient (always when purifying, else with ``track_cos``)."""
        return self.needs_teacher or config.purification.track_cos

    def begin(self, params: Sequence[Tensor], labels: Tensor, teacher_logits: Tensor | None,
              class_prior: Tensor | None, config: ObjectiveConfig) -> ObjectiveRound:
        """The state of one client-round, before its first step.

        Parameters
        ----------
        params : sequence of Tensor
            The trainable tensors, at the start of the round.
        labels : Tensor
            The client's labels ``[n]``.
        teacher_logits : Tensor or None
            The client's zero-shot logits ``[n, C]`` when available.
        class_prior : Tensor or None
            A class prior ``[C]`` (the global long-tailed prior in the simulator).
        config : ObjectiveConfig
            The run config.

        Returns
        -------
        ObjectiveRound
        """
        return ObjectiveRound()

    def regularize(self, grads: list[Tensor], task_loss: Tensor, params: Sequence[Tensor],
                   state: ObjectiveRound, config: ObjectiveConfig) -> tuple[list[Tensor], Tensor]:
        """Add a regulariser to the task gradients and loss (none here).

        Returns
        -------
        (grads, task_loss)
        """
        return grads, task_loss

    def combine(self, grads: list[Tensor], aligns: list[Tensor],
                config: ObjectiveConfig) -> tuple[list[Tensor], list[float], list[bool]]:
        """The update direction from the task and alignment gradients, with the cosines of each decision.

        This base keeps the task gradients and only measures their cosine with the alignment
        gradients (``track_cos``).

        Returns
        -------
        (grads, cosines, fired)
            ``fired`` says, per decision, whether a projection changed the gradients.
        """
        _, cosines, _ = project_gradients(grads, aligns, 0.0, config.purification.projection)
        return grads, cosines, [False] * len(cosines)


#: every registered stage-1 objective
OBJECTIVES: Registry[Objective] = Registry("stage-1 objective", "stage1", axis="objective")

O = TypeVar("O", bound=Objective)


def register_objective(cls: type[O]) -> type[O]:
    """Class decorator: register one instance of an :class:`Objective` subclass under its ``name``, with its section."""
    OBJECTIVES.add(cls.name, cls(), cls.section)
    return cls


@register_objective
class CrossEntropy(Objective):
    """Plain cross-entropy (FedAvg, and PromptFL with prompts)."""

    name = "ce"
    description = "cross-entropy"


@dataclass(frozen=True)
class ProxConfig:
    """``[objective.prox]``: FedProx's proximal term."""

    mu: float = knob(0.01, "weight of the proximal term mu / 2 ||phi - phi_G||^2 around the round's start state",
                     range="[0, 1000]")


@register_objective
class Proximal(Objective):
    """FedProx: ``CE + mu / 2 ||phi - phi_G||^2`` around the round's start state (``objective.prox.mu``)."""

    name = "prox"
    description = "cross-entropy + FedProx proximal term"
    proximal = True
    knobs = ("objective.prox.mu",)
    section = ProxConfig

    def begin(self, params: Sequence[Tensor], labels: Tensor, teacher_logits: Tensor | None,
              class_prior: Tensor | None, config: ObjectiveConfig) -> ObjectiveRound:
        return ObjectiveRound(anchor=[p.detach().clone() for p in params])

    def regularize(self, grads: list[Tensor], task_loss: Tensor, params: Sequence[Tensor],
                   state: ObjectiveRound, config: ObjectiveConfig) -> tuple[list[Tensor], Tensor]:
        anchor = state.anchor
        if anchor is None:
            raise ValueError("the proximal term needs the anchor that begin() records")
        mu = config.section(ProxConfig).mu
        grads = [g + mu * (p.detach() - a) for g, p, a in zip(grads, params, anchor, strict=True)]
        task_loss = task_loss + 0.5 * mu * sum(((p.detach() - a) ** 2).sum() for p, a in zip(params, anchor,
                                                                                            strict=True))
        return grads, task_loss


@dataclass(frozen=True)
class LogitAdjustedConfig:
    """``[objective.la]``: the logit adjustment."""

    tau: float = knob(1.0, "weight of the log class prior added to the logits in the task loss", range="[0, 100]")


@register_objective
class LogitAdjusted(Objective):
    """Logit-adjusted CE: ``CE(f + tau log prior, y)`` with ``tau = objective.la.tau``.

    The prior is the one given, else the client's label frequencies.
    """

    name = "la"
    description = "logit-adjusted cross-entropy"
    logit_adjusted = True
    knobs = ("objective.la.tau",)
    section = LogitAdjustedConfig

    def begin(self, params: Sequence[Tensor], labels: Tensor, teacher_logits: Tensor | None,
              class_prior: Tensor | None, config: ObjectiveConfig) -> ObjectiveRound:
        num_classes = teacher_logits.shape[1] if teacher_logits is not None else int(labels.max()) + 1
        prior = (class_prior if class_prior is not None
                 else torch.bincount(labels, minlength=num_classes).float())
        prior = prior.float() / prior.sum()
        return ObjectiveRound(logit_bias=config.section(LogitAdjustedConfig).tau * torch.log(prior.clamp_min(1e-12)))


@register_objective
class Purified(Objective):
    """FedPuReL: CE purified against the temperature-aligned KL to the zero-shot teacher."""

    name = "purify"
    description = "CE purified against the TKL gradient"
    needs_teacher = True
    purify = True
    knobs = ("purification.lambda_proj",)

    def combine(self, grads: list[Tensor], aligns: list[Tensor],
                config: ObjectiveConfig) -> tuple[list[Tensor], list[float], list[bool]]:
        pc = config.purification
        return project_gradients(grads, aligns, pc.lambda_proj, pc.projection)


@register_objective
class PurifiedPlainKL(Purified):
    """Ablation: CE purified against the plain KL at ``T = 1``."""

    name = "purify-kl"
    description = "CE purified against the plain KL (T = 1) gradient"
    aligned = False

