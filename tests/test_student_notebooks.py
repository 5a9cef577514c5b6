"""Exercises a learner can run: in the book and in the student notebooks, "Run all" meets no unfinished
exercise at top level, the student notebooks hold no solutions, and they are what the generator writes.

What the static checks guarantee: an exercise cell (tagged `exercise`) defines functions or classes whose
bodies may raise `NotImplementedError` while their blanks are unfilled, and nothing calls them on "Run all"
except through `check_exercise(...)`, which reports an unfinished exercise in one line, or inside a `try`
that catches `NotImplementedError` (the fall-backs to the package's version). Running the notebooks is left
to nbval (book/) and to a learner (student/): it takes minutes per chapter.
"""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK, STUDENT = ROOT / "book", ROOT / "student"
EXERCISE_CHAPTERS = sorted(p for p in BOOK.glob("0*.ipynb") if re.match(r"0[1-7]_", p.name))
STUDENT_NOTEBOOKS = sorted(STUDENT.glob("*.ipynb"))


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_student_notebooks",
                                                  ROOT / "tools" / "make_student_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _load_generator()
CHAPTERS = GENERATOR.chapters()


def _ids(paths):
    return [p.name for p in paths]


def _tags(cell) -> set:
    return set(cell.get("metadata", {}).get("tags", []))


