"""Multi-crop on the training device: the recipe's views of a whole batch at once, from JPEG bytes.

On a GPU, the CPU pipeline is what limits DINO: at about 130 images per second per core for the fast uint8 path
(``fast_augment``), 16 cores feed a ResNet-50 that could train on about 1,000 images per second. This module
moves the pixel work to the device and leaves the CPU workers almost nothing to do:

* **In the DataLoader workers** (``DeviceMultiCropAugmentation.__call__``): read the file's bytes, read the image
  size from its header (no decoding) and draw every view's random parameters with exactly the sampler of the
  other two paths (``FastMultiCropAugmentation.sample``: RandomResizedCrop's boxes, flip, jitter with its order,
  grayscale, blur radius, solarization). A sample is an ``EncodedImage``: bytes + a (views, 17) parameter table.
* **On the device** (``views``): decode the batch (nvJPEG through ``torchvision.io.decode_jpeg`` on CUDA, libjpeg
  on the CPU, with a per-image fallback for PNGs and other formats), cut and resize every crop (antialiased
  bicubic, as PIL), then apply colour jitter (each image in its own random order), grayscale, Gaussian blur
  with each image's radius, solarization and flip to all crops of one size together, and normalise.

The colour operations are ``fast_augment``'s, which accept a batch with one factor per image; the blur is PIL's
kernel (three extended boxes of variance radius**2), built for a whole batch of radii and applied as one grouped
convolution. Given the same draws, a view differs from the CPU fast path's by at most a grey level or two (the
tests check it), so the distribution of views is the recipe's.
"""
from __future__ import annotations

import functools
import io
import math
import os
import warnings
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from .augment import IMAGENET_MEAN, IMAGENET_STD
from .data import BadImageError
from .fast_augment import (FastMultiCropAugmentation, ViewParams, adjust_brightness, adjust_contrast, adjust_hue,
                           adjust_saturation, _luma)

# Columns of the parameter table, one row per view (see fast_augment.ViewParams).
TOP, LEFT, HEIGHT, WIDTH, FLIP, JITTER = range(6)
ORDER = slice(6, 10)                                  # the jitter operations' indices in application order
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(10, 14)
GRAYSCALE, BLUR_RADIUS, SOLARIZE = range(14, 17)
N_COLUMNS = 17
_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)   # fast_augment's order codes


class EncodedImage(NamedTuple):
    """One training sample as the workers leave it: the file's bytes and the random draws of its views."""
    data: torch.Tensor          # uint8 (n_bytes,)
    params: torch.Tensor        # float64 (n_views, 17)
    size: Tuple[int, int]       # (height, width) from the file header
    path: str


class EncodedBatch(NamedTuple):
    data: List[torch.Tensor]
    params: torch.Tensor        # float64 (batch, n_views, 17)
    sizes: List[Tuple[int, int]]
    paths: List[str]


def pack_params(params: Sequence[ViewParams]) -> torch.Tensor:
    """ViewParams of each view -> (n_views, 17) float64 table (exact for every field)."""
    rows = [[p.top, p.left, p.height, p.width, p.flip, p.jitter, *p.order, p.brightness, p.contrast,
             p.saturation, p.hue, p.grayscale, p.blur_radius, p.solarize] for p in params]
    return torch.tensor(rows, dtype=torch.float64).view(-1, N_COLUMNS)


def collate_encoded(samples):
    """[(EncodedImage, label) or None, ...] -> (EncodedBatch, labels, number of skipped samples)."""
    kept = [s for s in samples if s is not None]
    if not kept:
        return None, None, len(samples)
    images = [s[0] for s in kept]
    batch = EncodedBatch([e.data for e in images], torch.stack([e.params for e in images]),
                         [e.size for e in images], [e.path for e in images])
    return batch, torch.tensor([s[1] for s in kept]), len(samples) - len(kept)


def blur_kernels(radii: torch.Tensor, passes: int = 3) -> torch.Tensor:
    """PIL's ``GaussianBlur(radius)`` kernel for every radius in ``radii`` (n,) -> (n, K), centred, zero-padded.

    Vectorised ``fast_augment.blur_kernel``: an extended box (whole taps plus fractional end taps, total variance
    radius**2 / passes) per radius, convolved with itself ``passes`` times.
    """
    r = radii.to(torch.float64).flatten()
    sigma2 = r * r / passes
    inner = torch.floor((torch.sqrt(12.0 * sigma2 + 1.0) - 1.0) / 2.0)
    frac = (2 * inner + 1) * (inner * (inner + 1) - 3 * sigma2) / (6 * (sigma2 - (inner + 1) ** 2))
    box_radius = inner + frac
    whole = torch.floor(box_radius)
    edge = box_radius - whole
    half = int(whole.max().item()) + 1 if len(r) else 1
    offset = torch.arange(-half, half + 1, dtype=torch.float64).abs().unsqueeze(0)
    box = torch.where(offset <= whole.unsqueeze(1), 1.0, torch.where(offset == whole.unsqueeze(1) + 1,
                                                                      edge.unsqueeze(1), 0.0))
    box = box / box.sum(dim=1, keepdim=True)
    kernel, taps = box, box.shape[1]
    for _ in range(passes - 1):              # full convolution with the box, row by row, as shifted sums
        kernel = sum(F.pad(kernel, (t, taps - 1 - t)) * box[:, t:t + 1] for t in range(taps))
    return kernel.float()


