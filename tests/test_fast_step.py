"""The fast training step computes what the reference step computes.

The reference is the authors' way: eager, NCHW, fp32, normalised float crops, and the EMA and per-parameter
clipping as Python loops over the parameters. The fast step uses the package's fused (foreach) clipping and
EMA, uint8 crops normalised on the device, channels_last memory and bf16 autocast. Each difference is checked
on its own: the fused updates and the memory format must agree to fp32 rounding; bf16 autocast, run through
the trainer's own step, must give the same loss and gradients within bf16 tolerance.
"""
import copy

import pytest
import torch

from dino_tutorial.augment import IMAGENET_MEAN, IMAGENET_STD
from dino_tutorial.fast_augment import normalize_uint8
from dino_tutorial.loss import DINOLoss
from dino_tutorial.model import DINOHead, MultiCropWrapper, build_backbone
from dino_tutorial.optim import clip_gradients
from dino_tutorial.teacher import ema_update, make_teacher
from dino_tutorial.train import Trainer
from test_train import tiny_config


def small_student(seed: int = 0) -> MultiCropWrapper:
    torch.manual_seed(seed)
    backbone, dim = build_backbone("resnet18")
    return MultiCropWrapper(backbone, DINOHead(dim, out_dim=128, hidden_dim=64, bottleneck_dim=32))


def uint8_crops(batch: int = 4, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
            for size in (64, 64, 32, 32)]


def float_normalise(x: torch.Tensor) -> torch.Tensor:
    """The reference data path: ToTensor (x / 255) then Normalize, in fp32."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def loss_and_gradients(student, teacher, crops, memory_format=torch.contiguous_format, bf16=False):
    student.zero_grad(set_to_none=True)
    loss_fn = DINOLoss(128, ncrops=len(crops))
    crops = [x.contiguous(memory_format=memory_format) for x in crops]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad():
            teacher_out = teacher(crops[:2])
        loss = loss_fn(student(crops), teacher_out, epoch=0)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


def test_fused_clipping_and_ema_equal_the_authors_loops():
    student, looped = small_student(), small_student()
    for i, (p, q) in enumerate(zip(student.parameters(), looped.parameters())):  # both sides of the threshold
        p.grad = torch.randn_like(p) * (0.01 if i % 2 else 10.0)
        q.grad = p.grad.clone()
    with torch.no_grad():
        for p in looped.parameters():                          # the authors' clip_gradients, parameter by parameter
            norm = p.grad.norm(2)
            coef = 3.0 / (norm + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)
    clip_gradients(student, 3.0)
    for p, q in zip(student.parameters(), looped.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)

    teacher, teacher_looped = make_teacher(small_student(seed=1)), make_teacher(small_student(seed=1))
    ema_update(teacher, student, 0.996)
    with torch.no_grad():
        for p_s, p_t in zip(student.parameters(), teacher_looped.parameters()):
            p_t.mul_(0.996).add_((1 - 0.996) * p_s.detach())
    for p, q in zip(teacher.parameters(), teacher_looped.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_uint8_crops_normalised_on_the_device_and_channels_last_give_the_reference_step():
    crops = uint8_crops()
    reference_student = small_student()
    teacher = make_teacher(reference_student)
    fast_student = copy.deepcopy(reference_student).to(memory_format=torch.channels_last)
    fast_teacher = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
    loss_ref, grads_ref = loss_and_gradients(reference_student, teacher, [float_normalise(x) for x in crops])
    loss_fast, grads_fast = loss_and_gradients(fast_student, fast_teacher, [normalize_uint8(x) for x in crops],
                                               memory_format=torch.channels_last)
    assert loss_fast == pytest.approx(loss_ref, rel=1e-5)
    assert grads_ref.keys() == grads_fast.keys()
    for name, g in grads_ref.items():      # fp32 sums in another order: a few 1e-4 of the norm, through BatchNorm
        assert (grads_fast[name] - g).norm() <= 2e-3 * g.norm() + 1e-8, name


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def test_the_trainers_bf16_step_gives_the_fp32_steps_loss_and_gradients(folder_80px, tmp_path):
    """Two trainers with the same seed (same initial weights), one fp32 and one bf16 autocast, make one step
    on the same uint8 crops (64 and 32 px: see the next test for smaller ones). bf16 keeps 8 significant bits,
    so the two agree to a few percent, not to fp32 rounding. Calibration, measured on this model: merely rounding
    the fp32 step's inputs to bf16 moves its loss by 1.7% and leaves a gradient cosine of 0.98; bf16 autocast
    rounds every layer, and at batch 4-16 its gradients keep a cosine of 0.89-0.92 and their norm within 3%."""
    crops = uint8_crops(batch=16)
    steps = {}
    for amp in ("none", "bf16"):
        config = tiny_config(folder_80px, tmp_path / amp, amp=amp, knn_every=0, epochs=1, warmup_epochs=0,
                             clip_grad=0.0, freeze_last_layer=0, global_size=64, local_size=32, batch_size_per_gpu=16)
        trainer = Trainer(config)
        loss, _ = trainer.train_step([x.clone() for x in crops], epoch=0, it=0, i=0)
        steps[amp] = (loss, {n: p.grad.clone() for n, p in trainer.student.named_parameters() if p.grad is not None})
    (loss32, grads32), (loss16, grads16) = steps["none"], steps["bf16"]
    assert loss16 == pytest.approx(loss32, rel=0.05)
    assert grads32.keys() == grads16.keys() and grads32
    everything32 = torch.cat([g.flatten() for g in grads32.values()])
    everything16 = torch.cat([grads16[n].flatten() for n in grads32])
    assert torch.isfinite(everything16).all()
    assert _cosine(everything16, everything32) > 0.85
    assert everything16.norm() == pytest.approx(everything32.norm().item(), rel=0.1)


def test_bf16_on_the_cpu_is_refused_where_its_convolution_gradients_are_wrong(tiny_folder, tmp_path):
    """16 px crops leave a 1 x 1 map before ResNet's last strided 3 x 3 convolution, where PyTorch's CPU bf16
    kernel returns garbage weight gradients; the trainer says so before any work instead of training on them."""
    config = tiny_config(tiny_folder, tmp_path / "run", amp="bf16", global_size=32, local_size=16)
    with pytest.raises(ValueError, match="amp=bf16 on the CPU computes wrong gradients for 16 px crops"):
        Trainer(config)
    Trainer(tiny_config(tiny_folder, tmp_path / "fp32", amp="none", global_size=32, local_size=16))   # fine in fp32
