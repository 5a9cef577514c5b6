# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 The training loop
#
# *The loss of chapter 04 does not train a network by itself: around it sit four schedules, a frozen last
# layer, clipped gradients and, on GPUs, mixed precision. This chapter takes them one at a time on real
# gradients, then trains a small DINO on Imagenette.*
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/06_training_loop.ipynb)
#
# **Estimated time:** 95 minutes.

# %% [markdown]
# ## Tutorial objectives
#
# - Compute and plot the four schedules of the authors' ResNet-50 recipe (learning rate, weight decay, teacher
#   momentum, teacher temperature) for a real ImageNet run, and write the cosine schedule yourself.
# - Measure, on the gradient of a real batch, why each parameter's gradient is clipped separately, why the last
#   layer is frozen during the first epoch and why fp16 training needs a gradient scaler.
# - Write one complete DINO training step and check it against the package's trainer.
# - Train the `small` preset on Imagenette and read its curves: loss, teacher entropy, k-NN accuracy.

# %% [markdown]
# ## Setup

# %% tags=["hide-input"]
# Install the course package when it is missing (Colab); locally: `pip install -e .` in the repo.
try:
    import dino_tutorial
except ImportError:
    # %pip install -q git+https://github.com/dino-tutorial/dino-tutorial
    import dino_tutorial

# %% tags=["hide-input"]
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from dino_tutorial.augment import MultiCropAugmentation
from dino_tutorial.data import collate_views, imagenet, imagenette_root
from dino_tutorial.fast_augment import normalize_uint8
from dino_tutorial.loss import DINOLoss
from dino_tutorial.model import DINOHead, MultiCropWrapper, build_backbone
from dino_tutorial.optim import cancel_last_layer_gradients, clip_gradients
from dino_tutorial.schedules import cosine_schedule
from dino_tutorial.teacher import ema_update, make_teacher
from dino_tutorial.notebook import check_exercise, course_file, glue, setup
from dino_tutorial.train import TrainConfig, Trainer, set_seed, train

DEVICE = setup(seed=0)
WORK_DIR = Path(tempfile.mkdtemp(prefix="dino06_"))  # the runs of this chapter write here


# %% tags=["hide-input"]
# The data: Imagenette (imagenette-mini under $DINO_DATA, else downloaded into the data root).
try:
    DATA_ROOT, problem = imagenette_root(), None
except FileNotFoundError as err:
    DATA_ROOT, problem = None, err
if problem:
    print(f"This chapter trains on Imagenette: set DINO_DATA to a folder holding imagenette-mini/ "
          f"or imagenette2-160/, or run online so that Imagenette is downloaded ({problem})")
    raise SystemExit(1)
counts = {split: len(imagenet(DATA_ROOT, split)) for split in ("train", "val")}
print(f"Imagenette ({DATA_ROOT.name}): {counts['train']:,} training and {counts['val']:,} "
      f"validation images, 10 classes")

# %% [markdown]
# ## Section 1: four schedules
#
# A DINO run changes four numbers as it goes (Section 3.1 and the implementation details of Section 3.2 of the
# paper):
#
# - the **learning rate** rises linearly from 0 during a warmup, then decays along half a cosine to a small
#   minimum; its peak scales with the total batch, `lr * batch / 256` (the linear scaling rule);
# - the **weight decay** follows a cosine from a start value to an end value (weights only: biases and
#   BatchNorm parameters get none);
# - the **teacher momentum** $\lambda$ of the EMA (chapter 03) follows a cosine from 0.996 to 1;
# - the **teacher temperature** $\tau_t$ of the loss (chapter 04) may warm up linearly, then stays constant.
#
# The first three change at every iteration, the temperature once per epoch. The package precomputes each
# per-iteration schedule as one array with `cosine_schedule(base_value, final_value, epochs, niter_per_ep,
# warmup_epochs)`, and the loss holds its temperatures in `DINOLoss.teacher_temp_schedule`.
#
# To draw them we need the number of iterations per epoch of a real run. Take the authors' ResNet-50 command
# (the preset `rn50_imagenet`) on ImageNet's 1,281,167 training images, on 8 GPUs with 64 images each. Every
# process reads its own share of the images (`DistributedSampler`, which drops the remainder) in full batches
# of 64.

# %%
IMAGENET_TRAIN_IMAGES = 1_281_167
GPUS = 8
rn50 = TrainConfig.from_preset("rn50_imagenet")
total_batch = GPUS * rn50.batch_size_per_gpu
niter = IMAGENET_TRAIN_IMAGES // GPUS // rn50.batch_size_per_gpu   # iterations per epoch
peak_lr = rn50.lr * total_batch / 256

lr_schedule = cosine_schedule(peak_lr, rn50.min_lr, rn50.epochs, niter, rn50.warmup_epochs)
wd_schedule = cosine_schedule(rn50.weight_decay, rn50.weight_decay_end, rn50.epochs, niter)
momentum_schedule = cosine_schedule(rn50.momentum_teacher, 1.0, rn50.epochs, niter)
rn50_loss = DINOLoss(rn50.out_dim, 2 + rn50.local_crops_number, rn50.warmup_teacher_temp,
                     rn50.teacher_temp, rn50.warmup_teacher_temp_epochs, rn50.epochs)
temp_schedule = rn50_loss.teacher_temp_schedule

print(f"batch {GPUS} x {rn50.batch_size_per_gpu} = {total_batch}: {niter:,} iterations per epoch, "
      f"{len(lr_schedule):,} in {rn50.epochs} epochs; peak learning rate {rn50.lr} x "
      f"{total_batch}/256 = {peak_lr:.3g}")
glue("niter", f"{niter:,}", display=False)
glue("total_iters", f"{len(lr_schedule):,}", display=False)
glue("total_batch", f"{total_batch}", display=False)
glue("peak_lr", f"{peak_lr:.3g}", display=False)

# %% [markdown]
# The figure shows these schedules (solid lines). For contrast, the dashed lines are the settings the paper
# uses for Vision Transformers (Section 3.2): weight decay from 0.04 to 0.4, and a teacher temperature that
# warms up from 0.04 to 0.07 over 30 epochs. The ResNet-50 command keeps both constant.

# %% tags=["hide-input"]
vit_wd = cosine_schedule(0.04, 0.4, rn50.epochs, niter)
vit_temps = DINOLoss(rn50.out_dim, 10, warmup_teacher_temp=0.04, teacher_temp=0.07,
                     warmup_teacher_temp_epochs=30, nepochs=rn50.epochs).teacher_temp_schedule
epochs_axis = np.arange(len(lr_schedule)) / niter   # iteration -> fractional epoch

fig, axes = plt.subplots(2, 2, figsize=(9, 5.1))
ax = axes[0, 0]
ax.plot(epochs_axis, lr_schedule)
ax.axvline(rn50.warmup_epochs, color="grey", linestyle=":", linewidth=1)
ax.annotate(f"peak {peak_lr:.3g} after {rn50.warmup_epochs} warmup epochs",
            (rn50.warmup_epochs, peak_lr),
            xytext=(18, peak_lr * 0.95), fontsize=9)
ax.set(title="learning rate (per iteration)", xlabel="epoch", ylabel="learning rate")
ax = axes[0, 1]
ax.plot(epochs_axis, wd_schedule, label=f"ResNet-50 command: {rn50.weight_decay:g}, constant")
ax.plot(epochs_axis, vit_wd, "--", color="grey", label="ViT setting: 0.04 to 0.4")
ax.set(yscale="log", title="weight decay (per iteration)", xlabel="epoch", ylabel="weight decay")
ax.legend(fontsize=9)
ax = axes[1, 0]
ax.plot(epochs_axis, momentum_schedule)
ax.set(title="teacher momentum $\\lambda$ (per iteration)", xlabel="epoch", ylabel="$\\lambda$")
ax = axes[1, 1]
ax.step(np.arange(rn50.epochs), temp_schedule, where="post",
        label=f"ResNet-50 command: {rn50.teacher_temp:g}, constant")
ax.step(np.arange(rn50.epochs), vit_temps, "--", color="grey", where="post",
        label="ViT setting: 0.04 to 0.07 in 30 epochs")
ax.set(ylim=(0.03, 0.08), title="teacher temperature $\\tau_t$ (per epoch)", xlabel="epoch",
       ylabel="$\\tau_t$")
ax.legend(fontsize=9)
fig.suptitle(f"Schedules of rn50_imagenet on ImageNet, batch {total_batch}: {niter:,} iterations "
             "per epoch",
             fontsize=11)
fig.tight_layout()
plt.show()

# %% [markdown]
# Reading the four panels:
#
# - The **learning rate** climbs for 10 epochs. At the start the network is random and its gradients point in
#   directions that will soon be useless (Section 2 measures some); large steps then would throw the weights
#   far from anywhere useful. After the peak, the cosine spends most of the run at a high rate and slows down
#   smoothly at the end, where small steps refine the result.
# - The **weight decay** of the ResNet-50 command is the small constant of supervised ResNet training. The
#   ViT setting raises it as training goes on.
# - The **teacher momentum** starts at 0.996: the teacher then averages the students of the last few hundred
#   iterations ($1 / (1 - \lambda) = 250$). As $\lambda$ approaches 1 it averages over ever longer stretches,
#   and at the very end it stops moving.
# - The **teacher temperature** sets how sharp the teacher's targets are (chapter 04). A lower value is a
#   stronger push away from the uniform output; the ViT setting starts sharp and relaxes a little, once the
#   outputs have spread out.

