"""The notebook series is commit-ready: parameters cells, nbval markers, thin cells, figures on disk.

These are static checks of the stored ``.ipynb`` files (fast, no kernel); executing the series
under nbval is ``pytest --nbval-lax --nbval-current-env notebooks/ -p no:python``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from notebook_checks import draws, missing_images

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LESSONS = [p for p in NOTEBOOKS if not p.name.startswith("00_")]  # the start page has no figures or exercises
SAVED = re.compile(r"save_figure\(\s*\w+\s*,\s*\"([^\"]+)\"")


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(str(out["data"].get("text/plain", "")))
    return "".join(parts)


def test_the_series_is_complete():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06"]
    assert NOTEBOOKS[0].name == "00_start_here.ipynb"
    assert (ROOT / "notebooks" / "glossary.md").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_parameters_cell_for_papermill(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in _code(nb) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    names = set(re.findall(r"^(\w+)\s*=", tagged[0].source, flags=re.M))
    assert {"config_path", "world", "backbone", "pretrained", "seed"} <= names
    assert _code(nb)[0] is tagged[0], "the parameters cell comes first"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_stored_executed_without_errors(path):
    nb = nbformat.read(path, as_version=4)
    for cell in _code(nb):
        assert cell.execution_count is not None, f"cell not executed: {cell.source[:60]!r}"
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:60]


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_nbval_tags(path):
    nb = nbformat.read(path, as_version=4)
    assert not [c for c in _code(nb) if "NBVAL_" in c.source], "nbval markers are cell tags, not comments"
    checked = [c for c in _code(nb) if "nbval-check-output" in _tags(c)]
    if path.name[:2] in ("01", "02", "06"):
        assert checked, "deterministic facts are checked"
    for cell in checked:
        text = _text(cell)
        assert text.strip(), f"a checked cell prints something: {cell.source[:60]!r}"
        assert not re.search(r"0x[0-9a-f]{6,}", text), "no memory addresses in checked outputs"
        assert not re.search(r"\d+(\.\d+)?\s*(s|sec|seconds)\b|it/s", text), "no timings in checked outputs"
        assert ".value =" not in cell.source, "slider changes redraw: keep them out of checked cells"
        assert all(o.output_type == "stream" for o in cell.outputs), "checked cells only print"
    for cell in _code(nb):
        if "Explorer(" in cell.source or ".widget)" in cell.source or ".value =" in cell.source:
            assert "nbval-ignore-output" in _tags(cell), f"widget cell not ignored: {cell.source[:60]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_stored_drawing_cells_hold_images(path):
    nb = nbformat.read(path, as_version=4)
    assert not missing_images(nb), "drawing cells stored without an image"


def test_the_image_check_catches_a_backend_switch(tmp_path):
    """An Agg switch in a kernel silences every later plt.show(): the check must see it."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"),
        nbformat.v4.new_code_cell("import matplotlib\nmatplotlib.use('Agg')"),
        nbformat.v4.new_code_cell("plt.plot([2, 1])\nplt.show()"),
        nbformat.v4.new_code_cell("print('no figure here')"),
    ])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert [draws(c.source) for c in nb.cells] == [True, False, True, False]
    assert missing_images(nb) == ["plt.plot([2, 1])"]


def test_what_counts_as_drawing():
    assert draws("fig, ax = plt.subplots()\nplots.curves({}, 'y', ax=ax)")
    assert draws("display(explorer.widget)") and draws("display(Image(filename=sheet))")
    assert not draws("table = plots.summary_table(t)\nplots.save_figure(fig, 'x')")
    assert not draws("# plt.show()\nx = 1")


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_thin_cells_and_saved_figures(path):
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in _code(nb))
    assert re.search(r"^from fedpurel_lite(\.\w+)* import", source, flags=re.M)
    assert not re.search(r"^\s*(def|class)\s", source, flags=re.M), "no algorithm lives only in a notebook"
    assert ".savefig(" not in source, "figures go through plots.save_figure (fixed metadata)"
    names = SAVED.findall(source)
    assert names, "every notebook writes at least one figure"
    for name in names:
        assert name.startswith(path.name[:2] + "_"), f"figure {name!r} is prefixed by its notebook"
        png = ROOT / "figures" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} written by the notebook"


# ----------------------------------------------------------------------------- the course
SERIES_AND_APPS = NOTEBOOKS + sorted((ROOT / "apps").glob("*.ipynb"))
OUTSIDE = re.compile(r"paper\.md|design\.md|issue\s*#?\d+", re.I)


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_exercises_with_collapsed_solutions(path):
    nb = nbformat.read(path, as_version=4)
    starts = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "**Exercise " in c.source]
    assert 2 <= len(starts) <= 4, "2-4 exercises per notebook"
    solutions = [i for i, c in enumerate(nb.cells) if "solution" in _tags(c)]
    assert len(solutions) == len(starts)
    for start, sol in zip(starts, solutions, strict=True):
        assert start < sol <= start + 3, "each exercise is followed by its solution"
        cell = nb.cells[sol]
        assert cell.cell_type == "code" and cell.source.startswith("# Solution")
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, "solutions are collapsed"
        assert cell.metadata["jupyter"].get("outputs_hidden") is True, "solution outputs are collapsed"


def test_fedavg_round_from_scratch_is_checked_against_the_simulator():
    nb = nbformat.read(ROOT / "notebooks" / "03_finetuning_erodes_balance.ipynb", as_version=4)
    cell = next(c for c in _code(nb) if "client.train_shared(" in c.source)
    assert "simulate.run(" in cell.source and "assert gap <" in cell.source
    assert "equals simulate.run's global model" in _text(cell)


@pytest.mark.parametrize("path", SERIES_AND_APPS, ids=lambda p: p.stem)
def test_no_reference_outside_the_repository(path):
    text = path.read_text()
    assert not OUTSIDE.search(text), OUTSIDE.search(text).group(0)


def test_readme_refers_to_nothing_outside_and_numbers_claims_like_the_notebooks():
    readme = (ROOT / "README.md").read_text()
    assert not OUTSIDE.search(readme)
    for claim, notebook in (("i", "03"), ("ii", "04"), ("iii", "05")):
        nb = next((ROOT / "notebooks").glob(f"{notebook}_*.ipynb")).read_text()
        assert f"claim ({claim})" in nb, f"notebook {notebook} names claim ({claim})"
        assert f"(claim {claim})" in readme
    assert "claim (ii)" not in next((ROOT / "notebooks").glob("05_*.ipynb")).read_text()
