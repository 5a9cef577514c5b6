"""A faster multi-crop data path for the CPU: the same views as ``augment.MultiCropAugmentation``, as uint8.

``FastMultiCropAugmentation`` draws every view's random parameters exactly as the reference recipe does
(torchvision's RandomResizedCrop sampling, flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) with p = 0.8 in a
random order, grayscale 0.2, Gaussian blur with radius U[0.1, 2] and p = 1.0 / 0.1 / 0.5, solarization 0.2 on
the second global view) and renders them with fewer, cheaper operations:

1. The crop boxes are drawn from the image header before decoding. When every box is at least ``d`` times
   larger than its output in both directions, the JPEG is decoded at ``1/d`` scale (``Image.draft``,
   d in {2, 4, 8}) and no view loses resolution. This pays on large photos; ImageNet's typical 500 x 375
   photos rarely allow it with 96 px local crops of 5-14% of the image.
2. Crop and resize are one antialiased bicubic ``torch.nn.functional.interpolate`` on uint8 pixels (torch
   >= 2.1), a vectorised kernel that reproduces PIL's bicubic filter to within 1-2 grey levels.
3. Colour jitter, grayscale, blur and solarization run on the small float32 crop with a handful of
   vectorised torch operations; a grayscale view is blurred as one channel; the flip is applied last to the
   uint8 result (every other operation commutes with it).
4. Views come out as uint8 tensors (3, H, W); the trainer normalises the batch on the device with
   ``normalize_uint8``, which moves 4x fewer bytes host-to-device than float views.

The blur uses PIL's own kernel (three "extended box" passes whose variance is radius**2), applied as one
separable filter with replicated edges; the hue shift rotates HSV hue continuously instead of through PIL's
8-bit HSV image. Both change pixel values by a grey level or two, not the distribution of views.
All randomness comes from ``torch``'s generator, so ``torch.manual_seed`` makes the views reproducible.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from typing import List, NamedTuple, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropSettings
from .data import BadImageError

ImageInput = Union[str, "os.PathLike[str]", Image.Image]

# Luma weights of PIL's "L" conversion (ITU-R 601-2), used by grayscale, contrast and saturation.
_LUMA = (0.299, 0.587, 0.114)
_LUMA_T = torch.tensor(_LUMA).view(1, 3)
_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)    # red, green, blue positions on the hexagon
_RATIO = (3.0 / 4.0, 4.0 / 3.0)              # RandomResizedCrop's aspect-ratio range
_CROP_ATTEMPTS = 10                          # as torchvision: 10 tries, then a central crop
# Uniform numbers drawn per view: 2 per crop attempt, 2 for the position, flip, jitter on/off, 4 for the
# jitter order, 4 jitter factors, grayscale, blur on/off, blur radius, solarize.
_DRAWS = 2 * _CROP_ATTEMPTS + 2 + 1 + 1 + 4 + 4 + 1 + 1 + 1 + 1
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


class ViewSpec(NamedTuple):
    """What kind of view: output size, crop scale range and the blur / solarization probabilities."""
    size: int
    scale: Tuple[float, float]
    blur_p: float
    solarize_p: float


class ViewParams(NamedTuple):
    """The random draws of one view. The crop box is in pixels of the full-size image."""
    top: int
    left: int
    height: int
    width: int
    flip: bool
    jitter: bool
    order: Tuple[int, int, int, int]          # BRIGHTNESS, CONTRAST, SATURATION, HUE in application order
    brightness: float                         # factor in [0.6, 1.4]
    contrast: float                           # factor in [0.6, 1.4]
    saturation: float                         # factor in [0.8, 1.2]
    hue: float                                # shift in [-0.1, 0.1] of a full turn
    grayscale: bool
    blur_radius: float                        # 0.0 means no blur
    solarize: bool


def sample_crop(width: int, height: int, scale: Tuple[float, float], u: Sequence[float]) -> Tuple[int, int, int, int]:
    """RandomResizedCrop's (top, left, height, width) from ``2 * 10 + 2`` uniform numbers in [0, 1).

    Same algorithm as torchvision: up to 10 tries of an area fraction in ``scale`` and a log-uniform aspect
    ratio in [3/4, 4/3]; the first box that fits is placed uniformly; if none fits, a central crop.
    """
    area = width * height
    log_lo, log_hi = math.log(_RATIO[0]), math.log(_RATIO[1])
    for attempt in range(_CROP_ATTEMPTS):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[2 * attempt])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * attempt + 1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2 * _CROP_ATTEMPTS] * (height - h + 1))
            left = int(u[2 * _CROP_ATTEMPTS + 1] * (width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < _RATIO[0]:
        w, h = width, int(round(width / _RATIO[0]))
    elif in_ratio > _RATIO[1]:
        w, h = int(round(height * _RATIO[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def blur_kernel(radius: float, passes: int = 3) -> torch.Tensor:
    """The 1-d kernel of PIL's ``GaussianBlur(radius)``: ``passes`` extended box filters of variance radius**2.

    PIL (after Gwosdek et al. 2011) splits the variance over the passes and gives each box a fractional
    end weight so that the total variance is exactly ``radius ** 2``.
    """
    sigma2 = radius * radius / passes
    length = math.sqrt(12.0 * sigma2 + 1.0)
    inner = math.floor((length - 1.0) / 2.0)
    frac = (2 * inner + 1) * (inner * (inner + 1) - 3 * sigma2) / (6 * (sigma2 - (inner + 1) ** 2))
    box_radius = inner + frac
    whole = int(box_radius)
    edge = box_radius - whole
    box = np.array([edge] + [1.0] * (2 * whole + 1) + [edge])
    box /= box.sum()
    kernel = box
    for _ in range(passes - 1):
        kernel = np.convolve(kernel, box)
    return torch.from_numpy(kernel.astype(np.float32))


# The colour operations below take one image (3, H, W) with a float factor, or a batch (N, 3, H, W) with one
# factor per image as a tensor (N, 1, 1, 1) (the batched device path, ``device_augment``); values in [0, 255].
Factor = Union[float, torch.Tensor]


@functools.lru_cache(maxsize=16)
def _constant(name: str, device: torch.device) -> torch.Tensor:
    """A module constant on ``device``, copied there once (a copy per call would make the host wait)."""
    return {"luma": _LUMA_T, "hue_offsets": _HUE_OFFSETS}[name].to(device)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) float -> (..., 1, H, W) luma."""
    weights = _LUMA_T if x.device.type == "cpu" else _constant("luma", x.device)
    return (weights @ x.reshape(*x.shape[:-2], -1)).view(*x.shape[:-3], 1, *x.shape[-2:])


