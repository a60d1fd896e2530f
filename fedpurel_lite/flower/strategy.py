"""``FedPuReLStrategy``: Flower's FedAvg strategy driven by the toolkit's sampler and aggregation.

Round ``t`` (Flower's ``server_round = t + 1``; ``+ offset`` for a run resumed after ``offset`` saved
rounds, :meth:`FedPuReLStrategy.resume_from`):

- ``configure_train`` sends the global shared tensors to the clients the toolkit's seeded
  :class:`~fedpurel_lite.engine.aggregate.ClientSampler` picks (round 0: all), by partition id;
- ``aggregate_train`` averages the replies' shared tensors with
  :func:`~fedpurel_lite.engine.aggregate.fedavg`, weighted by ``num-examples``, in partition order (so the
  sums match the simulator's); failed replies are logged and recorded, the rest aggregated;
- ``configure_evaluate`` sends the new global tensors to every client, flagging the sampled ones to
  train their private branch first (stage 2);
- ``aggregate_evaluate`` turns the clients' test-split predictions into the simulator's
  ``gm_clients`` and ``pm`` blocks.

Fewer than ``min_replies`` successful replies in a step stops the run with :class:`FlowerRunError`.
The finite guard holds as in the simulator: a client whose training became non-finite replies with
the guard's one-line message (:func:`~fedpurel_lite.flower.client_app.nonfinite_reply`), and an
aggregated state holding a NaN or an infinity is never handed on; either stops the run with
:class:`~fedpurel_lite.errors.NonFiniteError` (one ``error:`` line naming the round and the
client(s)) before the round's update is applied.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from ..config import RunConfig
from ..data.partition import Federation
from ..engine.aggregate import ClientSampler, fedavg
from ..engine.finite import check_aggregated
from ..engine.local import merge_telemetry
from ..engine.metrics import evaluate_clients
from ..engine.results import clean_json
from ..errors import NonFiniteError, UserError
from ..methods import get_method
from .client_app import nonfinite_message

log = logging.getLogger("fedpurel_lite.flower")
TELEMETRY_KEYS = ("steps", "decisions", "projected", "cos_sum", "cos_count", "task_loss", "align_loss")


class FlowerRunError(UserError):
    """The run cannot go on (too few successful client replies): reported as one ``error:`` line."""


def reply_reason(msg: Message) -> str:
    """The last meaningful line of a failed reply's error (Flower wraps the client's traceback)."""
    lines = [ln.strip(" '>") for ln in str(msg.error.reason).splitlines() if ln.strip(" '>")]
    message_lines = [ln for ln in lines if "Message:" in ln]
    return (message_lines or lines or ["unknown error"])[-1]


class FedPuReLStrategy(FedAvg):
    """FedAvg over the shared PEFT tensors with the toolkit's seeded client selection.

    Parameters
    ----------
    federation : Federation
        The run's federation (client test splits, groups, class counts).
    test_labels : numpy.ndarray
        Labels of the balanced test pool (the client splits index into it).
    participation, seed : float, int
        As in :class:`~fedpurel_lite.config.RunConfig`.
    min_replies : int
        Successful replies needed in every train and evaluate step.
    config : RunConfig, optional
        The run's settings (the method's overrides applied): a non-finite aggregate then names the
        setting most likely at fault, as the simulator does.
    """

    def __init__(self, federation: Federation, test_labels: np.ndarray, participation: float, seed: int,
                 min_replies: int = 1, config: RunConfig | None = None) -> None:
        k = federation.num_clients
        super().__init__(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=k)
        if not 1 <= min_replies <= k:
            raise ValueError(f"min_replies must lie in 1..{k} (num_clients), got {min_replies}")
        self.federation = federation
        self.test_truths = [np.asarray(test_labels)[t] for t in federation.client_test]
        self.sampler = ClientSampler(k, participation, seed)
        self.min_replies = int(min_replies)
        self.node_of: dict[int, int] = {}
        self.failures: list[dict[str, Any]] = []
        self.entries: dict[int, dict[str, Any]] = {}
        self.offset = 0  # rounds done before Flower's round 1 (a resumed run)
        self.config = config

    def resume_from(self, history: list[dict[str, Any]]) -> None:
        """Continue after the rounds in ``history`` (a saved result's): Flower's round 1 becomes round ``len``."""
        self.offset = len(history)
        self.entries = {int(h["round"]) + 1: dict(h) for h in history}
        self.failures[:] = [f for h in history for f in h.get("failures", [])]

    # ------------------------------------------------------------------ helpers
    def register_nodes(self, partition_of_node: dict[int, int]) -> None:
        """Learn which node holds which partition (from the ServerApp's query step)."""
        self.node_of = {int(pid): int(node) for node, pid in partition_of_node.items()}
        missing = sorted(set(range(self.federation.num_clients)) - set(self.node_of))
        if missing:
            raise FlowerRunError(f"no node holds partition(s) {missing}")

    def _split(self, server_round: int, replies: Iterable[Message], stage: str,
               expected: Iterable[int] = ()) -> list[Message]:
        replies = list(replies)
        pid_of = {node: pid for pid, node in self.node_of.items()}
        ok = [m for m in replies if not m.has_error()]
        failed = [m for m in replies if m.has_error()]
        partitions = [pid_of.get(m.metadata.src_node_id) for m in failed]
        # the SuperLink answers for a node that went offline (its own id as the source): such a failure
        # belongs to a partition sent to in this step that neither replied nor failed by itself
        unheard = sorted(set(expected) - {int(m.content["metrics"]["partition-id"]) for m in ok}
                         - {p for p in partitions if p is not None})
        for m, pid in zip(failed, partitions, strict=True):
            if pid is None and unheard:
                pid = unheard.pop(0)
            failure = {"round": server_round - 1, "stage": stage, "partition": pid, "reason": reply_reason(m)}
            self.failures.append(failure)
            log.warning("round %d %s: client %s failed: %s", failure["round"], stage, failure["partition"],
                        failure["reason"])
        if len(ok) < self.min_replies:
            raise FlowerRunError(
                f"round {server_round - 1} {stage}: only {len(ok)} of {len(replies)} clients replied successfully, "
                f"fewer than min_replies={self.min_replies}; failures: "
                f"{[f for f in self.failures if f['round'] == server_round - 1]}")
        return sorted(ok, key=lambda m: int(m.content["metrics"]["partition-id"]))

    def _check_finite(self, server_round: int, replies: list[Message]) -> None:
        """Stop the run at the first reply whose training became non-finite (in partition order)."""
        stopped = [(int(m.content["metrics"]["partition-id"]), text) for m in replies
                   if (text := nonfinite_message(m)) is not None]
        if stopped:
            pid, text = min(stopped)
            raise NonFiniteError(f"{text}; {_kept(server_round - 1)}", server_round - 1)

    def _messages(self, pids: Iterable[int], arrays: ArrayRecord, server_round: int, kind: str,
                  extra: dict[int, dict[str, Any]] | None = None) -> list[Message]:
        out = []
        for pid in pids:
            cfg = ConfigRecord({"server-round": server_round, "round-idx": server_round - 1,
                                **((extra or {}).get(int(pid), {}))})
            out.append(Message(RecordDict({"arrays": arrays, "config": cfg}), dst_node_id=self.node_of[int(pid)],
                               message_type=kind, group_id=str(server_round)))
        return out

    # ------------------------------------------------------------------ Flower's strategy interface
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        chosen = self.sampler.sample(server_round - 1)
        self.entries[server_round] = {"round": server_round - 1, "clients": [int(k) for k in chosen]}
        return self._messages(chosen, arrays, server_round, "train")

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.offset
        replies = list(replies)
        self._check_finite(server_round, replies)
        ok = self._split(server_round, replies, "train", self.entries[server_round]["clients"])
        states = [m.content["arrays"].to_torch_state_dict() for m in ok]
        weights = [int(m.content["metrics"]["num-examples"]) for m in ok]
        trained = [int(m.content["metrics"]["partition-id"]) for m in ok]
        state = fedavg(states, weights)
        try:
            check_aggregated(state, server_round - 1, trained, self.config,
                             None if self.config is None else get_method(self.config.method.name).stage1)
        except NonFiniteError as exc:
            raise NonFiniteError(f"{exc}; {_kept(server_round - 1)}", server_round - 1) from None
        tele = merge_telemetry([{k: float(m.content["metrics"][k]) for k in TELEMETRY_KEYS} for m in ok])
        entry = self.entries[server_round]
        entry["trained"] = trained
        entry["telemetry"] = tele
        return ArrayRecord(state), MetricRecord({k: float(v) for k, v in tele.items()})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        chosen = set(self.entries[server_round]["clients"])
        flags = {pid: {"personalize": pid in chosen} for pid in range(self.federation.num_clients)}
        return self._messages(range(self.federation.num_clients), arrays, server_round, "evaluate", flags)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.offset
        replies = list(replies)
        self._check_finite(server_round, replies)
        ok = self._split(server_round, replies, "evaluate", range(self.federation.num_clients))
        pids = [int(m.content["metrics"]["partition-id"]) for m in ok]
        truths = [self.test_truths[p] for p in pids]
        entry = self.entries[server_round]
        losses = [float(m.content["metrics"]["loss"]) for m in ok if int(m.content["metrics"]["partition-id"])
                  in entry["clients"]]
        entry["personal"] = {"loss": float(np.nanmean(losses)) if np.isfinite(losses).any() else float("nan")}
        for part in ("gm", "pm"):
            preds = [np.asarray(m.content["metrics"][f"{part}-pred"], dtype=np.int64) for m in ok]
            entry["gm_clients" if part == "gm" else "pm"] = clean_json(evaluate_clients(
                preds, truths, self.federation.num_classes, self.federation.groups))
        return MetricRecord({"pm-accuracy": float(entry["pm"]["accuracy"]),
                             "gm-clients-accuracy": float(entry["gm_clients"]["accuracy"])})


def _kept(r: int) -> str:
    """What a Flower run stopped by the finite guard in round ``r`` has done (for its one-line message)."""
    return "no round completed" if r == 0 else "round 0 completed" if r == 1 else f"rounds 0-{r - 1} completed"
