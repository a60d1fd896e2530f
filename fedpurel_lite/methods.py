"""Registry of named methods: what stage 1 trains and what stage 2 personalizes, as data.

A :class:`Method` names the stage-1 objective of the shared PEFT (a name in
:data:`fedpurel_lite.local.OBJECTIVES`; ``None`` = no federated training: the global model stays
zero-shot), the stage-2 personalization kind (a name in
:data:`fedpurel_lite.personalize.PERSONALIZATIONS`; ``None`` = the personal model *is* the global
model) and optional config overrides. ``get_method`` resolves a name; an unknown name raises a
:class:`~fedpurel_lite.errors.ConfigError` listing the valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .local import OBJECTIVES
from .personalize import PERSONALIZATIONS
from .registry import Registry


@dataclass(frozen=True)
class Method:
    """One named method.

    Attributes
    ----------
    name : str
        Registry key.
    stage1 : str or None
        Stage-1 objective (:data:`~fedpurel_lite.local.OBJECTIVES`), or ``None`` for no federated
        training.
    personal : str or None
        Personalization kind (:data:`~fedpurel_lite.personalize.PERSONALIZATIONS`), or ``None``.
    description : str
        One line for tables and the CLI.
    overrides : dict
        Config keys this method forces (e.g. ``{"method.peft": "prompt"}``).
    """

    name: str
    stage1: str | None
    personal: str | None
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage1 is not None:
            OBJECTIVES.get(self.stage1)
        if self.personal is not None:
            PERSONALIZATIONS.get(self.personal)

    @property
    def needs_teacher(self) -> bool:
        """Its stage-1 objective uses the zero-shot teacher's logits."""
        return self.stage1 is not None and OBJECTIVES.get(self.stage1).needs_teacher


_ALL = [
    Method("zero-shot", None, None, "zero-shot CLIP, no training (GM = PM)"),
    Method("fedavg", "ce", None, "FedAvg of the shared PEFT with CE (PromptFL with peft='prompt'); "
           "also the no-projection ablation of FedPuReL-global"),
    Method("promptfl", "ce", None, "PromptFL: FedAvg over a shared CoOp context", {"method.peft": "prompt"}),
    Method("fedprox", "prox", None, "FedProx: CE + prox_mu/2 ||phi - phi_G||^2"),
    Method("fedavg-la", "la", None, "FedAvg with logit-adjusted CE (la_tau, global class prior)"),
    Method("fedpurel-global", "purify", None, "FedPuReL stage 1: CE purified against the TKL gradient"),
    Method("fedpurel-global-kl", "purify-kl", None, "ablation: purification against plain KL at T=1"),
    Method("fedpurel-global-noproj", "ce", None, "ablation: no projection (= fedavg)"),
    Method("fedpurel", "purify", "residual-peft", "full FedPuReL: purified global + a private PEFT from zero-shot "
           "whose logits add to the frozen global model's (the reference code's personal branch)"),
    Method("fedpurel-kl", "purify-kl", "residual-peft", "ablation: full FedPuReL with plain-KL purification"),
    Method("fedpurel-noproj", "ce", "residual-peft", "ablation: residual personal branch on a FedAvg global"),
    Method("fedpurel-linear", "purify", "residual",
           "variant: a zero-initialised linear residual head as the personal branch (collapses the tail here)"),
    Method("local-ft", "ce", "local-ft", "FedAvg + local fine-tuning of the global PEFT (parameter level)"),
    Method("fedrep", "ce", "fedrep", "FedRep/FedPer-style personal classifier on shared features"),
    Method("interp", "ce", "interp", "global/local parameter interpolation (interp_beta on the global)"),
    Method("folio", "ce", "folio", "PromptFolio-style feature mix (folio_theta on the local)"),
    Method("local-only", None, "local-only", "each client trains alone from zero-shot (floor)"),
]

#: every registered method
METHODS: Registry[Method] = Registry("method", "method.name")
for _m in _ALL:
    METHODS.add(_m.name, _m)

#: fusion baselines whose bias transfer the paper criticises (claim iii)
FUSION_BASELINES: tuple[str, ...] = ("local-ft", "fedrep", "interp", "folio")


def get_method(name: str) -> Method:
    """The registered method ``name``.

    Raises
    ------
    ConfigError
        For an unknown name, listing the valid ones.
    """
    return METHODS.get(name)


def method_names() -> list[str]:
    """All registered method names, in registry order."""
    return list(METHODS.names())
