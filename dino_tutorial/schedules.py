"""Per-iteration schedules (paper Sec. 3.1 and Appendix D; the authors' ``cosine_scheduler``).

DINO schedules four quantities: the learning rate (linear warmup, then cosine decay to a minimum), the
weight decay, the teacher momentum (cosine from 0.996 to 1) and, per epoch, the teacher temperature
(``loss.DINOLoss``). All but the last are one value per training iteration, precomputed as an array.
"""
from __future__ import annotations

import numpy as np


def cosine_schedule(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                    warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """One value per iteration, ``epochs * niter_per_ep`` values in all.

    The first ``warmup_epochs * niter_per_ep`` values ramp linearly from ``start_warmup_value`` and reach
    ``base_value`` at the last warmup iteration; the rest follow half a cosine from ``base_value`` towards
    ``final_value``: ``final + (base - final) * (1 + cos(pi * i / n)) / 2`` for ``i = 0 .. n - 1``.
    """
    if epochs < 1 or niter_per_ep < 1:
        raise ValueError(f"epochs and niter_per_ep must be >= 1, got epochs={epochs}, niter_per_ep={niter_per_ep}")
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    decay_iters = epochs * niter_per_ep - warmup_iters
    steps = np.arange(decay_iters)
    decay = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * steps / max(decay_iters, 1)))
    return np.concatenate([warmup, decay])
