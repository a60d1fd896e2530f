"""Screening proxy for PromptFL: the CoOp context trained centrally (SGD, momentum 0.9, wd 5e-4) on the
pooled long-tailed training set (the same IF=100 subset the federation splits), then evaluated on the
balanced test set, GM overall/head/medium/tail. Cheap (one trajectory instead of 8 clients x 40 rounds);
validated against simulate.run for the key conditions (candidate_fl.py).

    .venv/bin/python bench/prompt_erosion/proxy_sweep.py [CONDITION ...]   # default: all

Appends to results/proxy_sweep.jsonl.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from candidate_fl import ORDERS  # noqa: E402
from common import central_prompt, fmt, groups_of, load_default, log, per_class_zs_prompt, variant  # noqa: E402

STEPS, BATCH = 400, 32  # batch 32 as the clients; 128 x 300 gave a different, worse trajectory (60.9 on stratified)
# name: (order, kwargs for central_prompt, logit scale or None)
CONDITIONS = {
    "stratified": ("stratified", {}, None),
    "random": ("random", {}, None),
    "by_shape": ("by_shape", {}, None),
    "flat_shape": ("flat_shape", {}, None),
    "stratified_csc": ("stratified", {"class_specific": True}, None),
    "stratified_nctx8": ("stratified", {"n_ctx": 8}, None),  # n_ctx >= ~10 does not fit the 16-token text context
    "stratified_nctx1": ("stratified", {"n_ctx": 1}, None),
    "stratified_lr0.05": ("stratified", {"lr": 0.05}, None),
    "stratified_lr0.002": ("stratified", {"lr": 0.002}, None),
    "stratified_scale100": ("stratified", {}, 100.0),
    "stratified_scale100_lr0.002": ("stratified", {"lr": 0.002}, 100.0),  # same step in logit units as lr 0.01 at 20.8
    "flat_shape_lr0.002": ("flat_shape", {"lr": 0.002}, None),
    "flat_shape_scale100": ("flat_shape", {}, 100.0),
}
PRIORITY = ["stratified", "flat_shape", "stratified_csc", "stratified_lr0.05", "stratified_nctx8",
            "stratified_scale100", "by_shape", "stratified_lr0.002", "flat_shape_scale100", "flat_shape_lr0.002",
            "random", "stratified_nctx1"]


def main(names, bank=None, backbone=None, world_tag="default", steps=STEPS):
    torch.set_num_threads(1)
    if bank is None:
        _, bank, backbone = load_default()
    for name in names:
        order, kw, scale = CONDITIONS[name]
        b = variant(bank, class_order=ORDERS[order](), logit_scale=scale)
        zs = groups_of(b, per_class_zs_prompt(b, backbone, n_ctx=kw.get("n_ctx", 4)))
        t0 = time.time()
        res, curve, _ = central_prompt(b, backbone, steps=steps, batch=BATCH, eval_every=steps // 2, **kw)
        row = {"curve": curve, "world": world_tag, "condition": name, "steps": steps, "batch": BATCH, "zs_prompt": zs,
               "trained": res, "d_tail": res["tail"] - zs["tail"], "d_head": res["head"] - zs["head"],
               "seconds": round(time.time() - t0)}
        log("proxy_sweep", row)
        print(f"{world_tag:10s} {name:22s} ZS {fmt(zs)} -> {fmt(res)}  dTail {row['d_tail']:+.1f}  "
              f"dHead {row['d_head']:+.1f}  half: {fmt(curve[0][1])}  {row['seconds']}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or PRIORITY)
