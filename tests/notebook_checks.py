"""What counts as a drawing cell, and whether its outputs hold an image.

Used on the stored notebooks (``test_notebook_figures.py``), on nbval's executed outputs
(``notebooks/conftest.py``: a drawing cell without an image fails) and by the browser tests.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from typing import Any

IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")


def drawing_functions() -> list[str]:
    """Names of the ``fedpurel_lite.plots`` functions that draw into axes (they take ``ax`` or ``axes``)."""
    from fedpurel_lite import plots

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
