"""The round simulator: stage 1 -> FedAvg -> stage 2 -> evaluation, seeded, checkpointed, resumable.

One round ``t`` (the reference loop):

1. sample clients (round 0: all; then ``max(int(frac K), 1)``, seeded by ``(seed, t)``);
2. stage 1: every sampled client starts from the global shared PEFT state and runs
   :func:`~fedpurel_lite.local.local_train` with the method's objective; FedAvg weighted by
   client size;
3. stage 2: every sampled client trains its personal branch against the frozen new global model
   (:mod:`~fedpurel_lite.personalize`);
4. evaluation: the global model on the balanced test set (``gm``), the global model on every
   client's test split (``gm_clients``, the FedAvg-style baseline of the bias-transfer claim) and
   every client's personal model on its split (``pm``).

After the last round, :func:`final_analysis` records the arrays of the bias-transfer analysis
(predictions, confidences, zero-shot per-class accuracy, client training counts) in
``RunResult.analysis``.

Randomness: every client-round draws its batches from its own generator seeded by
``(seed, round, client, stage)``, and client sampling is stateless, so the same seed gives the
same history, and a resumed run continues bit-for-bit (no global RNG state is used or needed).
The run is set up by :func:`~fedpurel_lite.assembly.assemble`; a verified checkpoint
(:mod:`~fedpurel_lite.checkpoint`) is written after every round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .aggregate import ClientSampler, fedavg
from .assembly import Assembly, assemble
from .checkpoint import check_resumable, clear_checkpoints, find_resume_point, save_checkpoint
from .client import ClientData, predict_private, train_private, train_shared
from .config import RunConfig
from .errors import NonFiniteError
from .finite import check_tensors, first_nonfinite, located
from .local import merge_telemetry
from .methods import Method, get_method
from .metrics import evaluate_clients, evaluate_predictions, per_class_accuracy
from .partition import Federation, count_matrix
from .peft import PEFTS, PEFTModule
from .personalize import PERSONALIZATIONS, branch_logits, branch_only, load_state, predict_personal, start_state
from .results import RunResult, clean_json, federation_info, summarise
from .token_bank import model_inputs
from .workers import ClientPool, IntraOpThreads, resolve_workers


def _pack_state(peft: PEFTModule, personal_states: dict[int, dict[str, Tensor]]) -> dict[str, Tensor]:
    out = {f"global/{n}": t for n, t in peft.shared_state().items()}
    for k, state in personal_states.items():
        out.update({f"personal/{k}/{n}": t for n, t in state.items()})
    return out


def _unpack_state(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[int, dict[str, Tensor]]]:
    glob: dict[str, Tensor] = {}
    personal: dict[int, dict[str, Tensor]] = {}
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
    on_round_end: Callable[[int, dict], None] | None = None,
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
    (:class:`~fedpurel_lite.workers.ClientPool`; the numbers do not depend on either).

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
    if resume:
        point = find_resume_point(checkpoint_dir, resume_round)
        check_resumable(point, parts.config.to_dict(), parts.method.name)
    elif checkpoint_dir is not None:
        clear_checkpoints(checkpoint_dir)
    threads = parts.config.run.num_threads or (1 if parts.device.type == "cpu" else None)
    with IntraOpThreads(threads):
        return _run(parts, progress, checkpoint_dir, point, on_round_end)


def _run(parts: Assembly, progress: bool, checkpoint_dir: str | Path | None, point: Any,
         on_round_end: Callable[[int, dict], None] | None) -> RunResult:
    from tqdm.auto import tqdm

    config, method, peft, fed, device = parts.config, parts.method, parts.peft, parts.federation, parts.device
    bank = parts.bank
    test_labels_np = np.asarray(bank.test_labels)
    x_test = torch.as_tensor(model_inputs(bank, "test")).float().to(device)
    initial_state = peft.shared_state()
    clients = parts.clients()
    prior = parts.class_prior()
    test_y_clients = [test_labels_np[t] for t in fed.client_test]
    sampler = ClientSampler(fed.num_clients, config.federation.participation, config.run.seed)
    personal_states: dict[int, dict[str, Tensor]] = {}
    kept: dict[int, tuple[dict, Tensor]] = {}
    history: list[dict] = []
    start = 0
    if point is not None:
        glob, personal_states = _unpack_state(point.tensors)
        peft.load_shared_state({n: t.to(device) for n, t in glob.items()})
        personal_states = {k: {n: t.to(device) for n, t in s.items()} for k, s in personal_states.items()}
        history = point.history
        start = point.round + 1

    def make_slot() -> tuple[PEFTModule, torch.nn.Module | None]:
        """One worker's working copies: a shared PEFT (stage 1) and a personal module (stage 2)."""
        return peft.clone(), parts.new_personal()

    rounds = config.federation.rounds
    workers = resolve_workers(config.run.workers, device, PEFTS.get(config.method.peft).concurrent_clients)
    with ClientPool(workers, make_slot) as pool:
        bar = tqdm(range(start, rounds), disable=not progress, desc=method.name, unit="round", initial=start,
                   total=rounds)
        for r in bar:
            t0 = time.perf_counter()
            chosen = sampler.sample(r)
            try:
                entry = _one_round(r, chosen, config, method, peft, pool, personal_states, clients, prior,
                                   initial_state)
                entry.update(_evaluate(config, method, peft, pool, personal_states, initial_state, x_test,
                                       test_labels_np, test_y_clients, fed, kept))
            except NonFiniteError as exc:
                bar.close()
                if exc.round_idx is None:
                    exc = located(exc, r, None, 4, config, method.stage1)
                raise NonFiniteError(f"{exc}; {_kept_text(checkpoint_dir, r)}", r) from None
            entry["time_s"] = time.perf_counter() - t0
            entry = clean_json(entry)
            history.append(entry)
            if checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir, r, config.to_dict(), method.name, history,
                                _pack_state(peft, personal_states))
            bar.set_postfix(gm=f"{entry['gm']['accuracy']:.1f}", pm=f"{entry['pm']['accuracy']:.1f}")
            if on_round_end is not None:
                on_round_end(r, entry)
        bar.close()
        analysis = final_analysis(parts, pool, personal_states, initial_state, x_test)
    return RunResult(method.name, config.to_dict(), history, summarise(history), federation_info(fed),
                     {k: v.cpu() for k, v in _pack_state(peft, personal_states).items()}, analysis)


