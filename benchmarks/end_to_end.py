"""JPEG files to optimizer step: images per second of the whole DINO training loop, reference vs fast paths.

Every pipeline reads the same JPEG files through a DataLoader and trains the same model at the same batch:

  reference  ``MultiCropAugmentation`` (PIL + torchvision, normalised float crops) in the DataLoader workers,
             and the reference step: eager, NCHW, fp16 autocast with a gradient scaler on CUDA (fp32 on the
             CPU), EMA and clipping as Python loops (the authors' configuration)
  fast       ``FastMultiCropAugmentation`` (uint8 crops) in the workers, normalised on the device, and the
             package's step: channels_last, the trainer's autocast dtype (bf16, or fp16 with a gradient
             scaler on GPUs without bf16 in hardware), fused EMA and clipping (``--compile``: compiled)
  device     ``DeviceMultiCropAugmentation``: the workers only read bytes and draw the random parameters; the
             device decodes the batch (nvJPEG on CUDA) and makes all views in batches; the package's step

For each pipeline the table gives the data path alone (the loader, and for ``device`` the decoding and
rendering, with no model) and the whole loop. On CUDA it adds the model FLOPs utilisation: the FLOPs of one
step per image (counted by ``torch.utils.flop_counter`` on the device: student forward and backward on all
crops, teacher forward on the global crops) times images per second, over the GPU's dense tensor-core peak
in that dtype (from the vendors' data sheets; "n/a" for a GPU or a dtype the table lacks).

    python benchmarks/end_to_end.py --synthetic 512                      # on a GPU machine, ~3-5 min
    python benchmarks/end_to_end.py --data /path/to/jpegs --workers 12
    OMP_NUM_THREADS=1 python benchmarks/end_to_end.py --device cpu --arch resnet18 --batch 4 --steps 2 \\
        --global-size 64 --local-size 32 --local-crops 2 --out-dim 1024 --workers 1 --synthetic 16   # smoke
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from common import machine  # noqa: E402
from train_step import (IMAGENET_TRAIN_IMAGES, Variant, add_step_arguments, dtype_name, duration,  # noqa: E402
                        make_step, settle_step_arguments, sync, table_header, table_row)
from dino_tutorial.augment import MultiCropAugmentation  # noqa: E402
from dino_tutorial.data import IMAGE_EXTENSIONS, collate_views, load_rgb, resolve_data_root  # noqa: E402
from dino_tutorial.device_augment import DeviceMultiCropAugmentation, EncodedBatch, collate_encoded  # noqa: E402
from dino_tutorial.engine.precision import amp_dtype  # noqa: E402
from dino_tutorial.fast_augment import FastMultiCropAugmentation  # noqa: E402

# Dense tensor-core peaks from the vendors' data sheets, in FLOP/s, per autocast dtype, matched against the
# device name in this order (the first key found in the name wins). From Ampere on, fp16 and bf16 peaks are
# equal; a T4 (Turing) and a V100 (Volta) have no bf16 tensor cores, so the trainer runs them in fp16.
_SAME = ("bf16", "fp16")
PEAKS = [("H100 PCIe", _SAME, 756e12), ("H100", _SAME, 989e12), ("H200", _SAME, 989e12), ("GH200", _SAME, 989e12),
         ("B200", _SAME, 2250e12), ("A100", _SAME, 312e12), ("L40S", _SAME, 362e12), ("L4", _SAME, 121e12),
         ("A10", _SAME, 125e12), ("V100-PCIE", ("fp16",), 112e12), ("V100", ("fp16",), 125e12),
         ("T4", ("fp16",), 65e12)]


class Files(Dataset):
    """``length`` samples cycling over ``paths``; each is (transform(path), 0)."""

    def __init__(self, paths: Sequence[Path], transform: Callable, length: int):
        self.paths, self.transform, self.length = list(paths), transform, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.transform(self.paths[index % len(self.paths)]), 0


class OnDecoded:
    """The reference pipeline's worker: decode with PIL, then the PIL/torchvision views."""

    def __init__(self, views: Callable):
        self.views = views

    def __call__(self, path):
        return self.views(load_rgb(path))


def synthetic_jpegs(folder: Path, n: int, seed: int = 0) -> List[Path]:
    """``n`` ImageNet-like JPEGs (500 x 375 or 375 x 500, quality 90): smooth colour fields with texture."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        width, height = (500, 375) if i % 4 else (375, 500)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                           Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 18, (height, width, 3))
        path = folder / f"synthetic_{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def step_variant(name: str, device: torch.device, compile_: bool = False) -> Variant:
    """The package's step as the trainer runs it on ``device``: channels_last and the ``amp="auto"`` dtype."""
    on_gpu, chosen = device.type == "cuda", amp_dtype("auto", device)
    return Variant(name, True, channels_last=on_gpu, bf16=chosen == torch.bfloat16, fp16=chosen == torch.float16,
                   compile=compile_)


def peak_flops(gpu_name: str, dtype: Optional[torch.dtype]) -> Optional[float]:
    """The dense peak of the GPU named ``gpu_name`` in autocast ``dtype``; None where the table lacks it."""
    name = dtype_name(dtype)
    key = next((entry for entry in PEAKS if entry[0] in gpu_name), None)
    return key[2] if key is not None and name in key[1] else None


