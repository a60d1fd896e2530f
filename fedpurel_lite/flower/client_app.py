"""The FedPuReL ClientApp: stage 1 in ``train``, stage 2 + predictions in ``evaluate``.

A node finds its data either by ``partition-id`` in its node config (simulation, or deployment
where every node can rebuild the same seeded federation) or by ``client-data``, the path of a
file written by :func:`export_client_data` (deployment: a node holds only its own features).
The private personal branch lives in ``context.state["personal"]`` and never leaves the node. With
``state-dir`` in its node config (deployment), the node also keeps it on its own disk after every
round it trains it, so a node started again (a run resumed after its launcher died) continues from it.

A step whose training becomes non-finite (the finite guard's
:class:`~fedpurel_lite.errors.NonFiniteError`) does not crash the ClientApp: the node replies with
a ``"non-finite"`` record holding the guard's one-line message (round, client, stage, the setting
most likely at fault) and no arrays, and the strategy ends the run with that line
(:func:`nonfinite_reply`, :func:`nonfinite_message`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from safetensors.torch import load_file, save_file

from ..config import RunConfig
from ..engine.assembly import assemble
from ..engine.client import ClientData, make_clients, predict_private, train_private, train_shared
from ..errors import ConfigError, NonFiniteError
from ..methods import Method
from ..peft import PEFTModule

#: ``fault(partition_id, server_round, stage)`` is called before each step; tests use it to make a client fail.
FaultHook = Callable[[int, int, str], None]


def config_from_context(context: Context) -> RunConfig:
    """The RunConfig of a deployed run: ``run_config["config"]`` (TOML path) + ``run_config["overrides"]``."""
    rc = dict(context.run_config)
    cfg = RunConfig.load(rc["config"]) if rc.get("config") else RunConfig()
    overrides = str(rc.get("overrides", "")).split()
    return cfg.with_overrides(overrides) if overrides else cfg


@dataclass
class ClientRuntime:
    """What a node keeps in memory between messages: config, method, data and its modules."""

    config: RunConfig
    method: Method
    data: ClientData
    peft: PEFTModule
    initial_state: dict[str, torch.Tensor]
    personal: torch.nn.Module | None
    prior: torch.Tensor


def _build_runtime(config: RunConfig, node_config: dict[str, Any]) -> ClientRuntime:
    """Assemble the node's run (received and sent arrays stay on the CPU; the work runs on the device)."""
    if node_config.get("client-data"):
        data, bank = load_client_data(str(node_config["client-data"]))
        parts = assemble(config, bank=bank, progress=False, with_federation=False)
        prior = torch.as_tensor(bank.train_counts, dtype=torch.float32, device=parts.device)
    else:
        parts = assemble(config, progress=False)
        pid = int(node_config["partition-id"])
        k = parts.federation.num_clients
        if not 0 <= pid < k:
            raise ConfigError(f"partition-id {pid} outside 0..{k - 1} (federation.num_clients={k})")
        data = parts.clients()[pid]
        prior = parts.class_prior()
    return ClientRuntime(parts.config, parts.method, data.to(parts.device), parts.peft, parts.peft.shared_state(),
                         parts.new_personal(), prior)


_RUNTIMES: dict[str, ClientRuntime] = {}


def runtime_for(config: RunConfig, node_config: dict[str, Any]) -> ClientRuntime:
    """The node's runtime, built once per process and configuration."""
    key = json.dumps([config.to_dict(), {k: str(v) for k, v in node_config.items()}], sort_keys=True)
    if key not in _RUNTIMES:
        _RUNTIMES[key] = _build_runtime(config, node_config)
    return _RUNTIMES[key]


#: the record of a reply whose training became non-finite (``message``: the finite guard's line, ``round``)
NONFINITE = "non-finite"


def nonfinite_reply(msg: Message, rt: ClientRuntime, exc: NonFiniteError, round_idx: int) -> Message:
    """The reply of a step stopped by the finite guard: its one-line message, no arrays.

    Parameters
    ----------
    msg : Message
        The message being answered.
    rt : ClientRuntime
        The node's runtime (its partition id and size go into the metrics, as in a normal reply).
    exc : NonFiniteError
        The guard's error, already naming the round, the client, the stage and the likely setting.
    round_idx : int
        The round of the step.
    """
    metrics = MetricRecord({"num-examples": rt.data.n, "partition-id": rt.data.client_id})
    record = ConfigRecord({"message": str(exc), "round": int(round_idx)})
    return Message(RecordDict({"metrics": metrics, NONFINITE: record}), reply_to=msg)


def nonfinite_message(reply: Message) -> str | None:
    """The finite guard's one-line message of a reply from :func:`nonfinite_reply`; ``None`` for any other reply."""
    if reply.has_error() or NONFINITE not in reply.content:
        return None
    return str(reply.content[NONFINITE]["message"])


def train_step(msg: Message, rt: ClientRuntime) -> Message:
    """Stage 1 on this client from the received global arrays; reply with its shared tensors.

    A non-finite loss, gradient or trained state gives the :func:`nonfinite_reply` instead.
    """
    round_idx = int(msg.content["config"]["round-idx"])
    try:
        state, tele = train_shared(rt.peft, msg.content["arrays"].to_torch_state_dict(), rt.data, rt.config,
                                   rt.method, round_idx, rt.prior)
    except NonFiniteError as exc:
        return nonfinite_reply(msg, rt, exc, round_idx)
    metrics = {"num-examples": rt.data.n, "partition-id": rt.data.client_id,
               **{k: float(v) for k, v in tele.items()}}
    arrays = ArrayRecord({k: v.detach().cpu().contiguous() for k, v in state.items()})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)


