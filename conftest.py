"""Repository-wide pytest hooks: pinned kernels, figures in a temporary folder, images from drawing cells, latencies.

Before anything imports torch, the whole test session (and every notebook kernel, JupyterLab or
Voilà server it starts, which inherit its environment) runs on the pinned CPU kernel paths of
:mod:`fedpurel_lite.kernels`, so the figures it draws are the same bytes on any x86-64 CPU with
AVX2. Notebooks executed by the tests write their figures into a temporary folder
(``FEDPUREL_FIGURES``), never into ``figures/``, and each must equal its committed counterpart
(``FEDPUREL_FIGURES_CHECK=1``: :func:`fedpurel_lite.views.plots.save_figure` raises otherwise).

nbval (``--nbval-lax``) compares outputs only for cells tagged ``nbval-check-output``, so an empty
figure (a cell that calls ``plt.show()`` after something switched matplotlib to a non-interactive
backend) would pass unnoticed. After each notebook cell runs, :func:`pytest_runtest_call` reads
nbval's executed outputs and fails the cell when it draws (``tests/notebook_checks.py`` says what
that means) but no image came back from the kernel.

The series runs once per session: when the JupyterLab test (``tests/browser/test_lab_notebooks.py``)
is collected and a browser is usable, it executes every notebook in JupyterLab and holds the run to
nbval's rules (the same cells compared by nbval's own code), and ``notebooks/`` is not collected for
nbval (:func:`pytest_ignore_collect`); the header of the run says so. Without a browser, or for a
notebook named on the command line, nbval executes it as before.

The browser tests (``tests/browser/``) write the widget latencies they measure to
``build/browser/latency.json``; :func:`pytest_terminal_summary` prints them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from fedpurel_lite import kernels

kernels.pin()
os.environ["FEDPUREL_FIGURES"] = tempfile.mkdtemp(prefix="fedpurel-figures-")
os.environ["FEDPUREL_FIGURES_CHECK"] = "1"

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# no example database in the source tree: the failures Hypothesis finds are kept as explicit cases in the tests
settings.register_profile("repo", database=None, deadline=None)
settings.load_profile("repo")

ROOT = Path(__file__).resolve().parent
LATENCY_FILE = ROOT / "build" / "browser" / "latency.json"
_STARTED = time.time()

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from notebook_checks import draws, has_image  # noqa: E402

pytest_plugins = ["servers"]  # the browser tests' fixtures: chromium_browser, work_copy, new_page


# The complete suite is `make test`; `make check` runs the fast tier (`-m "not slow"`) for the inner loop.
# Slow: every notebook under nbval, the browser tests, and the files below (whole runs, subprocess pipelines,
# real Flower deployments).
SLOW_FILES = {"test_claims.py", "test_flower_deploy.py", "test_flower_engine.py", "test_kernels.py",
              "test_lifetimes.py", "test_lora.py",
              "test_reference_options.py", "test_explore_grid.py"}


# The series is executed once per session. When the JupyterLab test runs (a usable browser and the test among the
# paths collected), it executes every notebook and holds the run to nbval's rules; nbval then does not collect
# notebooks/ (a notebook named on the command line is still run under nbval). Without a browser, nbval runs them.
LAB_RUN = ROOT / "tests" / "browser" / "test_lab_notebooks.py"
SERIES = ROOT / "notebooks"
_SERIES_IN_LAB = pytest.StashKey[bool]()


def _collected_from(config) -> list[Path]:
    """The paths this session collects from (its arguments, else ``testpaths``), resolved."""
    return [(config.invocation_params.dir / str(arg).split("::")[0]).resolve() for arg in config.args]


def series_runs_in_lab(config) -> bool:
    """Whether this session's JupyterLab test executes the notebook series (see :data:`LAB_RUN`)."""
    if _SERIES_IN_LAB not in config.stash:
        from servers import browser_usable

        config.stash[_SERIES_IN_LAB] = (browser_usable() and config.getoption("nbval_lax", False)
                                        and any(p == LAB_RUN or p in LAB_RUN.parents for p in _collected_from(config)))
    return config.stash[_SERIES_IN_LAB]


def pytest_ignore_collect(collection_path, config):
    """Leave the series to the JupyterLab test when that runs (one execution of every notebook)."""
    if (collection_path.suffix == ".ipynb" and collection_path.parent == SERIES
            and collection_path not in _collected_from(config) and series_runs_in_lab(config)):
        return True
    return None


