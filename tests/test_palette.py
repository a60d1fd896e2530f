"""One palette: a method keeps its colour in every figure, whatever the order or subset of methods."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from fedpurel_lite.data.longtail import GROUP_NAMES, assign_groups, class_counts
from fedpurel_lite.methods import method_names, plugin_records
from fedpurel_lite.views import palette, plots

PACKAGE = Path(plots.__file__).resolve().parents[1]
CORE = ["zero-shot", "fedavg", "fedavg-la", "fedpurel-global", "fedpurel-global-kl", "fedpurel", "fedpurel-noproj",
        "local-ft", "fedrep", "interp", "folio", "local-only"]


def _hex(c) -> str:
    return to_hex(c, keep_alpha=False).lower()


def _labelled_colours(ax) -> dict[str, set[str]]:
    """Label → colours of the labelled lines, point clouds and bar containers of an axes."""
    out: dict[str, set[str]] = {}
    for line in ax.get_lines():
        if not line.get_label().startswith("_"):
            out.setdefault(line.get_label(), set()).add(_hex(line.get_color()))
    for coll in ax.collections:
        if not coll.get_label().startswith("_") and len(coll.get_facecolor()):
            out.setdefault(coll.get_label(), set()).add(_hex(coll.get_facecolor()[0]))
    for cont in ax.containers:
        if not cont.get_label().startswith("_"):
            out.setdefault(cont.get_label(), set()).update(_hex(p.get_facecolor()) for p in cont.patches)
    return out


def _tick_colours(ax, names) -> dict[str, set[str]]:
    """method_bars draws one unlabelled mark per method, in tick order."""
    out: dict[str, set[str]] = {n: set() for n in names}
    bars = [p for p in ax.patches]
    if bars:
        for n, p in zip(names, bars, strict=True):
            out[n].add(_hex(p.get_facecolor()))
    else:
        marks = [ln for ln in ax.get_lines() if ln.get_marker() not in (None, "None", "")]
        for n, ln in zip(names, marks, strict=True):
            out[n].add(_hex(ln.get_color()))
    return out


def _every_figure(methods: list[str]) -> list[dict[str, set[str]]]:
    rng = np.random.default_rng(len(methods))
    counts = class_counts(500, 20, 100)
    fig, axes = plt.subplots(2, 5, figsize=(20, 7))
    plots.curves({m: rng.uniform(0, 100, 6) for m in methods}, "acc", ax=axes[0, 0], reference=50.0)
    plots.accuracy_vs_frequency({m: rng.uniform(0, 100, 20) for m in methods}, counts, ax=axes[0, 1])
    plots.accuracy_shift({m: rng.normal(0, 9, 20) for m in methods}, counts, ax=axes[0, 2])
    plots.group_bars({m: dict(zip(("accuracy", *GROUP_NAMES), rng.uniform(0, 100, 4), strict=True)) for m in methods},
                     ax=axes[0, 3])
    plots.scatter_xy({m: (rng.normal(size=5), rng.normal(size=5)) for m in methods}, "x", "y", ax=axes[0, 4])
    plots.lean_bars({m: rng.normal(size=4) for m in methods}, ax=axes[1, 0])
    plots.method_bars({m: float(rng.uniform(40, 60)) for m in methods}, "acc", ax=axes[1, 1])
    plots.method_bars({m: float(rng.uniform(40, 60)) for m in methods}, "acc", ax=axes[1, 2], from_zero=False,
                      reference=50.0, reference_label="global FedAvg model")
    found = [_labelled_colours(ax) for ax in (*axes[0], axes[1, 0])]
    found += [_tick_colours(axes[1, 1], methods), _tick_colours(axes[1, 2], methods)]
    plt.close(fig)
    return found


@pytest.mark.parametrize("order", [CORE, CORE[::-1], ["fedpurel", "fedavg"], ["folio", "fedpurel", "local-ft"]],
                         ids=["all", "reversed", "two", "three"])
def test_a_method_has_the_same_colour_in_every_figure(order):
    for per_figure in _every_figure(order):
        for m in order:
            assert per_figure[m] == {palette.colour(m).lower()}, (m, per_figure[m])


def test_every_built_in_method_has_a_fixed_unique_style():
    """A plugin's own method (a ``METHOD_RECORDS`` entry) is drawn in a colour picked from its label."""
    plugins = {r["name"] for r in plugin_records()}
    assert plugins and set(method_names()) - plugins == set(palette.METHOD_STYLES)
    triples = [(s.colour, str(s.linestyle), s.marker) for s in palette.METHOD_STYLES.values()]
    assert len(set(triples)) == len(triples)
    markers = [s.marker for s in palette.METHOD_STYLES.values()]
    assert len(set(markers)) == len(markers), "a second channel besides colour: one marker per method"
    assert palette.method_of("FedAvg, 40 rounds") == "fedavg"
    assert palette.method_of("fedpurel-global (measured)") == "fedpurel-global"
    assert palette.method_of("zero-shot CLIP") == "zero-shot"
    assert palette.method_of("no such thing") is None
    assert palette.colour("no such thing") == palette.colour("no such thing")  # by text, not position