PERSONAL_KEEP = 2  # newest private-branch files kept on a node (one may belong to an unfinished round)


def save_personal(state_dir: str | Path, round_idx: int, state: dict[str, torch.Tensor]) -> Path:
    """Write the node's private branch after round ``round_idx`` (atomically); keep the newest two."""
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"personal_round_{int(round_idx):05d}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    for old in sorted(folder.glob("personal_round_*.safetensors"))[:-PERSONAL_KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_personal(state_dir: str | Path, before_round: int) -> dict[str, torch.Tensor] | None:
    """The newest private branch saved in ``state_dir`` before round ``before_round`` (``None``: none)."""
    found = [f for f in sorted(Path(state_dir).glob("personal_round_*.safetensors"))
             if int(f.stem.rsplit("_", 1)[1]) < int(before_round)]
    return load_file(str(found[-1])) if found else None


def evaluate_step(msg: Message, context: Context, rt: ClientRuntime) -> Message:
    """Stage 2 (if this client was sampled) against the new global model, then predict the test split.

    A non-finite stage 2 gives the :func:`nonfinite_reply` instead (the stored private branch is kept).
    """
    cfg = msg.content["config"]
    round_idx = int(cfg["round-idx"])
    state_dir = str(context.node_config.get("state-dir", "")) or None
    rt.peft.load_shared_state(msg.content["arrays"].to_torch_state_dict())
    rt.peft.eval()
    if "personal" in context.state:
        previous = context.state["personal"].to_torch_state_dict()
    else:  # a node started again: its own saved branch, if any
        previous = load_personal(state_dir, round_idx) if state_dir else None
    loss = float("nan")
    if rt.personal is not None and bool(cfg["personalize"]):
        try:
            previous, loss = train_private(rt.personal, rt.peft, previous, rt.initial_state, rt.data, rt.config,
                                           rt.method, round_idx)
        except NonFiniteError as exc:
            return nonfinite_reply(msg, rt, exc, round_idx)
        context.state["personal"] = ArrayRecord({k: v.detach().cpu().contiguous() for k, v in previous.items()})
        if state_dir:
            save_personal(state_dir, round_idx, previous)
    with torch.no_grad():
        global_logits = rt.peft.predict_logits(rt.data.x_test, rt.config.run.eval_batch_size)
    gm_pred = global_logits.argmax(dim=1).cpu().numpy()
    pm_pred = gm_pred if rt.personal is None else predict_private(
        rt.personal, rt.peft, previous, rt.initial_state, rt.data.x_test, global_logits, rt.config, rt.method)
    metrics = {"num-examples": int(len(rt.data.y_test)), "partition-id": rt.data.client_id, "loss": loss,
               "gm-pred": [int(v) for v in gm_pred], "pm-pred": [int(v) for v in pm_pred]}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def build_client_app(config: RunConfig | None = None, fault: FaultHook | None = None) -> ClientApp:
    """A ClientApp for ``config`` (or, when ``None``, the config named in the run config).

    Parameters
    ----------
    config : RunConfig, optional
        Fixed configuration (simulation); deployed apps read ``run_config`` instead.
    fault : callable, optional
        ``fault(partition_id, server_round, stage)`` hook called before each step (failure tests).
    """
    app = ClientApp()

    def runtime(context: Context) -> ClientRuntime:
        torch.set_num_threads(1)  # small tensors: one thread is fastest (and matches the simulator)
        return runtime_for(config or config_from_context(context), dict(context.node_config))

    def check_fault(rt: ClientRuntime, msg: Message, stage: str) -> None:
        if fault is not None:
            fault(rt.data.client_id, int(msg.content["config"]["server-round"]), stage)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        rt = runtime(context)
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": rt.data.client_id,
                                                            "num-examples": rt.data.n})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        rt = runtime(context)
        check_fault(rt, msg, "train")
        return train_step(msg, rt)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        rt = runtime(context)
        check_fault(rt, msg, "evaluate")
        return evaluate_step(msg, context, rt)

    return app


# ----------------------------------------------------------------------------- deployment data files
def export_client_data(config: RunConfig, out_dir: str | Path, bank: Any = None) -> list[Path]:
    """Write one ``client_<k>.safetensors`` per client: a deployed node needs only its own file.

    Each file holds the client's training features, labels, teacher logits, its test split, and
    the shared context a node needs to build its PEFT (zero-shot text features, logit scale, the
    global class counts) -- no other client's data.
    """
    parts = assemble(config, bank=bank)
    bank, fed = parts.bank, parts.federation
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for data in make_clients(bank, fed):
        path = out / f"client_{data.client_id}.safetensors"
        tensors = {**data.to_tensors(), "text_features": torch.as_tensor(bank.text_features).float().contiguous(),
                   "train_counts": torch.as_tensor(fed.train_counts)}
        save_file(tensors, str(path), metadata={"logit_scale": repr(float(bank.logit_scale)),
                                                "class_names": json.dumps(list(bank.class_names))})
        paths.append(path)
    return paths


def load_client_data(path: str) -> tuple[ClientData, SimpleNamespace]:
    """Read a file of :func:`export_client_data`: the client's data and a small bank-like context."""
    from safetensors import safe_open

    tensors = load_file(path)
    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata()
    ctx = SimpleNamespace(text_features=tensors["text_features"], logit_scale=float(meta["logit_scale"]),
                          class_names=json.loads(meta["class_names"]), train_counts=tensors["train_counts"].numpy())
    return ClientData.from_tensors(tensors), ctx


app = build_client_app()  # for `flwr run` (config from the run config)
