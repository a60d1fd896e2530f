"""One assembly path: config -> bank, federation, backbone (if needed), PEFT, method.

The simulator, both Flower apps, the widgets and the notebooks all set a run up through
:func:`assemble`, so a run is built the same way wherever it executes. It applies the method's
config overrides, runs :func:`~fedpurel_lite.engine.preflight.preflight` before loading anything, loads
the backbone only when a cache must be built or the PEFT's registry entry says it needs it, and
gets the bank from :func:`~fedpurel_lite.data.bank.build_bank` (features or tokens, as the PEFT declares).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from ..config import RunConfig
from ..data.bank import Bank, FeatureSource, backbone_for, build_bank, model_inputs
from ..data.partition import Federation, build_federation
from ..methods import Method, get_method
from ..peft import PEFTS, PEFTModule, build_peft
from .client import ClientData, make_clients
from .preflight import preflight

if TYPE_CHECKING:
    from ..data.backbone import Backbone
    from .results import RunResult


def resolve_device(name: str) -> torch.device:
    """The torch device a config's ``world.device`` names (``"auto"``: CUDA when available, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def with_method(config: RunConfig) -> tuple[RunConfig, Method]:
    """The config with its method's overrides applied, and the method."""
    method = get_method(config.method.name)
    return (config.with_overrides(method.overrides) if method.overrides else config), method


def load_backbone_for(config: RunConfig) -> Backbone:
    """The config's backbone on its device (open_clip model, tokenizer, preprocessing)."""
    return backbone_for(config)


def load_bank(config: RunConfig, backbone: Backbone | None = None, progress: bool = True) -> Bank:
    """The feature bank of the config's world and backbone, from the cache or encoded on ``world.device``.

    :func:`~fedpurel_lite.data.bank.build_bank` with ``inputs="features"`` (what every PEFT's teacher reads).

    Parameters
    ----------
    config : RunConfig
    backbone : Backbone, optional
        Reused when given (otherwise loaded when the cache must be built).
    progress : bool
        Progress bars while encoding.
    """
    return build_bank(config, backbone, progress, inputs="features")


def with_inputs(config: RunConfig, bank: FeatureSource, backbone: Backbone | None = None,
                progress: bool = True) -> Bank:
    """``bank`` with the inputs the config's PEFT reads (:func:`~fedpurel_lite.data.bank.build_bank` on it).

    Parameters
    ----------
    config : RunConfig
    bank : Bank
        The world's bank.
    backbone : Backbone, optional
        Reused when the token cache must be built (loaded otherwise).
    progress : bool
        Progress bars while encoding.
    """
    return build_bank(config, backbone, progress, features=bank)


@dataclass
class Assembly:
    """A run's pieces, built once.

    Attributes
    ----------
    config : RunConfig
        The config with the method's overrides applied.
    method : Method
    device : torch.device
    bank : Bank
        What the PEFT reads (cached features, or vision tokens when its registry entry says so),
        labels, zero-shot text features, logit scale, class names and order.
    federation : Federation or None
        ``None`` only for a node that holds just its own exported data.
    backbone : Backbone or None
        Loaded when the PEFT needs it.
    peft : PEFTModule
        The shared trainable part at its initial (zero-shot) state, on ``device``.
    """

    config: RunConfig
    method: Method
    device: torch.device
    bank: Bank
    federation: Federation | None
    backbone: Backbone | None
    peft: PEFTModule

    def _federation(self) -> Federation:
        if self.federation is None:
            raise ValueError("this assembly holds no federation (it was built with with_federation=False)")
        return self.federation

    def clients(self) -> list[ClientData]:
        """Every client's data on ``device``."""
        return make_clients(self.bank, self._federation(), self.device)

    def class_prior(self) -> torch.Tensor:
        """The global long-tailed training counts per class (logit adjustment's prior), on ``device``."""
        return torch.as_tensor(self._federation().train_counts, dtype=torch.float32, device=self.device)

    def new_personal(self) -> torch.nn.Module | None:
        """A working module of the method's personalization kind (``None`` without one)."""
        from .personalize import new_personal_module

        kind = self.method.personal
        return new_personal_module(kind, self.peft, self.config).to(self.device) if kind else None


