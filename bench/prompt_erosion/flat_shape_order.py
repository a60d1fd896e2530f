"""Pick the shape ranking for a shape-grouped class order whose zero-shot accuracy is flat across head/medium/tail.

Class order = the 10 classes of shape_rank[0] (colours shuffled), then shape_rank[1], ... (orders.by_shape).
Over all 10! shape rankings, minimise the largest gap between the group means of the per-class zero-shot
accuracy, taking the worse of the template-ensemble zero-shot and the random-context CoOp zero-shot
(PromptFL's reference). Groups depend only on rank positions, so per-shape means suffice up to the
colour shuffle inside a shape block (a block straddling a group boundary is split by the shuffle: we
evaluate the exact order for the finalists).

    .venv/bin/python bench/prompt_erosion/flat_shape_order.py
"""
import itertools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import orders  # noqa: E402
import torch  # noqa: E402
from common import groups_of, load_default, log, per_class_zs_prompt, per_class_zs_template, variant  # noqa: E402

from fedpurel_lite.worlds.quality import default_groups  # noqa: E402


def gap(g):
    v = [g["head"], g["medium"], g["tail"]]
    return max(v) - min(v)


def main():
    torch.set_num_threads(1)
    cfg, bank, backbone = load_default()
    world = os.environ.get("WORLD", "default")
    if world != "default":  # a re-rendered world from shift_worlds.py
        import shift_worlds
        bank = shift_worlds.load(world)
    zt = per_class_zs_template(bank)
    zp = {s: per_class_zs_prompt(bank, backbone, seed=s) for s in (7, 8, 1)}
    grp = default_groups(orders.by_shape())  # group per class id for identity ranking -> per rank position
    rank_group = grp[orders.by_shape()]  # group of rank r
    # group counts per shape block (block k = ranks 10k..10k+9) and per-shape means of each zero-shot
    N = np.stack([np.bincount(rank_group[10 * k:10 * k + 10], minlength=3) for k in range(10)]).astype(float)
    W = N / N.sum(0, keepdims=True)  # [block, group]
    perms = np.array(list(itertools.permutations(range(10))), dtype=np.int8)
    score = np.zeros(len(perms))
    for pc in (zt, *zp.values()):
        a = pc.reshape(10, 10).mean(0)  # per shape (class id = 10 colour + shape)
        m = a[perms] @ W  # [P, 3]
        score = np.maximum(score, m.max(1) - m.min(1))
    idx = np.argsort(score)[:50]
    best = [(float(score[i]), tuple(int(v) for v in perms[i])) for i in idx]
    best.sort()
    exact = []
    for _, perm in best:
        b = variant(bank, class_order=orders.by_shape(perm))
        rows = [groups_of(b, pc) for pc in (zt, *zp.values())]
        exact.append((max(gap(r) for r in rows), perm, rows))
    exact.sort(key=lambda t: t[0])
    out = []
    for g, perm, rows in exact[:5]:
        row = {"shape_rank": list(perm), "gap_max": round(g, 2),
               **{name: {k: round(v, 1) for k, v in r.items()}
                  for name, r in zip(["zs_template", *[f"zs_prompt_seed{s}" for s in zp]], rows, strict=False)}}
        out.append(row)
        print(row)
    identity = orders.by_shape()
    print("identity by_shape:", groups_of(variant(bank, class_order=identity), zt))
    log("flat_shape_order", {"world": world, "top": out})


if __name__ == "__main__":
    main()
