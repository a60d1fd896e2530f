"""Personalization kinds (stage 2) as plugins, found by name in :data:`PERSONALIZATIONS`.

Modules
-------
``residual``  FedPuReL's residual branch: ``residual`` (linear head) and ``residual-peft`` (a private PEFT).
``finetune``  ``local-ft`` (the global PEFT fine-tuned each round) and ``local-only`` (alone from zero-shot).
``fedrep``    a personal cosine classifier on the global image features.
``interp``    global/local parameter interpolation.
``folio``     global/local feature mix.

Every sub-module of this package is imported here, so a new kind is one module whose class
implements :class:`Personalization` and is decorated with :func:`register_personalization`;
nothing else names it.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    PERSONALIZATIONS,
    START_RULES,
    Personalization,
    PersonalizationBase,
    State,
    head_features,
    module_state,
    register_personalization,
)

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["PERSONALIZATIONS", "START_RULES", "Personalization", "PersonalizationBase", "State", "head_features",
           "module_state", "register_personalization"]
