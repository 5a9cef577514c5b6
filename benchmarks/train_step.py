"""Throughput and peak memory of one DINO training step: the authors' way vs the package's.

One step = teacher on the 2 global crops (no gradient), student on all crops, DINO loss, backward, per-parameter
gradient clipping (3.0), SGD step, EMA update of the teacher. Variants:

  reference  eager, NCHW, fp32 on the CPU and fp16 autocast with a gradient scaler on CUDA; EMA and clipping
             as Python loops over the parameters (the authors' code)
  package    ``dino_tutorial.teacher.ema_update`` / ``dino_tutorial.optim.clip_gradients`` (one fused call
             per list of tensors), uint8 crops normalised on the device (``normalize_uint8``), and optionally
             channels_last memory, bf16 autocast and ``torch.compile``

On the CPU all combinations of channels_last and bf16 autocast are measured (whether they pay depends on the
CPU: bf16 needs AVX512-BF16 or AMX to be fast); ``--compile`` adds a compiled variant. On CUDA the default
list is reference (fp16), package fp32, package channels_last + the trainer's autocast dtype, and the same
compiled. That dtype is ``dino_tutorial.engine.precision.amp_dtype("auto", device)``, as in training: bf16
on GPUs that compute it in hardware, fp16 with a gradient scaler on the others (a T4, a V100).

Reported: seconds per step (wall clock and CPU time of this process), images per second (on the CPU: per core,
from the CPU time, which other programs on a shared machine do not inflate), the time 100 epochs of ImageNet
(1,281,167 images) would take at that rate on this one device or core, and the peak memory of the step
(CUDA: ``torch.cuda.max_memory_allocated``; CPU: peak resident memory during the step above the resident
memory before it, from /proc/self/status).

    OMP_NUM_THREADS=1 python benchmarks/train_step.py                  # ResNet-50, batch 4, 2x224 + 8x96: ~2-3 min
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --local-crops 2  # fewer crops, faster
    python benchmarks/train_step.py --batch 64 --compile              # on a GPU
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from common import machine, peak_memory, start_peak_memory  # noqa: E402
from dino_tutorial.engine.precision import amp_dtype  # noqa: E402
from dino_tutorial.fast_augment import normalize_uint8  # noqa: E402
from dino_tutorial.loss import DINOLoss  # noqa: E402
from dino_tutorial.model import DINOHead, MultiCropWrapper, build_backbone  # noqa: E402
from dino_tutorial.optim import build_optimizer, clip_gradients  # noqa: E402
from dino_tutorial.teacher import ema_update, make_teacher  # noqa: E402

IMAGENET_TRAIN_IMAGES = 1_281_167


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                found = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
                return ", ".join(found) or "none of avx2/avx512f/avx512_bf16/amx_bf16"
    except OSError:
        pass
    return "unknown"


# ------------------------------------------------------------------ the authors' loops
@torch.no_grad()
def ema_loop(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    for param_s, param_t in zip(student.parameters(), teacher.parameters()):
        param_t.mul_(momentum).add_((1 - momentum) * param_s.detach())


@torch.no_grad()
def clip_loop(model: nn.Module, clip: float) -> None:
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.norm(2)
            coef = clip / (norm + 1e-6)
            if coef < 1:                           # a device-to-host sync per parameter on a GPU
                p.grad.mul_(coef)


@dataclass
class Variant:
    name: str
    package: bool
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False
    fp16: bool = False                             # fp16 autocast with a gradient scaler (the authors' CUDA default)


def dtype_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def variants(device: torch.device, compile_: bool) -> List[Variant]:
    if device.type == "cuda":
        chosen = amp_dtype("auto", device)                 # the trainer's choice: bf16, or fp16 without it
        name, bf16, fp16 = dtype_name(chosen), chosen == torch.bfloat16, chosen == torch.float16
        out = [Variant("reference: eager fp16 autocast, loops", False, fp16=True),
               Variant("package: fp32, foreach", True),
               Variant(f"package: channels_last + {name}", True, True, bf16, fp16=fp16)]
        if compile_:
            out.append(Variant(f"package: channels_last + {name} + compile", True, True, bf16, True, fp16))
        return out
    out = [Variant("reference: eager fp32, loops", False), Variant("package: fp32, foreach", True),
           Variant("package: channels_last", True, True), Variant("package: bf16 autocast", True, False, True),
           Variant("package: channels_last + bf16 autocast", True, True, True)]
    if compile_:
        out.append(Variant("package: channels_last + bf16 + compile", True, True, True, True))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(v: Variant, args, device: torch.device) -> Callable[[List[torch.Tensor]], float]:
    """One DINO step of variant ``v`` as a function of the host-side crops of a batch (uint8 for the package's
    variants, normalised float for the reference; already on the device is fine too)."""
    torch.manual_seed(0)
    backbone, dim = build_backbone(args.arch)
    head = DINOHead(dim, args.out_dim)
    fmt = torch.channels_last if v.channels_last else torch.contiguous_format
    student = MultiCropWrapper(backbone, head).to(device, memory_format=fmt)
    teacher = make_teacher(student)
    ncrops = 2 + args.local_crops
    loss_fn = DINOLoss(args.out_dim, ncrops).to(device)
    optimizer = build_optimizer("sgd", student)
    for g, group in enumerate(optimizer.param_groups):
        group["lr"] = 0.03 * args.batch / 256
        if g == 0:
            group["weight_decay"] = 1e-4
    student_fn: Callable = torch.compile(student) if v.compile else student
    teacher_fn: Callable = torch.compile(teacher) if v.compile else teacher
    scaler = torch.amp.GradScaler(device.type, enabled=v.fp16)
    amp_dtype = torch.bfloat16 if v.bf16 else torch.float16

    def step(host: List[torch.Tensor]) -> float:
        crops = [x.to(device, non_blocking=True, memory_format=fmt) for x in host]
        if crops[0].dtype == torch.uint8:
            crops = [normalize_uint8(x) for x in crops]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=v.bf16 or v.fp16):
            with torch.no_grad():
                teacher_out = teacher_fn(crops[:2])
            student_out = student_fn(crops)
        loss = loss_fn(student_out.float(), teacher_out.float(), 1)          # in fp32, as the trainer does
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        (clip_gradients if v.package else clip_loop)(student, 3.0)
        scaler.step(optimizer)
        scaler.update()
        (ema_update if v.package else ema_loop)(teacher, student, 0.996)
        return loss.item()

    return step


def run_variant(v: Variant, args, device: torch.device) -> Dict[str, float]:
    # host-side crops as the data loader gives them: uint8 for the package path, normalised float otherwise
    torch.manual_seed(0)
    sizes = [args.global_size] * 2 + [args.local_size] * args.local_crops
    host = [torch.randint(0, 256, (args.batch, 3, s, s), dtype=torch.uint8) for s in sizes]
    if not v.package:
        host = [normalize_uint8(x) for x in host]
    if device.type == "cuda":
        host = [x.pin_memory() for x in host]
    one_step = make_step(v, args, device)

    def step() -> float:
        return one_step(host)

    warm_start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(device)
    warmup_s = time.perf_counter() - warm_start
    gc.collect()
    base = start_peak_memory(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    sync(device)
    wall, cpu = (time.perf_counter() - wall) / args.steps, (time.process_time() - cpu) / args.steps
    peak = peak_memory(device)
    above = peak - base
    return {"wall": wall, "cpu": cpu, "peak": peak, "above": above, "warmup": warmup_s / max(1, args.warmup)}


def loops_vs_foreach(args, device: torch.device, repeat: int = 5) -> List[List[str]]:
    """EMA and clipping alone on the real parameter list: ms per call (CPU time on the CPU), loop vs fused."""
    torch.manual_seed(0)
    backbone, dim = build_backbone(args.arch)
    student = MultiCropWrapper(backbone, DINOHead(dim, args.out_dim)).to(device)
    teacher = make_teacher(student)
    for p in student.parameters():
        p.grad = torch.randn_like(p)
    rows = []
    n_params = sum(1 for _ in student.parameters())
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    for name, loop, fused in (("EMA update", lambda: ema_loop(teacher, student, 0.996),
                               lambda: ema_update(teacher, student, 0.996)),
                              ("per-parameter clipping", lambda: clip_loop(student, 3.0),
                               lambda: clip_gradients(student, 3.0))):
        times = []
        for fn in (loop, fused):
            fn()
            sync(device)
            best = float("inf")
            for _ in range(repeat):
                start = clock()
                fn()
                sync(device)
                best = min(best, clock() - start)
            times.append(best * 1e3)
        rows.append([f"{name} ({n_params} tensors)", f"{times[0]:.1f}", f"{times[1]:.1f}",
                     f"{times[0] / times[1]:.1f}x"])
    return rows


def duration(seconds: float) -> str:
    days = seconds / 86400
    if days > 365.25:
        return f"{days / 365.25:.1f} years"
    return f"{days:.1f} days" if days >= 1 else f"{seconds / 3600:.1f} h"


def table_header(header: List[str]) -> str:
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    return "| " + " | ".join(header) + " |\n" + rule


def table_row(row: List[str]) -> str:
    return "| " + " | ".join(row) + " |"


def table(header: List[str], rows: List[List[str]]) -> str:
    return "\n".join([table_header(header)] + [table_row(r) for r in rows])


def add_step_arguments(parser: argparse.ArgumentParser, steps_cpu: int, steps_cuda: int) -> None:
    """The model, crops, batch, step counts and device options shared with end_to_end.py."""
    parser.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 4 on CPU, 64 on CUDA)")
    parser.add_argument("--local-crops", type=int, default=8, help="local crops per image (default 8)")
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--out-dim", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=None,
                        help=f"measured steps (default {steps_cpu} on CPU, {steps_cuda} on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 1 on CPU, 5 on CUDA)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.set_defaults(steps_defaults=(steps_cpu, steps_cuda))


def settle_step_arguments(args: argparse.Namespace) -> torch.device:
    """The device the options ask for, and the defaults that depend on it."""
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    on_gpu = device.type == "cuda"
    args.batch = args.batch or (64 if on_gpu else 4)
    args.steps = args.steps or args.steps_defaults[on_gpu]
    args.warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    return device


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser, steps_cpu=1, steps_cuda=20)
    parser.add_argument("--compile", action="store_true", help="add a torch.compile variant (default on CUDA)")
    parser.add_argument("--only", default=None, help="run the variants whose name contains this text")
    args = parser.parse_args(argv)
    device = settle_step_arguments(args)
    on_gpu = device.type == "cuda"
    compile_ = args.compile or on_gpu

    print(f"Machine: {machine(device)}; CPU features: {cpu_flags()}")
    print(f"Precision: amp='auto' picks {dtype_name(amp_dtype('auto', device))} on {device.type}, as the trainer "
          f"does" + ("; the package variants use it" if on_gpu else "; the variants below also try bf16 autocast"))
    print(f"Step: {args.arch} + DINO head (out_dim {args.out_dim}), batch {args.batch}, crops 2 x {args.global_size} "
          f"+ {args.local_crops} x {args.local_size}, SGD, clipping 3.0, EMA; {args.warmup} warm-up and {args.steps} "
          f"measured step(s) per variant on {device.type}\n")
    memory = "GPU MiB" if on_gpu else "RSS MiB"
    rate = "images/s" if on_gpu else f"images/s per core ({torch.get_num_threads()} thread, CPU time)"
    # rows are printed as they are measured, so that a run stopped early (a slow compile) keeps what it measured
    print(table_header(["variant", "s/step (wall)", "CPU s/step", rate, "speed-up", "100 ImageNet epochs at this rate",
                        f"peak {memory}", f"step peak above start, {memory}"]), flush=True)
    chosen = [v for v in variants(device, compile_) if args.only is None or args.only in v.name]
    reference_time: Optional[float] = None
    for v in chosen:
        r = run_variant(v, args, device)
        gc.collect()
        # On the GPU the wall clock is the measure; on the CPU, the CPU time of this single-threaded process is:
        # it is what the step costs one core, whatever else runs on a shared machine.
        seconds = r["wall"] if on_gpu else r["cpu"]
        reference_time = reference_time or seconds
        images_per_s = args.batch / seconds
        print(table_row([v.name, f"{r['wall']:.2f}", f"{r['cpu']:.2f}", f"{images_per_s:.2f}",
                         f"{reference_time / seconds:.2f}x", duration(100 * IMAGENET_TRAIN_IMAGES / images_per_s),
                         f"{r['peak']:.0f}", f"{r['above']:.0f}"]), flush=True)
    print("\n" + table(["operation", "Python loop ms", "fused (foreach) ms", "ratio"], loops_vs_foreach(args, device)))


if __name__ == "__main__":
    main()
