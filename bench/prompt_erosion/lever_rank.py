"""Rank shape-grouped class orders by how strongly a shared CoOp context can move biases along their log prior.

A seed-independent, pre-FL objective for the shape ranking (see lever.py for the linearised lever):
gain(order) = u^T G u / u^T u with u the centred log prior of the order and G = J J^T the bias-lever Gram
matrix of the random-init context, averaged over context seeds 7 and 8 (never the evaluation seeds 1-3).
Among the rankings whose zero-shot is flat (largest group gap <= GAP over the template ensemble and the
random-context prompts of seeds 1, 7, 8), print the gains of the known rankings, the top and the bottom
ones. Gaps and gains of all 10! rankings are exact table lookups (checked against the direct computation).

    WORLD=drift0.65 .venv/bin/python bench/prompt_erosion/lever_rank.py [GAP]
"""
import itertools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import orders  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    groups_of,
    load_default,
    log,
    per_class_zs_prompt,
    per_class_zs_template,
    variant,
)
from lever import bias_jacobian  # noqa: E402

from fedpurel_lite.data import longtail  # noqa: E402
from fedpurel_lite.worlds.quality import default_groups  # noqa: E402

KNOWN = {"3680195247": "shipped (eroded: s7 r40 -2.4, r100 -7.4)", "3478590612": "confusable (did not erode: +9.9)"}


def gram(bank, backbone, seed):
    J = bias_jacobian(bank, backbone, seed)
    return J @ J.T


def main(argv):
    gap_max = float(argv[0]) if argv else 1.0
    torch.set_num_threads(1)
    _, bank, backbone = load_default()
    world = os.environ.get("WORLD", "default")
    if world != "default":
        import shift_worlds
        bank = shift_worlds.load(world)
    G = (gram(bank, backbone, 7) + gram(bank, backbone, 8)) / 2
    base = np.log(longtail.class_counts(500, 100, 100.0, "exp").astype(float))

    def gain(rank):
        u = np.zeros(100)
        u[orders.by_shape(rank)] = base
        u -= u.mean()
        return float(u @ G @ u / (u @ u))

    zs = [per_class_zs_template(bank)] + [per_class_zs_prompt(bank, backbone, seed=s) for s in (1, 7, 8)]
    # class at rank 10k + j of orders.by_shape(perm) is colour[k, j] * 10 + perm[k]; the colour draws do
    # not depend on perm, so every ranking's group means and gain are table lookups (exact, all 10! rankings)
    colour = (orders.by_shape() // 10).reshape(10, 10)
    groups = default_groups(orders.by_shape())[orders.by_shape()]  # group of each rank position
    onehot = np.stack([(groups == g) / (groups == g).sum() for g in range(3)], axis=1)  # [100, 3]
    cls = colour[:, :, None] * 10 + np.arange(10)[None, None, :]  # [block k, j, shape s] -> class id
    Q = np.einsum("kj,lm,kjlmst->klst", base.reshape(10, 10), base.reshape(10, 10),
                  G[cls[:, :, None, None, :, None], cls[None, None, :, :, None, :]])  # [k, l, s, t]
    perms = np.array(list(itertools.permutations(range(10))), dtype=np.int64)
    gap = np.zeros(len(perms))
    gains = np.zeros(len(perms))
    uu = float((base - base.mean()) @ (base - base.mean()))
    k = np.arange(10)
    for lo in range(0, len(perms), 200_000):
        p = perms[lo:lo + 200_000]
        for pc in zs:
            acc = pc[cls[k[None, :, None], np.arange(10)[None, None, :], p[:, :, None]]].reshape(len(p), 100)
            m = acc @ onehot * 100
            gap[lo:lo + len(p)] = np.maximum(gap[lo:lo + len(p)], m.max(1) - m.min(1))
        quad = Q[k[:, None], k[None, :], p[:, :, None], p[:, None, :]].sum((1, 2))
        gains[lo:lo + len(p)] = quad
    # centre: u_c = u - mean(u) 1;  u_c^T G u_c = u^T G u - 2 mean(u) 1^T G u + mean(u)^2 1^T G 1
    mu = base.mean()
    g1 = G.sum(0)  # 1^T G per class
    R = np.einsum("kj,kjs->ks", base.reshape(10, 10), g1[cls])  # [k, s]: sum_j base_{10k+j} (1^T G)_{class}
    lin = R[k[None, :], perms].sum(1)
    gains = (gains - 2 * mu * lin + mu * mu * G.sum()) / uu
    flat = np.flatnonzero(gap <= gap_max)
    rows = [{"rank": "".join(map(str, perms[i])), "gap": round(float(gap[i]), 2), "gain": round(float(gains[i]), 3)}
            for i in flat]
    for i in (0, 123456, len(perms) - 1):  # the lookups equal the direct computation
        rank = [int(v) for v in perms[i]]
        direct = [groups_of(variant(bank, class_order=orders.by_shape(rank)), pc) for pc in zs]
        dgap = max(max(r["head"], r["medium"], r["tail"]) - min(r["head"], r["medium"], r["tail"]) for r in direct)
        assert abs(dgap - gap[i]) < 1e-6 and abs(gain(rank) - gains[i]) < 1e-6 * max(1.0, gains[i]), (i, dgap, gap[i])
    rows.sort(key=lambda r: -r["gain"])
    gains = np.array([r["gain"] for r in rows])
    print(f"{len(rows)} flat rankings (gap <= {gap_max}); gain quantiles 0/50/90/100 %:",
          np.round(np.quantile(gains, [0, 0.5, 0.9, 1.0]), 3))
    known = {k: {"gain": round(gain([int(c) for c in k]), 3), "note": v} for k, v in KNOWN.items()}
    for k, v in known.items():
        print(k, v, "percentile among flat:", round(float((gains < v["gain"]).mean() * 100), 1))
    for r in rows[:3] + rows[-3:]:
        print(r)
    log("lever_rank", {"world": world, "gap_max": gap_max, "n_flat": len(rows), "known": known, "top": rows[:10],
                       "bottom": rows[-10:]})


if __name__ == "__main__":
    main(sys.argv[1:])
