"""The trainer's three data paths on one device, a few steps each, and the checks that need the device to mean
anything: the same loss in every precision on the same views, and the on-device path repeatable.

  paths      ``Trainer.fit`` with ``augmentation`` = pil, fast and device on a folder of JPEGs, for ``--steps``
             steps of a small model, so that the device path's look-ahead (the next batch decoded while the
             step runs) is exercised as in training: the first losses, whether all are finite, the seconds.
  precision  one batch of views made once (the fast path's uint8 views), given to the first step of trainers
             built with the same seed (the same weights) in fp32 and in each autocast dtype of the device;
             the same views as normalised floats, the form the pil and device paths give the step, in fp32.
             The first step's loss depends only on the forward pass, so each must match the fp32 loss.
  repeat     the device path a second time with the same seed: its losses, and a checksum of the views each
             step received, must equal the first run's. A decode that races the step it overlaps (a batched
             GPU JPEG decoder writing on its own stream while the step's kernels still use the memory) shows
             here as views or losses that change from run to run.

On the CPU (``--device cpu``) all three paths run on the CPU: the device path then decodes with torchvision
on the host and renders the views in batches there, the same code as on a GPU but for the decoder.

Tolerance of the precision check: the loss is a cross-entropy of order ln K between softmaxes of the
outputs, computed in fp32 from the network's outputs, so it carries the relative rounding error of the
forward pass. An autocast dtype with p significant bits rounds each operation to a relative 2^-p (bf16:
2^-8 = 0.39%, fp16: 2^-11 = 0.05%); over the ~20 layers of a ResNet-18 these errors add up as a random
walk, about sqrt(20) = 4.5 roundings. The check allows 16 roundings, 6.3% for bf16 and 0.8% for fp16. On
the CPU (ResNet-18 at 1/4 width, batch 4, 64 and 32 px) bf16 moved the first loss by 0.2% to 1.6% over
four seeds, a quarter of the allowance at most. So the check catches what breaks a run (a dtype left out
of autocast's fp32 list, an overflow, a loss of another order), not a bias of a percent. fp32 forms of the
same views differ only by the rounding of the normalisation (and, on Ampere or later GPUs, by TF32
convolutions, 2^-11 per operation), so the float-vs-uint8 check allows 1e-3 relative.

    python benchmarks/paths_smoke.py --data /path/to/jpegs                  # on a GPU: about a minute
    OMP_NUM_THREADS=1 python benchmarks/paths_smoke.py --data DIR --device cpu --batch 2 --steps 3
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common import machine  # noqa: E402
from train_step import dtype_name, table  # noqa: E402
from dino_tutorial.data import IMAGE_EXTENSIONS  # noqa: E402
from dino_tutorial.engine.precision import amp_dtype, bf16_in_hardware  # noqa: E402
from dino_tutorial.fast_augment import normalize_uint8  # noqa: E402
from dino_tutorial.train import Trainer, TrainConfig  # noqa: E402

PATHS = ("pil", "fast", "device")
# relative tolerance of the first loss against fp32 on the same views (see the module docstring)
TOLERANCE = {"bf16": 16 * 2 ** -8, "fp16": 16 * 2 ** -11, "fp32": 1e-3}
AMP_SETTING = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}


def image_folder_root(data: Path, tmp: Path) -> Path:
    """``data`` itself when it holds ``train/``; else a root whose ``train/images/`` links to its JPEGs."""
    if (data / "train").is_dir():
        return data
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        sys.exit(f"no JPEGs in {data}")
    folder = tmp / "root" / "train" / "images"
    folder.mkdir(parents=True)
    for path in files:
        (folder / path.name).symlink_to(path.resolve())
    return tmp / "root"


def make_config(args, root: Path, out: Path, augmentation: str, amp: str = "auto") -> TrainConfig:
    """The small preset at the sizes of the options, one epoch of ``args.steps`` steps, nothing else."""
    return TrainConfig.from_preset(
        "small", data_path=str(root), output_dir=str(out), arch=args.arch, out_dim=args.out_dim,
        global_size=args.global_size, local_size=args.local_size, local_crops_number=args.local_crops,
        augmentation=augmentation, batch_size_per_gpu=args.batch, epochs=1, warmup_epochs=0,
        max_iters_per_epoch=args.steps, knn_every=0, amp=amp, num_workers=args.workers, device=args.device,
        seed=args.seed, resume="none", progress=False)


def build(config: TrainConfig) -> Trainer:
    """A Trainer whose cuDNN kernels are the deterministic ones, so that two runs can be compared bit for bit."""
    gc.collect()                                       # the previous trainers' models and loader workers
    trainer = Trainer(config)
    if trainer.device.type == "cuda":
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    return trainer


def recorded_fit(trainer: Trainer) -> Tuple[List[float], List[float]]:
    """Run ``trainer.fit()``; returns each step's loss and a checksum of the views that step received.

    The checksums stay on the device until the run ends, so recording them adds no wait for the device.
    """
    losses, sums = [], []
    step = trainer.train_step

    def recording_step(crops, *args, **kwargs):
        sums.append(torch.stack([x.double().sum() for x in crops]).sum())
        loss, stats = step(crops, *args, **kwargs)
        losses.append(loss)
        return loss, stats

    trainer.train_step = recording_step
    try:
        with contextlib.redirect_stdout(io.StringIO()):    # the epoch's summary line would split the tables
            trainer.fit()
    except FloatingPointError:
        losses.append(float("nan"))                    # the trainer stops at the first non-finite loss
    if not losses:
        raise RuntimeError("Trainer.fit ran no step through Trainer.train_step: this script needs updating")
    return losses, [float(s) for s in sums]


def shown(losses: List[float], n: int = 4) -> str:
    return ", ".join(f"{x:.4f}" for x in losses[:n]) + (", ..." if len(losses) > n else "")


def paths_table(args, root: Path, tmp: Path) -> Tuple[List[List[str]], Dict[str, Tuple[List[float], List[float]]],
                                                       bool]:
    rows, runs, failed = [], {}, False
    for path in PATHS:
        start = time.perf_counter()
        try:
            runs[path] = recorded_fit(build(make_config(args, root, tmp / f"run_{path}", path)))
        except Exception as err:                       # one path failing must not hide the others
            traceback.print_exc()
            failed = True
            rows.append([path, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}", "no",
                         f"{time.perf_counter() - start:.1f}"])
            continue
        losses = runs[path][0]
        rows.append([path, shown(losses), "yes" if all(map(math.isfinite, losses)) else "no",
                     f"{time.perf_counter() - start:.1f}"])
    return rows, runs, failed


def precisions(device: torch.device) -> List[str]:
    """fp32 and the autocast dtypes worth checking: on CUDA fp16 and, where it is in hardware, bf16; on the
    CPU bf16 (fp16 autocast on the CPU is not what anyone trains with)."""
    if device.type != "cuda":
        return ["fp32", "bf16"]
    return ["fp32", *(["bf16"] if bf16_in_hardware(device) else []), "fp16"]


def first_loss(args, root: Path, out: Path, amp: str, views: List[torch.Tensor]) -> float:
    trainer = build(make_config(args, root, out, "fast", amp))
    return trainer.train_step(views, 0, 0, 0)[0]


def precision_table(args, root: Path, tmp: Path, device: torch.device) -> List[List[str]]:
    """The first step's loss on one batch of views in each precision, against fp32."""
    views = next(iter(build(make_config(args, root, tmp / "views", "fast", "none")).loader))[0]
    chosen = dtype_name(amp_dtype("auto", device))
    reference = first_loss(args, root, tmp / "fp32", "none", views)
    rows = [["fp32, uint8 views (the fast path's)", f"{reference:.5f}", "", "", ""]]
    floats = [normalize_uint8(x) for x in views]
    cases = [("fp32, the same views normalised to float", "none", floats, TOLERANCE["fp32"])]
    cases += [(f"{name}, uint8 views{' (amp=auto picks it)' if name == chosen else ''}", AMP_SETTING[name], views,
               TOLERANCE[name]) for name in precisions(device)[1:]]
    for label, amp, inputs, tolerance in cases:
        loss = first_loss(args, root, tmp / f"precision_{len(rows)}", amp, inputs)
        difference = abs(loss - reference) / abs(reference)
        rows.append([label, f"{loss:.5f}", f"{difference:.2e}", f"{tolerance:.1e}",
                     "yes" if difference <= tolerance else "no"])
    return rows


