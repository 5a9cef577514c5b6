"""Optimisation details of the DINO recipe (paper Appendix D; the authors' ResNet-50 command).

- Weight decay applies to weights only: biases and normalisation parameters (every 1-d parameter) are
  left out, as in the authors' ``get_params_groups``.
- Gradient clipping is *per parameter*: each parameter's gradient whose norm exceeds ``clip`` is scaled
  down to norm ``clip`` (not one global norm over the whole network).
- The head's last layer is frozen during the first epoch(s): its gradients are dropped, which the authors
  found stabilises the start of training.
- LARS (You et al., 2017) is offered for large batches, as in the authors' code.
"""
from __future__ import annotations

from typing import Dict, Iterable, List

import torch
from torch import nn


def param_groups(model: nn.Module) -> List[Dict]:
    """Two groups: weights (with weight decay) and biases / norm parameters (``weight_decay = 0``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> torch.Tensor:
    """Scale each parameter's gradient so that its norm is at most ``clip``; returns the norms before clipping."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads))
    scales = (clip / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(scales.unbind()))
    return norms


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_last_layer: int) -> None:
    """Drop the gradients of parameters named ``last_layer`` while ``epoch < freeze_last_layer``."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio ``eta * ||w|| / ||g + wd * w||``.

    Groups flagged ``lars_exclude`` (biases and norm parameters) get neither weight decay nor the ratio.
    """

    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if not group["lars_exclude"]:
                    update = update.add(p, alpha=group["weight_decay"])
                    p_norm, u_norm = torch.norm(p), torch.norm(update)
                    ratio = torch.where((p_norm > 0) & (u_norm > 0), group["eta"] * p_norm / u_norm,
                                        torch.ones_like(p_norm))
                    update = update.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])


def build_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    """``sgd`` (momentum 0.9, the ResNet-50 recipe), ``lars`` or ``adamw`` (the ViT recipe) over ``param_groups``.

    The learning rate and weight decay are set every iteration by the trainer from their schedules.
    """
    groups = param_groups(model)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=0.9)
    if name == "lars":
        return LARS(groups)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd, lars or adamw")
