"""The series in a real browser: JupyterLab in Chromium, Run All, images everywhere, widgets that respond.

For every notebook: open it in JupyterLab, run all cells, and check that no cell shows an error,
that the run passes nbval's rules against the stored notebook (cells tagged ``nbval-check-output``
print what is stored; :func:`notebook_checks.nbval_failures`) and that every drawing cell shows an
image (for the explorers: the image inside the widget). For the notebooks with an explorer, move
each control with the keyboard as a reader would and check that the explorer's plot changes; the
time from the key press to the new plot is recorded as a benchmark (``build/browser/latency.json``,
printed at the end of the run).

This is the one execution of the series in ``make test``: when it runs, the root ``conftest.py``
does not collect ``notebooks/`` for nbval (which would execute every notebook again). The kernels
inherit the session's pinned kernels and ``FEDPUREL_FIGURES_CHECK``, so a figure that differs from
its committed bytes raises in its cell and fails here as an error.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from notebook_checks import draws, nbval_failures
from servers import ROOT, close_notebook, open_notebook, record_latency

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RUN_ALL_TIMEOUT_S = 480
IMAGE_TIMEOUT_S = 60
WIDGET_TIMEOUT_S = 120
SHOTS = ROOT / "build" / "browser"

STATE = """() => {
  const panel = window.__panel, kernel = panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.map((c, i) => {
    const code = c.model.type === 'code';
    const prompt = code ? (c.node.querySelector('.jp-InputPrompt') || {}).textContent || '' : '';
    const outputs = code ? c.model.outputs.toJSON() : [];
    const imgs = Array.from(c.node.querySelectorAll('.jp-OutputArea img'))
      .filter(im => im.src.startsWith('data:image') || im.src.startsWith('blob:'));
    return {index: i, code, count: code ? c.model.executionCount : null, running: prompt.includes('*'),
            errors: outputs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
            images: imgs.length, signature: imgs.map(im => im.src.length + ':' + im.src.slice(-96)).join('|')};
  });
  return {kernel: kernel ? kernel.status : 'none', cells};
}"""
NOTEBOOK_JSON = "() => window.__panel.model.toJSON()"


def _state(page) -> dict:
    return page.evaluate(STATE)


def _run_all(page, sources: list[str]) -> dict:
    """Run all cells and wait (bounded) until every code cell ran, or a cell failed."""
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.monotonic() + RUN_ALL_TIMEOUT_S
    while time.monotonic() < deadline:
        state = _state(page)
        code = [c for c in state["cells"] if c["code"]]
        if any(c["errors"] for c in code):
            return state
        if state["kernel"] == "idle" and all(c["count"] is not None and not c["running"] for c in code):
            return state
        time.sleep(1.0)
    pytest.fail(f"Run All did not finish in {RUN_ALL_TIMEOUT_S} s", pytrace=False)


def _wait_images(page, drawing: list[int]) -> dict:
    deadline = time.monotonic() + IMAGE_TIMEOUT_S
    while True:
        state = _state(page)
        if all(state["cells"][i]["images"] for i in drawing) or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_run_all_in_jupyterlab(lab_page, path: Path, request):
    rel = f"notebooks/{path.name}"
    stored = nbformat.read(path, as_version=4)
    sources = [c.source for c in stored.cells]
    open_notebook(lab_page, rel)
    state = _run_all(lab_page, sources)
    errors = {i: c["errors"] for i, c in enumerate(state["cells"]) if c["errors"]}
    assert not errors, f"cells with errors in the browser: {errors}"
    differ = nbval_failures(stored, lab_page.evaluate(NOTEBOOK_JSON), lax=request.config.getoption("nbval_lax"))
    assert not differ, "the run in JupyterLab fails nbval's checks:\n" + "\n".join(differ)
    drawing = [i for i, s in enumerate(sources) if state["cells"][i]["code"] and draws(s)]
    assert drawing or path.name.startswith("00_"), "every lesson draws (the start page need not)"
    state = _wait_images(lab_page, drawing)
    empty = [sources[i].splitlines()[0] for i in drawing if not state["cells"][i]["images"]]
    assert not empty, f"drawing cells without an image in the browser: {empty}"
    explorers = [i for i, s in enumerate(sources) if "Explorer(" in s and "display(" in s]
    for cell in explorers:
        _move_every_control(lab_page, cell, path.name[:2])
    SHOTS.mkdir(parents=True, exist_ok=True)
    lab_page.screenshot(path=str(SHOTS / f"lab_{path.stem}.png"))  # for a look after a failure
    close_notebook(lab_page)


def _controls(page, cell: int):
    node = page.locator(".jp-Notebook .jp-Cell").nth(cell)
    return node, node.locator(".widget-slider .noUi-handle")


def _move_every_control(page, cell: int, notebook: str) -> None:
    """Press an arrow key on every slider of the explorer in ``cell``; its plot must change."""
    node, handles = _controls(page, cell)
    handles.first.wait_for(state="visible")
    labels = [t.strip() for t in node.locator(".widget-slider .widget-label").all_inner_texts()]
    for k in range(handles.count()):
        before = _state(page)["cells"][cell]["signature"]
        assert before, "the explorer shows a plot before it is moved"
        readout = node.locator(".widget-slider .widget-readout").nth(k)
        value_before = readout.inner_text()
        handles.nth(k).scroll_into_view_if_needed()
        handles.nth(k).focus()
        start = time.perf_counter()
        page.keyboard.press("ArrowLeft")
        deadline = time.monotonic() + WIDGET_TIMEOUT_S
        while True:
            now = _state(page)["cells"][cell]
            if now["signature"] and now["signature"] != before:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"notebook {notebook}: moving {labels[k]!r} did not change the plot in "
                            f"{WIDGET_TIMEOUT_S} s", pytrace=False)
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        assert readout.inner_text() != value_before, f"{labels[k]!r} moved"
        record_latency(f"{notebook} {labels[k]} ({value_before} → {readout.inner_text()})", seconds)
        _wait_idle(page, node)


def _wait_idle(page, node) -> None:
    """Wait until the explorer's status line is empty again (no update running)."""
    deadline = time.monotonic() + WIDGET_TIMEOUT_S
    while "computing" in " ".join(node.locator(".widget-html").all_inner_texts()):
        if time.monotonic() > deadline:
            pytest.fail("the explorer stayed busy", pytrace=False)
        time.sleep(0.1)
