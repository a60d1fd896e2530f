"""The course layer: checked claims, quizzes, guesses, the frame."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from notebook_checks import output_text

from fedpurel_lite.views.course import ClaimFailed, frame, guess, quiz, says

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

    from fedpurel_lite.cli.student import PROMPT, student_copy

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
    from fedpurel_lite.cli.student import MARKER, series

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


# ----------------------------------------------------------------------------- the series as a course
ROOT = Path(__file__).resolve().parents[1]
SERIES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LESSONS = [p for p in SERIES if not p.name.startswith("00_")]
GLOSSARY = ROOT / "notebooks" / "glossary.md"
LINK = re.compile(r"\]\(([^)#\s]+\.ipynb)\)")


def _read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


_out = output_text


def _printed(nb, cell) -> str:
    """What a cell printed, its folded results (stored widget state) included."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    texts, seen = [_out(cell)], set()
    refs = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for o in cell.get("outputs", [])
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    while refs:
        model = refs.pop()
        if model in seen or model not in state:
            continue
        seen.add(model)
        body = state[model].get("state", {})
        texts += ["".join(o.get("text", "")) for o in body.get("outputs", []) or []]
        refs += [r[len("IPY_MODEL_"):] for r in body.get("children", []) if isinstance(r, str)]
    return "".join(texts)


@pytest.mark.parametrize("path", SERIES, ids=lambda p: p.name[:2])
def test_every_notebook_has_the_course_frame(path: Path) -> None:
    nb = _read(path)
    title, frame_cell = nb.cells[0], nb.cells[1]
    assert title.cell_type == "markdown" and title.source.startswith(f"# {path.name[:2]} · ")
    text = frame_cell.source
    assert frame_cell.cell_type == "markdown"
    for part in ("**Who this is for**", "**You should know**", "**You will learn**"):
        assert part in text, f"the frame (the cell after the title) names {part}"
    objectives = re.findall(r"^- ", text.split("**You will learn**", 1)[1].split("**Time**", 1)[0], flags=re.M)
    assert 2 <= len(objectives) <= 4, "2-4 learning objectives"
    assert re.search(r"\*\*Time\*\*: about \d+ (minutes|hours)", text)
    names = [p.name for p in SERIES]
    i = names.index(path.name)
    expected = ["Previous: [", names[i - 1]] if i > 0 else []
    expected += ["Next: [", names[i + 1]] if i + 1 < len(names) else []
    last = nb.cells[-1]
    for cell in (frame_cell, last):
        assert cell.cell_type == "markdown"
        for part in expected:
            assert part in cell.source, f"{part!r} in the frame and the last cell"
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for target in LINK.findall(cell.source):
                assert (path.parent / target).is_file(), f"link to a missing notebook {target}"


@pytest.mark.parametrize("path", SERIES, ids=lambda p: p.name[:2])
def test_every_notebook_ends_with_a_summary_and_a_quiz(path: Path) -> None:
    nb = _read(path)
    heads = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Summary")]
    assert len(heads) == 1 and re.search(r"^- ", nb.cells[heads[0]].source, flags=re.M), "a summary with bullets"
    if path.name.startswith("00_"):
        return
    checks = [i for i, c in enumerate(nb.cells)
              if c.cell_type == "markdown" and c.source.startswith("## Check your understanding")]
    assert len(checks) == 1 and checks[0] > heads[0]
    quizzes = [c for c in nb.cells[checks[0]:] if c.cell_type == "code" and "quiz(" in c.source]
    count = sum(c.source.count("quiz(") for c in quizzes)
    assert 3 <= count <= 5, f"3-5 quiz questions, found {count}"
    for cell in quizzes:
        assert "nbval-ignore-output" in _tags(cell)
        assert cell.source.count("True,") == cell.source.count("quiz("), "one correct option per question"


@pytest.mark.parametrize("path", SERIES, ids=lambda p: p.name[:2])
def test_answers_are_hidden(path: Path) -> None:
    from fedpurel_lite.views.course import SOLUTION_FIRST_LINE

    nb = _read(path)
    for cell in nb.cells:
        if "solution" in _tags(cell):
            assert cell.cell_type == "code"
            assert cell.source.splitlines()[0] == SOLUTION_FIRST_LINE, "a neutral first line (shown when collapsed)"
            assert cell.metadata.get("jupyter") == {"source_hidden": True, "outputs_hidden": True}
            if "print(" in cell.source or "display(" in cell.source:
                assert "with hidden_result(" in cell.source, "JupyterLab unfolds outputs on Run All: fold the result"
        elif cell.cell_type == "code":
            assert not re.search(r"print\(.*measured", cell.source), "measured values come through guess(...)"
            if "guess(" in cell.source or "quiz(" in cell.source:
                assert "nbval-ignore-output" in _tags(cell)