# %% [markdown]
# ### Coding exercise 1: the cosine schedule with warmup
#
# Write `my_cosine_schedule` with the signature of the package's: one value per iteration,
# `epochs * niter_per_ep` values in all. The first `warmup_epochs * niter_per_ep` values go linearly from
# `start_warmup_value` to `base_value`, both ends included (`np.linspace`); the remaining $n$ values are
#
# $$
# v_i = v_\text{final} + \tfrac12 (v_\text{base} - v_\text{final}) \left(1 + \cos \frac{\pi i}{n}\right),
# \qquad i = 0, \dots, n - 1 .
# $$

# %% tags=["exercise"]
def my_cosine_schedule(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                       start_warmup_value=0.0):
    """One value per iteration: linear warmup, then half a cosine from base_value to final_value."""
    #################################################################
    # Fill in the blanks (...), then remove this line.
    raise NotImplementedError("my_cosine_schedule still has blanks (...)")
    #################################################################
    warmup_iters = ...
    warmup = np.linspace(..., ..., warmup_iters)
    n = ...  # iterations after the warmup
    i = np.arange(n)
    decay = ...
    return np.concatenate([warmup, decay])


# %% tags=["solution", "hide-cell"]
# Solution to exercise 1
def my_cosine_schedule(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                       start_warmup_value=0.0):
    """One value per iteration: linear warmup, then half a cosine from base_value to final_value."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    n = epochs * niter_per_ep - warmup_iters
    i = np.arange(n)
    decay = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * i / n))
    return np.concatenate([warmup, decay])


# %%
def check_cosine_schedule(schedule_fn):
    """The learner's schedule equals cosine_schedule's, value by value, in several settings."""
    cases = [
        # the learning rate above
        (peak_lr, rn50.min_lr, rn50.epochs, niter, rn50.warmup_epochs, 0.0),
        (rn50.momentum_teacher, 1.0, rn50.epochs, niter, 0, 0.0),           # the teacher momentum
        (0.04, 0.4, 7, 13, 0, 0.0),                                         # an increasing schedule
        # warmup from a non-zero value
        (0.5, 0.01, 6, 5, 2, 0.1),
        (1.0, 0.0, 3, 4, 3, 0.0),                                           # warmup only
    ]
    for base, final, epochs, per_epoch, warmup, start in cases:
        mine = np.asarray(schedule_fn(base, final, epochs, per_epoch, warmup, start))
        ref = cosine_schedule(base, final, epochs, per_epoch, warmup, start)
        setting = (f"base={base:g}, final={final:g}, epochs={epochs}, niter_per_ep={per_epoch}, "
                   f"warmup_epochs={warmup}, start_warmup_value={start:g}")
        assert mine.shape == ref.shape, (f"{setting}: {mine.shape[0]} values, expected "
                                         f"{ref.shape[0]}")
        assert np.allclose(mine, ref, rtol=1e-7, atol=1e-12), (
            f"{setting}: first difference at iteration {np.flatnonzero(~np.isclose(mine, ref))[0]}")
    print(f"Correct: your schedule matches dino_tutorial.schedules.cosine_schedule in {len(cases)} "
          "settings")


check_exercise(1, check_cosine_schedule, my_cosine_schedule)

# %% [markdown]
# ### Think! 1
#
# The same run on 4 GPUs with 64 images each: how many iterations per epoch, what peak learning rate, and how
# long is the warmup, in iterations?
#
# ```{admonition} Answer
# :class: dropdown
# Half the batch, so twice as many iterations per epoch, {glue:text}`niter_4gpus` instead of
# {glue:text}`niter`, and by the linear scaling rule half the peak learning rate,
# {glue:text}`peak_lr_4gpus` instead of {glue:text}`peak_lr`. The warmup still lasts 10 epochs, which are now
# {glue:text}`warmup_iters_4gpus` iterations. Each epoch takes twice as many steps of half the size: the
# distance the weights travel per epoch stays roughly the same. The teacher momentum is per iteration, though:
# with twice as many EMA updates per epoch the teacher follows the student faster, per epoch. The authors'
# code advises a higher momentum with small batches for this reason (0.9995 for a batch of 256).
# ```

# %% tags=["hide-input"]
niter_4 = IMAGENET_TRAIN_IMAGES // 4 // rn50.batch_size_per_gpu
glue("niter_4gpus", f"{niter_4:,}", display=False)
glue("peak_lr_4gpus", f"{rn50.lr * 4 * rn50.batch_size_per_gpu / 256:.3g}", display=False)
glue("warmup_iters_4gpus", f"{rn50.warmup_epochs * niter_4:,}", display=False)

# %% [markdown]
# ## Section 2: one real gradient
#
# The next three ideas (clipping, the frozen last layer, mixed precision) are about the gradient, so let us
# compute one. The cell builds the authors' network, a ResNet-50 with the DINO head of $K = 65{,}536$
# outputs, and its teacher, and runs one forward and backward pass on a real batch of Imagenette images with the
# ResNet-50 recipe's views (2 global views of 224 px and 8 local views of 96 px). On a CPU the batch holds 4
# images (one pass takes several seconds), on a GPU 16. The network is freshly initialised, as at
# the first iteration of a run, and we keep `student_out`'s gradient too: Section 2.3 needs it.

# %%
# the gradient scales exactly to other batch sizes (Section 2.3)
BATCH = 16 if DEVICE.type == "cuda" else 4
set_seed(0)
recipe_views = MultiCropAugmentation(rn50.global_crops_scale, rn50.local_crops_scale,
                                     rn50.local_crops_number,
                                     rn50.global_size, rn50.local_size)
images = imagenet(DATA_ROOT, "train", recipe_views, per_class=math.ceil(BATCH / 10))
crops = [c.to(DEVICE) for c in collate_views([images[i] for i in range(BATCH)])[0]]

backbone, feature_dim = build_backbone("resnet50")
student = MultiCropWrapper(backbone, DINOHead(feature_dim, rn50.out_dim)).to(DEVICE)
teacher = make_teacher(student)
dino_loss = DINOLoss(rn50.out_dim, len(crops)).to(DEVICE)

with torch.no_grad():
    teacher_out = teacher(crops[:2])
student_out = student(crops)
student_out.retain_grad()  # keep d loss / d student_out for Section 2.3
loss = dino_loss(student_out, teacher_out, epoch=0)
loss.backward()

grads = ({name: p.grad.detach().clone() for name, p in student.named_parameters()
          if p.grad is not None})
weights = {name: p.detach() for name, p in student.named_parameters() if p.grad is not None}
grad_norms = {name: g.norm().item() for name, g in grads.items()}
print(f"batch of {BATCH} images, views 2 x {rn50.global_size} px + {rn50.local_crops_number} x "
      f"{rn50.local_size} px: loss {loss.item():.3f} (ln K = {math.log(rn50.out_dim):.3f}); "
      f"{len(grads)} parameter tensors with a gradient")

# %% [markdown]
# ### Section 2.1: clip each parameter's gradient
#
# The authors clip gradients *per parameter* (`--clip_grad 3.0` in their code): every parameter tensor whose
# gradient has an L2 norm above 3 gets its gradient scaled down to norm 3; the others are left alone. The usual
# alternative in PyTorch, `torch.nn.utils.clip_grad_norm_`, computes one norm over *all* gradients and scales
# all of them by the same factor. The figure shows the norms of the batch's gradient per parameter tensor,
# from the first convolution (left) to the head's last layer (right).

# %% tags=["hide-input"]
CLIP = rn50.clip_grad
names = list(grad_norms)
before = np.array([grad_norms[n] for n in names])
per_parameter = np.minimum(before, CLIP)
global_norm = float(np.sqrt((before ** 2).sum()))
global_factor = min(1.0, CLIP / global_norm)
largest = names[int(before.argmax())]
step_share = peak_lr * grad_norms[largest] / weights[largest].norm().item()

fig, ax = plt.subplots(figsize=(9, 3.1))
x = np.arange(len(names))
ax.plot(x, before, "o", color="0.6", markersize=4, label="gradient norm, no clipping")
ax.plot(x, per_parameter, "x", color="tab:blue", markersize=5,
        label=f"clipped per parameter at {CLIP:g}")
ax.plot(x, before * global_factor, ".", color="tab:orange", markersize=4,
        label=f"clipped as one global norm at {CLIP:g} (everything x {global_factor:.2f})")
ax.axhline(CLIP, color="tab:blue", linestyle=":", linewidth=1)
head_start = next(i for i, n in enumerate(names) if n.startswith("head."))
ax.axvspan(head_start - 0.5, len(names) - 0.5, color="0.93", zorder=0)
ax.text(head_start, 0.97, " projection head", transform=ax.get_xaxis_transform(), fontsize=9,
        va="top")
ax.annotate(largest, (int(before.argmax()), before.max()), xytext=(12, -4),
            textcoords="offset points",
            fontsize=9)
ax.set(yscale="log", xlabel="parameter tensor, in network order (ResNet-50 backbone, then head)",
       ylabel="gradient L2 norm", title=f"Per-parameter gradient norms of one batch, freshly "
                                        "initialised network")
ax.legend(fontsize=9, loc="lower left")
fig.tight_layout()
plt.show()

over = [n for n in names if grad_norms[n] > CLIP]
glue("n_over_text", {0: "none lies", 1: "only one lies"}.get(len(over), f"{len(over)} lie"),
     display=False)
glue("n_params", f"{len(names)}", display=False)
glue("largest", largest, display=False)
glue("largest_norm", f"{grad_norms[largest]:.3g}", display=False)
glue("global_norm", f"{global_norm:.3g}", display=False)
glue("global_factor", f"{global_factor:.2f}", display=False)
glue("step_share", f"{100 * step_share:.0f}", display=False)
print(f"{len(over)} of {len(names)} gradients above {CLIP:g}: "
      + ", ".join(f"{n} ({grad_norms[n]:.3g})" for n in over))
print(f"global norm {global_norm:.3g}: global clipping would multiply every gradient by "
      f"{global_factor:.2f}")

# %% [markdown]
# The spread is large. Of {glue:text}`n_params` gradient tensors, {glue:text}`n_over_text` above the threshold;
# the largest, {glue:text}`largest`, has a norm of {glue:text}`largest_norm` and dominates the norm of the
# whole gradient ({glue:text}`global_norm`). What goes wrong without each kind of clipping:
#
# - **No clipping.** One SGD step at the peak learning rate ({glue:text}`peak_lr`) would change
#   {glue:text}`largest` by {glue:text}`step_share`% of its norm, and SGD's momentum keeps adding similar steps. A
#   gradient this large at a high learning rate is how a run blows up: one bad batch sends that layer far away,
#   and every layer after it sees inputs it was never trained on.
# - **One global norm.** Clipping the whole gradient to norm 3 would multiply *every* gradient by
#   {glue:text}`global_factor`, because of the largest one: every other layer would learn that much more
#   slowly on this batch, for no reason of its own.
#
# Per-parameter clipping caps only the gradients that are too large and leaves the rest of the network alone.

# %% [markdown]
# ### Coding exercise 2: per-parameter clipping
#
# Write `my_clip_gradients(model, clip)`: for each parameter of `model` that has a gradient (`p.grad` is not
# `None`), compute the gradient's L2 norm and, when it is above `clip`, scale the gradient in place so that its
# norm becomes `clip`. Return the norms before clipping as a 1-d tensor, in the order of `model.parameters()`.
# Like the package, divide by `norm + 1e-6` rather than `norm`, so that a zero gradient causes no trouble.

# %% tags=["exercise"]
@torch.no_grad()
def my_clip_gradients(model, clip):
    """Clip each parameter's gradient to L2 norm `clip`, in place; return the norms before clipping.
    """
    #################################################################
    # Fill in the blanks (...), then remove this line.
    raise NotImplementedError("my_clip_gradients still has blanks (...)")
    #################################################################
    norms = []
    for p in model.parameters():
        if p.grad is None:
            continue
        norm = ...
        scale = ...  # at most 1
        p.grad.mul_(scale)
        norms.append(norm)
    return torch.stack(norms)


# %% tags=["solution", "hide-cell"]
# Solution to exercise 2
@torch.no_grad()
def my_clip_gradients(model, clip):
    """Clip each parameter's gradient to L2 norm `clip`, in place; return the norms before clipping.
    """
    norms = []
    for p in model.parameters():
        if p.grad is None:
            continue
        norm = p.grad.norm()
        scale = (clip / (norm + 1e-6)).clamp(max=1.0)
        p.grad.mul_(scale)
        norms.append(norm)
    return torch.stack(norms)


# %%
def check_clipping(clip_fn):
    """On the ResNet-50 gradient above, the learner's clipping gives the package's gradients and
    norms."""
    params = {name: p for name, p in student.named_parameters() if name in grads}
    for clip in (0.05, CLIP, 100.0):
        for name, p in params.items():
            p.grad = grads[name].clone()
        mine_norms = clip_fn(student, clip)
        mine = {name: p.grad.clone() for name, p in params.items()}
        for name, p in params.items():
            p.grad = grads[name].clone()
        ref_norms = clip_gradients(student, clip)
        assert torch.allclose(torch.as_tensor(mine_norms).cpu(), ref_norms.cpu(), rtol=1e-5), \
            f"clip={clip}: the returned norms differ from the gradient norms before clipping"
        for name, p in params.items():
            assert torch.allclose(mine[name], p.grad, rtol=1e-5, atol=1e-12), \
                f"clip={clip}: the gradient of {name} differs after clipping"
    for name, p in params.items():  # leave the unclipped gradient in place for what follows
        p.grad = grads[name].clone()
    print("Correct: your clipping matches dino_tutorial.optim.clip_gradients")


check_exercise(2, check_clipping, my_clip_gradients)

# %% [markdown]
# ### Section 2.2: freeze the last layer during the first epoch
#
# The head ends with a weight-normalised linear layer whose 65,536 rows act as prototypes: output $k$ is the
# cosine between the (normalised) bottleneck vector of an image and prototype $k$ (chapter 02). The authors'
# code keeps this layer fixed during the first epoch (`--freeze_last_layer 1`): its gradient is computed and
# then dropped (`cancel_last_layer_gradients`). Their code's documentation says only that this "helps training",
# and advises more frozen epochs when the loss does not go down. The gradient we just computed shows what the
# prototypes would learn at the start.
#
# A gradient matrix $G$ (here 65,536 × 256) can be split into directions by its singular value decomposition:
# the share of its energy $\|G\|_F^2$ in the top direction is $\sigma_1^2 / \sum_i \sigma_i^2$. A share near 1
# means the update moves every prototype along the *same* direction, by different amounts. The figure compares
# that share for the gradients of the head's layers.

# %% tags=["hide-input"]
def top_direction_share(matrix: torch.Tensor) -> float:
    """sigma_1^2 / sum sigma_i^2 of a 2-d matrix (from the eigenvalues of its smaller Gram matrix).
    """
    m = matrix.double()
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    eigenvalues = torch.linalg.eigvalsh(gram)
    return (eigenvalues[-1] / eigenvalues.sum()).item()


head_matrices = {name: g for name, g in grads.items() if name.startswith("head.") and g.ndim == 2}
shares = {name: top_direction_share(g) for name, g in head_matrices.items()}

# The top direction of the last layer's gradient against the mean bottleneck vector of the batch.
last_grad = grads["head.last_layer.weight_v"].double()
top_direction = torch.linalg.eigh(last_grad.T @ last_grad).eigenvectors[:, -1]
with torch.no_grad():
    features = (torch.cat([student.backbone(torch.cat(crops[:2])),
                           student.backbone(torch.cat(crops[2:]))]))
    bottleneck = F.normalize(student.head.mlp(features), dim=-1).double()
    pooled = F.normalize(student.backbone(crops[0]), dim=-1)
align = abs(F.cosine_similarity(top_direction, bottleneck.mean(0), dim=0).item())
off_diagonal = ~torch.eye(BATCH, dtype=torch.bool, device=pooled.device)
image_similarity = (pooled @ pooled.T)[off_diagonal].mean().item()
first_view = bottleneck[:BATCH]  # the bottleneck vectors of global view 1, one per image
rn50_bottleneck_cos = (first_view @ first_view.T)[off_diagonal].mean().item()

fig, ax = plt.subplots(figsize=(8, 2.8))
labels = [f"{n.removeprefix('head.')}\n{tuple(head_matrices[n].shape)}" for n in shares]
colours = ["tab:red" if "last_layer" in n else "tab:blue" for n in shares]
ax.barh(labels, list(shares.values()), color=colours)
for i, share in enumerate(shares.values()):
    ax.text(share + 0.01, i, f"{share:.2f}", va="center", fontsize=9)
ax.invert_yaxis()
ax.set(xlim=(0, 1.1), xlabel="share of the gradient's energy in its top direction",
       title="Gradients of the head's layers at the first iteration")
fig.tight_layout()
plt.show()

glue("last_share", f"{shares['head.last_layer.weight_v']:.2f}", display=False)
glue("align", f"{align:.3f}", display=False)
glue("image_similarity", f"{image_similarity:.2f}", display=False)
glue("rn50_bottleneck_cos", f"{rn50_bottleneck_cos:.2f}", display=False)
print(f"cosine between the top direction of the last layer's gradient and the mean bottleneck "
      f"vector: {align:.3f}")
print(f"mean cosine similarity between the backbone features of two different images: "
      f"{image_similarity:.2f}")

# %% [markdown]
# Every layer of the head gets a gradient that is nearly a single direction; for the last layer it holds
# {glue:text}`last_share` of the energy, and that direction is the batch's *mean* bottleneck vector (cosine
# {glue:text}`align`). The reason is the random backbone: its features of two different images have a cosine
# similarity of {glue:text}`image_similarity` on average, so all images look alike to the head.
#
# For the MLP layers this is only a start: they are the layers that must learn to tell images apart, and their
# gradients change as the backbone does. For the last layer, a one-direction gradient means that all 65,536
# prototypes receive the same message, "move towards (or away from) the average image", with different
# amounts. Nothing in it distinguishes one image from another. Prototypes that move towards the average image
# score high for *every* image, which is a first step towards the collapse where one output dominates
# (chapter 04); and the prototypes, which start spread in random directions, would be rotated together by a
# signal that says nothing about the data.
#
# Freezing the last layer for one epoch lets the backbone and the head's MLP learn first to give different
# images different bottleneck vectors; when the prototypes start to move, their gradient carries information
# about the images. It costs little: one epoch in 100 without updates of one layer.

# %% [markdown]
# ### Think! 2
#
# The trainer drops the last layer's gradient *after* clipping (`clip_gradients`, then
# `cancel_last_layer_gradients`). Does the order matter with per-parameter clipping? Would it with one global
# norm?
#
# ```{admonition} Answer
# :class: dropdown
# With per-parameter clipping it does not: each gradient is clipped on its own, so the last layer's gradient,
# there or not, changes nothing for the others. With one global norm it would: clipped first, the frozen layer's
# gradient would count in the global norm and shrink every other gradient, for an update that never happens.
# With a global norm, the frozen layer's gradient must be dropped before clipping.
# ```

# %% [markdown]
# ### Section 2.3: mixed precision
#
# On GPUs, the authors train with 16-bit floats (`--use_fp16` in their code): matrix products and convolutions
# run about twice as fast or more and activations take half the memory. PyTorch's automatic mixed precision
# keeps the weights, the optimiser and the loss in float32 and runs the heavy operations inside
# `torch.autocast` in a 16-bit format. There are two:
#
# | format | exponent bits | mantissa bits | smallest normal | largest |
# | --- | --- | --- | --- | --- |
# | float16 (fp16) | 5 | 10 | $6.1 \times 10^{-5}$ | 65,504 |
# | bfloat16 (bf16) | 8 | 7 | $1.2 \times 10^{-38}$ | $3.4 \times 10^{38}$ |
#
# fp16 is more precise but its range is narrow: values below $6.1 \times 10^{-5}$ lose precision (they are
# *subnormal*), and below $6 \times 10^{-8}$ they become zero. That matters in the backward pass, where the
# gradients are small. The first gradient of the backward pass is the one of the loss with respect to the
# student's outputs, `student_out.grad`, which we kept: with 65,536 outputs per view, a softmax spreads its mass
# thinly, and the loss averages over the batch and over {glue:text}`n_pairs` pairs of views. The figure shows
# where its values fall.

# %% tags=["hide-input"]
output_grad = student_out.grad.detach().float().cpu().flatten()
output_grad = output_grad[output_grad != 0].abs().numpy()
FP16_TINY, FP16_SUBNORMAL_MIN = torch.finfo(torch.float16).tiny, 2.0 ** -24
SCALE = 2.0 ** 16  # torch.amp.GradScaler's initial scale
RECIPE_BATCH = rn50.batch_size_per_gpu
# the loss is a mean over the batch: per-entry gradients scale as 1/B
to_recipe_batch = BATCH / RECIPE_BATCH


def fp16_fates(values: np.ndarray) -> tuple:
    """(share that becomes 0, share that is subnormal) when `values` are cast to float16."""
    as_fp16 = values.astype(np.float16)
    zero = float((as_fp16 == 0).mean())
    subnormal = float(((values < FP16_TINY) & (as_fp16 != 0)).mean())
    return zero, subnormal


fates = {
    "fp16": fp16_fates(output_grad * to_recipe_batch),
    "fp16, loss x 2^16": fp16_fates(output_grad * to_recipe_batch * SCALE),
}
bf16_zero = (torch.from_numpy(output_grad * to_recipe_batch).bfloat16() == 0).float().mean().item()

fig, ax = plt.subplots(figsize=(9, 3.2))
bins = np.linspace(-16, 6, 111)
ax.hist(np.log10(output_grad * to_recipe_batch), bins=bins, color="tab:blue", alpha=0.7,
        label=f"d loss / d student_out, batch {RECIPE_BATCH} per GPU")
ax.hist(np.log10(output_grad * to_recipe_batch * SCALE), bins=bins, color="tab:green", alpha=0.7,
        label="the same with the loss multiplied by 2^16 (GradScaler)")
ax.axvspan(-16, math.log10(FP16_SUBNORMAL_MIN), color="tab:red", alpha=0.15, label="fp16: zero")
ax.axvspan(math.log10(FP16_SUBNORMAL_MIN), math.log10(FP16_TINY), color="tab:orange", alpha=0.15,
           label="fp16: subnormal (fewer digits)")
ax.axvline(math.log10(torch.finfo(torch.float16).max), color="tab:red", linewidth=1)
ax.text(math.log10(torch.finfo(torch.float16).max), ax.get_ylim()[1] * 0.9, " fp16 max", fontsize=9,
        color="tab:red")
ax.set(xlabel="log10 |gradient entry|", ylabel="entries",
       title="Where the output gradients fall in fp16")
ax.legend(fontsize=9, loc="upper left")
fig.tight_layout()
plt.show()

for name, (zero, subnormal) in fates.items():
    print(f"{name:18s}: {100 * zero:6.2f}% become 0, {100 * subnormal:6.2f}% are subnormal")
print(f"{'bf16':18s}: {100 * bf16_zero:6.2f}% become 0")
glue("fp16_zero", f"{100 * fates['fp16'][0]:.1f}", display=False)
glue("fp16_subnormal", f"{100 * (fates['fp16'][0] + fates['fp16'][1]):.0f}", display=False)
glue("scaled_lost", f"{100 * sum(fates['fp16, loss x 2^16']):.2f}", display=False)
glue("recipe_batch", f"{RECIPE_BATCH}", display=False)
glue("n_pairs", f"{2 * len(student_out) // BATCH - 2}", display=False)

# %% [markdown]
# For a batch of {glue:text}`recipe_batch` images per GPU (the values of our smaller batch, rescaled: the loss
# is a mean over the batch, so each entry scales as $1/B$), {glue:text}`fp16_subnormal`% of the output
# gradient's entries would be subnormal or zero in fp16, and {glue:text}`fp16_zero`% would be exactly zero:
# those images' gradients would simply vanish, and every layer below would learn from what is left. The fix is
# **loss scaling**: multiply the loss by a large factor $S$ before `backward()`, so that every gradient is $S$
# times larger and sits in fp16's range (the green histogram: {glue:text}`scaled_lost`% still below the
# normal range), then divide the gradients of the weights by $S$ before the optimiser uses them.
# `torch.amp.GradScaler` does this and adapts $S$: it starts at $2^{16}$, halves it and *skips the step* whenever
# a gradient overflows to infinity, and doubles it after 2,000 steps without overflow. In the trainer:
#
# ```python
# scaler.scale(loss).backward()   # gradients of S * loss
# scaler.unscale_(optimizer)      # divide them by S, now, before clipping
# clip_gradients(student, 3.0)    # the threshold 3 is meant for the real gradient
# scaler.step(optimizer)          # skipped if a gradient is inf or nan
# scaler.update()                 # adapt S
# ```
#
# bfloat16 has float32's exponent range, so nothing underflows and no scaler is needed; it has fewer digits,
# which training tolerates. The package uses `amp="auto"`: bf16 autocast on CUDA GPUs (bf16 needs a GPU of the
# Ampere generation or later), no autocast on the CPU; `amp="fp16"` selects fp16 with the `GradScaler`.
# **Mixed precision here is CUDA only**: this page was executed on a CPU, in float32, and the figure above shows
# what a cast to fp16 would do to a real gradient, not an fp16 training run.

# %% [markdown]
# ### Think! 3
#
# Why must `scaler.unscale_(optimizer)` come before `clip_gradients`, and what would happen to the clipping if it
# came after?
#
# ```{admonition} Answer
# :class: dropdown
# Before `unscale_`, every gradient is $S = 2^{16}$ times its real value. Clipping then would compare
# norms in the tens of thousands with the threshold 3: nearly every gradient would be cut to norm 3 and, once
# divided by $S$, end up at norm $3 / 65{,}536$, so the network would barely learn, and the amount would
# depend on the scaler's current $S$. Unscaling first makes the threshold apply to the real gradients.
# `GradScaler.step` knows that `unscale_` was already called and does not divide a second time.
# ```

# %% tags=["hide-input"]
# Free the ResNet-50 of this section before the training below.
del student, teacher, student_out, teacher_out, loss, grads, weights, crops, features, bottleneck
if DEVICE.type == "cuda":
    torch.cuda.empty_cache()

# %% [markdown]
# ## Section 3: one training step
#
# Here is everything together. One iteration of DINO (Algorithm 1 of the paper, with the additions of this
# chapter), for a batch of crops (a list: 2 global views, then the local views) at global iteration `it` of
# epoch `epoch`:
#
# 1. set this iteration's learning rate (in every parameter group) and weight decay (in the first group, the
#    weights; the second group, biases and normalisation parameters, keeps 0);
# 2. teacher on the 2 global views, without gradient;
# 3. student on all views;
# 4. the DINO loss (which also updates the centre);
# 5. zero the gradients, backward;
# 6. clip each gradient to `clip_grad`;
# 7. drop the last layer's gradients while `epoch < freeze_last_layer`;
# 8. optimiser step;
# 9. EMA update of the teacher with this iteration's momentum.
#
# The package's `Trainer` builds everything from a `TrainConfig`: `trainer.student`, `trainer.teacher`,
# `trainer.dino_loss`, `trainer.optimizer`, the three per-iteration schedules `trainer.lr_schedule`,
# `trainer.wd_schedule`, `trainer.momentum_schedule`, and `trainer.config`. Its `train_step(crops, epoch, it, i)`
# is one iteration. We use the `small` preset, the one trained in Section 4; the helper below fills in the data
# and the run's folder.

# %%
small = TrainConfig.from_preset("small")


def small_config(name: str, **overrides) -> TrainConfig:
    """The `small` preset on Imagenette, writing into WORK_DIR/name, without progress bars."""
    settings = (dict(data_path=str(DATA_ROOT), output_dir=str(WORK_DIR / name), progress=False,
                     resume="none"))
    return TrainConfig.from_preset("small", **{**settings, **overrides})


# %% [markdown]
# ### Coding exercise 3: write the training step
#
# Write `my_training_step(trainer, crops, epoch, it)` with the nine steps above, on the trainer's objects, in
# float32 (no autocast, no scaler: the CPU case). Use `clip_gradients` and `cancel_last_layer_gradients` from
# `dino_tutorial.optim` (or your clipping from exercise 2) and `ema_update` from `dino_tutorial.teacher`. Return the
# loss as a Python float.

# %% tags=["exercise"]
def my_training_step(trainer: Trainer, crops: list, epoch: int, it: int) -> float:
    """One DINO iteration on the trainer's student, teacher, loss and optimizer."""
    c = trainer.config
    #################################################################
    # Fill in the blanks (...), then remove this line.
    raise NotImplementedError("my_training_step still has blanks (...)")
    #################################################################
    for g, group in enumerate(trainer.optimizer.param_groups):  # 1. schedules
        group["lr"] = ...
        if g == 0:
            group["weight_decay"] = ...
    with torch.no_grad():  # 2. teacher
        teacher_out = ...
    student_out = ...  # 3. student
    loss = ...  # 4. loss
    ...  # 5. zero the gradients, backward
    ...  # 6. clip
    ...  # 7. last layer
    ...  # 8. step
    ...  # 9. EMA
    return loss.item()


