"""The main job: execute every notebook of the series on the embedded default, in order.

``python -m fedpurel_lite demo`` runs ``notebooks/NN_*.ipynb`` (and ``apps/*.ipynb``) in place
with the current interpreter's kernel, so the notebooks keep their outputs and ``figures/`` is
rewritten by them; it prints how long each took and then builds the course site (the series,
its glossary, the app and ``docs/`` as static pages with navigation and search) into ``build/site/``
(:mod:`fedpurel_lite.cli.site`).

A re-run on the same machine must leave ``git status`` clean, so every executed notebook is
*normalised* before it is written (:func:`normalise`): no execution timestamps, a fixed kernel
description, no trace of closed widgets (progress bars), and widget model ids renumbered in a
fixed order instead of random UUIDs. Outputs, images and the live widgets' state are kept.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import re
import time
from pathlib import Path
from typing import Any

from .. import kernels

ROOT = Path(__file__).resolve().parents[2]
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
LANGUAGE_INFO_KEYS = ("codemirror_mode", "file_extension", "mimetype", "name", "nbconvert_exporter", "pygments_lexer")
_REF = re.compile(r"IPY_MODEL_([0-9A-Za-z_-]+)")
MACHINE_SPECIFIC = "machine-specific"
"""Cell tag: the cell shows this machine (cores, paths, cache state); its outputs are not stored."""


def notebooks(folder: Path = ROOT / "notebooks") -> list[Path]:
    """The series in order (files named ``NN_*.ipynb``)."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def apps(folder: Path = ROOT / "apps") -> list[Path]:
    """The Voilà apps (``apps/*.ipynb``)."""
    return sorted(folder.glob("*.ipynb")) if folder.is_dir() else []


# ----------------------------------------------------------------------------- normalisation
def _refs(value: Any) -> list[str]:
    """Widget model ids referenced by a state value, in a fixed order."""
    if isinstance(value, str):
        return _REF.findall(value)
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    if isinstance(value, dict):
        return [r for k in sorted(value) for r in _refs(value[k])]
    return []


