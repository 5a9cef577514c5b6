"""Linear evaluation of frozen features: the paper's main metric (Sec. 4.1, Table 2, Appendix).

The backbone stays frozen. A single linear layer ``logits = W f + b`` is trained with labels on top of the
pooled backbone features ``f`` and its top-1 accuracy on the validation set is reported. The authors train
it for 100 epochs with SGD (momentum 0.9, no weight decay, the learning rate cosine-annealed to zero) on
random resized crops and flips of the training images, and evaluate on a central crop.

Two simplifications make it cheap enough for a course, and both are stated wherever a number is reported:

- **Precomputed features.** Every image is embedded once, on the same central crop as the k-NN evaluation
  (``knn.extract_features``); an epoch is then a pass over an (N, D) matrix instead of N backbone forward
  passes. The training images are therefore not augmented, which usually costs a little accuracy.
- **Standardised features.** Each feature dimension is shifted and scaled by the training set's mean and
  standard deviation before the layer: a BatchNorm without learnable parameters whose statistics are frozen
  after one pass. One learning rate then suits any backbone, whatever the scale of its features. The
  standardisation is folded into the returned layer, so that layer applies to raw features.

Minimising the cross-entropy of a linear layer is a convex problem, so the layer starts from zeros; the
seed only decides the order of the mini-batches.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .schedules import cosine_schedule

MOMENTUM = 0.9          # SGD momentum of the authors' linear evaluation


def _check_pair(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    """Raise a ValueError naming ``name`` unless features is (N, D) with N >= 1, finite, and labels is (N,)."""
    if features.ndim != 2:
        raise ValueError(f"{name}_features must be a 2-D (N, D) tensor, got shape {tuple(features.shape)}")
    if labels.ndim != 1 or len(labels) != len(features):
        raise ValueError(f"{name}_labels must hold one label per row of {name}_features: got labels of shape "
                         f"{tuple(labels.shape)} for {len(features)} rows")
    if len(features) == 0:
        raise ValueError(f"{name}_features is empty: linear evaluation needs at least one {name} sample")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name}_features contain NaN or infinite values")


def _check_labels(labels: torch.Tensor, num_classes: int, name: str) -> None:
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"{name}_labels must lie in [0, num_classes={num_classes}), got values from {low} to {high}")


def train_linear_classifier(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                            epochs: int = 100, lr: float = 0.01, weight_decay: float = 0.0, batch_size: int = 256,
                            device: torch.device | str = "cpu", seed: int = 0) -> nn.Linear:
    """Train a linear classifier on frozen features with mini-batch SGD and cross-entropy.

    train_features: (N, D) features of the training images (any float dtype, any device).
    train_labels: (N,) integer class indices in [0, num_classes).
    epochs, batch_size: passes over the N rows, in shuffled mini-batches (the last one may be smaller).
    lr: peak learning rate of SGD (momentum 0.9), cosine-annealed to 0 over all iterations.
    weight_decay: L2 penalty on the layer's parameters in standardised feature space (the authors use 0).

    Returns an ``nn.Linear(D, num_classes)`` in eval mode on ``device`` that maps *raw* (M, D) features to
    (M, num_classes) logits: the standardisation of the features is folded into its weight and bias.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    _check_pair(train_features, train_labels, "train")
    _check_labels(train_labels, num_classes, "train")

    x = train_features.to(device, torch.float32, copy=True)          # a copy: standardised in place below
    y = train_labels.to(device).long()
    n, dim = x.shape
    # Standardise each dimension; a constant dimension (std 0, e.g. a channel no image activates) keeps scale 1.
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    x.sub_(mean).div_(std)                                           # in place: one (N, D) copy in memory

    layer = nn.utils.skip_init(nn.Linear, dim, num_classes, device=device)   # no random init: zeros below
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=weight_decay)
    batch_size = min(batch_size, n)
    iters_per_epoch = -(-n // batch_size)                             # ceil(n / batch_size)
    schedule = cosine_schedule(lr, 0.0, epochs, iters_per_epoch)
    generator = torch.Generator().manual_seed(seed)                   # shuffling only; global RNG untouched
    it = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = float(schedule[it])
            loss = F.cross_entropy(layer(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            it += 1

    # Fold the standardisation in: W (x - mean) / std + b = (W / std) x + (b - (W / std) mean).
    with torch.no_grad():
        weight = layer.weight / std
        layer.bias.sub_(weight @ mean)
        layer.weight.copy_(weight)
    layer.requires_grad_(False)
    return layer.eval()


@torch.no_grad()
def linear_evaluate(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                    test_labels: torch.Tensor, num_classes: Optional[int] = None,
                    **kwargs) -> Tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of a linear classifier trained on the train features.

    train_features (N, D), train_labels (N,), test_features (M, D), test_labels (M,). ``num_classes``
    defaults to the largest label seen plus one; ``kwargs`` go to ``train_linear_classifier`` (epochs, lr,
    weight_decay, batch_size, device, seed). Top-5 is top-min(5, num_classes).
    """
    _check_pair(train_features, train_labels, "train")
    _check_pair(test_features, test_labels, "test")
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"test_features have D={test_features.shape[1]} but train_features have "
                         f"D={train_features.shape[1]}: both must come from the same backbone")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    _check_labels(test_labels, num_classes, "test")
    with torch.enable_grad():
        classifier = train_linear_classifier(train_features, train_labels, num_classes, **kwargs)
    device = classifier.weight.device
    top1 = top5 = 0
    for start in range(0, len(test_features), 8192):                   # chunks bound the logits' memory
        logits = classifier(test_features[start:start + 8192].to(device, torch.float32))
        targets = test_labels[start:start + 8192].to(device).long()
        best = logits.topk(min(5, num_classes), dim=1).indices
        hits = best == targets[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=1).sum().item()
    n = len(test_features)
    return 100.0 * top1 / n, 100.0 * top5 / n
