"""Views made on the device, one batch ahead: the next batch's JPEG decoding and augmentation are launched while
the current step's kernels are still queued, so that making views overlaps the step instead of following it."""
from __future__ import annotations

from typing import Callable

from ..device_augment import EncodedBatch


class Lookahead:
    """Iterates over a loader's (crops, labels, skipped) batches, turning encoded batches into views on the
    device with ``make_views``; ``prefetch()`` prepares the next batch early (the trainer calls it while a
    step is still running on the GPU). The batches and their order are those of the loader either way."""

    def __init__(self, loader, make_views: Callable):
        self.source, self.make_views, self.ready = iter(loader), make_views, None

    def prefetch(self) -> None:
        if self.ready is None:
            batch = next(self.source, None)
            if batch is not None and isinstance(batch[0], EncodedBatch):
                views, skipped = self.make_views(batch[0], batch[2])
                batch = (views, batch[1], skipped)
            self.ready = batch if batch is not None else StopIteration

    def __iter__(self) -> "Lookahead":
        return self

    def __next__(self):
        self.prefetch()
        batch, self.ready = self.ready, None
        if batch is StopIteration:
            raise StopIteration
        return batch