def _rename(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _REF.sub(lambda m: "IPY_MODEL_" + ids.get(m.group(1), m.group(1)), value)
    if isinstance(value, list):
        return [_rename(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _rename(v, ids) for k, v in value.items()}
    return value


def _views(nb: Any) -> list[str]:
    return [out["data"][WIDGET_VIEW]["model_id"] for cell in nb["cells"] if cell["cell_type"] == "code"
            for out in cell.get("outputs", []) if WIDGET_VIEW in out.get("data", {})]


def _coalesce(outputs: list[Any]) -> list[Any]:
    """Merge consecutive stream outputs of one stream: how a kernel chunks its prints depends on timing."""
    merged: list[Any] = []
    for out in outputs:
        if (merged and out.get("output_type") == "stream" and merged[-1].get("output_type") == "stream"
                and merged[-1].get("name") == out.get("name")):
            merged[-1]["text"] = "".join(merged[-1]["text"]) + "".join(out["text"])
        else:
            merged.append(out)
    return merged


def normalise(nb: Any, name: str = "") -> Any:
    """Strip what changes from run to run and keep what a reader sees (in place; returns ``nb``).

    - cell metadata ``execution`` (timestamps) is removed, and consecutive prints to one stream are
      merged (the kernel's chunking depends on timing);
    - cells tagged :data:`MACHINE_SPECIFIC` (the start page's setup check: cores, paths, the
      cache's state) keep no outputs, so the stored notebook is the same on every machine;
    - the kernelspec is fixed and ``language_info`` loses its Python patch version;
    - outputs that display a widget no longer stored (closed: a finished progress bar) are removed,
      and so are stored widget models no displayed widget reaches;
    - the remaining widget models get ids derived from ``name`` and their order of first
      appearance (cell order, then depth first through their references), and are stored sorted.

    Parameters
    ----------
    nb : nbformat.NotebookNode or dict
        An executed notebook.
    name : str
        A name that makes the ids unique to the notebook (its file name).
    """
    meta = nb["metadata"]
    meta["kernelspec"] = dict(KERNELSPEC)
    if "language_info" in meta:
        meta["language_info"] = {k: v for k, v in meta["language_info"].items() if k in LANGUAGE_INFO_KEYS}
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("execution", None)
        if cell["cell_type"] == "code":
            machine = MACHINE_SPECIFIC in cell.get("metadata", {}).get("tags", [])
            cell["outputs"] = [] if machine else _coalesce(cell.get("outputs", []))
    widgets = meta.get("widgets", {}).get(WIDGET_STATE, {})
    state = widgets.get("state", {})
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = [o for o in cell.get("outputs", []) if WIDGET_VIEW not in o.get("data", {})
                               or o["data"][WIDGET_VIEW]["model_id"] in state]
    order: list[str] = []

    def visit(model_id: str) -> None:
        if model_id in order or model_id not in state:
            return
        order.append(model_id)
        for ref in _refs(state[model_id].get("state", {})):
            visit(ref)

    for model_id in _views(nb):
        visit(model_id)
    if not order:
        meta.pop("widgets", None)
        return nb
    prefix = hashlib.sha256(name.encode()).hexdigest()[:16]
    ids = {old: f"{prefix}{i:016x}" for i, old in enumerate(order)}
    widgets["state"] = {ids[old]: _rename(state[old], ids) for old in order}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if WIDGET_VIEW in out.get("data", {}):
                out["data"][WIDGET_VIEW]["model_id"] = ids[out["data"][WIDGET_VIEW]["model_id"]]
    return nb


# ----------------------------------------------------------------------------- execution
def _client(nb: Any, path: Path, timeout: int) -> Any:
    from nbclient import NotebookClient

    class Client(NotebookClient):
        """Forgets a widget when the kernel closes it (a finished progress bar leaves no state behind)."""

        def handle_comm_msg(self, outs, msg, cell_index):
            super().handle_comm_msg(outs, msg, cell_index)
            if msg["msg_type"] == "comm_close":
                self.widget_state.pop(msg["content"]["comm_id"], None)
                self.widget_buffers.pop(msg["content"]["comm_id"], None)

    return Client(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})


def execute(path: Path, timeout: int = 600, attempts: int = 2) -> float:
    """Execute one notebook in place (working directory = its folder), normalised; returns seconds taken.

    A cell that gives no reply within ``timeout`` seconds (far longer than any cell of the series
    takes; a reply lost between kernel and client would otherwise wait forever) stops the attempt,
    and the notebook is executed again from a fresh kernel, up to ``attempts`` times.
    Every run is seeded, so a repeated execution stores the same outputs.
    """
    import nbformat
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    start = time.perf_counter()
    for attempt in range(1, attempts + 1):
        nb = nbformat.read(path, as_version=4)
        try:
            _client(nb, path, timeout).execute()
            break
        except (CellTimeoutError, DeadKernelError) as exc:
            if attempt == attempts:
                raise
            print(f"{path.name}: {type(exc).__name__} on attempt {attempt}; executing it again from a fresh kernel")
    normalise(nb, path.name)
    text = nbformat.writes(nb) + "\n"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- static pages
CONTROL_SUFFIXES = ("SliderModel", "CheckboxModel", "DropdownModel", "ButtonsModel", "ButtonModel", "TextModel",
                    "SelectModel", "SelectMultipleModel", "ToggleButtonModel", "RadioButtonsModel", "PlayModel")
STATIC_NOTE = ("*An explorer: its controls redraw the figure in JupyterLab or Voilà; "
               "this page shows the figure of its stored setting.*")


def static_copy(nb: Any) -> Any:
    """A copy for a static page: every displayed widget is replaced by what its Output widgets hold.

    A static page cannot run widget code, but the figures an explorer drew are in its stored
    state; they are shown in place of the widget, after a one-line note when the widget has
    controls (a slider, a check box) that only work in a live kernel.
    """
    import nbformat

    nb = nbformat.from_dict(copy.deepcopy(nb))
    state = nb["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})

    def walk(model_id: str, seen: set[str]) -> tuple[list[Any], bool]:
        """The outputs held below ``model_id`` and whether a control is among its models."""
        if model_id in seen or model_id not in state:
            return [], False
        seen.add(model_id)
        body = state[model_id].get("state", {})
        name = state[model_id].get("model_name", "")
        found = list(body.get("outputs", []) or []) if name == "OutputModel" else []
        control = name.endswith(CONTROL_SUFFIXES)
        for ref in _refs({k: v for k, v in body.items() if k != "outputs"}):
            more, more_control = walk(ref, seen)
            found += more
            control = control or more_control
        return found, control

    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        new = []
        for out in cell.get("outputs", []):
            if WIDGET_VIEW in out.get("data", {}):
                found, control = walk(out["data"][WIDGET_VIEW]["model_id"], set())
                if found and control:
                    new.append(nbformat.v4.new_output("display_data", data={
                        "text/markdown": STATIC_NOTE, "text/plain": STATIC_NOTE.strip("*")}))
                new.extend(copy.deepcopy(found))
            else:
                new.append(out)
        cell["outputs"] = new
    nb["metadata"].pop("widgets", None)
    return nb


def main(argv: list[str] | None = None) -> int:
    """Run the series (or the notebooks named with ``--only``), then build the course site."""
    parser = argparse.ArgumentParser(prog="python -m fedpurel_lite demo", description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 03")
    parser.add_argument("--no-site", "--no-html", dest="no_site", action="store_true",
                        help="do not build the course site (build/site/) afterwards")
    args = parser.parse_args(argv)
    kernels.pin()  # the notebook kernels inherit the pinned kernel paths: the same figures on any AVX2 machine
    if not args.no_site:
        from .site import preflight

        preflight()
    series = notebooks() + apps()
    if args.only:
        series = [p for p in series if any(p.name.startswith(s) for s in args.only)]
    if not series:
        print("no notebooks found in notebooks/ (the series is not written yet); nothing to execute")
        return 0
    total = 0.0
    for path in series:
        seconds = execute(path)
        total += seconds
        print(f"executed {path.relative_to(ROOT)} in {seconds:.1f} s")
    print(f"{len(series)} notebook(s) in {total:.1f} s; figures in {ROOT / 'figures'}")
    if not args.no_site:
        from .site import OUT, build_site

        start = time.perf_counter()
        index = build_site()
        print(f"course site: {index} ({len(list(OUT.rglob('*.html')))} pages) in {time.perf_counter() - start:.1f} s")
    return 0

