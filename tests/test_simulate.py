"""The round simulator: history contents, determinism, checkpoint/resume, results, compare, registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedpurel_lite.config import RunConfig
from fedpurel_lite.engine.checkpoint import find_resume_point
from fedpurel_lite.engine.client import client_generator
from fedpurel_lite.engine.results import RunResult
from fedpurel_lite.engine.simulate import compare, run
from fedpurel_lite.methods import FUSION_BASELINES, METHODS, get_method

pytestmark = pytest.mark.usefixtures("core_one_thread")


def _cfg(**kw):
    base = dict(num_clients=5, participation=0.4, rounds=4, imbalance_ratio=10, min_client_size=5, lr=0.2,
                personal_lr=0.2, batch_size=16, seed=3)
    base.update(kw)
    return RunConfig().with_overrides(base)


def _strip(history):
    return [{k: v for k, v in h.items() if k != "time_s"} for h in history]


def test_registry():
    assert {"zero-shot", "fedavg", "fedprox", "fedavg-la", "fedpurel-global", "fedpurel-global-kl",
            "fedpurel-global-noproj", "fedpurel", "local-ft", "fedrep", "interp", "folio",
            "local-only"} <= set(METHODS)
    assert get_method("fedpurel").stage1 == "purify" and get_method("fedpurel").personal == "residual-peft"
    assert get_method("fedpurel-global-kl").stage1 == "purify-kl"
    assert get_method("fedpurel-global-noproj").stage1 == get_method("fedavg").stage1 == "ce"
    assert get_method("promptfl").overrides == {"method.peft": "prompt"}
    assert all(get_method(m).stage1 == "ce" for m in FUSION_BASELINES)
    with pytest.raises(ValueError, match="method.name='fedpurell': unknown method; allowed one of .*fedpurel"):
        get_method("fedpurell")


def test_run_history_contents(core_bank):
    res = run(_cfg(method="fedpurel"), bank=core_bank, progress=False)
    assert len(res.history) == 4
    h0, h1 = res.history[0], res.history[1]
    assert h0["clients"] == [0, 1, 2, 3, 4] and len(h1["clients"]) == 2
    for part in ("gm", "pm", "gm_clients"):
        for key in ("accuracy", "macro_f1", "head", "medium", "tail"):
            assert key in h1[part]
    assert len(h1["gm"]["per_class"]) == 20 and len(h1["pm"]["per_client_accuracy"]) == 5
    assert 0.0 <= h1["telemetry"]["projected_share"] <= 1.0 and h1["telemetry"]["steps"] > 0
    assert h1["time_s"] > 0
    assert set(res.summary) == {"last", "last10"}
    assert res.summary["last"]["gm"]["accuracy"] == res.history[-1]["gm"]["accuracy"]
    mean = np.mean([h["pm"]["accuracy"] for h in res.history])
    assert abs(res.summary["last10"]["pm"]["accuracy"] - mean) < 1e-9
    assert any(k.startswith("personal/") for k in res.final_state)
    assert "global/weight" in res.final_state
    # the residual heads changed the personal models: PM differs from GM on the client splits
    assert res.history[-1]["pm"]["per_client_accuracy"] != res.history[-1]["gm_clients"]["per_client_accuracy"]


def test_zero_shot_and_fedavg_relations(core_bank):
    zs = run(_cfg(method="zero-shot"), bank=core_bank, progress=False)
    fa = run(_cfg(method="fedavg"), bank=core_bank, progress=False)
    assert zs.history[0]["gm"] == zs.history[-1]["gm"]  # nothing trains
    assert zs.history[-1]["telemetry"]["steps"] == 0
    assert fa.history[-1]["pm"] == fa.history[-1]["gm_clients"]  # no personalization: PM is the GM
    assert fa.history[-1]["gm"]["accuracy"] != zs.history[-1]["gm"]["accuracy"]


def test_same_seed_same_history_other_seed_differs(core_bank):
    a = run(_cfg(method="fedpurel"), bank=core_bank, progress=False)
    b = run(_cfg(method="fedpurel"), bank=core_bank, progress=False)
    c = run(_cfg(method="fedpurel", seed=4), bank=core_bank, progress=False)
    assert _strip(a.history) == _strip(b.history)
    assert all(torch.equal(a.final_state[k], b.final_state[k]) for k in a.final_state)
    assert _strip(a.history) != _strip(c.history)


@pytest.mark.parametrize("method", ["fedpurel", "folio", "fedavg-la"])
def test_concurrent_clients_give_the_same_numbers(core_bank, method):
    one = run(_cfg(method=method, workers=1), bank=core_bank, progress=False)
    three = run(_cfg(method=method, workers=3), bank=core_bank, progress=False)
    assert _strip(one.history) == _strip(three.history)
    assert all(torch.equal(one.final_state[k], three.final_state[k]) for k in one.final_state)


class _Killed(RuntimeError):
    pass


@pytest.mark.parametrize("method", ["fedpurel", "interp"])
def test_resume_after_kill_gives_identical_numbers(core_bank, tmp_path, method):
    cfg = _cfg(method=method, rounds=6)
    full = run(cfg, bank=core_bank, progress=False)

    def kill_after_2(r, entry):
        if r == 2:
            raise _Killed

    with pytest.raises(_Killed):
        run(cfg, bank=core_bank, progress=False, checkpoint_dir=tmp_path, on_round_end=kill_after_2)
    point = find_resume_point(tmp_path)
    assert point.round == 2 and len(point.history) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_00001.json", "round_00001.safetensors",
                                                          "round_00002.json", "round_00002.safetensors"]
    resumed = run(cfg, bank=core_bank, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert _strip(resumed.history) == _strip(full.history)
    assert all(torch.equal(resumed.final_state[k], full.final_state[k]) for k in full.final_state)
    assert resumed.summary == full.summary


def test_resume_rejects_other_config(core_bank, tmp_path):
    run(_cfg(method="fedavg", rounds=2), bank=core_bank, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"stage1.lr: 0.2 there, 0.3 now"):
        run(_cfg(method="fedavg", rounds=3, lr=0.3), bank=core_bank, progress=False, checkpoint_dir=tmp_path,
            resume=True)
    # more rounds (and another worker count) on the same config continue the run
    longer = run(_cfg(method="fedavg", rounds=3, workers=2), bank=core_bank, progress=False, checkpoint_dir=tmp_path,
                 resume=True)
    assert [h["round"] for h in longer.history] == [0, 1, 2]
    with pytest.raises(ValueError, match="checkpoint_dir"):
        run(_cfg(), bank=core_bank, progress=False, resume=True)


def test_result_save_load_roundtrip(core_bank, tmp_path):
    res = run(_cfg(method="fedpurel", rounds=2), bank=core_bank, progress=False)
    res.save(tmp_path / "out")
    data = json.loads((tmp_path / "out" / "result.json").read_text())  # strict JSON: no NaN
    assert data["method"] == "fedpurel" and len(data["history"]) == 2
    json.dumps(data, allow_nan=False)
    back = RunResult.load(tmp_path / "out")
    assert back.history == res.history and back.summary == res.summary
    assert set(back.final_state) == set(res.final_state)
    assert list(res.frame("gm").index) == [0, 1]


def test_compare_runs_methods_on_one_federation(core_bank):
    df = compare(_cfg(rounds=2), ["zero-shot", "fedavg", "fedpurel"], bank=core_bank, progress=False)
    assert list(df.index) == ["zero-shot", "fedavg", "fedpurel"]
    assert {"gm_accuracy", "gm_tail", "pm_accuracy", "pm_tail", "gm_clients_accuracy", "time_s"} <= set(df.columns)
    # same federation: the fedavg PM *is* its global model on the client splits
    assert df.loc["fedavg", "pm_accuracy"] == df.loc["fedavg", "gm_clients_accuracy"]
    with pytest.raises(ValueError, match="unknown method"):
        compare(_cfg(rounds=1), ["nope"], bank=core_bank, progress=False)


def test_client_generators_are_independent_streams():
    a = torch.randperm(50, generator=client_generator(1, 3, 4, 1))
    assert torch.equal(a, torch.randperm(50, generator=client_generator(1, 3, 4, 1)))
    others = [client_generator(1, 3, 4, 2), client_generator(1, 3, 5, 1), client_generator(1, 4, 4, 1),
              client_generator(2, 3, 4, 1)]
    assert all(not torch.equal(a, torch.randperm(50, generator=g)) for g in others)


def test_prompt_method_on_tiny_clip(core_tiny_clip):
    model, tok = core_tiny_clip
    from conftest import core_make_bank

    bank = core_make_bank(num_classes=6, dim=32, per_class_train=30, per_class_test=10)

    class _Backbone:
        pass

    bb = _Backbone()
    bb.model, bb.tokenizer = model, tok
    cfg = _cfg(method="promptfl", rounds=2, num_clients=3, n_ctx=2)
    res = run(cfg, bank=bank, backbone=bb, progress=False)
    assert res.config["method"]["peft"] == "prompt" and list(res.final_state) == ["global/ctx"]
    res2 = run(cfg.with_overrides({"method": "fedpurel", "peft": "prompt"}), bank=bank, backbone=bb, progress=False)
    assert res2.history[-1]["telemetry"]["steps"] > 0
    # two clients at once on the prompt learner (shared frozen text tower): the same numbers
    res3 = run(cfg.with_overrides({"method": "fedpurel", "peft": "prompt", "workers": 2}), bank=bank, backbone=bb,
               progress=False)
    assert _strip(res3.history) == _strip(res2.history)


def test_client_metrics_equal_evaluate_predictions():
    from fedpurel_lite.engine.metrics import client_metrics, evaluate_predictions

    rng = np.random.default_rng(0)
    c = 12
    groups = np.repeat([0, 1, 2], 4)
    truths = [rng.integers(0, c, size=n) for n in (40, 7, 1, 25)]
    truths[1] = np.array([0, 0, 3, 3, 3, 11, 11])  # many classes absent
    preds = [np.where(rng.random(len(t)) < 0.6, t, rng.integers(0, c, size=len(t))) for t in truths]
    fast = client_metrics(truths, preds, c, groups)
    for i, (t, p) in enumerate(zip(truths, preds, strict=True)):
        ref = evaluate_predictions(t, p, c, groups)
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "head", "medium", "tail"):
            assert np.isclose(fast[key][i], ref[key], equal_nan=True), (i, key)
        assert np.allclose(fast["per_class"][i], ref["per_class"], equal_nan=True)


def test_round_state_steps_drive_any_round_loop(core_bank):
    """The round's steps are methods of one state object: a hand-written loop over them reproduces ``run``."""
    from fedpurel_lite.engine.aggregate import ClientSampler
    from fedpurel_lite.engine.assembly import assemble
    from fedpurel_lite.engine.results import clean_json
    from fedpurel_lite.engine.simulate import RoundState
    from fedpurel_lite.engine.workers import ClientPool, IntraOpThreads

    cfg = _cfg(method="fedpurel", rounds=3)
    ref = run(cfg, bank=core_bank, progress=False)
    parts = assemble(cfg, bank=core_bank, progress=False)
    sampler = ClientSampler(parts.federation.num_clients, cfg.federation.participation, cfg.run.seed)
    initial = parts.peft.shared_state()
    with IntraOpThreads(1), ClientPool(1, lambda: (parts.peft.clone(), parts.new_personal())) as pool:
        state = RoundState.start(parts, pool, initial)
        history = []
        for r in range(cfg.federation.rounds):
            entry = state.play_round(r, sampler.sample(r))
            entry.update(state.evaluate())
            history.append(entry)
        assert sorted(state.personal_states) == [0, 1, 2, 3, 4]
        packed = state.packed_state()
    assert json.dumps(_strip([clean_json(h) for h in history])) == json.dumps(_strip(ref.history))
    assert packed.keys() == ref.final_state.keys()
    assert all(torch.equal(packed[k].cpu(), ref.final_state[k]) for k in packed)


def test_plugin_modules_add_method_records(monkeypatch):
    """A plugin module's ``METHOD_RECORDS`` are registered as methods, validated like the built-in ones."""
    import sys
    import types

    from fedpurel_lite.errors import ConfigError
    from fedpurel_lite.methods import Method, plugin_records

    record = {"name": "test-ft-adapter", "stage1": "ce", "personal": "local-ft", "description": "a test",
              "overrides": {"method.peft": "adapter"}}
    module = types.ModuleType("fedpurel_lite.personal.zz_test_records")
    module.METHOD_RECORDS = [record]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert record in plugin_records()
    method = Method.from_record(record)
    assert (method.stage1, method.personal, method.overrides) == ("ce", "local-ft", {"method.peft": "adapter"})
    with pytest.raises(ValueError, match="unknown fields \\['stage2'\\]"):
        Method.from_record({**record, "stage2": "x"})
    with pytest.raises(ConfigError, match="unknown personalization kind"):
        Method.from_record({**record, "personal": "nope"})
