"""How fast a bad value is reported from the command line (wall time of the whole process).

Usage::

    python bench/bench_validation.py [--repeats 3]

Each case runs ``python -m fedpurel_lite run --config configs/embedded.toml --set ...`` in a fresh
process and reports the median wall time until it exits with its one ``error:`` line. Value and
type errors are reported before torch is imported; registry and machine checks (method, PEFT,
device, client count, weights) import torch first. Target: under 3 s each.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "lr=inf (value)": ["lr=inf"],
    "rounds=1.5 (type)": ["rounds=1.5"],
    "lrr=1 (unknown key)": ["lrr=1"],
    "method=fedavgg (registry)": ["method=fedavgg"],
    "device=cuda (machine)": ["device=cuda"],
    "num_clients=100000 (clients vs samples)": ["num_clients=100000"],
    "backbone=ViT-B-32 (weights)": ["backbone=ViT-B-32"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'case':<42} {'median s':>9}  message")
    for name, pairs in CASES.items():
        times, err = [], ""
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "fedpurel_lite", "run", "--config", "configs/embedded.toml",
                                   "--set", *pairs], cwd=ROOT, capture_output=True, text=True, timeout=120)
            times.append(time.perf_counter() - t0)
            err = proc.stderr.strip()
        print(f"{name:<42} {statistics.median(times):>9.2f}  {err[:70]}")


if __name__ == "__main__":
    main()
