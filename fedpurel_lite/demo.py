"""The main job: execute every notebook of the series on the embedded default, in order.

``python -m fedpurel_lite demo`` runs ``notebooks/NN_*.ipynb`` in place with the current
interpreter's kernel (so the notebooks keep their outputs, and ``figures/`` is rewritten by them)
and prints how long each took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def notebooks(folder: Path = ROOT / "notebooks") -> list[Path]:
    """The series in order (files named ``NN_*.ipynb``)."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def execute(path: Path, timeout: int = 1800) -> float:
    """Execute one notebook in place (working directory = its folder); returns seconds taken."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the series (or the notebooks named with ``--only``)."""
    parser = argparse.ArgumentParser(prog="python -m fedpurel_lite demo", description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 03")
    args = parser.parse_args(argv)
    series = notebooks()
    if args.only:
        series = [p for p in series if any(p.name.startswith(s) for s in args.only)]
    if not series:
        print("no notebooks found in notebooks/ (the series is not written yet); nothing to execute")
        return 0
    total = 0.0
    for path in series:
        seconds = execute(path)
        total += seconds
        print(f"executed {path.relative_to(ROOT)} in {seconds:.1f} s")
    print(f"{len(series)} notebook(s) in {total:.1f} s; figures in {ROOT / 'figures'}")
    return 0
