"""Trainer.train_step against the package's pieces applied by hand to the same views (CPU, seconds): the loss
and the collapse statistics it returns, both data paths, per-parameter clipping, and its error on a NaN."""
import copy
import math

import pytest
import torch

from dino_tutorial.fast_augment import normalize_uint8
from dino_tutorial.loss import collapse_stats
from dino_tutorial.train import Trainer

from test_train import tiny_config


def trainer_for(folder, out, **overrides):
    return Trainer(tiny_config(folder, out, knn_every=0, amp="none", **overrides))


@pytest.mark.parametrize("augmentation", ["pil", "fast"])
def test_the_step_returns_the_loss_and_statistics_of_its_own_outputs(tiny_folder, tmp_path, augmentation):
    # a student temperature other than the default: the statistics must be computed with the configured one
    trainer = trainer_for(tiny_folder, tmp_path / "run", augmentation=augmentation, student_temp=0.15)
    crops, _, _ = next(iter(trainer.loader))
    student, teacher = copy.deepcopy(trainer.student), copy.deepcopy(trainer.teacher)
    loss_fn = copy.deepcopy(trainer.dino_loss)
    views = [normalize_uint8(x) if x.dtype == torch.uint8 else x for x in crops]
    assert (crops[0].dtype == torch.uint8) == (augmentation == "fast")
    with torch.no_grad():
        t, s = teacher(views[:2]), student(views)
    epoch = 1
    expected_stats = collapse_stats(s, t, loss_fn.center, loss_fn.teacher_temp(epoch), trainer.config.student_temp)
    expected_loss = loss_fn(s, t, epoch).item()
    loss, stats = trainer.train_step(crops, epoch=epoch, it=3, i=0)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert set(stats) == set(expected_stats)
    for name, value in expected_stats.items():
        assert stats[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_every_gradient_is_clipped_to_the_configured_norm(tiny_folder, tmp_path):
    clip = 1e-3
    trainer = trainer_for(tiny_folder, tmp_path / "clipped", clip_grad=clip)
    crops, _, _ = next(iter(trainer.loader))
    trainer.train_step(crops, epoch=1, it=3, i=0)
    norms = [p.grad.norm().item() for p in trainer.student.parameters() if p.grad is not None]
    assert norms and max(norms) <= clip * (1 + 1e-4)
    free = trainer_for(tiny_folder, tmp_path / "free", clip_grad=0)
    free.train_step(crops, epoch=1, it=3, i=0)
    assert max(p.grad.norm().item() for p in free.student.parameters() if p.grad is not None) > 10 * clip


def test_a_non_finite_loss_names_the_epoch_the_iteration_and_the_settings(tiny_folder, tmp_path, monkeypatch):
    trainer = trainer_for(tiny_folder, tmp_path / "run")
    crops, _, _ = next(iter(trainer.loader))
    real = trainer.dino_loss.forward
    monkeypatch.setattr(trainer.dino_loss, "forward", lambda *args: real(*args) * math.nan)
    with pytest.raises(FloatingPointError) as error:
        trainer.train_step(crops, epoch=1, it=3, i=4)
    message = str(error.value)
    assert message.startswith("loss is nan at epoch 2, iteration 5: likely causes are fp16 overflow")
    assert f"lr={trainer.lr_schedule[3]:.3g}" in message
    assert f"temperature too low ({trainer.dino_loss.teacher_temp(1)})" in message


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_both_networks_in_the_chosen_dtype_and_the_loss_in_fp32(tiny_folder, tmp_path, amp, dtype):
    config = tiny_config(tiny_folder, tmp_path / amp, knn_every=0, amp=amp, augmentation="fast",
                         global_size=32, local_size=32)
    trainer = Trainer(config)
    assert trainer.amp_dtype == dtype
    assert trainer.scaler.is_enabled() == (amp == "fp16")          # fp16 needs a gradient scaler
    crops, _, _ = next(iter(trainer.loader))
    student, teacher = copy.deepcopy(trainer.student), copy.deepcopy(trainer.teacher)
    loss_fn = copy.deepcopy(trainer.dino_loss)
    views = [normalize_uint8(x) for x in crops]
    with torch.no_grad():
        fp32_loss = copy.deepcopy(loss_fn)(copy.deepcopy(student)(views), copy.deepcopy(teacher)(views[:2]),
                                           1).item()                # the loss updates its centre: a copy
    with torch.autocast("cpu", dtype=dtype):
        with torch.no_grad():
            t = teacher(views[:2])
        s = student(views)
    assert t.dtype == s.dtype == dtype
    amp_loss = loss_fn(s.float(), t.float(), 1).item()
    loss, _ = trainer.train_step(crops, epoch=1, it=3, i=0)
    assert loss == pytest.approx(amp_loss, rel=1e-5)
    assert loss != pytest.approx(fp32_loss, rel=1e-5)          # the step did run under autocast


def test_the_teacher_runs_in_train_mode_at_every_step_so_its_batchnorm_uses_batch_statistics(tiny_folder, tmp_path):
    # The authors' teacher is never put in eval mode during training: its BatchNorm layers normalise with the
    # statistics of the current batch of global views, as the student's do. Checked at every step of a short
    # run, also after the k-NN evaluation of epoch 1 (which itself runs the teacher in eval mode).
    trainer = Trainer(tiny_config(tiny_folder, tmp_path / "run", knn_every=1, amp="none"))
    modes = []
    real_step = trainer.train_step

    def recording_step(crops, epoch, it, i, **kwargs):
        norms = [m for m in trainer.teacher.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms, "the tiny model has BatchNorm layers"
        modes.append((trainer.teacher.training, all(m.training for m in norms), trainer.student.training))
        return real_step(crops, epoch, it, i, **kwargs)

    trainer.train_step = recording_step
    trainer.fit()
    assert len(modes) == trainer.config.epochs * trainer.niter
    assert all(modes_of_step == (True, True, True) for modes_of_step in modes), modes
