"""The course in a real browser: answers stay hidden, quizzes answer.

JupyterLab in Chromium (the session's server, ``servers.lab``) serves a temporary copy of the
teacher's notebooks and, beside it, the student edition written by ``python -m fedpurel_lite student``.
Notebook 01 (cheap: under a minute of Run All) stands for the series:

- student edition, after Run All: no solution cell exists, and no text of a worked solution (its
  explanation or its printed result) and no measured value of a "predict, then look" exercise is
  visible anywhere on the page;
- teacher's copy, after Run All: every solution cell is still collapsed, shows only its neutral first
  line and no output;
- a quiz gives feedback after Check, for a wrong choice (with the why of both) and for the right one.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from servers import ROOT, close_notebook, open_notebook

from fedpurel_lite.cli.student import write_student_edition
from fedpurel_lite.views.course import RESULT_TITLE, SOLUTION_FIRST_LINE

NOTEBOOK = "01_zero_shot_balance.ipynb"
RUN_ALL_TIMEOUT_S = 480
OPTION = re.compile(r'\(\s*"([^"]+)",\s*(True|False),')

DONE = """() => {
  const panel = window.__panel, kernel = panel.sessionContext.session.kernel;
  const code = panel.content.widgets.filter(c => c.model.type === 'code');
  const errors = code.flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                        .map(o => o.ename + ': ' + o.evalue));
  const pending = code.filter(c => c.model.executionCount === null
      || ((c.node.querySelector('.jp-InputPrompt') || {}).textContent || '').includes('*')).length;
  return {idle: kernel && kernel.status === 'idle', pending, errors};
}"""


def _teacher() -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "notebooks" / NOTEBOOK, as_version=4)


def _printed(outputs: list, state: dict, seen: set[str]) -> list[str]:
    """Lines printed into ``outputs``, and into the stored widgets they display (a folded result)."""
    lines = []
    for out in outputs:
        if out.get("output_type") == "stream":
            lines += [line.strip() for line in "".join(out["text"]).splitlines()]
        view = out.get("data", {}).get("application/vnd.jupyter.widget-view+json")
        refs = [view["model_id"]] if view else []
        while refs:
            model = refs.pop()
            if model in seen or model not in state:
                continue
            seen.add(model)
            body = state[model].get("state", {})
            lines += _printed(body.get("outputs", []) or [], state, seen)
            refs += [r[len("IPY_MODEL_"):] for r in body.get("children", []) if isinstance(r, str)]
    return lines


def _answer_texts(nb: nbformat.NotebookNode) -> list[str]:
    """Texts that give an answer away: every worked solution's comment lines after the first, and what it prints."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    texts = []
    for cell in nb.cells:
        if "solution" not in cell.metadata.get("tags", []):
            continue
        texts += [line.lstrip("# ").strip() for line in cell.source.splitlines()[1:] if line.startswith("#")]
        texts += _printed(cell.get("outputs", []), state, set())
    texts = [t for t in texts if len(t) >= 20]
    assert texts, "the teacher's notebook has worked solutions with text to hide"
    return texts


@pytest.fixture(scope="module")
def page(lab_page):
    """The session's JupyterLab page (its server serves the teacher's notebooks and ``student/``)."""
    return lab_page


def _open_and_run_all(page, rel: str) -> None:
    open_notebook(page, rel)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.monotonic() + RUN_ALL_TIMEOUT_S
    while time.monotonic() < deadline:
        state = page.evaluate(DONE)
        assert not state["errors"], f"errors in the browser: {state['errors']}"
        if state["idle"] and state["pending"] == 0:
            return
        time.sleep(1.0)
    pytest.fail(f"Run All did not finish in {RUN_ALL_TIMEOUT_S} s", pytrace=False)


def _cells(page):
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")


