"""The FedPuReL ServerApp: partition discovery, the strategy loop, server-side evaluation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from ..config import RunConfig
from ..data.bank import model_inputs
from ..engine.assembly import assemble, with_method
from ..engine.metrics import evaluate_predictions
from ..engine.results import (
    RESULT_JSON,
    RUNTIME_KEYS,
    RunResult,
    atomic_write,
    clean_json,
    config_differences,
    federation_info,
    summarise,
)
from ..errors import ConfigError
from .client_app import config_from_context
from .strategy import FedPuReLStrategy, FlowerRunError


def discover_partitions(grid: Grid, num_clients: int, timeout: float = 120.0,
                        reply_timeout: float | None = None) -> dict[int, int]:
    """Wait for ``num_clients`` nodes and ask each which partition it holds: ``{node_id: partition_id}``.

    ``timeout`` bounds the wait for the nodes to connect; ``reply_timeout`` (default ``timeout``)
    the wait for their answers, in which each node loads its data (as slow as a training step on a
    busy machine).
    """
    start = time.monotonic()
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() - start > timeout:
            raise FlowerRunError(f"only {len(nodes)} of {num_clients} nodes connected within {timeout:.0f} s")
        time.sleep(0.2)
    wait = timeout if reply_timeout is None else reply_timeout
    replies = list(grid.send_and_receive(
        [Message(RecordDict({}), dst_node_id=n, message_type="query") for n in nodes], timeout=wait))
    if len(replies) < len(nodes):
        raise FlowerRunError(f"only {len(replies)} of {len(nodes)} nodes answered which partition they hold "
                             f"within {wait:.0f} s")
    found = {}
    for m in replies:
        if m.has_error():
            raise FlowerRunError(f"node {m.metadata.src_node_id} could not load its data: {m.error.reason}")
        found[int(m.metadata.src_node_id)] = int(m.content["metrics"]["partition-id"])
    return found


STATUS_JSON = "status.json"


def write_status(out: str | Path, state: str, **fields: Any) -> None:
    """Write ``out/status.json``: ``state`` (running / finished / failed), rounds done, failures, error."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / STATUS_JSON, json.dumps(clean_json({"state": state, **fields}), indent=1).encode())


def result_of(sink: dict[str, Any], engine: str = "flower") -> RunResult:
    """The :class:`RunResult` of a (possibly unfinished) :func:`serve`: its completed rounds and last arrays."""
    info = {**federation_info(sink["federation"]), "engine": engine}
    return RunResult(sink["config"].method.name, sink["config"].to_dict(), sink["history"],
                     summarise(sink["history"]), info, {f"global/{k}": v for k, v in sink["final"].items()})


def check_servable(config: RunConfig) -> None:
    """Refuse a config that Flower nodes cannot run as the simulator does.

    Raises
    ------
    ConfigError
        A method without federated training, or ``stage1.optimizer_scope="shared"`` (one SGD state
        carried from client to client, which separate nodes cannot share).
    """
    if with_method(config)[1].stage1 is None:
        raise ConfigError(f"method.name={config.method.name!r} trains nothing federated; run it with "
                          "`python -m fedpurel_lite run`")
    if config.stage1.optimizer_scope == "shared":
        raise ConfigError("stage1.optimizer_scope='shared' carries one SGD state from client to client, which "
                          "separate Flower nodes cannot share; use optimizer_scope='client-round'")


def saved_run(out: str | Path, config: RunConfig) -> RunResult | None:
    """The result saved in ``out`` by an earlier (interrupted) run of ``config``; ``None`` when there is none.

    Raises
    ------
    ConfigError
        The saved run was made with other settings (``federation.rounds`` aside).
    """
    if not (Path(out) / RESULT_JSON).exists():
        return None
    saved = RunResult.load(out)
    diffs = config_differences(saved.config, config.to_dict(), ignore=(*RUNTIME_KEYS, "federation.rounds"))
    if diffs:
        raise ConfigError(f"cannot resume {out}: it was run with other settings ({'; '.join(diffs)})")
    return saved


