"""Multi-crop data path throughput: images per second per CPU core, decode + 2 x 224 + 8 x 96 views.

Compares, on full-size ImageNet JPEGs, in one process with one thread:

  (a) the recipe written out step by step with PIL and torchvision v1 transforms (one chain per view,
      normalised float tensors out), as in the authors' code;
  (b) the package's ``MultiCropAugmentation`` (same recipe, float tensors out);
  (c) ``FastMultiCropAugmentation`` on the file path (reduced JPEG decoding, uint8 tensors out);
  (c') the fast path given an already decoded PIL image (no reduced decoding), to show what decoding costs;
  (d) ``DeviceMultiCropAugmentation`` run on the CPU: what the DataLoader workers do (bytes, header, draws)
      plus decoding and rendering batches of 32 (normalised float out), all in this process.

On a machine with CUDA a last table splits the device path: the workers' share, in images per second per
core, and the GPU's share (decoding with nvJPEG and rendering batches of 64), in images per second.

Throughput is images per CPU-second of this process (``time.process_time``), so that other programs running
on a shared machine do not count against it; wall-clock throughput is printed beside it. Methods are
interleaved round by round and the best round is kept. A second table times each operation on its own.

    OMP_NUM_THREADS=1 python benchmarks/augment.py                 # about 1-2 minutes
    OMP_NUM_THREADS=1 python benchmarks/augment.py --rounds 5 --data /path/with/jpegs
"""
from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image, ImageFilter, ImageOps, features  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from torchvision.transforms import functional as TF  # noqa: E402

from dino_tutorial import fast_augment as fa  # noqa: E402
import common  # noqa: E402
from dino_tutorial.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation  # noqa: E402
from dino_tutorial.data import IMAGE_EXTENSIONS, load_rgb, resolve_data_root  # noqa: E402
from dino_tutorial.device_augment import DeviceMultiCropAugmentation, collate_encoded  # noqa: E402


def machine() -> str:
    """The shared machine line plus the image libraries this benchmark depends on."""
    return (f"{common.machine()}, "
            f"torchvision {torchvision.__version__}, Pillow {PIL.__version__} "
            f"(libjpeg-turbo {'yes' if features.check_feature('libjpeg_turbo') else 'no'}), "
            f"Python {platform.python_version()}")


# ---------------------------------------------------------------- (a) the recipe written out step by step
class RandomBlur:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class RandomSolarize:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


class StepByStepRecipe:
    """DINO's multi-crop recipe as torchvision v1 chains on PIL images, one chain per view kind."""

    def __init__(self, global_scale=(0.14, 1.0), local_scale=(0.05, 0.14), local_number=8, global_size=224,
                 local_size=96):
        bicubic = T.InterpolationMode.BICUBIC
        jitter = T.Compose([T.RandomHorizontalFlip(p=0.5),
                            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                            T.RandomGrayscale(p=0.2)])
        to_tensor = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.global_1 = T.Compose([T.RandomResizedCrop(global_size, global_scale, interpolation=bicubic), jitter,
                                   RandomBlur(1.0), to_tensor])
        self.global_2 = T.Compose([T.RandomResizedCrop(global_size, global_scale, interpolation=bicubic), jitter,
                                   RandomBlur(0.1), RandomSolarize(0.2), to_tensor])
        self.local = T.Compose([T.RandomResizedCrop(local_size, local_scale, interpolation=bicubic), jitter,
                                RandomBlur(0.5), to_tensor])
        self.local_number = local_number

    def __call__(self, path) -> List[torch.Tensor]:
        img = Image.open(path).convert("RGB")
        return [self.global_1(img), self.global_2(img)] + [self.local(img) for _ in range(self.local_number)]


