"""Stage 2: residual learning and the personalization baselines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedpurel_lite.config import RunConfig
from fedpurel_lite.engine.personalize import (
    PERSONAL_KINDS,
    ResidualHead,
    load_state,
    module_state,
    new_personal_module,
    personal_logits,
    personal_loss,
    predict_personal,
    start_state,
    train_personal,
)
from fedpurel_lite.peft import build_peft

pytestmark = pytest.mark.usefixtures("core_one_thread")


def _setup(bank, kind="head"):
    cfg = RunConfig().with_overrides(dict(personal_lr=0.5, batch_size=16, personal_epochs=2))
    glob = build_peft(kind, bank)
    init = glob.shared_state()
    with torch.no_grad():  # a 'trained' global model different from zero-shot
        for p in glob.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    x, y = bank.train_features[:120], bank.train_labels[:120]
    return cfg, glob, init, x, y


def test_residual_loss_formula():
    torch.manual_seed(0)
    lg, ll = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    cfg = RunConfig().with_overrides(dict(personal_alpha=0.9))
    got = personal_loss("residual", lg + ll, y, cfg, ll)
    want = 0.9 * F.cross_entropy(ll, y) + 0.1 * F.cross_entropy(lg + ll, y)
    torch.testing.assert_close(got, want)
    cfg0 = RunConfig().with_overrides(dict(personal_alpha=0.0))
    torch.testing.assert_close(personal_loss("residual", lg + ll, y, cfg0, ll), F.cross_entropy(lg + ll, y))


@pytest.mark.parametrize("kind", ["residual", "local-ft", "fedrep", "interp", "folio"])
def test_fresh_personal_model_equals_global(core_bank, kind):
    cfg, glob, init, _, _ = _setup(core_bank, "adapter" if kind == "folio" else "head")
    pm = new_personal_module(kind, glob, cfg)
    load_state(pm, start_state(kind, None, glob, init, cfg))
    x = core_bank.test_features[:40]
    torch.testing.assert_close(predict_personal(kind, pm, glob, x, None, cfg), glob.predict_logits(x),
                               atol=1e-4, rtol=1e-4)


def test_local_only_starts_at_zero_shot(core_bank):
    cfg, glob, init, _, _ = _setup(core_bank)
    pm = new_personal_module("local-only", glob, cfg)
    load_state(pm, start_state("local-only", None, glob, init, cfg))
    x = core_bank.test_features[:10]
    torch.testing.assert_close(pm(x), core_bank.logit_scale * x @ F.normalize(core_bank.text_features, dim=-1).t(),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", PERSONAL_KINDS)
def test_training_changes_personal_only_and_fits_local_data(core_bank, kind):
    cfg, glob, init, x, y = _setup(core_bank)
    g_before = glob.shared_state()
    pm = new_personal_module(kind, glob, cfg)
    load_state(pm, start_state(kind, None, glob, init, cfg))
    s0 = module_state(pm)
    loss_before = F.cross_entropy(predict_personal(kind, pm, glob, x, None, cfg), y).item()
    out = train_personal(kind, pm, glob, x, y, cfg, torch.Generator().manual_seed(0))
    assert out["steps"] == 2 * 8
    loss_after = F.cross_entropy(predict_personal(kind, pm, glob, x, None, cfg), y).item()
    assert loss_after < loss_before
    assert any(not torch.equal(s0[n], t) for n, t in module_state(pm).items())
    for n, t in glob.shared_state().items():  # the global model is frozen in stage 2
        assert torch.equal(t, g_before[n])


def test_residual_inference_is_sum_of_branches(core_bank):
    cfg, glob, init, x, y = _setup(core_bank)
    pm = new_personal_module("residual", glob, cfg)
    assert isinstance(pm, ResidualHead) and pm.scale == core_bank.logit_scale
    train_personal("residual", pm, glob, x, y, cfg, torch.Generator().manual_seed(0))
    xt = core_bank.test_features[:30]
    torch.testing.assert_close(personal_logits("residual", pm, glob, xt), glob.predict_logits(xt) + pm(xt))


def test_start_state_rules(core_bank):
    cfg, glob, init, x, y = _setup(core_bank)
    prev = {"weight": torch.zeros_like(init["weight"])}
    # local-ft restarts from the current global model every participation
    torch.testing.assert_close(start_state("local-ft", prev, glob, init, cfg)["weight"], glob.weight.detach())
    # persistent kinds continue from their own state
    for kind in ("fedrep", "interp", "folio", "local-only"):
        assert torch.equal(start_state(kind, prev, glob, init, cfg)["weight"], prev["weight"])
    # a copy, never the stored tensor itself
    assert start_state("interp", prev, glob, init, cfg)["weight"] is not prev["weight"]
    with pytest.raises(ValueError, match="unknown personalization kind; allowed one of .*residual-peft"):
        start_state("fedbn", None, glob, init, cfg)


def test_interp_and_folio_fusion_formulas(core_bank):
    cfg, glob, init, _, _ = _setup(core_bank)
    cfg = cfg.with_overrides({"personal.interp.beta": 0.3, "personal.folio.theta": 0.4})
    local = build_peft("head", core_bank)
    with torch.no_grad():
        local.weight.mul_(-1.0)
    x = core_bank.test_features[:5]
    mixed = build_peft("head", core_bank)
    mixed.load_shared_state({"weight": 0.3 * glob.weight.detach() + 0.7 * local.weight.detach()})
    torch.testing.assert_close(personal_logits("interp", local, glob, x, None, cfg), mixed(x))
    cls = F.normalize(0.6 * glob.class_features() + 0.4 * local.class_features(), dim=-1)
    torch.testing.assert_close(personal_logits("folio", local, glob, x, None, cfg),
                               core_bank.logit_scale * x @ cls.t())


def test_residual_closed_form_equals_autograd(core_bank):
    from fedpurel_lite.core import residual_gradients as _residual_step

    for bias in (False, True):
        head = ResidualHead(32, 20, scale=18.0, bias=bias)
        with torch.no_grad():
            for p in head.parameters():
                p.normal_(0, 0.1)
        x, y = core_bank.train_features[:24], core_bank.train_labels[:24]
        lg = 18.0 * torch.randn(24, 20)
        loss, grads = _residual_step(head, lg, x, y, 0.9)
        ref = personal_loss("residual", lg + head(x), y, RunConfig().with_overrides(dict(personal_alpha=0.9)), head(x))
        want = torch.autograd.grad(ref, list(head.parameters()))
        torch.testing.assert_close(loss, ref.detach())
        assert len(grads) == (2 if bias else 1)
        for g, w in zip(grads, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- the plugins
def test_every_kind_is_a_registered_plugin_of_its_own_module():
    """Discovery finds every kind; each implements the protocol and its module is where its name lives."""
    import inspect

    from fedpurel_lite.personal import PERSONALIZATIONS, START_RULES, Personalization

    assert set(PERSONAL_KINDS) == {"residual", "residual-peft", "local-ft", "local-only", "fedrep", "interp", "folio"}
    for name in PERSONAL_KINDS:
        plugin = PERSONALIZATIONS.get(name)
        assert isinstance(plugin, Personalization) and plugin.name == name and plugin.start in START_RULES
        module = inspect.getmodule(type(plugin))
        assert module is not None and module.__name__.startswith("fedpurel_lite.personal.")
        assert f'"{name}"' in inspect.getsource(module)


def test_no_kind_name_is_a_string_literal_in_the_engine():
    """The engine modules reach a kind only through the registry (no ``kind == "..."``)."""
    import ast
    from pathlib import Path

    import fedpurel_lite

    root = Path(fedpurel_lite.__file__).parent
    for rel in ("engine/personalize.py", "engine/simulate.py", "engine/client.py", "engine/analysis.py",
                "personal/base.py",
                "personal/__init__.py"):
        literals = {n.value for n in ast.walk(ast.parse((root / rel).read_text())) if isinstance(n, ast.Constant)}
        assert not literals & set(PERSONAL_KINDS), rel


def test_a_new_kind_is_one_registered_class(core_bank):
    """A kind written outside the package plugs into the engine's functions by registering itself."""
    from fedpurel_lite.personal import PERSONALIZATIONS, PersonalizationBase, register_personalization

    @register_personalization
    class Scaled(PersonalizationBase):
        name = "test-scaled-copy"
        description = "a copy of the global PEFT whose logits are halved"
        start = "global"

        def logits(self, personal, global_peft, x, global_logits, config):
            return 0.5 * personal(x)

    try:
        cfg, glob, init, x, y = _setup(core_bank)
        pm = new_personal_module("test-scaled-copy", glob, cfg)
        load_state(pm, start_state("test-scaled-copy", None, glob, init, cfg))
        torch.testing.assert_close(predict_personal("test-scaled-copy", pm, glob, x, None, cfg),
                                   0.5 * glob.predict_logits(x))
        out = train_personal("test-scaled-copy", pm, glob, x, y, cfg, torch.Generator().manual_seed(0))
        assert out["steps"] == 2 * 8 and not torch.equal(module_state(pm)["weight"], glob.weight.detach())
    finally:
        PERSONALIZATIONS._specs.pop("test-scaled-copy")


@pytest.mark.parametrize("kind", PERSONAL_KINDS)
def test_kept_branch_logits_give_the_personal_predictions(core_bank, kind):
    """For a branch-only kind, the kept branch logits (+ the global's if residual) are the personal logits."""
    from fedpurel_lite.engine.personalize import branch_logits, branch_only, personal_plus_global

    cfg, glob, init, x, y = _setup(core_bank, "adapter" if kind == "folio" else "head")
    pm = new_personal_module(kind, glob, cfg)
    load_state(pm, start_state(kind, None, glob, init, cfg))
    train_personal(kind, pm, glob, x, y, cfg, torch.Generator().manual_seed(0))
    xt = core_bank.test_features[:50]
    gl = glob.predict_logits(xt)
    if not branch_only(kind, glob):
        assert kind in ("fedrep", "interp", "folio")
        return
    want = predict_personal(kind, pm, glob, xt, gl, cfg, 16)
    assert torch.equal(personal_plus_global(kind, gl, branch_logits(kind, pm, glob, xt, 16)), want)
