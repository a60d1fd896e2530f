"""Registry of named methods: what stage 1 trains and what stage 2 personalizes, as data.

A :class:`Method` names the stage-1 objective of the shared PEFT (a name in
:data:`fedpurel_lite.purify.OBJECTIVES`; ``None`` = no federated training: the global model stays
zero-shot), the stage-2 personalization kind (a name in
:data:`fedpurel_lite.engine.personalize.PERSONALIZATIONS`; ``None`` = the personal model *is* the global
model) and optional config overrides. ``get_method`` resolves a name; an unknown name raises a
:class:`~fedpurel_lite.errors.ConfigError` listing the valid ones.

Records are data: the built-in ones are listed here, and a plugin module (a PEFT in
:mod:`fedpurel_lite.peft`, a personalization kind in :mod:`fedpurel_lite.personal`) may declare its
own as a module-level ``METHOD_RECORDS``: a sequence of dicts with the fields of :class:`Method`
(``name``, ``stage1``, ``personal``, ``description``, optional ``overrides``). They are registered
after the built-in ones, in module order, without the plugin importing this module.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config.registry import Registry
from .engine.personalize import PERSONALIZATIONS
from .purify import OBJECTIVES


@dataclass(frozen=True)
class Method:
    """One named method.

    Attributes
    ----------
    name : str
        Registry key.
    stage1 : str or None
        Stage-1 objective (:data:`~fedpurel_lite.purify.OBJECTIVES`), or ``None`` for no federated
        training.
    personal : str or None
        Personalization kind (:data:`~fedpurel_lite.engine.personalize.PERSONALIZATIONS`), or ``None``.
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

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Method:
        """A method from a plain record (a dict with the fields of :class:`Method`).

        Raises
        ------
        ValueError
            A missing or unknown field.
        ConfigError
            An unknown stage-1 objective or personalization kind.
        """
        fields = ("name", "stage1", "personal", "description", "overrides")
        unknown = sorted(set(record) - set(fields))
        missing = [f for f in fields[:4] if f not in record]
        if unknown or missing:
            raise ValueError(f"method record {record.get('name')!r}: unknown fields {unknown}, missing {missing}")
        return cls(record["name"], record["stage1"], record["personal"], record["description"],
                   dict(record.get("overrides", {})))

    @property
    def needs_teacher(self) -> bool:
        """Its stage-1 objective uses the zero-shot teacher's logits."""
        return self.stage1 is not None and OBJECTIVES.get(self.stage1).needs_teacher


_ALL = [
    Method("zero-shot", None, None, "zero-shot CLIP, no training (GM = PM)"),
    Method("fedavg", "ce", None, "FedAvg of the shared PEFT with CE (PromptFL with peft='prompt'); "
           "also the no-projection ablation of FedPuReL-global"),
    Method("promptfl", "ce", None, "PromptFL: FedAvg over a shared CoOp context", {"method.peft": "prompt"}),
    Method("fedprox", "prox", None, "FedProx: CE + mu/2 ||phi - phi_G||^2 (objective.prox.mu)"),
    Method("fedavg-la", "la", None, "FedAvg with logit-adjusted CE (objective.la.tau, global class prior)"),
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
    Method("interp", "ce", "interp", "global/local parameter interpolation (personal.interp.beta on the global)"),
    Method("folio", "ce", "folio", "PromptFolio-style feature mix (personal.folio.theta on the local)"),
    Method("local-only", None, "local-only", "each client trains alone from zero-shot (floor)"),
]

#: packages whose modules may declare ``METHOD_RECORDS``
PLUGIN_PACKAGES: tuple[str, ...] = ("fedpurel_lite.peft", "fedpurel_lite.personal")


def plugin_records() -> list[Mapping[str, Any]]:
    """The ``METHOD_RECORDS`` of every plugin module of :data:`PLUGIN_PACKAGES`, in module-name order.

    Importing a plugin package imports all its modules (each package's ``__init__`` does).
    """
    for package in PLUGIN_PACKAGES:
        importlib.import_module(package)
    out: list[Mapping[str, Any]] = []
    for name in sorted(sys.modules):
        if name.rpartition(".")[0] in PLUGIN_PACKAGES:
            out.extend(getattr(sys.modules[name], "METHOD_RECORDS", ()))
    return out


#: every registered method
METHODS: Registry[Method] = Registry("method", "method.name")
for _m in [*_ALL, *(Method.from_record(r) for r in plugin_records())]:
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