def blur_batch(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable blur of (n, C, H, W) with one 1-d kernel per image (n, K); edges replicated."""
    n, channels, height, width = x.shape
    size = kernels.shape[1]
    half = size // 2
    weights = kernels.to(x.device, x.dtype).repeat_interleave(channels, dim=0)          # (n * C, K)
    y = F.pad(x.reshape(1, n * channels, height, width), (half, half, 0, 0), mode="replicate")
    y = F.conv2d(y, weights.view(-1, 1, 1, size), groups=n * channels)
    y = F.pad(y, (0, 0, half, half), mode="replicate")
    y = F.conv2d(y, weights.view(-1, 1, size, 1), groups=n * channels)
    return y.view(n, channels, height, width)


def to_device(tensors: List[torch.Tensor], device: torch.device) -> List[torch.Tensor]:
    """Host tensors of one dtype -> the same tensors on ``device``, in one asynchronous copy.

    A copy from ordinary (pageable) host memory makes the host wait until the GPU has finished the work queued
    before it; one pinned buffer copied with ``non_blocking`` lets the host go on launching work instead.
    """
    if device.type == "cpu" or not tensors:
        return [t.to(device) for t in tensors]
    sizes = [t.numel() for t in tensors]
    flat = torch.cat([t.reshape(-1) for t in tensors]).pin_memory().to(device, non_blocking=True)
    return [part.view(t.shape) for part, t in zip(flat.split(sizes), tensors)]


def colour_batch(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Jitter, grayscale, blur, solarization and flip of crops (n, 3, H, W) float in [0, 255], in place.

    ``params`` (n, 17) on the host: each row holds the draws of its crop. Each operation runs once on the
    crops that drew it (the four jitter operations once per position in the order, on the crops that drew
    that operation at that position); the result is rounded to whole grey levels, as the uint8 paths are.
    Which crops get what is worked out on the host and sent to the device in two copies.
    """
    device = x.device
    jitter, order = params[:, JITTER] > 0.5, params[:, ORDER].long()
    steps = [(op, jitter & (order[:, position] == op)) for position in range(4) for op in range(4)]
    steps += [(name, params[:, column] > 0.5 if name != "blur" else params[:, column] > 0)
              for name, column in (("gray", GRAYSCALE), ("blur", BLUR_RADIUS), ("solarize", SOLARIZE),
                                   ("flip", FLIP))]
    steps = [(name, torch.nonzero(mask).flatten()) for name, mask in steps]
    steps = [(name, idx) for name, idx in steps if len(idx)]
    blurred = params[:, BLUR_RADIUS] > 0
    kernels = blur_kernels(params[blurred, BLUR_RADIUS])
    indices = to_device([idx for _, idx in steps], device)
    factors, kernels = to_device([params[:, BRIGHTNESS:HUE + 1].float(), kernels], device)
    rounded = False
    for (name, _), idx in zip(steps, indices):
        if name in ("solarize", "flip") and not rounded:
            x.round_()                                       # whole grey levels before solarizing, as uint8
            rounded = True
        crops = x[idx]
        if name in range(4):
            x[idx] = _JITTER_OPS[name](crops, factors[idx, name].view(-1, 1, 1, 1))
        elif name == "gray":
            x[idx] = _luma(crops).expand(-1, 3, -1, -1)
        elif name == "blur":
            x[idx] = blur_batch(crops, kernels)
        elif name == "solarize":
            x[idx] = torch.where(crops >= 128.0, 255.0 - crops, crops)       # PIL's solarize at 128
        else:
            x[idx] = crops.flip(-1)
    return x if rounded else x.round_()


def resizes_in_float(device: torch.device) -> bool:
    """Whether crops are resized in float on ``device`` (CUDA has no uint8 antialiased bicubic kernel)."""
    return device.type != "cpu"


def crop_resize(image: torch.Tensor, row: Sequence[float], size: int) -> torch.Tensor:
    """The crop box of ``row`` cut from a decoded (3, H, W) or (1, 3, H, W) uint8 image -> (3, size, size) float.

    Antialiased bicubic, as PIL. On the CPU the uint8 kernel rounds and saturates like PIL; on CUDA the
    result is float, to be rounded and clamped to [0, 255] by the caller.
    """
    top, left, height, width = (int(v) for v in row[TOP:WIDTH + 1])
    crop = image[..., top:top + height, left:left + width]
    crop = crop if crop.ndim == 4 else crop.unsqueeze(0)
    if not resizes_in_float(image.device):
        return F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0].float()
    # CUDA resizes in float: the caller rounds and clamps the whole batch at once (two kernels, not two per crop)
    crop = crop.float()
    for step in resize_stages(height, width, size):
        crop = F.interpolate(crop, size=step, mode="bicubic", antialias=True, align_corners=False)
    return crop[0]


