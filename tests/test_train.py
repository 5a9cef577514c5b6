"""End-to-end checks of the trainer on a tiny image folder (CPU, seconds)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from dino_tutorial import checkpoint as ckpt
from dino_tutorial.cli import parse_config
from dino_tutorial.train import TrainConfig, train


def tiny_config(data, out, **overrides):
    settings = dict(data_path=str(data), output_dir=str(out), arch="resnet18", global_size=32, local_size=16,
                    local_crops_number=2, batch_size_per_gpu=4, out_dim=64, head_hidden_dim=32,
                    head_bottleneck_dim=16, epochs=2, warmup_epochs=1, max_iters_per_epoch=2, num_workers=0,
                    knn_every=1, knn_image_size=32, progress=False, seed=1)
    settings.update(overrides)
    return TrainConfig.from_preset("small", **settings)


@pytest.mark.slow
def test_short_run_writes_a_checkpoint_and_a_log(tiny_folder, tmp_path):
    metrics = train(tiny_config(tiny_folder, tmp_path / "run"))
    state = ckpt.load(tmp_path / "run" / "checkpoint.pth")
    assert state["epoch"] == 2 and set(state) >= {"student", "teacher", "optimizer", "dino_loss", "config"}
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]                    # epoch 0: the random network's k-NN
    assert all(0 <= r["knn_top1"] <= 100 for r in records)
    assert metrics["epoch"] == 2 and metrics["loss"] > 0
    assert torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["epoch"] == 2


def test_knn_student_logs_the_students_accuracy_beside_the_teachers(tiny_folder, tmp_path):
    """At initialisation the teacher is a copy of the student, so both score the same; later they can differ,
    and the student's number must be the k-NN of the student's own backbone."""
    from dino_tutorial.train import knn_evaluate
    from dino_tutorial.model import build_backbone
    config = tiny_config(tiny_folder, tmp_path / "run", knn_student=True, epochs=1, warmup_epochs=0)
    train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[0]["knn_student_top1"] == records[0]["knn_top1"]
    assert records[0]["knn_student_top5"] == records[0]["knn_top5"]
    backbone, _ = build_backbone(config.arch)
    student = ckpt.load(tmp_path / "run" / "checkpoint.pth")["student"]
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in student.items() if k.startswith("backbone.")})
    top1, top5 = knn_evaluate(backbone, config, torch.device("cpu"))
    assert (records[-1]["knn_student_top1"], records[-1]["knn_student_top5"]) == (top1, top5)


@pytest.mark.slow
def test_resuming_after_a_kill_gives_the_same_parameters_as_an_uninterrupted_run(tiny_folder, tmp_path, monkeypatch):
    train(tiny_config(tiny_folder, tmp_path / "straight", knn_every=0))
    real_save = ckpt.save

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(ckpt, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_folder, tmp_path / "resumed", knn_every=0))
    monkeypatch.setattr(ckpt, "save", real_save)
    assert ckpt.load(tmp_path / "resumed" / "checkpoint.pth")["epoch"] == 1
    train(tiny_config(tiny_folder, tmp_path / "resumed", knn_every=0))
    a = ckpt.load(tmp_path / "straight" / "checkpoint.pth")
    b = ckpt.load(tmp_path / "resumed" / "checkpoint.pth")
    for net in ("student", "teacher"):
        for name, value in a[net].items():
            assert torch.equal(value, b[net][name]), f"{net}.{name} differs after resume"
    torch.testing.assert_close(a["dino_loss"]["center"], b["dino_loss"]["center"], rtol=0, atol=0)


def test_a_crash_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    ckpt.save(path, {"epoch": 1, "w": torch.ones(3)})

    def partial_write(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", partial_write)
    with pytest.raises(OSError):
        ckpt.save(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = ckpt.load(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]       # no temporary file left behind


def test_loading_a_missing_checkpoint_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ckpt.load(tmp_path / "nope.pth")


def test_rn50_preset_is_the_authors_resnet50_command():
    c = TrainConfig.from_preset("rn50_imagenet", data_path="x")
    assert (c.arch, c.optimizer, c.lr, c.weight_decay, c.weight_decay_end) == ("resnet50", "sgd", 0.03, 1e-4, 1e-4)
    assert (c.global_crops_scale, c.local_crops_scale, c.local_crops_number) == ((0.14, 1.0), (0.05, 0.14), 8)
    assert (c.out_dim, c.teacher_temp, c.momentum_teacher, c.clip_grad, c.freeze_last_layer) == (65536, 0.04, 0.996,
                                                                                                 3.0, 1)
    assert (c.epochs, c.warmup_epochs, c.min_lr, c.batch_size_per_gpu) == (100, 10, 1e-6, 64)


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--knn-k", "0"], "knn_k must be >= 1, got 0"),
    (["--local-crops-number", "-2"], "local_crops_number must be >= 0, got -2"),
    (["--teacher-temp", "0"], "teacher_temp must be > 0, got 0.0"),
    (["--resume", "/no/such/checkpoint.pth"], "resume checkpoint not found: /no/such/checkpoint.pth"),
])
def test_bad_command_line_settings_fail_with_one_line_naming_them(argv, message, tiny_folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--data-path", str(tiny_folder)] + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_missing_data_path_fails_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_config(["--preset", "small", "--data-path", str(tmp_path / "missing")])
    assert f"{tmp_path}/missing/train does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_runs_two_cpu_processes_with_gloo(tiny_folder, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "dino_tutorial.train",
               "--preset", "small", "--data-path", str(tiny_folder), "--output-dir", str(out), "--arch", "resnet18",
               "--global-size", "32", "--local-size", "16", "--local-crops-number", "2", "--batch-size-per-gpu", "2",
               "--out-dim", "64", "--head-hidden-dim", "32", "--epochs", "1", "--warmup-epochs", "0",
               "--max-iters-per-epoch", "2", "--num-workers", "0", "--knn-every", "1", "--knn-image-size", "32",
               "--progress", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert ckpt.load(out / "checkpoint.pth")["epoch"] == 1


@pytest.mark.slow
def test_exported_teacher_backbone_reloads_with_identical_features(tiny_folder, tmp_path):
    train(tiny_config(tiny_folder, tmp_path / "run", knn_every=0, epochs=1, warmup_epochs=0))
    ckpt.export_backbone(tmp_path / "run" / "checkpoint.pth", tmp_path / "backbone.pth")
    backbone, dim = ckpt.load_backbone(tmp_path / "backbone.pth")
    teacher = ckpt.load(tmp_path / "run" / "checkpoint.pth")["teacher"]
    assert dim == 512
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, teacher["backbone." + name])


@pytest.mark.slow
@pytest.mark.parametrize("augmentation", ["fast", "device"])
def test_fast_data_paths_train_on_normalised_views(tiny_folder, tmp_path, monkeypatch, augmentation):
    """fast: uint8 views from the workers, normalised on the device; device: JPEG bytes, views made in batches."""
    from dino_tutorial.train import Trainer
    seen, ahead = [], []
    step = Trainer.train_step

    def spy(self, crops, *args, **kwargs):
        seen.append([(tuple(x.shape), x.dtype) for x in crops])
        ahead.append(kwargs.get("before_sync") is not None)
        return step(self, crops, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", spy)
    record = train(tiny_config(tiny_folder, tmp_path / augmentation, augmentation=augmentation, knn_every=0,
                               epochs=1, warmup_epochs=0, num_workers=1))
    assert record["epoch"] == 1 and 0 < record["loss"] < 10
    # the device path makes the next batch's views while a step runs (not after the last step of the epoch)
    assert ahead == ([True] * (len(ahead) - 1) + [False] if augmentation == "device" else [False] * len(ahead))
    assert seen and all(shapes[:2] == [((4, 3, 32, 32), torch.uint8 if augmentation == "fast" else torch.float32)] * 2
                        and shapes[2:] == [((4, 3, 16, 16), shapes[2][1])] * 2 for shapes in seen)
