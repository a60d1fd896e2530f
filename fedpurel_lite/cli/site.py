"""The course as a static site, built offline with Jupyter Book 1 (Sphinx + MyST-NB).

``python -m fedpurel_lite site`` assembles a build source folder (``build/site-src/``) and builds
it into ``build/site/`` (open ``build/site/index.html``). The source folder mirrors the
repository's paths, so every relative link that works on GitHub works in the site:

- ``README.md`` is the home page, ``docs/*.md`` the reference pages, ``figures/`` the figures;
- ``notebooks/NN_*.ipynb`` (the series with its start page), ``notebooks/*.md`` (the glossary) and
  ``apps/*.ipynb`` are copied as *static copies* (:func:`fedpurel_lite.cli.demo.static_copy`): their stored
  outputs are shown and an explorer's widget is replaced by the figure it holds. Nothing is executed.
- files outside these folders that a page links to (a config, a module) are copied as downloads.

The table of contents is generated from what exists, so a new notebook, glossary or docs page is
published without editing any configuration. Math is typeset by a local copy of MathJax (from the
``jupyter-server-mathjax`` package); no theme, font or script is fetched from the network.
"""

from __future__ import annotations

import argparse
import re
import shutil
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ResourceMissingError, UserError

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "build" / "site-src"
OUT = ROOT / "build" / "site"
MARKER = ".fedpurel-site-source"
HOME = "README"
STATIC = "_site_static"  # not "_static": Jupyter Book would add every script in that folder to every page
MATHJAX_DIR = f"{STATIC}/mathjax"
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full"
# docs/ pages in reading order, by part; a docs page not listed here is added to the last part
DOC_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Results", ("results", "bias_transfer_report", "reference_fidelity")),
    ("Using the toolkit", ("experiments", "extending", "embedded_world", "flower", "benchmarks", "layout")),
)
_HTML_ANCHOR = re.compile(r'^<a (?:id|name)="([A-Za-z0-9_.:-]+)"></a>[ \t]*$', re.M)
_NOT_SLUG = re.compile(r"[^\w-]")
_FRAGMENT_LINK = re.compile(r"\]\(([^)\s#]*)#([^)\s]+)\)")
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


@dataclass(frozen=True)
class Part:
    """One captioned group of pages in the site's navigation (paths relative to the source, no suffix)."""

    caption: str
    pages: tuple[str, ...]


# ----------------------------------------------------------------------------- table of contents
def table_of_contents(root: Path = ROOT) -> list[Part]:
    """The site's parts, from the files that exist under ``root``; empty parts are left out.

    The course is ``notebooks/NN_*.ipynb`` in order (a ``00_*`` start page first), then every
    ``notebooks/*.md`` (the glossary); the app is ``apps/*.ipynb``; the reference pages are
    ``docs/*.md`` in the order of :data:`DOC_PARTS`, unlisted pages last, sorted by name.
    """
    from .demo import apps, notebooks

    course = [f"notebooks/{p.stem}" for p in notebooks(root / "notebooks")]
    course += [f"notebooks/{p.stem}" for p in sorted((root / "notebooks").glob("*.md"))]
    parts = [Part("The course", tuple(course)),
             Part("The app", tuple(f"apps/{p.stem}" for p in apps(root / "apps")))]
    docs = {p.stem for p in (root / "docs").glob("*.md")} if (root / "docs").is_dir() else set()
    listed = {name for _, names in DOC_PARTS for name in names}
    for i, (caption, names) in enumerate(DOC_PARTS):
        pages = [n for n in names if n in docs]
        if i == len(DOC_PARTS) - 1:
            pages += sorted(docs - listed)
        parts.append(Part(caption, tuple(f"docs/{n}" for n in pages)))
    return [p for p in parts if p.pages]


def toc_yaml(parts: list[Part], home: str = HOME) -> dict[str, Any]:
    """The ``_toc.yml`` of Jupyter Book (format ``jb-book``) for these parts."""
    return {"format": "jb-book", "root": home,
            "parts": [{"caption": p.caption, "chapters": [{"file": f} for f in p.pages]} for p in parts]}


