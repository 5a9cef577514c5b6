"""Long runs survive signals, NaNs, collapse and bad images without losing work (CPU, tiny runs)."""
import os
import signal
from pathlib import Path

import pytest
import torch

from dino_tutorial import checkpoint as ckpt
from dino_tutorial.data import BadImageError
from dino_tutorial.loss import DINOLoss, diagnose_collapse
from dino_tutorial.train import Trainer, train

from test_train import tiny_config

pytestmark = pytest.mark.slow


def same_parameters(path_a: Path, path_b: Path) -> None:
    a, b = ckpt.load(path_a), ckpt.load(path_b)
    for net in ("student", "teacher"):
        for name, value in a[net].items():
            assert torch.equal(value, b[net][name]), f"{net}.{name} differs"


@pytest.mark.parametrize("augmentation", ["pil", "device"])
def test_sigterm_saves_the_current_iteration_and_the_resumed_run_equals_an_uninterrupted_one(tiny_folder, tmp_path,
                                                                                            monkeypatch, augmentation):
    """With augmentation="device" the next batch's views are made ahead, inside the step: they are dropped at
    the stop and made again on resume, identically."""
    config = dict(knn_every=0, max_iters_per_epoch=3, deterministic=True, augmentation=augmentation)
    train(tiny_config(tiny_folder, tmp_path / "straight", **config))
    real_step = Trainer.train_step

    def step_then_signal(self, crops, epoch, it, i, **kwargs):
        result = real_step(self, crops, epoch, it, i, **kwargs)
        if it == 4:                                       # epoch 2, iteration 2
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    out = train(tiny_config(tiny_folder, tmp_path / "killed", **config))
    assert out["interrupted"]
    state = ckpt.load(tmp_path / "killed" / "checkpoint.pth")
    assert (state["epoch"], state["iteration"]) == (1, 2)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    train(tiny_config(tiny_folder, tmp_path / "killed", **config))
    same_parameters(tmp_path / "straight" / "checkpoint.pth", tmp_path / "killed" / "checkpoint.pth")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL       # handlers restored after the run


def test_deterministic_runs_with_the_same_seed_are_bitwise_equal(tiny_folder, tmp_path):
    for name in ("a", "b"):
        train(tiny_config(tiny_folder, tmp_path / name, knn_every=0, deterministic=True, num_workers=1))
    same_parameters(tmp_path / "a" / "checkpoint.pth", tmp_path / "b" / "checkpoint.pth")


def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tiny_folder, tmp_path, monkeypatch):
    real_forward = DINOLoss.forward

    def nan_in_epoch_two(self, student_output, teacher_output, epoch):
        loss = real_forward(self, student_output, teacher_output, epoch)
        return loss * float("nan") if epoch == 1 else loss

    monkeypatch.setattr(DINOLoss, "forward", nan_in_epoch_two)
    with pytest.raises(FloatingPointError) as error:
        train(tiny_config(tiny_folder, tmp_path / "run", knn_every=0))
    message = str(error.value)
    assert "at epoch 2, iteration 1" in message and "fp16" in message and "\n" not in message
    assert ckpt.load(tmp_path / "run" / "checkpoint.pth")["epoch"] == 1


@pytest.mark.parametrize("settings, expected", [
    ({"teacher_temp": 1.0, "warmup_teacher_temp": 1.0}, "uniform collapse"),       # no sharpening
    ({"center_momentum": 1.0, "teacher_temp": 0.01, "warmup_teacher_temp": 0.01,   # no centering, and a
      "momentum_teacher": 0.0, "lr": 0.5, "optimizer": "sgd", "freeze_last_layer": 0},  # teacher = student
     "one dimension dominates"),
])
def test_each_collapse_made_on_purpose_raises_the_matching_warning(tiny_folder, tmp_path, settings, expected):
    config = tiny_config(tiny_folder, tmp_path / "run", knn_every=0, epochs=4, max_iters_per_epoch=3, **settings)
    with pytest.warns(RuntimeWarning, match=expected):
        train(config)


def test_a_healthy_teacher_raises_no_collapse_warning():
    assert diagnose_collapse(teacher_entropy=3.0, center_entropy=7.5, out_dim=4096) is None


def break_one_image(folder: Path, keep_header: bool = False) -> Path:
    """Truncate one training JPEG: to 200 bytes (no readable header), or to half (header intact, pixels cut)."""
    path = sorted((folder / "train" / "class1").iterdir())[0]
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if keep_header else data[:200])
    return path


# The device path reads the header in the workers and decodes the pixels in the training process: a file
# can fail in either place.
BREAKS = [("pil", False), ("device", False), ("device", True)]


@pytest.mark.parametrize("augmentation, keep_header", BREAKS)
def test_an_unreadable_image_stops_the_run_naming_the_file(tiny_folder, tmp_path, augmentation, keep_header):
    bad = break_one_image(tiny_folder, keep_header)
    with pytest.raises(BadImageError, match=str(bad)):
        train(tiny_config(tiny_folder, tmp_path / "run", knn_every=0, max_iters_per_epoch=0, epochs=1,
                          warmup_epochs=0, augmentation=augmentation))


@pytest.mark.parametrize("augmentation, keep_header", BREAKS)
def test_skip_bad_images_counts_and_logs_every_skipped_file(tiny_folder, tmp_path, augmentation, keep_header):
    bad = break_one_image(tiny_folder, keep_header)
    record = train(tiny_config(tiny_folder, tmp_path / "run", knn_every=0, max_iters_per_epoch=0, epochs=1,
                               warmup_epochs=0, skip_bad_images=True, augmentation=augmentation))
    assert record["skipped_images"] == 1
    assert str(bad) in (tmp_path / "run" / "bad_images.log").read_text()


def test_kill_resume_script_survives_sigkill_during_training_and_checkpoint_writes():
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import kill_resume
    assert kill_resume.main(["--kills", "2", "--epochs", "6", "--max-delay", "1"]) == 0


def test_crops_larger_than_the_images_fail_before_any_work(tiny_folder, tmp_path):
    with pytest.raises(ValueError, match="global_size 64 is larger than the images: their median short side is 40"):
        train(tiny_config(tiny_folder, tmp_path / "run", global_size=64, knn_every=0))
    assert not (tmp_path / "run" / "checkpoint.pth").exists()
