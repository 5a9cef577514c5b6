"""What every process must agree on before a step: stop now (a signal reached one of them), or skip this
step (one of them has no views: its whole batch was unreadable under ``skip_bad_images``).

With several processes a step is a collective operation (DDP's gradient all-reduce, the centre's all-reduce):
if one process skipped it or left the loop while the others stepped, the others would wait for ever. So each
process says what it has, one all-reduce combines it, and all of them act alike. A stop also ends alike: rank 0
writes the checkpoint while the others wait at a barrier, so that none of them exits (and ``torchrun`` does not
tear the job down) before the checkpoint is on disk.
"""
from __future__ import annotations

import signal
import threading
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks before each iteration (then it checkpoints and exits)."""

    def __init__(self):
        self.signal: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt                       # a second Ctrl-C stops at once
        self.signal = signum

    def agree(self, has_views: bool, world_size: int, device: torch.device) -> Tuple[bool, bool]:
        """(stop, skip), the same on every process: stop when any process got a signal, skip the step when any
        process has no views. One process decides alone, without touching the device."""
        if world_size == 1:
            return self.signal is not None, not has_views
        flags = torch.tensor([float(self.signal is not None), float(not has_views)], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, skip = flags.tolist()
        return bool(stop), bool(skip)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def wait_for_checkpoint(world_size: int) -> None:
    """After rank 0 wrote a checkpoint on a stop: every process waits here until it is done, then leaves the
    process group, so that no process exits while the checkpoint is still being written."""
    if world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
