"""The student edition of the notebook series: no worked solutions, no outputs, no widget state.

``python -m fedpurel_lite student --out DIR`` writes ``DIR/notebooks/`` (the start page, the
numbered notebooks and the glossary), a copy of ``configs/`` and a link to the repository's
``data/`` (the shipped weights and the feature cache), so the notebooks' relative paths
(``../configs/…``, ``../data/cache``) work unchanged. Every cell tagged ``solution`` becomes a
"your answer here" prompt, every code cell loses its outputs and execution count, and the stored
widget state is dropped: the student runs the notebooks and sees only what they compute. The
teacher's copy (the repository's ``notebooks/``) keeps solutions and outputs.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..views.course import SOLUTION_TAG

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "build" / "student"
MARKER = ".fedpurel-student-edition"
PROMPT = ("**Your answer here.** Work the exercise out in the cell above; the teacher's copy of this notebook "
          "has a worked solution in this place.")


def series(folder: Path = ROOT / "notebooks") -> list[Path]:
    """The notebooks of the course (``NN_*.ipynb``, start page included) in order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def is_solution(cell: Any) -> bool:
    """Whether a cell is a worked solution (tagged :data:`~fedpurel_lite.views.course.SOLUTION_TAG`)."""
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def student_copy(nb: Any) -> Any:
    """A clean copy of a notebook: solutions replaced by a prompt, no outputs, no widget state.

    Parameters
    ----------
    nb : nbformat.NotebookNode
        A teacher's notebook (executed or not); it is not changed.

    Returns
    -------
    nbformat.NotebookNode
        The student's notebook.
    """
    import nbformat

    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        if is_solution(cell):
            cells.append(nbformat.v4.new_markdown_cell(PROMPT))
            continue
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)
    for i, cell in enumerate(nb.cells):  # fixed ids: the prompts got random ones
        cell["id"] = f"cell-{i:03d}"
    return nb


def _check_out(out: Path) -> None:
    """Refuse an output folder that holds anything but an earlier student edition, or the sources."""
    out = out.resolve()
    for source in (ROOT / "notebooks", ROOT / "configs", ROOT / "data", ROOT / "fedpurel_lite"):
        if out == source or source in out.parents or out in source.parents:
            raise UserError(f"--out {out} overlaps the repository's {source.name}/; choose a folder of its own "
                            f"(default {DEFAULT_OUT})")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UserError(f"--out {out} is not empty and holds no earlier student edition; "
                        "give an empty or new folder (nothing was written)")


def write_student_edition(out: Path = DEFAULT_OUT, notebooks: Path = ROOT / "notebooks",
                          configs: Path = ROOT / "configs", data: Path = ROOT / "data") -> list[Path]:
    """Write the student edition into ``out``; returns the notebooks written.

    An earlier edition in ``out`` (recognised by its marker file) is replaced; any other non-empty
    folder is refused with a :class:`~fedpurel_lite.errors.UserError` before anything is written.
    """
    import nbformat

    out = Path(out)
    _check_out(out)
    paths = series(notebooks)
    if not paths:
        raise UserError(f"no notebooks named NN_*.ipynb in {notebooks}")
    if out.exists():
        shutil.rmtree(out)
    (out / "notebooks").mkdir(parents=True)
    (out / MARKER).write_text("written by python -m fedpurel_lite student; replaced on the next run\n")
    written = []
    for path in paths:
        nb = student_copy(nbformat.read(path, as_version=4))
        target = out / "notebooks" / path.name
        target.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
        written.append(target)
    for extra in sorted(notebooks.glob("*.md")):
        shutil.copy2(extra, out / "notebooks" / extra.name)
    shutil.copytree(configs, out / "configs")
    os.symlink(Path(os.path.relpath(data.resolve(), out.resolve())), out / "data", target_is_directory=True)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m fedpurel_lite student --out DIR``: write the student edition of the series."""
    parser = argparse.ArgumentParser(prog="python -m fedpurel_lite student", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT.relative_to(ROOT)}); an earlier edition there "
                             "is replaced, any other non-empty folder is refused")
    args = parser.parse_args(argv)
    written = write_student_edition(args.out)
    print(f"student edition: {len(written)} notebooks without solutions or outputs in {args.out / 'notebooks'}")
    print(f"open it with: jupyter lab {args.out / 'notebooks' / written[0].name}")
    return 0