def _kept_text(checkpoint_dir: str | Path | None, r: int) -> str:
    """What a run stopped by the finite guard in round ``r`` leaves behind (for its one-line message)."""
    if r == 0:
        return "no round completed and nothing was written"
    if checkpoint_dir is None:
        return f"nothing was written (rounds 0-{r - 1} completed)"
    return f"nothing was written as a result; the checkpoint of round {r - 1} in {checkpoint_dir} is kept"


def _one_round(r: int, chosen: np.ndarray, config: RunConfig, method: Method, peft: PEFTModule, pool: ClientPool,
               personal_states: dict[int, dict[str, Tensor]], clients: list[ClientData], prior: Tensor,
               initial_state: dict[str, Tensor]) -> dict:
    """Stage 1 + aggregation + stage 2 of round ``r`` on the clients ``chosen`` (in place).

    The client steps are :func:`fedpurel_lite.client.train_shared` / ``train_private``, the same
    functions the Flower ClientApp runs, each on a worker's own module copies.
    """
    entry: dict[str, Any] = {"round": r, "clients": [int(k) for k in chosen]}
    teles = []
    if method.stage1 is not None:
        g_state = peft.shared_state()
        out = pool.map(lambda slot, k: train_shared(slot[0], g_state, clients[k], config, method, r, prior), chosen)
        teles = [tele for _, tele in out]
        state = fedavg([state for state, _ in out], [clients[k].n for k in chosen])
        try:
            check_tensors(state, "the aggregated state's tensor")
        except NonFiniteError as exc:
            raise located(exc, r, f"clients {', '.join(str(int(k)) for k in chosen)}", 3, config,
                          method.stage1) from None
        peft.load_shared_state(state)
    peft.eval()
    entry["telemetry"] = merge_telemetry(teles)
    losses = []
    if method.personal is not None:
        out = pool.map(lambda slot, k: train_private(slot[1], peft, personal_states.get(int(k)), initial_state,
                                                     clients[k], config, method, r), chosen)
        for k, (state, loss) in zip(chosen, out, strict=True):
            personal_states[int(k)] = state
            losses.append(loss)
    entry["personal"] = {"loss": float(np.mean(losses)) if losses else float("nan")}
    return entry


