"""Gradient purification: projection math, the temperature search, the aligned KL and local epochs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fedpurel_lite.config import RunConfig
from fedpurel_lite.engine.local import SGD, local_train, merge_telemetry
from fedpurel_lite.peft import build_peft
from fedpurel_lite.purify import aligned_kl, entropy, find_temperature, logit_gradients, project, project_gradients

pytestmark = pytest.mark.usefixtures("core_one_thread")


def test_projection_fires_on_conflict_and_removes_it():
    g = torch.tensor([1.0, -2.0, 0.5])
    ga = torch.tensor([-1.0, 1.0, 0.0])
    new, cos, fired = project(g, ga)
    assert fired and cos < 0
    assert torch.dot(new, ga).item() >= -1e-6  # <g', g_a> >= 0 after the projection
    assert abs(torch.dot(new, ga).item()) < 1e-6  # lambda = 1: exactly orthogonal
    # the component orthogonal to g_a is untouched
    ga_hat = ga / ga.norm()
    torch.testing.assert_close(new - torch.dot(new, ga_hat) * ga_hat, g - torch.dot(g, ga_hat) * ga_hat)


def test_projection_unchanged_without_conflict():
    g = torch.tensor([1.0, 2.0, 0.0])
    ga = torch.tensor([1.0, -0.4, 3.0])  # cos > 0
    new, cos, fired = project(g, ga)
    assert not fired and cos > 0 and torch.equal(new, g)
    zero, cz, fz = project(g, torch.zeros(3))  # zero alignment gradient: no projection (reference NaN rule)
    assert not fz and math.isnan(cz) and torch.equal(zero, g)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0])
def test_projection_lambda_scaling(lam):
    g = torch.tensor([2.0, -1.0])
    ga = torch.tensor([-1.0, 0.0])
    new, _, fired = project(g, ga, lam)
    assert fired
    # <g, g_a_hat> = -2: the g_a-component goes from -2 to -2 + 2*lam
    torch.testing.assert_close(new, torch.tensor([2.0 - 2.0 * lam, -1.0]))


def test_global_vs_tensor_granularity():
    task = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    align = [torch.tensor([-1.0, 0.0]), torch.tensor([0.0, 3.0])]
    # whole vector: cos = (-1 + 3) / (sqrt2 * sqrt10) > 0 -> unchanged
    g, cos, fired = project_gradients(task, align, 1.0, "global")
    assert fired == [False] and cos[0] > 0 and all(torch.equal(a, b) for a, b in zip(g, task, strict=True))
    # per tensor: the first conflicts, the second does not
    g, cos, fired = project_gradients(task, align, 1.0, "tensor")
    assert fired == [True, False]
    torch.testing.assert_close(g[0], torch.zeros(2))
    assert torch.equal(g[1], task[1])
    with pytest.raises(ValueError):
        project_gradients(task, align, 1.0, "layer")


def test_global_projection_on_concatenation():
    torch.manual_seed(0)
    task = [torch.randn(3, 4), torch.randn(5)]
    align = [-t + 0.1 * torch.randn_like(t) for t in task]
    g, cos, fired = project_gradients(task, align, 1.0, "global")
    assert fired == [True] and cos[0] < 0
    flat_g = torch.cat([t.reshape(-1) for t in g])
    flat_a = torch.cat([a.reshape(-1) for a in align])
    assert abs(torch.dot(flat_g, flat_a).item()) < 1e-4
    assert [t.shape for t in g] == [t.shape for t in task]


def test_bisection_reaches_target_entropy():
    torch.manual_seed(0)
    logits = 18.0 * torch.randn(64, 100)
    h1 = entropy(logits)
    target = torch.rand(64) * (h1.max() + 1.0) + 0.2  # a spread of reachable targets
    target = target.clamp(max=math.log(100) - 0.05)
    tau = find_temperature(logits, target)
    reached = entropy(logits / tau[:, None])
    assert (reached - target).abs().max().item() < 1e-3
    assert ((tau >= 0.05) & (tau <= 20.0)).all()


def test_bisection_clamps_unreachable_targets():
    logits = torch.tensor([[1.0, 0.0, 0.0]])
    tau = find_temperature(logits, torch.tensor([math.log(3) + 1.0]))  # above the maximum entropy
    assert abs(tau.item() - 20.0) < 20.0 * 1e-3
    tau = find_temperature(logits, torch.tensor([0.0]))  # zero entropy needs tau -> 0
    assert abs(tau.item() - 0.05) < 0.05 * 1e-3


def test_aligned_kl_matches_entropies_and_has_student_grad_only():
    torch.manual_seed(1)
    teacher = 18.0 * torch.randn(16, 10)
    student = (5.0 * torch.randn(16, 10)).requires_grad_()
    loss, tau_t, tau_s = aligned_kl(student, teacher)
    target = 0.5 * (entropy(teacher) + entropy(student.detach()))
    assert (entropy(teacher / tau_t[:, None]) - target).abs().max() < 1e-3
    assert (entropy(student.detach() / tau_s[:, None]) - target).abs().max() < 1e-3
    assert not tau_t.requires_grad and not tau_s.requires_grad
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    # KL(teacher || student) with the found temperatures, by hand
    p_t = F.softmax(teacher / tau_t[:, None], -1)
    manual = (p_t * (p_t.log() - F.log_softmax(student.detach() / tau_s[:, None], -1))).sum(-1).mean()
    torch.testing.assert_close(loss.detach(), manual, atol=1e-5, rtol=1e-5)
    # identical logits -> zero loss; plain KL at T=1 -> ones as temperatures
    zero, _, _ = aligned_kl(teacher.clone(), teacher)
    assert zero.item() < 1e-6
    _, t1, s1 = aligned_kl(student, teacher, aligned=False)
    assert torch.equal(t1, torch.ones(16)) and torch.equal(s1, torch.ones(16))


def _cfg(**kw):
    base = dict(lr=0.5, momentum=0.9, weight_decay=5e-4, batch_size=16, local_epochs=1)
    base.update(kw)
    return RunConfig().with_overrides(base)


def _client(bank, n=96):
    x, y = bank.train_features[:n * 3:3], bank.train_labels[:n * 3:3]
    z = bank.logit_scale * x @ F.normalize(bank.text_features, dim=-1).t()
    return x, y, z


@pytest.mark.parametrize("mode", ["ce", "prox", "la", "purify", "purify-kl"])
def test_local_train_modes_run_and_are_deterministic(core_bank, mode):
    x, y, z = _client(core_bank)
    outs = []
    for _ in range(2):
        peft = build_peft("head", core_bank)
        tele = local_train(peft, x, y, z, _cfg(), torch.Generator().manual_seed(3), mode)
        outs.append(peft.weight.detach().clone())
        assert tele["steps"] == 6
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], build_peft("head", core_bank).weight)
    if mode.startswith("purify"):
        assert tele["decisions"] == 6 and 0.0 <= tele["projected_share"] <= 1.0 and math.isfinite(tele["mean_cos"])
    else:
        assert tele["decisions"] == 0 and math.isnan(tele["projected_share"])


def test_purified_training_stays_closer_to_zero_shot(core_bank):
    x, y, z = _client(core_bank)
    init = build_peft("head", core_bank).weight.detach().clone()
    moved = {}
    for mode in ("ce", "purify"):
        peft = build_peft("head", core_bank)
        cfg = _cfg(lr=2.0, local_epochs=3)
        local_train(peft, x, y, z, cfg, torch.Generator().manual_seed(0), mode)
        moved[mode] = (peft.weight.detach() - init).norm().item()
    assert moved["purify"] < moved["ce"]


def test_purify_per_tensor_option_and_lambda_zero(core_bank):
    x, y, z = _client(core_bank)
    a = build_peft("adapter", core_bank)
    tele = local_train(a, x, y, z, _cfg(projection="tensor"), torch.Generator().manual_seed(0), "purify")
    assert tele["decisions"] == 2 * tele["steps"]  # two tensors, one decision each per step
    # lambda = 0 leaves the CE gradient untouched: identical to plain CE
    p1, p2 = build_peft("head", core_bank), build_peft("head", core_bank)
    local_train(p1, x, y, z, _cfg(lambda_proj=0.0), torch.Generator().manual_seed(0), "purify")
    local_train(p2, x, y, z, _cfg(), torch.Generator().manual_seed(0), "ce")
    torch.testing.assert_close(p1.weight, p2.weight)


def test_track_cos_and_errors(core_bank):
    x, y, z = _client(core_bank)
    tele = local_train(build_peft("head", core_bank), x, y, z, _cfg(track_cos=True),
                       torch.Generator().manual_seed(0), "ce")
    assert tele["projected"] == 0 and math.isfinite(tele["mean_cos"])
    with pytest.raises(ValueError, match="teacher"):
        local_train(build_peft("head", core_bank), x, y, None, _cfg(), torch.Generator(), "purify")
    with pytest.raises(ValueError, match="unknown stage-1 objective; allowed one of ce, prox"):
        local_train(build_peft("head", core_bank), x, y, z, _cfg(), torch.Generator(), "sgd")


def test_merge_telemetry():
    a = {"steps": 2, "decisions": 2, "projected": 1, "cos_sum": -0.4, "cos_count": 2, "task_loss": 1.0,
         "align_loss": 0.5}
    b = {"steps": 6, "decisions": 6, "projected": 3, "cos_sum": 0.6, "cos_count": 6, "task_loss": 2.0,
         "align_loss": 1.5}
    m = merge_telemetry([a, b])
    assert m["projected_share"] == 0.5 and abs(m["mean_cos"] - 0.025) < 1e-12
    assert abs(m["task_loss"] - (2 * 1.0 + 6 * 2.0) / 8) < 1e-12


def test_closed_form_logit_gradients_match_autograd():
    torch.manual_seed(2)
    f = (6.0 * torch.randn(12, 9)).requires_grad_()
    z = 18.0 * torch.randn(12, 9)
    y = torch.randint(0, 9, (12,))
    bias = torch.log(torch.rand(9) + 0.1)
    for aligned in (True, False):
        task, g_task, align, g_align = logit_gradients(f, y, z, aligned, bias)
        ce = F.cross_entropy(f + bias, y)
        kl, _, _ = aligned_kl(f, z, aligned=aligned)
        torch.testing.assert_close(task, ce.detach())
        torch.testing.assert_close(align, kl.detach())
        torch.testing.assert_close(g_task, torch.autograd.grad(ce, f)[0])
        torch.testing.assert_close(g_align, torch.autograd.grad(kl, f)[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("momentum", "wd"), [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4)])
def test_sgd_matches_torch_optim(momentum, wd):
    torch.manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(4, 3))
    p2 = torch.nn.Parameter(p1.detach().clone())
    ours = SGD([p1], lr=0.1, momentum=momentum, weight_decay=wd)
    ref = torch.optim.SGD([p2], lr=0.1, momentum=momentum, weight_decay=wd)
    for _ in range(4):
        g = torch.randn(4, 3)
        ours.step([g])
        p2.grad = g.clone()
        ref.step()
    torch.testing.assert_close(p1, p2)


def _local_train_by_hooks(peft, features, labels, teacher_logits, config, generator, objective, class_prior=None):
    """The local epoch loop written once around the objective plugin's hooks (no capability flags)."""
    from fedpurel_lite.engine.local import batches, stage1_optimizer
    from fedpurel_lite.purify import OBJECTIVES

    obj = OBJECTIVES.get(objective)
    s1, pc = config.stage1, config.purification
    track = obj.tracks(config)
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = stage1_optimizer(peft, params, s1)
    state = obj.begin(params, labels, teacher_logits, class_prior, config)
    projected = 0
    peft.train()
    for _ in range(s1.local_epochs):
        for idx in batches(features.shape[0], s1.batch_size, generator, s1.drop_last):
            logits, pullback = peft.forward_with_pullback(features[idx])
            task, g_task, _, g_align = logit_gradients(
                logits, labels[idx], teacher_logits[idx] if track else None, obj.aligned, state.logit_bias,
                pc.bisection_iters, clamped=pc.kl_log == "clamped")
            if track:
                both = pullback(torch.stack([g_task, g_align]))
                grads, aligns = [g[0] for g in both], [g[1] for g in both]
            else:
                grads = [g[0] for g in pullback(g_task.unsqueeze(0))]
            grads, task = obj.regularize(grads, task, params, state, config)
            if track:
                grads, _, fired = obj.combine(grads, aligns, config)
                projected += sum(fired)
            opt.step(grads)
    return projected


