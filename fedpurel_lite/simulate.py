"""The round simulator: stage 1 -> FedAvg -> stage 2 -> evaluation, seeded, checkpointed, resumable.

One round ``t`` (``design.md`` §4, the reference loop):

1. sample clients (round 0: all; then ``max(int(frac K), 1)``, seeded by ``(seed, t)``);
2. stage 1: every sampled client starts from the global shared PEFT state and runs
   :func:`~fedpurel_lite.purify.local_train` (purified or not); FedAvg weighted by client size;
3. stage 2: every sampled client trains its personal branch against the frozen new global model
   (:mod:`~fedpurel_lite.personalize`);
4. evaluation: the global model on the balanced test set (``gm``), the global model on every
   client's test split (``gm_clients``, the FedAvg-style baseline of the bias-transfer claim) and
   every client's personal model on its split (``pm``).

Randomness: every client-round draws its batches from its own generator seeded by
``(seed, round, client, stage)``, and client sampling is stateless, so the same seed gives the
same history, and a resumed run continues bit-for-bit (no global RNG state is used or needed).
A checkpoint (safetensors + JSON, atomic replace) is written after every round.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .aggregate import ClientSampler, fedavg
from .client import ClientData, make_clients, predict_private, train_private, train_shared
from .config import RunConfig
from .methods import Method, get_method
from .metrics import evaluate_predictions
from .partition import Federation, build_federation
from .peft import PEFTModule, build_peft
from .personalize import new_personal_module
from .purify import merge_telemetry
from .workers import ClientPool, IntraOpThreads, resolve_workers

SCALAR_KEYS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "head", "medium", "tail", "acc_std",
                                "head_tail_gap", "spearman_logcount", "pred_kl")
CLIENT_KEYS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "head", "medium", "tail")
CHECKPOINT_JSON = "checkpoint.json"
FORMAT_VERSION = 1
RUNTIME_KEYS: tuple[str, ...] = ("rounds", "workers")  # may change on resume (they do not change the numbers)


# ----------------------------------------------------------------------------- helpers
def clean_json(value: Any) -> Any:
    """JSON-safe copy: arrays to lists, NaN/inf to ``None``, numpy scalars to Python."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean_json(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def resolve_device(name: str) -> torch.device:
    """The torch device a config's ``device`` names (``"auto"``: CUDA when available, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_bank_for(config: RunConfig, backbone: Any = None) -> Any:
    """The feature bank a config asks for (the embedded world's cached bank by default)."""
    from . import features

    embedded = config.world == "shapes" and config.backbone == "fedpurel-tiny" and not config.pretrained
    if embedded and backbone is None:
        return features.load_embedded_bank(cache_dir=config.cache_dir or None)
    if backbone is None:
        from .backbone import load_backbone

        backbone = load_backbone(config.backbone, config.pretrained or None)
    from .worlds import load_world

    return features.FeatureBank.load_or_build(backbone, load_world(config.world), config.cache_dir or None)


def summarise(history: list[dict], last: int = 10) -> dict[str, dict[str, dict[str, float | None]]]:
    """Last-round values and means over the last ``last`` rounds of every scalar metric."""
    out: dict[str, dict[str, dict[str, float | None]]] = {"last": {}, f"last{last}": {}}
    if not history:
        return out
    tail = history[-last:]
    for part in ("gm", "pm", "gm_clients"):
        out["last"][part] = {k: v for k, v in history[-1][part].items() if not isinstance(v, (list, dict))}
        keys = out["last"][part].keys()
        out[f"last{last}"][part] = clean_json({k: float(np.nanmean([_num(h[part][k]) for h in tail]))
                                           if any(h[part][k] is not None for h in tail) else None for k in keys})
    return out


# ----------------------------------------------------------------------------- result
@dataclass
class RunResult:
    """Everything one run produced.

    Attributes
    ----------
    method : str
        Method name.
    config : dict
        The run's :class:`RunConfig` as a dict.
    history : list of dict
        One entry per round: ``round``, ``clients``, ``gm`` (global model, balanced test set),
        ``gm_clients`` and ``pm`` (global / personal models on the client test splits: means over
        clients, group means, a ``pooled`` block over all client splits), ``telemetry``
        (purification), ``personal`` (stage-2 loss), ``time_s``.
    summary : dict
        ``last`` and ``last10`` scalar metrics per part.
    federation : dict
        Client train/test sizes, class counts and groups.
    final_state : dict of Tensor
        ``global/<name>`` shared tensors and ``personal/<client>/<name>`` personal tensors.
    """

    method: str
    config: dict
    history: list[dict]
    summary: dict
    federation: dict
    final_state: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        """JSON-ready dict (everything except the tensors)."""
        return clean_json({"format": FORMAT_VERSION, "method": self.method, "config": self.config,
                       "history": self.history, "summary": self.summary, "federation": self.federation})

    def save(self, out_dir: str | Path) -> Path:
        """Write ``result.json`` and ``final_state.safetensors`` into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_safetensors(self.final_state, out / "final_state.safetensors")
        _atomic_text(json.dumps(self.to_json(), indent=1), out / "result.json")
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> RunResult:
        """Read a result written by :meth:`save`."""
        out = Path(out_dir)
        data = json.loads((out / "result.json").read_text())
        tensors = load_file(str(out / "final_state.safetensors")) if (out / "final_state.safetensors").exists() else {}
        return cls(data["method"], data["config"], data["history"], data["summary"], data["federation"], tensors)

    def frame(self, part: str = "gm") -> Any:
        """Scalar history of ``part`` (``gm``, ``pm``, ``gm_clients``, ``telemetry``) as a DataFrame."""
        import pandas as pd

        rows = [{"round": h["round"], **{k: v for k, v in h[part].items() if not isinstance(v, (list, dict))}}
                for h in self.history]
        return pd.DataFrame(rows).set_index("round").astype(float)


# ----------------------------------------------------------------------------- checkpoints
def _atomic_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_safetensors(tensors: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


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


def save_checkpoint(directory: Path, round_idx: int, config: RunConfig, method: str, history: list[dict],
                    tensors: dict[str, Tensor]) -> None:
    """Write the state after ``round_idx``: a per-round safetensors file, then the JSON that points at it.

    The JSON is replaced last, so a run killed at any moment leaves a consistent checkpoint; the
    previous round's tensor file is removed afterwards.
    """
    directory.mkdir(parents=True, exist_ok=True)
    name = f"round_{round_idx:05d}.safetensors"
    _atomic_safetensors(tensors, directory / name)
    meta = {"format": FORMAT_VERSION, "round": round_idx, "method": method, "config": config.to_dict(),
            "tensors": name, "history": history,
            "rng": "per-(seed, round, client, stage) generators and a stateless sampler; no RNG state"}
    _atomic_text(json.dumps(clean_json(meta)), directory / CHECKPOINT_JSON)
    for old in directory.glob("round_*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(directory: Path) -> tuple[dict, dict[str, Tensor]] | None:
    """The checkpoint JSON and tensors in ``directory``, or ``None`` when there is none."""
    meta_path = Path(directory) / CHECKPOINT_JSON
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    return meta, load_file(str(Path(directory) / meta["tensors"]))


def _check_resumable(meta: dict, config: RunConfig, method: str) -> None:
    saved = dict(meta["config"])
    now = config.to_dict()
    diff = sorted(k for k in set(saved) | set(now) if k not in RUNTIME_KEYS and saved.get(k) != now.get(k))
    if diff or meta["method"] != method:
        raise ValueError(f"checkpoint does not match this run (differs in {diff or ['method']}); "
                         "use another checkpoint_dir or resume=False")


# ----------------------------------------------------------------------------- evaluation
def client_metrics(truths: Sequence[np.ndarray], preds: Sequence[np.ndarray], num_classes: int,
                   groups: np.ndarray) -> dict[str, np.ndarray]:
    """Per-client metrics of many small test splits at once (one bincount, no per-client sklearn call).

    Same definitions as :func:`fedpurel_lite.metrics.evaluate_predictions` (tested equal):
    accuracy, balanced accuracy (mean recall over present classes), macro-F1 over present classes
    with ``zero_division=0``, per-class recall (NaN for absent classes) and head/medium/tail means
    of the present classes; all in percent. Calling scikit-learn 41 times per round would cost
    about as much as the training itself.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``head``, ``medium``, ``tail`` (``[K]``)
        and ``per_class`` (``[K, C]``).
    """
    k, c = len(truths), num_classes
    sizes = np.array([len(t) for t in truths])
    client = np.repeat(np.arange(k), sizes)
    yt = np.concatenate(truths).astype(np.int64)
    yp = np.concatenate(preds).astype(np.int64)
    cm = np.bincount((client * c + yt) * c + yp, minlength=k * c * c).reshape(k, c, c)
    tp = cm[:, np.arange(c), np.arange(c)].astype(np.float64)
    support = cm.sum(axis=2).astype(np.float64)
    predicted = cm.sum(axis=1).astype(np.float64)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / np.maximum(support, 1), np.nan) * 100.0
        f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1), np.nan) * 100.0
        out = {"accuracy": tp.sum(1) / np.maximum(sizes, 1) * 100.0,
               "balanced_accuracy": np.nanmean(recall, axis=1),
               "macro_f1": np.nanmean(f1, axis=1), "per_class": recall}
    groups = np.asarray(groups)
    for g, name in enumerate(("head", "medium", "tail")):
        sub = recall[:, groups == g]
        valid = ~np.isnan(sub)
        out[name] = np.where(valid.any(1), np.nansum(sub, axis=1) / np.maximum(valid.sum(1), 1), np.nan)
    return out


def evaluate_clients(preds: list[np.ndarray], truths: list[np.ndarray], fed: Federation) -> dict:
    """Means over clients of the per-client metrics, plus the same metrics pooled over all splits."""
    per = client_metrics(truths, preds, fed.num_classes, fed.groups)
    block: dict[str, Any] = {}
    for key in CLIENT_KEYS:
        vals = per[key]
        block[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    block["per_client_accuracy"] = per["accuracy"]
    pooled = client_metrics([np.concatenate(truths)], [np.concatenate(preds)], fed.num_classes, fed.groups)
    block["pooled"] = {key: float(pooled[key][0]) for key in CLIENT_KEYS}
    block["pooled"]["per_class"] = pooled["per_class"][0]
    block["pooled"]["acc_std"] = float(np.nanstd(pooled["per_class"][0]))
    return clean_json(block)


# ----------------------------------------------------------------------------- the run
def run(
    config: RunConfig,
    bank: Any = None,
    backbone: Any = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    federation: Federation | None = None,
    on_round_end: Callable[[int, dict], None] | None = None,
) -> RunResult:
    """Simulate one federated run of ``config.method``.

    Parameters
    ----------
    config : RunConfig
        The protocol; ``config.method`` picks the method (see :mod:`fedpurel_lite.methods`).
    bank : FeatureBank-like, optional
        Cached features (``train_features``, ``train_labels``, ``test_features``, ``test_labels``,
        ``text_features``, ``logit_scale``, ``class_names``, ``class_order``); loaded from the
        config when omitted.
    backbone : Backbone-like, optional
        Needed for ``peft="prompt"`` (loaded from the config when omitted).
    progress : bool
        Show a tqdm bar over rounds.
    checkpoint_dir : path, optional
        Write a checkpoint after every round here.
    resume : bool
        Continue from the checkpoint in ``checkpoint_dir`` (it must come from the same config).
    federation : Federation, optional
        Reuse a federation (must be the one ``build_federation`` gives for this config).
    on_round_end : callable, optional
        ``f(round, history_entry)`` after each round's checkpoint (hooks, tests).

    Notes
    -----
    On the CPU every client step uses one torch thread (``config.extra["num_threads"]``
    overrides), which is fastest for these small tensors, and ``config.workers`` clients of a round
    train at once (:class:`~fedpurel_lite.workers.ClientPool`; the numbers do not depend on it).

    Returns
    -------
    RunResult
    """
    threads = (config.extra or {}).get("num_threads", 1 if resolve_device(config.device).type == "cpu" else None)
    with IntraOpThreads(threads):
        return _run(config, bank, backbone, progress, checkpoint_dir, resume, federation, on_round_end)


def _run(config: RunConfig, bank: Any, backbone: Any, progress: bool, checkpoint_dir: str | Path | None,
         resume: bool, federation: Federation | None, on_round_end: Callable[[int, dict], None] | None) -> RunResult:
    from tqdm.auto import tqdm

    method = get_method(config.method)
    if method.overrides:
        config = config.with_overrides(method.overrides)
    device = resolve_device(config.device)
    if bank is None:
        bank = load_bank_for(config, backbone)
    if config.peft == "prompt" and backbone is None:
        from .backbone import load_backbone

        backbone = load_backbone(config.backbone, config.pretrained or None)
    train_labels_np = np.asarray(bank.train_labels)
    test_labels_np = np.asarray(bank.test_labels)
    fed = federation if federation is not None else build_federation(train_labels_np, test_labels_np,
                                                                     bank.class_order, config)
    x_test = torch.as_tensor(bank.test_features).float().to(device)
    peft = build_peft(config.peft, bank, backbone, config).to(device)
    initial_state = peft.shared_state()
    clients = make_clients(bank, fed, device)
    prior = torch.as_tensor(fed.train_counts, dtype=torch.float32, device=device)
    test_y_clients = [test_labels_np[t] for t in fed.client_test]
    sampler = ClientSampler(fed.num_clients, config.participation, config.seed)
    personal_states: dict[int, dict[str, Tensor]] = {}
    history: list[dict] = []
    start = 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume:
        if ckpt_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        found = load_checkpoint(ckpt_dir)
        if found is not None:
            meta, tensors = found
            _check_resumable(meta, config, method.name)
            glob, personal_states = _unpack_state(tensors)
            peft.load_shared_state({n: t.to(device) for n, t in glob.items()})
            personal_states = {k: {n: t.to(device) for n, t in s.items()} for k, s in personal_states.items()}
            history = meta["history"]
            start = int(meta["round"]) + 1

    def make_slot() -> tuple[PEFTModule, torch.nn.Module | None]:
        """One worker's working copies: a shared PEFT (stage 1) and a personal module (stage 2)."""
        personal = new_personal_module(method.personal, peft, config).to(device) if method.personal else None
        return peft.clone(), personal

    with ClientPool(resolve_workers(config.workers, device, config.peft), make_slot) as pool:
        bar = tqdm(range(start, config.rounds), disable=not progress, desc=method.name, unit="round",
                   initial=start, total=config.rounds)
        for r in bar:
            t0 = time.perf_counter()
            chosen = sampler.sample(r)
            entry = _one_round(r, chosen, config, method, peft, pool, personal_states, clients, prior, initial_state)
            entry.update(_evaluate(config, method, peft, pool, personal_states, initial_state, x_test, test_labels_np,
                                   test_y_clients, fed))
            entry["time_s"] = time.perf_counter() - t0
            entry = clean_json(entry)
            history.append(entry)
            if ckpt_dir is not None:
                save_checkpoint(ckpt_dir, r, config, method.name, history, _pack_state(peft, personal_states))
            bar.set_postfix(gm=f"{entry['gm']['accuracy']:.1f}", pm=f"{entry['pm']['accuracy']:.1f}")
            if on_round_end is not None:
                on_round_end(r, entry)
        bar.close()
    fed_info = clean_json({"client_train_sizes": [len(p) for p in fed.client_train],
                           "client_test_sizes": [len(p) for p in fed.client_test],
                           "train_counts": fed.train_counts, "groups": fed.groups})
    return RunResult(method.name, config.to_dict(), history, summarise(history), fed_info,
                     {k: v.cpu() for k, v in _pack_state(peft, personal_states).items()})


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
        peft.load_shared_state(fedavg([state for state, _ in out], [clients[k].n for k in chosen]))
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
def _evaluate(config: RunConfig, method: Method, peft: PEFTModule, pool: ClientPool,
              personal_states: dict[int, dict[str, Tensor]], initial_state: dict[str, Tensor], x_test: Tensor,
              y_test: np.ndarray, test_y_clients: list[np.ndarray], fed: Federation) -> dict:
    """Global model on the balanced test set and on the client splits; personal models on the splits."""
    logits = peft.predict_logits(x_test, config.eval_batch_size)
    pred = logits.argmax(dim=1).cpu().numpy()
    gm = evaluate_predictions(y_test, pred, fed.num_classes, fed.groups, fed.train_counts)
    gm_client_preds = [pred[t] for t in fed.client_test]
    out = {"gm": clean_json(gm), "gm_clients": evaluate_clients(gm_client_preds, test_y_clients, fed)}
    if method.personal is None:
        out["pm"] = out["gm_clients"]
        return out

    def predict(slot: tuple[PEFTModule, torch.nn.Module], k: int) -> np.ndarray:
        idx = torch.as_tensor(fed.client_test[k], dtype=torch.long, device=x_test.device)
        return predict_private(slot[1], peft, personal_states.get(k), initial_state, x_test[idx], logits[idx],
                               config, method)

    preds = pool.map(predict, range(fed.num_clients))
    out["pm"] = evaluate_clients(preds, test_y_clients, fed)
    return out


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
        Shared protocol (``config.method`` is replaced by each entry of ``methods``).
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
    if bank is None:
        bank = load_bank_for(config, backbone)
    fed = build_federation(np.asarray(bank.train_labels), np.asarray(bank.test_labels), bank.class_order, config)
    rows, results = [], {}
    for name in methods:
        cfg = config.with_overrides({"method": name})
        res = run(cfg, bank, backbone, progress=progress, federation=fed)
        results[name] = res
        row: dict[str, Any] = {"method": name}
        for part in ("gm", "gm_clients", "pm"):
            row.update({f"{part}_{k}": v for k, v in res.summary[last][part].items()})
        row["time_s"] = sum(h["time_s"] for h in res.history)
        rows.append(row)
    df = pd.DataFrame(rows).set_index("method")
    df.attrs["results"] = results
    return df

