"""Federated runs (simulate.run, public API) on a class order given by name.

    .venv/bin/python bench/prompt_erosion/candidate_fl.py ORDER METHOD PEFT SEED [ROUNDS] [key=value ...]

WORLD=idio (env, optional: the re-rendered world of shift_worlds.py)
ORDER: shape:<10 digits> (orders.by_shape with that shape ranking)
     | stratified | random | by_shape | flat_shape (shape ranking [2,3,9,0,1,5,6,7,8,4], see flat_shape_order.py)
Appends the GM last-10 summary to results/candidate_fl.jsonl.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orders  # noqa: E402
import torch  # noqa: E402
from common import fl, load_default, variant  # noqa: E402

FLAT_SHAPE_RANK = [2, 3, 9, 0, 1, 5, 6, 7, 8, 4]
ORDERS = {"stratified": orders.stratified, "random": orders.random_perm, "by_shape": orders.by_shape,
          "flat_shape": lambda: orders.by_shape(FLAT_SHAPE_RANK),
          "strat103": lambda: orders.stratified(103)}  # stratified order whose zero-shot is flat on the idio world


def main(argv):
    order, method, peft, seed = argv[0], argv[1], argv[2], int(argv[3])
    rounds = int(argv[4]) if len(argv) > 4 else 40
    extra = dict(a.split("=", 1) for a in argv[5:])
    torch.set_num_threads(1)
    cfg, bank, backbone = load_default()
    world = os.environ.get("WORLD", "default")
    if world != "default":  # a re-rendered world from shift_worlds.py
        import shift_worlds
        bank = shift_worlds.load(world)
    if order.startswith("shape:"):  # shape:2390156784 = orders.by_shape with this shape ranking
        b = variant(bank, class_order=orders.by_shape([int(c) for c in order[len("shape:"):]]))
    else:
        b = variant(bank, class_order=ORDERS[order]())
    over = {"method": method, "peft": peft, "seed": seed, "rounds": rounds, **extra}
    fl(f"{world}|{order}|{method}|{peft}|s{seed}|r{rounds}", b, backbone, record="candidate_fl", **over)


if __name__ == "__main__":
    main(sys.argv[1:])
