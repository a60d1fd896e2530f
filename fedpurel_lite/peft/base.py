"""The PEFT interface and registry: what every shared trainable part on top of the frozen CLIP is.

Every PEFT maps its **inputs** ``x`` to logits ``[B, C]``: cached, L2-normalised image features
``[B, D]`` for PEFTs on a frozen image tower, or the image tower's cached input tokens
``[B, L, width]`` for PEFTs inside it (vision LoRA; the spec's ``inputs`` says which, and the
assembly gives the run that kind of bank). It is split into two pieces the methods can combine
without knowing which PEFT they train:

- :meth:`PEFTModule.image_features` -- the (possibly adapted) normalised image features ``[B, D]``;
- :meth:`PEFTModule.class_features` -- the normalised class (text) features ``[C, D]``;

so ``forward(x) = logit_scale * image_features(x) @ class_features().T``. The shared tensors a
federation averages are the module's trainable parameters, exchanged by name through
:meth:`PEFTModule.shared_state` / :meth:`PEFTModule.load_shared_state`.

A PEFT is registered in :data:`PEFTS` by decorating its builder with :func:`register_peft`, which
declares what it needs (the backbone's towers or only cached features), whether a round's
clients gain from training concurrently on the CPU, and its own config section: a frozen
dataclass of its knobs (fields made with :func:`fedpurel_lite.config.registry.knob`), the TOML table
``[peft.<name>]``, read by the builder as ``config.section(ItsConfig)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config.registry import Registry, knob

__all__ = ["PEFTS", "PEFTModule", "PEFTSpec", "knob", "register_peft"]


@dataclass(frozen=True)
class PEFTSpec:
    """A registered PEFT.

    Attributes
    ----------
    name : str
        Registry key (``method.peft`` in a config).
    build : callable
        ``build(bank, backbone, config) -> PEFTModule``.
    needs_backbone : bool
        It runs a backbone tower (the text tower for prompts), so the run loads the backbone.
    concurrent_clients : bool
        A client step is heavy enough that a round's clients gain from training at once on the
        CPU (one thread each); light PEFTs train clients in turn.
    description : str
        One line for tables and messages.
    inputs : {"features", "tokens"} or callable
        What ``x`` is: cached final image features, or the vision tower's cached input tokens;
        a callable ``inputs(config)`` when it depends on the config.
    config : type, optional
        Its config section (a frozen dataclass), the TOML table ``[peft.<name>]``.
    suspect_keys : tuple of str
        Config keys of this PEFT that scale its arithmetic: named by the finite guard when a
        value turns non-finite (``("peft.lora.alpha",)``).
    cost : PEFTCost, optional
        Measured time per round and trainable size, for cost estimates (none without it).
    """

    name: str
    build: Callable[[Any, Any, Any], PEFTModule]
    needs_backbone: bool = False
    concurrent_clients: bool = False
    description: str = ""
    inputs: str | Callable[[Any], str] = "features"
    config: type | None = None
    suspect_keys: tuple[str, ...] = ()
    cost: PEFTCost | None = None

    def inputs_for(self, config: Any) -> str:
        """``"features"`` or ``"tokens"``: the inputs this PEFT reads under ``config``."""
        return self.inputs(config) if callable(self.inputs) else self.inputs


@dataclass(frozen=True)
class PEFTCost:
    """What a PEFT costs, for the estimate printed before long runs.

    Attributes
    ----------
    client_round_s, eval_round_s : float
        Measured seconds per client-round (stage 1 + stage 2) and per round's evaluation on the
        embedded world with the default optimisation settings, one worker, a shared 2-core CPU.
    trainable : callable
        ``trainable(section, dims, classes) -> int``: an upper bound of the trainable floats of one
        model copy, from the PEFT's config section (``None`` when it has none), the backbone's
        dimensions (``embed``, ``v_width``, ``v_layers``, ``tokens``, ``t_width``) and the classes.
    """

    client_round_s: float
    eval_round_s: float
    trainable: Callable[[Any, dict[str, int], int], int]


#: every registered PEFT
PEFTS: Registry[PEFTSpec] = Registry("PEFT", "method.peft", axis="peft")


def register_peft(name: str, *, config: type | None = None, needs_backbone: bool = False,
                  concurrent_clients: bool = False, description: str = "",
                  inputs: str | Callable[[Any], str] = "features",
                  suspect_keys: tuple[str, ...] = (), cost: PEFTCost | None = None) -> Callable[[Any], Any]:
    """Decorator registering a builder ``fn(bank, backbone, config) -> PEFTModule`` as PEFT ``name``.

    Parameters
    ----------
    name : str
        The registry key (``method.peft = "<name>"``).
    config : type, optional
        The PEFT's config section: a frozen dataclass whose fields are made with
        :func:`~fedpurel_lite.config.registry.knob` (default, help, range or choices). It becomes the TOML
        table ``[peft.<name>]`` and ``--set peft.<name>.<key>=...``; the builder reads it with
        ``config.section(ItsConfig)``.
    needs_backbone, concurrent_clients, description, inputs, suspect_keys, cost
        See :class:`PEFTSpec`.
    """
    return PEFTS.decorator(PEFTSpec, name, needs_backbone=needs_backbone, concurrent_clients=concurrent_clients,
                           description=description, inputs=inputs, config=config, suspect_keys=suspect_keys,
                           cost=cost)


class PEFTModule(nn.Module):
    """Base class: cosine logits between adapted image features and class features.

    Attributes
    ----------
    logit_scale : float
        The backbone's (exponentiated) logit scale, fixed.
    inputs : {"features", "tokens"}
        What ``x`` is (cached image features unless the PEFT runs inside the image tower).
    """

    logit_scale: float
    inputs: str = "features"

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
    def predict_logits(self, x: Tensor, batch_size: int = 4096, class_features: Tensor | None = None) -> Tensor:
        """Logits of many samples in batches, class features computed once (or given; no grad)."""
        cls = self.class_features() if class_features is None else class_features
        out = [self.logit_scale * self.image_features(x[i:i + batch_size]) @ cls.t()
               for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out) if out else x.new_zeros(0, cls.shape[0])