def _quiz_options(nb: nbformat.NotebookNode) -> tuple[str, str]:
    """The first quiz's right option and one wrong option, from the notebook's source."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and "quiz(" in c.source)
    options = OPTION.findall(cell.source)
    right = next(text for text, ok in options if ok == "True")
    wrong = next(text for text, ok in options if ok == "False")
    return right, wrong


def test_student_edition_shows_no_answer_after_run_all(page) -> None:
    teacher = _teacher()
    answers = _answer_texts(teacher)
    _open_and_run_all(page, f"student/notebooks/{NOTEBOOK}")
    visible = _cells(page).all_inner_texts()
    text = "\n".join(visible)
    assert "Your answer here" in text, "the solutions' places hold the prompt"
    assert SOLUTION_FIRST_LINE not in text, "no solution cell in the student edition"
    shown = [a for a in answers if a in text]
    assert not shown, f"answer text visible in the student edition: {shown}"
    guesses = page.locator(".fedpurel-guess")
    assert guesses.count() >= 1, "the prediction widget is on the page"
    assert "Measured:" not in text and not [t for t in guesses.all_inner_texts() if "Measured" in t], \
        "no measured value before a prediction is picked"

    # a quiz answers: wrong choice, then the right one
    right, wrong = _quiz_options(teacher)
    quiz = page.locator(".fedpurel-quiz").first
    quiz.scroll_into_view_if_needed()
    quiz.locator("label", has_text=wrong[:40]).click()
    quiz.get_by_role("button", name="Check").click()
    feedback = quiz.locator(".fedpurel-quiz-feedback")
    feedback.wait_for(state="visible")
    said = feedback.inner_text()
    assert "Not quite" in said and right[:40] in said, said
    quiz.locator("label", has_text=right[:40]).click()
    quiz.get_by_role("button", name="Check").click()
    page.wait_for_function("(node) => node.innerText.includes('Right')",
                           arg=quiz.element_handle(), timeout=30_000)
    assert "Not quite" not in quiz.inner_text()

    # a prediction reveals the measured value only once picked
    guess = guesses.first
    guess.scroll_into_view_if_needed()
    guess.locator(".widget-radio-box label").first.click()
    guess.locator(".fedpurel-guess-feedback").wait_for(state="visible")
    assert "Measured:" in guess.inner_text()
    close_notebook(page)


def test_teacher_copy_keeps_solutions_collapsed_after_run_all(page) -> None:
    teacher = _teacher()
    answers = _answer_texts(teacher)
    solutions = [i for i, c in enumerate(teacher.cells) if "solution" in c.metadata.get("tags", [])]
    _open_and_run_all(page, f"notebooks/{NOTEBOOK}")
    cells = _cells(page)
    for i in solutions:
        cell = cells.nth(i)
        cell.scroll_into_view_if_needed()
        text = cell.inner_text()
        assert cell.locator(".jp-Cell-inputWrapper .jp-InputArea").is_hidden() or \
            cell.locator(".jp-InputPlaceholder").count(), f"solution cell {i} is collapsed"
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        extra = [ln for ln in lines if ln not in (SOLUTION_FIRST_LINE, RESULT_TITLE, "…", "...")
                 and not re.fullmatch(r"\[[\d* ]*\]:?", ln)]
        assert not extra, f"solution cell {i} shows more than its neutral first line and a folded result: {extra}"
        folded = cell.locator(".fedpurel-hidden-result")
        assert folded.count() == 1, f"solution cell {i} prints into a folded result"
        assert folded.locator(".widget-output").first.is_hidden(), f"solution cell {i} shows its result unasked"
    shown = [a for a in answers if a in "\n".join(cells.all_inner_texts())]
    assert not shown, f"answer text visible in the teacher's copy: {shown}"
    close_notebook(page)


def test_the_student_edition_is_written_from_the_teacher_copy(tmp_path: Path) -> None:
    """No browser needed: the edition the browser tests open holds no solution source."""
    write_student_edition(tmp_path / "s")
    nb = nbformat.read(tmp_path / "s" / "notebooks" / NOTEBOOK, as_version=4)
    source = "\n".join(c.source for c in nb.cells)
    assert not [a for a in _answer_texts(_teacher()) if a in source]
