"""The course layer of the notebook series: checked claims, quizzes, predict-then-look prompts, the frame.

* :func:`says` backs a sentence of a notebook's prose with a computed value: it prints the sentence
  with a check mark when the value supports it and raises :class:`ClaimFailed` otherwise, so that a
  change of the world, the defaults or the code that flips a sentence fails the notebook tests.
* :func:`quiz` is a multiple-choice question answered in place; its feedback says why the chosen
  option is right or wrong.
* :func:`guess` asks the student to predict before anything measured is shown.
* :func:`hidden_result` keeps a worked solution's printed result folded away: JupyterLab unfolds a
  collapsed cell's outputs whenever the cell runs (Run All included), so the result goes into a
  closed accordion instead.
* :func:`frame` writes the course frame (audience, prerequisites, objectives, time, links) as Markdown.

The widgets work without a front end: tests set ``.choices.value`` and call ``.button.click()``
(or set ``.choices.value`` of a guess) and read ``.feedback.value``.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import ipywidgets as w

__all__ = ["ClaimFailed", "Guess", "Quiz", "SOLUTION_FIRST_LINE", "SOLUTION_METADATA", "SOLUTION_TAG",
           "frame", "guess", "hidden_result", "nav", "quiz", "says"]

SOLUTION_TAG = "solution"
"""Cell tag of a worked solution (the student edition empties these cells)."""

SOLUTION_METADATA: dict[str, dict[str, bool]] = {"jupyter": {"source_hidden": True, "outputs_hidden": True}}
"""Cell metadata that makes JupyterLab show a solution collapsed, source and outputs."""

SOLUTION_FIRST_LINE = "# Solution: open this cell after you have tried the exercise."
"""The neutral first line of every solution cell (the only line a collapsed cell shows)."""


class ClaimFailed(AssertionError):
    """A sentence of the prose that the computed values do not support."""


def says(statement: str, holds: bool) -> None:
    """Check one claim of the prose against a computed value.

    Parameters
    ----------
    statement : str
        The claim, in the words of the prose it backs (e.g. ``"raising IF raises the tail share"``).
    holds : bool
        Whether the computed values support it (a Python or NumPy boolean).

    Raises
    ------
    ClaimFailed
        When ``holds`` is false; the message is the statement, so a failing notebook names the
        sentence to rewrite.
    TypeError
        When ``holds`` is not a boolean (an array or a number would hide a mistake).
    """
    if not isinstance(holds, bool):
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy is a dependency
            raise TypeError(f"says() needs a boolean, got {type(holds).__name__}") from None
        if not isinstance(holds, np.bool_):
            raise TypeError(f"says() needs a boolean, got {type(holds).__name__}")
    if not bool(holds):
        raise ClaimFailed(statement)
    print(f"✓ {statement}")


class Quiz(w.VBox):
    """A multiple-choice question with a Check button and feedback that explains every choice.

    Attributes
    ----------
    choices : ipywidgets.RadioButtons
        The options; ``value`` is ``None`` until the student picks one.
    button : ipywidgets.Button
        "Check": judges the pick and fills ``feedback``.
    feedback : ipywidgets.HTML
        Empty until Check; then "Right" or "Not quite", the why of the chosen option, and (when the
        pick was wrong) the right option with its why.
    """

    def __init__(self, question: str, options: Sequence[tuple[str, bool, str]]) -> None:
        options = list(options)
        if len(options) < 2:
            raise ValueError(f"a quiz needs at least two options, got {len(options)}")
        correct = [i for i, (_, ok, _) in enumerate(options) if ok]
        if len(correct) != 1:
            raise ValueError(f"a quiz needs exactly one correct option, got {len(correct)}")
        texts = [text for text, _, _ in options]
        if len(set(texts)) != len(texts):
            raise ValueError("quiz options must differ from each other")
        self.question = question
        self.options = options
        self.correct = correct[0]
        self.choices = w.RadioButtons(options=texts, value=None, layout=w.Layout(width="max-content"))
        self.button = w.Button(description="Check", button_style="info")
        self.feedback = w.HTML(value="")
        self.button.on_click(lambda _: self.check())
        self.choices.observe(lambda _: self._clear(), names="value")
        super().__init__([w.HTML(value=f"<b>{html.escape(question)}</b>"), self.choices, self.button,
                          self.feedback])
        self.add_class("fedpurel-quiz")

    def _clear(self) -> None:
        self.feedback.value = ""

    def check(self) -> bool | None:
        """Judge the current pick, write the feedback; ``None`` when nothing is picked yet."""
        if self.choices.index is None:
            self.feedback.value = "<i>Pick an answer first.</i>"
            return None
        picked = self.choices.index
        _, ok, why = self.options[picked]
        if ok:
            body = f"<b>✓ Right.</b> {html.escape(why)}"
        else:
            right_text, _, right_why = self.options[self.correct]
            body = (f"<b>✗ Not quite.</b> {html.escape(why)}<br>"
                    f"The right answer is <i>{html.escape(right_text)}</i>: {html.escape(right_why)}")
        self.feedback.value = f'<div class="fedpurel-quiz-feedback">{body}</div>'
        return bool(ok)


def quiz(question: str, options: list[tuple[str, bool, str]]) -> Quiz:
    """A multiple-choice question answered in place.

    Parameters
    ----------
    question : str
        The question.
    options : list of (str, bool, str)
        ``(choice text, is_correct, why this choice is right or wrong)``; exactly one is correct.

    Returns
    -------
    Quiz
        An ipywidgets ``VBox``: radio buttons, a Check button and the feedback.
    """
    return Quiz(question, options)


class Guess(w.VBox):
    """Predict, then look: the measured value is computed and shown only after a pick.

    Attributes
    ----------
    choices : ipywidgets.RadioButtons
        The predictions; ``value`` is ``None`` until the student picks one.
    feedback : ipywidgets.HTML
        Empty until a pick; then the measured text (and, with ``answer``, whether the pick was right).
    """

    def __init__(self, question: str, options: Sequence[str], reveal: Callable[[], str] | str,
                 answer: str | None = None) -> None:
        options = list(options)
        if len(options) < 2:
            raise ValueError(f"a guess needs at least two options, got {len(options)}")
        if answer is not None and answer not in options:
            raise ValueError(f"answer {answer!r} is not one of the options {options}")
        self.question = question
        self.answer = answer
        self._reveal = reveal
        self.revealed: str | None = None
        self.choices = w.RadioButtons(options=options, value=None, layout=w.Layout(width="max-content"))
        self.feedback = w.HTML(value="")
        self.choices.observe(lambda change: self._show(change["new"]), names="value")
        super().__init__([w.HTML(value=f"<b>{html.escape(question)}</b> <i>(pick your prediction)</i>"),
                          self.choices, self.feedback])
        self.add_class("fedpurel-guess")

    def _show(self, picked: str | None) -> None:
        if picked is None:
            self.feedback.value = ""
            return
        if self.revealed is None:
            self.revealed = self._reveal() if callable(self._reveal) else str(self._reveal)
        verdict = ""
        if self.answer is not None:
            verdict = ("<b>✓ Your prediction holds.</b> " if picked == self.answer
                       else f"<b>✗ Not this time</b> (it is <i>{html.escape(self.answer)}</i>). ")
        self.feedback.value = (f'<div class="fedpurel-guess-feedback">{verdict}'
                               f"Measured: {html.escape(self.revealed)}</div>")


def guess(question: str, options: list[str], reveal: Callable[[], str] | str,
          answer: str | None = None) -> Guess:
    """"Predict before you look": nothing measured is shown until the student picks an option.

    Parameters
    ----------
    question : str
        What to predict.
    options : list of str
        The predictions to choose from.
    reveal : callable returning str, or str
        The measured value as text; a callable is called only at the first pick.
    answer : str, optional
        The option the measurement supports; given, the feedback also says whether the pick was right.

    Returns
    -------
    Guess
        An ipywidgets ``VBox``: radio buttons and the (initially empty) feedback.
    """
    return Guess(question, options, reveal, answer)


RESULT_TITLE = "Result of the solution (click to show)"


@contextmanager
def hidden_result(title: str = RESULT_TITLE) -> Iterator[w.Output]:
    """Show what the block prints or displays only when the reader opens it (a closed accordion).

    An exception inside the block is raised again after the block (``ipywidgets.Output`` alone
    would swallow it), so a failing ``assert`` of a solution still fails the cell under the tests.

    Examples
    --------
    >>> with hidden_result():  # doctest: +SKIP
    ...     print("the answer")
    """
    from IPython.display import display

    out = w.Output()
    box = w.Accordion(children=[out], selected_index=None)
    box.set_title(0, title)
    box.add_class("fedpurel-hidden-result")
    display(box)
    failure: BaseException | None = None
    with out:
        try:
            yield out
        except BaseException as exc:  # noqa: BLE001 - re-raised below, outside the Output widget
            failure = exc
    if failure is not None:
        raise failure


def frame(audience: str, assumes: str, objectives: list[str], minutes: int, prev: str | None,
          next: str | None) -> str:  # noqa: A002 - the course API's name
    """The course frame of a notebook as Markdown (who, prerequisites, objectives, time, links).

    Parameters
    ----------
    audience, assumes : str
        Who the notebook is for; what it assumes the reader knows.
    objectives : list of str
        Two to four learning objectives.
    minutes : int
        Estimated time to work through it.
    prev, next : str or None
        ``"[Title](NN_name.ipynb)"`` links to the neighbours (``None`` at either end of the series).
    """
    if not 2 <= len(objectives) <= 4:
        raise ValueError(f"a frame has 2 to 4 objectives, got {len(objectives)}")
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    lines = [f"**Who this is for**: {audience}", "", f"**You should know**: {assumes}", "",
             "**You will learn**", ""]
    lines += [f"- {o}" for o in objectives]
    lines += ["", f"**Time**: about {minutes} minutes", "", nav(prev, next)]
    return "\n".join(lines)


def nav(prev: str | None, next: str | None) -> str:  # noqa: A002
    """The previous/next line of the frame (``"Previous: … · Next: …"``)."""
    parts = []
    if prev:
        parts.append(f"Previous: {prev}")
    if next:
        parts.append(f"Next: {next}")
    return " · ".join(parts)
