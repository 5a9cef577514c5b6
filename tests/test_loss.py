"""The DINO loss (paper Eq. 1-4) against cross-entropies computed by hand."""
import math

import numpy as np
import pytest
import torch

from dino_tutorial.loss import DINOLoss, collapse_stats


def softmax(x, t):
    z = np.exp((x - x.max(-1, keepdims=True)) / t)
    return z / z.sum(-1, keepdims=True)


def reference_loss(student, teacher, center, ncrops, tau_s, tau_t):
    """Eq. 3 with a plain double loop over (global teacher view, student view), same-view pairs skipped."""
    batch = teacher.shape[0] // 2
    s_views = np.split(student, ncrops)
    t_views = np.split(teacher, 2)
    total, terms = 0.0, 0
    for iq in range(2):
        p = softmax(t_views[iq] - center, tau_t)
        for v in range(ncrops):
            if v == iq:
                continue
            z = s_views[v] / tau_s
            log_q = z - z.max(-1, keepdims=True)
            log_q = log_q - np.log(np.exp(log_q).sum(-1, keepdims=True))
            total += np.mean(-(p * log_q).sum(-1))
            terms += 1
    assert terms == 2 * ncrops - 2
    return total / terms


def test_loss_equals_hand_computed_cross_entropy_on_a_tiny_example():
    # B = 1, K = 2, two crops: loss = mean of H(P_t(x1), P_s(x2)) and H(P_t(x2), P_s(x1)).
    student = torch.tensor([[0.0, 0.1], [0.1, 0.0]])
    teacher = torch.tensor([[0.04, 0.0], [0.0, 0.0]])
    loss = DINOLoss(2, ncrops=2, teacher_temp=0.04, student_temp=0.1)(student, teacher, epoch=0)
    p1 = [math.e / (math.e + 1), 1 / (math.e + 1)]                 # softmax([1, 0])
    p2 = [0.5, 0.5]
    log_q2 = [math.log(math.e / (math.e + 1)), math.log(1 / (math.e + 1))]  # student view 2 = [1, 0] / 1
    log_q1 = [math.log(1 / (math.e + 1)), math.log(math.e / (math.e + 1))]
    h12 = -(p1[0] * log_q2[0] + p1[1] * log_q2[1])
    h21 = -(p2[0] * log_q1[0] + p2[1] * log_q1[1])
    assert loss.item() == pytest.approx((h12 + h21) / 2, rel=1e-6)


@pytest.mark.parametrize("ncrops", [2, 3, 6])
def test_loss_matches_double_loop_reference(ncrops):
    rng = np.random.default_rng(ncrops)
    batch, k = 4, 7
    student = rng.normal(size=(ncrops * batch, k))
    teacher = rng.normal(size=(2 * batch, k))
    center = rng.normal(size=(1, k)) * 0.1
    loss_fn = DINOLoss(k, ncrops, teacher_temp=0.05, student_temp=0.2)
    loss_fn.center.copy_(torch.tensor(center))
    expected = reference_loss(student, teacher, center, ncrops, 0.2, 0.05)
    loss = loss_fn(torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32), 0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_loss_skips_same_view_pairs():
    # Teacher view 1 is sharp on dimension 0, view 2 on dimension 1. The student's view 1 is sharp on
    # dimension 1 and its view 2 on dimension 0: each matches the *other* teacher view and contradicts its own.
    # Counting the two cross-view pairs only, the loss is ~0; a same-view pair would add ~ 20 / 0.1 nats.
    batch, k = 3, 4
    teacher = torch.zeros(2 * batch, k)
    teacher[:batch, 0] = teacher[batch:, 1] = 1.0
    student = torch.zeros(2 * batch, k)
    student[:batch, 1] = student[batch:, 0] = 20.0
    loss = DINOLoss(k, ncrops=2, teacher_temp=0.01, student_temp=0.1)(student, teacher, 0)
    assert loss.item() < 1e-3


@pytest.mark.parametrize("ncrops", [2, 4, 10])
def test_loss_averages_over_two_times_ncrops_minus_two_pairs(ncrops):
    # With uniform student outputs every pair's cross-entropy is ln K, whatever the teacher: the mean is ln K.
    # Scaling one student local view's contribution shows the divisor: make that view's CE ln K + d.
    batch, k = 2, 8
    teacher = torch.randn(2 * batch, k)
    student = torch.zeros(ncrops * batch, k)
    base = DINOLoss(k, ncrops)(student, teacher, 0).item()
    assert base == pytest.approx(math.log(k), rel=1e-5)
    expected = reference_loss(student.numpy(), teacher.numpy(), np.zeros((1, k)), ncrops, 0.1, 0.04)
    assert base == pytest.approx(expected, rel=1e-5)


