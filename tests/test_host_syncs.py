"""The step launches all its work before the host waits for the device once (counted on the CPU).

On a GPU the host must not wait inside the step: reading a value (``.item()``, ``bool()``), boolean-mask
indexing (its size is data-dependent) and building a tensor from Python numbers (a host-to-device copy) all
stop the host until the GPU catches up. On the CPU the same operations are visible to a dispatch mode, which
counts them without CUDA.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dino_tutorial.train import Trainer
from test_train import tiny_config

WAITS = {"_local_scalar_dense", "nonzero", "masked_select", "lift_fresh", "is_nonzero", "equal"}


class CountWaits(TorchDispatchMode):
    """Counts the operations that wait for the device; ``host_tensors`` are tensors that stay on the host in a
    CUDA run too, whose reads wait for nothing (the optimizer's step counters: torch keeps them on the CPU
    unless the optimizer is ``capturable`` or ``fused``)."""

    def __init__(self, host_tensors=()):
        super().__init__()
        self.count, self.names = 0, []
        self.host = {id(t) for t in host_tensors}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in WAITS and not (args and id(args[0]) in self.host):
            self.count += 1
            self.names.append(name)
        return func(*args, **(kwargs or {}))


def optimizer_step_counters(optimizer):
    steps = [state["step"] for state in optimizer.state.values() if torch.is_tensor(state.get("step"))]
    assert all(step.device.type == "cpu" for step in steps)
    return steps


@pytest.mark.parametrize("augmentation", ["pil", "fast", "device"])
def test_no_host_wait_before_the_step_is_launched(tiny_folder, tmp_path, augmentation):
    trainer = Trainer(tiny_config(tiny_folder, tmp_path / "run", knn_every=0, augmentation=augmentation))
    batches = iter(trainer.loader)
    for attempt in range(2):                                     # the first step fills caches of constants
        crops, _, skipped = next(batches)
        if augmentation == "device":
            crops, _ = trainer.device_views(crops, skipped)
        counter, before = CountWaits(optimizer_step_counters(trainer.optimizer)), []
        with counter:
            loss, stats = trainer.train_step(crops, epoch=1, it=attempt, i=attempt,
                                             before_sync=lambda: before.append(list(counter.names)))
    assert before == [[]], f"the host waited inside the step: {before}"
    assert isinstance(loss, float) and set(stats) == {"teacher_entropy", "center_entropy", "kl"}
