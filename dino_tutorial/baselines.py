"""What a learnt k-NN number has to beat, and how noisy it is (paper Sec. 3.2 protocol, k = 20, T = 0.07).

A k-NN accuracy means little alone: on ten easy classes, features that learnt nothing already score well
above chance. Three yardsticks go beside every learnt number in the course:

- ``pixel_knn``: no network at all, each image a mean-centred ``size x size`` thumbnail of its pixels;
- ``random_init_knn``: the same architecture at random initialisation, over several seeds (mean and sd);
- ``bootstrap_interval``: a confidence interval of one network's accuracy, resampling the query images.

A difference between two numbers is a finding only when it is larger than these intervals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from .augment import eval_transform
from .data import imagenet
from .knn import extract_features, knn_hits
from .model import build_backbone


@dataclass
class Interval:
    """A k-NN top-1 accuracy (percent) with a confidence interval ``[low, high]`` at ``level``."""
    top1: float
    low: float
    high: float
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.top1:.1f}% [{self.low:.1f}, {self.high:.1f}]"


def bootstrap_mean(values: torch.Tensor, samples: int = 2000, level: float = 0.95,
                   seed: int = 0) -> Tuple[float, float, float]:
    """(mean, low, high): a percentile bootstrap interval of the mean of ``values`` (M,), resampling its entries.

    Each resample draws M values with replacement; the interval holds the central ``level`` of the resampled
    means. Over test images it measures the noise of a finite test set, not the noise of training (that is
    what seeds are for).
    """
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"values must be a non-empty 1-d tensor of per-image results, got shape "
                         f"{tuple(values.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    values = values.double()
    index = torch.randint(len(values), (samples, len(values)), generator=generator)
    means = values[index].mean(dim=1)
    alpha = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return values.mean().item(), low, high


def bootstrap_interval(hits: torch.Tensor, samples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """An accuracy (percent) with its bootstrap interval over the query images: ``hits`` (M,) bool, one per query."""
    if hits.ndim != 1 or len(hits) == 0:
        raise ValueError(f"hits must be a non-empty 1-d tensor of per-query results, got shape {tuple(hits.shape)}")
    mean, low, high = bootstrap_mean(hits.double(), samples, level, seed)
    return Interval(100.0 * mean, 100.0 * low, 100.0 * high, level)


def _loader(dataset, batch_size: int = 128, num_workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)


def split_features(backbone: nn.Module, root, image_size: int, device: torch.device | str = "cpu",
                   per_class: Optional[int] = None, batch_size: int = 128,
                   num_workers: int = 0) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (features, labels), "val": (...)}`` of a frozen backbone on centre crops of ``image_size``."""
    backbone = backbone.to(device)
    return {split: extract_features(backbone, _loader(imagenet(root, split, eval_transform(image_size),
                                                               per_class=per_class), batch_size, num_workers),
                                    device)
            for split in ("train", "val")}


def knn_interval(features: Dict[str, Tuple[torch.Tensor, torch.Tensor]], k: int = 20, T: float = 0.07,
                 samples: int = 2000, level: float = 0.95) -> Interval:
    """k-NN top-1 of ``split_features``' output (train as the bank, val as queries) with its bootstrap interval."""
    hits, _ = knn_hits(*features["train"], *features["val"], k=k, T=T)
    return bootstrap_interval(hits, samples, level)


def pixel_transform(size: int = 16) -> Callable:
    """An image as its raw pixels: the short side resized to ``size``, centre crop, values in [0, 1], flattened."""
    if size < 1:
        raise ValueError(f"thumbnail size must be >= 1, got {size}")
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                      T.CenterCrop(size), T.ToTensor(), T.Lambda(torch.flatten)])


def pixel_features(root, size: int = 16, per_class: Optional[int] = None,
                   num_workers: int = 0) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Thumbnail features of both splits, centred by the mean thumbnail of the training split.

    Centring matters: k-NN compares cosines, and uncentred pixel vectors all point near the mean image.
    """
    features = {}
    for split in ("train", "val"):
        dataset = imagenet(root, split, pixel_transform(size), per_class=per_class)
        features[split] = extract_features(nn.Identity(), _loader(dataset, 256, num_workers), "cpu")
    mean = features["train"][0].mean(dim=0, keepdim=True)
    return {split: (f - mean, labels) for split, (f, labels) in features.items()}


def pixel_knn(root, size: int = 16, k: int = 20, T: float = 0.07, per_class: Optional[int] = None,
              samples: int = 2000) -> Interval:
    """k-NN top-1 of raw ``size x size`` thumbnails (no network): the floor a learnt feature must clear."""
    return knn_interval(pixel_features(root, size, per_class), k, T, samples)


@dataclass
class SeedSpread:
    """k-NN top-1 (percent) of one architecture at random initialisation, one value per seed."""
    values: Tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def sd(self) -> float:
        if len(self.values) < 2:
            return 0.0
        return (sum((v - self.mean) ** 2 for v in self.values) / (len(self.values) - 1)) ** 0.5

    def __str__(self) -> str:
        return f"{self.mean:.1f} +- {self.sd:.1f}% (n = {len(self.values)} seeds)"


def random_init_knn(arch: str, root, image_size: int, seeds: Sequence[int] = range(5), small_images: bool = False,
                    k: int = 20, T: float = 0.07, device: torch.device | str = "cpu",
                    per_class: Optional[int] = None) -> SeedSpread:
    """k-NN top-1 of ``arch`` at random initialisation (``build_backbone``), once per seed: mean and sd.

    The network is used as DINO's k-NN uses a trained one: eval mode, so BatchNorm applies its initial running
    statistics (mean 0, variance 1).
    """
    if len(seeds) < 1:
        raise ValueError("random_init_knn needs at least one seed")
    values = []
    for seed in seeds:
        torch.manual_seed(seed)
        backbone, _ = build_backbone(arch, small_images=small_images)
        features = split_features(backbone, root, image_size, device, per_class)
        hits, _ = knn_hits(*features["train"], *features["val"], k=k, T=T)
        values.append(100.0 * int(hits.sum()) / len(hits))
    return SeedSpread(tuple(values))
