"""Write the student notebooks: every book/NN_*.ipynb as student/NN_*.ipynb without its solutions.

In the book (the instructor notebooks), each coding exercise is followed by its solution, a cell tagged
`solution` that the rendered page shows behind a toggle. A learner who opens a chapter in Colab or JupyterLab
sees no toggle, so the student notebook replaces every solution cell with a one-line pointer to the
instructor notebook, clears all outputs (the learner runs the cells), and points the Colab badge at itself.

    python tools/make_student_notebooks.py           # (re)write student/
    python tools/make_student_notebooks.py --check   # exit 1, naming the stale files, if student/ is out of date

The output depends only on the book's notebooks: the same input gives byte-identical files.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BOOK, STUDENT = ROOT / "book", ROOT / "student"
GITHUB = "https://github.com/dino-tutorial/dino-tutorial/blob/main/"
CHAPTER = re.compile(r"\d\d_.*\.ipynb")
# Notebook metadata that only the book needs: the jupytext pairing with book/*.py and papermill's record.
BOOK_ONLY_METADATA = ("jupytext", "papermill")


def chapters(book: Path = BOOK) -> list[Path]:
    """The book's chapter notebooks, in order."""
    return sorted(p for p in book.glob("*.ipynb") if CHAPTER.fullmatch(p.name))


def _tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


def solution_pointer(chapter: str, cell_id: str | None):
    """The markdown cell that stands where a solution was."""
    link = f"{GITHUB}book/{chapter}"
    cell = nbformat.v4.new_markdown_cell(
        f"*The solution is in the instructor notebook: [book/{chapter}]({link}) (the cell after this "
        f"exercise).*")
    if cell_id is not None:
        cell.id = cell_id  # the solution's id: unique in the notebook, and the same from run to run
    return cell


def student_notebook(path: Path) -> str:
    """The text of the student notebook of the book's chapter at `path`."""
    nb = nbformat.read(path, as_version=4)
    out = copy.deepcopy(nb)
    for key in BOOK_ONLY_METADATA:
        out.metadata.pop(key, None)
    cells = []
    for cell in nb.cells:
        if "solution" in _tags(cell):
            cells.append(solution_pointer(path.name, cell.get("id")))
            continue
        cell = copy.deepcopy(cell)
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            # The Colab badge (and any link to the notebook itself) opens the student version.
            cell.source = cell.source.replace(f"blob/main/book/{path.name}", f"blob/main/student/{path.name}")
        cells.append(cell)
    out.cells = cells
    text = nbformat.writes(out)
    return text if text.endswith("\n") else text + "\n"


def stale(book: Path = BOOK, student: Path = STUDENT) -> list[str]:
    """Names of the student notebooks that are missing, out of date, or have no chapter any more."""
    expected = {p.name: student_notebook(p) for p in chapters(book)}
    found = {p.name for p in student.glob("*.ipynb")} if student.is_dir() else set()
    names = [name for name, text in expected.items()
             if not (student / name).is_file() or (student / name).read_text(encoding="utf-8") != text]
    return sorted(names + [name for name in found if name not in expected])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and name the stale files when student/ is out of date")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        if names:
            print(f"student notebooks out of date: {', '.join(names)}; "
                  f"run `python tools/make_student_notebooks.py`")
            return 1
        print(f"student notebooks up to date ({len(chapters())} chapters)")
        return 0
    STUDENT.mkdir(exist_ok=True)
    expected = {p.name: student_notebook(p) for p in chapters()}
    for name, text in expected.items():
        target = STUDENT / name
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            print(f"wrote student/{name}")
    for extra in sorted(STUDENT.glob("*.ipynb")):
        if extra.name not in expected:
            extra.unlink()
            print(f"removed student/{extra.name} (no such chapter)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
