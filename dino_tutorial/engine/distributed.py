"""Several processes (``torchrun``): joining the process group, gathering rows, and the k-NN over a sharded bank.

At ImageNet scale the k-NN bank is 1.28M x 2048 float32 features, about 10.5 GB. Gathering it on every GPU
(and normalising it into a second copy) needs some 21 GB per GPU; here each process keeps only the rows it
embedded, scores every query against them, and the processes exchange each query's k best candidates (M x k
numbers), from which every process takes the same k nearest neighbours as one process holding the whole bank.
"""
from __future__ import annotations

import math
import os
from typing import Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..knn import _check_inputs, nearest_neighbours, vote


def setup_distributed(device_choice: str) -> Tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL on CUDA, gloo on CPU."""
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world_size, device


def gather_rows(features: torch.Tensor, labels: torch.Tensor, total: int, world_size: int,
                device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Undo a ``rank::world_size`` sharding: every process gets all ``total`` rows in dataset order, on ``device``.

    For the queries (ImageNet val: 50k rows), not the bank: the bank stays sharded (``sharded_knn_hits``).
    """
    if world_size == 1:
        return features.to(device), labels.to(device)
    rows = math.ceil(total / world_size)
    padded = torch.zeros(rows, features.shape[1] + 1, device=device)
    padded[:len(features), :-1] = features.to(device)
    padded[:len(features), -1] = labels.to(device).float()
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    interleaved = torch.stack(gathered, dim=1).reshape(rows * world_size, -1)[:total]
    return interleaved[:, :-1].contiguous(), interleaved[:, -1].long()


@torch.no_grad()
def sharded_knn_hits(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                     query_labels: torch.Tensor, k: int, T: float, num_classes: int, world_size: int = 1,
                     max_chunk_elements: int = 2 ** 26) -> Tuple[torch.Tensor, torch.Tensor]:
    """``knn.knn_hits`` with the bank split over processes: (top1 (M,) bool, top5 (M,) bool) on the CPU, equal
    on every process and equal to one process's ``knn_hits`` over the whole bank (up to exact ties).

    ``bank`` (N_r, D) and ``bank_labels`` are this process's rows (any split, N_r may differ between processes
    and be 0 on some); ``queries`` (M, D) and ``query_labels`` are the same on every process.
    """
    if world_size == 1:
        _check_inputs(bank, bank_labels, queries, query_labels, k, T)
    device = queries.device
    bank_labels, query_labels = bank_labels.to(device).long(), query_labels.to(device).long()
    queries = F.normalize(queries.float(), dim=1)
    if len(bank):
        similarity, index = nearest_neighbours(bank, queries, k, max_chunk_elements)
        labels = bank_labels[index]
    else:                                                    # a process with no bank rows offers no candidates
        similarity = queries.new_empty(len(queries), 0)
        labels = torch.empty(len(queries), 0, dtype=torch.long, device=device)
    if world_size > 1:                                       # (M, k) candidates from each process: small
        similarity, labels = _best_over_processes(similarity, labels, k, world_size)
    top1, top5 = [], []
    chunk = max(1, max_chunk_elements // max(1, num_classes))
    for start in range(0, len(queries), chunk):              # votes: (chunk, classes) at a time
        hit1, hit5 = vote(similarity[start:start + chunk], labels[start:start + chunk],
                          query_labels[start:start + chunk], T, num_classes)
        top1.append(hit1.cpu())
        top5.append(hit5.cpu())
    return torch.cat(top1), torch.cat(top5)


def _best_over_processes(similarity: torch.Tensor, labels: torch.Tensor, k: int,
                         world_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every process's k candidates per query gathered, and the k most similar of them kept (the same on all)."""
    m = len(similarity)
    padded = torch.full((m, k, 2), -math.inf, device=similarity.device)    # (similarity, label); -inf: no row
    padded[:, :similarity.shape[1], 0] = similarity
    padded[:, :similarity.shape[1], 1] = labels.float()
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    candidates = torch.cat(gathered, dim=1)                                 # (m, world * k, 2)
    available = int((candidates[0, :, 0] > -math.inf).sum()) if m else 0
    best, pick = candidates[..., 0].topk(min(k, max(1, available)), dim=1)
    best_labels = candidates[..., 1].gather(1, pick).long()
    return best, best_labels
