"""Multi-crop augmentation (paper Sec. 3.1, "Multi-crop", and Appendix D).

Every image gives two *global* views, which both student and teacher see, and ``N`` small *local* views,
which only the student sees. Learning to predict the teacher's output for a global view from a small local
view forces "local-to-global" correspondences. Each view also gets the photometric recipe of BYOL:
flip, colour jitter, grayscale, Gaussian blur and solarization, with the per-view probabilities below.

| view        | size | crop scale   | blur p | solarize p |
|-------------|------|--------------|--------|------------|
| global 1    | 224  | (0.14, 1.0)  | 1.0    | 0.0        |
| global 2    | 224  | (0.14, 1.0)  | 0.1    | 0.2        |
| local x N=8 | 96   | (0.05, 0.14) | 0.5    | 0.0        |

The crop scales are those of the authors' ResNet-50 command; the ViT defaults are (0.4, 1) and (0.05, 0.4).
All randomness is drawn from ``torch``'s generator so that ``torch.manual_seed`` makes a view reproducible.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


class RandomGaussianBlur:
    """With probability ``p``, blur a PIL image with a radius drawn uniformly from [radius_min, radius_max]."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0):
        _check_probability("blur p", p)
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=_uniform(self.radius_min, self.radius_max)))

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(p={self.p}, radius=[{self.radius_min}, {self.radius_max}])"


class RandomSolarize:
    """With probability ``p``, invert every pixel value at or above 128 (PIL's solarize)."""

    def __init__(self, p: float, threshold: int = 128):
        _check_probability("solarization p", p)
        self.p, self.threshold = p, threshold

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return img
        return ImageOps.solarize(img, threshold=self.threshold)

    def __repr__(self) -> str:
        return f"RandomSolarize(p={self.p})"


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")


def _check_scale(name: str, scale: Sequence[float]) -> Tuple[float, float]:
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= 1, got {tuple(scale)}")
    return float(scale[0]), float(scale[1])


def normalize() -> Callable:
    """PIL image -> float tensor (3, H, W) standardised with the ImageNet mean and std."""
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class MultiCropSettings:
    """The validated settings every multi-crop implementation shares (the crops' count, sizes and scales)."""

    def __init__(self, global_crops_scale: Sequence[float], local_crops_scale: Sequence[float],
                 local_crops_number: int, global_size: int, local_size: int):
        if local_crops_number < 0:
            raise ValueError(f"local_crops_number must be >= 0, got {local_crops_number}")
        if global_size < 1 or local_size < 1:
            raise ValueError(f"crop sizes must be >= 1 pixel, got global_size={global_size}, local_size={local_size}")
        self.global_crops_scale = _check_scale("global_crops_scale", global_crops_scale)
        self.local_crops_scale = _check_scale("local_crops_scale", local_crops_scale)
        self.local_crops_number = local_crops_number
        self.global_size, self.local_size = global_size, local_size

    @property
    def n_crops(self) -> int:
        return 2 + self.local_crops_number


class MultiCropAugmentation(MultiCropSettings):
    """The DINO multi-crop recipe: PIL image -> list of ``2 + local_crops_number`` tensors.

    The list is ordered [global 1, global 2, local 1, ..., local N]; global views are
    (3, global_size, global_size) and local views (3, local_size, local_size).
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

        bicubic = T.InterpolationMode.BICUBIC
        flip_and_color_jitter = T.Compose([
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ])
        self.global_transform_1 = T.Compose([
            T.RandomResizedCrop(global_size, scale=self.global_crops_scale, interpolation=bicubic),
            flip_and_color_jitter,
            RandomGaussianBlur(p=1.0),
            normalize(),
        ])
        self.global_transform_2 = T.Compose([
            T.RandomResizedCrop(global_size, scale=self.global_crops_scale, interpolation=bicubic),
            flip_and_color_jitter,
            RandomGaussianBlur(p=0.1),
            RandomSolarize(p=0.2),
            normalize(),
        ])
        self.local_transform = T.Compose([
            T.RandomResizedCrop(local_size, scale=self.local_crops_scale, interpolation=bicubic),
            flip_and_color_jitter,
            RandomGaussianBlur(p=0.5),
            normalize(),
        ])

    def __call__(self, image: Image.Image) -> List[torch.Tensor]:
        crops = [self.global_transform_1(image), self.global_transform_2(image)]
        crops += [self.local_transform(image) for _ in range(self.local_crops_number)]
        return crops

    def __repr__(self) -> str:
        return (f"MultiCropAugmentation(2 x {self.global_size}px at scale {self.global_crops_scale}, "
                f"{self.local_crops_number} x {self.local_size}px at scale {self.local_crops_scale})")


def eval_transform(image_size: int = 224, resize_size: int | None = None) -> Callable:
    """Evaluation view: resize the short side (to 256/224 of ``image_size`` by default), center crop, normalise."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    resize_size = resize_size or round(image_size * 256 / 224)
    return T.Compose([
        T.Resize(resize_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        normalize(),
    ])


def denormalize(tensor: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of a (3, H, W) or (B, 3, H, W) tensor; values clipped to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=tensor.device).view(3, 1, 1)
    return (tensor * std + mean).clamp(0.0, 1.0)