# %% tags=["solution", "hide-cell"]
# Solution to exercise 3
def my_training_step(trainer: Trainer, crops: list, epoch: int, it: int) -> float:
    """One DINO iteration on the trainer's student, teacher, loss and optimizer."""
    c = trainer.config
    for g, group in enumerate(trainer.optimizer.param_groups):  # 1. schedules
        group["lr"] = float(trainer.lr_schedule[it])
        if g == 0:
            group["weight_decay"] = float(trainer.wd_schedule[it])
    with torch.no_grad():  # 2. teacher
        teacher_out = trainer.teacher(crops[:2])
    student_out = trainer.student(crops)  # 3. student
    loss = trainer.dino_loss(student_out, teacher_out, epoch)  # 4. loss
    trainer.optimizer.zero_grad(set_to_none=True)  # 5. backward
    loss.backward()
    if c.clip_grad:  # 6. clip
        clip_gradients(trainer.student, c.clip_grad)
    cancel_last_layer_gradients(trainer.student, epoch, c.freeze_last_layer)  # 7. last layer
    trainer.optimizer.step()  # 8. step
    ema_update(trainer.teacher, trainer.student, float(trainer.momentum_schedule[it]))  # 9. EMA
    return loss.item()


# %%
def check_training_step(step_fn):
    """Two trainers built from the same seed; two steps each on the same batches: mine against
    train_step."""
    # Enough images for two batches, in float32, on the CPU whatever DEVICE is (GPU kernels are not
    # bitwise
    # reproducible, and AdamW turns tiny differences in tiny gradients into full-size steps); the
    # last layer
    # frozen in the first epoch whatever the preset says, so that both cases are checked.
    settings = dict(device="cpu", amp="none", freeze_last_layer=1,
                    train_per_class=math.ceil(2 * small.batch_size_per_gpu / 10) + 1)
    mine = Trainer(small_config("step_mine", **settings))
    reference = Trainer(small_config("step_reference", **settings))
    size = mine.config.batch_size_per_gpu
    batches = ([collate_views([mine.dataset[i] for i in range(b * size, (b + 1) * size)])[0]
                for b in range(2)])
    # The last iteration of epoch 1 (last layer frozen) and the first of epoch 2 (last layer
    # trained);
    # iteration 0 would not do: its learning rate is 0.
    plan = [(0, mine.niter - 1), (1, mine.niter)]
    last_layer = reference.student.head.last_layer.weight_v.detach().clone()
    for (epoch, it), batch in zip(plan, batches):
        batch = [x.to(reference.device) for x in batch]
        # the fast data path (config.augmentation="fast") gives uint8 views
        if batch[0].dtype == torch.uint8:
            batch = [normalize_uint8(x) for x in batch]
        my_loss = step_fn(mine, batch, epoch, it)
        ref_loss, _ = reference.train_step(batch, epoch, it, it - epoch * reference.niter)
        assert math.isclose(my_loss, ref_loss, rel_tol=1e-5), (
            f"epoch {epoch}, iteration {it}: your loss {my_loss:.6f}, train_step's {ref_loss:.6f}")
        if epoch == 0:
            frozen = torch.equal(reference.student.head.last_layer.weight_v, last_layer)
            assert frozen, ("the reference changed the frozen last layer: this check itself is "
                            "broken")
        for part in ("student", "teacher"):
            ours, theirs = getattr(mine, part).state_dict(), getattr(reference, part).state_dict()
            for name in theirs:
                assert torch.allclose(ours[name], theirs[name], rtol=1e-4, atol=1e-6), (
                    f"after epoch {epoch}, iteration {it}: the {part}'s {name} differs from "
                    "train_step's")
        assert torch.allclose(mine.dino_loss.center, reference.dino_loss.center, rtol=1e-4,
                              atol=1e-7), (f"after epoch {epoch}, iteration {it}: the loss centre "
                                           f"differs (call the loss once per step)")
    moved = not torch.equal(reference.student.head.last_layer.weight_v, last_layer)
    assert moved, "the last layer did not move in epoch 2: this check itself is broken"
    print("Correct: your step matches Trainer.train_step (student, teacher and centre, in epochs 1 "
          "and 2)")


