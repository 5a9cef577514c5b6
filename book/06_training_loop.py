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
# **Estimated time:** 100 minutes.

# %% [markdown]
# ## Tutorial objectives
#
# - Compute and plot the four schedules of the authors' ResNet-50 recipe (learning rate, weight decay, teacher
#   momentum, teacher temperature) for a real ImageNet run, and write the cosine schedule yourself.
# - Measure, on the gradient of a real batch, why each parameter's gradient is clipped separately, why the last
#   layer is frozen during the first epoch.
# - Write DINO's training from a blank cell (teacher, loss, optimiser, schedules, the nine steps of an
#   iteration) and check it against the package's trainer.
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
import copy
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
from torch import nn
from IPython.display import Markdown, display

from dino_tutorial.augment import MultiCropAugmentation
from dino_tutorial.baselines import knn_interval, split_features
from dino_tutorial.data import collate_views, imagenet, imagenette_root
from dino_tutorial.fast_augment import normalize_uint8
from dino_tutorial.loss import DINOLoss
from dino_tutorial.model import DINOHead, MultiCropWrapper, build_backbone
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
# The next ideas (clipping, the frozen last layer, mixed precision) are about the gradient, so let us
# compute one. The cell builds the authors' network, a ResNet-50 with the DINO head of $K = 65{,}536$
# outputs, and its teacher, and runs one forward and backward pass on a real batch of Imagenette images with the
# ResNet-50 recipe's views (2 global views of 224 px and 8 local views of 96 px). On a CPU the batch holds 4
# images (one pass takes several seconds), on a GPU 16. The network is freshly initialised, as at
# the first iteration of a run.

# %%
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
# You will write it in Section 3, in a few lines: each parameter's gradient $g$ is multiplied by
# $\min\big(1, c / (\lVert g \rVert + 10^{-6})\big)$, where the small constant keeps a zero gradient harmless.

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
# On GPUs the authors train with 16-bit floats (`--use_fp16`): the heavy operations run in fp16 inside
# `torch.autocast`, and a `torch.amp.GradScaler` multiplies the loss so that small gradients do not underflow,
# then divides the gradients again *before* clipping, so that the threshold applies to the real gradients. The
# package's trainer does this on CUDA (bf16 by default, which needs no scaler) and trains in float32 on a CPU.
# The reference page {doc}`10_mixed_precision` measures why, on the first gradient of this ResNet-50.

# %% tags=["hide-input"]
# Free the ResNet-50 of this section before the training below.
del student, teacher, student_out, teacher_out, loss, grads, weights, crops, features, bottleneck
if DEVICE.type == "cuda":
    torch.cuda.empty_cache()

# %% [markdown]
# ## Section 3: DINO from a blank cell
#
# Everything is now in place to write DINO yourself. One iteration of DINO (Algorithm 1 of the paper, with the
# additions of this chapter), for a batch of crops (a list: 2 global views, then the local views) at global
# iteration `it` of epoch `epoch`:
#
# 1. set this iteration's learning rate (in every parameter group) and weight decay (in the first group, the
#    weights; the second group, biases and normalisation parameters, keeps 0);
# 2. teacher on the 2 global views, without gradient;
# 3. student on all views;
# 4. the DINO loss (which also updates the centre);
# 5. zero the gradients, backward;
# 6. clip each parameter's gradient to norm `clip_grad` (Section 2.1);
# 7. drop the last layer's gradients while `epoch < freeze_last_layer` (Section 2.2);
# 8. optimiser step;
# 9. EMA update of the teacher with this iteration's momentum.
#
# The package's `Trainer` builds everything from a `TrainConfig` (the student, the teacher, the loss, the
# optimiser and the per-iteration schedules), and its `train_step(crops, epoch, it, i)` is one iteration. We
# use the `small` preset, the one trained in Section 4; the helper below fills in the data and the run's folder.

# %%
small = TrainConfig.from_preset("small")


def small_config(name: str, **overrides) -> TrainConfig:
    """The `small` preset on Imagenette, writing into WORK_DIR/name, without progress bars."""
    settings = (dict(data_path=str(DATA_ROOT), output_dir=str(WORK_DIR / name), progress=False,
                     resume="none"))
    return TrainConfig.from_preset("small", **{**settings, **overrides})


