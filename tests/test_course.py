"""The course layer: checked claims, quizzes, guesses, the frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedpurel_lite.course import ClaimFailed, frame, guess, quiz, says

OPTIONS = [("the tail grows", True, "more classes fall under the tail cut"),
           ("the tail shrinks", False, "the cut keeps more classes, not fewer"),
           ("nothing changes", False, "the counts change with IF")]


def test_says_prints_a_claim_that_holds(capsys: pytest.CaptureFixture[str]) -> None:
    says("two is more than one", 2 > 1)
    says("numpy booleans count", np.float64(3.0) > 2)
    assert capsys.readouterr().out == "✓ two is more than one\n✓ numpy booleans count\n"


def test_says_raises_on_a_claim_that_does_not_hold(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ClaimFailed, match="the tail share shrinks"):
        says("the tail share shrinks", 3.47 < 3.04)
    assert capsys.readouterr().out == ""
    assert issubclass(ClaimFailed, AssertionError)


@pytest.mark.parametrize("value", [np.array([True, False]), 1, "yes", None])
def test_says_needs_a_boolean(value: object) -> None:
    with pytest.raises(TypeError, match="boolean"):
        says("anything", value)  # type: ignore[arg-type]


def test_quiz_gives_feedback_on_a_right_and_a_wrong_pick() -> None:
    q = quiz("What happens to the tail when IF rises?", OPTIONS)
    assert q.feedback.value == "" and q.choices.value is None
    q.button.click()
    assert "Pick an answer" in q.feedback.value
    q.choices.value = "the tail shrinks"
    assert q.feedback.value == ""
    q.button.click()
    assert "Not quite" in q.feedback.value and "keeps more classes" in q.feedback.value
    assert "the tail grows" in q.feedback.value and "under the tail cut" in q.feedback.value
    q.choices.value = "the tail grows"
    q.button.click()
    assert "Right" in q.feedback.value and "under the tail cut" in q.feedback.value
    assert "keeps more classes" not in q.feedback.value
    assert q.check() is True


@pytest.mark.parametrize("options", [OPTIONS[:1], [(t, True, y) for t, _, y in OPTIONS],
                                     [(t, False, y) for t, _, y in OPTIONS], OPTIONS + OPTIONS[:1]])
def test_quiz_refuses_bad_options(options: list[tuple[str, bool, str]]) -> None:
    with pytest.raises(ValueError):
        quiz("q", options)


def test_guess_reveals_only_after_a_pick() -> None:
    calls: list[int] = []

    def reveal() -> str:
        calls.append(1)
        return "3.04 % → 3.47 %"

    g = guess("Does the tail share rise?", ["rises", "falls"], reveal)
    assert g.feedback.value == "" and calls == []
    g.choices.value = "falls"
    assert "3.47" in g.feedback.value and "Not this time" not in g.feedback.value
    g.choices.value = "rises"
    assert calls == [1]  # computed once

    judged = guess("Does it rise?", ["rises", "falls"], "it rises", answer="rises")
    judged.choices.value = "falls"
    assert "Not this time" in judged.feedback.value and "it rises" in judged.feedback.value
    judged.choices.value = "rises"
    assert "holds" in judged.feedback.value
    with pytest.raises(ValueError):
        guess("q", ["a", "b"], "x", answer="c")


def test_frame_has_every_part() -> None:
    text = frame("students of FL", "Python and PyTorch", ["one", "two"], 20, "[01](01_a.ipynb)",
                 "[03](03_c.ipynb)")
    for part in ("**Who this is for**", "**You should know**", "**You will learn**", "- two",
                 "**Time**: about 20 minutes", "Previous: [01](01_a.ipynb) · Next: [03](03_c.ipynb)"):
        assert part in text
    assert "Previous" not in frame("a", "b", ["x", "y"], 5, None, "[n](n.ipynb)")
    with pytest.raises(ValueError):
        frame("a", "b", ["only one"], 5, None, None)


# ----------------------------------------------------------------------------- the student edition
def _teacher_notebook():
    import nbformat

    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# 01 · a title"),
        v4.new_code_cell("x = 1\nprint(x)", execution_count=1,
                         outputs=[v4.new_output("stream", name="stdout", text="1\n")]),
        v4.new_code_cell("# Solution: open this cell after you have tried the exercise.\nprint('the answer is 42')",
                         execution_count=2, outputs=[v4.new_output("stream", name="stdout", text="the answer is 42\n")],
                         metadata={"tags": ["solution"],
                                   "jupyter": {"source_hidden": True, "outputs_hidden": True}}),
    ])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"a": {}}}}
    return nb


def test_student_copy_drops_solutions_outputs_and_widget_state() -> None:
    import nbformat

    from fedpurel_lite.student import PROMPT, student_copy

    teacher = _teacher_notebook()
    before = nbformat.writes(teacher)
    student = student_copy(teacher)
    assert nbformat.writes(teacher) == before, "the teacher's notebook is not changed"
    nbformat.validate(student)
    text = nbformat.writes(student)
    assert "42" not in text and "widget-state" not in text
    assert [c.cell_type for c in student.cells] == ["markdown", "code", "markdown"]
    assert student.cells[2].source == PROMPT
    assert student.cells[1].outputs == [] and student.cells[1].execution_count is None
    assert student.cells[1].source == "x = 1\nprint(x)"


def test_student_command_writes_a_clean_series(tmp_path: Path) -> None:
    import nbformat

    from fedpurel_lite.__main__ import main
    from fedpurel_lite.student import MARKER, series

    out = tmp_path / "student"
    assert main(["student", "--out", str(out)]) == 0
    teacher = series()
    written = sorted((out / "notebooks").glob("*.ipynb"))
    assert [p.name for p in written] == [p.name for p in teacher]
    assert (out / "notebooks" / "glossary.md").is_file()
    assert (out / "configs" / "embedded.toml").is_file()
    assert (out / "data" / "fedpurel-tiny.safetensors").is_file(), "the notebooks' ../data paths resolve"
    for path in written:
        nb = nbformat.read(path, as_version=4)
        assert "widgets" not in nb.metadata
        for cell in nb.cells:
            assert "solution" not in cell.metadata.get("tags", []), path.name
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name
                assert not cell.source.startswith("# Solution"), path.name
    teacher_solutions = sum("solution" in c.metadata.get("tags", [])
                            for p in teacher for c in nbformat.read(p, as_version=4).cells)
    assert teacher_solutions > 0, "the teacher's copy keeps its solutions"
    # a second run replaces the earlier edition; a foreign folder is refused before anything is written
    assert main(["student", "--out", str(out)]) == 0 and (out / MARKER).exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["student", "--out", str(foreign)]) == 2
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
