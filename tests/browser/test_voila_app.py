"""The bias-transfer app in Voilà, in a real browser: it renders, and every kind of control changes the plot.

The time from the page request to the first plot, and from each key press or click to the new
plot, is recorded as a benchmark (``build/browser/latency.json``), not asserted.
"""

from __future__ import annotations

import time

import pytest
from servers import PAGE_TIMEOUT_MS, ROOT, record_latency, start_voila

RENDER_TIMEOUT_MS = 240_000
CHANGE_TIMEOUT_S = 240

SIGNATURE = """() => Array.from(document.querySelectorAll('.jupyter-widgets img'))
  .filter(im => im.src.startsWith('data:image') || im.src.startsWith('blob:'))
  .map(im => im.src.length + ':' + im.src.slice(-96)).join('|')"""
BUSY = """() => Array.from(document.querySelectorAll('.widget-html')).some(e => e.textContent.includes('computing'))"""
CAPTION = """() => Array.from(document.querySelectorAll('.widget-html')).map(e => e.textContent)
  .filter(t => t.includes('shown:')).join(' ')"""
ERRORS = """() => Array.from(document.querySelectorAll(
  '[data-mime-type="application/vnd.jupyter.stderr"], [data-mime-type="application/vnd.jupyter.error"]'))
  .map(e => e.textContent.slice(0, 300))"""


@pytest.fixture(scope="module")
def voila(chromium_browser, work_copy, tmp_path_factory):
    server = start_voila(work_copy / "apps" / "bias_transfer.ipynb", work_copy, tmp_path_factory.mktemp("voila-home"))
    yield server
    server.stop()


def _change(page, act, what: str) -> tuple[float, bool]:
    """Do ``act``; wait (bounded) until the plot changed and the app is idle; return (seconds, busy seen)."""
    before = page.evaluate(SIGNATURE)
    start = time.perf_counter()
    act()
    busy_seen = False
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    while True:
        busy = page.evaluate(BUSY)
        busy_seen = busy_seen or busy
        now = page.evaluate(SIGNATURE)
        if now and now != before and not busy:
            return time.perf_counter() - start, busy_seen
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: the plot did not change in {CHANGE_TIMEOUT_S} s", pytrace=False)
        time.sleep(0.05)


def test_bias_transfer_app_in_voila(voila, new_page):
    page = new_page
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    for attempt in (1, 2):  # a new page load is a new kernel: one retry if the first never renders
        try:
            start = time.perf_counter()
            page.goto(f"{voila.url}/?token={voila.token}", timeout=RENDER_TIMEOUT_MS, wait_until="commit")
            page.wait_for_function(SIGNATURE, timeout=RENDER_TIMEOUT_MS, polling=50)
            record_latency("app: first render (page request → first plot)", time.perf_counter() - start)
            break
        except Exception as exc:  # noqa: BLE001  (say what the server did)
            if attempt == 2:
                pytest.fail(f"the app did not render: {exc}\nVoila log:\n{voila.log.read_text()[-3000:]}",
                            pytrace=False)
    assert not page.evaluate(ERRORS), page.evaluate(ERRORS)
    assert page.locator(".widget-slider").count() == 2 and page.locator(".widget-checkbox").count() >= 5

    ratio, alpha = page.locator(".widget-slider").nth(0), page.locator(".widget-slider").nth(1)

    def readout(slider) -> str:
        return slider.locator(".widget-readout").inner_text().strip()

    def press(slider, key, times: int = 1):
        def act():
            slider.locator(".noUi-handle").focus()
            for _ in range(times):
                page.keyboard.press(key)
        return act

    def tick(name: str):
        return page.locator(".widget-checkbox", has_text=name).locator("input").check

    seconds, _ = _change(page, tick("interp"), "ticking interp")
    record_latency("app: tick interp (4 methods)", seconds)

    seconds, _ = _change(page, press(alpha, "ArrowRight"), "Dirichlet α")
    record_latency(f"app: Dirichlet α → {readout(alpha)}", seconds)

    seconds, _ = _change(page, press(ratio, "ArrowLeft"), "imbalance ratio")
    record_latency(f"app: imbalance ratio → {readout(ratio)}", seconds)

    seconds, _ = _change(page, press(ratio, "ArrowRight"), "imbalance ratio back")
    record_latency(f"app: imbalance ratio → {readout(ratio)} (back)", seconds)

    seconds, _ = _change(page, tick("fedrep"), "ticking fedrep")
    record_latency("app: tick fedrep (5 methods: trend lines)", seconds)

    before, signature = readout(ratio), page.evaluate(SIGNATURE)
    start = time.perf_counter()
    press(ratio, "ArrowLeft", times=3)()  # faster than the app redraws
    assert _step(before, readout(ratio), RATIOS) == -3, "every press counts: none is dropped while the app redraws"
    last_change = _settle(page, signature, f"IF = {readout(ratio)}, α = {readout(alpha)},")
    record_latency(f"app: three imbalance-ratio presses {before} → {readout(ratio)} (to the last plot)",
                   last_change - start)
    assert not page.evaluate(ERRORS), page.evaluate(ERRORS)
    (ROOT / "build" / "browser").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ROOT / "build" / "browser" / "voila_bias_transfer.png"), full_page=True)


