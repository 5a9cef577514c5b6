"""The momentum teacher (paper Sec. 3.1, "Teacher network", and Sec. 5.3).

The teacher has the student's architecture and is never trained by gradients. After every student step
its parameters follow an exponential moving average of the student's:

    theta_t <- lambda * theta_t + (1 - lambda) * theta_s,

with lambda following a cosine schedule from 0.996 to 1 (see ``schedules``). Only parameters are
averaged: BatchNorm running statistics are not, and like the authors' code the teacher stays in train
mode, so its BatchNorm layers normalise with the statistics of the batch it sees.
"""
from __future__ import annotations

import copy
from typing import List

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or compiled) wrapper, or the model itself."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` whose parameters do not require gradients."""
    teacher = copy.deepcopy(unwrap(student))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: every teacher parameter becomes ``momentum * teacher + (1 - momentum) * student``.

    ``momentum = 1`` leaves the teacher unchanged; ``momentum = 0`` copies the student.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"teacher momentum must be in [0, 1], got {momentum}")
    t_params: List[torch.Tensor] = list(unwrap(teacher).parameters())
    s_params: List[torch.Tensor] = [p.detach() for p in unwrap(student).parameters()]
    if len(t_params) != len(s_params):
        raise ValueError(f"teacher has {len(t_params)} parameters but student has {len(s_params)}")
    # One fused kernel per list instead of a Python loop over ~160 tensors.
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
