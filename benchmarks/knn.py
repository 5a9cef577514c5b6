"""k-NN evaluation cost at growing scale: time and peak memory of ``dino_tutorial.knn.knn_classify``.

The classifier (k = 20, T = 0.07, 1000 classes) runs on random 2048-d features, the size of ResNet-50's, so
only the cost is measured, not an accuracy. On the CPU the default scales go up to 100k training features
and 10k queries; on CUDA up to ImageNet's 1.28M training features and 50k queries.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the call minus what was allocated before it (the
features); on the CPU, the peak resident memory during the call minus the resident memory before it (from
/proc/self/status, the peak counter being reset before each call). Both are the classifier's working memory
on top of the feature bank, which is listed separately.

A scale that runs out of memory (the features or the classifier's working memory) gets a row that says so,
with the memory it needed: the feature bank and the allocation that failed. The smaller scales still run.

    OMP_NUM_THREADS=1 python benchmarks/knn.py                        # about 1-2 minutes on one core
    OMP_NUM_THREADS=1 python benchmarks/knn.py --scales 10000x1000 300000x10000
    python benchmarks/knn.py --device cuda                           # adds 1.28M x 50k
"""
from __future__ import annotations

import argparse
import gc
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common import machine, peak_memory, start_peak_memory  # noqa: E402
from dino_tutorial.knn import knn_classify  # noqa: E402

CPU_SCALES = ["10000x1000", "30000x3000", "100000x10000"]
CUDA_SCALES = CPU_SCALES + ["300000x10000", "1281167x50000"]


def parse_scale(text: str) -> Tuple[int, int]:
    train, queries = text.lower().split("x")
    return int(float(train)), int(float(queries))


def measure(n_train: int, n_queries: int, dim: int, classes: int, device: torch.device, k: int) -> Dict[str, float]:
    generator = torch.Generator(device=device).manual_seed(0)
    train = torch.randn(n_train, dim, device=device, generator=generator)
    queries = torch.randn(n_queries, dim, device=device, generator=generator)
    train_labels = torch.randint(0, classes, (n_train,), device=device, generator=generator)
    query_labels = torch.randint(0, classes, (n_queries,), device=device, generator=generator)
    gc.collect()
    before = start_peak_memory(device)
    wall, cpu = time.perf_counter(), time.process_time()
    knn_classify(train, train_labels, queries, query_labels, k=k, T=0.07, num_classes=classes)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    extra = peak_memory(device) - before
    bank = (train.numel() + queries.numel()) * 4 / 2 ** 20
    del train, queries
    return {"wall": wall, "cpu": cpu, "extra": extra, "bank": bank,
            "chunk": max(1, min(n_queries, 2 ** 26 // n_train))}


HEADER_TEMPLATE = ["train features", "queries", "queries per chunk", "wall s", "CPU s", "queries/s ({clock})",
                   "GFLOP/s ({clock})", "feature bank MiB", "peak extra {memory} MiB"]


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError the CPU allocator raises when an allocation fails."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and ("out of memory" in str(err).lower()
                                              or "not enough memory" in str(err).lower())


def failed_allocation_bytes(message: str) -> Optional[int]:
    """The size of the allocation an out-of-memory message names (CUDA: "Tried to allocate 1.50 GiB"; CPU:
    "you tried to allocate 10485760000 bytes"), or None."""
    units = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40}
    match = re.search(r"[Tt]ried to allocate ([\d.]+) ?(B|KiB|MiB|GiB|TiB|bytes)\b", message)
    if not match:
        return None
    return int(float(match.group(1)) * units.get(match.group(2), 1))


def out_of_memory_row(n_train: int, n_queries: int, dim: int, err: BaseException) -> List[str]:
    """The table row of a scale that ran out of memory: the feature bank it needed and the failed allocation."""
    bank = (n_train + n_queries) * dim * 4
    failed = failed_allocation_bytes(str(err))
    needed = f"out of memory: bank {bank / 2 ** 20:,.0f} MiB" + (
        f" + a failed allocation of {failed / 2 ** 20:,.0f} MiB" if failed is not None else "")
    return [f"{n_train:,}", f"{n_queries:,}", "n/a", "out of memory", "n/a", "n/a", "n/a", f"{bank / 2 ** 20:,.0f}",
            needed]


def measure_or_report(n_train: int, n_queries: int, dim: int, classes: int, device: torch.device,
                      k: int, measure_fn=None) -> Tuple[Optional[Dict[str, float]], Optional[List[str]]]:
    """(measurement, None), or (None, the out-of-memory row) when the scale does not fit; other errors raise."""
    measure_fn = measure_fn or measure
    row = None
    try:
        return measure_fn(n_train, n_queries, dim, classes, device, k), None
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
        if not is_out_of_memory(err):
            raise
        row = out_of_memory_row(n_train, n_queries, dim, err)
    gc.collect()                                     # the traceback's frames held the tensors until here
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return None, row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--scales", nargs="+", default=None, help="TRAINxQUERIES, e.g. 100000x10000")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda was asked for but CUDA is not available")
    scales = [parse_scale(s) for s in (args.scales or (CUDA_SCALES if device.type == "cuda" else CPU_SCALES))]
    print(f"Machine: {machine(device)}")
    print(f"k-NN: k = {args.k}, T = 0.07, {args.classes} classes, {args.dim}-d float32 features, on {device.type}\n")
    clock = "wall" if device.type == "cuda" else "CPU time"
    memory = "GPU" if device.type == "cuda" else "RSS"
    header = [h.format(clock=clock, memory=memory) for h in HEADER_TEMPLATE]
    # rows are printed as they are measured, so that a run stopped early keeps what it measured
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|", flush=True)
    for n_train, n_queries in scales:
        r, row = measure_or_report(n_train, n_queries, args.dim, args.classes, device, args.k)
        if r is not None:
            flops = 2.0 * n_train * n_queries * args.dim
            seconds = r["wall"] if device.type == "cuda" else r["cpu"]
            row = [f"{n_train:,}", f"{n_queries:,}", f"{r['chunk']:,}", f"{r['wall']:.2f}", f"{r['cpu']:.2f}",
                   f"{n_queries / seconds:,.0f}", f"{flops / seconds / 1e9:,.0f}", f"{r['bank']:,.0f}",
                   f"{r['extra']:,.0f}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