@torch.no_grad()
def predict_global(peft: PEFTModule, x: Tensor, batch_size: int, pool: ClientPool) -> Tensor:
    """``peft.predict_logits(x, batch_size)``, its batches spread over the pool's threads (bit-identical)."""
    if pool.n == 1:
        return peft.predict_logits(x, batch_size)
    cls = peft.class_features()
    chunks = [x[i:i + batch_size] for i in range(0, x.shape[0], batch_size)]
    out = pool.map(lambda slot, chunk: peft.predict_logits(chunk, batch_size, cls), chunks)
    return torch.cat(out) if out else peft.predict_logits(x, batch_size, cls)


@torch.no_grad()
def _evaluate(config: RunConfig, method: Method, peft: PEFTModule, pool: ClientPool,
              personal_states: dict[int, dict[str, Tensor]], initial_state: dict[str, Tensor], x_test: Tensor,
              y_test: np.ndarray, test_y_clients: list[np.ndarray], fed: Federation,
              kept: dict[int, tuple[dict, Tensor]]) -> dict:
    """Global model on the balanced test set and on the client splits; personal models on the splits.

    ``kept`` holds the personal branch logits of every client by the state they came from, across
    rounds (see :func:`~fedpurel_lite.personalize.branch_only`).
    """
    logits = predict_global(peft, x_test, config.run.eval_batch_size, pool)
    if first_nonfinite([("logits", logits)]) is not None:  # located by the caller
        raise NonFiniteError("its logits on the test set are not finite")
    pred = logits.argmax(dim=1).cpu().numpy()
    gm = evaluate_predictions(y_test, pred, fed.num_classes, fed.groups, fed.train_counts)
    gm_client_preds = [pred[t] for t in fed.client_test]
    out = {"gm": clean_json(gm),
           "gm_clients": clean_json(evaluate_clients(gm_client_preds, test_y_clients, fed.num_classes, fed.groups))}
    if method.personal is None:
        out["pm"] = out["gm_clients"]
        return out

    kind = method.personal
    keep = branch_only(kind, peft)
    residual = PERSONALIZATIONS.get(kind).residual

    def predict(slot: tuple[PEFTModule, torch.nn.Module], k: int) -> np.ndarray:
        idx = torch.as_tensor(fed.client_test[k], dtype=torch.long, device=x_test.device)
        state = personal_states.get(k)
        if not keep or state is None:
            return predict_private(slot[1], peft, state, initial_state, x_test[idx], logits[idx], config, method)
        # a client not trained this round has the same branch logits as before: reuse them (bit-identical)
        if k not in kept or kept[k][0] is not state:
            load_state(slot[1], state)
            kept[k] = (state, branch_logits(kind, slot[1], peft, x_test[idx], config.run.eval_batch_size))
        own = kept[k][1]
        return (logits[idx] + own if residual else own).argmax(dim=1).cpu().numpy()

    preds = pool.map(predict, range(fed.num_clients))
    out["pm"] = clean_json(evaluate_clients(preds, test_y_clients, fed.num_classes, fed.groups))
    return out


