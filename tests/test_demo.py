"""make demo's normaliser: what changes between runs is removed, what a reader sees is kept."""

from __future__ import annotations

import copy
import uuid

import nbformat

from fedpurel_lite.cli import demo

VIEW = demo.WIDGET_VIEW


def _executed(seed: int):
    """A notebook as nbclient leaves it: timestamps, split prints, random widget ids, a closed progress bar."""
    ids = [uuid.UUID(int=seed * 1000 + i).hex for i in range(4)]  # box, output, slider, closed bar
    box, out, slider, bar = ids
    cells = [nbformat.v4.new_code_cell("print('a'); print('b')"), nbformat.v4.new_code_cell("display(w)"),
             nbformat.v4.new_code_cell("load()")]
    for i, cell in enumerate(cells):
        cell.id = f"cell{i}"  # stored in the notebook file, kept by execution
    cells[0].metadata["execution"] = {"iopub.status.busy": f"2026-01-0{seed}T00:00:00Z"}
    cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="a\n"),
                        nbformat.v4.new_output("stream", name="stdout", text="b\n")][: 2 if seed % 2 else 1]
    if seed % 2 == 0:
        cells[0].outputs[0]["text"] = "a\nb\n"
    cells[1].outputs = [nbformat.v4.new_output("display_data", data={VIEW: {"model_id": box, "version_major": 2,
                                                                            "version_minor": 0}})]
    cells[2].outputs = [nbformat.v4.new_output("display_data", data={VIEW: {"model_id": bar, "version_major": 2,
                                                                            "version_minor": 0}})]
    png = {"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}}
    state = {
        slider: {"model_name": "IntSliderModel", "state": {"value": 3}},
        out: {"model_name": "OutputModel", "state": {"outputs": [png]}},
        box: {"model_name": "VBoxModel", "state": {"children": [f"IPY_MODEL_{slider}", f"IPY_MODEL_{out}"]}},
    }
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["language_info"] = {"name": "python", "version": f"3.11.{seed}"}
    nb.metadata["widgets"] = {demo.WIDGET_STATE: {"state": state, "version_major": 2, "version_minor": 0}}
    return nb


def test_two_runs_normalise_to_the_same_notebook():
    a, b = demo.normalise(_executed(1), "x.ipynb"), demo.normalise(_executed(2), "x.ipynb")
    assert nbformat.writes(a) == nbformat.writes(b)
    again = demo.normalise(copy.deepcopy(a), "x.ipynb")
    assert nbformat.writes(again) == nbformat.writes(a), "normalising twice changes nothing"


def test_what_the_reader_sees_is_kept():
    nb = demo.normalise(_executed(1), "x.ipynb")
    assert "execution" not in nb.cells[0].metadata and "version" not in nb.metadata["language_info"]
    assert nb.cells[0].outputs[0]["text"] == "a\nb\n" and len(nb.cells[0].outputs) == 1
    assert nb.cells[2].outputs == [], "the view of a closed widget (a finished progress bar) is dropped"
    state = nb.metadata["widgets"][demo.WIDGET_STATE]["state"]
    root = nb.cells[1].outputs[0]["data"][VIEW]["model_id"]
    assert list(state)[0] == root and len(state) == 3
    children = state[root]["state"]["children"]
    assert all(c[len("IPY_MODEL_"):] in state for c in children), "references follow the new ids"
    assert demo.normalise(_executed(1), "y.ipynb").metadata["widgets"] != nb.metadata["widgets"], "ids per notebook"


def test_static_copy_shows_the_widgets_figures():
    nb = demo.static_copy(demo.normalise(_executed(1), "x.ipynb"))
    assert "widgets" not in nb.metadata
    note, figure = nb.cells[1].outputs
    assert "JupyterLab" in note["data"]["text/markdown"], "a widget with a control says where it is live"
    assert figure["data"] == {"image/png": "iVBOR"}


def test_static_copy_of_a_widget_without_controls_adds_no_note():
    nb = demo.normalise(_executed(1), "x.ipynb")
    state = nb.metadata["widgets"][demo.WIDGET_STATE]["state"]
    for model in state.values():
        if model["model_name"] == "IntSliderModel":
            model["model_name"] = "HTMLModel"
    assert [o["data"] for o in demo.static_copy(nb).cells[1].outputs] == [{"image/png": "iVBOR"}]


def test_machine_specific_cells_keep_no_outputs():
    import nbformat

    from fedpurel_lite.cli.demo import MACHINE_SPECIFIC, normalise

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text="1\n")])
                for _ in range(2)]
    nb.cells[0].metadata["tags"] = [MACHINE_SPECIFIC]
    normalise(nb, "x.ipynb")
    assert nb.cells[0].outputs == [] and nb.cells[1].outputs[0]["text"] == "1\n"
