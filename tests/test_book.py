"""The book is well formed: paired notebooks, honest outputs, a table of contents that resolves, and a build
with no warnings.

The notebook checks read the files as committed; the build check (marked slow) runs Jupyter Book 1.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
CHAPTERS = [nb for nb in NOTEBOOKS if re.match(r"0[1-5]_", nb.name)]
COLAB = "https://colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/"


def _ids(paths):
    return [p.name for p in paths]


def _tags(cell) -> set:
    return set(cell.get("metadata", {}).get("tags", []))


def _toc_files() -> list[str]:
    """Every file named in _toc.yml (the root first), without suffix, relative to the repository root."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return files


def _resolve(entry: str) -> Path | None:
    for suffix in ("", ".ipynb", ".md"):
        path = ROOT / (entry + suffix)
        if path.is_file():
            return path
    return None


def _first_difference(a, b) -> str | None:
    """A description of the first cell where two notebooks differ in type, tags or source; None when equal."""
    for i, (x, y) in enumerate(zip(a.cells, b.cells)):
        for what, u, v in (("type", x.cell_type, y.cell_type),
                           ("tags", sorted(_tags(x)), sorted(_tags(y))),
                           ("source", x.source.strip(), y.source.strip())):
            if u != v:
                first_line = (x.source.strip().splitlines() or [""])[0][:80]
                return f"cell {i} ({first_line!r}) differs in {what}"
    if len(a.cells) != len(b.cells):
        return f"the .ipynb has {len(a.cells)} cells and the .py has {len(b.cells)}"
    return None


def test_book_has_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {BOOK}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_and_py_twin_have_not_drifted(notebook):
    twin = notebook.with_suffix(".py")
    assert twin.is_file(), f"{notebook.name} has no py:percent twin {twin.name}: run `jupytext --sync book/{notebook.name}`"
    difference = _first_difference(jupytext.read(notebook), jupytext.read(twin))
    assert difference is None, (f"{notebook.name} and {twin.name} have drifted apart: {difference}; "
                                f"run `jupytext --sync` on the one you edited last")


def test_every_paired_script_has_a_notebook():
    scripts = [p for p in BOOK.glob("*.py") if "jupytext:" in p.read_text()[:500]]
    orphans = [p.name for p in scripts if not p.with_suffix(".ipynb").is_file()]
    assert not orphans, f"py:percent scripts without a notebook (run `jupytext --sync`): {orphans}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_only_cells_tagged_raises_exception_have_errors(notebook):
    nb = nbformat.read(notebook, as_version=4)
    untagged = [i for i, cell in enumerate(nb.cells)
                if cell.cell_type == "code" and "raises-exception" not in _tags(cell)
                and any(out.get("output_type") == "error" for out in cell.get("outputs", []))]
    assert not untagged, f"{notebook.name}: cells {untagged} have an error output but no `raises-exception` tag"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_executed_top_to_bottom(notebook):
    """The book renders stored outputs, so every code cell must have run, in order, in one kernel."""
    nb = nbformat.read(notebook, as_version=4)
    counts = [cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{notebook.name}: execution counts {counts} are not 1..{len(counts)}; execute the notebook top to bottom "
        f"(cd book && jupyter execute --inplace {notebook.name})")


# An absolute path of the machine that executed a chapter (a checkout, a data folder, a home directory, a
# site-packages warning) differs on every other machine, so strict nbval fails there; print names, not paths.
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|check|tmp|home|root|content|Users|mnt|data|opt|usr|var)/")


def _output_texts(cell):
    for out in cell.get("outputs", []):
        texts = [out.get("text", ""), "\n".join(out.get("traceback", []))]
        texts += [v for k, v in out.get("data", {}).items() if k.startswith("text/") and k != "text/html"]
        for text in texts:
            yield "".join(text) if isinstance(text, list) else text


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_stored_outputs_name_no_machine_specific_path(notebook):
    nb = nbformat.read(notebook, as_version=4)
    found = [(i, m.group(0), text[max(0, m.start() - 30):m.end() + 30].strip())
             for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             for text in _output_texts(cell) for m in MACHINE_PATH.finditer(text)]
    assert not found, (f"{notebook.name}: stored outputs name absolute paths of the machine that ran them, which "
                       f"differ elsewhere and fail nbval: {found[:3]}")


def test_every_toc_entry_exists():
    missing = [entry for entry in _toc_files() if _resolve(entry) is None]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"


def test_every_notebook_is_in_the_toc():
    listed = {_resolve(entry) for entry in _toc_files()}
    unlisted = [nb.name for nb in NOTEBOOKS if nb not in listed]
    assert not unlisted, f"notebooks missing from _toc.yml (the book only builds toc files): {unlisted}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_has_no_papermill_parameters(chapter):
    nb = nbformat.read(chapter, as_version=4)
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in _tags(cell)]
    assert not tagged, f"{chapter.name}: cells {tagged} are tagged `parameters`; chapters 01-05 take no parameters"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_opens_with_a_colab_badge_to_itself(chapter):
    nb = nbformat.read(chapter, as_version=4)
    head = "\n".join(cell.source for cell in nb.cells[:2] if cell.cell_type == "markdown")
    assert COLAB + chapter.name in head, f"{chapter.name}: the first cells should link to {COLAB + chapter.name}"


@pytest.mark.slow
def test_book_builds_without_warnings(tmp_path):
    """`jupyter-book build . -W` succeeds and writes an HTML page for every toc entry."""
    executable = shutil.which("jupyter-book") or str(Path(sys.executable).with_name("jupyter-book"))
    result = subprocess.run(
        [executable, "build", str(ROOT), "-W", "--keep-going", "--builder", "html", "--path-output", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, f"book build failed or warned:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    html = tmp_path / "_build" / "html"
    missing = [entry for entry in _toc_files() if not (html / f"{entry}.html").is_file()]
    assert not missing, f"no HTML page was built for {missing} (looked in {html})"