# ---------------------------------------------------------------- measurement
def timed(fn: Callable[[], object]) -> Tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def best_of(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best CPU seconds per call over ``repeat`` runs of ``number`` calls."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, (time.process_time() - start) / number)
    return best


def device_views(aug: DeviceMultiCropAugmentation, paths: Sequence[Path], device: str, batch: int = 32) -> None:
    """The device path from files to views: the workers' part, then decoding and rendering batch by batch."""
    for start in range(0, len(paths), batch):
        encoded = collate_encoded([(aug(p), 0) for p in paths[start:start + batch]])[0]
        aug.views(encoded, device)


def pipelines(paths: Sequence[Path], rounds: int) -> List[Tuple[str, float, float]]:
    recipe, package, fast = StepByStepRecipe(), MultiCropAugmentation(), fa.FastMultiCropAugmentation()
    device = DeviceMultiCropAugmentation()
    methods: Dict[str, Callable[[], object]] = {
        "(a) PIL + torchvision v1, step by step (float out)": lambda: [recipe(p) for p in paths],
        "(b) dino_tutorial MultiCropAugmentation (float out)": lambda: [package(load_rgb(p)) for p in paths],
        "(c) FastMultiCropAugmentation on the path (uint8 out)": lambda: [fast(p) for p in paths],
        "(c') FastMultiCropAugmentation on a decoded PIL image": lambda: [fast(load_rgb(p)) for p in paths],
        "(d) DeviceMultiCropAugmentation run on the CPU (float out)": lambda: device_views(device, paths, "cpu"),
    }
    for fn in methods.values():                  # warm up: file cache, allocator, lazy imports
        fn()
    cpu = {name: [] for name in methods}
    wall = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            c, w = timed(fn)
            cpu[name].append(c)
            wall[name].append(w)
    return [(name, len(paths) / min(cpu[name]), len(paths) / min(wall[name])) for name in methods]


def operations(paths: Sequence[Path]) -> List[Tuple[str, str, float, float]]:
    """(operation, size, reference ms, fast ms): each step of one view, PIL/torchvision vs the fast path."""
    img = load_rgb(paths[0])
    pixels = fa._pixels(img)
    width, height = img.size
    rows = []
    for size in (224, 96):
        box = (width // 8, height // 8, width // 8 + int(0.7 * width), height // 8 + int(0.7 * height))
        if size == 96:
            box = (width // 4, height // 4, width // 4 + int(0.3 * width), height // 4 + int(0.3 * height))
        top, left, h, w = box[1], box[0], box[3] - box[1], box[2] - box[0]
        small = TF.resized_crop(img, top, left, h, w, [size, size], T.InterpolationMode.BICUBIC)
        x = TF.pil_to_tensor(small).float().contiguous()      # (3, H, W) float, as the fast path's resize gives
        n = 40 if size == 224 else 100
        label = f"{size}x{size} from {w}x{h}"

        def row(name, ref, fast, number=n):
            rows.append((name, label, 1e3 * best_of(ref, number, 5), 1e3 * best_of(fast, number, 5)))

        row("crop + bicubic resize (PIL / torch uint8 antialiased)",
            lambda: TF.resized_crop(img, top, left, h, w, [size, size], T.InterpolationMode.BICUBIC),
            lambda: torch.nn.functional.interpolate(pixels[..., top:top + h, left:left + w], size=(size, size),
                                                    mode="bicubic", antialias=True))
        rows.append(("  same, PIL resize(box=..., reducing_gap=2)", label,
                     1e3 * best_of(lambda: img.resize((size, size), Image.BICUBIC, box=box, reducing_gap=2.0), n, 5),
                     float("nan")))
        row("brightness", lambda: TF.adjust_brightness(small, 1.3), lambda: fa.adjust_brightness(x.clone(), 1.3))
        row("contrast", lambda: TF.adjust_contrast(small, 1.3), lambda: fa.adjust_contrast(x.clone(), 1.3))
        row("saturation", lambda: TF.adjust_saturation(small, 1.1), lambda: fa.adjust_saturation(x.clone(), 1.1))
        row("hue", lambda: TF.adjust_hue(small, 0.05), lambda: fa.adjust_hue(x.clone(), 0.05))
        row("grayscale", lambda: TF.rgb_to_grayscale(small, 3), lambda: fa._luma(x))
        row("Gaussian blur, radius 2 (RGB)", lambda: small.filter(ImageFilter.GaussianBlur(2.0)),
            lambda: fa.gaussian_blur(x, 2.0))
        gray_small, gray_x = small.convert("L"), x[:1].clone()
        row("Gaussian blur, radius 2 (one grey channel)", lambda: gray_small.filter(ImageFilter.GaussianBlur(2.0)),
            lambda: fa.gaussian_blur(gray_x, 2.0))
        row("to tensor (ToTensor + Normalize / uint8 as is)",
            lambda: TF.normalize(TF.to_tensor(small), IMAGENET_MEAN, IMAGENET_STD),
            lambda: torch.from_numpy(x.add(0.5).numpy().astype(np.uint8)))
    return rows


def device_split_on_gpu(paths: Sequence[Path], rounds: int, batch: int = 64) -> Tuple[float, float, str]:
    """(workers' images/s per core, GPU images/s for decoding + rendering, GPU name) of the device path."""
    aug, gpu = DeviceMultiCropAugmentation(), torch.device("cuda")
    encode = lambda: [collate_encoded([(aug(p), 0) for p in paths[i:i + batch]])[0]  # noqa: E731
                      for i in range(0, len(paths), batch)]
    batches = encode()
    for b in batches:                                            # warm up: nvJPEG handles, kernels, allocator
        aug.views(b, gpu)
    worker_best, gpu_best = float("inf"), float("inf")
    for _ in range(rounds):
        start = time.process_time()
        batches = encode()
        worker_best = min(worker_best, time.process_time() - start)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for b in batches:
            aug.views(b, gpu)
        torch.cuda.synchronize()
        gpu_best = min(gpu_best, time.perf_counter() - start)
    return len(paths) / worker_best, len(paths) / gpu_best, torch.cuda.get_device_name(gpu)


def decoding(paths: Sequence[Path]) -> List[Tuple[str, float]]:
    """Decode cost at full size and at 1/2, 1/4, 1/8 scale (libjpeg DCT scaling), ms per image."""
    def decode(reduction: int):
        for p in paths:
            with Image.open(p) as im:
                if reduction > 1:
                    im.draft("RGB", (im.width // reduction, im.height // reduction))
                im.load()
    return [(f"1/{r}" if r > 1 else "full size", 1e3 * best_of(lambda r=r: decode(r), 1, 3) / len(paths))
            for r in (1, 2, 4, 8)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="folder of JPEGs (default: $DINO_DATA/imagenet-samples)")
    parser.add_argument("--images", type=int, default=100, help="how many images (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept (default 3)")
    parser.add_argument("--no-operations", action="store_true", help="skip the per-operation table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    folder = Path(args.data) if args.data else resolve_data_root() / "imagenet-samples"
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[:args.images] \
        if folder.is_dir() else []
    if not paths:
        sys.exit(f"no JPEGs in {folder}: set DINO_DATA to the folder holding imagenet-samples, or pass --data")
    sizes = np.array([Image.open(p).size for p in paths])
    torch.manual_seed(0)
    random.seed(0)
    fast = fa.FastMultiCropAugmentation()
    reductions = [fast.draft_scale(fast.sample(w, h)) for w, h in sizes for _ in range(10)]
    print(f"Machine: {machine()}")
    print(f"Data: {len(paths)} JPEGs from {folder.name}, median {int(np.median(sizes[:, 0]))}x"
          f"{int(np.median(sizes[:, 1]))} px, largest {sizes.prod(axis=1).max() / 1e6:.2f} MP; "
          f"views 2 x 224 + 8 x 96, crop scales (0.14, 1) and (0.05, 0.14); the fast path decoded at reduced "
          f"scale for {100 * np.mean(np.array(reductions) > 1):.0f}% of draws\n")

    results = pipelines(paths, args.rounds)
    reference = results[0][1]
    print("| pipeline | images/s per core (CPU time) | images/s (wall clock) | speed-up vs (a) |")
    print("|---|---:|---:|---:|")
    for name, per_core, wall in results:
        print(f"| {name} | {per_core:.1f} | {wall:.1f} | {per_core / reference:.2f}x |")
    print(f"\nFast path (c) vs the package's reference (b): {results[2][1] / results[1][1]:.2f}x per core.")
    if torch.cuda.is_available():
        workers, on_gpu, name = device_split_on_gpu(paths, args.rounds)
        print(f"\n| device path, split | images/s |\n|---|---:|\n"
              f"| workers' share: bytes, header, draws (per core, CPU time) | {workers:.1f} |\n"
              f"| GPU's share: nvJPEG decoding + views, batches of 64 ({name}, wall clock) | {on_gpu:.1f} |")

    print("\n| JPEG decoding (PIL, libjpeg DCT scaling) | ms per image |")
    print("|---|---:|")
    for name, ms in decoding(paths):
        print(f"| {name} | {ms:.2f} |")

    if not args.no_operations:
        print("\n| operation (one view) | size | PIL / torchvision ms | fast path ms | ratio |")
        print("|---|---|---:|---:|---:|")
        for name, label, ref_ms, fast_ms in operations(paths):
            fast_text = "" if np.isnan(fast_ms) else f"{fast_ms:.3f}"
            ratio = "" if np.isnan(fast_ms) else f"{ref_ms / fast_ms:.1f}x"
            print(f"| {name} | {label} | {ref_ms:.3f} | {fast_text} | {ratio} |")


if __name__ == "__main__":
    main()