def test_center_is_an_ema_of_the_teacher_batch_mean():
    k = 6
    loss_fn = DINOLoss(k, 2, center_momentum=0.9)
    t1, t2 = torch.randn(8, k), torch.randn(8, k)
    loss_fn(torch.randn(8, k), t1, 0)
    loss_fn(torch.randn(8, k), t2, 0)
    c1 = 0.1 * t1.mean(0)
    expected = 0.9 * c1 + 0.1 * t2.mean(0)
    torch.testing.assert_close(loss_fn.center[0], expected, rtol=1e-5, atol=1e-6)


def test_center_is_updated_after_the_loss_is_computed():
    k = 4
    teacher = torch.randn(4, k) * 3
    student = torch.randn(4, k)
    fresh = DINOLoss(k, 2)(student, teacher, 0)
    expected = reference_loss(student.numpy(), teacher.numpy(), np.zeros((1, k)), 2, 0.1, 0.04)
    assert fresh.item() == pytest.approx(expected, rel=1e-5)


def test_teacher_temperature_warms_up_linearly_then_stays():
    loss_fn = DINOLoss(10, 4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30, nepochs=100)
    assert loss_fn.teacher_temp(0) == pytest.approx(0.04)
    assert loss_fn.teacher_temp(29) == pytest.approx(0.07)
    assert loss_fn.teacher_temp(15) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert loss_fn.teacher_temp(99) == pytest.approx(0.07)
    assert len(loss_fn.teacher_temp_schedule) == 100


