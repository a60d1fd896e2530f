"""The value tables of :class:`~fedpurel_lite.config.RunConfig`: choices, ranges and cross-field rules.

Kept apart from :mod:`fedpurel_lite.config` so the dataclasses stay short; imports no torch.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

#: the worlds, methods, PEFTs and objectives are checked against their registries in preflight
CHOICES: dict[str, tuple[str, ...]] = {
    "longtail.profile": ("exp", "step", "given"),
    "longtail.group_convention": ("reference", "oltr"),
    "federation.test_split": ("shares", "matched"),
    "federation.partition": ("per-class", "superclass"),
    "purification.projection": ("global", "tensor"),
    "purification.kl_log": ("exact", "clamped"),
    "stage1.optimizer_scope": ("client-round", "shared"),
    "world.device": ("cpu", "cuda", "auto"),
    "world.templates": ("ensemble", "single"),
    "world.variant": ("stratified", "shape-grouped"),
    "method.lora_towers": ("vision", "text", "both"),
}
MAX_SEED = 2**32 - 1

#: allowed ranges of the numeric fields, as shown in messages: ">= a", "> a", or an interval "[a, b)"
RANGES: dict[str, str] = {
    "longtail.imbalance_ratio": ">= 1", "federation.num_clients": ">= 1", "federation.participation": "(0, 1]",
    "federation.rounds": "[1, 1000000]", "federation.dirichlet_alpha": "> 0", "federation.min_client_size": ">= 1",
    "federation.superclass_beta": "> 0",
    "method.n_ctx": "[1, 64]", "method.adapter_reduction": ">= 1", "method.adapter_ratio": "[0, 1]",
    "method.lora_rank": "[1, 1024]", "method.lora_alpha": "> 0",
    "stage1.lr": "> 0", "stage1.momentum": "[0, 1)", "stage1.weight_decay": ">= 0", "stage1.batch_size": ">= 1",
    "stage1.local_epochs": "[1, 1000]", "purification.lambda_proj": ">= 0", "purification.bisection_iters": "[1, 100]",
    "personalization.personal_alpha": "[0, 1]", "personalization.personal_lr": "> 0",
    "personalization.personal_epochs": "[1, 1000]", "personalization.personal_momentum": "[0, 1)",
    "personalization.residual_scale": ">= 0", "baselines.prox_mu": ">= 0", "baselines.la_tau": ">= 0",
    "baselines.interp_beta": "[0, 1]", "baselines.folio_theta": "[0, 1]", "run.seed": f"[0, {MAX_SEED}]",
    "run.eval_batch_size": ">= 1", "run.workers": "[0, 1024]", "run.num_threads": "[0, 1024]",
}


def in_range(value: float, spec: str) -> bool:
    """``value`` lies in ``spec`` (``">= a"``, ``"> a"`` or an interval such as ``"(0, 1]"``)."""
    if spec.startswith(">"):
        low = float(spec.split()[-1])
        return value >= low if spec.startswith(">=") else value > low
    low, high = (float(v) for v in spec[1:-1].split(","))
    return (value >= low if spec[0] == "[" else value > low) and (value <= high if spec[-1] == "]" else value < high)


def check_combinations(config: Any) -> None:
    """Rules that tie two fields together.

    - ``stage1.optimizer_scope = "shared"`` carries one SGD state from client to client in the
      order they are trained, so the clients of a round must run one after another:
      ``run.workers = 1``.
    - ``world.variant`` is a variant of the shapes world: another one needs ``world.name = "shapes"``.
    - ``federation.partition = "superclass"`` draws each client's test split together with its
      training data, so ``federation.test_split`` must stay ``"shares"`` (the default).

    Raises
    ------
    ConfigError
        Naming both keys.
    """
    if config.stage1.optimizer_scope == "shared" and config.run.workers != 1:
        raise ConfigError(f"stage1.optimizer_scope='shared' carries one SGD state from client to client in order, so "
                          f"it needs run.workers=1 (got {config.run.workers}); set run.workers=1 or use "
                          "optimizer_scope='client-round'")
    if config.world.variant != "stratified" and config.world.name != "shapes":
        raise ConfigError(f"world.variant={config.world.variant!r} is a variant of the shapes world, but world.name="
                          f"{config.world.name!r}; leave world.variant at 'stratified' for other worlds")
    if config.federation.partition == "superclass" and config.federation.test_split != "shares":
        raise ConfigError("federation.partition='superclass' draws every client's test split with its training data; "
                          f"federation.test_split={config.federation.test_split!r} does not apply (leave it 'shares')")