RATIOS = ("10", "25", "50", "100", "200")


def _step(before: str, after: str, choices: tuple[str, ...]) -> int:
    return choices.index(after) - choices.index(before)


def _settle(page, signature: str, shown: str) -> float:
    """Wait (bounded) until the app is idle with a new plot of the setting ``shown`` (its caption says so).

    Returns the ``time.perf_counter()`` of the last change of the plot seen.
    """
    deadline, last, changed = time.monotonic() + CHANGE_TIMEOUT_S, signature, time.perf_counter()
    while time.monotonic() < deadline:
        now = page.evaluate(SIGNATURE)
        if now != last:
            last, changed = now, time.perf_counter()
        elif last != signature and not page.evaluate(BUSY) and shown in page.evaluate(CAPTION):
            return changed
        time.sleep(0.05)
    pytest.fail(f"the app did not settle on {shown!r}; it shows {page.evaluate(CAPTION)!r}", pytrace=False)


# ----------------------------------------------------------------------------- notebook 06's explorer, alone
EXPLORER_CELLS = [
    "from IPython.display import display\n"
    "from fedpurel_lite.engine import assembly; from fedpurel_lite.views import widgets\n"
    "from fedpurel_lite.config import RunConfig\n",
    "config = RunConfig.load('../configs/embedded.toml').with_overrides({'cache_dir': '../data/cache'})\n"
    "bank = assembly.load_bank(config, progress=False)\n"
    "explorer = widgets.FederationExplorer(bank, config, methods=('zero-shot', 'fedavg', 'fedpurel'), rounds=4)\n"
    "display(explorer.widget)\n",
]


@pytest.fixture(scope="module")
def explorer_voila(chromium_browser, work_copy, tmp_path_factory):
    """Voilà serving notebook 06's explorer cell alone (the explorer as notebook 06 builds it, without its runs)."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in EXPLORER_CELLS])
    path = work_copy / "apps" / "federation_explorer.ipynb"
    nbformat.write(nb, path)
    server = start_voila(path, work_copy, tmp_path_factory.mktemp("voila-explorer-home"))
    yield server
    server.stop()


def test_federation_explorer_in_voila(explorer_voila, new_page):
    """Every slider of notebook 06's explorer: a key press redraws from the precomputed grid (latency recorded)."""
    page = new_page
    page.goto(f"{explorer_voila.url}/?token={explorer_voila.token}", timeout=RENDER_TIMEOUT_MS, wait_until="commit")
    page.wait_for_function(SIGNATURE, timeout=RENDER_TIMEOUT_MS, polling=100)
    assert not page.evaluate(ERRORS), page.evaluate(ERRORS)
    sliders = page.locator(".widget-slider")
    assert sliders.count() == 2
    for k, key in ((0, "ArrowLeft"), (1, "ArrowLeft"), (0, "ArrowRight"), (1, "ArrowRight")):
        slider = sliders.nth(k)
        label = slider.locator(".widget-label").inner_text().strip()
        value = slider.locator(".widget-readout").inner_text().strip()

        def act(slider=slider, key=key):
            slider.locator(".noUi-handle").focus()
            page.keyboard.press(key)

        seconds, _ = _change(page, act, label)
        record_latency(f"06 explorer (Voilà): {label} {value} → "
                       f"{slider.locator('.widget-readout').inner_text().strip()}", seconds)
    assert not page.evaluate(ERRORS), page.evaluate(ERRORS)
