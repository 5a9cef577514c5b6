"""The time a chapter takes a learner, counted from its content, beside the time the chapter states.

Prose at 110 words a minute, code at 15 lines a minute (cells a learner reads: solutions, which the exercise
replaces, and removed cells are not counted) and 12 minutes per coding exercise, rounded to 5 minutes. The
book's introduction states the same rule; tests/test_book_layout.py holds every chapter's stated time to it.

    python tools/reading_time.py          # one line per chapter, and the total
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parents[1] / "book"
WORDS_PER_MINUTE, CODE_LINES_PER_MINUTE, MINUTES_PER_EXERCISE = 110, 15, 12
STATED = re.compile(r"\*\*Estimated time:\*\* (\d+) minutes")


def cells(script: str):
    """(kind, tags, lines) of every cell of a py:percent script, its header skipped."""
    kind, tags, lines = None, "", []
    for line in script.splitlines():
        if line.startswith("# %%"):
            if kind is not None:
                yield kind, tags, lines
            kind = "markdown" if "[markdown]" in line else "code"
            tags, lines = line, []
        elif kind is not None:
            lines.append(line)
    if kind is not None:
        yield kind, tags, lines


def estimate(path: Path) -> dict:
    """Words of prose, lines of code, exercises and the minutes they make."""
    words = code = exercises = 0
    for kind, tags, lines in cells(path.read_text()):
        if kind == "markdown":
            words += sum(len(line.lstrip("#").split()) for line in lines)
        elif "solution" in tags or "remove-cell" in tags:
            continue
        else:
            code += sum(1 for line in lines if line.strip())
            exercises += '"exercise"' in tags
    minutes = words / WORDS_PER_MINUTE + code / CODE_LINES_PER_MINUTE + exercises * MINUTES_PER_EXERCISE
    return {"words": words, "code": code, "exercises": exercises, "minutes": 5 * max(1, round(minutes / 5))}


def stated(path: Path) -> int | None:
    """The minutes the chapter's "Estimated time" line states, or None without one."""
    found = STATED.search(path.read_text())
    return int(found.group(1)) if found else None


def main() -> int:
    total = 0
    for path in sorted(BOOK.glob("[0-9][0-9]_*.py")):
        e = estimate(path)
        total += e["minutes"]
        print(f"{path.name:32s} {e['words']:5d} words {e['code']:4d} code lines {e['exercises']} exercises: "
              f"{e['minutes']:3d} min (stated {stated(path)})")
    print(f"in all: {total} minutes ({total / 60:.1f} hours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
