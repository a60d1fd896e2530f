"""The course site's assembly: table of contents from what exists, static copies, links, safe folders.

The build itself (Sphinx) runs in tests/browser/test_site_in_browser.py, which opens every built page.
"""

from __future__ import annotations

import io
import re
from contextlib import redirect_stderr
from pathlib import Path

import nbformat
import pytest
import yaml

from fedpurel_lite import __main__ as cli
from fedpurel_lite.cli import demo, site
from fedpurel_lite.errors import UserError

VIEW = demo.WIDGET_VIEW


def _notebook(path: Path, title: str, *, solution: bool = False, explorer: bool = False) -> None:
    cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nSee the [glossary](glossary.md#if) and "
                                           "[the preset](../configs/embedded.toml).")]
    code = nbformat.v4.new_code_cell("print(1)")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    cells.append(code)
    if solution:
        sol = nbformat.v4.new_code_cell("# Solution\nx = 1")
        sol.metadata["jupyter"] = {"source_hidden": True}
        cells.append(sol)
    nb = nbformat.v4.new_notebook(cells=cells)
    if explorer:
        box, slider, out = "a" * 32, "b" * 32, "c" * 32
        png = {"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}}
        nb.metadata["widgets"] = {demo.WIDGET_STATE: {"version_major": 2, "version_minor": 0, "state": {
            box: {"model_name": "VBoxModel", "state": {"children": [f"IPY_MODEL_{slider}", f"IPY_MODEL_{out}"]}},
            slider: {"model_name": "IntSliderModel", "state": {"value": 3}},
            out: {"model_name": "OutputModel", "state": {"outputs": [png]}}}}}
        view = nbformat.v4.new_code_cell("display(explorer)")
        view.outputs = [nbformat.v4.new_output("display_data", data={VIEW: {"model_id": box, "version_major": 2,
                                                                            "version_minor": 0}})]
        nb.cells.append(view)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _repo(root: Path, *, start_page: bool = True, glossary: bool = True) -> Path:
    """A small repository with the site's inputs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("# toolkit\n\n[results](docs/results.md) ![fig](figures/a.png)\n")
    (root / "docs").mkdir()
    (root / "docs" / "results.md").write_text("# Results\n\nBack to the [README](../README.md).\n")
    (root / "docs" / "layout.md").write_text("# Layout\n")
    (root / "docs" / "zz_new_page.md").write_text("# A page added later\n")
    (root / "figures").mkdir()
    (root / "figures" / "a.png").write_bytes(b"\x89PNG fake")
    (root / "configs").mkdir()
    (root / "configs" / "embedded.toml").write_text("[world]\n")
    (root / "configs" / "unlinked.toml").write_text("[world]\n")
    _notebook(root / "notebooks" / "01_first.ipynb", "First", solution=True, explorer=True)
    _notebook(root / "notebooks" / "02_second.ipynb", "Second")
    if start_page:
        _notebook(root / "notebooks" / "00_start_here.ipynb", "Start here")
    if glossary:
        (root / "notebooks" / "glossary.md").write_text('# Glossary\n\n<a id="if"></a>\n### Imbalance ratio\n')
    _notebook(root / "apps" / "app.ipynb", "The app")
    return root


def test_table_of_contents_follows_what_exists(tmp_path):
    parts = site.table_of_contents(_repo(tmp_path))
    assert [(p.caption, p.pages) for p in parts] == [
        ("The course", ("notebooks/00_start_here", "notebooks/01_first", "notebooks/02_second", "notebooks/glossary")),
        ("The app", ("apps/app",)),
        ("Results", ("docs/results",)),
        ("Using the toolkit", ("docs/layout", "docs/zz_new_page")),  # an unlisted page comes last, not lost
    ]


def test_before_the_start_page_and_glossary_land_the_course_is_the_series(tmp_path):
    parts = site.table_of_contents(_repo(tmp_path, start_page=False, glossary=False))
    assert parts[0].pages == ("notebooks/01_first", "notebooks/02_second")


def test_assembly_writes_a_book_whose_pages_all_exist(tmp_path):
    from sphinx_external_toc.parsing import parse_toc_yaml

    repo, source = _repo(tmp_path / "repo"), tmp_path / "src"
    parts = site.assemble(source, repo)
    toc = parse_toc_yaml(source / "_toc.yml")
    assert toc.root.docname == "README"
    assert sorted(toc) == sorted(["README", *(p for part in parts for p in part.pages)])
    for page in toc:
        assert (source / f"{page}.md").exists() or (source / f"{page}.ipynb").exists(), page
    assert (source / "figures" / "a.png").read_bytes() == b"\x89PNG fake"
    assert (source / "configs" / "embedded.toml").exists(), "a linked repository file is copied (a download)"
    assert not (source / "configs" / "unlinked.toml").exists(), "nothing else of the repository is copied"
    assert (source / site.MATHJAX_DIR / "MathJax.js").exists(), "MathJax is local"


def test_the_book_config_builds_offline_from_stored_outputs(tmp_path):
    source = tmp_path / "src"
    site.assemble(source, _repo(tmp_path / "repo"))
    config = yaml.safe_load((source / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off", "the site never runs a notebook"
    sphinx = config["sphinx"]["config"]
    assert sphinx["mathjax_path"].startswith("mathjax/MathJax.js?config=")
    assert (source / site.STATIC / sphinx["mathjax_path"].split("?")[0]).exists()
    assert sphinx["nb_ipywidgets_js"] == {}, "no widget manager from a CDN"
    assert "http" not in yaml.safe_dump(sphinx), "nothing in the Sphinx config points to the network"


def test_static_copies_show_figures_and_collapse_solutions(tmp_path):
    repo, source = _repo(tmp_path / "repo"), tmp_path / "src"
    site.assemble(source, repo)
    nb = nbformat.read(source / "notebooks" / "01_first.ipynb", as_version=4)
    assert "widgets" not in nb.metadata
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert {"image/png": "iVBOR"} in [o.get("data") for o in shown], "the explorer's stored figure is shown"
    assert not any(VIEW in o.get("data", {}) for o in shown), "no widget placeholder"
    solution = next(c for c in nb.cells if c.source.startswith("# Solution"))
    assert "hide-input" in solution.metadata["tags"]
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "tags" not in first_code.metadata, "ordinary code stays open"
    app = nbformat.read(source / "apps" / "app.ipynb", as_version=4)
    assert all("hide-input" in c.metadata.get("tags", []) for c in app.cells if c.cell_type == "code")
    original = nbformat.read(repo / "notebooks" / "01_first.ipynb", as_version=4)
    assert "widgets" in original.metadata, "the repository's notebook is untouched"


def test_html_anchors_become_myst_targets_in_the_site_copy_only(tmp_path):
    repo, source = _repo(tmp_path / "repo"), tmp_path / "src"
    site.assemble(source, repo)
    assert "(if)=\n### Imbalance ratio" in (source / "notebooks" / "glossary.md").read_text()
    assert '<a id="if"></a>' in (repo / "notebooks" / "glossary.md").read_text()
    assert site.myst_anchors('x <a id="inline"></a> y') == 'x <a id="inline"></a> y', "only anchors on own lines"


def test_a_rebuild_replaces_its_own_folder_but_never_a_foreign_one(tmp_path):
    repo, source = _repo(tmp_path / "repo"), tmp_path / "src"
    site.assemble(source, repo)
    (source / "stale.md").write_text("left from an old build")
    site.assemble(source, repo)
    assert not (source / "stale.md").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="never overwritten"):
        site.assemble(foreign, repo)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1


def test_the_command_refuses_a_foreign_output_folder_with_one_error_line(tmp_path):
    foreign = tmp_path / "out"
    foreign.mkdir()
    (foreign / "index.html").write_text("someone's page")
    err = io.StringIO()
    with redirect_stderr(err):
        code = cli.main(["site", "--out", str(foreign), "--source", str(tmp_path / "src")])
    assert code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out") and "never overwritten" in lines[0]
    assert (foreign / "index.html").read_text() == "someone's page"
    assert not (tmp_path / "src").exists(), "nothing is written before the check"


def test_jupyterlab_heading_links_become_the_sites_anchors():
    text = ("[a](#The-student-edition) [b](02_x.ipynb#4-·-Explore:-IF-×-Dirichlet-α) [c](glossary.md#if) "
            "[d](https://example.org/#Top)")
    assert site.heading_fragments(text) == ("[a](#the-student-edition) [b](02_x.ipynb#4--explore-if--dirichlet-α) "
                                            "[c](glossary.md#if) [d](https://example.org/#Top)")


def test_a_notebooks_jupyterlab_anchor_is_rewritten_in_the_site_copy(tmp_path):
    repo, source = _repo(tmp_path / "repo"), tmp_path / "src"
    path = repo / "notebooks" / "02_second.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("## The student edition\n\nSee [above](#The-student-edition)."))
    nbformat.write(nb, path)
    site.assemble(source, repo)
    copied = nbformat.read(source / "notebooks" / "02_second.ipynb", as_version=4)
    assert "[above](#the-student-edition)" in copied.cells[-1].source


def test_the_readme_is_a_front_door_that_links_every_docs_page():
    readme = (site.ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250, "the README stays a front door; long sections go to docs/"
    for command in ("make demo", "make test"):
        assert f"\n{command} " in readme
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", readme))
    pages = {f"docs/{p.name}" for p in (site.ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"
    assert all((site.ROOT / page).is_file() for page in linked), "every docs link of the README resolves"
