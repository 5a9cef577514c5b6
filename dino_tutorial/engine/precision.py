"""Numeric precision of a run: the autocast dtype, deterministic kernels, and resuming across precisions."""
from __future__ import annotations

import inspect
import os
from typing import Callable, Optional

import torch
from torch import nn


def bf16_in_hardware(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (NVIDIA sm_80 and later), not emulated.

    ``torch.cuda.is_bf16_supported()`` also counts emulation, which makes it true on a T4 (sm_75): bf16
    convolutions there fall back to slow non-cuDNN kernels. PyTorch >= 2.3 can leave emulation out.
    """
    if "including_emulation" in inspect.signature(torch.cuda.is_bf16_supported).parameters:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cuda.get_device_capability(device) >= (8, 0)


def amp_dtype(amp: str, device: torch.device,
              bf16_native: Callable[[torch.device], bool] = bf16_in_hardware) -> Optional[torch.dtype]:
    """The autocast dtype of ``amp`` ("auto", "bf16", "fp16", "none") on ``device``; None means fp32.

    "auto" is fp32 on the CPU, bf16 on GPUs that have it in hardware, and fp16 with a GradScaler elsewhere
    (a T4 or a V100). ``bf16_native`` is a parameter so that the choice can be tested without such a GPU.
    """
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16" or (amp == "auto" and not bf16_native(device)):
        return torch.float16
    return torch.bfloat16


def use_deterministic_kernels(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels (bitwise-repeatable runs) or, on CUDA, cuDNN's fastest ones.

    cuBLAS is deterministic only with a fixed workspace, which it reads from ``CUBLAS_WORKSPACE_CONFIG``
    when first used; without it ``torch.use_deterministic_algorithms`` raises at the first matrix product.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


class GlobalMeanPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(1)`` as a plain mean over height and width: the same numbers, and a backward
    pass that CUDA computes deterministically (its adaptive-pooling backward has no deterministic kernel, so
    ``torch.use_deterministic_algorithms(True)`` raises at the first ResNet backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


def deterministic_pooling(model: nn.Module) -> int:
    """Replace every ``AdaptiveAvgPool2d`` to 1 x 1 in ``model`` by ``GlobalMeanPool``; returns how many."""
    swaps = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1))]
    for parent, name in swaps:
        setattr(parent, name, GlobalMeanPool())
    return len(swaps)


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Restore a GradScaler from a checkpoint that may come from a run in another precision.

    A disabled scaler (bf16 or fp32 runs) saves an empty state, which an enabled one refuses to load; the
    fp16 run then starts from the default loss scale, as a fresh fp16 run does. An fp16 state loaded into a
    disabled scaler is dropped: bf16 and fp32 need no loss scale.
    """
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)


@torch.no_grad()
def check_cpu_bf16_convolutions(backbone: nn.Module, sizes) -> None:
    """Refuse bf16 autocast on the CPU where it computes wrong gradients.

    With PyTorch's CPU kernels, a strided 3 x 3 convolution whose input map is 1 x 1 returns garbage weight
    gradients under bf16 autocast (values up to 1e35, different from run to run; fp32 is right). In a ResNet
    that happens in the last stage for crops under 32 px. The shapes are found by running the backbone once.
    """
    tiny = []

    def record(module, inputs):
        if module.stride != (1, 1) and module.kernel_size != (1, 1) and min(inputs[0].shape[-2:]) == 1:
            tiny.append(module)

    hooks = [m.register_forward_pre_hook(record) for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    was_training = backbone.training
    try:
        backbone.eval()
        for size in sizes:
            tiny.clear()
            backbone(torch.zeros(1, 3, size, size))
            if tiny:
                raise ValueError(f"amp=bf16 on the CPU computes wrong gradients for {size} px crops: a strided "
                                 f"convolution of this backbone then sees a 1 x 1 map, where PyTorch's CPU bf16 "
                                 f"kernels return garbage; use amp=none, or crops of at least 32 px")
    finally:
        backbone.train(was_training)
        for hook in hooks:
            hook.remove()