# CUDA's antialiased bicubic kernel raises beyond about a 47x downscale (its filter support outgrows a fixed
# buffer); a 64 px global crop of a 4,000 px photo is a 60x one. Larger reductions go in steps of at most 32x.
MAX_DOWNSCALE_STEP = 32


def resize_stages(height: int, width: int, size: int, limit: int = MAX_DOWNSCALE_STEP) -> List[Tuple[int, int]]:
    """The (h, w) of each resize from height x width down to size x size, none reducing a side more than ``limit``x."""
    stages = []
    while max(height, width) > limit * size:
        height, width = max(size, math.ceil(height / limit)), max(size, math.ceil(width / limit))
        stages.append((height, width))
    return stages + [(size, size)]


@functools.lru_cache(maxsize=8)
def _normalisation(device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and 1 / std on the [0, 255] scale, (1, 3, 1, 1), on ``device`` (copied once)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)
    return mean.to(device), inv_std.to(device)


def _decode_on_host(data: torch.Tensor) -> torch.Tensor:
    """Encoded bytes -> (3, H, W) uint8 on the CPU: torchvision's decoders (JPEG, PNG, WebP, GIF), else PIL."""
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as err:
        if "Unsupported image file" not in str(err):
            raise                                        # a broken file of a supported format
    with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
        img.load()
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()


@functools.lru_cache(maxsize=8)
def _decode_stream(device: torch.device, cuda=torch.cuda):
    return cuda.Stream(device)


def decode_on_idle_stream(decode, device: torch.device, cuda=torch.cuda) -> List[torch.Tensor]:
    """Run ``decode()`` (torchvision's batched GPU ``decode_jpeg``) on a stream of its own; returns its images.

    torchvision's batched decoder writes from its own stream into memory taken from the caller's stream without
    waiting for the work queued there (pytorch/vision PR #9606): on the training stream it can overwrite memory
    that the step's queued kernels still read. On a stream that only ever decodes nothing is queued; the
    training stream then waits for the decoded images, and ``record_stream`` keeps their memory from being
    reused for the next decode until the training stream is done with them.
    """
    side, current = _decode_stream(device, cuda), cuda.current_stream(device)
    with cuda.stream(side):
        images = list(decode())
    current.wait_stream(side)
    for image in images:
        image.record_stream(current)
    return images


def _error_line(err: Exception) -> str:
    return str(err).strip().splitlines()[-1].split(", ")[-1] if str(err).strip() else type(err).__name__


