"""Weighted k-nearest-neighbour evaluation of frozen features (paper Sec. 3.2, "Evaluation protocols", and
Table 2; after Wu et al. 2018).

Features are L2-normalised, so a dot product is a cosine similarity s. Each test image takes its k most
similar training images; each neighbour votes for its label with weight exp(s / T). The class with the
largest total vote is the prediction. The paper uses k = 20, T = 0.07.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def extract_features(model: nn.Module, loader: Iterable, device: torch.device | str,
                     progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` in eval mode on every (images, labels) batch of ``loader``.

    Returns (features (N, D) float32, labels (N,) int64), both on the CPU, in loader order. The model's
    train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    features, labels = [], []
    try:
        for images, targets in tqdm(loader, desc="features", disable=not progress, leave=False):
            out = model(images.to(device, non_blocking=True))
            features.append(out.float().cpu())
            labels.append(torch.as_tensor(targets).cpu())
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("extract_features got an empty loader: no images to embed")
    return torch.cat(features), torch.cat(labels).long()


def _check_inputs(train_features, train_labels, test_features, test_labels, k: int, T: float) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D) with the same D, got {tuple(train_features.shape)} "
                         f"and {tuple(test_features.shape)}")
    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise ValueError("features and labels must have the same number of rows")
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError("k-NN needs at least one training and one test sample")


@torch.no_grad()
def nearest_neighbours(bank: torch.Tensor, queries: torch.Tensor, k: int,
                       max_chunk_elements: int = 2 ** 26) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities (M, k') and bank rows (M, k') of each query's k' = min(k, N) nearest bank rows.

    ``queries`` (M, D) must be L2-normalised. The bank (N, D) is read once, in blocks that are normalised as
    they are read (no normalised copy of the whole bank: at ImageNet scale the bank alone is about 10 GB);
    each block is scored against the queries in chunks, so no array holds more than ``max_chunk_elements``
    numbers, and the best k of every block are merged into the running best k of each query.
    """
    k = min(k, len(bank))
    rows = max(1, min(len(bank), max_chunk_elements // max(1, bank.shape[1])))    # bank rows per block
    best_sim = best_idx = None
    for start in range(0, len(bank), rows):
        block = F.normalize(bank[start:start + rows].float(), dim=1)
        chunk = max(1, max_chunk_elements // len(block))
        parts = [(queries[q:q + chunk] @ block.T).topk(min(k, len(block)), dim=1)
                 for q in range(0, len(queries), chunk)]
        similarity = torch.cat([part[0] for part in parts])
        index = torch.cat([part[1] for part in parts]) + start
        if best_sim is not None:                                 # merge with the best of the earlier blocks
            similarity, index = torch.cat([best_sim, similarity], 1), torch.cat([best_idx, index], 1)
            similarity, pick = similarity.topk(min(k, similarity.shape[1]), dim=1)
            index = index.gather(1, pick)
        best_sim, best_idx = similarity, index
    return best_sim, best_idx


def vote(similarity: torch.Tensor, neighbour_labels: torch.Tensor, labels: torch.Tensor, T: float,
         num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weighted vote of each query's neighbours: (top1 (M,) bool, top5 (M,) bool) hits against ``labels``."""
    votes = torch.zeros(len(similarity), num_classes, device=similarity.device)
    votes.scatter_add_(1, neighbour_labels, (similarity / T).exp())
    best_votes, predictions = votes.topk(min(5, num_classes), dim=1)                  # (m, 5)
    # a class counts only if it got a vote: zero-vote classes tie and their order would be arbitrary
    hits = (predictions == labels[:, None]) & (best_votes > 0)
    return hits[:, 0], hits.any(dim=1)


@torch.no_grad()
def knn_hits(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, k: int = 20, T: float = 0.07, num_classes: Optional[int] = None,
             max_chunk_elements: int = 2 ** 26) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per test image, whether the weighted k-NN classifier is right: (top1 (M,) bool, top5 (M,) bool) on the CPU.

    train_features (N, D), train_labels (N,), test_features (M, D), test_labels (M,). Any M >= 1 works and
    k may exceed N (all training samples then vote). Test samples are processed in chunks so that the
    (chunk, N) similarity matrix holds at most ``max_chunk_elements`` numbers: 1.28M x 50k fits on a GPU or CPU.
    Top-5 counts a hit among the min(5, num_classes) best-voted classes that received at least one vote.
    """
    _check_inputs(train_features, train_labels, test_features, test_labels, k, T)
    device = train_features.device
    train_labels = train_labels.to(device).long()
    test_labels = test_labels.to(device).long()
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    # the queries in chunks of (chunk, N) numbers: normalised, scored block by block, then voted
    chunk = max(1, min(len(test_features), max_chunk_elements // len(train_features)))
    queries = torch.cat([F.normalize(test_features[q:q + chunk].to(device).float(), dim=1)
                         for q in range(0, len(test_features), chunk)])
    similarity, index = nearest_neighbours(train_features, queries, k, max_chunk_elements)
    top1, top5 = [], []
    for start in range(0, len(queries), chunk):
        hit1, hit5 = vote(similarity[start:start + chunk], train_labels[index[start:start + chunk]],
                          test_labels[start:start + chunk], T, num_classes)
        top1.append(hit1.cpu())
        top5.append(hit5.cpu())
    return torch.cat(top1), torch.cat(top5)


@torch.no_grad()
def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, T: float = 0.07, num_classes: Optional[int] = None,
                 max_chunk_elements: int = 2 ** 26) -> Tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of the weighted k-NN classifier (the mean of ``knn_hits``)."""
    top1, top5 = knn_hits(train_features, train_labels, test_features, test_labels, k, T, num_classes,
                          max_chunk_elements)
    n = len(top1)
    return 100.0 * int(top1.sum()) / n, 100.0 * int(top5.sum()) / n
