"""The round simulator: stage 1 -> FedAvg -> stage 2 -> evaluation, seeded, checkpointed, resumable.

One round ``t`` (the reference loop):

1. sample clients (round 0: all; then ``max(int(frac K), 1)``, seeded by ``(seed, t)``);
2. stage 1: every sampled client starts from the global shared PEFT state and runs
   :func:`~fedpurel_lite.engine.local.local_train` with the method's objective; FedAvg weighted by
   client size;
3. stage 2: every sampled client trains its personal branch against the frozen new global model
   (:mod:`~fedpurel_lite.engine.personalize`);
4. evaluation: the global model on the balanced test set (``gm``), the global model on every
   client's test split (``gm_clients``, the FedAvg-style baseline of the bias-transfer claim) and
   every client's personal model on its split (``pm``).

After the last round, :func:`final_analysis` records the arrays of the bias-transfer analysis
(predictions, confidences, zero-shot per-class accuracy, client training counts) in
``RunResult.analysis``.

Randomness: every client-round draws its batches from its own generator seeded by
``(seed, round, client, stage)``, and client sampling is stateless, so the same seed gives the
same history, and a resumed run continues bit-for-bit (no global RNG state is used or needed).
The run is set up by :func:`~fedpurel_lite.engine.assembly.assemble`; its working state lives in one
:class:`RoundState` whose methods are the round's steps (:meth:`RoundState.play_round`,
:meth:`RoundState.evaluate`, :meth:`RoundState.final_analysis`); a verified checkpoint
(:mod:`~fedpurel_lite.engine.checkpoint`) of :meth:`RoundState.packed_state` is written after every round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..data.bank import model_inputs
from ..data.partition import Federation
from ..errors import NonFiniteError
from ..methods import Method
from ..peft import PEFTS, PEFTModule
from .aggregate import ClientSampler, fedavg
from .analysis import final_analysis, predict_global
from .assembly import Assembly, assemble
from .checkpoint import Checkpoint, check_resumable, clear_checkpoints, find_resume_point, save_checkpoint
from .client import ClientData, predict_private, train_private, train_shared
from .compare import compare
from .finite import check_tensors, first_nonfinite, located
from .local import merge_telemetry
from .metrics import evaluate_clients, evaluate_predictions
from .personalize import branch_logits, branch_only, load_state, personal_plus_global
from .results import RunResult, clean_json, federation_info, summarise
from .workers import ClientPool, IntraOpThreads, resolve_workers

__all__ = ["RoundState", "Slot", "aggregate_round", "compare", "final_analysis", "pack_state", "predict_global", "run",
           "unpack_state"]

#: one worker's working copies: a shared PEFT (stage 1) and a personal module (stage 2, ``None`` without one)
Slot = tuple[PEFTModule, nn.Module | None]
#: a client's personal state: its trainable tensors by name
State = dict[str, Tensor]


@dataclass
class RoundState:
    """A simulated run's working state, carried from round to round; its methods are the round's steps.

    Built once per run (:meth:`start`) and updated in place: stage 1 writes the global PEFT,
    stage 2 the clients' personal states. Everything a step needs is here, so a step takes the
    round index and the sampled clients only.

    Attributes
    ----------
    config : RunConfig
        The config with the method's overrides applied.
    method : Method
    peft : PEFTModule
        The global shared PEFT (the aggregate of the last round).
    federation : Federation
    clients : list of ClientData
        Every client's data on the run's device.
    prior : Tensor
        The global long-tailed class counts (logit adjustment's prior).
    initial_state : dict
        The PEFT's initial (zero-shot) shared state.
    x_test : Tensor
        The balanced test set's PEFT inputs on the run's device.
    y_test : numpy.ndarray
        Its labels.
    pool : ClientPool
        The worker threads and their :data:`Slot` copies.
    personal_states : dict
        Every client's personal state by client id (a client appears after its first stage 2).
    kept : dict
        The personal branch logits of every client on its test split, with the state they came
        from (reused while the state is unchanged; see
        :func:`~fedpurel_lite.engine.personalize.branch_only`).
    """

    config: RunConfig
    method: Method
    peft: PEFTModule
    federation: Federation
    clients: list[ClientData]
    prior: Tensor
    initial_state: State
    x_test: Tensor
    y_test: np.ndarray
    pool: ClientPool[Slot]
    personal_states: dict[int, State] = field(default_factory=dict)
    kept: dict[int, tuple[State, Tensor]] = field(default_factory=dict)

    @classmethod
    def start(cls, parts: Assembly, pool: ClientPool[Slot], initial_state: State,
              personal_states: dict[int, State] | None = None) -> RoundState:
        """The state of a run assembled as ``parts`` (``personal_states``: restored from a checkpoint)."""
        if parts.federation is None:
            raise ValueError("a simulated run needs its federation")
        x_test = torch.as_tensor(model_inputs(parts.bank, "test")).float().to(parts.device)
        return cls(parts.config, parts.method, parts.peft, parts.federation, parts.clients(), parts.class_prior(),
                   initial_state, x_test, np.asarray(parts.bank.test_labels), pool, dict(personal_states or {}))

    # ------------------------------------------------------------------ checkpoint
    def packed_state(self) -> dict[str, Tensor]:
        """The global and every personal state as one flat ``{name: tensor}`` dict (checkpoint, result)."""
        return pack_state(self.peft, self.personal_states)

    # ------------------------------------------------------------------ one round
    def play_round(self, r: int, chosen: np.ndarray) -> dict[str, Any]:
        """Stage 1 + aggregation + stage 2 of round ``r`` on the clients ``chosen`` (in place).

        The client steps are :func:`fedpurel_lite.engine.client.train_shared` / ``train_private``, the same
        functions the Flower ClientApp runs, each on a worker's own module copies.
        """
        entry: dict[str, Any] = {"round": r, "clients": [int(k) for k in chosen]}
        entry["telemetry"] = merge_telemetry(self.stage1(r, chosen))
        losses = self.stage2(r, chosen)
        entry["personal"] = {"loss": float(np.mean(losses)) if losses else float("nan")}
        return entry

    def stage1(self, r: int, chosen: np.ndarray) -> list[dict[str, float]]:
        """Local training of the clients ``chosen`` from the global state, then FedAvg into it; their telemetry.

        Without a stage-1 objective nothing trains. The global PEFT is in eval mode afterwards.
        """
        teles: list[dict[str, float]] = []
        if self.method.stage1 is not None:
            g_state = self.peft.shared_state()
            out = self.pool.map(lambda slot, k: train_shared(slot[0], g_state, self.clients[k], self.config,
                                                             self.method, r, self.prior), chosen)
            teles = [tele for _, tele in out]
            self.peft.load_shared_state(self.aggregate(r, chosen, [state for state, _ in out]))
        self.peft.eval()
        return teles

    def aggregate(self, r: int, chosen: np.ndarray, states: list[State]) -> State:
        """FedAvg of the clients' ``states`` weighted by their sizes, checked finite.

        Raises
        ------
        NonFiniteError
            The aggregate is not finite (naming the round, the clients and the likely setting).
        """
        return aggregate_round(states, [self.clients[k].n for k in chosen], r, chosen, self.config, self.method)

    def stage2(self, r: int, chosen: np.ndarray) -> list[float]:
        """Personal training of the clients ``chosen`` against the frozen global model; their losses."""
        if self.method.personal is None:
            return []
        out = self.pool.map(lambda slot, k: train_private(personal_module(slot), self.peft,
                                                          self.personal_states.get(int(k)), self.initial_state,
                                                          self.clients[k], self.config, self.method, r), chosen)
        losses = []
        for k, (state, loss) in zip(chosen, out, strict=True):
            self.personal_states[int(k)] = state
            losses.append(loss)
        return losses

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Global model on the balanced test set and on the client splits; personal models on the splits."""
        config, fed, x_test = self.config, self.federation, self.x_test
        logits = predict_global(self.peft, x_test, config.run.eval_batch_size, self.pool)
        if first_nonfinite([("logits", logits)]) is not None:  # located by the caller
            raise NonFiniteError("its logits on the test set are not finite")
        pred = logits.argmax(dim=1).cpu().numpy()
        test_y_clients = [self.y_test[t] for t in fed.client_test]
        gm = evaluate_predictions(self.y_test, pred, fed.num_classes, fed.groups, fed.train_counts)
        gm_client_preds = [pred[t] for t in fed.client_test]
        out = {"gm": clean_json(gm), "gm_clients": clean_json(evaluate_clients(gm_client_preds, test_y_clients,
                                                                                 fed.num_classes, fed.groups))}
        if self.method.personal is None:
            out["pm"] = out["gm_clients"]
            return out
        preds = self.pool.map(lambda slot, k: self._personal_predictions(slot, k, logits), range(fed.num_clients))
        out["pm"] = clean_json(evaluate_clients(preds, test_y_clients, fed.num_classes, fed.groups))
        return out

    def _personal_predictions(self, slot: Slot, k: int, logits: Tensor) -> np.ndarray:
        """Client ``k``'s personal-model predictions on its test split (``logits``: the global model's)."""
        kind, peft, personal = self.method.personal, self.peft, personal_module(slot)
        if kind is None:
            raise ValueError(f"method {self.method.name!r} has no personal model")
        idx = torch.as_tensor(self.federation.client_test[k], dtype=torch.long, device=self.x_test.device)
        state = self.personal_states.get(k)
        if not branch_only(kind, peft) or state is None:
            return predict_private(personal, peft, state, self.initial_state, self.x_test[idx], logits[idx],
                                   self.config, self.method)
        # a client not trained this round has the same branch logits as before: reuse them (bit-identical)
        if k not in self.kept or self.kept[k][0] is not state:
            load_state(personal, state)
            self.kept[k] = (state, branch_logits(kind, personal, peft, self.x_test[idx],
                                                 self.config.run.eval_batch_size))
        return personal_plus_global(kind, logits[idx], self.kept[k][1]).argmax(dim=1).cpu().numpy()

    def final_analysis(self, bank: Any) -> dict[str, Tensor]:
        """The arrays of the bias-transfer analysis from the final state
        (:func:`~fedpurel_lite.engine.analysis.final_analysis`)."""
        return final_analysis(self, bank)


def aggregate_round(states: list[State], weights: list[int], r: int, chosen: Sequence[int] | np.ndarray,
                    config: RunConfig, method: Method) -> State:
    """FedAvg of the sampled clients' shared states, checked finite (the simulator's and a Flower server's step).

    Raises
    ------
    NonFiniteError
        The aggregate is not finite (naming the round, the clients and the likely setting).
    """
    state = fedavg(states, weights)
    try:
        check_tensors(state, "the aggregated state's tensor")
    except NonFiniteError as exc:
        raise located(exc, r, f"clients {', '.join(str(int(k)) for k in chosen)}", 3, config,
                      method.stage1) from None
    return state


def personal_module(slot: Slot) -> nn.Module:
    """The personal module of a worker's slot (present whenever the method has a personal stage)."""
    if slot[1] is None:
        raise ValueError("this run's method has no personal module")
    return slot[1]


def pack_state(peft: PEFTModule, personal_states: dict[int, State]) -> dict[str, Tensor]:
    """``global/<name>`` tensors of ``peft`` and ``personal/<client>/<name>`` of every personal state."""
    out = {f"global/{n}": t for n, t in peft.shared_state().items()}
    for k, state in personal_states.items():
        out.update({f"personal/{k}/{n}": t for n, t in state.items()})
    return out


def unpack_state(tensors: dict[str, Tensor]) -> tuple[State, dict[int, State]]:
    """Inverse of :func:`pack_state`: the global state and the personal states by client."""
    glob: State = {}
    personal: dict[int, State] = {}
    for key, t in tensors.items():
        head, rest = key.split("/", 1)
        if head == "global":
            glob[rest] = t
        else:
            k, name = rest.split("/", 1)
            personal.setdefault(int(k), {})[name] = t
    return glob, personal


def run(
    config: RunConfig,
    bank: Any = None,
    backbone: Any = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    federation: Federation | None = None,
    on_round_end: Callable[[int, dict[str, Any]], None] | None = None,
    resume_round: int | None = None,
) -> RunResult:
    """Simulate one federated run of ``config.method.name``.

    Parameters
    ----------
    config : RunConfig
        The protocol; ``method.name`` picks the method (see :mod:`fedpurel_lite.methods`).
    bank : FeatureBank-like, optional
        Cached features (``train_features``, ``train_labels``, ``test_features``, ``test_labels``,
        ``text_features``, ``logit_scale``, ``class_names``, ``class_order``); loaded from the
        config when omitted.
    backbone : Backbone-like, optional
        Reused when the PEFT needs the backbone (loaded from the config when omitted).
    progress : bool
        Show a tqdm bar over rounds.
    checkpoint_dir : path, optional
        Write a checkpoint after every round here (a run that does not resume clears the folder's
        old round files first).
    resume : bool
        Continue from the newest complete checkpoint in ``checkpoint_dir`` (same method and
        settings; ``federation.rounds`` may be larger).
    federation : Federation, optional
        Reuse a federation (must be the one ``build_federation`` gives for this config).
    on_round_end : callable, optional
        ``f(round, history_entry)`` after each round's checkpoint (hooks, tests).
    resume_round : int, optional
        With ``resume``: continue from this completed round instead of the newest.

    Notes
    -----
    On the CPU every client step uses one torch thread (``run.num_threads`` overrides), which is
    fastest for these small tensors, and ``run.workers`` clients of a round train at once
    (:class:`~fedpurel_lite.engine.workers.ClientPool`; the numbers do not depend on either).

    Returns
    -------
    RunResult

    Raises
    ------
    UserError
        A failed pre-flight check, a missing or damaged checkpoint, or a checkpoint of another run.
    """
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    parts = assemble(config, bank, backbone, federation, progress)
    point = None
    if checkpoint_dir is not None and resume:
        point = find_resume_point(checkpoint_dir, resume_round)
        check_resumable(point, parts.config.to_dict(), parts.method.name)
    elif checkpoint_dir is not None:
        clear_checkpoints(checkpoint_dir)
    threads = parts.config.run.num_threads or (1 if parts.device.type == "cpu" else None)
    with IntraOpThreads(threads):
        return _run(parts, progress, checkpoint_dir, point, on_round_end)


def _run(parts: Assembly, progress: bool, checkpoint_dir: str | Path | None, point: Checkpoint | None,
         on_round_end: Callable[[int, dict[str, Any]], None] | None) -> RunResult:
    from tqdm.auto import tqdm

    config, method, peft, device, fed = parts.config, parts.method, parts.peft, parts.device, parts.federation
    assert fed is not None, "a simulated run needs its federation"
    initial_state = peft.shared_state()
    sampler = ClientSampler(fed.num_clients, config.federation.participation, config.run.seed)
    personal_states: dict[int, State] = {}
    history: list[dict[str, Any]] = []
    start = 0
    if point is not None:
        glob, personal_states = unpack_state(point.tensors)
        peft.load_shared_state({n: t.to(device) for n, t in glob.items()})
        personal_states = {k: {n: t.to(device) for n, t in s.items()} for k, s in personal_states.items()}
        history = point.history
        start = point.round + 1

    def make_slot() -> Slot:
        return peft.clone(), parts.new_personal()

    rounds = config.federation.rounds
    workers = resolve_workers(config.run.workers, device, PEFTS.get(config.method.peft).concurrent_clients)
    with ClientPool(workers, make_slot) as pool:
        state = RoundState.start(parts, pool, initial_state, personal_states)
        bar = tqdm(range(start, rounds), disable=not progress, desc=method.name, unit="round", initial=start,
                   total=rounds)
        for r in bar:
            t0 = time.perf_counter()
            chosen = sampler.sample(r)
            try:
                entry = state.play_round(r, chosen)
                entry.update(state.evaluate())
            except NonFiniteError as exc:
                bar.close()
                if exc.round_idx is None:
                    exc = located(exc, r, None, 4, config, method.stage1)
                raise NonFiniteError(f"{exc}; {_kept_text(checkpoint_dir, r)}", r) from None
            entry["time_s"] = time.perf_counter() - t0
            entry = clean_json(entry)
            history.append(entry)
            if checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir, r, config.to_dict(), method.name, history, state.packed_state())
            bar.set_postfix(gm=f"{entry['gm']['accuracy']:.1f}", pm=f"{entry['pm']['accuracy']:.1f}")
            if on_round_end is not None:
                on_round_end(r, entry)
        bar.close()
        analysis = state.final_analysis(parts.bank)
    return RunResult(method.name, config.to_dict(), history, summarise(history), federation_info(fed),
                     {k: v.cpu() for k, v in state.packed_state().items()}, analysis)


def _kept_text(checkpoint_dir: str | Path | None, r: int) -> str:
    """What a run stopped by the finite guard in round ``r`` leaves behind (for its one-line message)."""
    if r == 0:
        return "no round completed and nothing was written"
    if checkpoint_dir is None:
        return f"nothing was written (rounds 0-{r - 1} completed)"
    return f"nothing was written as a result; the checkpoint of round {r - 1} in {checkpoint_dir} is kept"