@torch.no_grad()
def final_analysis(parts: Assembly, pool: ClientPool, personal_states: dict[int, dict[str, Tensor]],
                   initial_state: dict[str, Tensor], x_test: Tensor) -> dict[str, Tensor]:
    """The arrays of the bias-transfer analysis, from the run's final state (``RunResult.analysis``).

    On the balanced test set, for the global model (``gm_``) and zero-shot CLIP (``zs_``: the
    bank's text features at its logit scale, the teacher of the alignment loss): ``pred``,
    ``confidence`` (max softmax probability) and ``correct`` per sample; ``zs_per_class``
    (zero-shot per-class accuracy, %). On the client test splits, concatenated in client order
    (``client_test_index`` into the test set; client ``k`` from ``client_test_offsets[k]`` to ``[k + 1]``),
    the personal models' ``pm_pred`` / ``pm_confidence`` / ``pm_correct`` (the global model's for
    a method without a personal stage). ``test_labels`` and ``client_counts`` (client × class
    training images) complete it. A pure function of the final state, so a resumed run gives the
    same arrays.
    """
    config, method, peft, fed, bank = parts.config, parts.method, parts.peft, parts.federation, parts.bank
    y_test = torch.as_tensor(np.asarray(bank.test_labels), dtype=torch.long)
    text = torch.as_tensor(bank.text_features).float().to(x_test.device)
    logits = predict_global(peft, x_test, config.run.eval_batch_size, pool)
    feats = torch.as_tensor(bank.test_features).float().to(x_test.device)
    zs_logits = torch.cat([feats[i:i + config.run.eval_batch_size] @ text.t() * float(bank.logit_scale)
                           for i in range(0, feats.shape[0], config.run.eval_batch_size)])
    index = [torch.as_tensor(t, dtype=torch.long) for t in fed.client_test]

    def personal(slot: tuple[PEFTModule, torch.nn.Module], k: int) -> Tensor:
        idx = index[k].to(x_test.device)
        if method.personal is None:
            return logits[idx]
        state = personal_states.get(k)
        load_state(slot[1], state if state is not None else start_state(method.personal, None, peft, initial_state,
                                                                         config))
        return predict_personal(method.personal, slot[1], peft, x_test[idx], logits[idx], config,
                                config.run.eval_batch_size)

    pm_logits = torch.cat(pool.map(personal, range(fed.num_clients)))
    flat = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
    out = {"test_labels": y_test.int(), "client_test_index": flat.int(),
           "client_test_offsets": torch.as_tensor(np.cumsum([0] + [len(t) for t in fed.client_test]), dtype=torch.long),
           "client_counts": torch.as_tensor(count_matrix(fed.client_train, np.asarray(bank.train_labels),
                                                         fed.num_classes))}
    for prefix, lg, y in (("gm", logits, y_test), ("zs", zs_logits, y_test), ("pm", pm_logits, y_test[flat])):
        lg = lg.float().cpu()
        pred, conf = lg.argmax(dim=1), torch.softmax(lg, dim=1).amax(dim=1)
        out.update({f"{prefix}_pred": pred.int(), f"{prefix}_confidence": conf, f"{prefix}_correct": pred == y})
    zs_acc = per_class_accuracy(y_test.numpy(), out["zs_pred"].numpy(), fed.num_classes) * 100.0
    out["zs_per_class"] = torch.as_tensor(zs_acc, dtype=torch.float64)
    return {k: v.contiguous() for k, v in out.items()}


# ----------------------------------------------------------------------------- compare
def compare(
    config: RunConfig,
    methods: Sequence[str],
    bank: Any = None,
    backbone: Any = None,
    progress: bool = True,
    last: str = "last10",
) -> Any:
    """Run several methods on the same federation and tabulate them.

    Parameters
    ----------
    config : RunConfig
        Shared protocol (``method.name`` is replaced by each entry of ``methods``).
    methods : sequence of str
        Registered method names.
    bank, backbone : optional
        As in :func:`run`; loaded once and shared.
    progress : bool
        tqdm bars.
    last : {"last10", "last"}
        Which summary to tabulate.

    Returns
    -------
    pandas.DataFrame
        One row per method: ``gm_*`` (global model, balanced test set), ``gm_clients_*`` and
        ``pm_*`` (client splits, means over clients), ``time_s``; the :class:`RunResult` objects
        are in ``df.attrs["results"]``.
    """
    import pandas as pd

    for name in methods:
        get_method(name)
    parts = assemble(config, bank, backbone, progress=progress)
    rows, results = [], {}
    for name in methods:
        cfg = config.with_overrides({"method.name": name})
        res = run(cfg, parts.bank, parts.backbone, progress=progress, federation=parts.federation)
        results[name] = res
        row: dict[str, Any] = {"method": name}
        for part in ("gm", "gm_clients", "pm"):
            row.update({f"{part}_{k}": v for k, v in res.summary[last][part].items()})
        row["time_s"] = sum(h["time_s"] for h in res.history)
        rows.append(row)
    df = pd.DataFrame(rows).set_index("method")
    df.attrs["results"] = results
    return df

