"""How long the test suite takes, per tier and per file, and how loaded the machine was meanwhile.

``make test`` is ruff, mypy and one pytest session over ``tests/``, ``notebooks/`` and ``apps/``;
``make check`` is ruff, mypy and the fast tier (``-m "not slow" tests``); both pytest sessions run on
the Makefile's ``WORKERS`` pytest-xdist workers. This script runs the same steps (or the ones named)
and prints, as a Markdown table, the wall time of each step and of each test file, the CPU time of
the processes it started, and the 1-minute load average sampled every few seconds. Timing is
measured here, never asserted by a test.

Usage::

    python bench/bench_suite.py                       # make test: lint, types, the whole pytest session
    python bench/bench_suite.py --steps lint types fast    # make check
    python bench/bench_suite.py --steps files tests/test_flower_engine.py tests/browser/test_lab_notebooks.py
    python bench/bench_suite.py --json /tmp/suite.json --nice 10
    python bench/bench_suite.py --workers 0               # one process, as before the workers

Run it from the repository root with the project's Python (``.venv/bin/python``). On a shared
machine the load columns say how far the numbers are from an idle one; ``--nice`` lowers its
priority.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("lint", "types", "suite", "fast", "slow", "files")
LOAD_EVERY_S = 5.0


@dataclass
class Step:
    """One measured command: wall and children's CPU seconds, load average (min/mean/max), its result."""

    name: str
    command: list[str]
    wall_s: float = 0.0
    cpu_s: float = 0.0
    load: dict[str, float] = field(default_factory=dict)
    returncode: int = 0
    files: dict[str, float] = field(default_factory=dict)
    tests: int = 0


class LoadSampler:
    """The 1-minute load average, sampled every :data:`LOAD_EVERY_S` seconds in a thread."""

    def __init__(self) -> None:
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(LOAD_EVERY_S):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = self.samples
        return {"min": round(min(s), 2), "mean": round(sum(s) / len(s), 2), "max": round(max(s), 2)}


def make_workers(makefile: Path = ROOT / "Makefile") -> int:
    """The number of pytest-xdist workers ``make test`` and ``make check`` use (the Makefile's ``WORKERS``)."""
    found = re.search(r"^WORKERS \?= (\d+)$", makefile.read_text(), re.M)
    if found is None:
        raise SystemExit(f"bench_suite: no 'WORKERS ?= N' line in {makefile}")
    return int(found.group(1))


def pytest_command(args: list[str], junit: Path, workers: int) -> list[str]:
    """A pytest session as ``make`` runs it, plus a JUnit report (per-file times) and the 25 slowest durations."""
    return [sys.executable, "-m", "pytest", "-n", str(workers), "-p", "no:cacheprovider", "--durations=25",
            f"--junitxml={junit}", "-o", "junit_family=xunit1", *args]


def commands(steps: list[str], files: list[str], junit_dir: Path,
             workers: int) -> list[tuple[str, list[str], Path | None]]:
    """The command of each step (and the JUnit file of the pytest ones)."""
    py = sys.executable
    out: list[tuple[str, list[str], Path | None]] = []
    for step in steps:
        junit = junit_dir / f"{step}.xml"
        if step == "lint":
            out.append((step, [py, "-m", "ruff", "check", "."], None))
        elif step == "types":
            out.append((step, [py, "-m", "mypy"], None))
        elif step == "suite":  # make test's pytest: the default testpaths
            out.append((step, pytest_command([], junit, workers), junit))
        elif step == "fast":  # make check's pytest
            out.append((step, pytest_command(["-q", "-m", "not slow", "tests"], junit, workers), junit))
        elif step == "slow":
            out.append((step, pytest_command(["-m", "slow"], junit, workers), junit))
        elif step == "files":
            out.append((step, pytest_command(files, junit, workers), junit))
    return out


def per_file(junit: Path) -> tuple[dict[str, float], int]:
    """Seconds per test file (setup + call + teardown of its tests) and the number of tests, from a JUnit report."""
    times: dict[str, float] = defaultdict(float)
    count = 0
    if not junit.exists():
        return {}, 0
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("file") or (case.get("classname") or "?").replace(".", "/")
        times[name] += float(case.get("time") or 0.0)
        count += 1
    return dict(sorted(times.items(), key=lambda kv: -kv[1])), count


def measure(name: str, command: list[str], junit: Path | None, niceness: int) -> Step:
    """Run one step from the repository root; its output goes to this terminal."""
    step = Step(name, command)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with LoadSampler() as load:
        proc = subprocess.run(command, cwd=ROOT, check=False,
                              preexec_fn=(lambda: os.nice(niceness)) if niceness else None)
    step.wall_s = round(time.perf_counter() - start, 1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    step.cpu_s = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1)
    step.load, step.returncode = load.summary(), proc.returncode
    if junit is not None:
        step.files, step.tests = per_file(junit)
    return step


def table(steps: list[Step], top: int) -> str:
    """The Markdown report: one row per step, then the slowest files of the pytest steps."""
    lines = ["| step | wall | CPU (children) | load 1-min min / mean / max | tests | exit |",
             "|---|---|---|---|---|---|"]
    for s in steps:
        lines.append(f"| {s.name} | {s.wall_s:.1f} s | {s.cpu_s:.1f} s | {s.load['min']} / {s.load['mean']} / "
                     f"{s.load['max']} | {s.tests or ''} | {s.returncode} |")
    total = sum(s.wall_s for s in steps)
    lines.append(f"| **total** | **{total:.1f} s ({total / 60:.1f} min)** | {sum(s.cpu_s for s in steps):.1f} s "
                 f"| | {sum(s.tests for s in steps)} | |")
    for s in steps:
        if s.files:
            lines += ["", f"Slowest files of `{s.name}` (wall of setup + call + teardown of their tests):", "",
                      "| file | seconds |", "|---|---|"]
            lines += [f"| {name} | {sec:.1f} |" for name, sec in list(s.files.items())[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", nargs="+", default=["lint", "types", "suite"], metavar="STEP",
                        help="lint, types, suite (make test's pytest), fast (make check's), slow, "
                             "files (followed by the paths or node ids to run)")
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    parser.add_argument("--nice", type=int, default=0, help="run the steps at this niceness")
    parser.add_argument("--top", type=int, default=15, help="how many of the slowest files to list")
    parser.add_argument("--workers", type=int, default=None,
                        help="pytest-xdist workers (default: the Makefile's WORKERS; 0 = one process)")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps if s in STEPS]
    files = [s for s in args.steps if s not in STEPS]
    if files and "files" not in steps:
        parser.error(f"unknown steps: {', '.join(files)} (paths go after 'files')")
    if "files" in steps and not files:
        parser.error("'files' needs the test paths to run")
    workers = make_workers() if args.workers is None else args.workers
    print(f"bench_suite: {os.cpu_count()} CPUs, {workers} pytest workers, load {os.getloadavg()[0]:.2f} at the start",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        done = [measure(name, cmd, junit, args.nice)
                for name, cmd, junit in commands(steps, files, Path(tmp), workers)]
    print()
    print(table(done, args.top))
    if args.json:
        record = {"cpus": os.cpu_count(), "workers": workers, "steps": [asdict(s) for s in done]}
        args.json.write_text(json.dumps(record, indent=1))
    return max((s.returncode for s in done), default=0)


if __name__ == "__main__":
    raise SystemExit(main())
