"""The bias-transfer app in Voilà, in a real browser: it renders, and every kind of control changes the plot."""

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
            page.goto(f"{voila.url}/?token={voila.token}", timeout=RENDER_TIMEOUT_MS, wait_until="commit")
            page.wait_for_function(SIGNATURE, timeout=RENDER_TIMEOUT_MS, polling=500)
            break
        except Exception as exc:  # noqa: BLE001  (say what the server did)
            if attempt == 2:
                pytest.fail(f"the app did not render: {exc}\nVoila log:\n{voila.log.read_text()[-3000:]}",
                            pytrace=False)
    assert not page.evaluate(ERRORS), page.evaluate(ERRORS)
    assert page.locator(".widget-slider").count() == 2 and page.locator(".widget-checkbox").count() >= 5

    ratio, alpha = page.locator(".widget-slider").nth(0), page.locator(".widget-slider").nth(1)

    def press(slider, key):
        return lambda: (slider.locator(".noUi-handle").focus(), page.keyboard.press(key))

    box = page.locator(".widget-checkbox", has_text="interp").locator("input")
    seconds, _ = _change(page, box.check, "ticking interp")
    record_latency("app: tick interp (one new run)", seconds)

    seconds, busy = _change(page, press(alpha, "ArrowRight"), "Dirichlet α")
    assert busy, "a new setting shows the busy status while it runs"
    record_latency(f"app: Dirichlet α → {alpha.locator('.widget-readout').inner_text()} (5 new runs)", seconds)

    seconds, _ = _change(page, press(ratio, "ArrowLeft"), "imbalance ratio")
    record_latency(f"app: imbalance ratio → {ratio.locator('.widget-readout').inner_text()} (5 new runs)", seconds)

    seconds, _ = _change(page, press(ratio, "ArrowRight"), "imbalance ratio back")
    record_latency(f"app: imbalance ratio → {ratio.locator('.widget-readout').inner_text()} (kept runs)", seconds)
    assert not page.evaluate(ERRORS), page.evaluate(ERRORS)
    (ROOT / "build" / "browser").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ROOT / "build" / "browser" / "voila_bias_transfer.png"), full_page=True)