def book_config(title: str = "fedpurel-lite") -> dict[str, Any]:
    """The ``_config.yml``: stored outputs only, local MathJax, nothing loaded from the network."""
    mathjax2 = {
        "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]], "processEscapes": False},
        "HTML-CSS": {"availableFonts": [], "webFont": "STIX-Web", "imageFont": None, "preferredFont": None},
        "showMathMenu": False,
        "messageStyle": "none",
    }
    return {
        "title": title,
        "author": "the fedpurel-lite authors",
        "copyright": "",
        "only_build_toc_files": True,
        "exclude_patterns": ["_build", STATIC, "**.ipynb_checkpoints"],
        "execute": {"execute_notebooks": "off"},
        "parse": {"myst_enable_extensions": ["colon_fence", "dollarmath"]},
        "html": {"use_multitoc_numbering": False, "home_page_in_navbar": True, "use_repository_button": False,
                 "use_issues_button": False, "use_edit_page_button": False, "comments": {"hypothesis": False,
                                                                                         "utterances": False}},
        "launch_buttons": {"thebe": False, "binderhub_url": "", "jupyterhub_url": "", "colab_url": "",
                           "deepnote_url": ""},
        "repository": {"url": ""},
        "sphinx": {"extra_extensions": ["fedpurel_lite.cli.site"], "config": {
            "mathjax_path": f"mathjax/MathJax.js?config={MATHJAX_CONFIG}",
            "mathjax2_config": mathjax2,
            "mathjax3_config": None,
            "myst_update_mathjax": False,
            "myst_heading_anchors": 3,
            "nb_ipywidgets_js": {},  # the widgets are replaced by their figures: no widget manager from a CDN
            "html_static_path": [STATIC],
            "html_last_updated_fmt": None,
            "html_theme_options": {"search_bar_text": "Search the course...", "show_navbar_depth": 1,
                                   "home_page_in_toc": True, "use_download_button": True,
                                   "use_fullscreen_button": False, "launch_buttons": {}},
            "suppress_warnings": ["myst.domains", "mystnb.unknown_mime_type"],
        }},
    }


# ----------------------------------------------------------------------------- assembly
def check_folder(folder: Path, flag: str) -> None:
    """Raise :class:`UserError` unless ``folder`` is absent, empty or written by the site build (has :data:`MARKER`)."""
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / MARKER).exists())):
        raise UserError(f"{flag} {folder} exists and was not written by the site build; it is never overwritten: "
                        "choose another folder")


def _fresh(folder: Path, flag: str) -> None:
    """Empty ``folder`` (see :func:`check_folder`) and mark it as the site build's."""
    check_folder(folder, flag)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("written by python -m fedpurel_lite site; rewritten on every build\n")


def myst_anchors(text: str) -> str:
    """Turn HTML anchors on a line of their own (``<a id="x"></a>``) into MyST targets ``(x)=``.

    GitHub links to the HTML anchor; MyST resolves ``[...](#x)`` and ``[...](page.md#x)`` only to
    its own targets, so the site's copy of a page declares the same names as targets.
    """
    return _HTML_ANCHOR.sub(lambda m: f"({m.group(1)})=", text)


def heading_fragments(text: str) -> str:
    """Rewrite JupyterLab's heading anchors in links (``#The-student-edition``) as the site's ones.

    JupyterLab names a heading's anchor after its text with spaces as dashes; the site (like GitHub)
    lower-cases it and drops punctuation (``#the-student-edition``). Only links whose fragment has a
    capital letter change.
    """
    def fix(match: re.Match[str]) -> str:
        page, fragment = match.group(1), match.group(2)
        if not re.search(r"[A-Z]", fragment) or re.match(r"^[a-z][a-z0-9+.-]*:", page, re.I):
            return match.group(0)
        return f"]({page}#{_NOT_SLUG.sub('', fragment.lower())})"

    return _FRAGMENT_LINK.sub(fix, text)


def _site_notebook(path: Path, target: Path, dashboard: bool = False) -> None:
    """Write the static copy of a notebook; collapsed cells become MyST-NB's toggles.

    In a ``dashboard`` (an app, shown by Voilà without its code) every code cell is collapsed.
    """
    import nbformat

    from .demo import static_copy

    nb = static_copy(nbformat.read(path, as_version=4))
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = heading_fragments(cell.source)
        hidden = cell.get("metadata", {}).get("jupyter", {})
        tags = list(cell.get("metadata", {}).get("tags", []))
        collapse = hidden.get("source_hidden") or (dashboard and cell.cell_type == "code")
        if collapse and "hide-input" not in tags:
            tags.append("hide-input")
        if hidden.get("outputs_hidden") and "hide-output" not in tags:
            tags.append("hide-output")
        if tags:
            cell.metadata["tags"] = tags
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)