def test_no_answer_is_printed_above_its_exercise() -> None:
    """01 Ex 1.1 and 03 Ex 3.1 are predictions: nothing above them shows what they ask for."""
    nb = _read(ROOT / "notebooks" / "01_zero_shot_balance.ipynb")
    start = next(i for i, c in enumerate(nb.cells) if "**Exercise 1.1" in c.source)
    solution = next(c for c in nb.cells[start:] if "solution" in _tags(c))
    first = int(re.search(r"first IF with a tail is (\d+)", _printed(nb, solution)).group(1))
    above = "\n".join(c.source if c.cell_type == "markdown" else _out(c) for c in nb.cells[:start])
    assert "first IF with a tail" not in above and f"IF ≤ {first - 1}" not in above and f"IF = {first}" not in above

    nb = _read(ROOT / "notebooks" / "03_finetuning_erodes_balance.ipynb")
    start = next(i for i, c in enumerate(nb.cells) if "**Exercise 3.1" in c.source)
    for cell in nb.cells[:start]:
        if cell.cell_type == "code":
            assert "FedAvg after" not in _out(cell) and "against zero-shot" not in _out(cell)
            assert not [o for o in cell.outputs if "image/png" in o.get("data", {})], "no FedAvg figure above"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_claims_are_checked_in_every_lesson(path: Path) -> None:
    nb = _read(path)
    claims = [c for c in nb.cells if c.cell_type == "code" and "says(" in c.source and "solution" not in _tags(c)]
    assert len(claims) >= 3, "the prose's numbers and directions are checked with says(...)"
    for cell in claims:
        assert "nbval-ignore-output" not in _tags(cell), "a claim cell fails by raising: keep it checked"
        assert "✓" in _out(cell), "the stored claim cells ran and held"


def test_glossary_anchors_resolve_and_cover_the_terms() -> None:
    text = GLOSSARY.read_text()
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', text))
    for term in ("if", "groups", "dirichlet", "gm-pm", "peft", "coop", "clip", "fedavg", "kl", "tkl", "tau",
                 "purification", "lambda", "head-lean", "fusion", "residual", "bias-transfer", "ece",
                 "logit-adjustment", "local-head", "balance", "gradient-conflict"):
        assert term in anchors, f"the glossary defines {term}"
    for path in SERIES:
        for anchor in re.findall(r"glossary\.md#([A-Za-z0-9-]+)", path.read_text()):
            assert anchor in anchors, f"{path.name} links to a missing glossary anchor #{anchor}"
    for anchor in re.findall(r"\]\(#([a-z0-9-]+)\)", text):
        assert anchor in anchors, f"the glossary links to a missing anchor #{anchor}"


def test_the_setup_check_pins_the_shipped_hash() -> None:
    nb = _read(ROOT / "notebooks" / "00_start_here.ipynb")
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "EMBEDDED_SHA256" in source and "sha256_file(" in source and "load_bank(" in source
    assert "open_clip.__version__" in source and "torch.__version__" in source
    outputs = "\n".join(_out(c) for c in nb.cells if c.cell_type == "code")
    assert "✓ their SHA-256 is the one pinned" in outputs
    assert "executes in" in outputs, "the measured run-time table is rendered"


