"""The value tables of :class:`~fedpurel_lite.config.RunConfig`: choices, ranges and cross-field rules.

Kept apart from :mod:`fedpurel_lite.config` so the dataclasses stay short; imports no torch.
"""

from __future__ import annotations

import reprlib
from typing import Any

from ..errors import ConfigError

#: the worlds, methods, PEFTs and objectives are checked against their registries in preflight; a plugin's own
#: keys (``[peft.lora] towers``) declare their choices and ranges with the field
#: (:func:`fedpurel_lite.config.registry.knob`)
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
}
MAX_SEED = 2**32 - 1

#: allowed ranges of the numeric fields, as shown in messages: intervals "[a, b]", "(a, b]", "[a, b)".
#: Every range is bounded above. The float bounds keep one training step finite in fp32 with a
#: margin (the knob times an O(100) gradient or logit stays far below 3.4e38) and refuse values that
#: have no meaning (a momentum of 0.999 already multiplies the step by 1000; a Dirichlet
#: concentration of 1e6 is an even split already; an imbalance ratio above 10,000 leaves every tail
#: class of every world at one image). The integer bounds fit their use (clients, sizes and batches
#: a laptop or one GPU can hold; the seed of NumPy's generator).
RANGES: dict[str, str] = {
    "longtail.imbalance_ratio": "[1, 10000]",
    "federation.num_clients": "[1, 10000]", "federation.participation": "(0, 1]",
    "federation.rounds": "[1, 1000000]", "federation.dirichlet_alpha": "(0, 1000000]",
    "federation.min_client_size": "[1, 100000]", "federation.superclass_beta": "(0, 1000000]",
    "stage1.lr": "(0, 100]", "stage1.momentum": "[0, 0.999]", "stage1.weight_decay": "[0, 1]",
    "stage1.batch_size": "[1, 1000000]", "stage1.local_epochs": "[1, 1000]",
    "purification.lambda_proj": "[0, 10]", "purification.bisection_iters": "[1, 100]",
    "personalization.personal_alpha": "[0, 1]", "personalization.personal_lr": "(0, 100]",
    "personalization.personal_epochs": "[1, 1000]", "personalization.personal_momentum": "[0, 0.999]",
    "run.seed": f"[0, {MAX_SEED}]",
    "run.eval_batch_size": "[1, 1000000]", "run.workers": "[0, 1024]", "run.num_threads": "[0, 1024]",
}

#: longest string a text field takes (a path on Linux is at most 4096 bytes)
MAX_TEXT = 4096


#: how values and keys are shown in messages: shortened, nesting cut, one line
_REPR = reprlib.Repr()
for _attr, _limit in (("maxlevel", 3), ("maxstring", 60), ("maxother", 60), ("maxlist", 6), ("maxtuple", 6),
                      ("maxdict", 6), ("maxset", 6), ("maxlong", 40)):
    setattr(_REPR, _attr, _limit)


def shown(value: Any) -> str:
    """``repr(value)`` shortened to one printable line of at most ~100 characters (any type, size or nesting)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a value whose repr fails still gets a message
        text = f"<{type(value).__name__}>"
    return one_line(text)


def one_line(text: str) -> str:
    """``text`` with non-printable characters escaped, cut to 200 characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= 200 else text[:197] + "..."


def in_range(value: float, spec: str) -> bool:
    """``value`` lies in ``spec`` (``">= a"``, ``"> a"`` or an interval such as ``"(0, 1]"``).

    Integers are compared exactly (a huge integer is never rounded into the range).
    """
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
    - a world's own section (``[world.<name>]``) applies to that world only: a section that differs
      from its defaults needs ``world.name = "<name>"`` (a PEFT's, an objective's or a personalization
      kind's section may be set while another one is selected).
    - ``federation.partition = "superclass"`` draws each client's test split together with its
      training data, so ``federation.test_split`` must stay ``"shares"`` (the default).
    - ``stage1.lr * stage1.weight_decay < 2 (1 + stage1.momentum)``: above it, the weight-decay
      part of the SGD update alone multiplies the parameters by a factor of modulus > 1 every step
      (the heavy-ball stability limit for the curvature ``weight_decay``), so they grow without bound.

    Raises
    ------
    ConfigError
        Naming both keys.
    """
    if config.stage1.optimizer_scope == "shared" and config.run.workers != 1:
        raise ConfigError(f"stage1.optimizer_scope='shared' carries one SGD state from client to client in order, so "
                          f"it needs run.workers=1 (got {config.run.workers}); set run.workers=1 or use "
                          "optimizer_scope='client-round'")
    for (axis, plugin), section in config.plugins.items():
        if axis == "world" and plugin != config.world.name:
            key, value = next((f"world.{plugin}.{k}", v) for k, v in vars(section).items()
                              if v != getattr(type(section)(), k))
            raise ConfigError(f"{key}={shown(value)} is a setting of the {plugin} world, but world.name="
                              f"{shown(config.world.name)}; leave [world.{plugin}] at its defaults for other worlds")
    s1 = config.stage1
    if s1.lr * s1.weight_decay >= 2.0 * (1.0 + s1.momentum):
        raise ConfigError(f"stage1.lr * stage1.weight_decay = {s1.lr:g} * {s1.weight_decay:g} = "
                          f"{s1.lr * s1.weight_decay:g}: allowed < 2 (1 + stage1.momentum) = {2 * (1 + s1.momentum):g} "
                          "(above it weight decay alone makes the parameters grow every step); lower either")
    if config.federation.partition == "superclass" and config.federation.test_split != "shares":
        raise ConfigError("federation.partition='superclass' draws every client's test split with its training data; "
                          f"federation.test_split={config.federation.test_split!r} does not apply (leave it 'shares')")
