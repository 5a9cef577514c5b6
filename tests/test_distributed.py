"""What several processes must compute together, checked with two gloo processes on the CPU: the centre, the
k-NN over a sharded bank, and the agreement to skip a step or to stop."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dino_tutorial.knn import knn_hits
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


# ---- the k-NN over a bank split between processes (the in-training k-NN at ImageNet scale)

def knn_problem():
    generator = torch.Generator().manual_seed(7)
    bank, queries = torch.randn(203, 16, generator=generator), torch.randn(57, 16, generator=generator)
    return (bank, torch.randint(0, 5, (203,), generator=generator), queries,
            torch.randint(0, 5, (57,), generator=generator))


def _knn_worker(rank, world_size, init_file, results, split):
    from dino_tutorial.engine.distributed import gather_rows, sharded_knn_hits
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    bank, bank_labels, queries, query_labels = knn_problem()
    rows = split(len(bank), rank, world_size)
    mine = slice(rank, len(queries), world_size)                  # the queries are embedded sharded, then gathered
    q, ql = gather_rows(queries[mine], query_labels[mine], len(queries), world_size, torch.device("cpu"))
    assert torch.equal(q, queries) and torch.equal(ql, query_labels)
    # tiny chunks: several query chunks and bank blocks, so the merging of candidates is exercised
    results[rank] = sharded_knn_hits(bank[rows], bank_labels[rows], q, ql, k=20, T=0.07, num_classes=5,
                                     world_size=world_size, max_chunk_elements=256)
    dist.destroy_process_group()


def interleaved(n, rank, world_size):
    return torch.arange(rank, n, world_size)


def uneven(n, rank, world_size):
    """Rank 0 holds only 7 rows (fewer than k), rank 1 the rest."""
    return torch.arange(0, 7) if rank == 0 else torch.arange(7, n)


@pytest.mark.parametrize("split", [interleaved, uneven])
def test_knn_over_a_sharded_bank_equals_the_single_process_knn(tmp_path, split):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_knn_worker, args=(2, str(tmp_path / "init"), results, split), nprocs=2, join=True)
    bank, bank_labels, queries, query_labels = knn_problem()
    expected = knn_hits(bank, bank_labels, queries, query_labels, k=20, T=0.07, num_classes=5)
    assert 0 < int(expected[0].sum()) < len(queries)            # neither all right nor all wrong: a real check
    for rank in range(2):
        top1, top5 = results[rank]
        assert torch.equal(top1, expected[0]) and torch.equal(top5, expected[1])


# ---- stop and skip agreed by every process; the checkpoint written before any process leaves

def _agree_worker(rank, world_size, init_file, results):
    from dino_tutorial.engine.control import StopRequest
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    stop = StopRequest()
    seen = [stop.agree(True, world_size, torch.device("cpu"))]
    seen.append(stop.agree(rank != 1, world_size, torch.device("cpu")))     # rank 1's batch was all unreadable
    if rank == 0:
        stop.signal = 15                                                   # SIGTERM reached rank 0 only
    seen.append(stop.agree(True, world_size, torch.device("cpu")))
    results[rank] = seen
    dist.destroy_process_group()


def test_one_process_with_no_views_makes_every_process_skip_and_one_signal_stops_all(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_agree_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    for rank in range(2):
        assert results[rank] == [(False, False), (False, True), (True, False)]


def _stop_worker(rank, world_size, port, data, out, results):
    import os
    import signal
    import time
    from dino_tutorial import checkpoint as ckpt
    from dino_tutorial.train import Trainer
    from test_train import tiny_config
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    real_save, real_step = ckpt.save, Trainer.train_step

    def slow_save(path, state):                        # rank 0 takes its time to write the checkpoint
        time.sleep(2.0)
        real_save(path, state)
        results["saved_at"] = time.time()

    def step(self, crops, epoch, it, i, **kwargs):
        result = real_step(self, crops, epoch, it, i, **kwargs)
        if rank == 1 and it == 1:
            os.kill(os.getpid(), signal.SIGTERM)       # the scheduler's signal reaches rank 1 first
        return result

    ckpt.save, Trainer.train_step = slow_save, step
    config = tiny_config(data, out, knn_every=0, epochs=1, warmup_epochs=0, max_iters_per_epoch=3)
    outcome = Trainer(config).fit()
    results[f"left_{rank}"] = time.time()
    results[f"outcome_{rank}"] = dict(outcome)


@pytest.mark.slow
def test_a_signal_on_one_process_stops_all_and_none_leaves_before_the_checkpoint_is_written(folder_24_per_class,
                                                                                         tmp_path):
    import socket
    from dino_tutorial import checkpoint as ckpt
    images = folder_24_per_class
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_stop_worker, args=(2, port, str(images), str(tmp_path / "run"), results), nprocs=2, join=True)
    assert results["outcome_0"]["interrupted"] and results["outcome_1"]["interrupted"]
    assert results["left_1"] >= results["saved_at"]            # rank 1 waited for rank 0's checkpoint
    state = ckpt.load(tmp_path / "run" / "checkpoint.pth")
    assert (state["epoch"], state["iteration"]) == (0, 2)      # both processes stepped twice, then stopped
