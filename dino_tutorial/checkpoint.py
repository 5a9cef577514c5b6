"""Checkpoints that a crash cannot corrupt.

``save`` writes to a temporary file in the same folder, flushes it to disk, then renames it over the old
checkpoint: a rename is atomic, so at every moment the path holds either the previous complete checkpoint
or the new complete one. Checkpoints hold plain data only (tensors, numbers, strings, lists, dicts), so
they load with ``torch.load(weights_only=True)``, the default since PyTorch 2.6.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch

CHECKPOINT_NAME = "checkpoint.pth"


def save(path: str | os.PathLike, state: Dict[str, Any]) -> None:
    """Atomically write ``state`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by ``save``; a missing or unreadable file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise RuntimeError(f"checkpoint {path} cannot be loaded ({err})") from err


def export_backbone(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike, network: str = "teacher") -> None:
    """Write only the backbone weights of a training checkpoint (the teacher's by default: the paper evaluates the
    teacher), with the architecture needed to rebuild it: a small file for sharing and for the chapters."""
    if network not in ("teacher", "student"):
        raise ValueError(f"network must be 'teacher' or 'student', got {network!r}")
    state = load(checkpoint_path)
    prefix = "backbone."
    weights = {k[len(prefix):]: v for k, v in state[network].items() if k.startswith(prefix)}
    config = state["config"]
    save(out_path, {"arch": config["arch"], "small_images": config["small_images"], "backbone": weights,
                    "knn_image_size": config["knn_image_size"], "seed": config["seed"], "epochs": state["epoch"],
                    "source": str(checkpoint_path), "network": network})


def load_backbone(path: str | os.PathLike, map_location: Any = "cpu"):
    """(backbone, feature_dim) rebuilt from ``export_backbone``'s file, in eval mode."""
    from .model import build_backbone
    state = load(path, map_location=map_location)
    backbone, dim = build_backbone(state["arch"], small_images=state["small_images"])
    backbone.load_state_dict(state["backbone"])
    return backbone.eval(), dim
