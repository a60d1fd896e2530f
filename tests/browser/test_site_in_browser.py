"""The course site in a real browser: every page opens offline, links and figures work, math renders, search finds.

The site is built from the repository into a temporary folder (never into the source tree) and
served by a loopback ``http.server`` started here and stopped by its PID. Every request that does
not go to that server is aborted and recorded, so the pages are checked with the network closed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from servers import START_TIMEOUT_S, STOP_TIMEOUT_S, free_port

from fedpurel_lite.cli import site

SEARCH_TERM = "purification"
MATH_TIMEOUT_MS = 30_000
FORMULA = "span.math.notranslate, div.math.notranslate"
MATHJAX_OUTPUT = ".MathJax, .MathJax_Display, .MathJax_SVG"
# formulas a reader can see (a heading's copy in a collapsed table of contents is not drawn)
UNRENDERED = f"""(() => Array.from(document.querySelectorAll('{FORMULA}')).filter(m => m.getClientRects().length)
  .filter(m => {{
    const out = m.querySelector('{MATHJAX_OUTPUT}');
    return !out || out.getBoundingClientRect().width === 0 || m.querySelector('.MathJax_Error, merror');
}}).map(m => m.textContent.slice(0, 60)))"""


class _Ids(HTMLParser):
    """Every ``id`` (and ``name`` of an ``<a>``) in a page: the fragments a link may point to."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value and (key == "id" or (tag == "a" and key == "name")):
                self.ids.add(value)


def _ids(path: Path) -> set[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.ids


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    """The site built from the repository's stored notebooks and docs/ into a temporary folder."""
    work = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    site.build_site(work / "site", work / "site-src")
    print(f"\nsite build: {time.perf_counter() - start:.1f} s")
    return work / "site"


@pytest.fixture(scope="module")
def served(built_site):
    """``http.server`` on 127.0.0.1 serving the built site; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(built_site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/index.html", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the site's http.server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture
def offline_page(new_page, served):
    """A page whose requests reach only the site's server; every other request is aborted and recorded."""
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(served + "/"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    new_page.route("**/*", route)
    new_page.outside = outside
    return new_page


def _pages(built: Path) -> list[str]:
    return sorted(p.relative_to(built).as_posix() for p in built.rglob("*.html")
                  if not p.relative_to(built).as_posix().startswith(("_static/", "_sources/", "_downloads/")))


def test_the_site_has_the_course_the_app_and_the_docs(built_site):
    pages = set(_pages(built_site))
    root = site.ROOT
    expected = {f"notebooks/{p.stem}.html" for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    expected |= {f"notebooks/{p.stem}.html" for p in (root / "notebooks").glob("*.md")}
    expected |= {f"apps/{p.stem}.html" for p in (root / "apps").glob("*.ipynb")}
    expected |= {f"docs/{p.stem}.html" for p in (root / "docs").glob("*.md")}
    expected |= {"index.html", "README.html", "search.html"}
    assert expected <= pages, sorted(expected - pages)


def test_every_page_opens_offline_with_working_links_figures_and_math(built_site, served, offline_page):
    page = offline_page
    broken: list[str] = []
    checked_links = checked_images = math_pages = 0
    ids: dict[Path, set[str]] = {}
    for rel in _pages(built_site):
        page.goto(f"{served}/{rel}", wait_until="load")
        if rel == "index.html":  # sends the browser on to the home page
            page.wait_for_url(f"{served}/{site.HOME}.html")
            continue
        # every figure: make lazy images load, then each must have decoded pixels
        images = page.evaluate("""async () => {
            const imgs = Array.from(document.images);
            imgs.forEach(i => { i.loading = 'eager'; });
            await Promise.all(imgs.map(i => i.decode().catch(() => null)));
            return imgs.map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);
        }""")
        checked_images += len(images)
        broken += [f"{rel}: image {src} does not load" for src, ok in images if not ok]
        # every internal link: the file exists and so does its fragment
        hrefs = page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
        for href in hrefs:
            target, fragment = urldefrag(href)
            if not target.startswith(served + "/"):
                continue
            path = built_site / unquote(urlparse(target).path).lstrip("/")
            if path.is_dir():
                path = path / "index.html"
            checked_links += 1
            if not path.is_file():
                broken.append(f"{rel}: link {href} -> no such file")
            elif fragment and path.suffix == ".html":
                if fragment not in ids.setdefault(path, _ids(path)):
                    broken.append(f"{rel}: link {href} -> no id {fragment!r}")
        # math: every formula Sphinx wrote (span/div.math.notranslate) typeset by MathJax, none left as TeX
        if page.locator(FORMULA).count():
            math_pages += 1
            try:
                page.wait_for_function(f"() => {UNRENDERED}().length === 0", timeout=MATH_TIMEOUT_MS)
            except PlaywrightTimeout:
                pass  # reported below, formula by formula
            broken += [f"{rel}: formula not rendered: {tex!r}" for tex in page.evaluate(UNRENDERED)]
    print(f"\n{len(_pages(built_site))} pages, {checked_links} internal links, {checked_images} images, "
          f"{math_pages} pages with math")
    assert not broken, "\n".join(broken[:40])
    assert not page.outside, f"requests outside the site (the site must work offline): {sorted(set(page.outside))}"
    assert checked_images >= 6 and math_pages >= 1 and checked_links > 0


def test_search_finds_a_term(served, offline_page):
    page = offline_page
    page.goto(f"{served}/search.html?q={SEARCH_TERM}", wait_until="load")
    results = page.locator("#search-results ul.search li a")
    results.first.wait_for(timeout=MATH_TIMEOUT_MS)
    titles = results.all_inner_texts()
    assert titles, "the search found nothing"
    results.first.click()
    page.wait_for_load_state("load")
    assert SEARCH_TERM in page.locator("main").inner_text().lower()
    assert not page.outside, sorted(set(page.outside))
