"""Chapter 08 under papermill, as a full run is launched: a smoke run end to end, the same command again
resuming where the first stopped, and parameters that cannot give a run stopping in the first cells."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "book" / "08_full_training.ipynb"
DATA = Path(os.environ.get("DINO_DATA", ROOT.parent / "shared" / "data")) / "imagenette-mini"

pytestmark = pytest.mark.slow


def papermill(output: Path, **parameters) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "papermill", "-k", "python3", str(NOTEBOOK), str(output)]
    for name, value in parameters.items():
        command += ["-p", name, str(value)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def printed(notebook: Path) -> str:
    """Everything the executed notebook's cells printed."""
    nb = nbformat.read(notebook, as_version=4)
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def read_summary(run: Path) -> dict:
    lines = (run / "summary.txt").read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines)


def logged_epochs(run: Path) -> list:
    return [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_smoke_run_summarises_and_the_same_command_resumes_without_repeating_an_epoch(tmp_path):
    if not (DATA / "train").is_dir():
        pytest.skip(f"needs imagenette-mini at {DATA}: set DINO_DATA to the folder that holds imagenette-mini/")
    run = tmp_path / "run"
    first = papermill(tmp_path / "first.ipynb", smoke=True, data_path=DATA, output_dir=run, epochs=1)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = read_summary(run)
    assert {"knn_top1", "knn_top5", "linear_top1", "epochs", "images", "hardware", "wall_time_s"} <= set(summary)
    for metric in ("knn_top1", "knn_top5", "linear_top1", "linear_top5"):
        assert 0.0 <= float(summary[metric]) <= 100.0, f"{metric} = {summary[metric]}"
    assert (summary["epochs"], summary["images"], summary["smoke"]) == ("1", "160", "True")
    assert logged_epochs(run) == [0, 1]                 # epoch 0: the random network's k-NN

    # The same run asked for its full length (2 smoke epochs), this time through torchrun in a child process.
    second = papermill(tmp_path / "second.ipynb", smoke=True, data_path=DATA, output_dir=run, launcher="torchrun")
    assert second.returncode == 0, second.stderr[-3000:]
    output = printed(tmp_path / "second.ipynb")
    assert "resumed from" in output and "at epoch 1" in output, output[-2000:]
    assert logged_epochs(run) == [0, 1, 2], "an epoch was trained twice or the log was restarted"
    assert read_summary(run)["epochs"] == "2"


@pytest.mark.parametrize("parameters, message", [
    ({"smoke": True, "data_path": "/no/such/folder"}, "data_path '/no/such/folder' is not a folder"),
    ({"preset": "nope"}, "unknown preset 'nope': choose one of"),
    ({"batch_size_per_gpu": 0}, "batch_size_per_gpu must be None or an integer >= 1, got 0"),
    ({"num_gpus": 0}, "the full run needs CUDA GPUs and num_gpus=0 asks for none"),
    ({"augmentation": "gpu"}, "augmentation must be None, pil, fast or device, got 'gpu'"),
], ids=["missing-data", "unknown-preset", "zero-batch", "zero-gpus", "unknown-augmentation"])
def test_a_bad_parameter_stops_the_run_in_the_first_cells_with_one_line(tmp_path, parameters, message):
    result = papermill(tmp_path / "out.ipynb", output_dir=tmp_path / "run", **parameters)
    assert result.returncode != 0
    last_line = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last_line.startswith("BadParameter: ") and message in last_line, last_line
    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    failed = [i for i, cell in enumerate(code) if any(o.get("output_type") == "error" for o in cell.get("outputs", []))]
    assert len(failed) == 1 and failed[0] < 7, f"the error came in code cell {failed} instead of the first cells"
    assert all(cell.get("execution_count") is None for cell in code[failed[0] + 1:]), "cells ran after the error"
    assert not (tmp_path / "run").exists(), "the run started writing before the parameters were checked"
