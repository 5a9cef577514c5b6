"""The DINO loss: cross-entropy between teacher and student across views (paper Sec. 3.1, Eq. 1-4).

For an image with global views {x1, x2} and all views V (globals and locals), the loss is

    sum over x in {x1, x2}, sum over x' in V with x' != x of  H(P_t(x), P_s(x')),    H(a, b) = -a . log b

averaged over the 2 * |V| - 2 pairs (the authors' code averages; Eq. 3 sums). The teacher probabilities are
*centred* (its running batch-mean c is subtracted, Eq. 4) and *sharpened* (a low temperature tau_t):

    P_t(x) = softmax((g_t(x) - c) / tau_t),     P_s(x') = softmax(g_s(x') / tau_s).

Centering alone pushes towards the uniform distribution; sharpening alone towards one dominant dimension.
Together they avoid both collapses (Sec. 5.3, Fig. 7).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``x`` (N, K) across all processes (all-reduce when torch.distributed is running)."""
    if not (dist.is_available() and dist.is_initialized()):
        return x.mean(dim=0, keepdim=True)
    # the row count rides along as one more column: one all-reduce, and no host-to-device copy
    total = F.pad(x.sum(dim=0, keepdim=True), (0, 1), value=float(x.shape[0]))
    dist.all_reduce(total)
    return total[:, :-1] / total[:, -1:]


class DINOLoss(nn.Module):
    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float = 0.04, teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: int = 0, nepochs: int = 100, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        if ncrops < 2:
            raise ValueError(f"ncrops must be >= 2 (two global views), got {ncrops}")
        for name, t in (("warmup_teacher_temp", warmup_teacher_temp), ("teacher_temp", teacher_temp),
                        ("student_temp", student_temp)):
            if t <= 0:
                raise ValueError(f"{name} must be > 0, got {t}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        if not 0 <= warmup_teacher_temp_epochs <= nepochs:
            raise ValueError(f"warmup_teacher_temp_epochs must be in [0, nepochs={nepochs}], "
                             f"got {warmup_teacher_temp_epochs}")
        self.ncrops, self.student_temp, self.center_momentum = ncrops, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        # One teacher temperature per epoch: linear warmup, then constant (Appendix D).
        self.teacher_temp_schedule = np.concatenate([
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.full(nepochs - warmup_teacher_temp_epochs, teacher_temp),
        ])

    def teacher_temp(self, epoch: int) -> float:
        """The teacher temperature at ``epoch`` (the last value beyond the schedule)."""
        return float(self.teacher_temp_schedule[min(epoch, len(self.teacher_temp_schedule) - 1)])

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        """student_output: (ncrops * B, K) logits, crop-major; teacher_output: (2 * B, K), the two global views.

        Returns the scalar loss and then updates ``center`` with the teacher batch mean (no gradient).
        """
        if student_output.shape[0] % self.ncrops != 0:
            raise ValueError(f"student_output has {student_output.shape[0]} rows, not a multiple of ncrops={self.ncrops}")
        batch = student_output.shape[0] // self.ncrops
        if teacher_output.shape != (2 * batch, student_output.shape[1]):
            raise ValueError(f"teacher_output must be (2 * B, K) = {(2 * batch, student_output.shape[1])}, "
                             f"got {tuple(teacher_output.shape)}")
        student_logp = F.log_softmax(student_output.float() / self.student_temp, dim=-1)
        student_logp = student_logp.view(self.ncrops, batch, -1)                      # (V, B, K)
        teacher_p = F.softmax((teacher_output.float() - self.center) / self.teacher_temp(epoch), dim=-1)
        teacher_p = teacher_p.detach().view(2, batch, -1)                              # (2, B, K)
        # cross_entropy[t, v] = mean over the batch of H(P_t(view t), P_s(view v)); one einsum, no loop.
        cross_entropy = -torch.einsum("tbk,vbk->tv", teacher_p, student_logp) / batch   # (2, V)
        # every pair but (t, t): the same view seen by both networks (a sum, not a mask: masks make the host wait)
        loss = (cross_entropy.sum() - cross_entropy.diagonal().sum()) / (2 * self.ncrops - 2)
        self.update_center(teacher_output)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """c <- m * c + (1 - m) * mean of the teacher outputs over the batch and all processes (Eq. 4)."""
        batch_center = _global_mean(teacher_output.detach().float())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)


