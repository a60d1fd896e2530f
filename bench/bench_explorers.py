"""Kernel-side cost of the explorers' answers: every setting of a slider grid, looked up, drawn and encoded.

Run ``python bench/bench_explorers.py`` from the repository root. For each explorer it moves one
control through its choices as a reader's key presses would (in the kernel, without a browser) and
prints, per explorer, the median and maximum wall and CPU seconds from the new value to the PNG the
front end receives, with the load average. The browser tests (``tests/browser``) measure the same
path end to end, key press to picture, in Chromium.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _moves(explorer, slider, values) -> list[tuple[float, float]]:
    """Set ``slider`` to each of ``values``; (wall, cpu) seconds each, drawing included."""
    out = []
    for value in values:
        wall, cpu = time.perf_counter(), time.process_time()
        slider.value = value
        out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return out


def main() -> int:
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.engine import assembly
    from fedpurel_lite.views import widgets
    from fedpurel_lite.views.bias_app import BiasTransferApp

    config = RunConfig.load(ROOT / "configs" / "embedded.toml").with_overrides({"cache_dir": str(ROOT / "data/cache")})
    rows: dict[str, list[tuple[float, float]]] = {}
    t = time.perf_counter()
    app = BiasTransferApp(None, config)
    rows["app: first answer (no bank, no run)"] = [(time.perf_counter() - t, float("nan"))]
    assert app.store is not None, "no precomputed grid: python -m fedpurel_lite explore-grid"
    rows["app: imbalance ratio"] = _moves(app, app.ratio, [*app.ratio.options[::-1], *app.ratio.options])
    rows["app: Dirichlet α"] = _moves(app, app.alpha, [*app.alpha.options[::-1], *app.alpha.options])
    rows["app: tick every method"] = []
    for box in app.boxes.values():
        wall, cpu = time.perf_counter(), time.process_time()
        box.value = True
        rows["app: tick every method"].append((time.perf_counter() - wall, time.process_time() - cpu))
    bank = assembly.load_bank(config, progress=False)
    fed = widgets.FederationExplorer(bank, config, rounds=widgets.FEDERATION_GRID_ROUNDS)
    assert fed.store is not None, "no precomputed grid: python -m fedpurel_lite explore-grid"
    rows["06 federation: imbalance ratio"] = _moves(fed, fed.ratio, [*fed.ratio.options[::-1], *fed.ratio.options])
    rows["06 federation: Dirichlet α"] = _moves(fed, fed.alpha, [*fed.alpha.options[::-1], *fed.alpha.options])
    train, test = np.asarray(bank.train_labels), np.asarray(bank.test_labels)
    part = widgets.PartitionExplorer(train, test, bank.class_order)
    rows["02 partition: imbalance ratio"] = _moves(part, part.ratio, range(99, 89, -1))
    prof = widgets.ProfileExplorer(widgets.zero_shot_per_class(bank), bank.class_order)
    rows["01 profile: imbalance ratio"] = _moves(prof, prof.ratio, range(99, 89, -1))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"explorer answers in the kernel (wall / CPU seconds per setting; load average {load}; "
          f"{os.cpu_count()} CPUs)")
    print(f"{'control':<40} {'n':>3} {'median wall':>12} {'max wall':>9} {'median CPU':>11}")
    for name, times in rows.items():
        walls, cpus = [w for w, _ in times], [c for _, c in times]
        print(f"{name:<40} {len(times):>3} {statistics.median(walls):>12.3f} {max(walls):>9.3f} "
              f"{statistics.median(cpus):>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