def adjust_brightness(x: torch.Tensor, factor: Factor) -> torch.Tensor:
    return x.mul_(factor).clamp_(0.0, 255.0)


def adjust_contrast(x: torch.Tensor, factor: Factor) -> torch.Tensor:
    """Blend with the image's mean luma (PIL's ImageEnhance.Contrast)."""
    mean = _luma(x.mean(dim=(-2, -1), keepdim=True))          # the luma of the mean colour is the mean luma
    return x.mul_(factor).add_(mean * (1.0 - factor)).clamp_(0.0, 255.0)


def adjust_saturation(x: torch.Tensor, factor: Factor) -> torch.Tensor:
    """Blend with the per-pixel luma (PIL's ImageEnhance.Color)."""
    gray = _luma(x).mul_(1.0 - factor)
    return x.mul_(factor).add_(gray).clamp_(0.0, 255.0)


def adjust_hue(x: torch.Tensor, shift: Factor) -> torch.Tensor:
    """Rotate the HSV hue of (..., 3, H, W) images with values in [0, 255] by ``shift`` of a turn.

    Value (the max) and chroma c (max - min) are kept. The hue is a position u on the colour hexagon
    (red at 0, green at 2, blue at 4, period 6); output channel n (red, green, blue: n = 5, 3, 1) is
    ``max - c * clamp(2 - d, 0, 1)`` where d is the distance around the hexagon from ``u + 6 * shift + n`` to 2.
    """
    r, g, b = x.unbind(-3)
    high = x.amax(dim=-3)
    chroma = high - x.amin(dim=-3)
    # u * c: (g - b) where red is the max, 2c + (b - r) where green is, 4c + (r - g) where blue is; u in [-1, 5]
    position = torch.where(r == high, g - b, torch.where(g == high, (b - r).add_(chroma, alpha=2.0),
                                                         (r - g).add_(chroma, alpha=4.0)))
    position.div_(chroma.clamp(min=1e-6))    # a grey pixel has c = 0 and u = 0: its output is `high`
    offsets = _HUE_OFFSETS if x.device.type == "cpu" else _constant("hue_offsets", x.device)
    distance = (position.unsqueeze(-3) + (offsets + (6.0 * shift - 2.0))).abs_()           # in [0, 8.6]
    distance = torch.minimum(distance, (distance - 6.0).abs_())                             # around the hexagon
    weight = distance.neg_().add_(2.0).clamp_(0.0, 1.0)
    return weight.mul_(chroma.unsqueeze(-3)).neg_().add_(high.unsqueeze(-3))


@functools.lru_cache(maxsize=64)
def _replicated_columns(n: int, half: int) -> torch.Tensor:
    """(n, 2 * half + 1) column of each tap of a kernel centred on every pixel, edges replicated."""
    return (torch.arange(n).unsqueeze(1) + torch.arange(-half, half + 1)).clamp_(0, n - 1)