def test_gradient_flows_to_the_student_only():
    student = torch.randn(6, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    DINOLoss(5, 3)(student, teacher, 0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize("kwargs, message", [
    ({"ncrops": 1}, "ncrops must be >= 2"),
    ({"teacher_temp": 0.0}, "teacher_temp must be > 0, got 0.0"),
    ({"student_temp": -1.0}, "student_temp must be > 0, got -1.0"),
    ({"center_momentum": 1.5}, "center_momentum must be in [0, 1], got 1.5"),
])
def test_bad_loss_parameters_name_the_value(kwargs, message):
    args = {"out_dim": 4, "ncrops": 4, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DINOLoss(**args)


def test_collapse_stats_recognise_uniform_and_one_hot_teachers():
    k, batch, ncrops = 16, 8, 4
    student = torch.zeros(ncrops * batch, k)
    uniform = collapse_stats(student, torch.zeros(2 * batch, k), torch.zeros(1, k), teacher_temp=0.04)
    assert uniform["teacher_entropy"] == pytest.approx(math.log(k), rel=1e-5)
    assert uniform["kl"] == pytest.approx(0.0, abs=1e-5)          # student uniform too
    dominant = torch.zeros(2 * batch, k)
    dominant[:, 3] = 1.0                                          # every sample picks dimension 3
    stats = collapse_stats(student, dominant, torch.zeros(1, k), teacher_temp=0.04)
    assert stats["teacher_entropy"] < 0.01 and stats["center_entropy"] < 0.01
    assert stats["kl"] == pytest.approx(math.log(k), rel=1e-3)    # KL(one-hot || uniform) = ln K


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup_teacher_temp": 0.0}, "warmup_teacher_temp must be > 0, got 0.0"),
    ({"warmup_teacher_temp_epochs": 5, "nepochs": 4}, "warmup_teacher_temp_epochs must be in [0, nepochs=4], got 5"),
])
def test_more_bad_loss_parameters_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DINOLoss(4, 4, **kwargs)


def test_loss_limits_are_allowed_zero_center_momentum_and_warmup_over_every_epoch():
    loss = DINOLoss(4, 3, warmup_teacher_temp=0.02, teacher_temp=0.06, warmup_teacher_temp_epochs=3, nepochs=3,
                    center_momentum=0.0)
    assert [loss.teacher_temp(e) for e in range(3)] == pytest.approx([0.02, 0.04, 0.06])
    assert loss.teacher_temp(10) == pytest.approx(0.06)                # beyond the schedule: its last value
    teacher = torch.randn(2 * 2, 4)
    loss(torch.randn(3 * 2, 4), teacher, 0)
    torch.testing.assert_close(loss.center, teacher.mean(0, keepdim=True))   # momentum 0: the batch mean


def test_loss_defaults_are_the_recipes():
    loss = DINOLoss(8, 10)
    assert (loss.student_temp, loss.center_momentum, loss.teacher_temp(0), loss.teacher_temp(99)) == (
        0.1, 0.9, pytest.approx(0.04), pytest.approx(0.04))
    assert len(loss.teacher_temp_schedule) == 100 and loss.center.shape == (1, 8)


def test_badly_shaped_outputs_are_named():
    loss = DINOLoss(4, 3)
    with pytest.raises(ValueError, match=r"^student_output has 7 rows, not a multiple of ncrops=3$"):
        loss(torch.zeros(7, 4), torch.zeros(4, 4), 0)
    with pytest.raises(ValueError, match=r"^teacher_output must be \(2 \* B, K\) = \(4, 4\), got \(6, 4\)$"):
        loss(torch.zeros(6, 4), torch.zeros(6, 4), 0)


def test_collapse_warnings_name_the_kind_of_collapse():
    from dino_tutorial.loss import diagnose_collapse
    ln_k = math.log(1000)
    assert diagnose_collapse(0.5 * ln_k, 0.5 * ln_k, 1000) is None
    assert diagnose_collapse(0.96 * ln_k, 0.99 * ln_k, 1000).startswith("uniform collapse: teacher entropy 6.63")
    assert diagnose_collapse(0.94 * ln_k, 0.5 * ln_k, 1000) is None
    assert diagnose_collapse(0.5 * ln_k, 0.04 * ln_k, 1000).startswith("one dimension dominates")
    assert diagnose_collapse(0.5 * ln_k, 0.06 * ln_k, 1000) is None
    assert "ln K = 6.91" in diagnose_collapse(0.5 * ln_k, 0.0, 1000)


# ---- the collapse diagnostics, against a computation written out view by view (found by mutation testing)

def collapse_by_hand(student, teacher, center, teacher_temp, student_temp, ncrops):
    batch = teacher.shape[0] // 2
    p = [torch.softmax((teacher[i] - center[0]) / teacher_temp, dim=0) for i in range(2 * batch)]
    entropies = [-(pi * pi.log()).sum() for pi in p]
    mean_p = torch.stack(p).mean(0)
    kls = []
    for a in range(2):
        for v in range(ncrops):
            if v == a:
                continue
            for b in range(batch):
                q = torch.softmax(student[v * batch + b] / student_temp, dim=0)
                pa = p[a * batch + b]
                kls.append((pa * (pa.log() - q.log())).sum())
    return {"teacher_entropy": torch.stack(entropies).mean(), "center_entropy": -(mean_p * mean_p.log()).sum(),
            "kl": torch.stack(kls).mean()}


@pytest.mark.parametrize("student_temp", [0.1, 0.25])
def test_collapse_statistics_match_a_view_by_view_computation(student_temp):
    from dino_tutorial.loss import collapse_stats, collapse_tensors
    generator = torch.Generator().manual_seed(2)
    ncrops, batch, k = 4, 3, 7           # K is neither the teacher rows (6) nor 2 x 12 / ncrops: shapes not confused
    student = torch.randn(ncrops * batch, k, generator=generator)
    teacher = torch.randn(2 * batch, k, generator=generator) * 2
    center = torch.randn(1, k, generator=generator)
    got = collapse_tensors(student, teacher, center, 0.07 * 10, student_temp)
    expected = collapse_by_hand(student, teacher, center, 0.7, student_temp, ncrops)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    floats = collapse_stats(student, teacher, center, 0.7, student_temp)
    assert floats == {name: value.item() for name, value in got.items()}
    if student_temp == 0.1:                                  # the default student temperature is the recipe's
        assert {n: v.item() for n, v in collapse_tensors(student, teacher, center, 0.7).items()} == floats
        assert collapse_stats(student, teacher, center, 0.7) == floats


def test_collapse_warnings_start_strictly_beyond_their_thresholds():
    from dino_tutorial.loss import diagnose_collapse
    ln_k = math.log(100)
    assert diagnose_collapse(0.95 * ln_k, 0.5 * ln_k, 100) is None
    assert diagnose_collapse(0.5 * ln_k, 0.05 * ln_k, 100) is None
    assert diagnose_collapse(0.951 * ln_k, 0.5 * ln_k, 100).startswith("uniform collapse")
    assert diagnose_collapse(0.5 * ln_k, 0.049 * ln_k, 100).startswith("one dimension dominates")


def test_a_centre_momentum_of_one_is_allowed_and_keeps_the_centre():
    loss_fn = DINOLoss(4, ncrops=2, center_momentum=1.0)
    loss_fn(torch.randn(4, 4), torch.randn(4, 4), 0)
    assert torch.equal(loss_fn.center, torch.zeros(1, 4))
