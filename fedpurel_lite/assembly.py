"""One assembly path: config -> world, feature bank, federation, backbone (if needed), PEFT, method.

The simulator, both Flower apps, the widgets and the notebooks all set a run up through
:func:`assemble`, so a run is built the same way wherever it executes. It applies the method's
config overrides, runs :func:`~fedpurel_lite.preflight.preflight` before loading anything, loads
the backbone only when the bank must be built or the PEFT's registry entry says it needs it, and
encodes features on the config's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .client import ClientData, make_clients
from .config import RunConfig
from .errors import ConfigError
from .methods import Method, get_method
from .partition import Federation, build_federation
from .peft import PEFTS, PEFTModule, build_peft
from .preflight import cache_dir, preflight
from .token_bank import model_inputs


def resolve_device(name: str) -> torch.device:
    """The torch device a config's ``world.device`` names (``"auto"``: CUDA when available, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def with_method(config: RunConfig) -> tuple[RunConfig, Method]:
    """The config with its method's overrides applied, and the method."""
    method = get_method(config.method.name)
    return (config.with_overrides(method.overrides) if method.overrides else config), method


def _is_embedded(config: RunConfig) -> bool:
    return config.world.name == "shapes" and config.world.backbone == "fedpurel-tiny" and not config.world.pretrained


def load_backbone_for(config: RunConfig) -> Any:
    """The config's backbone on its device (open_clip model, tokenizer, preprocessing)."""
    from .backbone import load_backbone

    return load_backbone(config.world.backbone, config.world.pretrained or None,
                         device=str(resolve_device(config.world.device)))


def _world(config: RunConfig) -> tuple[str, Any]:
    """The config's world fingerprint and a function that loads the world (embedded: without rendering it)."""
    from .worlds import load_world

    if _is_embedded(config):
        from .worlds import shapes

        variant = config.world.variant
        fp = shapes.shapes_fingerprint("target", shapes.DEFAULT_SHIFT, 0, variant=variant)
        return fp, lambda: shapes.load_shapes("target", shapes.DEFAULT_SHIFT, 0, variant=variant)
    kwargs: dict[str, Any] = {}
    if config.world.name == "shapes":
        kwargs["variant"] = config.world.variant
    else:
        kwargs["root"] = config.world.root or None
    if config.world.name == "folder":
        if not config.world.root:
            raise ConfigError("world.name='folder' needs world.root, the image folder (--set world.root=PATH)")
        kwargs["split_file"] = config.world.split_file or "split.json"
        kwargs["test_split_file"] = config.world.test_split_file or None
        kwargs["class_names_file"] = config.world.class_names_file or None
    world = load_world(config.world.name, **kwargs)
    return world.fingerprint(), lambda: world


def load_bank(config: RunConfig, backbone: Any = None, progress: bool = True) -> Any:
    """The feature bank of the config's world and backbone, from the cache or encoded on ``world.device``.

    Parameters
    ----------
    config : RunConfig
    backbone : Backbone, optional
        Reused when given (otherwise loaded when the cache must be built).
    progress : bool
        Progress bars while encoding.
    """
    from . import features
    from .worlds.base import SINGLE_TEMPLATE

    device = str(resolve_device(config.world.device))
    single = [SINGLE_TEMPLATE] if config.world.templates == "single" else None
    if _is_embedded(config) and backbone is None:
        return features.load_embedded_bank(cache_dir=cache_dir(config), progress=progress, device=device,
                                           templates=single, variant=config.world.variant)
    if backbone is None:
        backbone = load_backbone_for(config)
    world = _world(config)[1]()
    if single:  # the world's text features from the one template (the cache key holds the templates)
        world.templates = single
    return features.FeatureBank.load_or_build(backbone, world, cache_dir(config), progress=progress, device=device)