def _blur_matrix(kernel: torch.Tensor, n: int) -> torch.Tensor:
    """The (n, n) matrix that filters a line of n pixels with ``kernel`` (edges replicated)."""
    columns = _replicated_columns(n, len(kernel) // 2)
    return torch.zeros(n, n).scatter_add_(1, columns, kernel.expand(n, -1))


def gaussian_blur(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Separable blur of a (C, H, W) float image with PIL's kernel for ``radius``; edges are replicated.

    Small images (96 px views) are filtered as two matrix products, larger ones by shifted additions.
    """
    kernel = blur_kernel(radius)
    channels, height, width = x.shape
    side = max(height, width)
    if side <= 128 and channels * side <= 288:           # where the two products measured faster
        return _blur_matrix(kernel, height) @ x @ _blur_matrix(kernel, width).T
    weights = kernel.tolist()
    half = len(weights) // 2
    padded = F.pad(x.unsqueeze(0), (half, half, 0, 0), mode="replicate")[0]
    out = padded[..., half:half + width] * weights[half]
    for t in range(1, half + 1):
        out.add_(padded[..., half + t:half + t + width], alpha=weights[half + t])
        out.add_(padded[..., half - t:half - t + width], alpha=weights[half - t])
    padded = F.pad(out.unsqueeze(0), (0, 0, half, half), mode="replicate")[0]
    out = padded[:, half:half + height] * weights[half]
    for t in range(1, half + 1):
        out.add_(padded[:, half + t:half + t + height], alpha=weights[half + t])
        out.add_(padded[:, half - t:half - t + height], alpha=weights[half - t])
    return out


_JITTER = {BRIGHTNESS: ("brightness", adjust_brightness), CONTRAST: ("contrast", adjust_contrast),
           SATURATION: ("saturation", adjust_saturation), HUE: ("hue", adjust_hue)}


def render_view(pixels: torch.Tensor, params: ViewParams, size: int, box_scale: float = 1.0) -> torch.Tensor:
    """One view from decoded pixels (1, 3, H, W) uint8 (any strides) -> (3, size, size) uint8.

    ``box_scale`` is the decoding scale (2 when the JPEG was decoded at half size): the crop box, given in
    full-size pixels, is divided by it.
    """
    top, left = round(params.top / box_scale), round(params.left / box_scale)
    bottom = max(top + 1, round((params.top + params.height) / box_scale))
    right = max(left + 1, round((params.left + params.width) / box_scale))
    crop = pixels[:, :, top:bottom, left:right]
    view = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    if params.jitter or params.grayscale or params.blur_radius > 0:
        x = view.float()
        if params.jitter:
            for op in params.order:
                name, fn = _JITTER[op]
                x = fn(x, getattr(params, name))
        if params.grayscale:
            x = _luma(x)                     # one channel from here on: the blur costs a third
        if params.blur_radius > 0:
            x = gaussian_blur(x, params.blur_radius)
        # values are in [0, 255] (every step clamps or averages); truncating x + 0.5 rounds. numpy's cast is
        # several times faster than torch's float -> uint8 conversion on the CPU.
        out = x.add_(0.5).numpy().astype(np.uint8)
    else:
        out = view.numpy()
    if params.solarize:
        out = out ^ ((out >> 7) * np.uint8(255))          # v >= 128 becomes 255 - v (PIL's solarize at 128)
    if params.flip:
        out = out[..., ::-1]
    if out.shape[0] == 1:                                 # a grayscale view has one channel until here
        out = np.broadcast_to(out, (3, size, size))
    return torch.from_numpy(np.ascontiguousarray(out))


def _pixels(image: Image.Image) -> torch.Tensor:
    """A PIL image -> (1, 3, H, W) uint8 tensor whose memory is H x W x 3 (the layout the resize prefers)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    with warnings.catch_warnings():          # the array is read-only; it is only ever read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(rgb)).permute(2, 0, 1).unsqueeze(0)


def _draft(img: Image.Image, reduction: int) -> float:
    """Ask libjpeg to decode ``img`` at 1/reduction scale; returns the scale obtained (1.0 if not a JPEG)."""
    if reduction <= 1:
        return 1.0
    full_width = img.width
    result = img.draft("RGB", (img.width // reduction, img.height // reduction))
    if not result:
        return 1.0
    return full_width / result[1][2]


class FastMultiCropAugmentation(MultiCropSettings):
    """The DINO multi-crop recipe on a file path or PIL image -> list of ``2 + N`` uint8 tensors (3, H, W).

    Same constructor, same views and same order as ``MultiCropAugmentation`` ([global 1, global 2, local 1,
    ..., local N]), but not normalised: apply ``normalize_uint8`` to the batch (on the device).
    Given a path, the file is opened here and decoded at a reduced scale when every crop allows it; a file
    that cannot be read raises ``BadImageError`` naming it.
    """

    def __init__(
        self,
        global_crops_scale: Sequence[float] = (0.14, 1.0),
        local_crops_scale: Sequence[float] = (0.05, 0.14),
        local_crops_number: int = 8,
        global_size: int = 224,
        local_size: int = 96,
    ):
        super().__init__(global_crops_scale, local_crops_scale, local_crops_number, global_size, local_size)
        self.specs: List[ViewSpec] = [
            ViewSpec(global_size, self.global_crops_scale, blur_p=1.0, solarize_p=0.0),
            ViewSpec(global_size, self.global_crops_scale, blur_p=0.1, solarize_p=0.2),
        ] + [ViewSpec(local_size, self.local_crops_scale, blur_p=0.5, solarize_p=0.0)] * local_crops_number

    def sample(self, width: int, height: int) -> List[ViewParams]:
        """The random parameters of every view for an image of ``width`` x ``height`` pixels."""
        draws = torch.rand(len(self.specs), _DRAWS, dtype=torch.float64).tolist()
        return [self._view_params(spec, width, height, u) for spec, u in zip(self.specs, draws)]

    @staticmethod
    def _view_params(spec: ViewSpec, width: int, height: int, u: List[float]) -> ViewParams:
        top, left, h, w = sample_crop(width, height, spec.scale, u)
        i = 2 * _CROP_ATTEMPTS + 2
        flip, jitter = u[i] < 0.5, u[i + 1] < 0.8
        order = tuple(sorted(range(4), key=lambda j: u[i + 2 + j]))          # a uniform random permutation
        brightness, contrast = 0.6 + 0.8 * u[i + 6], 0.6 + 0.8 * u[i + 7]
        saturation, hue = 0.8 + 0.4 * u[i + 8], -0.1 + 0.2 * u[i + 9]
        grayscale = u[i + 10] < 0.2
        blur_radius = 0.1 + 1.9 * u[i + 12] if u[i + 11] < spec.blur_p else 0.0
        solarize = u[i + 13] < spec.solarize_p
        return ViewParams(top, left, h, w, flip, jitter, order, brightness, contrast, saturation, hue,
                          grayscale, blur_radius, solarize)

    def draft_scale(self, params: Sequence[ViewParams]) -> int:
        """The largest JPEG decoding reduction (1, 2, 4 or 8) that keeps every crop at least its output size."""
        room = min(min(p.width, p.height) / spec.size for p, spec in zip(params, self.specs))
        return next((d for d in (8, 4, 2) if room >= d), 1)

    def __call__(self, image: ImageInput) -> List[torch.Tensor]:
        if isinstance(image, Image.Image):
            params = self.sample(*image.size)
            pixels, scale = _pixels(image), 1.0
        else:
            try:
                with Image.open(image) as img:
                    params = self.sample(*img.size)
                    scale = _draft(img, self.draft_scale(params)) if params else 1.0
                    img.load()
                    pixels = _pixels(img)
            except (OSError, SyntaxError, ValueError) as err:
                raise BadImageError(f"cannot read image {image}: {err}") from err
        return [render_view(pixels, p, spec.size, scale) for p, spec in zip(params, self.specs)]

    def __repr__(self) -> str:
        return (f"FastMultiCropAugmentation(2 x {self.global_size}px at scale {self.global_crops_scale}, "
                f"{self.local_crops_number} x {self.local_size}px at scale {self.local_crops_scale}, uint8)")


def normalize_uint8(batch: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images (..., 3, H, W) -> ``(x / 255 - mean) / std`` in ``dtype``, on the batch's device.

    A conversion and one multiply-add per element; the memory format (e.g. channels_last) of ``batch`` is kept.
    """
    if batch.dtype != torch.uint8:
        raise TypeError(f"normalize_uint8 expects uint8 images, got {batch.dtype}")
    if batch.ndim < 3 or batch.shape[-3] != len(mean):
        raise ValueError(f"expected images (..., {len(mean)}, H, W), got shape {tuple(batch.shape)}")
    shift, scale = _affine(batch.device, dtype, tuple(mean), tuple(std))
    return torch.addcmul(shift, batch.to(dtype), scale)


@functools.lru_cache(maxsize=16)
def _affine(device: torch.device, dtype: torch.dtype, mean: tuple, std: tuple) -> Tuple[torch.Tensor, torch.Tensor]:
    """(-mean / std, 1 / (255 std)), (3, 1, 1), made on ``device`` once: a copy per call would make the host wait."""
    mean_t = torch.tensor(mean, dtype=dtype, device=device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=dtype, device=device).view(-1, 1, 1)
    return -mean_t / std_t, 1.0 / (255.0 * std_t)
