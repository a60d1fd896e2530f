"""Notebooks 04-06 say what their own numbers show (static checks of the stored notebooks, no kernel).

Each test pins one sentence that used to contradict the notebook's outputs: the sentence is gone or
rewritten, and the claim that replaced it is checked by a ``says(...)`` cell that ran and held.
Running the claims themselves is nbval's job (``pytest notebooks/05_bias_transfer.ipynb``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import nbformat
import pytest
from notebook_checks import output_text

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"
PROMPT_RESULTS = ROOT / "data" / "results" / "prompt_shape_grouped_seed1"


def _read(name: str):
    return nbformat.read(next(NB.glob(f"{name}_*.ipynb")), as_version=4)


_out = output_text


def _markdown(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def _held(nb, statement: str) -> bool:
    """A says(...) cell states ``statement`` and its stored output shows it held."""
    return any(c.cell_type == "code" and statement in c.source and f"✓ {statement}" in _out(c) for c in nb.cells)


def test_04_title_and_takeaway_match_its_table():
    nb = _read("04")
    assert "keeps the zero-shot balance" not in nb.cells[0].source
    assert "deserve an honest look" not in _markdown(nb), "the takeaway states its results instead of announcing them"
    for statement in ("fedpurel-global's head–tail gap is more than five times zero-shot's",
                      "fedavg-la keeps more tail than fedpurel-global",
                      "the plain-KL ablation keeps more tail than fedpurel-global",
                      "the plain-KL ablation is ahead of the TKL on the tail and overall",
                      "fedavg-la is the best global model overall and on the tail"):
        assert _held(nb, statement), statement


def test_04_sample_is_chosen_where_both_models_agree():
    nb = _read("04")
    cell = next(c for c in nb.cells if c.cell_type == "code" and "topk(3" in c.source)
    assert "agree" in cell.source
    assert re.search(r"✓ on image \d+ both models put the same three classes on top", _out(cell))
    draw = next(c for c in nb.cells if c.cell_type == "code" and "temperature_alignment(" in c.source)
    assert "argmax()" not in draw.source, "the drawn image is the one the checked cell picked"


def test_05_describes_the_personalization_it_runs():
    nb = _read("05")
    text = _markdown(nb)
    assert "started from zero-shot" in text or "**started from zero-shot**" in text
    for paragraph in text.split("\n\n"):
        if "zero-initialised" in paragraph:
            assert "fedpurel-linear" in paragraph, "a zero-initialised head is only the linear variant"
        if "personal.residual.scale" in paragraph:
            assert "fedpurel-linear" in paragraph and "does nothing here" in paragraph
    assert _held(nb, "fedpurel and fedpurel-noproj personalize with the residual PEFT from zero-shot (residual-peft)")


def test_05_takeaway_follows_the_verdict():
    nb = _read("05")
    verdict = next(c for c in nb.cells if c.cell_type == "code" and "→ " in c.source and "holds" in c.source)
    lean_holds = "lean:" in _out(verdict) and "does NOT hold" not in _out(verdict).split("fedpurel:")[-1]
    takeaway = next(c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Takeaway"))
    assert not lean_holds and "does **not** lean less" in takeaway
    assert _held(nb, "neither residual model leans less than the least-leaning fusion baseline")


def test_05_has_the_grid_and_calibration_with_their_reading():
    nb = _read("05")
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "report_figures.grid_figure(" in source and "report_figures.calibration_figure(" in source
    for name in ("05_bias_transfer_grid", "05_calibration"):
        assert (ROOT / "figures" / f"{name}.png").is_file()
    assert _held(nb, "both residual models end above zero-shot there")
    assert _held(nb, "FedAvg's global tail ECE is more than three times its head ECE")


def test_06_explorer_keeps_the_preset_setting_and_the_sketch_order_is_explained():
    nb = _read("06")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not re.search(r"explorer\.\w+\.value\s*=", cell.source), "the shown explorer is not moved"
    assert _held(nb, "the 4-round sketch puts FedAvg ahead of FedPuReL overall")
    assert _held(nb, "the sketch's curves equal the full run's first rounds")


def test_06_names_the_source_of_the_paper_numbers():
    text = _markdown(_read("06"))
    assert "third-party summary" not in text
    assert "the paper's own" in text and "arXiv 2605.02247" in text


def test_06_prompt_section_reads_the_committed_results():
    nb = _read("06")
    text = _markdown(nb)
    assert "configs/embedded_prompt.toml" in text and "--methods zero-shot fedavg fedpurel-global" in text
    with open(f"{PROMPT_RESULTS}.csv", newline="") as fh:
        rows = {(r["method"], r["model"]): r for r in csv.DictReader(fh)}
    assert {("zero-shot", "global"), ("fedavg", "global"), ("fedpurel-global", "global")} <= set(rows)
    for method in ("zero-shot", "fedavg", "fedpurel-global"):
        assert (PROMPT_RESULTS / "runs" / method / "result.json").is_file()
    assert _held(nb, "PromptFL's tail ends below zero-shot")


@pytest.mark.parametrize("name", ["04", "05", "06"])
def test_guesses_come_before_measured_values(name):
    nb = _read(name)
    starts = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "(predict, then run)" in c.source]
    assert starts
    for i in starts:
        cell = nb.cells[i + 1]
        assert cell.cell_type == "code" and "guess(" in cell.source, "a prediction exercise asks with guess(...)"
        assert "print(" not in cell.source
