"""Where are the objects? Reading a ResNet's last feature map (paper Sec. 4.2, Fig. 1 and Fig. 3).

The paper finds that the self-attention of a DINO Vision Transformer segments the main object of an image
although no label or mask was ever used. A ResNet has no attention; what it has is its last convolutional
feature map, (B, C, h, w) before the global average pool: C = 2048 and h = w = 7 for a 224 px image on
ResNet-50 (one position per 32 x 32 pixel cell). This module reads that map in three label-free ways:

- ``pca_rgb``: the first principal components of all positions of a batch, shown as colours; positions that
  the network describes alike get alike colours (the visualisation of DINOv2, Oquab et al. 2023, Fig. 1).
- ``foreground_mask``: the first component thresholded at zero (co-localisation by Deep Descriptor
  Transforming, Wei et al. 2017), or the feature-norm ``saliency`` thresholded at its mean (the aggregation
  map of SCDA, Wei et al. 2017).
- ``masked_mean``: a feature pooled over a mask only, to test what the mask holds.

``mask_iou`` scores a mask against another, ``upsample`` brings any map to the image's size, and ``densify``
trades the ResNet's coarse 32-pixel grid for an 8- or 16-pixel one without retraining. ``saliency_jaccard``
scores the label-free masks against human masks of the salient object (the paper scores its attention maps
by Jaccard similarity, Sec. 4.2.1), beside ``centred_ellipse``, the fixed prior that a mask must beat.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


@torch.no_grad()
def feature_map(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last convolutional feature map of a torchvision ResNet: conv1 ... layer4, no avgpool, no fc.

    images (B, 3, H, W) -> (B, C, h, w), with h = ceil(H / 32) for the standard stem (H / 8 for the
    ``small_images`` stem of ``build_backbone``). Its spatial mean is the backbone's pooled feature. The
    backbone's mode is left as it is: call ``backbone.eval()`` first so BatchNorm uses running statistics.
    """
    missing = [name for name in RESNET_STAGES if not hasattr(backbone, name)]
    if missing:
        raise ValueError(f"feature_map needs a torchvision ResNet; this module has no {', '.join(missing)}")
    x = images
    for name in RESNET_STAGES:
        x = getattr(backbone, name)(x)
    return x


def densify(backbone: nn.Module, output_stride: int = 8) -> nn.Module:
    """A copy of a torchvision ResNet whose last stages keep their resolution: the same filters, sampled densely.

    The stride of ``layer4`` (``output_stride=16``), or of ``layer3`` and ``layer4`` (``output_stride=8``), is
    set to 1 and every later 3 x 3 convolution is dilated by the factor that stride removed (the "a trous"
    trick of DeepLab, Chen et al. 2017). Nothing is retrained: the dense map holds the original map at every
    (32 / output_stride)-th position, and in between the network's response to shifted images. A 224 px image
    then gives a 28 x 28 map (output stride 8) instead of 7 x 7, at the scale the network was trained on.
    """
    stages = {32: (), 16: ("layer4",), 8: ("layer3", "layer4")}
    if output_stride not in stages:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    net = copy.deepcopy(backbone)
    dilation = 1
    for name in stages[output_stride]:
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(getattr(net, name)):
            for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
                if conv.stride == (2, 2):              # the strided 3 x 3 and the 1 x 1 shortcut of block 0
                    conv.stride = (1, 1)
                    if conv.kernel_size == (3, 3):     # it still reads the input at the previous spacing
                        conv.dilation, conv.padding = (previous, previous), (previous, previous)
                elif conv.kernel_size == (3, 3):
                    conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
    return net


