"""What counts as a drawing cell, whether its outputs hold an image, and nbval's verdict on an executed copy.

Used on the stored notebooks (``test_notebook_figures.py``), on nbval's executed outputs (the root
``conftest.py``: a drawing cell without an image fails) and by the browser tests, which execute the
series once in JupyterLab and hold that run to nbval's rules (:func:`nbval_failures`).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")


def drawing_functions() -> list[str]:
    """Names of the ``fedpurel_lite.views.plots`` functions that draw into axes (they take ``ax`` or ``axes``)."""
    from fedpurel_lite.views import plots

    names = []
    for name, fn in vars(plots).items():
        if name.startswith("_") or not inspect.isfunction(fn):
            continue
        params = inspect.signature(fn).parameters
        if "ax" in params or "axes" in params:
            names.append(name)
    return sorted(names)


def _pattern() -> re.Pattern:
    calls = "|".join(map(re.escape, drawing_functions()))
    return re.compile(
        r"plt\.show\(|"                                     # pyplot figures
        r"display\(\s*(fig\b|Image\(|\w+\.widget\b)|"       # a figure, an image, an explorer's widget
        rf"\bplots\.({calls})\(|"                           # a figure function of the package
        r"\bwidgets\.\w+Explorer\(.*\bdisplay\("            # an explorer built and shown in one cell
        , re.S)


def draws(source: str) -> bool:
    """Whether a code cell's source draws a figure (comments are ignored)."""
    code = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("#") else "" for line in source.splitlines())
    return bool(_pattern().search(code))


def has_image(outputs: Iterable[Mapping[str, Any]], widget_state: Mapping[str, Any] | None = None) -> bool:
    """Whether outputs hold an image: directly, or inside the (stored) state of a displayed widget."""
    for out in outputs:
        data = out.get("data", {}) or {}
        if any(t in data for t in IMAGE_TYPES):
            return True
        view = data.get("application/vnd.jupyter.widget-view+json")
        if view and widget_state and _widget_has_image(view["model_id"], widget_state, set()):
            return True
    return False


def _widget_has_image(model_id: str, state: Mapping[str, Any], seen: set[str]) -> bool:
    if model_id in seen or model_id not in state:
        return False
    seen.add(model_id)
    body = state[model_id].get("state", {})
    if has_image(body.get("outputs", []) or []):
        return True
    refs = [v for v in body.values() if isinstance(v, str)]
    refs += [x for v in body.values() if isinstance(v, list) for x in v if isinstance(x, str)]
    return any(_widget_has_image(r[len("IPY_MODEL_"):], state, seen) for r in refs if r.startswith("IPY_MODEL_"))


def widget_state(nb: Mapping[str, Any]) -> dict[str, Any]:
    """The stored widget models of a notebook (empty when it stores none)."""
    widgets = nb.get("metadata", {}).get("widgets", {})
    return dict(widgets.get("application/vnd.jupyter.widget-state+json", {}).get("state", {}))


def missing_images(nb: Mapping[str, Any]) -> list[str]:
    """Sources (first line) of the drawing cells of a stored notebook that hold no image."""
    state = widget_state(nb)
    return [c["source"].splitlines()[0] if c["source"] else "" for c in nb["cells"]
            if c["cell_type"] == "code" and draws(c["source"]) and not has_image(c.get("outputs", []), state)]


def output_text(cell: Mapping[str, Any]) -> str:
    """What a stored code cell printed or displayed as text (streams, plain text, Markdown, errors)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append("".join(out["text"]))
        elif "data" in out:
            parts.append(str(out["data"].get("text/plain", "")) + str(out["data"].get("text/markdown", "")))
        elif out.get("output_type") == "error":
            parts.append(f"{out['ename']}: {out['evalue']}")
    return "".join(parts)


# ----------------------------------------------------------------------------- nbval's verdict on an executed copy
# nbval's own defaults for what is never compared (`IPyNbFile.skip_compare` without --nbdime)
NBVAL_SKIP_COMPARE = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                      "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")


def nbval_options(cell: Mapping[str, Any], lax: bool = True) -> dict[str, bool]:
    """nbval's options for a code cell (``check``, ``skip``, ``check_exception``) from its tags and comments."""
    from nbval.plugin import find_comment_markers, find_metadata_tags

    options = dict(find_metadata_tags(cell.get("metadata", {})))
    options.update(dict(find_comment_markers(cell["source"])))
    options.setdefault("check", not lax)
    return {"check": bool(options["check"]), "skip": bool(options.get("skip")),
            "check_exception": bool(options.get("check_exception"))}