check_exercise(3, check_training_step, my_training_step)

# %% [markdown]
# The check compares every parameter and BatchNorm statistic of both networks and the loss's centre after two
# steps, one with the last layer frozen and one without. The package's `train_step` does the same nine steps,
# plus what a real run needs: it moves the crops to the device, runs the forward passes under `torch.autocast` and
# the backward through the `GradScaler` when mixed precision is on, stops with a readable error when the loss is
# not finite, and returns the collapse diagnostics of chapter 04 (the teacher's entropy and the KL divergence)
# for the log.

# %% [markdown]
# ## Section 4: a real run
#
# Now train. The `small` preset is a DINO sized for a CPU: a narrow ResNet, small crops, a head with fewer
# outputs. Its settings, next to the ResNet-50 command's:

# %% tags=["hide-input"]
rows = [("backbone", "arch", lambda c: c.arch),
        ("views", "global_size", lambda c: f"2 x {c.global_size} px + {c.local_crops_number} x "
                                           f"{c.local_size} px"),
        ("crop scales", "global_crops_scale",
         lambda c: f"{c.global_crops_scale}, {c.local_crops_scale}"),
        ("head outputs K", "out_dim", lambda c: f"{c.out_dim:,}"),
        ("BatchNorm in the head", "use_bn_in_head", lambda c: c.use_bn_in_head),
        ("optimizer", "optimizer", lambda c: c.optimizer),
        ("lr per 256 images", "lr", lambda c: f"{c.lr:g} (min {c.min_lr:g})"),
        ("warmup epochs", "warmup_epochs", lambda c: c.warmup_epochs),
        ("weight decay", "weight_decay", lambda c: f"{c.weight_decay:g} to {c.weight_decay_end:g}"),
        ("last layer frozen", "freeze_last_layer", lambda c: f"{c.freeze_last_layer} epoch(s)"),
        ("gradient clipping", "clip_grad", lambda c: f"{c.clip_grad:g} per parameter"
         if c.clip_grad else "off"),
        ("teacher momentum", "momentum_teacher", lambda c: f"{c.momentum_teacher:g} to 1"),
        ("teacher temperature", "teacher_temp",
         lambda c: f"{c.warmup_teacher_temp:g} to {c.teacher_temp:g} in "
                   f"{c.warmup_teacher_temp_epochs} epochs"
         if c.warmup_teacher_temp_epochs else f"{c.teacher_temp:g}"),
        ("batch", "batch_size_per_gpu", lambda c: c.batch_size_per_gpu),
        ("epochs", "epochs", lambda c: c.epochs)]