def pytest_report_header(config):
    """Say where the series is executed when this session would have collected ``notebooks/``."""
    if series_runs_in_lab(config) and any(p == SERIES or p in SERIES.parents for p in _collected_from(config)):
        return [f"notebooks/: executed once, in JupyterLab ({LAB_RUN.relative_to(ROOT)}), held to nbval's rules"]
    return []


def pytest_collection_modifyitems(config, items):
    """Mark the slow tier (see :data:`SLOW_FILES`); the files holding slow tests go first (see :class:`FileGroups`)."""
    slow_files = set()
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix == ".ipynb" or "browser" in path.parts or path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow"):
            slow_files.add(path)
    items.sort(key=lambda item: Path(str(item.fspath)) not in slow_files)  # stable: files stay whole and in order


# `make test` and `make check` run on pytest-xdist workers (`-n 2`). A worker takes a whole group of tests at a time:
# one file (its module fixtures are built once), or the files that share the session's JupyterLab. The long groups
# are handed out first (the sort above), the short ones fill up the workers at the end.
SHARED_LAB = {"test_course_in_lab.py", "test_lab_notebooks.py"}


def pytest_xdist_make_scheduler(config, log):
    """Schedule whole groups of tests (see :data:`SHARED_LAB`) in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "jupyterlab" if Path(path).name in SHARED_LAB else path

    return FileGroups(config, log)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# evaluated in the notebook's kernel: does a widget with one of these ids (or a child of it) show an image?
_WIDGET_IMAGE = ("(lambda W, ids: (lambda f: any(f(f, W.widgets.get(i)) for i in ids))(lambda f, w: w is not None and ("
                 "any(any(t in (o.get('data') or {{}}) for t in {types!r}) for o in (getattr(w, 'outputs', ()) or ())) "
                 "or any(f(f, c) for c in (getattr(w, 'children', ()) or ())))))"
                 "(__import__('ipywidgets').Widget, {ids!r})")


def _widget_shows_image(item, outputs) -> bool:
    """Ask the cell's kernel whether a widget the cell displayed holds an image.

    An explorer sets its ``Output`` widget's contents directly (so that a background thread can
    redraw it), which sends no image with the cell; its figure lives in the widget's state.
    """
    from notebook_checks import IMAGE_TYPES

    ids = [o["data"][WIDGET_VIEW]["model_id"] for o in outputs if WIDGET_VIEW in (o.get("data") or {})]
    kernel = getattr(getattr(item, "parent", None), "kernel", None)
    if not ids or kernel is None:
        return False
    expression = _WIDGET_IMAGE.format(types=IMAGE_TYPES, ids=ids)
    msg_id = kernel.kc.execute("", silent=True, store_history=False, user_expressions={"shown": expression})
    while True:
        reply = kernel.kc.get_shell_msg(timeout=60)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    shown = reply["content"].get("user_expressions", {}).get("shown", {})
    return shown.get("status") == "ok" and shown["data"]["text/plain"] == "True"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Run the item; for a notebook cell (nbval), then require an image from every drawing cell."""
    result = yield
    cell = getattr(item, "cell", None)
    outputs = getattr(item, "test_outputs", None)
    if (cell is not None and outputs is not None and draws(cell.source) and not has_image(outputs)
            and not _widget_shows_image(item, outputs)):
        first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
        pytest.fail(f"this cell draws a figure but produced no image output: {first!r}", pytrace=False)
    return result


def pytest_sessionfinish(session, exitstatus):
    """Remove the temporary figures folder."""
    import shutil

    shutil.rmtree(os.environ["FEDPUREL_FIGURES"], ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    """Print the widget latencies the browser tests measured in this session."""
    if not LATENCY_FILE.exists() or LATENCY_FILE.stat().st_mtime < _STARTED:
        return
    fresh = {k: v["seconds"] for k, v in json.loads(LATENCY_FILE.read_text()).items() if v["at"] >= _STARTED}
    if fresh:
        terminalreporter.section("widget update latency in the browser (seconds, this run)")
        for name, seconds in fresh.items():
            terminalreporter.write_line(f"{name:<60} {seconds:7.2f}")