# %% [markdown]
# ### Coding exercise 2: DINO from a blank cell
#
# Write `my_dino(student, batches, c, niter)`, the whole of DINO's training in one function. It receives a
# freshly initialised student (backbone and head in a `MultiCropWrapper`, chapter 02), an iterable of
# multi-crop batches (lists of float32 views: 2 global, then `c.local_crops_number` local), the run's
# `TrainConfig` `c` and the number of iterations per epoch `niter`. Batch number `it` (from 0) is global
# iteration `it` of a run of `c.epochs` epochs, in epoch `it // niter`. Return the teacher and the list of
# losses, one Python float per batch. Before the loop, build:
#
# - the teacher (chapter 03);
# - the loss with its centre and temperatures from `c` (chapter 04);
# - the optimiser, `torch.optim.AdamW` (the `small` preset's `c.optimizer`), over two parameter groups: the
#   weights, with weight decay, and the biases and every 1-d parameter (the norms), with none; a parameter
#   that does not require a gradient is left out;
# - the three per-iteration schedules (Section 1): the learning rate (peak `c.lr * c.batch_size_per_gpu /
#   256` after `c.warmup_epochs` of warmup, then down to `c.min_lr`), the weight decay (`c.weight_decay` to
#   `c.weight_decay_end`) and the teacher momentum (`c.momentum_teacher` to `c.momentum_teacher_end`).
#
# Then run the nine steps on every batch. Write the parameter groups, the clipping (step 6, when
# `c.clip_grad` is not 0) and the freeze (step 7) yourself; of the package, use only the pieces of earlier
# chapters: `make_teacher` and `ema_update`, `DINOLoss`, and `cosine_schedule` (or your own versions).
#
# The check builds a `Trainer` with clipping on and the last layer frozen for one epoch, hands your function a
# copy of its student and four batches (two iterations in the frozen epoch, two after), runs `train_step` on the
# same batches, and compares the losses and every parameter and statistic of both networks.

# %% tags=["exercise"]
def my_dino(student: nn.Module, batches, c: TrainConfig, niter: int) -> tuple:
    """Train `student` with DINO, one iteration per batch; return (teacher, losses)."""
    #################################################################
    # A blank cell: write the function, then remove this line.
    raise NotImplementedError("my_dino is still a blank cell")
    #################################################################


# %% tags=["solution", "hide-cell"]
# Solution to exercise 2
def my_dino(student: nn.Module, batches, c: TrainConfig, niter: int) -> tuple:
    """Train `student` with DINO, one iteration per batch; return (teacher, losses)."""
    teacher = make_teacher(student)
    dino_loss = DINOLoss(c.out_dim, 2 + c.local_crops_number, c.warmup_teacher_temp, c.teacher_temp,
                         c.warmup_teacher_temp_epochs, c.epochs, c.student_temp,
                         c.center_momentum).to(next(student.parameters()).device)
    trained = [(name, p) for name, p in student.named_parameters() if p.requires_grad]
    decay = [p for name, p in trained if p.ndim > 1 and not name.endswith(".bias")]
    no_decay = [p for name, p in trained if p.ndim <= 1 or name.endswith(".bias")]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
    peak_lr = c.lr * c.batch_size_per_gpu / 256
    lr = cosine_schedule(peak_lr, c.min_lr, c.epochs, niter, c.warmup_epochs)
    wd = cosine_schedule(c.weight_decay, c.weight_decay_end, c.epochs, niter)
    momentum = cosine_schedule(c.momentum_teacher, c.momentum_teacher_end, c.epochs, niter)
    losses = []
    for it, crops in enumerate(batches):
        epoch = it // niter
        for g, group in enumerate(optimizer.param_groups):                   # 1. schedules
            group["lr"] = float(lr[it])
            if g == 0:
                group["weight_decay"] = float(wd[it])
        with torch.no_grad():
            teacher_out = teacher(crops[:2])                                 # 2. teacher
        student_out = student(crops)                                         # 3. student
        loss = dino_loss(student_out, teacher_out, epoch)                    # 4. loss
        optimizer.zero_grad(set_to_none=True)                                # 5. backward
        loss.backward()
        if c.clip_grad:                                                      # 6. clip
            with torch.no_grad():
                for p in student.parameters():
                    if p.grad is not None:
                        p.grad.mul_((c.clip_grad / (p.grad.norm() + 1e-6)).clamp(max=1.0))
        if epoch < c.freeze_last_layer:                                      # 7. last layer
            for name, p in student.named_parameters():
                if "last_layer" in name:
                    p.grad = None
        optimizer.step()                                                     # 8. step
        ema_update(teacher, student, float(momentum[it]))                    # 9. EMA
        losses.append(loss.item())
    return teacher, losses