@torch.no_grad()
def collapse_stats(student_output: torch.Tensor, teacher_output: torch.Tensor, center: torch.Tensor,
                   teacher_temp: float, student_temp: float = 0.1) -> Dict[str, float]:
    """``collapse_tensors`` read as Python floats."""
    return {name: value.item() for name, value in
            collapse_tensors(student_output, teacher_output, center, teacher_temp, student_temp).items()}


@torch.no_grad()
def collapse_tensors(student_output: torch.Tensor, teacher_output: torch.Tensor, center: torch.Tensor,
                     teacher_temp: float, student_temp: float = 0.1) -> Dict[str, torch.Tensor]:
    """Diagnostics of collapse (paper Sec. 5.3, Fig. 7), all in nats, as 0-d tensors on the outputs' device
    (reading a GPU tensor makes the host wait for the GPU: the trainer reads them once per step, at its end).

    ``teacher_entropy``: mean entropy of the teacher distributions (near 0: one dimension dominates; near
    ln K: uniform). ``center_entropy``: entropy of their batch mean (near 0 with a dominant dimension even
    when each sample is sharp). ``kl``: mean KL(P_t || P_s) over the loss's pairs; it is 0 when both
    networks output the same thing, which is what any collapse ends in.
    """
    ncrops = student_output.shape[0] * 2 // teacher_output.shape[0]
    batch = teacher_output.shape[0] // 2
    teacher_p = F.softmax((teacher_output.float() - center) / teacher_temp, dim=-1)
    teacher_logp = torch.log(teacher_p.clamp_min(1e-30))
    student_logp = F.log_softmax(student_output.float() / student_temp, dim=-1).view(ncrops, batch, -1)
    entropy = -(teacher_p * teacher_logp).sum(-1)                                      # (2B,)
    mean_p = teacher_p.mean(0)
    center_entropy = -(mean_p * torch.log(mean_p.clamp_min(1e-30))).sum()
    teacher_p = teacher_p.view(2, batch, -1)
    cross = -torch.einsum("tbk,vbk->tv", teacher_p, student_logp) / batch
    kl = cross - entropy.view(2, batch).mean(1, keepdim=True)                          # H(p, q) - H(p)
    kl = (kl.sum() - kl.diagonal().sum()) / (2 * ncrops - 2)
    return {"teacher_entropy": entropy.mean(), "center_entropy": center_entropy, "kl": kl}


def diagnose_collapse(teacher_entropy: float, center_entropy: float, out_dim: int) -> Optional[str]:
    """A one-line warning when the teacher's outputs show a collapse (paper Sec. 5.3), else None.

    Uniform collapse: every teacher distribution is close to uniform (entropy above 95% of ln K); the loss then
    sits at ln K. Dominant-dimension collapse: the batch-mean distribution puts nearly all its mass on one
    dimension (its entropy below 5% of ln K), i.e. every image gets the same output.
    """
    ln_k = math.log(out_dim)
    if teacher_entropy > 0.95 * ln_k:
        return (f"uniform collapse: teacher entropy {teacher_entropy:.2f} is near ln K = {ln_k:.2f}; sharpen more "
                f"(lower teacher_temp), raise momentum_teacher with small batches, or check the learning rate")
    if center_entropy < 0.05 * ln_k:
        return (f"one dimension dominates: entropy of the mean teacher output {center_entropy:.2f} is near 0 "
                f"(ln K = {ln_k:.2f}); centering is too weak (lower center_momentum) or the teacher temperature "
                f"too low")
    return None
