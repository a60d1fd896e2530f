"""Shared helpers for the prompt-erosion diagnosis (why PromptFL does not erode the tail on the shapes world).

Only the package's public API is used. Results are appended as JSON lines to
bench/prompt_erosion/results/<name>.jsonl.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedpurel_lite.config import RunConfig
from fedpurel_lite.data.partition import build_federation
from fedpurel_lite.engine.assembly import load_backbone_for, load_bank
from fedpurel_lite.engine.metrics import group_means, per_class_accuracy
from fedpurel_lite.engine.simulate import run
from fedpurel_lite.peft import build_peft
from fedpurel_lite.worlds.quality import default_groups

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
CONFIG = ROOT / "configs" / "embedded.toml"


def base_config(**over) -> RunConfig:
    cfg = RunConfig.load(CONFIG)
    d = {"rounds": 40, "seed": 7, "workers": 2}
    d.update(over)
    return cfg.with_overrides(d)


def load_default():
    cfg = base_config(peft="prompt")
    backbone = load_backbone_for(cfg)
    bank = load_bank(cfg, progress=False)
    return cfg, bank, backbone


def variant(bank, class_order=None, logit_scale=None):
    """A dataclass copy of a FeatureBank with another class order and/or logit scale (no re-encoding)."""
    kw = {}
    if class_order is not None:
        kw["class_order"] = np.asarray(class_order, dtype=np.int64)
    if logit_scale is not None:
        kw["logit_scale"] = float(logit_scale)
    return dataclasses.replace(bank, **kw)


def groups_of(bank, per_class):
    g = group_means(per_class, default_groups(bank.class_order))
    return {"overall": float(np.nanmean(per_class)) * 100, **{k: v * 100 for k, v in g.items()}}


def zs_template(bank):
    """Zero-shot with the template ensemble (the bank's classifier), grouped by the bank's class order."""
    pred = bank.zero_shot_logits(bank.test_features).argmax(1).numpy()
    return groups_of(bank, per_class_accuracy(bank.test_labels.numpy(), pred, 100))


def per_class_zs_template(bank):
    pred = bank.zero_shot_logits(bank.test_features).argmax(1).numpy()
    return per_class_accuracy(bank.test_labels.numpy(), pred, 100)


def per_class_zs_prompt(bank, backbone, seed=7, n_ctx=4):
    """Per-class accuracy of the random-init CoOp context (PromptFL's zero-shot reference)."""
    cfg = base_config(peft="prompt", seed=seed, n_ctx=n_ctx)
    peft = build_peft("prompt", bank, backbone, cfg).eval()
    with torch.no_grad():
        pred = peft.predict_logits(bank.test_features.float()).argmax(1).numpy()
    return per_class_accuracy(bank.test_labels.numpy(), pred, 100)


def fl(tag, bank, backbone, record=None, curve=None, **over):
    """One simulate.run; returns the GM last-10 summary (overall/head/medium/tail in %) and logs it.

    ``curve``: a results name; every round's GM (overall/head/medium/tail, %) is appended there as it ends,
    so a run stopped early still leaves its curve.
    """
    cfg = base_config(**over)
    t0 = time.time()

    def on_round_end(r, entry):
        gm = entry["gm"]
        log(curve, {"tag": tag, "round": r + 1, "seconds": round(time.time() - t0, 1),
                    **{k: round(100 * float(gm[k]) if float(gm[k]) <= 1.0 else float(gm[k]), 2)
                       for k in ("accuracy", "head", "medium", "tail") if k in gm}})

    res = run(cfg, bank=bank, backbone=backbone, progress=False, on_round_end=on_round_end if curve else None)
    gm = res.summary["last10"]["gm"]
    out = {"tag": tag, "over": over, "seconds": round(time.time() - t0, 1),
           **{k: round(100 * float(gm[k]) if float(gm[k]) <= 1.0 else float(gm[k]), 2)
              for k in ("accuracy", "head", "medium", "tail") if k in gm}}
    if record:
        log(record, out)
    print(json.dumps(out), flush=True)
    return out


def log(name, obj):
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{name}.jsonl", "a") as fh:
        fh.write(json.dumps(obj) + "\n")


def central_prompt(bank, backbone, steps=600, lr=0.01, n_ctx=4, batch=32, seed=7, class_specific=False,
                   momentum=0.9, eval_every=0):
    """Screening proxy: train the CoOp context centrally (SGD) on the pooled long-tailed training set."""
    cfg = base_config(peft="prompt", seed=seed, n_ctx=n_ctx, class_specific=class_specific)
    fed = build_federation(np.asarray(bank.train_labels), np.asarray(bank.test_labels), bank.class_order, cfg)
    idx = torch.as_tensor(np.asarray(fed.train_idx), dtype=torch.long)
    x_all, y_all = bank.train_features[idx].float(), bank.train_labels[idx]
    peft = build_peft("prompt", bank, backbone, cfg)
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    def evaluate():
        with torch.no_grad():
            pred = peft.predict_logits(bank.test_features.float()).argmax(1).numpy()
        return groups_of(bank, per_class_accuracy(bank.test_labels.numpy(), pred, 100))
    curve = []
    for s in range(steps):
        b = torch.randint(0, len(idx), (batch,), generator=g)
        loss = F.cross_entropy(peft(x_all[b]), y_all[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if eval_every and (s + 1) % eval_every == 0:
            curve.append((s + 1, evaluate()))
    return evaluate(), curve, peft


def fmt(d):
    return " / ".join(f"{d[k]:.1f}" for k in ("overall", "head", "medium", "tail") if k in d)


os.environ.setdefault("PYTHONUNBUFFERED", "1")
