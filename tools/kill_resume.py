"""Kill a CPU training run with SIGKILL at random moments, resume it each time, and check nothing was lost.

    python tools/kill_resume.py --kills 10

1. An uninterrupted reference run (deterministic, a checkpoint after every iteration).
2. The same command is started, killed with SIGKILL after a random delay (every other kill waits for a
   checkpoint write to be in progress, i.e. for the temporary file to appear, and kills it then; after the
   first kill, the delay counts from the restarted run's first checkpoint), the
   checkpoint is loaded to prove it is intact, and the command is started again, ``--kills`` times.
3. The last start runs to the end; its final parameters must equal the reference's bit for bit.

Prints one line per kill and exits non-zero on any failure. The data is a tiny generated image folder
unless ``--data-path`` is given.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dino_tutorial import checkpoint as ckpt  # noqa: E402


def make_folder(root: Path, classes: int = 2, per_class: int = 8, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(60 + 120 * c, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return root


def command(data: Path, out: Path, epochs: int) -> list:
    return [sys.executable, "-m", "dino_tutorial.train", "--preset", "small", "--data-path", str(data),
            "--output-dir", str(out), "--arch", "resnet18", "--global-size", "32", "--local-size", "16",
            "--local-crops-number", "2", "--batch-size-per-gpu", "4", "--out-dim", "64", "--head-hidden-dim", "32",
            "--head-bottleneck-dim", "16", "--epochs", str(epochs), "--warmup-epochs", "1", "--knn-every", "0",
            "--num-workers", "0", "--deterministic", "true", "--save-every-iters", "1", "--progress", "false"]


def writing(out: Path) -> bool:
    return any(p.name.endswith(".tmp") for p in out.glob(".checkpoint.pth.*"))


def run_with_kills(data: Path, out: Path, epochs: int, kills: int, max_delay: float, rng: random.Random) -> list:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    rows = []
    for k in range(kills):
        proc = subprocess.Popen(command(data, out, epochs), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env, cwd=REPO)
        during_write = k % 2 == 1
        if k > 0:                                   # after the first kill, time the kills from training progress
            while proc.poll() is None and not (out / ckpt.CHECKPOINT_NAME).exists():
                time.sleep(0.01)
            last_write = (out / ckpt.CHECKPOINT_NAME).stat().st_mtime if proc.poll() is None else 0
            while proc.poll() is None and (out / ckpt.CHECKPOINT_NAME).stat().st_mtime == last_write:
                time.sleep(0.01)                    # this start has written a checkpoint of its own
        deadline = time.time() + rng.uniform(0.0, max_delay)
        while proc.poll() is None and time.time() < deadline + (60 if during_write else 0):
            if time.time() >= deadline and (not during_write or writing(out)):
                break
            time.sleep(0.002)
        if proc.poll() is not None:
            print(f"kill {k + 1:2d}: the run finished before it; make it longer with --epochs", flush=True)
            break
        hit_write = writing(out)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        path = out / ckpt.CHECKPOINT_NAME
        if path.exists():
            state = ckpt.load(path)                           # raises if the kill corrupted it
            where = f"epoch {state['epoch']}, iteration {state['iteration']}"
        else:
            where = "no checkpoint yet"
        rows.append((k + 1, "during a checkpoint write" if hit_write else "during training", where, "loadable"))
        print(f"kill {k + 1:2d}: {rows[-1][1]:26s} -> resume point {where}: {rows[-1][3]}", flush=True)
    final = subprocess.run(command(data, out, epochs), capture_output=True, text=True, env=env, cwd=REPO)
    if final.returncode != 0:
        raise SystemExit(f"the final resumed run failed:\n{final.stderr[-2000:]}")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20, help="long enough for the kills (8 iterations an epoch)")
    parser.add_argument("--max-delay", type=float, default=2.0, help="seconds; a kill comes after U(0, max)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-path", type=Path, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data_path or make_folder(tmp / "data")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        reference = subprocess.run(command(data, tmp / "reference", args.epochs), capture_output=True, text=True,
                                   env=env, cwd=REPO)
        if reference.returncode != 0:
            raise SystemExit(f"the reference run failed:\n{reference.stderr[-2000:]}")
        rows = run_with_kills(data, tmp / "killed", args.epochs, args.kills, args.max_delay, rng)
        a, b = ckpt.load(tmp / "reference" / ckpt.CHECKPOINT_NAME), ckpt.load(tmp / "killed" / ckpt.CHECKPOINT_NAME)
        differing = [f"{net}.{name}" for net in ("student", "teacher") for name, value in a[net].items()
                     if not torch.equal(value, b[net][name])]
        if (b["epoch"], b["iteration"]) != (args.epochs, 0) or differing:
            print(f"FAILED: finished at epoch {b['epoch']}; {len(differing)} tensors differ, e.g. {differing[:3]}")
            return 1
    during_writes = sum(row[1] == "during a checkpoint write" for row in rows)
    print(f"{len(rows)} kills ({during_writes} during checkpoint writes), every checkpoint loadable, final parameters "
          f"{'equal' if not differing else 'differ from'} the uninterrupted run's")
    if len(rows) < args.kills:
        print(f"FAILED: only {len(rows)} of {args.kills} kills happened before the run finished")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