def with_inputs(config: RunConfig, bank: Any, backbone: Any = None, progress: bool = True) -> Any:
    """``bank`` with the inputs the config's PEFT reads: as it is for cached features, else a TokenBank.

    Parameters
    ----------
    config : RunConfig
    bank : FeatureBank-like
        The world's feature bank.
    backbone : Backbone, optional
        Reused when the token cache must be built (loaded otherwise).
    progress : bool
        Progress bars while encoding.
    """
    if PEFTS.get(config.method.peft).inputs_for(config) != "tokens" or hasattr(bank, "train_tokens"):
        return bank
    from .token_bank import load_or_build_tokens

    if backbone is None:
        backbone = load_backbone_for(config)
    fingerprint, make_world = _world(config)
    return load_or_build_tokens(bank, backbone, fingerprint, make_world, cache_dir(config), progress,
                                device=str(resolve_device(config.world.device)))


@dataclass
class Assembly:
    """A run's pieces, built once.

    Attributes
    ----------
    config : RunConfig
        The config with the method's overrides applied.
    method : Method
    device : torch.device
    bank : FeatureBank-like
        Cached features, labels, zero-shot text features, logit scale, class names and order (a
        :class:`~fedpurel_lite.token_bank.TokenBank` when the PEFT reads vision tokens).
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
    bank: Any
    federation: Federation | None
    backbone: Any
    peft: PEFTModule

    def clients(self) -> list[ClientData]:
        """Every client's data on ``device``."""
        return make_clients(self.bank, self.federation, self.device)

    def class_prior(self) -> torch.Tensor:
        """The global long-tailed training counts per class (logit adjustment's prior), on ``device``."""
        return torch.as_tensor(self.federation.train_counts, dtype=torch.float32, device=self.device)

    def new_personal(self) -> torch.nn.Module | None:
        """A working module of the method's personalization kind (``None`` without one)."""
        from .personalize import new_personal_module

        kind = self.method.personal
        return new_personal_module(kind, self.peft, self.config).to(self.device) if kind else None


def assemble(config: RunConfig, bank: Any = None, backbone: Any = None, federation: Federation | None = None,
             progress: bool = True, with_federation: bool = True) -> Assembly:
    """Build a run's pieces from its config (checks first, then loads).

    Parameters
    ----------
    config : RunConfig
    bank : FeatureBank-like, optional
        Reuse a loaded bank (else from the cache, or encoded).
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
        Any failed check of :func:`~fedpurel_lite.preflight.preflight`.
    """
    config, method = with_method(config)
    spec = PEFTS.get(config.method.peft)
    preflight(config, need_bank=bank is None, need_backbone=spec.needs_backbone and backbone is None)
    device = resolve_device(config.world.device)
    if spec.needs_backbone and backbone is None:
        backbone = load_backbone_for(config)
    if bank is None:
        bank = load_bank(config, backbone, progress)
    if with_federation:
        bank = with_inputs(config, bank, backbone, progress)
    if federation is None and with_federation:
        federation = build_federation(np.asarray(bank.train_labels), np.asarray(bank.test_labels), bank.class_order,
                                      config)
    peft = build_peft(config.method.peft, bank, backbone, config).to(device)
    return Assembly(config, method, device, bank, federation, backbone, peft)


def rebuild_global_model(result: Any, bank: Any, backbone: Any = None) -> PEFTModule:
    """The final global PEFT of a finished run (eval mode, on the CPU).

    Parameters
    ----------
    result : RunResult
        A finished run (its ``final_state`` holds ``global/<name>`` tensors).
    bank : FeatureBank-like
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


def personal_predictions(result: Any, bank: Any, backbone: Any = None) -> list[np.ndarray]:
    """Every client's final personal-model predictions on its test split (the global model's without one).

    Parameters
    ----------
    result : RunResult
        A finished run.
    bank : FeatureBank-like
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
    bank = with_inputs(config, bank, backbone, progress=False)
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
        if module is None or not state:
            out.append(logits[idx_t].argmax(dim=1).numpy())
            continue
        load_state(module, state)
        pl = predict_personal(kind, module, peft, x_test[idx_t], logits[idx_t], config)
        out.append(pl.argmax(dim=1).numpy())
    return out