def assemble(config: RunConfig, bank: FeatureSource | None = None, backbone: Backbone | None = None,
             federation: Federation | None = None, progress: bool = True, with_federation: bool = True) -> Assembly:
    """Build a run's pieces from its config (checks first, then loads).

    Parameters
    ----------
    config : RunConfig
    bank : Bank or FeatureSource, optional
        Reuse a loaded bank (else from the cache, or encoded); given the tokens on top when the PEFT reads them.
    backbone : Backbone, optional
        Reuse a loaded backbone (loaded here when the PEFT needs it).
    federation : Federation, optional
        Reuse a federation (it must be the one :func:`build_federation` gives for this config).
    progress : bool
        Progress bars while encoding.
    with_federation : bool
        Build the federation (a deployed node holding only its exported data does not).

    Raises
    ------
    UserError
        Any failed check of :func:`~fedpurel_lite.engine.preflight.preflight`.
    """
    config, method = with_method(config)
    spec = PEFTS.get(config.method.peft)
    preflight(config, need_bank=bank is None, need_backbone=spec.needs_backbone and backbone is None)
    device = resolve_device(config.world.device)
    if spec.needs_backbone and backbone is None:
        backbone = load_backbone_for(config)
    if bank is None or with_federation:
        ready = build_bank(config, backbone, progress, features=bank, inputs=None if with_federation else "features")
    else:
        ready = cast(Bank, bank)  # a deployed node's own exported data is used as it is
    if federation is None and with_federation:
        federation = build_federation(np.asarray(ready.train_labels), np.asarray(ready.test_labels),
                                      ready.class_order, config)
    peft = build_peft(config.method.peft, ready, backbone, config).to(device)
    return Assembly(config, method, device, ready, federation, backbone, peft)


def rebuild_global_model(result: RunResult, bank: FeatureSource, backbone: Backbone | None = None) -> PEFTModule:
    """The final global PEFT of a finished run (eval mode, on the CPU).

    Parameters
    ----------
    result : RunResult
        A finished run (its ``final_state`` holds ``global/<name>`` tensors).
    bank : Bank
        The bank the run used.
    backbone : Backbone-like, optional
        Needed when the run's PEFT needs the backbone.
    """
    config = RunConfig.from_dict(result.config)
    peft = build_peft(config.method.peft, bank, backbone, config)
    state = {k.split("/", 1)[1]: v for k, v in result.final_state.items() if k.startswith("global/")}
    if state:
        peft.load_shared_state(state)
    return peft.eval()


def personal_predictions(result: RunResult, bank: FeatureSource, backbone: Backbone | None = None) -> list[np.ndarray]:
    """Every client's final personal-model predictions on its test split (the global model's without one).

    Parameters
    ----------
    result : RunResult
        A finished run.
    bank : Bank
        The bank the run used (the federation is rebuilt from the run's config).
    backbone : Backbone-like, optional
        Needed when the run's PEFT needs the backbone.

    Returns
    -------
    list of numpy.ndarray
        Predicted labels per client, aligned with the federation's ``client_test``.
    """
    from .personalize import load_state, new_personal_module, predict_personal

    config = RunConfig.from_dict(result.config)
    fed = build_federation(np.asarray(bank.train_labels), np.asarray(bank.test_labels), bank.class_order, config)
    peft = rebuild_global_model(result, bank, backbone)
    bank = build_bank(config, backbone, progress=False, features=bank)
    x_test = torch.as_tensor(model_inputs(bank, "test")).float()
    with torch.no_grad():
        logits = peft.predict_logits(x_test)
    kind = get_method(result.method).personal
    module = new_personal_module(kind, peft, config) if kind else None
    out = []
    for k, idx in enumerate(fed.client_test):
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        prefix = f"personal/{k}/"
        state = {n[len(prefix):]: t for n, t in result.final_state.items() if n.startswith(prefix)}
        if module is None or kind is None or not state:
            out.append(logits[idx_t].argmax(dim=1).numpy())
            continue
        load_state(module, state)
        pl = predict_personal(kind, module, peft, x_test[idx_t], logits[idx_t], config)
        out.append(pl.argmax(dim=1).numpy())
    return out