def serve(grid: Grid, config: RunConfig, min_replies: int = 1, sink: dict[str, Any] | None = None,
          step_timeout: float = 900.0, out: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run ``config`` on ``grid``; returns (and fills ``sink`` with) history, final arrays and failures.

    ``step_timeout`` bounds every wait for client replies; a client that does not reply in time is left
    out of that step. With ``out`` (deployment: the ServerApp runs in its own process), the result of
    the completed rounds is saved there after every round (``result.json`` + ``final_state.safetensors``,
    as :meth:`RunResult.save`) together with ``status.json``, so a run that stops keeps what it had done;
    ``resume=True`` continues from that saved result (its global tensors, history and failures).
    """
    sink = {} if sink is None else sink
    check_servable(config)
    parts = assemble(config, progress=False)
    config, bank, fed, peft = parts.config, parts.bank, parts.federation, parts.peft.cpu()
    strategy = FedPuReLStrategy(fed, np.asarray(bank.test_labels), config.federation.participation, config.run.seed,
                                min_replies, config=config)
    sink["strategy"] = strategy
    sink.update(federation=fed, config=config, failures=strategy.failures)
    initial = peft.shared_state()
    saved = saved_run(out, config) if resume and out is not None else None
    if saved is not None:
        strategy.resume_from(saved.history)
        initial = {k.removeprefix("global/"): v for k, v in saved.final_state.items()}
        sink["history"], sink["final"] = list(saved.history), initial
    strategy.register_nodes(discover_partitions(grid, fed.num_clients, reply_timeout=step_timeout))
    x_test = torch.as_tensor(model_inputs(bank, "test")).float()
    y_test = np.asarray(bank.test_labels)
    clock = {"t": time.perf_counter()}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # the simulator has no round-0 evaluation either
            return None
        server_round += strategy.offset
        peft.load_shared_state(arrays.to_torch_state_dict())
        with torch.no_grad():
            pred = peft.predict_logits(x_test, config.run.eval_batch_size).argmax(dim=1).numpy()
        gm = evaluate_predictions(y_test, pred, fed.num_classes, fed.groups, fed.train_counts)
        entry = strategy.entries[server_round]
        entry["gm"] = clean_json(gm)
        entry["failures"] = [f for f in strategy.failures if f["round"] == server_round - 1]
        entry["time_s"] = time.perf_counter() - clock["t"]
        clock["t"] = time.perf_counter()
        if out is not None:
            sink["history"] = [clean_json(strategy.entries[r]) for r in sorted(strategy.entries)
                               if "gm" in strategy.entries[r]]
            sink["final"] = arrays.to_torch_state_dict()
            result_of(sink, "flower-deployment").save(out)
            write_status(out, "running", rounds_done=server_round, rounds=config.federation.rounds,
                         failures=strategy.failures)
        return MetricRecord({k: float(gm[k]) for k in ("accuracy", "head", "medium", "tail")})

    torch.set_num_threads(1)
    remaining = config.federation.rounds - strategy.offset
    if remaining > 0:
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=remaining,
                                timeout=step_timeout, evaluate_fn=evaluate_fn)
        sink["final"] = result.arrays.to_torch_state_dict()
    sink["history"] = [clean_json(strategy.entries[r]) for r in sorted(strategy.entries)]
    sink["failures"] = list(strategy.failures)
    if out is not None:
        result_of(sink, "flower-deployment").save(out)
        write_status(out, "finished", rounds_done=len(sink["history"]), rounds=config.federation.rounds,
                     failures=sink["failures"])
    return sink


def build_server_app(config: RunConfig | None = None, min_replies: int = 1,
                     sink: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp for ``config`` (``None``: read it from the run config) that fills ``sink``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config or config_from_context(context)
        rc = dict(context.run_config)
        replies = int(rc.get("min-replies", min_replies))
        out = str(rc.get("out", "")) or None
        state: dict[str, Any] = {} if sink is None else sink
        try:
            serve(grid, cfg, replies, state, float(rc.get("step-timeout", 900.0)), out, bool(rc.get("resume", False)))
        except Exception as exc:
            state["error"] = exc
            if out is not None:
                done = len(state.get("history", []))
                write_status(out, "failed", rounds_done=done, rounds=cfg.federation.rounds,
                             failures=state.get("failures", []), error=f"{type(exc).__name__}: {exc}")
            raise

    return app


app = build_server_app()  # for `flwr run` (config from the run config)
