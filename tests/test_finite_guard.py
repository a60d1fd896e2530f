"""The finite guard: a NaN or an infinity stops training with one line naming where and why; nothing is lost."""

from __future__ import annotations

import json
import re

import pytest
import torch

import fedpurel_lite.engine.client as client_mod
import fedpurel_lite.engine.simulate as simulate
from fedpurel_lite.config import RunConfig
from fedpurel_lite.engine.finite import check_loss, check_tensors, likely_knob, suspects
from fedpurel_lite.engine.simulate import run
from fedpurel_lite.errors import NonFiniteError, UserError

pytestmark = pytest.mark.usefixtures("core_one_thread")


def _cfg(**kw):
    base = dict(num_clients=4, participation=0.5, rounds=3, imbalance_ratio=10, min_client_size=5, lr=0.2,
                personal_lr=0.2, batch_size=16, seed=3)
    base.update(kw)
    return RunConfig().with_overrides(base)


def _strip(history):
    return [{k: v for k, v in h.items() if k != "time_s"} for h in history]


# ----------------------------------------------------------------------------- the checks
def test_all_finite_is_exact_even_when_the_sum_overflows():
    from fedpurel_lite.engine.finite import all_finite

    big = torch.full((10,), 3e38)
    assert not torch.isfinite(big.sum()) and all_finite(big)  # finite values whose fp32 sum overflows
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = big.clone()
        t[3] = bad
        assert not all_finite(t)
    both = torch.tensor([float("inf"), float("-inf"), 1.0])
    assert not all_finite(both) and all_finite(torch.tensor([1, 2])) and all_finite(torch.zeros(0))


def test_checks_pass_finite_values_and_name_the_first_bad_one():
    check_loss(1.5, 1)
    check_tensors({"a": torch.ones(2), "steps": torch.tensor([3])}, "state")
    assert issubclass(NonFiniteError, UserError)
    with pytest.raises(NonFiniteError, match="at step 4 the loss is nan"):
        check_loss(float("nan"), 4)
    with pytest.raises(NonFiniteError, match="state 'b' is not finite"):
        check_tensors({"a": torch.ones(2), "b": torch.tensor([float("-inf")])}, "state")


@pytest.mark.parametrize(("pairs", "stage", "objective", "personal", "expected"), [
    ({"lr": 50.0}, 1, "ce", None, r"stage1.lr=50 \(5e\+03 times its default 0.01; lower it\)"),
    ({"momentum": 0.999, "lr": 0.02}, 1, "ce", None,
     r"stage1.momentum=0.999 \(its step gain 1/\(1 - momentum\) is 100 times the default's; lower it\)"),
    ({"mu": 1000.0, "lr": 1.0}, 1, "prox", None, r"objective.prox.mu=1000 \(1e\+05 times"),
    ({"mu": 1000.0, "lr": 1.0}, 1, "ce", None, r"stage1.lr=1 "),  # mu does not act on plain CE
    ({"tau": 100.0}, 1, "la", None, r"objective.la.tau=100 "),
    ({"lambda_proj": 10.0}, 1, "purify", None, r"purification.lambda_proj=10 "),
    ({"personal_lr": 5.0, "lr": 50.0}, 2, "ce", "residual", r"personalization.personal_lr=5 "),
    ({"scale": 1000.0}, 2, "ce", "residual",
     r"personal.residual.scale=1000 \(10 times its default 100"),
    ({}, 1, "ce", None, r"stage1.lr=0.01 \(every setting of this stage is at or below its default"),
    ({}, 2, None, "residual", r"personalization.personal_lr=0.01 \(every setting"),
])
def test_likely_knob_is_the_setting_furthest_above_its_default(pairs, stage, objective, personal, expected):
    cfg = RunConfig().with_overrides(pairs)
    text = likely_knob(cfg, stage, objective, personal)
    assert re.match(expected, text), text
    assert "\n" not in text


def test_suspects_follow_the_method():
    cfg = RunConfig().with_overrides({"peft": "lora"})
    assert suspects(cfg, 1, "purify") == ["stage1.lr", "stage1.momentum", "stage1.weight_decay",
                                          "purification.lambda_proj", "peft.lora.alpha"]
    assert "objective.prox.mu" in suspects(cfg, 1, "prox") and "objective.la.tau" in suspects(cfg, 1, "la")
    assert suspects(RunConfig(), 2, None, "residual")[-1] == "personal.residual.scale"