# %%
def shared_batches(trainer: Trainer, steps: int, feed=None):
    """`steps` multi-crop batches from the trainer's data, as float32 views on its device; each
    batch goes to feed(crops, it) first, when a feed is given."""
    it = 0
    while it < steps:
        trainer.sampler.set_epoch(it // trainer.niter)
        for crops, *_ in trainer.loader:
            if it == steps:
                return
            crops = [x.to(trainer.device) for x in crops]
            if crops[0].dtype == torch.uint8:        # the fast data path gives uint8 views
                crops = [normalize_uint8(x) for x in crops]
            if feed is not None:
                feed(crops, it)
            yield crops
            it += 1


def check_dino(dino_fn, clip: float = 0.3):
    """Four iterations of yours beside Trainer.train_step, from one student, on the same batches."""
    # On the CPU whatever DEVICE is (GPU kernels are not bitwise reproducible, and AdamW turns tiny
    # differences of tiny gradients into full-size steps), in float32; 2 iterations per epoch.
    c = small_config("blank_reference", device="cpu", amp="none", clip_grad=clip,
                     freeze_last_layer=1,
                     train_per_class=math.ceil(2 * small.batch_size_per_gpu / 10) + 1)
    reference = Trainer(c)
    student = copy.deepcopy(reference.student)
    last_layer = reference.student.head.last_layer.weight_v.detach().clone()
    batches = list(shared_batches(reference, 2 * reference.niter))
    teacher, losses = dino_fn(student, iter(batches), c, reference.niter)
    assert len(losses) == len(batches), f"{len(losses)} losses for {len(batches)} batches"
    clipped = []                          # which reference steps clipped a gradient
    for it, crops in enumerate(batches):
        epoch = it // reference.niter
        ref_loss, _ = reference.train_step(crops, epoch, it, it % reference.niter)
        assert math.isclose(losses[it], ref_loss, rel_tol=1e-5), (
            f"iteration {it} (epoch {epoch}): your loss {losses[it]:.6f}, train_step's "
            f"{ref_loss:.6f}")
        # the gradients left by the step are clipped ones: one at the threshold means clipping acted
        clipped.append(max(p.grad.norm().item() for p in reference.student.parameters()
                           if p.grad is not None) >= clip * (1 - 1e-4))
        if epoch == 0:
            frozen = torch.equal(reference.student.head.last_layer.weight_v, last_layer)
            assert frozen, "the reference changed the frozen last layer: this check is broken"
    assert any(clipped), "no gradient reached the clipping threshold: this check is broken"
    for part, mine in (("student", student), ("teacher", teacher)):
        theirs = getattr(reference, part).state_dict()
        ours = mine.state_dict()
        for name in theirs:
            assert torch.allclose(ours[name], theirs[name], rtol=1e-4, atol=1e-6), (
                f"after {len(batches)} iterations the {part}'s {name} differs from train_step's")
    shown = ", ".join(f"{x:.4f}" for x in losses)
    print(f"Correct: your DINO matches Trainer.train_step over {len(batches)} iterations "
          f"(losses {shown}; student, teacher and their statistics)")


check_exercise(2, check_dino, my_dino)

# %% [markdown]
# The losses of the four iterations depend on the centre of the previous ones, so the check also covers the loss's
# centre. The package's `train_step` does the same nine steps, plus what a real run needs: it moves the crops to
# the device, runs the forward passes under `torch.autocast` and the backward through the `GradScaler` when mixed
# precision is on, stops with a readable error when the loss is not finite, and returns the collapse diagnostics
# of chapter 04 for the log.
#
# Four iterations prove the arithmetic, not the learning. With `LONG_CHECK = True`, the next cell trains your
# function and the package's `train_step` side by side for `LONG_STEPS` iterations on the same batches and
# compares the k-NN accuracy of both teachers (chapter 05) with the random network they started from, each with
# its bootstrap interval. Yours should match the package's within that noise. It is off on a CPU, where it takes
# many minutes. After so few iterations, expect both teachers near or even below their random start (Section 4
# shows why), and level with each other.

# %% tags=["parameters"]
LONG_CHECK = DEVICE.type == "cuda"   # train yours and the package's side by side, then compare k-NN
LONG_STEPS = 300                     # iterations (the small preset makes 40 per epoch)


# %%
def compare_knn(dino_fn, steps: int = LONG_STEPS) -> dict:
    """k-NN top-1 with 95% intervals: the random start, your teacher, the package's teacher."""
    c = small_config("blank_long", amp="none")
    reference = Trainer(c)
    start = copy.deepcopy(reference.student)
    student = copy.deepcopy(reference.student)

    def package_step(crops, it):
        reference.train_step(crops, it // reference.niter, it, it % reference.niter)

    batches = shared_batches(reference, steps, package_step)
    teacher, _ = dino_fn(student, batches, c, reference.niter)
    backbones = {"random start": start.backbone, "your teacher": teacher.backbone,
                 "package's teacher": reference.teacher.backbone}
    return {name: knn_interval(split_features(net, DATA_ROOT, c.knn_image_size, reference.device))
            for name, net in backbones.items()}


def long_check(dino_fn):
    """compare_knn, printed with the time it took."""
    started = time.perf_counter()
    for name, result in compare_knn(dino_fn).items():
        print(f"{name:18s} k-NN top-1 {result}")
    minutes = (time.perf_counter() - started) / 60
    print(f"({LONG_STEPS} iterations in {minutes:.1f} min on {DEVICE})")


if LONG_CHECK:
    check_exercise(2, long_check, my_dino)
else:
    print("LONG_CHECK is off: set it to True to train your DINO beside the package's and compare "
          "their k-NN.")

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
# of such runs is usually *below* the random network's (the full runs dip there too, Think! 3). What the
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
# The full run begins as the short run of this page did, and goes on. Over the first
# {glue:text}`long_worst_epoch` epochs the k-NN accuracy falls from the random network's {glue:text}`long_random`%
# to {glue:text}`long_worst`%: the student learns the sharp assignments of a teacher whose features are still
# random (entropy {glue:text}`long_entropy_start` nats at temperature {glue:text}`small_teacher_temp`), and
# undoes some of the colour and texture similarity that random features carry. Centering then spreads the
# teacher's outputs (entropy up to {glue:text}`long_entropy_peak` nats at epoch
# {glue:text}`long_entropy_peak_epoch`), the k-NN passes the random network from epoch
# {glue:text}`long_first_above`, and the run ends at {glue:text}`long_final`%, {glue:text}`long_gain` points above
# its random start, with a loss of {glue:text}`long_loss_final` (from about $\ln K$ = {glue:text}`long_ln_k`) and
# an entropy of {glue:text}`long_entropy_final` nats, well between the two collapses.
#
# The shaded bands of the right panel are the baselines of chapter 05, measured by the package
# (`dino_tutorial.baselines`): raw 16 x 16 pixels with a 95% bootstrap interval, and five random networks of
# the same architecture. Against them the 30-epoch run on {glue:text}`n_train` images is
# {glue:text}`long_vs_baselines`.
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
# ### Think! 3
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
#   epoch); for the ResNet-50 command on 8 GPUs, {glue:text}`total_iters` values each.
# - Gradients are clipped per parameter ({glue:text}`largest` carried a gradient far above the others), and the
#   last layer is frozen during the first epoch, when its gradient is almost one direction, the average image.
#   On GPUs, fp16 needs a gradient scaler and bf16 does not ({doc}`10_mixed_precision`).
# - DINO's training fits in one function: a teacher, a loss with its centre, two parameter groups, three
#   schedules and nine steps per iteration; `Trainer.train_step` adds mixed precision and checks.
# - The short run of this page shows the mechanics ({glue:text}`run_knn`% k-NN against the random network's
#   {glue:text}`random_knn`%); the committed runs show the result: the `small` preset on 2,600 images ends at
#   {glue:text}`long_final`%, and the reference run on all of Imagenette at {glue:text}`ref_final`%,
#   {glue:text}`ref_vs_baselines`.
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