class _Comparison:
    """What nbval's ``IPyNbCell.compare_outputs`` reads from its cell item, so that its own code compares."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        from nbval.plugin import IPyNbCell, nocolors

        self.colors = nocolors
        self.parent = SimpleNamespace(skip_compare=NBVAL_SKIP_COMPARE, sanitize_patterns={})
        self.ihook = SimpleNamespace(pytest_assertrepr_compare=lambda **_: [])
        self.config = None
        self.comparison_traceback: list[str] = []
        self._compare, self._sanitize, self._format = (IPyNbCell.compare_outputs, IPyNbCell.sanitize,
                                                       IPyNbCell.format_output_compare)

    def sanitize(self, s: Any) -> Any:
        return self._sanitize(self, s)

    def format_output_compare(self, key: str, left: Any, right: Any) -> None:
        self._format(self, key, left, right)

    def differs(self, test: list[Any], ref: list[Any]) -> str | None:
        """``None`` when nbval finds the outputs equal, else its explanation."""
        if self._compare(self, test, ref, NBVAL_SKIP_COMPARE):
            return None
        return "\n".join(self.comparison_traceback)


def nbval_failures(reference: Any, executed: Any, lax: bool = True) -> list[str]:
    """What ``pytest --nbval-lax`` would report for ``executed``, a run of the stored notebook ``reference``.

    ``executed`` is the same notebook after a run (any front end: its outputs as that front end keeps
    them). Per code cell, as nbval does: a skipped cell is ignored; an error fails unless the cell is
    tagged ``raises-exception``; a stored cell that never ran must hold no outputs; and a cell to check
    (``nbval-check-output``; every cell without ``lax``) must have the same outputs, compared by nbval's
    own code (streams coalesced, images, widget ids and metadata ignored).
    """
    import nbformat
    from nbval.plugin import coalesce_streams

    def node(nb: Any) -> Any:  # a front end's JSON may hold nulls nbformat does not read (JupyterLab: attachments)
        plain = dict(nb, cells=[{k: v for k, v in c.items() if v is not None or k == "execution_count"}
                                for c in nb["cells"]])
        return nbformat.reads(json.dumps(plain), as_version=4)

    ref_cells = [c for c in node(reference).cells if c.cell_type == "code"]
    run_cells = [c for c in node(executed).cells if c.cell_type == "code"]
    if len(ref_cells) != len(run_cells):
        return [f"the executed notebook has {len(run_cells)} code cells, the stored one {len(ref_cells)}"]
    failures = []
    for k, (ref, run) in enumerate(zip(ref_cells, run_cells, strict=True)):
        options = nbval_options(ref, lax)
        first = ref.source.strip().splitlines()[0] if ref.source.strip() else ""
        if options["skip"]:
            continue
        errors = [o for o in run.get("outputs", []) if o.get("output_type") == "error"]
        if errors and not options["check_exception"]:
            failures.append(f"cell {k} ({first!r}) raised {errors[0]['ename']}: {errors[0]['evalue']}")
            continue
        if ref.execution_count is None:
            if ref.outputs:
                failures.append(f"cell {k} ({first!r}): unrun reference cell has outputs")
            continue
        if options["check"]:
            why = _Comparison().differs(coalesce_streams(list(run.outputs)), coalesce_streams(list(ref.outputs)))
            if why is not None:
                failures.append(f"cell {k} ({first!r}): outputs differ\n{why}")
    return failures
