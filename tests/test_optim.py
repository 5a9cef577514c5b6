"""Optimisation details of the recipe (paper Appendix D, the authors' main_dino.py and utils.py): which parameters
get weight decay, per-parameter clipping, the last-layer freeze, LARS, and the learning rate scaled by the batch."""
import math

import pytest
import torch
from torch import nn

from dino_tutorial.config import TrainConfig
from dino_tutorial.optim import LARS, build_optimizer, cancel_last_layer_gradients, clip_gradients, param_groups
from dino_tutorial.model import DINOHead, MultiCropWrapper
from dino_tutorial.train import Trainer


def tiny_model() -> nn.Module:
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return MultiCropWrapper(backbone, DINOHead(4, 6, hidden_dim=5, bottleneck_dim=3))


def test_weight_decay_applies_to_weights_only_not_to_biases_or_norms():
    model = tiny_model()
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model)
    assert sorted(names[id(p)] for p in decay["params"]) == [
        "backbone.0.weight", "head.last_layer.weight_v", "head.mlp.0.weight", "head.mlp.2.weight", "head.mlp.4.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "backbone.0.bias", "backbone.1.bias", "backbone.1.weight", "head.mlp.0.bias", "head.mlp.2.bias",
        "head.mlp.4.bias"]                                 # weight_g is frozen (norm_last_layer): in no group
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] is True
    assert "weight_decay" not in decay                  # set every iteration from the schedule
    for name in ("sgd", "lars", "adamw"):
        groups = build_optimizer(name, model).param_groups
        assert groups[1]["weight_decay"] == 0.0 and len(groups) == 2


def test_sgd_is_the_resnet_recipes_optimizer_with_momentum_09():
    opt = build_optimizer("sgd", tiny_model())
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9
    assert type(build_optimizer("lars", tiny_model())) is LARS
    assert type(build_optimizer("adamw", tiny_model())) is torch.optim.AdamW
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        build_optimizer("adam", tiny_model())


