"""The personalization plugin protocol, its default behaviour and the registry the kinds add themselves to.

A personalization kind is one class implementing :class:`Personalization`: what personal module a
client works with (:meth:`~Personalization.new_module`), what it trains from in a round
(:meth:`~Personalization.start_state`), its logits, loss and training step, and which of its
logits can be kept across rounds (:meth:`~Personalization.branch_only`). A kind with knobs of its
own declares them as a config section (a class attribute ``section``: a frozen dataclass of
:func:`~fedpurel_lite.config.registry.knob` fields, the TOML table ``[personal.<name>]``, read with
``config.section(ItsConfig)``). A kind module decorates its class with
:func:`register_personalization`; the engine (:mod:`fedpurel_lite.engine.personalize`, the round loop,
the Flower apps) reaches a kind only through :data:`PERSONALIZATIONS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.registry import Registry
from ..peft import PEFTModule

if TYPE_CHECKING:
    from ..config import RunConfig

#: a personal state: a personal module's trainable tensors by name
State = dict[str, Tensor]
#: what a client trains from: the new global model at every participation, else its own state, first from
#: the zero-shot initial state, the global model or a fresh module
START_RULES: tuple[str, ...] = ("global-each-round", "zero-shot", "global", "new")


@runtime_checkable
class Personalization(Protocol):
    """What the engine asks of a personalization kind.

    Attributes
    ----------
    name : str
        Registry key (a method's ``personal``).
    description : str
        One line.
    residual : bool
        The personal logits are ``l_G + l_L`` (the global model's plus the branch's).
    start : str
        One of :data:`START_RULES`.
    suspect_keys : tuple of str
        Config keys that scale its stage-2 arithmetic beyond the learning rate and momentum (the
        finite guard names them).
    """

    name: str
    description: str
    residual: bool
    start: str
    suspect_keys: tuple[str, ...]

    def new_module(self, global_peft: PEFTModule, config: RunConfig) -> nn.Module:
        """A working personal module (its tensors are overwritten by a loaded state)."""

    def start_state(self, previous: State | None, global_peft: PEFTModule, initial_state: State,
                    config: RunConfig) -> State:
        """The state a client trains from (or is evaluated with) in the current round."""

    def logits(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, global_logits: Tensor | None,
               config: RunConfig | None) -> Tensor:
        """Personal-model logits of inputs ``x`` (differentiable w.r.t. ``personal`` only)."""

    def loss(self, logits: Tensor, labels: Tensor, config: RunConfig, local_logits: Tensor | None = None) -> Tensor:
        """Training loss of the personal logits (``local_logits``: the branch's own, residual kinds)."""

    def step(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, y: Tensor, global_logits: Tensor | None,
             config: RunConfig, params: list[nn.Parameter]) -> tuple[Tensor, list[Tensor]]:
        """Loss of one batch and its gradients w.r.t. ``params`` (``global_logits``: the batch's, residual kinds)."""

    def branch_only(self, global_peft: PEFTModule) -> bool:
        """The branch's logits read only the inputs, not the global model (so they can be kept across rounds)."""

    def branch_logits(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, batch_size: int) -> Tensor:
        """The branch's own logits (residual kinds: ``l_L``; others: the personal logits), batched, no grad."""

    def predict(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, global_logits: Tensor | None,
                config: RunConfig | None, batch_size: int) -> Tensor:
        """Batched no-grad personal-model logits."""


#: every registered personalization kind
PERSONALIZATIONS: Registry[Personalization] = Registry("personalization kind", "personalization", axis="personal")

P = TypeVar("P", bound=type)


def register_personalization(cls: P) -> P:
    """Class decorator: register an instance of ``cls`` under its ``name`` in :data:`PERSONALIZATIONS`.

    The class attribute ``section`` (optional) is the kind's config section, ``[personal.<name>]``.
    """
    kind = cls()
    if kind.start not in START_RULES:
        raise ValueError(f"personalization {kind.name!r}: start {kind.start!r} is not one of {START_RULES}")
    section = getattr(cls, "section", None)
    PERSONALIZATIONS.add(kind.name, kind, section if isinstance(section, type) else None)
    return cls


def module_state(module: nn.Module) -> State:
    """Detached copies of a personal module's trainable tensors."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def head_features(global_peft: PEFTModule, x: Tensor) -> Tensor:
    """The image features a personal head reads for inputs ``x`` (no grad).

    ``x`` itself when the PEFT reads cached features (unchanged from before any PEFT), the frozen
    global model's image features when it reads vision tokens (a head cannot read tokens).
    """
    if global_peft.inputs == "features":
        return x
    with torch.no_grad():
        return global_peft.image_features(x)


class PersonalizationBase:
    """Defaults for a kind: the start rule, CE loss, autograd step, batched prediction.

    A kind sets the class attributes and implements :meth:`logits`; it overrides what differs.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    residual: ClassVar[bool] = False
    start: ClassVar[str] = "new"
    suspect_keys: ClassVar[tuple[str, ...]] = ()
    section: ClassVar[type | None] = None

    def new_module(self, global_peft: PEFTModule, config: RunConfig) -> nn.Module:
        """A copy of the global PEFT (its state is overwritten by the start state)."""
        return global_peft.clone()

    def start_state(self, previous: State | None, global_peft: PEFTModule, initial_state: State,
                    config: RunConfig) -> State:
        """By :attr:`start`: the global model every round, else the previous state, else its first state."""
        if self.start == "global-each-round":
            return global_peft.shared_state()
        if previous is not None:
            return {n: t.clone() for n, t in previous.items()}
        if self.start == "zero-shot":
            return {n: t.clone() for n, t in initial_state.items()}
        if self.start == "global":
            return global_peft.shared_state()
        return module_state(self.new_module(global_peft, config))

    def logits(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, global_logits: Tensor | None,
               config: RunConfig | None) -> Tensor:
        raise NotImplementedError

    def loss(self, logits: Tensor, labels: Tensor, config: RunConfig, local_logits: Tensor | None = None) -> Tensor:
        """Cross-entropy of the personal logits."""
        return F.cross_entropy(logits, labels)

    def step(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, y: Tensor, global_logits: Tensor | None,
             config: RunConfig, params: list[nn.Parameter]) -> tuple[Tensor, list[Tensor]]:
        """Autograd of :meth:`loss` of :meth:`logits`."""
        loss = self.loss(self.logits(personal, global_peft, x, None, config), y, config)
        return loss, list(torch.autograd.grad(loss, params))

    def branch_only(self, global_peft: PEFTModule) -> bool:
        """Not by default (the logits read the global model)."""
        return False

    @torch.no_grad()
    def branch_logits(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, batch_size: int) -> Tensor:
        """The personal logits (a non-residual kind's branch is the whole personal model)."""
        return self.predict(personal, global_peft, x, None, None, batch_size)

    @torch.no_grad()
    def predict(self, personal: nn.Module, global_peft: PEFTModule, x: Tensor, global_logits: Tensor | None,
                config: RunConfig | None, batch_size: int) -> Tensor:
        """:meth:`logits` in batches of ``batch_size``."""
        out = []
        for i in range(0, x.shape[0], batch_size):
            gl = None if global_logits is None else global_logits[i:i + batch_size]
            out.append(self.logits(personal, global_peft, x[i:i + batch_size], gl, config))
        return torch.cat(out)


