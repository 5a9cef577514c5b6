"""What every chapter of the course does before its first section: figure style, seeds, device, glued numbers.

The chapters are notebooks that must also run on their own in Colab, so each keeps its own install cell and
its own imports; the rest of the setup is here, once:

    from dino_tutorial.notebook import glue, setup
    DEVICE = setup(seed=0)

``course_file("results/imagenette_log.jsonl")`` finds a committed result or backbone of the course beside the
chapter, or, in a chapter opened alone (Colab), downloads it from the course's repository.

``check_exercise(n, check, answer)`` runs an exercise's check and, while the answer still has blanks, says so in
one line instead of raising.

``glue`` records a value under a name so that the rendered book can quote it in the text (MyST-NB's
``{glue:text}`` role), and writes it out after the cell so that Colab and JupyterLab, which show the role as it
is, show the number too.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .train import default_device, set_seed


_QUOTED: list = []          # (name, value) glued with display=False by the cell that is running


def glue(name: str, value, display: bool = True) -> None:
    """Record ``value`` under ``name`` for the book's text (MyST-NB's ``{glue:text}`` role, when installed).

    The book replaces the role by the value, but Colab and JupyterLab show the role itself; so a value glued
    without display is also written out, in one line per cell after the cell's other outputs ("Quoted in the
    text: name = value; ..."), which every notebook front end shows.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        myst_glue = None
    if myst_glue is not None:
        myst_glue(name, value, display=display)
    if not display:
        _QUOTED.append((name, value))
        if not _show_quoted_after_the_cell():
            show_quoted()                                   # no IPython: at once


def show_quoted() -> None:
    """Write the values glued since the last call in one line, then forget them."""
    if not _QUOTED:
        return
    line = "Quoted in the text: " + "; ".join(f"{name} = {value}" for name, value in _QUOTED)
    _QUOTED.clear()
    try:
        from IPython.display import display
    except ImportError:
        print(line)
        return
    markdown = line.replace("Quoted in the text:", "*Quoted in the text:*", 1)
    display({"text/markdown": markdown, "text/plain": line}, raw=True)


def _show_quoted_after_the_cell() -> bool:
    """Have IPython call ``show_quoted`` once the running cell has finished; False outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    if not getattr(shell, "_dino_quotes", False):
        shell.events.register("post_run_cell", lambda result: show_quoted())
        shell._dino_quotes = True
    return True


def check_exercise(number: int, check, *answer) -> None:
    """Run exercise ``number``'s ``check`` on the learner's ``answer``; while it still has blanks (it raises
    NotImplementedError, or a ``...`` / a missing return makes it fail on Ellipsis or None), say so in one line
    instead of raising, so that "Run all" goes on. A wrong answer still raises the check's own error."""
    try:
        check(*answer)
    except NotImplementedError as blank:
        print(f"Exercise {number} is not done yet: {blank}. Fill them in, delete the `raise` line, "
              f"then run the exercise cell and this one again.")
    except (TypeError, AttributeError) as error:
        if "ellipsis" not in str(error) and "NoneType" not in str(error):
            raise
        print(f"Exercise {number} is not done yet: a blank (...) is left or nothing is returned "
              f"({error}).")


def setup(seed: int = 0, font_size: float = 10, label_size: float = 10,
          one_thread_on_small_cpu: bool = False) -> torch.device:
    """Set the figure style and every seed; return the device the chapter computes on (CUDA when present).

    ``one_thread_on_small_cpu``: on a CPU with two cores or fewer, use one thread; the chapters' small images
    make two threads wait for each other more than they help.
    """
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "axes.titlesize": font_size, "axes.labelsize": label_size,
                         "font.size": font_size})
    set_seed(seed)
    device = default_device()
    if one_thread_on_small_cpu and device.type == "cpu" and (os.cpu_count() or 1) <= 2:
        torch.set_num_threads(1)
    return device


REPOSITORY_FILES = "https://raw.githubusercontent.com/dino-tutorial/dino-tutorial/main/book/"


def course_file(relative: str, base: str | os.PathLike = ".", url: str = REPOSITORY_FILES,
                timeout: float = 30.0) -> Path:
    """``base/relative`` (a file of ``book/``, e.g. ``results/baselines.json``); when it is missing, as in a
    chapter opened alone in Colab, it is downloaded there from the repository first. Offline, one line says
    so and the missing path is returned: the chapter's own "not in this copy" branch takes over."""
    import urllib.request

    path = Path(base) / relative
    if path.is_file():
        return path
    try:
        with urllib.request.urlopen(url + relative, timeout=timeout) as response:
            data = response.read()
    except (OSError, ValueError) as err:                      # URLError and socket timeouts are OSErrors
        print(f"{relative} is not beside this chapter and could not be downloaded from {url + relative} "
              f"({getattr(err, 'reason', err)})")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    partial.replace(path)                                     # never a half-written file under the real name
    print(f"downloaded {relative} ({len(data):,} bytes) from the course's repository")
    return path