table = "| setting | small | rn50_imagenet |\n| --- | --- | --- |\n"
table += "\n".join(f"| {label} | {show(small)} | {show(rn50)} |" for label, _, show in rows)
display(Markdown(table))

# %% [markdown]
# Almost every setting differs, and each change answers a problem of training on a CPU in minutes rather than on
# GPUs for days:
#
# - **A far smaller network and smaller views.** The narrow ResNet-18 has {glue:text}`small_params` parameters
#   against ResNet-50's {glue:text}`rn50_params`, and with its small views one image costs
#   {glue:text}`flops_ratio` times fewer multiply-adds than with the recipe's ten views (measured below). Tens of
#   epochs then fit where a ResNet-50 would make a few hundred iterations.
# - **A smaller head and a sharper teacher.** Section 2.2 measured how alike a random network's features of
#   different images are. Through a 256-d bottleneck and 65,536 outputs, that likeness makes the centred
#   teacher's distributions nearly uniform for every image, and in trial runs a short run slid into the uniform
#   collapse (teacher entropy up to $\ln K$). A narrower bottleneck, fewer outputs, BatchNorm in the head and a
#   lower teacher temperature make the targets sharp from the start.
# - **AdamW instead of SGD.** SGD at the recipe's learning rate barely moves the weights in the
#   {glue:text}`small_iters` iterations of the whole run; AdamW scales each step by the gradient's own history.
# - **A lower teacher momentum.** At 0.996 the teacher averages the last ~250 students, which is
#   {glue:text}`momentum_epochs` epochs of this run; the preset's {glue:text}`small_momentum` averages about
#   {glue:text}`small_momentum_iters` iterations.
# - **No frozen last layer.** One frozen epoch is a larger share of a {glue:text}`small_epochs`-epoch run than of
#   a 100-epoch one, and the reason for freezing (Section 2.2) is weaker here: the head's BatchNorm centres every
#   batch, so at initialisation the bottleneck vectors of two different images have a mean cosine of
#   {glue:text}`small_bottleneck_cos`, against {glue:text}`rn50_bottleneck_cos` in the ResNet-50 recipe's head.
#   The prototypes see varied inputs from the first step.
# - **Larger crops**: at such low resolutions, a crop of a few percent of the image shows little.