def _positions(feature_maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B * h * w, C): one row per spatial position, images one after another."""
    if feature_maps.ndim != 4:
        raise ValueError(f"feature maps must be (B, C, h, w), got shape {tuple(feature_maps.shape)}")
    return feature_maps.permute(0, 2, 3, 1).reshape(-1, feature_maps.shape[1])


def principal_components(feature_maps: torch.Tensor, n_components: int = 3, centre: str = "batch") -> torch.Tensor:
    """Projections of every position on the first principal components of all positions of the batch.

    (B, C, h, w) -> (B, h, w, n_components), in float32. The positions of all images are pooled (so a colour
    means the same thing in every image) and centred: by the mean of the whole batch (``centre="batch"``), or
    by each image's own mean (``centre="image"``, so that differences *between* images do not count and the
    components describe contrasts within an image). They are projected on the top principal directions: the
    eigenvectors of the (C, C) covariance, which are the right-singular vectors of the centred (B h w, C)
    matrix (computed this way because C is far smaller than B h w). A component's sign is arbitrary; it is
    fixed so that its largest loading is positive, which makes the result reproducible.
    """
    B, C, h, w = feature_maps.shape
    if not 1 <= n_components <= min(C, B * h * w):
        raise ValueError(f"n_components must be in [1, {min(C, B * h * w)}], got {n_components}")
    if centre not in ("batch", "image"):
        raise ValueError(f"centre must be 'batch' or 'image', got {centre!r}")
    x = feature_maps.double()
    if centre == "image":
        x = x - x.mean(dim=(2, 3), keepdim=True)
    x = _positions(x)
    x = x - x.mean(dim=0)
    _, vectors = torch.linalg.eigh(x.T @ x)                        # eigenvalues in ascending order
    directions = vectors[:, -n_components:].flip(1).T              # (n, C), largest variance first
    largest = directions.abs().argmax(dim=1)
    directions = directions * directions.gather(1, largest[:, None]).sign()
    return (x @ directions.T).float().reshape(B, h, w, n_components)


def pca_rgb(feature_maps: torch.Tensor, n_components: int = 3) -> torch.Tensor:
    """``principal_components`` scaled to [0, 1], each component by its min and max over the whole batch.

    (B, C, h, w) -> (B, h, w, n_components); with 3 components, an RGB image for ``imshow`` (upsample first).
    """
    p = principal_components(feature_maps, n_components)
    low = p.amin(dim=(0, 1, 2))
    high = p.amax(dim=(0, 1, 2))
    return (p - low) / (high - low).clamp_min(1e-12)


def saliency(feature_maps: torch.Tensor) -> torch.Tensor:
    """Class-agnostic saliency: the L2 norm of the feature at each position, min-max scaled per image.

    (B, C, h, w) -> (B, h, w) in [0, 1]; 1 at each image's strongest position (an image whose norms are all
    equal gets zeros). After the last ReLU every feature is >= 0, so a large norm means many channels fire.
    """
    norm = feature_maps.float().norm(dim=1)                        # (B, h, w)
    low = norm.amin(dim=(1, 2), keepdim=True)
    high = norm.amax(dim=(1, 2), keepdim=True)
    return (norm - low) / (high - low).clamp_min(1e-12)


def _centre_weight(h: int, w: int) -> torch.Tensor:
    """(h, w): +1 on the central half of each axis, -1 elsewhere (a border with no centre gets -1)."""
    rows = (torch.arange(h) + 0.5) / h
    cols = (torch.arange(w) + 0.5) / w
    inside = ((rows - 0.5).abs() < 0.25)[:, None] & ((cols - 0.5).abs() < 0.25)[None, :]
    return inside.double() * 2 - 1


def foreground_mask(feature_maps: torch.Tensor, method: str = "pca", threshold: Optional[float] = None,
                    orient: str = "minority", centre: str = "batch") -> torch.Tensor:
    """A label-free foreground mask per image. (B, C, h, w) -> (B, h, w) bool.

    ``method="pca"``: the first principal component of the batch's positions (``principal_components``),
    foreground where it exceeds ``threshold`` (default 0, the batch mean). The sign of a component is
    arbitrary, so it is oriented first: ``orient="minority"`` makes the foreground the smaller part of the
    batch's positions (objects cover less of a photo than the rest); ``orient="centre"`` makes it the side
    with the larger values in the central half of the images (photographers centre their subject). ``centre``
    is passed to ``principal_components``. ``method="norm"``: ``saliency`` above ``threshold`` (default: each image's mean saliency); no orientation.
    """
    if method == "norm":
        s = saliency(feature_maps)
        limit = s.mean(dim=(1, 2), keepdim=True) if threshold is None else threshold
        return s > limit
    if method != "pca":
        raise ValueError(f"method must be 'pca' or 'norm', got {method!r}")
    p = principal_components(feature_maps, 1, centre)[..., 0].double()    # (B, h, w), mean 0 over the batch
    if orient == "minority":
        flip = (p > 0).double().mean() > 0.5
    elif orient == "centre":
        flip = (p * _centre_weight(*p.shape[1:])).sum() < 0
    else:
        raise ValueError(f"orient must be 'minority' or 'centre', got {orient!r}")
    if flip:
        p = -p
    return p > (0.0 if threshold is None else threshold)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Jaccard index |pred & target| / |pred | target| per mask: (B, h, w) bool twice -> (B,) float.

    Two empty masks agree perfectly (IoU 1).
    """
    if pred.shape != target.shape:
        raise ValueError(f"masks must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.bool().flatten(1), target.bool().flatten(1)
    intersection = (pred & target).sum(dim=1).float()
    union = (pred | target).sum(dim=1).float()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def masked_mean(feature_maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The mean feature over the positions of each mask: (B, C, h, w), (B, h, w) bool -> (B, C).

    With an all-true mask this is the backbone's global average pool; an empty mask gives a zero vector.
    """
    if masks.shape != (feature_maps.shape[0], *feature_maps.shape[2:]):
        raise ValueError(f"masks {tuple(masks.shape)} do not match feature maps {tuple(feature_maps.shape)}")
    weights = masks.to(feature_maps.dtype)[:, None]                 # (B, 1, h, w)
    total = (feature_maps * weights).sum(dim=(2, 3))
    return total / weights.sum(dim=(2, 3)).clamp_min(1)


def upsample(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize per-position maps to ``size`` = (H, W) pixels, for drawing them over the image.

    (B, h, w) or (B, h, w, K) -> (B, H, W) or (B, H, W, K). Bool masks use nearest neighbours (each position
    becomes a block of pixels and stays a mask); other maps are interpolated bilinearly.
    """
    if maps.ndim not in (3, 4):
        raise ValueError(f"maps must be (B, h, w) or (B, h, w, K), got shape {tuple(maps.shape)}")
    x = maps[..., None] if maps.ndim == 3 else maps
    x = x.permute(0, 3, 1, 2)                                      # (B, K, h, w)
    if maps.dtype == torch.bool:
        out = F.interpolate(x.float(), size=size, mode="nearest") > 0.5
    else:
        out = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    out = out.permute(0, 2, 3, 1)
    return out[..., 0] if maps.ndim == 3 else out


def centred_ellipse(h: int, w: int, fraction: float = 0.6) -> torch.Tensor:
    """(h, w) bool: a centred ellipse whose axes are ``fraction`` of the height and width (the photographer's prior)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rows = ((torch.arange(h) + 0.5) / h - 0.5) / (fraction / 2)
    cols = ((torch.arange(w) + 0.5) / w - 0.5) / (fraction / 2)
    return rows[:, None] ** 2 + cols[None, :] ** 2 <= 1


def saliency_pairs(folder) -> List[Tuple[Path, Path]]:
    """(image, mask) paths of a salient-object set laid out as ``images/<name>.jpg`` and ``masks/<name>.png``."""
    folder = Path(folder)
    if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
        raise FileNotFoundError(f"{folder} has no images/ and masks/ folders: it is not a salient-object set "
                                f"such as duts-te-500")
    pairs = [(image, folder / "masks" / (image.stem + ".png")) for image in sorted((folder / "images").glob("*.jpg"))]
    missing = [image.name for image, mask in pairs if not mask.is_file()]
    if missing or not pairs:
        raise FileNotFoundError(f"{folder}: {len(missing)} image(s) without a mask (first: {missing[:1]})"
                                if missing else f"{folder}/images holds no .jpg images")
    return pairs


@torch.no_grad()
def saliency_jaccard(backbone: Optional[nn.Module], folder, size: int = 128, method: str = "pca",
                     batch_size: int = 50, limit: Optional[int] = None, **mask_options) -> torch.Tensor:
    """Jaccard index of a label-free foreground mask with the human mask, per image: (M,) float.

    Each image is resized to ``size`` x ``size``, its ``feature_map`` turned into a ``foreground_mask``
    (``method`` and ``mask_options`` as there, the PCA over each batch of ``batch_size`` images), the mask
    brought back to the image's own size with ``upsample`` and compared with the ground truth (foreground where
    the mask's grey value is above 127). ``backbone=None`` scores ``centred_ellipse`` instead, the floor.
    """
    import numpy as np
    from PIL import Image

    from .augment import normalize

    to_tensor = normalize()
    pairs = saliency_pairs(folder)[:limit]
    scores = []
    if backbone is not None:
        backbone.eval()
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        truths = [torch.from_numpy(np.asarray(Image.open(m).convert("L")) > 127) for _, m in batch]
        if backbone is None:
            predicted = [centred_ellipse(*t.shape) for t in truths]
        else:
            images = torch.stack([to_tensor(Image.open(i).convert("RGB").resize((size, size), Image.BICUBIC))
                                  for i, _ in batch])
            masks = foreground_mask(feature_map(backbone, images), method=method, **mask_options)
            predicted = [upsample(m[None], tuple(t.shape))[0] for m, t in zip(masks, truths)]
        scores += [mask_iou(p[None], t[None])[0] for p, t in zip(predicted, truths)]
    return torch.stack(scores)