@pytest.mark.slow
def test_a_flipped_claim_fails_the_notebook(tmp_path: Path) -> None:
    """Two defects of notebook 02 put back (the tail share 'shrinks', a tail class 'with one or two clients'):
    the notebook's own claim cells then raise ClaimFailed, as nbval would report them."""
    from nbclient import NotebookClient

    nb = _read(ROOT / "notebooks" / "02_federated_long_tail.ipynb")
    share = next(i for i, c in enumerate(nb.cells) if "raises the mean tail share" in c.source)
    holders = next(i for i, c in enumerate(nb.cells) if "not one or two" in c.source)
    nb.cells[share].source = nb.cells[share].source.replace(
        'says("raising IF from 100 to 200 raises the mean tail share of a client",\n'
        '     steeper["group_shares"]["tail"].mean() > default["group_shares"]["tail"].mean())',
        'says("raise IF to 200 and the tail share shrinks further",\n'
        '     steeper["group_shares"]["tail"].mean() < default["group_shares"]["tail"].mean())')
    nb.cells[holders].source = nb.cells[holders].source.replace(
        'says("a tail class sits with several clients, not one or two (median ≥ 3)", np.median(tail_holders) >= 3)',
        'says("the Dirichlet split usually gives a tail class to one or two clients", np.median(tail_holders) <= 2)')
    assert "shrinks further" in nb.cells[share].source and "one or two clients\"" in nb.cells[holders].source
    nb.cells = nb.cells[: share + 1]
    work = tmp_path / "notebooks"
    work.mkdir()
    for name in ("configs", "data"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(work)}}).execute()
    failed = {i: [o.ename for o in c.outputs if o.output_type == "error"]
              for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    assert {i: e for i, e in failed.items() if e} == {holders: ["ClaimFailed"], share: ["ClaimFailed"]}


def test_hidden_result_captures_output_and_raises_again(capsys: pytest.CaptureFixture[str]) -> None:
    from fedpurel_lite.views.course import hidden_result

    with hidden_result() as out:
        assert out is not None
    with pytest.raises(AssertionError, match="wrong answer"), hidden_result():
        raise AssertionError("wrong answer")


def test_the_glossary_numbers_are_the_computed_ones() -> None:
    """The numbers the glossary states: group sizes at IF = 100, the first IF with a tail, the tiny CLIP's scale."""
    import math

    from safetensors import safe_open

    from fedpurel_lite.data import backbone, longtail

    text = GLOSSARY.read_text()
    sizes = longtail.group_sizes(longtail.assign_groups(longtail.class_counts(500, 100, 100)))
    assert f"{sizes['head']} head, {sizes['medium']} medium, {sizes['tail']} tail classes" in text
    first = next(r for r in range(1, 501) if longtail.class_counts(500, 100, r).min() <= 20)
    assert f"for IF ≤ {first - 1} the tail group is empty" in text
    assert "(`imbalance_ratio`, default 100: 500 → 5 images)" in text
    assert longtail.class_counts(500, 100, 100).min() == 5
    with safe_open(str(backbone.EMBEDDED_WEIGHTS), "pt") as weights:
        scale = math.exp(float(weights.get_tensor("logit_scale")))
    assert f"about {scale:.0f} for the tiny CLIP" in text


def test_the_glossary_defaults_are_the_code_defaults() -> None:
    import inspect

    from fedpurel_lite import purify
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.engine import metrics

    text = " ".join(GLOSSARY.read_text().split())
    c = RunConfig()
    assert c.federation.participation == 0.4 and "`participation` = 40 %" in text
    assert c.federation.dirichlet_alpha == 1.0 and "`dirichlet_alpha`, default 1.0" in text
    assert c.personalization.personal_alpha == 0.9 and "(`personal_alpha`, default 0.9)" in text
    assert c.get("objective.la.tau") == 1.0 and "`objective.la.tau`, default 1" in text
    assert c.purification.lambda_proj == 1.0 and "default 1: λ = 1 removes" in text
    assert inspect.signature(metrics.expected_calibration_error).parameters["n_bins"].default == 15
    assert "(15 equal bins)" in text
    assert inspect.signature(metrics.local_head_mask).parameters["mass"].default == 0.5 and "`head_mass = 0.5`" in text
    assert (purify.TAU_LO, purify.TAU_HI) == (0.05, 20.0) and r"bisection on $[0.05, 20]$" in text


def _names(source: str) -> tuple[set[str], set[str]]:
    """Names a cell assigns (or imports) and names it reads (IPython magics left out)."""
    import ast

    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    stored, loaded = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (stored if isinstance(node.ctx, ast.Store) else loaded).add(node.id)
        elif isinstance(node, ast.alias):
            stored.add((node.asname or node.name).split(".")[0])
    return stored, loaded


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_the_student_edition_runs_without_the_solutions(path: Path) -> None:
    """No cell after a solution reads a name that only the (removed) solution defines."""
    nb = _read(path)
    defined: set[str] = set()
    only_in_solutions: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        stored, loaded = _names(cell.source)
        if "solution" in _tags(cell):
            only_in_solutions.update({name: i for name in stored - defined})
            continue
        used = {name: only_in_solutions[name] for name in loaded - stored if name in only_in_solutions}
        assert not used, f"cell {i} reads names defined only in solution cells (cell: name) {used}"
        defined |= stored
        for name in stored:
            only_in_solutions.pop(name, None)
