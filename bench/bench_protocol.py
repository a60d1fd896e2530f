"""Benchmark: the full paper protocol on the embedded world (stage 1 + 2, every evaluation, every round).

Protocol: 20 clients, participation 0.4 (round 0: all), 100 rounds, IF = 100, Dirichlet 1.0, one
local epoch per stage, batch 32, evaluation of the global model on the balanced test set and of
all 20 personal models on their test splits after every round.

Usage::

    python bench/bench_protocol.py                      # text-anchored head (target <= 60 s)
    python bench/bench_protocol.py --peft prompt        # CoOp prompt learner (target <= 10 min)
    python bench/bench_protocol.py --peft lora          # vision LoRA, rank 8 (target <= 15 min, <= 3 GB)
    python bench/bench_protocol.py --method fedavg --rounds 20

Prints the wall time of the run (bank loading reported separately) and the peak resident memory
of the process.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedpurel_lite.config import RunConfig  # noqa: E402
from fedpurel_lite.engine.assembly import resolve_device  # noqa: E402
from fedpurel_lite.engine.simulate import run  # noqa: E402
from fedpurel_lite.engine.workers import resolve_workers  # noqa: E402
from fedpurel_lite.peft import PEFTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peft", default="head", choices=list(PEFTS.names()))
    parser.add_argument("--method", default="fedpurel")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value config overrides")
    args = parser.parse_args()

    t0 = time.perf_counter()
    from fedpurel_lite.data.features import load_embedded_bank

    config = RunConfig().with_overrides(dict(method=args.method, peft=args.peft, rounds=args.rounds, seed=args.seed))
    config = config.with_overrides(args.set) if args.set else config
    bank = load_embedded_bank(progress=args.progress)
    backbone = None
    if PEFTS.get(args.peft).needs_backbone:
        from fedpurel_lite.data.backbone import load_backbone
        from fedpurel_lite.engine.assembly import with_inputs

        backbone = load_backbone()
        bank = with_inputs(config, bank, backbone, progress=args.progress)  # vision LoRA: the cached tokens
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = run(config, bank=bank, backbone=backbone, progress=args.progress)
    wall = time.perf_counter() - t1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    s = result.summary["last10"]
    workers = resolve_workers(config.run.workers, resolve_device(config.world.device),
                              PEFTS.get(config.method.peft).concurrent_clients)
    print(f"method={args.method} peft={args.peft} rounds={args.rounds} seed={args.seed} workers={workers}")
    print(f"bank+backbone load: {t_load:.1f} s")
    print(f"run wall time:      {wall:.1f} s ({wall / args.rounds * 1000:.0f} ms/round)")
    print(f"peak RSS:           {peak_mb:.0f} MB")
    print("last-10 means: GM acc {accuracy:.2f} head {head:.2f} medium {medium:.2f} tail {tail:.2f}".format(**s["gm"]))
    print("               PM acc {accuracy:.2f} tail {tail:.2f}; GM on client splits {g:.2f}".format(
        **s["pm"], g=s["gm_clients"]["accuracy"]))


if __name__ == "__main__":
    main()
