"""Unit tests of the Flower layer with constructed messages (no Ray, no simulation engine)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

pytest.importorskip("flwr", reason="the Flower layer needs the 'flower' extra (pip install -e '.[flower]')")

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedpurel_lite.config import RunConfig  # noqa: E402
from fedpurel_lite.data.partition import build_federation  # noqa: E402
from fedpurel_lite.engine.aggregate import ClientSampler, fedavg  # noqa: E402
from fedpurel_lite.engine.client import make_clients, predict_private, train_private, train_shared  # noqa: E402
from fedpurel_lite.engine.personalize import new_personal_module  # noqa: E402
from fedpurel_lite.errors import NonFiniteError  # noqa: E402
from fedpurel_lite.flower.client_app import ClientRuntime, evaluate_step, train_step  # noqa: E402
from fedpurel_lite.flower.strategy import FedPuReLStrategy, FlowerRunError  # noqa: E402
from fedpurel_lite.methods import get_method  # noqa: E402
from fedpurel_lite.peft import build_peft  # noqa: E402

K = 6
NODE = {pid: 100 + 7 * pid for pid in range(K)}  # node ids are opaque to the strategy


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages need a run identity; the engine sets it, here we do."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


@pytest.fixture
def setup(core_bank):
    cfg = RunConfig().with_overrides(dict(num_clients=K, participation=0.5, rounds=3, imbalance_ratio=10,
                                          min_client_size=5, seed=3, lr=0.05, personal_lr=0.05, batch_size=16))
    fed = build_federation(core_bank.train_labels.numpy(), core_bank.test_labels.numpy(), core_bank.class_order, cfg)
    return cfg, fed, core_bank


def _strategy(setup, min_replies=1):
    cfg, fed, bank = setup
    s = FedPuReLStrategy(fed, bank.test_labels.numpy(), cfg.federation.participation, cfg.run.seed, min_replies)
    s.register_nodes({node: pid for pid, node in NODE.items()})
    return s


def _reply(msg: Message, pid: int, state: dict, n: int) -> Message:
    tele = {"steps": 2.0, "decisions": 2.0, "projected": 1.0, "cos_sum": -0.5, "cos_count": 2.0, "task_loss": 1.0,
            "align_loss": 0.5}
    metrics = MetricRecord({"num-examples": n, "partition-id": pid, **tele})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)


def test_configure_train_uses_the_toolkit_sampler(setup):
    cfg = setup[0]
    s = _strategy(setup)
    arrays = ArrayRecord({"w": torch.zeros(3)})
    first = list(s.configure_train(1, arrays, ConfigRecord(), grid=None))
    assert sorted(m.metadata.dst_node_id for m in first) == sorted(NODE.values())  # round 0: everyone
    second = list(s.configure_train(2, arrays, ConfigRecord(), grid=None))
    expected = ClientSampler(K, cfg.federation.participation, cfg.run.seed).sample(1)
    assert [m.metadata.dst_node_id for m in second] == [NODE[int(k)] for k in expected]
    assert len(second) == 3 and all(int(m.content["config"]["round-idx"]) == 1 for m in second)


def test_aggregate_train_is_weighted_fedavg_in_partition_order_and_records_failures(setup):
    s = _strategy(setup)
    msgs = dict(enumerate(s.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), None)))
    states = {pid: {"w": torch.tensor([float(pid), 1.0])} for pid in range(K)}
    sizes = {pid: 10 * (pid + 1) for pid in range(K)}
    replies = [_reply(msgs[pid], pid, states[pid], sizes[pid]) for pid in reversed(range(K)) if pid != 2]
    replies.append(Message(Error(code=0, reason="ClientAppException\nException occurred. Message: disk full"),
                           reply_to=msgs[2]))
    arrays, metrics = s.aggregate_train(1, replies)
    ok = [p for p in range(K) if p != 2]
    want = fedavg([states[p] for p in ok], [sizes[p] for p in ok])
    torch.testing.assert_close(arrays.to_torch_state_dict()["w"], want["w"], rtol=0, atol=0)
    assert s.failures == [{"round": 0, "stage": "train", "partition": 2, "reason": "Exception occurred. Message: "
                           "disk full"}]
    assert metrics["projected_share"] == pytest.approx(0.5) and metrics["mean_cos"] == pytest.approx(-0.25)


def test_too_few_replies_stop_the_run(setup):
    s = _strategy(setup, min_replies=K)
    msgs = list(s.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), None))
    replies = [_reply(m, pid, {"w": torch.ones(2)}, 5) for pid, m in enumerate(msgs) if pid != 4]
    replies.append(Message(Error(code=0, reason="boom"), reply_to=msgs[4]))
    with pytest.raises(FlowerRunError, match=rf"round 0 train: only {K - 1} of {K} clients .* min_replies={K}"):
        s.aggregate_train(1, replies)
    with pytest.raises(ValueError, match="min_replies"):
        FedPuReLStrategy(setup[1], setup[2].test_labels.numpy(), 0.5, 1, min_replies=K + 1)


def _runtime(setup, pid: int) -> ClientRuntime:
    cfg, fed, bank = setup
    cfg = cfg.with_overrides({"method": "fedpurel"})
    method = get_method("fedpurel")
    peft = build_peft(cfg.method.peft, bank, None, cfg)
    return ClientRuntime(cfg, method, make_clients(bank, fed)[pid], peft, peft.shared_state(),
                         new_personal_module(method.personal, peft, cfg),
                         torch.as_tensor(fed.train_counts, dtype=torch.float32))


def test_client_train_step_is_stage_one(setup):
    rt = _runtime(setup, 1)
    start = {k: v + 0.01 for k, v in rt.initial_state.items()}
    msg = Message(RecordDict({"arrays": ArrayRecord(start), "config": ConfigRecord({"round-idx": 4,
                                                                                  "server-round": 5})}),
                  dst_node_id=NODE[1], message_type="train")
    reply = train_step(msg, rt)
    other = _runtime(setup, 1)
    want, _ = train_shared(other.peft, start, other.data, other.config, other.method, 4, other.prior)
    got = reply.content["arrays"].to_torch_state_dict()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    assert int(reply.content["metrics"]["num-examples"]) == rt.data.n
    assert not torch.equal(got[next(iter(got))], start[next(iter(start))])  # it trained


def test_client_evaluate_keeps_the_residual_private(setup):
    rt = _runtime(setup, 0)
    glob = rt.initial_state
    ctx = Context(run_id=1, node_id=NODE[0], node_config={"partition-id": 0}, state=RecordDict(), run_config={})

    def evaluate(personalize: bool, r: int) -> Message:
        msg = Message(RecordDict({"arrays": ArrayRecord(glob), "config": ConfigRecord(
            {"round-idx": r, "server-round": r + 1, "personalize": personalize})}), dst_node_id=NODE[0],
            message_type="evaluate")
        return evaluate_step(msg, ctx, rt)

    first = evaluate(False, 0)
    assert "personal" not in ctx.state  # not sampled: nothing trained, nothing stored
    assert first.content["metrics"]["gm-pred"] == first.content["metrics"]["pm-pred"]  # zero residual at start
    evaluate(True, 1)
    stored = ctx.state["personal"].to_torch_state_dict()
    other = _runtime(setup, 0)
    want, _ = train_private(other.personal, other.peft, None, other.initial_state, other.data, other.config,
                            other.method, 1)
    for name in want:
        torch.testing.assert_close(stored[name], want[name], rtol=0, atol=0)
    third = evaluate(False, 2)  # evaluation uses the stored private state
    logits = other.peft.predict_logits(other.data.x_test)
    pm = predict_private(other.personal, other.peft, want, other.initial_state, other.data.x_test, logits,
                         other.config, other.method)
    assert third.content["metrics"]["pm-pred"] == [int(v) for v in pm]
    assert "arrays" not in third.content  # the personal branch is never sent
    assert np.isnan(float(third.content["metrics"]["loss"]))


def test_exported_client_file_round_trips(setup, tmp_path):
    from fedpurel_lite.flower.client_app import export_client_data, load_client_data

    cfg, fed, bank = setup
    paths = export_client_data(cfg, tmp_path, bank=bank)
    assert [p.name for p in paths] == [f"client_{k}.safetensors" for k in range(K)]
    data, ctx = load_client_data(str(paths[3]))
    want = make_clients(bank, fed)[3]
    assert data.client_id == 3 and data.n == len(fed.client_train[3])
    for name in ("x", "y", "z", "x_test"):
        assert torch.equal(getattr(data, name), getattr(want, name))
    np.testing.assert_array_equal(data.y_test, want.y_test)
    np.testing.assert_array_equal(ctx.train_counts, fed.train_counts)
    assert ctx.logit_scale == pytest.approx(bank.logit_scale) and ctx.class_names == bank.class_names


class SilentGrid:
    """A grid whose nodes are all connected but only ``answering`` of them reply to a message."""

    def __init__(self, nodes: list[int], answering: int) -> None:
        self.nodes, self.answering, self.timeouts = nodes, answering, []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        self.timeouts.append(timeout)
        replies = []
        for pid, m in enumerate(messages[:self.answering]):
            reply = Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=m)
            replies.append(reply)
        return replies


def test_partition_discovery_waits_the_reply_timeout_and_names_silent_nodes():
    from fedpurel_lite.flower.server_app import discover_partitions

    grid = SilentGrid([NODE[p] for p in range(3)], answering=3)
    assert discover_partitions(grid, 3, timeout=5.0, reply_timeout=600.0) == {NODE[p]: p for p in range(3)}
    assert grid.timeouts == [600.0]
    silent = SilentGrid([NODE[p] for p in range(3)], answering=1)
    with pytest.raises(FlowerRunError, match=r"only 1 of 3 nodes answered which partition they hold within 600 s"):
        discover_partitions(silent, 3, timeout=5.0, reply_timeout=600.0)


def test_a_resumed_strategy_continues_the_round_numbers(setup):
    cfg = setup[0]
    s = _strategy(setup)
    failure = {"round": 1, "stage": "train", "partition": 4, "reason": "Node Unavailable"}
    saved = [{"round": 0, "clients": list(range(K))}, {"round": 1, "clients": [1, 2, 3], "failures": [failure]}]
    s.resume_from(saved)
    msgs = list(s.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), None))  # Flower's round 1
    expected = ClientSampler(K, cfg.federation.participation, cfg.run.seed).sample(2)
    assert [m.metadata.dst_node_id for m in msgs] == [NODE[int(k)] for k in expected]
    assert {int(m.content["config"]["round-idx"]) for m in msgs} == {2}
    assert {int(m.content["config"]["server-round"]) for m in msgs} == {3}
    assert sorted(s.entries) == [1, 2, 3] and s.entries[3]["round"] == 2 and s.entries[2] == saved[1]
    assert s.failures == [failure]


def test_a_node_keeps_its_private_branch_per_round_on_its_own_disk(setup, tmp_path):
    from fedpurel_lite.flower.client_app import load_personal, save_personal

    for r in range(3):
        save_personal(tmp_path, r, {"w": torch.full((2,), float(r))})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["personal_round_00001.safetensors",
                                                          "personal_round_00002.safetensors"]
    assert load_personal(tmp_path, 0) is None
    assert torch.equal(load_personal(tmp_path, 2)["w"], torch.full((2,), 1.0))  # not the unfinished round's
    assert torch.equal(load_personal(tmp_path, 7)["w"], torch.full((2,), 2.0))


def test_a_restarted_node_evaluates_with_its_saved_branch(setup, tmp_path):
    """Round 1 trains the branch on one node; a fresh context (the node started again) picks it up in round 2."""
    rt = _runtime(setup, 0)

    def evaluate(ctx: Context, personalize: bool, r: int) -> Message:
        msg = Message(RecordDict({"arrays": ArrayRecord(rt.initial_state), "config": ConfigRecord(
            {"round-idx": r, "server-round": r + 1, "personalize": personalize})}), dst_node_id=NODE[0],
            message_type="evaluate")
        return evaluate_step(msg, ctx, rt)

    def branch(ctx: Context) -> dict:
        return ctx.state["personal"].to_torch_state_dict()

    node_config = {"partition-id": 0, "state-dir": str(tmp_path)}
    before = Context(run_id=1, node_id=NODE[0], node_config=node_config, state=RecordDict(), run_config={})
    evaluate(before, True, 1)
    kept = evaluate(before, True, 2)
    after = Context(run_id=2, node_id=NODE[0], node_config=node_config, state=RecordDict(), run_config={})
    again = evaluate(after, True, 2)  # round 2 again on a restarted node: from round 1's branch on disk
    assert again.content["metrics"]["pm-pred"] == kept.content["metrics"]["pm-pred"]
    for name, value in branch(before).items():
        torch.testing.assert_close(branch(after)[name], value, rtol=0, atol=0)
    lost = Context(run_id=3, node_id=NODE[0], node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    evaluate(lost, True, 2)  # without its saved branch the node would start round 2 from scratch
    assert any(not torch.equal(branch(lost)[k], v) for k, v in branch(before).items())


# ----------------------------------------------------------------------------- the finite guard on the Flower engine
def _nan_state(state: dict) -> dict:
    """``state`` with one NaN in its first tensor (what a diverged global model hands the clients)."""
    out = {k: v.clone() for k, v in state.items()}
    first = next(iter(out))
    out[first].view(-1)[0] = float("nan")
    return out


def test_a_non_finite_client_replies_with_the_guard_line_instead_of_crashing(setup, monkeypatch):
    import fedpurel_lite.flower.client_app as client_app

    rt = _runtime(setup, 1)
    monkeypatch.setattr(client_app, "runtime_for", lambda config, node_config: rt)
    app = client_app.build_client_app(rt.config)
    ctx = Context(run_id=1, node_id=NODE[1], node_config={"partition-id": 1}, state=RecordDict(), run_config={})
    msg = Message(RecordDict({"arrays": ArrayRecord(_nan_state(rt.initial_state)),
                              "config": ConfigRecord({"round-idx": 4, "server-round": 5})}),
                  dst_node_id=NODE[1], message_type="train")
    reply = app(msg, ctx)  # the ClientApp's train function, as Flower calls it
    assert not reply.has_error() and "arrays" not in reply.content
    text = client_app.nonfinite_message(reply)
    assert re.fullmatch(r"training became non-finite in round 4, client 1, stage 1 \(local training of the shared "
                        r"PEFT\), at step 1 the loss is nan; most likely at fault: stage1\.lr=\S+ .*", text), text
    assert int(reply.content["metrics"]["partition-id"]) == 1
    finite = app(Message(RecordDict({"arrays": ArrayRecord(rt.initial_state), "config": ConfigRecord(
        {"round-idx": 4, "server-round": 5})}), dst_node_id=NODE[1], message_type="train"), ctx)
    assert client_app.nonfinite_message(finite) is None and "arrays" in finite.content  # a finite step is as before


def test_a_non_finite_stage_two_replies_with_the_guard_line_and_keeps_the_branch(setup):
    from fedpurel_lite.flower.client_app import nonfinite_message

    rt = _runtime(setup, 0)
    ctx = Context(run_id=1, node_id=NODE[0], node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    msg = Message(RecordDict({"arrays": ArrayRecord(_nan_state(rt.initial_state)), "config": ConfigRecord(
        {"round-idx": 2, "server-round": 3, "personalize": True})}), dst_node_id=NODE[0], message_type="evaluate")
    reply = evaluate_step(msg, ctx, rt)
    assert re.match(r"training became non-finite in round 2, client 0, stage 2 \(personal training\), ",
                    nonfinite_message(reply))
    assert "personal" not in ctx.state and "gm-pred" not in reply.content["metrics"]


def _nonfinite_reply(msg: Message, pid: int, text: str) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 5, "partition-id": pid}),
                               "non-finite": ConfigRecord({"message": text, "round": 0})}), reply_to=msg)


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_non_finite_reply_ends_the_run_with_its_line(setup, stage):
    s = _strategy(setup)
    msgs = list(s.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), None))
    if stage == "evaluate":
        msgs = list(s.configure_evaluate(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), None))
    line = "training became non-finite in round 0, client 3, stage 1 (...), at step 2 the loss is nan; most likely ..."
    replies = [_reply(m, pid, {"w": torch.ones(2)}, 5) for pid, m in enumerate(msgs) if pid != 3]
    replies.insert(1, _nonfinite_reply(msgs[3], 3, line))
    with pytest.raises(NonFiniteError, match=re.escape(line) + "; no round completed$") as err:
        (s.aggregate_train if stage == "train" else s.aggregate_evaluate)(1, replies)
    assert err.value.round_idx == 0 and "\n" not in str(err.value)


@pytest.mark.parametrize("with_config", [True, False])
def test_a_non_finite_aggregate_ends_the_run_naming_the_round_and_clients(setup, with_config):
    cfg, fed, bank = setup
    s = FedPuReLStrategy(fed, bank.test_labels.numpy(), cfg.federation.participation, cfg.run.seed,
                         config=cfg.with_overrides({"lr": 50}) if with_config else None)
    s.register_nodes({node: pid for pid, node in NODE.items()})
    s.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), None)
    msgs = list(s.configure_train(2, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), None))
    chosen = [int(k) for k in s.entries[2]["clients"]]
    states = [{"w": torch.tensor([1.0, float("inf") if i == 1 else 2.0])} for i in range(len(msgs))]
    replies = [_reply(m, pid, st, 5) for m, pid, st in zip(msgs, chosen, states, strict=True)]
    with pytest.raises(NonFiniteError) as err:
        s.aggregate_train(2, replies)
    text = str(err.value)
    who = ", ".join(str(k) for k in sorted(chosen))
    assert text.startswith(f"training became non-finite in round 1, clients {who}, aggregation (FedAvg), the "
                           "aggregated state's tensor 'w' is not finite"), text
    assert text.endswith("; round 0 completed") and err.value.round_idx == 1
    assert ("most likely at fault: stage1.lr=50" in text) == with_config
    assert "telemetry" not in s.entries[2]  # the round was not recorded as trained


class _InProcessGrid(Grid):
    """A Grid that hands each message to a ClientApp in this process (one node per partition; no server).

    A ClientApp that raises gives an error reply, as in Flower's engines.
    """

    def __init__(self, app, num_nodes: int) -> None:
        self.app = app
        self.contexts = {NODE[k]: Context(run_id=1, node_id=NODE[k], node_config={"partition-id": k},
                                          state=RecordDict(), run_config={}) for k in range(num_nodes)}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        return [self._call(m) for m in messages]

    def _call(self, msg: Message) -> Message:
        try:
            return self.app(msg, self.contexts[msg.metadata.dst_node_id])
        except Exception as exc:  # as Flower's engine: a ClientApp that raises answers with an error reply
            return Message(Error(code=0, reason=f"ClientAppException\nException occurred. Message: {exc}"),
                           reply_to=msg)

    def set_run(self, run_id):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_nodes(self):
        raise NotImplementedError

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError


@pytest.mark.slow
def test_a_diverging_flower_run_stops_with_the_guard_line():
    """The ServerApp's loop with the real ClientApp on an in-process grid: the simulator's contract."""
    from pathlib import Path

    from fedpurel_lite.flower.client_app import build_client_app
    from fedpurel_lite.flower.server_app import serve

    preset = Path(__file__).resolve().parents[1] / "configs" / "embedded.toml"
    cfg = RunConfig.load(preset).with_overrides(["rounds=1", "method=fedprox", "objective.prox.mu=1000", "lr=1",
                                                 "num_clients=4"])
    with pytest.raises(NonFiniteError) as err:
        serve(_InProcessGrid(build_client_app(cfg), 4), cfg)
    assert re.fullmatch(r"training became non-finite in round 0, client \d, stage 1 \(local training of the shared "
                        r"PEFT\), at step \d+ the loss is (nan|inf); most likely at fault: objective\.prox\.mu=1000 "
                        r"[^\n]*; no round completed", str(err.value)), str(err.value)
