"""The centre is the mean of the teacher outputs over all processes (two gloo processes on the CPU)."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dino_tutorial.loss import DINOLoss


def teacher_outputs(rank):
    generator = torch.Generator().manual_seed(100 + rank)
    return torch.randn(2 * (3 + rank), 5, generator=generator)       # the processes hold different batch sizes


def _worker(rank, world_size, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    loss_fn = DINOLoss(5, ncrops=2, center_momentum=0.0)               # momentum 0: centre = this batch's mean
    teacher = teacher_outputs(rank)
    loss_fn(torch.randn(teacher.shape[0], 5), teacher, 0)
    results[rank] = loss_fn.center.clone()
    dist.destroy_process_group()


def test_center_is_mean_over_all_processes(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    expected = torch.cat([teacher_outputs(0), teacher_outputs(1)]).mean(0, keepdim=True)
    for rank in range(2):
        torch.testing.assert_close(results[rank], expected)