def test_gradient_clipping_is_per_parameter_not_one_global_norm():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    model = nn.Module()
    model.a, model.b = a, b
    a.grad = torch.tensor([6.0, 8.0])                   # norm 10 -> scaled to norm 3
    b.grad = torch.tensor([1.0, 2.0, 2.0])              # norm 3 -> unchanged (a global norm would shrink it)
    norms = clip_gradients(model, 3.0)
    torch.testing.assert_close(norms, torch.tensor([10.0, 3.0]))
    torch.testing.assert_close(a.grad, torch.tensor([1.8, 2.4]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, torch.tensor([1.0, 2.0, 2.0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("epoch, frozen", [(0, True), (1, False), (5, False)])
def test_last_layer_gradients_are_dropped_in_epoch_0_only(epoch, frozen):
    model = tiny_model()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    cancel_last_layer_gradients(model, epoch, freeze_last_layer=1)
    for name, p in model.named_parameters():
        assert (p.grad is None) == (frozen and "last_layer" in name), name


def test_lars_trust_ratio_on_a_hand_computed_example():
    """w = (3, 4), g = (1, 0), wd = 0.1: update = g + wd w = (1.3, 0.4), |w| = 5, |update| = sqrt(1.85);
    ratio = 0.001 * 5 / sqrt(1.85) = 0.0036761; lr 2: w <- w - 2 * ratio * update. Biases: plain momentum SGD."""
    w = nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    bias = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = LARS([{"params": [w]}, {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}],
               lr=2.0, weight_decay=0.1, momentum=0.9, eta=0.001)
    w.grad = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    bias.grad = torch.tensor([0.5], dtype=torch.float64)
    opt.step()
    ratio = 0.001 * 5 / math.sqrt(1.85)
    assert ratio == pytest.approx(0.0036761, rel=1e-4)
    first = [3.0 - 2 * ratio * 1.3, 4.0 - 2 * ratio * 0.4]
    torch.testing.assert_close(w.detach(), torch.tensor([first], dtype=torch.float64))
    torch.testing.assert_close(bias.detach(), torch.tensor([0.0], dtype=torch.float64))     # 1 - 2 * 0.5
    # second step: the momentum buffer keeps 0.9 of the first scaled update
    w.grad = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    bias.grad = torch.tensor([0.5], dtype=torch.float64)
    opt.step()
    update = [0.1 * first[0], 1.0 + 0.1 * first[1]]
    ratio2 = 0.001 * math.hypot(*first) / math.hypot(*update)
    buf = [0.9 * ratio * 1.3 + ratio2 * update[0], 0.9 * ratio * 0.4 + ratio2 * update[1]]
    torch.testing.assert_close(w.detach(), torch.tensor([[first[0] - 2 * buf[0], first[1] - 2 * buf[1]]],
                                                        dtype=torch.float64))
    torch.testing.assert_close(bias.detach(), torch.tensor([-1.0 - 2 * 0.9 * 0.5], dtype=torch.float64))


def test_lars_leaves_the_update_unscaled_when_a_norm_is_zero():
    w = nn.Parameter(torch.zeros(1, 2))
    opt = LARS([w], lr=1.0, momentum=0.0)
    w.grad = torch.tensor([[0.5, -0.5]])
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([[-0.5, 0.5]]))


def schedules_for(world_size: int, **settings) -> Trainer:
    """The trainer's schedules for a config, without data or models."""
    trainer = object.__new__(Trainer)
    trainer.config = TrainConfig.from_preset("small", data_path="x", **settings)
    trainer.world_size, trainer.niter = world_size, 10
    trainer._build_schedules()
    return trainer


@pytest.mark.parametrize("world_size", [1, 4])
def test_learning_rate_scales_with_the_total_batch_over_processes(world_size):
    t = schedules_for(world_size, lr=0.03, batch_size_per_gpu=64, epochs=20, warmup_epochs=2, min_lr=1e-6,
                      weight_decay=1e-4, weight_decay_end=0.4, momentum_teacher=0.996, momentum_teacher_end=1.0)
    peak = 0.03 * 64 * world_size / 256                  # 0.0075 on one process, 0.03 on four
    assert t.total_batch == 64 * world_size and len(t.lr_schedule) == 200
    assert t.lr_schedule[0] == 0.0 and t.lr_schedule[19] == pytest.approx(peak)       # linear warmup, 2 epochs
    assert t.lr_schedule[20] == pytest.approx(peak) and t.lr_schedule.max() == pytest.approx(peak)
    assert t.lr_schedule[-1] == pytest.approx(1e-6, abs=peak * 1e-3)
    assert t.lr_schedule[110] == pytest.approx(1e-6 + (peak - 1e-6) * 0.5 * (1 + math.cos(math.pi * 90 / 180)))
    # weight decay and teacher momentum: cosines over the whole run, no warmup
    assert t.wd_schedule[0] == pytest.approx(1e-4) and t.wd_schedule[100] == pytest.approx((1e-4 + 0.4) / 2)
    assert t.momentum_schedule[0] == pytest.approx(0.996) and t.momentum_schedule[100] == pytest.approx(0.998)
    assert t.momentum_schedule[-1] == pytest.approx(1.0, abs=1e-6)


def test_lars_defaults_are_the_authors_eta_0001_and_momentum_09():
    opt = build_optimizer("lars", tiny_model())
    assert opt.defaults["eta"] == 0.001 and opt.defaults["momentum"] == 0.9
    assert opt.param_groups[0]["lars_exclude"] is False and opt.param_groups[1]["lars_exclude"] is True


def test_frozen_parameters_are_left_out_wherever_they_sit():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    model[0].weight.requires_grad_(False)                # the first parameter frozen: the rest still grouped
    decay, no_decay = param_groups(model)
    assert [p.shape for p in decay["params"]] == [(4, 3)]
    assert [p.shape for p in no_decay["params"]] == [(3,), (4,)]