# ----------------------------------------------------------------------------- in the simulator
def test_a_nan_loss_stops_stage_one_naming_round_client_and_knob(core_bank, monkeypatch):
    real = client_mod.local_train

    def poisoned(peft, x, y, z, config, generator, objective, prior):
        if poisoned.calls == 1:  # the second client of round 0 (one worker: clients in order)
            x = x.clone()
            x[0] = float("nan")
        poisoned.calls += 1
        return real(peft, x, y, z, config, generator, objective, prior)

    poisoned.calls = 0
    monkeypatch.setattr(client_mod, "local_train", poisoned)
    with pytest.raises(NonFiniteError) as info:
        run(_cfg(method="fedavg", workers=1), bank=core_bank, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and info.value.round_idx == 0
    assert msg.startswith("training became non-finite in round 0, client 1, stage 1 (local training of the shared "
                          "PEFT), at step ")
    assert "the loss is nan" in msg and "most likely at fault: stage1.lr=0.2 (20 times its default 0.01" in msg
    assert msg.endswith("no round completed and nothing was written")


def test_a_non_finite_update_after_the_last_loss_is_caught_in_the_client_state(core_bank, monkeypatch):
    """A gradient that overflows at the last step leaves a finite loss but non-finite parameters."""
    real = client_mod.local_train

    def poisoned(peft, *args):
        tele = real(peft, *args)
        with torch.no_grad():
            next(p for p in peft.parameters() if p.requires_grad).view(-1)[0] = float("inf")
        return tele

    monkeypatch.setattr(client_mod, "local_train", poisoned)
    with pytest.raises(NonFiniteError, match=r"round 0, client 0, stage 1 .*, the trained state's tensor '.*' is not "
                                             r"finite; most likely at fault"):
        run(_cfg(method="fedavg"), bank=core_bank, progress=False)


def test_a_nan_in_stage_two_names_the_personal_stage(core_bank, monkeypatch):
    real = client_mod.train_personal

    def poisoned(kind, personal, peft, x, y, config, generator, global_logits=None):
        return real(kind, personal, peft, x * float("inf"), y, config, generator, global_logits)

    monkeypatch.setattr(client_mod, "train_personal", poisoned)
    with pytest.raises(NonFiniteError, match=r"round 0, client 0, stage 2 \(personal training\), .*most likely at "
                                             r"fault: personalization.personal_lr=0.2"):
        run(_cfg(method="fedpurel"), bank=core_bank, progress=False)


def test_a_non_finite_aggregate_stops_the_round_and_keeps_the_last_good_checkpoint(core_bank, monkeypatch,
                                                                                   tmp_path):
    cfg = _cfg(method="fedpurel", rounds=3)
    ckpt = tmp_path / "checkpoint"
    real = simulate.fedavg

    def poisoned(states, weights):
        out = real(states, weights)
        poisoned.calls += 1
        if poisoned.calls == 2:  # round 1
            name = next(iter(out))
            out[name] = out[name] * float("nan")
        return out

    poisoned.calls = 0
    monkeypatch.setattr(simulate, "fedavg", poisoned)
    with pytest.raises(NonFiniteError) as info:
        run(cfg, bank=core_bank, progress=False, checkpoint_dir=ckpt)
    msg = str(info.value)
    assert "\n" not in msg and info.value.round_idx == 1
    assert "round 1, clients " in msg and "aggregation (FedAvg), the aggregated state's tensor" in msg
    assert msg.endswith(f"nothing was written as a result; the checkpoint of round 0 in {ckpt} is kept")
    assert sorted(p.name for p in ckpt.glob("round_*.json")) == ["round_00000.json"]
    monkeypatch.setattr(simulate, "fedavg", real)
    resumed = run(cfg, bank=core_bank, progress=False, checkpoint_dir=ckpt, resume=True)
    fresh = run(cfg, bank=core_bank, progress=False)
    assert _strip(resumed.history) == _strip(fresh.history)
    assert all(torch.equal(resumed.final_state[k], fresh.final_state[k]) for k in fresh.final_state)


def test_non_finite_test_logits_are_caught_at_evaluation(core_bank, monkeypatch):
    real = simulate.predict_global

    def poisoned(peft, x, batch_size, pool):
        return real(peft, x, batch_size, pool) / 0.0 * 0.0

    monkeypatch.setattr(simulate, "predict_global", poisoned)
    with pytest.raises(NonFiniteError, match=r"in round 0, evaluation of the global model, its logits on the test set "
                                             r"are not finite; most likely at fault: stage1.lr=0.2"):
        run(_cfg(method="fedavg"), bank=core_bank, progress=False)


def test_a_diverging_proximal_run_is_stopped_not_returned(core_bank):
    """Within every range, FedProx with lr * mu far above 2 diverges: the guard stops it."""
    with pytest.raises(NonFiniteError, match=r"stage 1 .*most likely at fault: objective.prox.mu=1000"):
        run(_cfg(method="fedprox", mu=1000.0, lr=1.0, rounds=2), bank=core_bank, progress=False)


def test_a_finite_run_is_unchanged_by_the_guard(core_bank, tmp_path):
    """The guard reads values only: a normal run's result is the same with the checks switched off."""
    import fedpurel_lite.engine.local as local
    import fedpurel_lite.engine.personalize as personalize

    cfg = _cfg(method="fedpurel", rounds=2)
    guarded = run(cfg, bank=core_bank, progress=False)
    off = pytest.MonkeyPatch()
    for mod in (local, personalize):
        off.setattr(mod, "check_loss", lambda *a: None)
    for mod in (client_mod, simulate):
        off.setattr(mod, "check_tensors", lambda *a: None)
    try:
        bare = run(cfg, bank=core_bank, progress=False)
    finally:
        off.undo()
    assert json.dumps(_strip(guarded.history)) == json.dumps(_strip(bare.history))
    assert all(torch.equal(guarded.final_state[k], bare.final_state[k]) for k in bare.final_state)
