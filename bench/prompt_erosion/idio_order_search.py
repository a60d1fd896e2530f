"""On the idiosyncratic-drift world, find a stratified class order (shapes_class_order(seed)) whose zero-shot
accuracy is flat across head/medium/tail (template ensemble and random-context CoOp, seeds 7 and 8).

    .venv/bin/python bench/prompt_erosion/idio_order_search.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shift_worlds  # noqa: E402
import torch  # noqa: E402
from common import groups_of, log, per_class_zs_prompt, per_class_zs_template, variant  # noqa: E402

from fedpurel_lite.data.backbone import load_backbone  # noqa: E402
from fedpurel_lite.worlds.shapes import shapes_class_order  # noqa: E402


def gap(g):
    v = [g["head"], g["medium"], g["tail"]]
    return max(v) - min(v)


if __name__ == "__main__":
    torch.set_num_threads(1)
    bank = shift_worlds.load("idio")
    backbone = load_backbone()
    pcs = [per_class_zs_template(bank), per_class_zs_prompt(bank, backbone, seed=7),
           per_class_zs_prompt(bank, backbone, seed=8)]
    res = []
    for s in range(500):
        b = variant(bank, class_order=shapes_class_order(s))
        rows = [groups_of(b, pc) for pc in pcs]
        res.append((max(gap(r) for r in rows), s, rows))
    res.sort(key=lambda t: t[0])
    for g, s, rows in res[:5]:
        print(s, round(g, 2), [" / ".join(f"{r[k]:.1f}" for k in ("overall", "head", "medium", "tail")) for r in rows])
    print("seed 0:", [r for r in res if r[1] == 0][0][:2])
    log("idio_order_search", {"best": [{"order_seed": s, "gap": g, "zs": rows} for g, s, rows in res[:5]]})
