"""`demo.execute` executes a notebook again from a fresh kernel when a cell gets no reply in time."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellTimeoutError

from fedpurel_lite.cli import demo


def _notebook(path: Path, marker: Path, sleeps: int) -> None:
    """A notebook whose first cell hangs on its first ``sleeps`` executions (counted in ``marker``)."""
    code = (f"import pathlib, time\nm = pathlib.Path({str(marker)!r})\nn = int(m.read_text()) if m.exists() else 0\n"
            f"m.write_text(str(n + 1))\nif n < {sleeps}:\n    time.sleep(30)\nprint('done', n)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.write_text(nbformat.writes(nb))


def test_a_hung_cell_is_executed_again_and_the_outputs_are_stored(tmp_path):
    path, marker = tmp_path / "nb.ipynb", tmp_path / "count"
    _notebook(path, marker, sleeps=1)
    demo.execute(path, timeout=3, attempts=2)
    assert marker.read_text() == "2"
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    assert [o.get("text") for o in outputs] == ["done 1\n"]


def test_it_gives_up_after_the_last_attempt(tmp_path):
    path, marker = tmp_path / "nb.ipynb", tmp_path / "count"
    _notebook(path, marker, sleeps=2)
    before = path.read_text()
    with pytest.raises(CellTimeoutError):
        demo.execute(path, timeout=3, attempts=2)
    assert marker.read_text() == "2" and path.read_text() == before
