"""nbval's verdict on an executed copy (``notebook_checks.nbval_failures``) is nbval's own.

The browser tests execute the series once, in JupyterLab, and hold that run to nbval's rules instead
of executing every notebook a second time under nbval. These tests check the rules on small
notebooks, and that nbval itself, executing the same notebooks, fails exactly where they do.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output
from notebook_checks import nbval_failures, nbval_options

ROOT = Path(__file__).resolve().parents[1]


def _cell(source: str, text: str, tags: tuple[str, ...] = (), count: int | None = 1) -> nbformat.NotebookNode:
    cell = new_code_cell(source, execution_count=count, metadata={"tags": list(tags)} if tags else {})
    if text:
        cell.outputs = [new_output("stream", name="stdout", text=text)]
    return cell


def _stored() -> nbformat.NotebookNode:
    return new_notebook(cells=[_cell("print('a')", "a\n", ("nbval-check-output",)),
                               _cell("print('b')", "b\n"),
                               _cell("print('c')", "c\n", ("nbval-ignore-output",))])


def test_options_follow_nbvals_tags_and_comments() -> None:
    assert nbval_options(_cell("x", "", ("nbval-check-output",))) == {"check": True, "skip": False,
                                                                      "check_exception": False}
    assert nbval_options(_cell("x", "")) == {"check": False, "skip": False, "check_exception": False}
    assert nbval_options(_cell("x", ""), lax=False)["check"] is True
    assert nbval_options(_cell("# NBVAL_IGNORE_OUTPUT\nx", ""), lax=False)["check"] is False
    assert nbval_options(_cell("x", "", ("nbval-skip",)))["skip"] is True
    assert nbval_options(_cell("x", "", ("raises-exception",)))["check_exception"] is True


def test_a_faithful_run_passes_and_streams_are_coalesced() -> None:
    run = _stored()
    run.cells[0].outputs = [new_output("stream", name="stdout", text=t) for t in ("", "a\n")]
    run.cells[0].outputs[0].text = "x\r"  # overwritten by the carriage return, as a terminal shows it
    assert nbval_failures(_stored(), run) == []


def test_a_checked_cells_changed_output_fails_an_unchecked_one_does_not() -> None:
    run = _stored()
    run.cells[1].outputs[0].text = "B\n"
    run.cells[2].outputs[0].text = "C\n"
    assert nbval_failures(_stored(), run) == []
    assert len(nbval_failures(_stored(), run, lax=False)) == 1  # the untagged cell; the ignored one stays ignored
    run.cells[0].outputs[0].text = "A\n"
    (failure,) = nbval_failures(_stored(), run)
    assert failure.startswith("cell 0 (\"print('a')\"): outputs differ"), failure
    assert "Reference output" in failure and "\n  a\n" in failure and "\n  A\n" in failure, failure


def test_a_missing_or_extra_output_kind_fails_images_and_widget_ids_do_not_count() -> None:
    stored, run = _stored(), _stored()
    run.cells[0].outputs.append(new_output("display_data", data={"text/plain": "<Figure>", "image/png": "AAAA"}))
    assert "Unexpected output fields" in nbval_failures(stored, run)[0]
    stored.cells[0].outputs.append(new_output("display_data", data={"text/plain": "<Figure>", "image/png": "BBBB"}))
    assert nbval_failures(stored, run) == []
    view = "application/vnd.jupyter.widget-view+json"
    stored.cells[0].outputs.append(new_output("display_data", data={"text/plain": "W", view: {"model_id": "1"}}))
    run.cells[0].outputs.append(new_output("display_data", data={"text/plain": "W", view: {"model_id": "2"}}))
    assert nbval_failures(stored, run) == []
    run.cells[0].outputs = run.cells[0].outputs[:1]
    assert "Missing output fields" in nbval_failures(stored, run)[0]


def test_errors_fail_unless_expected_and_unrun_cells_must_be_empty() -> None:
    run = _stored()
    run.cells[2].outputs = [new_output("error", ename="ValueError", evalue="bad", traceback=[])]
    assert nbval_failures(_stored(), run) == ["cell 2 (\"print('c')\") raised ValueError: bad"]
    stored = _stored()
    stored.cells[2].metadata["tags"] = ["raises-exception"]
    assert nbval_failures(stored, run) == []
    stored.cells[2].metadata["tags"] = ["nbval-skip"]
    assert nbval_failures(stored, run) == []
    stored = _stored()
    stored.cells[1].execution_count = None
    assert nbval_failures(stored, _stored()) == ["cell 1 (\"print('b')\"): unrun reference cell has outputs"]
    assert "code cells" in nbval_failures(stored, new_notebook(cells=[]))[0]


def test_json_from_a_front_end_reads_like_the_file() -> None:
    """JupyterLab hands the notebook over as plain JSON (multi-line strings may be lists)."""
    run = copy.deepcopy(dict(_stored()))
    run["cells"] = [dict(c, outputs=[dict(o, text=[o["text"]]) for o in c["outputs"]]) for c in run["cells"]]
    run["cells"].append({"id": "md", "cell_type": "markdown", "source": "text", "metadata": {}, "attachments": None})
    assert nbval_failures(_stored(), run) == []


@pytest.mark.slow
def test_nbval_executing_the_notebook_fails_where_the_verdict_does(tmp_path: Path) -> None:
    """nbval itself (one kernel, two notebooks): the faithful copy passes, the changed one fails in the same cell."""
    stored = _stored()
    good, bad = copy.deepcopy(stored), copy.deepcopy(stored)
    bad.cells[0].outputs[0].text = "A\n"  # a stored output the code does not print
    bad.cells[1].outputs[0].text = "B\n"  # not checked under --nbval-lax
    for name, nb in (("good", good), ("bad", bad)):
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", "-o", "addopts=", "--rootdir", str(tmp_path),
                           str(tmp_path / "good.ipynb"), str(tmp_path / "bad.ipynb")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    failed = re.findall(r"^FAILED (?:.*/)?(\w+)\.ipynb::Cell (\d+)", done.stdout, flags=re.M)
    assert failed == [("bad", "0")], done.stdout
    assert "1 failed, 5 passed" in done.stdout, done.stdout  # every other cell of both copies
    # the executed outputs nbval compared are the good copy's; the verdict agrees cell by cell
    assert nbval_failures(good, stored) == []
    assert [f.split(" ")[1] for f in nbval_failures(bad, stored)] == ["0"]