def _parse(cell) -> ast.Module:
    """A code cell's AST; IPython magics and shell escapes are left out."""
    lines = [line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return ast.parse("\n".join(lines))


def _defined(tree: ast.Module) -> set:
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _exercise_names(nb) -> set:
    names = set()
    for cell in nb.cells:
        if cell.cell_type == "code" and "exercise" in _tags(cell):
            names |= _defined(_parse(cell))
    return names


def _top_level_calls(tree: ast.Module):
    """Calls made when the cell runs, not inside the bodies of the functions and classes it defines."""
    def walk(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            for default in getattr(getattr(node, "args", None), "defaults", []):
                yield from walk(default)
            for decorator in getattr(node, "decorator_list", []):
                yield from walk(decorator)
            return
        if isinstance(node, ast.Call):
            yield node
        for child in ast.iter_child_nodes(node):
            yield from walk(child)
    for statement in tree.body:
        yield from walk(statement)


def _catches_not_implemented(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return handler.type is None or any(isinstance(k, ast.Name) and k.id == "NotImplementedError" for k in kinds)


def _unguarded_uses(tree: ast.Module, names: set) -> list[str]:
    """Names of exercises that `tree` uses other than as an argument of check_exercise or inside a try
    that catches NotImplementedError."""
    found = []

    def visit(node, guarded):
        if isinstance(node, ast.Try):
            safe = any(_catches_not_implemented(h) for h in node.handlers)
            for child in node.body:
                visit(child, guarded or safe)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, guarded)
            return
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "check_exercise"):
            for child in node.args[:2]:  # the number and the check; the answer that follows is guarded
                visit(child, guarded)
            return
        if isinstance(node, ast.Name) and node.id in names and not guarded:
            found.append(f"{node.id} (line {node.lineno})")
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


@pytest.mark.parametrize("chapter", EXERCISE_CHAPTERS, ids=_ids(EXERCISE_CHAPTERS))
def test_chapter_has_exercises_with_blanks_a_solution_and_a_check(chapter):
    nb = nbformat.read(chapter, as_version=4)
    positions = [i for i, cell in enumerate(nb.cells) if "exercise" in _tags(cell)]
    assert positions, f"{chapter.name}: no cell tagged `exercise`"
    for number, i in enumerate(positions, start=1):
        cell, solution, check = nb.cells[i], nb.cells[i + 1], nb.cells[i + 2]
        first = cell.source.splitlines()[0]
        # blanks to fill in, or a blank cell: a function whose body is left for the learner to write
        assert "..." in cell.source or "A blank cell" in cell.source, (
            f"{chapter.name}: exercise {first!r} has neither `...` blanks nor says it is a blank cell")
        assert "solution" in _tags(solution), f"{chapter.name}: exercise {first!r} is not followed by a solution"
        assert "raises-exception" not in _tags(cell) | _tags(check), (
            f"{chapter.name}: exercise {number} is tagged raises-exception; it should not raise")
        assert f"check_exercise({number}," in check.source, (
            f"{chapter.name}: the cell after the solution of exercise {number} should run "
            f"check_exercise({number}, ...)")


@pytest.mark.parametrize("chapter", EXERCISE_CHAPTERS, ids=_ids(EXERCISE_CHAPTERS))
def test_no_exercise_cell_raises_or_calls_its_own_function_when_run(chapter):
    nb = nbformat.read(chapter, as_version=4)
    for cell in nb.cells:
        if "exercise" not in _tags(cell):
            continue
        tree = _parse(cell)
        raises = [node.lineno for node in tree.body if isinstance(node, ast.Raise)]
        assert not raises, f"{chapter.name}: exercise {cell.source.splitlines()[0]!r} raises at top level"
        names = _defined(tree)
        calls = [node.func.id for node in _top_level_calls(tree)
                 if isinstance(node.func, ast.Name) and node.func.id in names]
        assert not calls, (f"{chapter.name}: the exercise cell calls {calls} when it runs; leave the call "
                           f"commented out for the learner to try")


@pytest.mark.parametrize("notebook", STUDENT_NOTEBOOKS, ids=_ids(STUDENT_NOTEBOOKS))
def test_student_notebook_runs_no_unfinished_exercise_at_top_level(notebook):
    """With the solutions removed, the learner's unfinished functions are only called through a check
    that reports them in one line, or inside a try that falls back to the package."""
    nb = nbformat.read(notebook, as_version=4)
    names = _exercise_names(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "exercise" in _tags(cell):
            continue
        uses = _unguarded_uses(_parse(cell), names)
        assert not uses, (f"{notebook.name}, cell {i}: uses the exercise's {uses} outside check_exercise "
                          f"and outside a try that catches NotImplementedError; with the exercise not done "
                          f"yet, 'Run all' would stop there")


def test_every_chapter_has_a_student_notebook_and_none_is_stale():
    stale = GENERATOR.stale()
    assert not stale, (f"student notebooks out of date with book/: {stale}; "
                       f"run `python tools/make_student_notebooks.py`")


@pytest.mark.parametrize("notebook", STUDENT_NOTEBOOKS, ids=_ids(STUDENT_NOTEBOOKS))
def test_student_notebook_has_no_solution_and_no_output(notebook):
    nb = nbformat.read(notebook, as_version=4)
    solutions = [i for i, cell in enumerate(nb.cells) if "solution" in _tags(cell)
                 or cell.source.lstrip().startswith("# Solution to exercise")]
    assert not solutions, f"{notebook.name}: cells {solutions} hold a solution"
    with_outputs = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and cell.outputs]
    assert not with_outputs, f"{notebook.name}: cells {with_outputs} have stored outputs"


@pytest.mark.parametrize("notebook", STUDENT_NOTEBOOKS, ids=_ids(STUDENT_NOTEBOOKS))
def test_student_notebook_colab_badge_opens_itself(notebook):
    text = notebook.read_text(encoding="utf-8")
    if "colab-badge" not in text:
        pytest.skip(f"{notebook.name} has no Colab badge")
    assert f"blob/main/student/{notebook.name}" in text
    assert f"colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/{notebook.name}" \
        not in text, f"{notebook.name}: the Colab badge opens the instructor notebook"


def test_generator_is_deterministic(tmp_path):
    chapter = CHAPTERS[1]
    assert GENERATOR.student_notebook(chapter) == GENERATOR.student_notebook(chapter)


def test_generator_check_names_a_stale_notebook(tmp_path):
    student = tmp_path / "student"
    student.mkdir()
    for path in CHAPTERS:
        (student / path.name).write_text(GENERATOR.student_notebook(path), encoding="utf-8")
    assert GENERATOR.stale(student=student) == []
    edited = student / CHAPTERS[1].name
    edited.write_text(edited.read_text(encoding="utf-8").replace("Exercise", "Exercice", 1), encoding="utf-8")
    (student / "99_gone.ipynb").write_text("{}", encoding="utf-8")
    assert GENERATOR.stale(student=student) == sorted([CHAPTERS[1].name, "99_gone.ipynb"])