class DeviceMultiCropAugmentation(FastMultiCropAugmentation):
    """The DINO multi-crop recipe split between DataLoader workers (draws) and the device (pixels).

    Same constructor and same views, in the same order, as ``MultiCropAugmentation``. Called on a file path in
    a worker it returns an ``EncodedImage``; batch those with ``collate_encoded`` and call ``views(batch,
    device)`` in the training process to get ``[global 1, global 2, local 1, ...]``, each (B, 3, H, W),
    normalised, on the device. ``TrainConfig(augmentation="device")`` wires this into the trainer.
    """

    def __call__(self, image) -> EncodedImage:
        path = os.fspath(image)
        try:
            with open(path, "rb") as f:
                data = f.read()
            with Image.open(io.BytesIO(data)) as img:           # the header only: no pixels are decoded here
                width, height = img.size
        except (OSError, SyntaxError, ValueError) as err:
            raise BadImageError(f"cannot read image {path}: {err}") from err
        params = pack_params(self.sample(width, height))
        return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), params, (height, width), path)

    @staticmethod
    def decode(batch: EncodedBatch, device: torch.device | str) -> Tuple[List[Optional[torch.Tensor]], List[str]]:
        """Decode every image of ``batch`` to (3, H, W) uint8 on ``device``.

        Returns the images (None where decoding failed) and one message per failure naming the file. On CUDA
        the whole batch goes to nvJPEG at once; a batch it rejects is decoded image by image on the CPU.
        """
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its image decoders in favour of TorchCodec's; they still work, and
            # Colab's and most installed versions of torchvision do not warn
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
            return DeviceMultiCropAugmentation._decode(batch, torch.device(device))

    @staticmethod
    def _decode(batch: EncodedBatch, device: torch.device) -> Tuple[List[Optional[torch.Tensor]], List[str]]:
        images: List[Optional[torch.Tensor]] = [None] * len(batch.data)
        if device.type == "cuda":
            try:
                images = decode_on_idle_stream(lambda: decode_jpeg(batch.data, mode=ImageReadMode.RGB,
                                                                   device=device), device)
            except (RuntimeError, TypeError, ValueError) as err:
                # a PNG, a CMYK JPEG, a broken file, an older torchvision: one by one below
                warnings.warn(f"batched GPU decoding failed ({_error_line(err)}); decoding image by image",
                              RuntimeWarning, stacklevel=3)
        failures = []
        for i, (data, path) in enumerate(zip(batch.data, batch.paths)):
            if images[i] is None:
                try:
                    images[i] = _decode_on_host(data).to(device, non_blocking=True)
                except (OSError, RuntimeError, SyntaxError, ValueError) as err:
                    failures.append(f"cannot decode image {path}: {_error_line(err)}")
                    continue
            if tuple(images[i].shape[1:]) != tuple(batch.sizes[i]):
                failures.append(f"cannot decode image {path}: decoded size {tuple(images[i].shape[1:])} differs "
                                f"from the header's {tuple(batch.sizes[i])}")
                images[i] = None
        return images, failures

    def render(self, images: Sequence[torch.Tensor], params: torch.Tensor, dtype: torch.dtype = torch.float32,
               memory_format: torch.memory_format = torch.contiguous_format) -> List[torch.Tensor]:
        """Views of decoded images (3, H, W) uint8 on one device, given their draws (B, n_views, 17) on the host.

        Crops of the same size are processed together. Returns one normalised (B, 3, S, S) tensor per view.
        """
        if params.shape != (len(images), self.n_crops, N_COLUMNS):
            raise ValueError(f"expected draws of shape ({len(images)}, {self.n_crops}, {N_COLUMNS}), got "
                             f"{tuple(params.shape)}")
        device, batch = images[0].device, len(images)
        if device.type == "cpu":           # the CPU's uint8 resize kernel is several times faster on H x W x 3 memory
            images = [image.unsqueeze(0).contiguous(memory_format=torch.channels_last) for image in images]
        host = params.tolist()
        mean, inv_std = _normalisation(device)
        views: List[torch.Tensor] = []
        for first, last in ((0, 2), (2, self.n_crops)):
            if first == last:
                continue
            size = self.specs[first].size
            x = torch.empty(batch * (last - first), 3, size, size, device=device)
            for k, (v, b) in enumerate((v, b) for v in range(first, last) for b in range(batch)):
                x[k] = crop_resize(images[b], host[b][v], size)
            if resizes_in_float(device):
                x.round_().clamp_(0.0, 255.0)
            x = colour_batch(x, params[:, first:last].transpose(0, 1).reshape(-1, N_COLUMNS))
            x = x.sub_(mean).mul_(inv_std).to(dtype).contiguous(memory_format=memory_format)
            views.extend(x.split(batch))
        return views

    def views(self, batch: EncodedBatch, device: torch.device | str, dtype: torch.dtype = torch.float32,
              memory_format: torch.memory_format = torch.contiguous_format,
              skip_bad_images: bool = False) -> Tuple[List[torch.Tensor], List[int], List[str]]:
        """Decode and render a collated batch on ``device``.

        Returns (views, indices of the images kept, failure messages). A file that cannot be decoded raises
        ``BadImageError`` naming it, unless ``skip_bad_images``: then it is left out and reported.
        """
        images, failures = self.decode(batch, device)
        if failures and not skip_bad_images:
            raise BadImageError(failures[0])
        kept = [i for i, image in enumerate(images) if image is not None]
        if not kept:
            return [], kept, failures
        views = self.render([images[i] for i in kept], batch.params[kept], dtype, memory_format)
        return views, kept, failures

    def __repr__(self) -> str:
        return (f"DeviceMultiCropAugmentation(2 x {self.global_size}px at scale {self.global_crops_scale}, "
                f"{self.local_crops_number} x {self.local_size}px at scale {self.local_crops_scale}, on the device)")
