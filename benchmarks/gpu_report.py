"""Every GPU benchmark in one go, then one summary table against the performance targets.

Made for a GPU machine borrowed for a few minutes: it makes its own ImageNet-size JPEGs (or uses --data), runs
each benchmark as a subprocess with its own time limit (one that fails or overruns is reported, the others
still run), prints each benchmark's full output as it comes, and ends with a table of the numbers that matter.
In order: the trainer's three data paths for a few steps with the precision and repeatability checks
(``paths_smoke.py``), the JPEG-to-step throughput and MFU, the k-NN at growing scale, the CPU data path,
chapter 08 executed by papermill in its smoke mode (GPU run only; on synthetic JPEGs in 10 classes), and the
training step variants, which get whatever time is left.

    python benchmarks/gpu_report.py                     # at most --budget seconds (520): under nine minutes
    python benchmarks/gpu_report.py --save report.md    # also write the whole report to a file
    python benchmarks/gpu_report.py --cpu-smoke         # tiny settings on the CPU: checks the script, ~1 min

Needs torch, torchvision, numpy and Pillow, and papermill with a ``python3`` Jupyter kernel for chapter 08
(the package itself is imported from this checkout).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def markdown_tables(text: str) -> List[List[Dict[str, str]]]:
    """Every Markdown table in ``text`` as a list of {column header: cell} rows."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1]):
            header = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                rows.append(dict(zip(header, cells)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def number(cell: Optional[str]) -> Optional[float]:
    match = re.search(r"-?[\d,]*\.?\d+", cell or "")
    return float(match.group(0).replace(",", "")) if match else None


def cell(row: Dict[str, str], prefix: str) -> Optional[str]:
    """The cell of the first column whose header starts with ``prefix`` (headers name the device's units)."""
    return next((value for key, value in row.items() if key.startswith(prefix)), None)


def run(name: str, command: List[str], limit: float, log: List[str]) -> str:
    """Run one benchmark, echo and keep its output; a failure or a timeout is noted, never raised."""
    banner = f"\n===== {name}: {' '.join(command)} (limit {limit:.0f} s)"
    print(banner, flush=True)
    start = time.time()
    # a session of its own, so that an overrun stops its children too (DataLoader workers, a notebook's kernel)
    process = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=HERE.parent, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=limit)
        output = stdout + (f"\n[exit code {process.returncode}]\n{stderr[-3000:]}" if process.returncode else "")
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        try:
            stdout = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:         # a grandchild in a session of its own still holds the pipe
            stdout = ""
        output = (stdout or "") + f"\n[stopped after {limit:.0f} s]"
    output += f"\n[{name}: {time.time() - start:.0f} s]"
    print(output, flush=True)
    log.extend([banner, output])
    return output


def summary(outputs: Dict[str, str]) -> str:
    """The headline numbers, each next to its target (blank where a benchmark did not produce it)."""
    rows = []

    def row(what, value, target=""):
        rows.append(f"| {what} | {value if value not in (None, '') else 'not measured'} | {target} |")

    paths = outputs.get("paths", "")
    chosen = re.search(r"amp='auto' picks (\w+)", paths)
    row("autocast dtype of amp='auto'", chosen.group(1) if chosen else None)
    for r in (r for t in markdown_tables(paths) for r in t if "path" in r):
        row(f"data path {r['path']}: first losses, all finite, s",
            f"{r.get('first losses')}; finite: {r.get('all finite')}; {r.get('seconds')} s", "finite")
    for r in (r for t in markdown_tables(paths) for r in t if "precision, views" in r and r.get("within")):
        row(f"same views, first loss: {r['precision, views']}, vs fp32 uint8",
            f"{r.get('relative difference to fp32')} relative (tolerance {r.get('tolerance')}): "
            f"within {r.get('within')}", "within")
    for r in (r for t in markdown_tables(paths) for r in t if "device path twice, same seed" in r):
        row(f"device path twice, same seed: {r['device path twice, same seed']}", r.get("result"), "yes")

    e2e = {r.get("pipeline"): r for t in markdown_tables(outputs.get("end_to_end", "")) for r in t if "pipeline" in r}
    reference = number(e2e.get("reference", {}).get("JPEG to step, images/s"))
    for name in ("reference", "fast", "device"):
        r = e2e.get(name, {})
        rate = number(r.get("JPEG to step, images/s"))
        speedup = f", {rate / reference:.2f}x the reference" if rate and reference else ""
        row(f"JPEG to step, {name} pipeline (images/s)",
            f"{rate:,.0f}{speedup}; data path alone {r.get('data path alone, images/s')}; MFU "
            f"{r.get('model FLOPs utilisation')}" if rate else None,
            ">= 1,000 images/s and >= 2x the reference" if name != "reference" else "")
    steps = [r for t in markdown_tables(outputs.get("train_step", "")) for r in t if "variant" in r]
    for r in steps:
        row(f"training step, {r['variant']} (images/s)", cell(r, "images/s"))
    knn = [r for t in markdown_tables(outputs.get("knn", "")) for r in t if "train features" in r]
    for r in knn:
        target = "< 30 s" if r["train features"] == "1,281,167" else ""
        measured = cell(r, "peak extra") if r.get("wall s") == "out of memory" else \
            f"{r.get('wall s')} s, {cell(r, 'peak extra')} MiB"
        row(f"k-NN {r['train features']} x {r['queries']} (s, peak extra MiB)", measured, target)
    augment = [r for t in markdown_tables(outputs.get("augment", "")) for r in t if "pipeline" in r]
    for r in augment:
        row(f"multi-crop on this machine's CPU, {r['pipeline']} (images/s per core)",
            f"{r.get('images/s per core (CPU time)')} ({r.get('speed-up vs (a)')})",
            ">= 2x (a)" if r["pipeline"].startswith("(c)") else "")
    split = [r for t in markdown_tables(outputs.get("augment", "")) for r in t if "device path, split" in r]
    for r in split:
        row(f"device path, {r['device path, split']} (images/s)", r.get("images/s"))
    book = outputs.get("chapter_08", "")
    if book.startswith("[skipped"):
        row("chapter 08 by papermill, smoke mode", book.strip("[]"))
    elif book:
        result = {r["metric"]: r["value"] for t in markdown_tables(book) for r in t if "metric" in r}
        seconds = re.search(r"\[chapter_08: (\d+) s\]", book)
        row("chapter 08 by papermill, smoke mode",
            f"ran in {seconds.group(1) if seconds else '?'} s; k-NN top-1 {result.get('knn_top1')}%, linear top-1 "
            f"{result.get('linear_top1')}% (synthetic classes: checks the pipeline, not the accuracy)"
            if result else "failed (see its output above)", "runs")
    return "\n".join(["| measure | measured | target |", "|---|---|---|", *rows])


CPU_ONLY_SKIP = "skipped on the CPU: the GPU run executes it"


def benchmark_plan(data: str, cpu_smoke: bool = False,
                   book_data: Optional[str] = None) -> List[Tuple[str, Optional[List[str]], float]]:
    """(name, command, share of the time budget) of each benchmark; ``cpu_smoke``: tiny CPU settings.

    A command of None is a benchmark skipped in this mode. The shares of all but the last add up to 0.8 of
    the budget; train_step goes last and gets whatever time is left: its torch.compile variant takes longest.
    """
    model = ["--arch", "resnet18", "--batch", "2", "--steps", "1", "--warmup", "1", "--global-size", "64",
             "--local-size", "32", "--local-crops", "2", "--out-dim", "256", "--device", "cpu"] if cpu_smoke else []
    book = None if cpu_smoke else ["benchmarks/gpu_report.py", "--chapter-08", book_data or data]
    return [("paths", ["benchmarks/paths_smoke.py", "--data", data,
                       *(["--device", "cpu", "--batch", "2", "--steps", "3"] if cpu_smoke else ["--device", "cuda"])],
             0.12),
            ("end_to_end", ["benchmarks/end_to_end.py", "--data", data, *model,
                            *(["--workers", "1"] if cpu_smoke else [])], 0.29),
            ("knn", ["benchmarks/knn.py", *(["--scales", "2000x200"] if cpu_smoke else ["--device", "cuda"])], 0.12),
            ("augment", ["benchmarks/augment.py", "--data", data, "--rounds", "1" if cpu_smoke else "2",
                         "--no-operations"], 0.12),
            ("chapter_08", book, 0.15),
            ("train_step", ["benchmarks/train_step.py", *(model or ["--batch", "64"]),
                            *(["--only", "reference"] if cpu_smoke else [])], 1.0)]


def book_tree(images: Path, root: Path, classes: int = 10, train: int = 16, val: int = 4) -> Path:
    """An ImageFolder tree ``root/{train,val}/class_NN/`` of links to JPEGs in ``images`` (chapter 08's smoke
    run takes 16 training images per class); ``images`` itself when it already holds ``train/`` and ``val/``."""
    if (images / "train").is_dir() and (images / "val").is_dir():
        return images
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if len(files) < classes * (train + val):
        raise ValueError(f"chapter 08's smoke run needs {classes * (train + val)} JPEGs in {images}, "
                         f"found {len(files)}")
    for c in range(classes):
        for split, count, offset in (("train", train, 0), ("val", val, train)):
            folder = root / split / f"class_{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            start = c * (train + val) + offset
            for path in files[start:start + count]:
                (folder / path.name).symlink_to(path.resolve())
    return root


def chapter_08(images: str) -> int:
    """Execute chapter 08 by papermill in smoke mode on ``images``; print its summary.txt as a table."""
    with tempfile.TemporaryDirectory() as tmp:
        root = book_tree(Path(images), Path(tmp) / "data")
        command = [sys.executable, "-m", "papermill", "-k", "python3", "book/08_full_training.ipynb",
                   str(Path(tmp) / "08_smoke.ipynb"), "-p", "smoke", "True", "-p", "data_path", str(root),
                   "-p", "output_dir", str(Path(tmp) / "run")]
        print(" ".join(command), flush=True)
        done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent,
                              env={**os.environ, "TQDM_DISABLE": "1"})
        summary_file = Path(tmp) / "run" / "summary.txt"
        if done.returncode or not summary_file.is_file():
            print(done.stdout[-2000:] + done.stderr[-4000:])
            return done.returncode or 1
        values = [line.split(" ", 1) for line in summary_file.read_text().splitlines() if " " in line]
        print("\n| metric | value |\n|---|---:|\n" + "\n".join(f"| {k} | {v} |" for k, v in values))
    return 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="folder of JPEGs (default: make --images synthetic ones)")
    parser.add_argument("--images", type=int, default=512, help="synthetic JPEGs to make (default 512)")
    parser.add_argument("--budget", type=float, default=520, help="seconds for all benchmarks (default 520)")
    parser.add_argument("--save", default=None, help="also write the report to this file")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny settings on the CPU, to check the script")
    parser.add_argument("--book-data", default=None, help="ImageFolder root with train/ and val/ for chapter 08 "
                                                          "(default: 10 classes of links to the JPEGs)")
    parser.add_argument("--chapter-08", default=None, metavar="JPEGS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.chapter_08:                          # the report's chapter 08 entry, run in a process of its own
        sys.exit(chapter_08(args.chapter_08))
    import torch
    from common import machine
    if not torch.cuda.is_available() and not args.cpu_smoke:
        sys.exit("gpu_report.py needs a CUDA GPU; the CPU benchmarks are run one by one (see benchmarks/README.md)")
    if args.cpu_smoke:
        args.images = min(args.images, 8)
    start = time.time()
    log: List[str] = [f"Machine: {machine(torch.device('cpu' if args.cpu_smoke else 'cuda'))}"]
    print(log[0], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from end_to_end import synthetic_jpegs
            synthetic_jpegs(Path(tmp), args.images)
            data = tmp
            print(f"made {args.images} synthetic JPEGs in {time.time() - start:.0f} s", flush=True)
        plan = benchmark_plan(data, args.cpu_smoke, args.book_data)
        outputs = {}
        for name, command, share in plan:
            if command is None:
                outputs[name] = f"[{CPU_ONLY_SKIP}]"
                print(f"\n===== {name}: {CPU_ONLY_SKIP}", flush=True)
                log.append(f"\n===== {name}: {CPU_ONLY_SKIP}")
                continue
            remaining = args.budget - (time.time() - start)
            if remaining < 20:
                outputs[name] = f"[skipped: the budget of {args.budget:.0f} s was spent]"
                continue
            outputs[name] = run(name, command, max(20.0, min(share * args.budget, remaining)), log)
    table = summary(outputs)
    report = f"\n===== summary ({time.time() - start:.0f} s in all)\n{log[0]}\n\n{table}\n"
    print(report, flush=True)
    if args.save:
        Path(args.save).write_text("\n".join(log) + "\n" + report)


if __name__ == "__main__":
    main()
