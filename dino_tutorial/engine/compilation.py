"""Whether to ``torch.compile`` the networks of a run.

A SyncBatchNorm (every BatchNorm of a multi-GPU CUDA run, converted as the authors do) is a graph break for
``torch.compile``: a ResNet-50 student and teacher hold about 160 of them, so the compiled step is cut into
some 160 small graphs with a Python round trip between each, and compile + DDP + SyncBatchNorm has open reports
of errors upstream. Such a run is not compiled; a single-GPU or CPU run (plain BatchNorm) is.
"""
from __future__ import annotations

from typing import Tuple

from torch import nn


def compile_decision(requested: bool, model: nn.Module) -> Tuple[bool, str]:
    """(compile, why not): ``requested`` unless ``model`` holds SyncBatchNorm layers."""
    if not requested:
        return False, ""
    sync = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    if sync:
        return False, (f"compile=True is ignored: the model holds {sync} SyncBatchNorm layers, each a graph break "
                       f"for torch.compile (and compile + DDP + SyncBatchNorm is not reliable); training uncompiled")
    return True, ""
