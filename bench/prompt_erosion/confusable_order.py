"""Among flat-zero-shot shape-grouped orders, the one whose tail shapes zero-shot confuses most with head shapes.

A shared context that learns a class prior can only move whole shapes (the lever analysis), so how much
it can take from the tail depends on how close the tail shapes lie to the head shapes. The screen:
the zero-shot (template ensemble) confusion between shapes, ``M[s, t]`` = share of test images of shape
``s`` whose zero-shot top-1 has shape ``t != s``, plus the mean zero-shot probability on shape ``t``
for images of shape ``s`` (softer: counts near misses). For every ranking with a group gap of the
zero-shot accuracies <= GAP (as flat_shape_order.py), score = sum of that probability from the tail
shapes' images to the head shapes. Prints the top rankings with their flatness.

    WORLD=drift0.65 .venv/bin/python bench/prompt_erosion/confusable_order.py [GAP]
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


def main(gap_max):
    torch.set_num_threads(1)
    cfg, bank, backbone = load_default()
    world = os.environ.get("WORLD", "default")
    if world != "default":
        import shift_worlds
        bank = shift_worlds.load(world)
    zt = per_class_zs_template(bank)
    zp = [per_class_zs_prompt(bank, backbone, seed=s) for s in (7, 8, 1)]
    with torch.no_grad():
        prob = bank.zero_shot_logits(bank.test_features).softmax(1).numpy()
    y = bank.test_labels.numpy()
    p_shape = prob.reshape(len(y), 10, 10).sum(1)  # [N, shape]
    P = np.stack([p_shape[y % 10 == s].mean(0) for s in range(10)])  # [true shape, shape]
    np.fill_diagonal(P, 0.0)
    rank_group = default_groups(orders.by_shape())[orders.by_shape()]
    N = np.stack([np.bincount(rank_group[10 * k:10 * k + 10], minlength=3) for k in range(10)]).astype(float)
    W = N / N.sum(0, keepdims=True)
    perms = np.array(list(itertools.permutations(range(10))), dtype=np.int8)
    flat = np.zeros(len(perms))
    for pc in (zt, *zp):
        m = pc.reshape(10, 10).mean(0)[perms] @ W
        flat = np.maximum(flat, m.max(1) - m.min(1))
    head_w, tail_w = W[:, 0], W[:, 2]  # share of a rank block in head / tail
    # score: sum_{blocks i,j} tail_w[i] head_w[j] P[perm[i], perm[j]]
    score = np.einsum("i,pij,j->p", tail_w, P[perms[:, :, None], perms[:, None, :]], head_w)
    ok = np.flatnonzero(100 * flat <= gap_max)  # per-class accuracies are fractions
    best = ok[np.argsort(-score[ok])[:20]]
    rows = []
    for i in best:
        perm = [int(v) for v in perms[i]]
        b = variant(bank, class_order=orders.by_shape(perm))
        g = max(max(r["head"], r["medium"], r["tail"]) - min(r["head"], r["medium"], r["tail"])
                for r in (groups_of(b, pc) for pc in (zt, *zp)))
        if g <= gap_max:
            rows.append({"shape_rank": "".join(map(str, perm)), "score": round(float(score[i]), 4), "gap": round(g, 2),
                         "zs": {k: round(v, 1) for k, v in groups_of(b, zt).items()}})
    print("score range over flat orders:", float(score[ok].min()), float(score[ok].max()), "n flat:", len(ok))
    for r in rows[:5]:
        print(r)
    log("confusable_order", {"world": world, "gap_max": gap_max, "top": rows[:5]})


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.5)
