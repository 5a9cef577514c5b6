"""The chapters fit the book's page: code lines that the page does not cut, and figures that it does not
shrink below readable text.

The rendered book's content column is about 830 px wide, and a code block shows about 100 characters of
a line before it cuts the rest off. The chapters draw at 100 dpi (`dino_tutorial.notebook.setup`), so a
figure of W inches is stored W * 100 px wide and shown at 830 / (W * 100) of its size when it is wider than
the column. At most 9 inches of figure (with the slack of the tight bounding box, 1000 px) is shown at 0.83
or more, which keeps 9 pt text (12.5 px at 100 dpi) at 10 px or more on the page; the 12-14 inch figures
that this replaces were shown at 0.6-0.7, their 7-9 pt labels at 6-8 px.
"""
from __future__ import annotations

import base64
import importlib.util
import re
import struct
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
SCRIPTS = sorted(BOOK.glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
MAX_CODE_COLUMNS = 100
MAX_FIGURE_INCHES = 9
MAX_FIGURE_PX = 1000
MIN_FONT_POINTS = 9
URL = re.compile(r"https?://")


def _ids(paths):
    return [p.name for p in paths]


def _code_lines(path: Path):
    """(cell index, line) of every line of every code cell of a py:percent chapter."""
    for i, cell in enumerate(jupytext.read(path).cells):
        if cell.cell_type == "code":
            for line in cell.source.splitlines():
                yield i, line


def png_width(data: str) -> int:
    """Pixel width of a base64 PNG, read from its IHDR header."""
    head = base64.b64decode(data[:64])
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">I", head[16:20])[0]


@pytest.mark.parametrize("script", SCRIPTS, ids=_ids(SCRIPTS))
def test_code_lines_fit_the_book_column(script):
    long = [(i, len(line), line.strip()[:60]) for i, line in _code_lines(script)
            if len(line) > MAX_CODE_COLUMNS and not URL.search(line)]
    assert not long, (f"{script.name}: {len(long)} code lines are longer than {MAX_CODE_COLUMNS} characters "
                      f"(cell, length, start): {long[:5]}")


@pytest.mark.parametrize("script", SCRIPTS, ids=_ids(SCRIPTS))
def test_figures_are_drawn_for_the_book_column(script):
    """Literal figure widths of at most 9 inches and font sizes of at least 9 pt in the chapters' code."""
    wide, small = [], []
    for i, line in _code_lines(script):
        for m in re.finditer(r"figsize=\(\s*([0-9.]+)\s*,", line):
            if float(m.group(1)) > MAX_FIGURE_INCHES:
                wide.append((i, line.strip()[:70]))
        for m in re.finditer(r"fontsize=([0-9.]+)\b", line):
            if float(m.group(1)) < MIN_FONT_POINTS:
                small.append((i, line.strip()[:70]))
    assert not wide, f"{script.name}: figures wider than {MAX_FIGURE_INCHES} inches: {wide}"
    assert not small, f"{script.name}: text smaller than {MIN_FONT_POINTS} pt: {small}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_stored_figures_fit_the_book_column(notebook):
    """Every PNG the notebook stores, as the book renders it, is at most MAX_FIGURE_PX wide."""
    nb = nbformat.read(notebook, as_version=4)
    wide = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {}).get("image/png")
            if data:
                width = png_width(data if isinstance(data, str) else "".join(data))
                if width > MAX_FIGURE_PX:
                    wide.append((i, width))
    assert not wide, (f"{notebook.name}: stored figures wider than {MAX_FIGURE_PX} px (cell, px): {wide}; "
                      f"draw them at most {MAX_FIGURE_INCHES} inches wide and execute the chapter again")


def _reading_time():
    spec = importlib.util.spec_from_file_location("reading_time", ROOT / "tools" / "reading_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


READING_TIME = _reading_time()
TIMED = [s for s in SCRIPTS if READING_TIME.stated(s) is not None]


@pytest.mark.parametrize("script", TIMED, ids=_ids(TIMED))
def test_stated_time_follows_the_content(script):
    """A chapter's "Estimated time" is the introduction's rule applied to its content (tools/reading_time.py:
    prose at 110 words a minute, code at 15 lines a minute, 12 minutes per exercise), within 15% or 10
    minutes, so that an edit that lengthens a chapter has to restate its time."""
    counted, stated = READING_TIME.estimate(script), READING_TIME.stated(script)
    slack = max(10, 0.15 * counted["minutes"])
    assert abs(stated - counted["minutes"]) <= slack, (
        f"{script.name} states {stated} minutes; its {counted['words']} words, {counted['code']} lines of code "
        f"and {counted['exercises']} exercises make {counted['minutes']}: restate it")


def test_estimate_counts_what_a_learner_reads(tmp_path):
    """Prose, visible code and exercises count; solution cells (the exercise replaces them) do not."""
    chapter = tmp_path / "99_x.py"
    words = " ".join(["word"] * 220)
    chapter.write_text(f"# %% [markdown]\n# **Estimated time:** 5 minutes.\n# {words}\n\n"
                       "# %%\n" + "x = 1\n" * 30 + "\n"
                       '# %% tags=["exercise"]\ndef f():\n    pass\n\n'
                       '# %% tags=["solution", "hide-cell"]\n' + "y = 2\n" * 300)
    counted = READING_TIME.estimate(chapter)
    assert (counted["words"], counted["code"], counted["exercises"]) == (224, 32, 1)
    assert counted["minutes"] == 15            # 224/110 + 32/15 + 12 = 16.2, to the nearest 5
    assert READING_TIME.stated(chapter) == 5