# %% tags=["hide-input"]
def multiply_adds(arch: str, sizes: list) -> int:
    """Multiply-adds of the backbone's forward pass over one image at each view size."""
    from torch.utils.flop_counter import FlopCounterMode
    net = build_backbone(arch)[0].eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        for size in sizes:
            net(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() // 2


def views(c: TrainConfig) -> list:
    return [c.global_size] * 2 + [c.local_size] * c.local_crops_number


@torch.no_grad()
def bottleneck_similarity(c: TrainConfig, batch: int = 64) -> float:
    """Mean cosine between the bottleneck vectors of different images (global view 1), at
    initialisation."""
    set_seed(0)
    augment = MultiCropAugmentation(c.global_crops_scale, c.local_crops_scale, c.local_crops_number,
                                    c.global_size, c.local_size)
    data = imagenet(DATA_ROOT, "train", augment, per_class=math.ceil(batch / 10))
    first_views = torch.stack([data[i][0][0] for i in range(batch)])
    backbone, dim = build_backbone(c.arch, small_images=c.small_images)
    head = DINOHead(dim, c.out_dim, use_bn=c.use_bn_in_head, hidden_dim=c.head_hidden_dim,
                    # in train mode: BatchNorm uses the batch, as in training
                    bottleneck_dim=c.head_bottleneck_dim)
    z = F.normalize(head.mlp(backbone(first_views)), dim=-1)
    return (z @ z.T)[~torch.eye(batch, dtype=torch.bool)].mean().item()


small_iters = (counts["train"] // small.batch_size_per_gpu) * small.epochs
glue("small_params",
     f"{sum(p.numel() for p in build_backbone(small.arch)[0].parameters()) / 1e6:.2f} M",
     display=False)
glue("rn50_params",
     f"{sum(p.numel() for p in build_backbone(rn50.arch)[0].parameters()) / 1e6:.1f} M",
     display=False)
glue("flops_ratio",
     f"{multiply_adds(rn50.arch, views(rn50)) / multiply_adds(small.arch, views(small)):.0f}",
     display=False)
glue("small_iters", f"{small_iters:,}", display=False)
glue("small_teacher_temp", f"{small.teacher_temp:g}", display=False)
glue("small_momentum", f"{small.momentum_teacher:g}", display=False)
glue("small_momentum_iters", f"{1 / (1 - small.momentum_teacher):.0f}", display=False)
glue("small_epochs", f"{small.epochs}", display=False)
glue("small_global_size", f"{small.global_size}", display=False)
glue("n_train", f"{counts['train']:,}", display=False)
glue("small_bottleneck_cos", f"{bottleneck_similarity(small):.2f}", display=False)
glue("momentum_epochs",
     f"{1 / (1 - rn50.momentum_teacher) / (counts['train'] // small.batch_size_per_gpu):.0f}",
     display=False)

# %% [markdown]
# On a CPU the run below is cut short so that this page executes in a few minutes: fewer epochs, a subset of the
# training images, and a subset of both splits for the k-NN evaluations. On a GPU it runs all the preset's
# epochs on 260 images per class (the size of the committed run's data), with one data-loading process per CPU
# core. Change the three numbers to train longer: the committed run at the end of this section is the full
# preset.

# %% tags=["parameters"]
EPOCHS = 3 if DEVICE.type == "cpu" else None           # None: the preset's
TRAIN_PER_CLASS = 40 if DEVICE.type == "cpu" else 260  # training images per class; 0: all
KNN_PER_CLASS = 50 if DEVICE.type == "cpu" else 100    # k-NN images per class in each split; 0: all

# %%
workers = small.num_workers if DEVICE.type == "cpu" else max(1, min(8, os.cpu_count() or 1))
run = small_config("small_run", epochs=EPOCHS or small.epochs, train_per_class=TRAIN_PER_CLASS,
                   knn_per_class=KNN_PER_CLASS, num_workers=workers)
# a run shorter than the warmup warms up throughout
run.warmup_epochs = min(run.warmup_epochs, run.epochs)
print(f"{run.arch}, {run.epochs} epochs on {TRAIN_PER_CLASS or 'all'} images per class, k-NN on "
      f"{KNN_PER_CLASS or 'all'} images per class of each split, device {DEVICE.type}")

# %% tags=["nbval-ignore-output"]
def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the data-loading workers)."""
    try:
        import resource  # Unix only
    except ImportError:
        return time.process_time()
    own, children = (resource.getrusage(resource.RUSAGE_SELF),
                     resource.getrusage(resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


start, cpu_start = time.time(), cpu_seconds()
result = train(run)
wall_s, cpu_s = time.time() - start, cpu_seconds() - cpu_start
print(f"trained in {wall_s:.0f} s of wall-clock time, {cpu_s:.0f} s of CPU time (with the data "
      "loaders)")
glue("run_seconds", f"{wall_s:.0f}", display=False)

# %% [markdown]
# The trainer printed one line per epoch and appended one record per epoch to `log.jsonl` in its output folder
# (epoch 0: the k-NN accuracy of the random network, before any training).

# %% tags=["nbval-ignore-output"]
# The digits of a training run depend on floating-point summation order (the CPU's kernels and
# thread count), so
# the tests compare this cell and the summary below by what the text claims: the check cell after
# the summary.
def read_log(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


log = read_log(Path(run.output_dir) / "log.jsonl")
print(" epoch |  loss | teacher entropy | k-NN top-1")
for r in log:
    loss_text = f"{r['loss']:5.2f}" if "loss" in r else "    -"
    entropy_text = f"{r['teacher_entropy']:15.2f}" if "teacher_entropy" in r else " " * 14 + "-"
    knn_text = f"{r['knn_top1']:9.1f}%" if "knn_top1" in r else " " * 9 + "-"
    print(f" {r['epoch']:5d} | {loss_text} | {entropy_text} | {knn_text}")


# %% tags=["hide-input"]
def plot_run(records: list, out_dim: int, title: str, baselines: dict = None):
    """Loss, teacher entropy and k-NN top-1 per epoch, from a log.jsonl.

    ``baselines``: optional {"pixels": {"top1", "low", "high"}, "random": {"mean", "sd"}}
    (results/baselines.json), drawn on the k-NN panel as the raw-pixel interval and the random
    network's mean +- 2 sd over seeds.
    """
    trained = [r for r in records if r["epoch"] > 0]
    knn = [r for r in records if "knn_top1" in r]
    ln_k = math.log(out_dim)
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.5))
    for ax, key, label in ((axes[0], "loss", "DINO loss (nats)"),
                           (axes[1], "teacher_entropy", "teacher entropy (nats)")):
        ax.plot([r["epoch"] for r in trained], [r[key] for r in trained], "o-", markersize=4)
        ax.axhline(ln_k, color="grey", linestyle="--", linewidth=1)
        ax.text(0.02, ln_k, f"ln K = {ln_k:.2f} (uniform)", transform=ax.get_yaxis_transform(),
                va="top",
                fontsize=9, color="grey")
        ax.set(xlabel="epoch", ylabel=label)
    axes[2].plot([r["epoch"] for r in knn], [r["knn_top1"] for r in knn], "o-", markersize=4,
                 color="tab:green")
    if knn and knn[0]["epoch"] == 0:
        values = [r["knn_top1"] for r in knn]
        pad = 0.15 * (max(values) - min(values) or 1.0)
        axes[2].set_ylim(min(values) - pad, max(values) + pad)
        axes[2].axhline(values[0], color="grey", linestyle=":", linewidth=1)
        axes[2].text(0.98, values[0], "random network", transform=axes[2].get_yaxis_transform(),
                     ha="right",
                     va="bottom" if values[-1] < values[0] else "top", fontsize=9, color="grey")
    if baselines:
        pixels, random_init = baselines["pixels"], baselines["random"]
        axes[2].axhspan(pixels["low"], pixels["high"], color="tab:blue", alpha=0.15, lw=0)
        axes[2].text(0.02, pixels["high"], "raw pixels (95% interval)",
                     transform=axes[2].get_yaxis_transform(),
                     va="bottom", fontsize=9, color="tab:blue")
        axes[2].axhspan(random_init["mean"] - 2 * random_init["sd"],
                        random_init["mean"] + 2 * random_init["sd"],
                        color="tab:orange", alpha=0.15, lw=0)
        axes[2].text(0.02, random_init["mean"] - 2 * random_init["sd"],
                     "random init, 5 seeds (mean +- 2 sd)",
                     transform=axes[2].get_yaxis_transform(), va="top", fontsize=9,
                     color="tab:orange")
        values = ([r["knn_top1"] for r in knn] + [pixels["high"],
                                                  random_init["mean"] - 2 * random_init["sd"]])
        axes[2].set_ylim(min(values) - 3, max(values) + 3)
    axes[2].set(xlabel="epoch", ylabel="k-NN top-1 (%)")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    plt.show()


plot_run(log, run.out_dim, f"The run of this page: small preset, {run.epochs} epochs, "
         f"{TRAIN_PER_CLASS or 'all'} images per class")

# %% tags=["hide-input", "nbval-ignore-output"]
knn_records = [r for r in log if "knn_top1" in r]
final = {**log[-1], "knn_top1": knn_records[-1]["knn_top1"]}   # the last k-NN evaluation
random_init = knn_records[0]
glue("run_epochs", f"{run.epochs}", display=False)
glue("run_loss", f"{final['loss']:.2f}", display=False)
glue("run_entropy", f"{final['teacher_entropy']:.2f}", display=False)
glue("run_ln_k", f"{math.log(run.out_dim):.2f}", display=False)
glue("run_knn", f"{final['knn_top1']:.1f}", display=False)
glue("random_knn", f"{random_init['knn_top1']:.1f}", display=False)
change = final["knn_top1"] - random_init["knn_top1"]
verdict = ("above" if change > 0 else "below" if change < 0 else "equal to")
display(Markdown(
    f"After {run.epochs} epochs the loss is {final['loss']:.2f} and the teacher's entropy "
    f"{final['teacher_entropy']:.2f} nats (uniform outputs would give ln K = "
    f"{math.log(run.out_dim):.2f}). The teacher's k-NN top-1 is {final['knn_top1']:.1f}%, "
    f"{abs(change):.1f} points {verdict} the random network's {random_init['knn_top1']:.1f}%."))

# %% tags=["hide-input"]
# What the text claims of this short run, checked on this machine's digits.
assert all(math.isfinite(r["loss"]) for r in log if "loss" in r), "the loss must stay finite"
assert 0 < final["teacher_entropy"] < math.log(run.out_dim), ("the teacher must stay between the "
                                                              "two collapses")
assert all(r["knn_top1"] > 100 / 10 for r in knn_records), ("every k-NN evaluation must beat "
                                                            "chance (10%)")
print(f"Checked: finite loss, teacher entropy inside (0, ln K), k-NN above chance at all "
      f"{len(knn_records)} evaluations.")

# %% [markdown]
# How to read these curves (chapter 04 explains the two collapses):
#
# - The **loss** starts near $\ln K$ = {glue:text}`run_ln_k`, the value when student and teacher output uniform
#   distributions. Going down means the student predicts the teacher's targets better than by chance, but a
#   collapsed run can reach a low loss too, so the loss alone proves little.
# - The **teacher entropy** tells the two collapses apart: near $\ln K$, every target is uniform; near 0,
#   every image gets one sharp output. A healthy run keeps it well between the two.
# - The **k-NN accuracy** of the teacher's backbone features (chapter 05) is the only curve that measures what
#   we want: features that put images of the same class together. It must rise above the random network's
#   (the dotted line): a random ResNet's features already sort easy classes a little.
#
# This run shows the trainer's mechanics (the log, the checkpoint, the three curves), not a result: a run of
# {glue:text}`run_epochs` epochs on a fraction of the images is too short to learn, and at this point the k-NN
# of such runs is usually *below* the random network's (the full runs dip there too, Think! 4). What the
# recipe learns is shown by the committed runs below, made once at full length with the same command.

# %% [markdown]
# ### The committed run of the full preset
#
# Training the full `small` preset takes longer than a page should. Its log was made once and committed with the
# course, in `book/results/small_cpu_log.jsonl`, with the machine and time it took in
# `book/results/small_cpu_run.txt`. The next cells plot it when these files are present.

# %%
RESULTS = Path("results")
for name in ("small_cpu_log.jsonl", "small_cpu_run.txt", "baselines.json", "imagenette_log.jsonl",
             "imagenette_run.txt"):
    course_file(f"results/{name}")           # downloaded when the chapter is opened alone
long_log_path, long_info_path = RESULTS / "small_cpu_log.jsonl", RESULTS / "small_cpu_run.txt"
long_log = read_log(long_log_path) if long_log_path.exists() else None
# small_cpu_run.txt: one "key<TAB>value[<TAB>comment]" line per fact about the run
long_info = (dict(line.split("\t", 1) for line in long_info_path.read_text().splitlines()
                  if "\t" in line)
             if long_info_path.exists() else {})
if long_log is None:
    display(Markdown(f"**The long run is not here:** `{long_log_path}` is missing in this copy of "
                     f"the course, so there is no full-length curve to show. Run the preset "
                     f"yourself with `python -m dino_tutorial.train --preset small --data-path DIR "
                     "--output-dir DIR`."))
else:
    where = (f"It ran on: {long_info['hardware']}." if "hardware" in long_info else
             f"`{long_info_path}`, which would say what it ran on, is missing.")
    if "training_wall_time_s" in long_info:
        minutes = float(long_info["training_wall_time_s"].split("\t")[0]) / 60
        where += f" Training took {minutes:.0f} minutes of wall-clock time"
        if "process_cpu_time_s" in long_info:
            cpu_minutes = float(long_info["process_cpu_time_s"].split("\t")[0]) / 60
            where += (f"; the whole process used {cpu_minutes:.0f} minutes of CPU time (k-NN "
                      f"evaluations included), about what it would take on an idle core")
        where += "."
    display(Markdown(f"The committed run of the `small` preset, from `{long_log_path}`: "
                     f"{max(r['epoch'] for r in long_log)} epochs on all training images. {where}"))


# %% tags=["hide-input"]
def describe_long_run(records: list) -> dict:
    """The numbers the text quotes about a run's log."""
    trained = [r for r in records if r["epoch"] > 0]
    knn = [r for r in records if "knn_top1" in r]
    random_top1 = knn[0]["knn_top1"]
    worst = min(knn[1:], key=lambda r: r["knn_top1"])
    above = [r for r in knn[1:] if r["knn_top1"] > random_top1]
    early = [r for r in trained if r["epoch"] <= worst["epoch"]]
    peak_entropy = max(trained, key=lambda r: r["teacher_entropy"])
    return {
        "long_epochs": f"{trained[-1]['epoch']}",
        "long_random": f"{random_top1:.1f}", "long_final": f"{knn[-1]['knn_top1']:.1f}",
        "long_gain": f"{knn[-1]['knn_top1'] - random_top1:.1f}",
        "long_worst": f"{worst['knn_top1']:.1f}", "long_worst_epoch": f"{worst['epoch']}",
        "long_first_above": f"{above[0]['epoch']}" if above else "never",
        "long_entropy_start": f"{early[0]['teacher_entropy']:.1f}",
        "long_entropy_peak": f"{peak_entropy['teacher_entropy']:.1f}",
        "long_entropy_peak_epoch": f"{peak_entropy['epoch']}",
        "long_entropy_final": f"{trained[-1]['teacher_entropy']:.1f}",
        "long_loss_final": f"{trained[-1]['loss']:.2f}",
        "long_ln_k": f"{math.log(small.out_dim):.2f}",
    }


BASELINES = (json.loads((RESULTS / "baselines.json").read_text())
             if (RESULTS / "baselines.json").is_file() else {})


def baselines_for(name: str):
    """The raw-pixel and random-network baselines of a committed run, from results/baselines.json.
    """
    trained, random_init = BASELINES.get(f"trained/{name}"), BASELINES.get(f"random/{name}")
    if not trained or not random_init:
        return None
    return ({"pixels": BASELINES[f"pixels/{trained['dataset']}"], "random": random_init,
             "trained": trained})


if long_log is not None:
    plot_run(long_log, small.out_dim, f"The committed run of the small preset ({long_log_path})",
             baselines_for("small"))
    long_numbers = describe_long_run(long_log)
else:  # the text below then reads "not available" where it quotes the run
    long_numbers = dict.fromkeys(describe_long_run([{"epoch": 0, "knn_top1": 0.0},
                                                    {"epoch": 1, "loss": 0.0,
                                                     "teacher_entropy": 0.0,
                                                     "knn_top1": 0.0}]), "(not available)")
for key, value in long_numbers.items():
    glue(key, value, display=False)

# %% [markdown]
# The full run tells a story in three acts, which the short run of this page only begins:
#
# - **Epochs 1 to {glue:text}`long_worst_epoch`: the features get worse.** The teacher starts sharp (entropy
#   {glue:text}`long_entropy_start` nats, temperature {glue:text}`small_teacher_temp`) and the student learns to
#   reproduce its assignments, which at that point come from random features. The k-NN accuracy drops from the
#   random network's {glue:text}`long_random`% to {glue:text}`long_worst`%: training first undoes some of the
#   colour and texture similarity that a random network's features already carry.
# - **Then the outputs spread out.** Centering pushes the teacher's mass over more outputs: its entropy climbs
#   to {glue:text}`long_entropy_peak` nats at epoch {glue:text}`long_entropy_peak_epoch`, and from epoch
#   {glue:text}`long_first_above` the k-NN accuracy is above the random network's.
# - **Then slow improvement.** The loss falls to {glue:text}`long_loss_final` (from about $\ln K$ =
#   {glue:text}`long_ln_k`), the entropy settles at {glue:text}`long_entropy_final` nats, well between 0 and
#   $\ln K$, and the k-NN top-1 ends at {glue:text}`long_final`%, {glue:text}`long_gain` points above the random
#   network after {glue:text}`long_epochs` epochs on a CPU.
#
# That is a modest gain, and an honest one: ten classes, {glue:text}`n_train` training images seen at
# {glue:text}`small_global_size` px and a backbone of {glue:text}`small_params` parameters are far from the
# paper's setting. The shaded bands of the right panel are the baselines of chapter 05, measured by the package
# (`dino_tutorial.baselines`): raw 16 x 16 pixels with a 95% bootstrap interval, and five random networks of
# the same architecture. Against them the 30-epoch run is {glue:text}`long_vs_baselines`.
#
# ### The reference run: all of Imagenette
#
# The course's reference run is the same `small` preset on all of Imagenette: {glue:text}`ref_train` training
# images instead of {glue:text}`n_train`, {glue:text}`ref_epochs` epochs, {glue:text}`ref_minutes` minutes of
# wall-clock time on the machine named below. Its teacher backbone is the trained network of chapters 05 and 07.

# %%
ref_log_path, ref_info_path = RESULTS / "imagenette_log.jsonl", RESULTS / "imagenette_run.txt"
ref_log = read_log(ref_log_path) if ref_log_path.exists() else None
ref_info = (dict(line.split("\t", 1) for line in ref_info_path.read_text().splitlines()
                 if "\t" in line)
            if ref_info_path.exists() else {})
ref_baselines = baselines_for("imagenette")
if ref_log is None:
    display(Markdown(f"**The reference run is not here:** `{ref_log_path}` is missing in this copy "
                     "of the course."))
    for key in ("ref_train", "ref_epochs", "ref_minutes", "ref_final", "ref_vs_baselines"):
        glue(key, "(not available)", display=False)
else:
    plot_run(ref_log, small.out_dim, f"The reference run: small preset on all of Imagenette "
                                     f"({ref_log_path})",
             ref_baselines)
    knn = [r for r in ref_log if "knn_top1" in r]
    print(f"ran on: {ref_info.get('hardware', 'not recorded')}")
    print("k-NN top-1 by epoch: " + ", ".join(f"{r['epoch']}: {r['knn_top1']:.1f}%" for r in knn))
    glue("ref_train", ref_info.get("train_images", "(not recorded)").split("\t")[0], display=False)
    glue("ref_epochs", f"{knn[-1]['epoch']}", display=False)
    glue("ref_minutes",
         f"{float(ref_info.get('training_wall_time_s', 'nan').split(chr(9))[0]) / 60:.0f}",
         display=False)
    glue("ref_final", f"{knn[-1]['knn_top1']:.1f}", display=False)


def versus(name: str) -> str:
    """One sentence: is the committed run's final k-NN interval clear of both baselines?"""
    b = baselines_for(name)
    if b is None:
        return "not compared (results/baselines.json is missing)"
    trained, floor = (b["trained"], max(b["pixels"]["high"],
                                        b["random"]["mean"] + 2 * b["random"]["sd"]))
    interval = f"{trained['top1']:.1f}% [{trained['low']:.1f}, {trained['high']:.1f}]"
    if trained["low"] > floor:
        return (f"clear of both: {interval}, {trained['low'] - floor:.1f} points above the higher "
                "baseline band")
    if trained["high"] < floor:
        return f"not clear of them: {interval} lies below the higher baseline band"
    return f"inside the noise of the higher baseline: {interval} overlaps its band"


glue("long_vs_baselines", versus("small"), display=False)
glue("ref_vs_baselines", versus("imagenette"), display=False)

# %% [markdown]
# The reference run ends at {glue:text}`ref_final`% k-NN top-1 on all of Imagenette's validation images; against
# raw pixels and five random networks of its architecture it is {glue:text}`ref_vs_baselines`.

# %% [markdown]
# ### Think! 4
#
# In the full run the k-NN accuracy first falls below the random network's, while the loss goes down. Which of
# the three curves would you watch to decide, after a few epochs, whether to stop a run and change its
# settings, and what would make you stop?
#
# ```{admonition} Answer
# :class: dropdown
# Not the loss alone: it falls in a healthy run and in a collapsing one. The teacher entropy is the early
# warning: a value that climbs to $\ln K$ and stays there is the uniform collapse, a value stuck near 0 with one
# output winning for every image is the other collapse, and neither recovers. A temporary dip of the k-NN
# accuracy, as here, is not a reason to stop while the entropy stays between the two; a k-NN accuracy that is
# still below the random network's after a good part of the run is, and so is any collapse of the entropy.
# ```

# %% tags=["hide-input"]
shutil.rmtree(WORK_DIR, ignore_errors=True)  # the runs of this chapter were temporary

# %% [markdown]
# ## Summary
#
# - Four schedules drive a DINO run: the learning rate (linear warmup, then cosine; peak proportional to the
#   batch), the weight decay, the teacher momentum (cosine from 0.996 to 1) and the teacher temperature (per
#   epoch). For the ResNet-50 command on 8 GPUs they are arrays of {glue:text}`total_iters` values, one per
#   iteration.
# - Gradients are clipped per parameter: in our batch, {glue:text}`largest` carried a gradient
#   far above the others, and one global norm would have slowed the whole network because of it.
# - The last layer is frozen during the first epoch: its gradient at the start is almost one direction (the
#   average image) and carries nothing that tells images apart.
# - fp16 needs loss scaling because most entries of the first backward gradient fall below its normal range;
#   bf16 does not. Mixed precision is used on CUDA only.
# - One training step is nine lines; `Trainer.train_step` is those nine lines plus mixed precision and checks.
#   The short run of this page reached a k-NN top-1 of {glue:text}`run_knn`% (the random network:
#   {glue:text}`random_knn`%); the committed full run of the `small` preset dips below its random network first,
#   then ends at {glue:text}`long_final`% against {glue:text}`long_random`%.
#
# **Next.** Chapter 07 opens a trained network and looks at what DINO learnt without labels: its feature maps,
# nearest neighbours among images and the salient objects it separates from the background.
#
# **Further reading.**
# - Caron et al. 2021, *Emerging Properties in Self-Supervised Vision Transformers* (arXiv 2104.14294):
#   Section 3.1 (the teacher's momentum schedule), Section 3.2 (implementation details: the learning rate,
#   weight decay and temperature schedules), Section 5.5 (training with small batches) and Algorithm 1.
# - Goyal et al. 2017, *Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour* (arXiv 1706.02677): the
#   linear scaling rule and the warmup.
# - Loshchilov and Hutter 2017, *SGDR: Stochastic Gradient Descent with Warm Restarts* (arXiv 1608.03983): the
#   cosine schedule.
# - Micikevicius et al. 2018, *Mixed Precision Training* (arXiv 1710.03740): fp16 training and loss scaling.
# - Salimans and Kingma 2016, *Weight Normalization* (arXiv 1602.07868): the parametrisation of the last layer.
