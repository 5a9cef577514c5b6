"""Every GPU benchmark in one go, then one summary table against the performance targets.

Made for a GPU machine borrowed for a few minutes: it makes its own ImageNet-size JPEGs (or uses --data), runs
each benchmark as a subprocess with its own time limit (one that fails or overruns is reported, the others
still run), prints each benchmark's full output as it comes, and ends with a table of the numbers that matter.

    python benchmarks/gpu_report.py                     # about 8 minutes on one H100; --budget to change
    python benchmarks/gpu_report.py --save report.md    # also write the whole report to a file
    python benchmarks/gpu_report.py --cpu-smoke         # tiny settings on the CPU: checks the script, ~1 min

Needs torch, torchvision, numpy and Pillow (the package itself is imported from this checkout).
"""
from __future__ import annotations

import argparse
import re
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
    try:
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=limit, cwd=HERE.parent)
        output = done.stdout + (f"\n[exit code {done.returncode}]\n{done.stderr[-3000:]}" if done.returncode else "")
    except subprocess.TimeoutExpired as err:
        output = (err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or "") + \
            f"\n[stopped after {limit:.0f} s]"
    output += f"\n[{name}: {time.time() - start:.0f} s]"
    print(output, flush=True)
    log.extend([banner, output])
    return output


def summary(outputs: Dict[str, str]) -> str:
    """The headline numbers, each next to its target (blank where a benchmark did not produce it)."""
    rows = []

    def row(what, value, target=""):
        rows.append(f"| {what} | {value if value not in (None, '') else 'not measured'} | {target} |")

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
    return "\n".join(["| measure | measured | target |", "|---|---|---|", *rows])


def benchmark_plan(data: str, cpu_smoke: bool = False) -> List[Tuple[str, List[str], float]]:
    """(name, command, share of the time budget) of each benchmark; ``cpu_smoke``: tiny CPU settings."""
    model = ["--arch", "resnet18", "--batch", "2", "--steps", "1", "--warmup", "1", "--global-size", "64",
             "--local-size", "32", "--local-crops", "2", "--out-dim", "256", "--device", "cpu"] if cpu_smoke else []
    # train_step goes last and gets whatever time is left: its torch.compile variant takes the longest
    return [("end_to_end", ["benchmarks/end_to_end.py", "--data", data, *model,
                            *(["--workers", "1"] if cpu_smoke else [])], 0.35),
            ("knn", ["benchmarks/knn.py", *(["--scales", "2000x200"] if cpu_smoke else ["--device", "cuda"])], 0.15),
            ("augment", ["benchmarks/augment.py", "--data", data, "--rounds", "1" if cpu_smoke else "2",
                         "--no-operations"], 0.15),
            ("train_step", ["benchmarks/train_step.py", *(model or ["--batch", "64"]),
                            *(["--only", "reference"] if cpu_smoke else [])], 1.0)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="folder of JPEGs (default: make --images synthetic ones)")
    parser.add_argument("--images", type=int, default=512, help="synthetic JPEGs to make (default 512)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all benchmarks (default 540)")
    parser.add_argument("--save", default=None, help="also write the report to this file")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny settings on the CPU, to check the script")
    args = parser.parse_args(argv)
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
        plan = benchmark_plan(data, args.cpu_smoke)
        outputs = {}
        for name, command, share in plan:
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