def repeat_table(args, root: Path, tmp: Path, first: Tuple[List[float], List[float]]) -> List[List[str]]:
    """The device path again with the same seed, against its first run."""
    losses, sums = recorded_fit(build(make_config(args, root, tmp / "run_device_again", "device")))
    same_losses = losses == first[0]
    worst = max((abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses, first[0])), default=0.0)
    return [["first losses identical", "yes" if same_losses else f"no (largest relative difference {worst:.1e})",
             f"{shown(first[0])} / {shown(losses)}"],
            ["views identical (checksum per step)", "yes" if sums == first[1] else "no",
             f"{len(sums)} steps"]]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder of JPEGs, or an ImageFolder root with train/")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--arch", default=None, help="backbone (default resnet18_w16 on the CPU, resnet18 on CUDA)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 4 on CPU, 32 on CUDA)")
    parser.add_argument("--steps", type=int, default=4, help="steps per path (default 4)")
    parser.add_argument("--global-size", type=int, default=None, help="default 64 on the CPU, 224 on CUDA")
    parser.add_argument("--local-size", type=int, default=None, help="default 32 on the CPU, 96 on CUDA")
    parser.add_argument("--local-crops", type=int, default=None, help="default 2 on the CPU, 6 on CUDA")
    parser.add_argument("--out-dim", type=int, default=None, help="default 256 on the CPU, 4096 on CUDA")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 0 on the CPU, 8 "
                                                                   "on CUDA, at most the cores but one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if on_gpu and not torch.cuda.is_available():
        sys.exit("--device cuda was asked for but CUDA is not available")
    args.device = "cuda" if on_gpu else "cpu"
    device = torch.device(args.device)
    for name, cpu, cuda in (("arch", "resnet18_w16", "resnet18"), ("batch", 4, 32), ("global_size", 64, 224),
                            ("local_size", 32, 96), ("local_crops", 2, 6), ("out_dim", 256, 4096),
                            ("workers", 0, min(8, max(1, (os.cpu_count() or 2) - 1)))):
        if getattr(args, name) is None:
            setattr(args, name, cuda if on_gpu else cpu)
    os.environ.setdefault("TQDM_DISABLE", "1")

    print(f"Machine: {machine(device)}")
    print(f"Precision: amp='auto' picks {dtype_name(amp_dtype('auto', device))} on {device.type}")
    print(f"Model: {args.arch} + DINO head (out_dim {args.out_dim}), batch {args.batch}, crops 2 x {args.global_size}"
          f" + {args.local_crops} x {args.local_size}, {args.steps} steps per path, seed {args.seed}, "
          f"{args.workers} DataLoader worker(s)\n")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = image_folder_root(Path(args.data), tmp)
        rows, runs, failed = paths_table(args, root, tmp)
        print(table(["path", "first losses", "all finite", "seconds"], rows) + "\n", flush=True)
        checks = [("precision", lambda: print(table(["precision, views", "first loss", "relative difference to fp32",
                                                     "tolerance", "within"],
                                                    precision_table(args, root, tmp, device)) + "\n")),
                  ("repeat", lambda: print(table(["device path twice, same seed", "result", "losses (first / second)"],
                                                 repeat_table(args, root, tmp, runs["device"])) + "\n"))]
        for name, check in checks:
            if name == "repeat" and "device" not in runs:
                print("device path twice: not run, the device path failed\n")
                continue
            try:
                check()
            except Exception:
                traceback.print_exc()
                print(f"{name} check: failed (traceback on stderr)\n")
                failed = True
            sys.stdout.flush()
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
