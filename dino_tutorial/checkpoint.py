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