def _markdown_texts(path: Path) -> Iterable[str]:
    if path.suffix == ".md":
        yield path.read_text(encoding="utf-8")
    elif path.suffix == ".ipynb":
        import nbformat

        yield from (c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")


def linked_files(page: Path, root: Path = ROOT) -> list[Path]:
    """Repository files (not pages) that a Markdown page or notebook links to by a relative path."""
    found = []
    for text in _markdown_texts(page):
        for target in _LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if path.is_file() and path.is_relative_to(root.resolve()) and path.suffix not in (".md", ".ipynb"):
                found.append(path)
    return found


def _mathjax_root() -> Path:
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise ResourceMissingError("the site needs a local MathJax: pip install jupyter-server-mathjax "
                                   "(part of the dev extra: pip install -e '.[dev]')") from None
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def assemble(source: Path = SOURCE, root: Path = ROOT) -> list[Part]:
    """Write the build source folder for the site; returns its parts (the navigation).

    Parameters
    ----------
    source : Path
        The folder to (re)write; it must not exist, be empty, or be one this function wrote.
    root : Path
        The repository (README.md, docs/, notebooks/, apps/, figures/).
    """
    import yaml

    parts = table_of_contents(root)
    _fresh(source, "--source")
    pages = [root / "README.md"]
    shutil.copy2(root / "README.md", source / "README.md")
    for part in parts:
        for page in part.pages:
            found = next(p for p in (root / f"{page}.ipynb", root / f"{page}.md") if p.exists())
            pages.append(found)
            if found.suffix == ".ipynb":
                _site_notebook(found, source / found.relative_to(root), dashboard=page.startswith("apps/"))
            else:
                (source / found.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
                text = found.read_text(encoding="utf-8")
                (source / found.relative_to(root)).write_text(myst_anchors(text), encoding="utf-8")
    if (root / "figures").is_dir():
        shutil.copytree(root / "figures", source / "figures", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for extra in (d for d in ("docs",) if (root / d).is_dir()):  # images and other files beside the pages
        shutil.copytree(root / extra, source / extra, dirs_exist_ok=True,
                        ignore=lambda folder, names: [n for n in names if n.endswith(".md")])
    for written in pages:
        for path in linked_files(written, root):
            target = source / path.relative_to(root.resolve())
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    shutil.copytree(_mathjax_root(), source / MATHJAX_DIR,
                    ignore=shutil.ignore_patterns("localization", "SVG", "LICENSE"))
    shutil.copy2(_mathjax_root() / "LICENSE", source / MATHJAX_DIR / "LICENSE")
    (source / "_toc.yml").write_text(yaml.safe_dump(toc_yaml(parts), sort_keys=False), encoding="utf-8")
    (source / "_config.yml").write_text(yaml.safe_dump(book_config(), sort_keys=False), encoding="utf-8")
    return parts


# ----------------------------------------------------------------------------- Sphinx extension
def _ids_as_anchors(app: Any, doctree: Any) -> None:
    """Let ``[...](page.md#name)`` find a section by any of its ids (a target ``(name)=``), as a browser does.

    MyST resolves a fragment only against heading slugs and warns otherwise, although the page
    has the id and the link works; the section's other ids are added beside its slug.
    """
    from docutils import nodes

    slugs = app.env.metadata[app.env.docname].setdefault("myst_slugs", {})
    for section in doctree.findall(nodes.section):
        title = section.next_node(nodes.title)
        for node_id in section["ids"]:
            slugs.setdefault(node_id, (section.line, node_id, title.astext() if title else node_id))


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point (the site's build loads this module as an extension)."""
    app.connect("doctree-read", _ids_as_anchors)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ----------------------------------------------------------------------------- build
def build(source: Path = SOURCE, out: Path = OUT, quiet: bool = True) -> Path:
    """Build an assembled source folder into ``out`` (HTML) and return ``out / "index.html"``.

    Nothing is executed and nothing is fetched. Sphinx's warnings go to stderr; a failed build
    raises :class:`RuntimeError`.
    """
    from jupyter_book.sphinx import build_sphinx

    _fresh(out, "--out")
    overrides = {"external_toc_path": (source / "_toc.yml").as_posix(), "latex_individualpages": False}
    with warnings.catch_warnings():  # the extensions' own deprecation notices are not the reader's concern
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        status = build_sphinx(source, out, noconfig=True, path_config=str(source / "_config.yml"),
                              confoverrides=overrides, doctreedir=source / "_build", freshenv=True, quiet=quiet,
                              jobs=1)
    if status != 0:
        raise RuntimeError(f"the site build failed ({status}); see the messages above")
    index = out / "index.html"
    if not index.exists():  # the home page is README.html; index.html sends the browser there
        index.write_text(f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
                         f'<meta http-equiv="Refresh" content="0; url={HOME}.html">'
                         f'<title>fedpurel-lite</title></head>\n<body><a href="{HOME}.html">fedpurel-lite</a>'
                         f'</body></html>\n', encoding="utf-8")
    return index


def preflight(out: Path = OUT, source: Path = SOURCE) -> None:
    """Check, before any work, that the site can be written there and that MathJax is installed."""
    check_folder(source, "--source")
    check_folder(out, "--out")
    _mathjax_root()


def build_site(out: Path = OUT, source: Path = SOURCE, root: Path = ROOT, quiet: bool = True) -> Path:
    """Assemble and build the site; returns its ``index.html``."""
    assemble(source, root)
    return build(source, out, quiet=quiet)


def main(argv: list[str] | None = None) -> int:
    """``python -m fedpurel_lite site``: build the course site from the stored notebooks and docs/."""
    parser = argparse.ArgumentParser(prog="python -m fedpurel_lite site", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help=f"the built site (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--source", type=Path, default=SOURCE,
                        help=f"the assembled build source (default {SOURCE.relative_to(ROOT)}), rewritten")
    parser.add_argument("--verbose", action="store_true", help="show Sphinx's progress, not only its warnings")
    args = parser.parse_args(argv)
    out, source = args.out.resolve(), args.source.resolve()
    if out.is_relative_to(source) or source.is_relative_to(out):
        raise UserError(f"--out {args.out} and --source {args.source} must not lie inside one another")
    preflight(args.out, args.source)
    start = time.perf_counter()
    index = build_site(args.out, args.source, quiet=not args.verbose)
    print(f"site: {index} ({len(list(args.out.rglob('*.html')))} pages) in {time.perf_counter() - start:.1f} s")
    return 0