def step_flops_per_image(args, device: torch.device) -> float:
    """FLOPs of one package step per image, counted on the device at a small batch."""
    from torch.utils.flop_counter import FlopCounterMode
    batch = 2
    step = make_step(step_variant("count", device), args, device)
    sizes = [args.global_size] * 2 + [args.local_size] * args.local_crops
    crops = [torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8) for s in sizes]
    counter = FlopCounterMode(display=False)
    with counter:
        step(crops)
    return counter.get_total_flops() / batch


def pipeline(name: str, args, device: torch.device, paths: Sequence[Path], model: bool) -> float:
    """Images per second of one pipeline, with the model (``model``) or the data path alone."""
    settings = dict(local_crops_number=args.local_crops, global_size=args.global_size, local_size=args.local_size)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if name == "reference":
        transform, collate = OnDecoded(MultiCropAugmentation(**settings)), collate_views
        variant = Variant("reference", False, fp16=device.type == "cuda")
    else:
        aug = (FastMultiCropAugmentation if name == "fast" else DeviceMultiCropAugmentation)(**settings)
        transform, collate = aug, (collate_encoded if name == "device" else collate_views)
        variant = step_variant(name, device, args.compile)
    steps = args.warmup + args.steps
    loader = DataLoader(Files(paths, transform, steps * args.batch), batch_size=args.batch,
                        num_workers=args.workers, collate_fn=collate, pin_memory=device.type == "cuda",
                        drop_last=True, prefetch_factor=4 if args.workers else None)
    step = make_step(variant, args, device) if model else None
    batches = iter(loader)
    start = 0.0
    for i in range(steps):
        if i == args.warmup:
            sync(device)
            start = time.perf_counter()
        crops = next(batches)[0]
        if isinstance(crops, EncodedBatch):
            crops = transform.views(crops, device, memory_format=fmt)[0]
        if step is not None:
            step(crops)
        elif crops[0].device != device:
            crops = [x.to(device, non_blocking=True) for x in crops]      # the data path ends on the device
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="folder of JPEGs (default: $DINO_DATA/imagenet-samples)")
    parser.add_argument("--synthetic", type=int, default=0, help="make this many synthetic JPEGs instead")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores but one)")
    add_step_arguments(parser, steps_cpu=2, steps_cuda=30)
    parser.add_argument("--compile", action="store_true", help="compile the fast pipelines' step")
    parser.add_argument("--only", default=None, help="comma-separated pipelines (reference,fast,device)")
    args = parser.parse_args(argv)
    device = settle_step_arguments(args)
    on_gpu = device.type == "cuda"
    args.workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    names = args.only.split(",") if args.only else ["reference", "fast", "device"]
    if on_gpu:
        torch.backends.cudnn.benchmark = True

    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            paths = synthetic_jpegs(Path(tmp), args.synthetic)
            source = f"{len(paths)} synthetic JPEGs, 500 x 375 and 375 x 500"
        else:
            folder = Path(args.data) if args.data else resolve_data_root() / "imagenet-samples"
            paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) \
                if folder.is_dir() else []
            if not paths:
                sys.exit(f"no JPEGs in {folder}: pass --data, set DINO_DATA, or use --synthetic N")
            source = f"{len(paths)} JPEGs from {folder.name}"
        print(f"Machine: {machine(device)}")
        print(f"Loop: {args.arch} + DINO head (out_dim {args.out_dim}), batch {args.batch}, crops 2 x "
              f"{args.global_size} + {args.local_crops} x {args.local_size}; {source}; {args.workers} DataLoader "
              f"worker(s); {args.warmup} warm-up + {args.steps} measured steps per pipeline on {device.type}\n")
        chosen = amp_dtype("auto", device)
        print(f"Precision: amp='auto' picks {dtype_name(chosen)} on {device.type}, as the trainer does; the fast and "
              f"device pipelines use it, the reference keeps the authors' fp16 on CUDA (fp32 on the CPU)\n")
        flops = step_flops_per_image(args, device)
        peak = peak_flops(torch.cuda.get_device_name(device), chosen) if on_gpu else None
        reference = None
        print(table_header(["pipeline", "data path alone, images/s", "JPEG to step, images/s", "speed-up",
                            "model FLOPs utilisation", "100 ImageNet epochs, 1 device", "8 devices (linear scaling)"]),
              flush=True)
        for name in names:
            data_rate = pipeline(name, args, device, paths, model=False)
            rate = pipeline(name, args, device, paths, model=True)
            reference = reference or rate
            mfu = f"{100 * rate * flops / peak:.1f}%" if peak else "n/a"
            epochs = 100 * IMAGENET_TRAIN_IMAGES
            print(table_row([name, f"{data_rate:.1f}", f"{rate:.1f}", f"{rate / reference:.2f}x", mfu,
                             duration(epochs / rate), duration(epochs / (8 * rate))]), flush=True)
        print(f"\nOne step costs {flops / 1e9:.1f} GFLOP per image (forward + backward of the student on all crops, "
              f"forward of the teacher on the global crops)"
              + (f"; peak dense {dtype_name(chosen)} of this GPU: {peak / 1e12:.0f} TFLOP/s." if peak else
                 "; no peak in the table for this GPU and dtype, so no MFU." if on_gpu else "."))


if __name__ == "__main__":
    main()