@pytest.mark.parametrize("kind", ["normal", "protanopia", "deuteranopia", "tritanopia"])
def test_colours_stay_apart_for_colour_blind_readers(kind):
    # the groups are told apart by colour alone: they must differ clearly under every vision
    assert palette.min_distance(palette.GROUP_COLOURS.values(), kind) > 25
    # the methods the notebooks draw together (markers differ as well)
    for together in (["zero-shot", "fedavg", "fedavg-la", "fedpurel-global", "fedpurel-global-kl"],
                     ["fedavg", "local-ft", "interp", "folio", "fedrep", "fedpurel-noproj", "fedpurel"],
                     ["zero-shot", "fedavg", "fedavg-la", "local-ft", "fedrep", "interp", "folio", "fedpurel"]):
        assert palette.min_distance([palette.colour(m) for m in together], kind) > 12


def test_class_profile_legend_has_three_distinct_swatches():
    counts = class_counts(500, 100, 100)
    ax = plots.class_profile(counts, assign_groups(counts))
    handles = ax.get_legend().legend_handles
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(GROUP_NAMES)
    assert len({_hex(h.get_facecolor()) for h in handles}) == 3
    plt.close(ax.figure)


def test_legends_sit_outside_the_data_and_round_ticks_are_integers():
    fig, ax = plt.subplots()
    plots.curves({"fedavg": [1.0, 2.0, 3.0, 4.0], "fedpurel": [2.0, 3.0, 3.0, 5.0]}, "acc", ax=ax)
    fig.canvas.draw()
    box, leg = ax.get_window_extent(), ax.get_legend().get_window_extent()
    assert leg.x0 >= box.x1, "legend right of the axes"
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(fig)


def test_method_bars_can_show_differences_not_zero():
    fig, ax = plt.subplots()
    plots.method_bars({"fedavg": 45.0, "fedpurel": 55.0}, "tail", ax=ax, from_zero=False, reference=46.0,
                      reference_label="global FedAvg model")
    lo, hi = ax.get_ylim()
    assert lo > 30 and hi < 70, "the axis is fitted to the values, not started at 0"
    plt.close(fig)


def test_group_bars_say_when_a_group_has_no_classes():
    fig, ax = plt.subplots()
    plots.group_bars({"zero-shot": {"head": 50.0, "medium": 40.0, "tail": float("nan")}}, ax=ax, keys=GROUP_NAMES)
    assert any("no classes" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_no_module_switches_the_matplotlib_backend(tmp_path):
    pattern = re.compile(r"matplotlib\.use\(|switch_backend\(|mpl\.use\(")
    offenders = [str(p) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders, f"global backend switches in {offenders}"
    from fedpurel_lite.worlds.shapes import plot_contact_sheet

    before, figures = matplotlib.get_backend(), list(plt.get_fignums())
    path = plot_contact_sheet(str(tmp_path / "sheet.png"))
    assert matplotlib.get_backend() == before and Path(path).read_bytes()[:4] == b"\x89PNG"
    assert plt.get_fignums() == figures, "drawn off-screen, not through pyplot"


def test_group_shares_handle_a_client_without_tail():
    shares = pd.DataFrame({"head": [80.0, 100.0], "medium": [20.0, 0.0], "tail": [0.0, 0.0]})
    ax = plots.group_share_bars(shares)
    assert len(ax.patches) == 6
    plt.close(ax.figure)