@pytest.mark.parametrize(("mode", "overrides"), [
    ("ce", {}), ("ce", {"track_cos": True}), ("prox", {"objective.prox.mu": 0.5}), ("la", {"objective.la.tau": 0.7}),
    ("purify", {}), ("purify", {"projection": "tensor", "lambda_proj": 0.5}), ("purify", {"kl_log": "clamped"}),
    ("purify-kl", {}),
])
def test_objective_hooks_reproduce_local_train_bit_for_bit(core_bank, mode, overrides):
    """The plugins' hooks give exactly the local epochs of :func:`local_train` (same tensors, same projections)."""
    x, y, z = _client(core_bank)
    cfg = _cfg(**overrides)
    prior = torch.linspace(3.0, 1.0, z.shape[1])
    peft_name = "adapter" if overrides.get("projection") == "tensor" else "head"
    ref = build_peft(peft_name, core_bank)
    hooked = copy.deepcopy(ref)
    tele = local_train(ref, x, y, z, cfg, torch.Generator().manual_seed(5), mode, prior)
    projected = _local_train_by_hooks(hooked, x, y, z, cfg, torch.Generator().manual_seed(5), mode, prior)
    for a, b in zip(ref.parameters(), hooked.parameters(), strict=True):
        assert torch.equal(a, b)
    assert projected == tele["projected"]
    assert (projected > 0) == mode.startswith("purify")


def test_objective_plugins_registry():
    from fedpurel_lite import purify
    from fedpurel_lite.engine import local

    assert purify.OBJECTIVES.names() == ("ce", "prox", "la", "purify", "purify-kl")
    for name in purify.OBJECTIVES:
        plugin, old = purify.OBJECTIVES.get(name), local.OBJECTIVES.get(name)
        assert plugin.name == name and plugin.description
        for flag in ("needs_teacher", "purify", "aligned", "proximal", "logit_adjusted"):
            assert getattr(plugin, flag) == getattr(old, flag), (name, flag)
        assert all(RunConfig().get(k) is not None for k in plugin.knobs)
    with pytest.raises(ValueError, match="already registered"):
        purify.register_objective(type(purify.OBJECTIVES.get("ce")))
