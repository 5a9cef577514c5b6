"""The trainer's step follows the recipe: schedules applied to the right groups, last layer frozen in epoch 0
only, the teacher in train mode with batch-statistics BatchNorm (as the authors' teacher)."""
import pytest
import torch

from dino_tutorial.train import Trainer
from test_train import tiny_config


@pytest.fixture
def trainer(tiny_folder, tmp_path):
    return Trainer(tiny_config(tiny_folder, tmp_path / "run", knn_every=0, weight_decay=0.04, weight_decay_end=0.4,
                               clip_grad=0.0, freeze_last_layer=1))


def one_batch(trainer):
    crops, _, _ = next(iter(trainer.loader))
    return crops


def test_each_step_sets_the_scheduled_lr_on_every_group_and_weight_decay_on_weights_only(trainer):
    it = 3
    trainer.train_step(one_batch(trainer), epoch=1, it=it, i=1)
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["lr"] == no_decay["lr"] == pytest.approx(trainer.lr_schedule[it])
    assert decay["weight_decay"] == pytest.approx(trainer.wd_schedule[it]) and trainer.wd_schedule[it] > 0.04
    assert no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("epoch", [0, 1])
def test_the_step_freezes_the_last_layer_during_epoch_0_only(trainer, epoch):
    names = dict(trainer.student.named_parameters())
    before = {n: p.detach().clone() for n, p in names.items()}
    trainer.train_step(one_batch(trainer), epoch=epoch, it=2 * epoch + 1, i=1)
    last = names["head.last_layer.weight_v"]
    assert torch.equal(last, before["head.last_layer.weight_v"]) == (epoch == 0)
    assert not torch.equal(names["head.mlp.0.weight"], before["head.mlp.0.weight"])


def test_the_teacher_stays_in_train_mode_and_normalises_with_batch_statistics(trainer):
    teacher = trainer.teacher
    bn = teacher.backbone.bn1
    running = bn.running_mean.clone()
    crops = one_batch(trainer)
    trainer.train_step(crops, epoch=1, it=1, i=1)
    assert all(m.training for m in teacher.modules())
    assert not torch.equal(bn.running_mean, running)      # a forward in train mode updates the running stats
    # its outputs are those of batch statistics, not of the running estimates
    with torch.no_grad():
        train_out = teacher(crops[:2])
        teacher.eval()
        eval_out = teacher(crops[:2])
        teacher.train()
        batch = torch.cat(crops[:2])
        x = teacher.backbone.conv1(batch)
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        expected = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
        expected = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(bn(x), expected, rtol=1e-4, atol=1e-4)
    assert (train_out - eval_out).abs().max() > 1e-4
