"""The momentum teacher (paper Sec. 3.1): an EMA of the student, never trained by gradients."""
import pytest
import torch
from torch import nn

from dino_tutorial.loss import DINOLoss
from dino_tutorial.model import DINOHead, MultiCropWrapper
from dino_tutorial.teacher import ema_update, make_teacher


def small_student():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return MultiCropWrapper(backbone, DINOHead(8, 16, hidden_dim=12, bottleneck_dim=6))


def perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


def test_ema_with_momentum_one_leaves_the_teacher_unchanged():
    student = small_student()
    teacher = make_teacher(student)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, perturbed(student), momentum=1.0)
    for p, q in zip(teacher.parameters(), before):
        assert torch.equal(p, q)


def test_ema_with_momentum_zero_copies_the_student():
    student = perturbed(small_student())
    teacher = make_teacher(small_student())
    ema_update(teacher, student, momentum=0.0)
    for p, q in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(p, q)


def test_ema_is_the_convex_combination_of_teacher_and_student():
    student = small_student()
    teacher = perturbed(make_teacher(student))
    t_before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, momentum=0.75)
    for p, t0, s in zip(teacher.parameters(), t_before, student.parameters()):
        torch.testing.assert_close(p, 0.75 * t0 + 0.25 * s.detach())


def test_ema_averages_parameters_only_not_batchnorm_statistics():
    student = small_student()
    teacher = make_teacher(student)
    student.backbone[1].running_mean.fill_(5.0)
    ema_update(teacher, student, momentum=0.0)
    assert torch.equal(teacher.backbone[1].running_mean, torch.zeros(8))


def test_teacher_is_never_updated_by_gradients():
    student = small_student()
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    crops = [torch.randn(4, 3, 12, 12), torch.randn(4, 3, 12, 12), torch.randn(4, 3, 8, 8)]
    loss = DINOLoss(16, 3)(student(crops), teacher(crops[:2]), 0)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_ema_update_does_not_record_autograd_history():
    student = small_student()
    teacher = make_teacher(student)
    ema_update(teacher, student, 0.5)
    assert all(p.grad_fn is None for p in teacher.parameters())


def test_momentum_out_of_range_is_rejected():
    student = small_student()
    with pytest.raises(ValueError, match="teacher momentum must be in \\[0, 1\\], got 1.1"):
        ema_update(make_teacher(student), student, 1.1)


def test_teacher_is_made_in_train_mode_like_the_student():
    student = small_student().train()
    teacher = make_teacher(student)
    assert all(m.training for m in teacher.modules())
    x = torch.randn(6, 3, 10, 10)
    with torch.no_grad():
        out = teacher.backbone(x)
    assert not torch.equal(teacher.backbone[1].running_mean, torch.zeros(8))    # batch statistics were used
    assert out.shape == (6, 8)


def test_unwrap_reaches_the_model_inside_compile_and_ddp_wrappers():
    from types import SimpleNamespace
    from dino_tutorial.teacher import unwrap
    inner = small_student()
    assert unwrap(inner) is inner
    assert unwrap(SimpleNamespace(module=inner)) is inner                       # DistributedDataParallel
    assert unwrap(SimpleNamespace(_orig_mod=inner)) is inner                    # torch.compile
    assert unwrap(SimpleNamespace(_orig_mod=SimpleNamespace(module=inner))) is inner   # compile(DDP(model))
    teacher = make_teacher(SimpleNamespace(_orig_mod=SimpleNamespace(module=inner)))
    assert isinstance(teacher, MultiCropWrapper) and teacher is not inner
