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
# # 03 The momentum teacher: a moving average of the student
#
# *DINO has no pretrained teacher. The teacher is built from the student itself: the same network, whose
# weights follow a slow exponential moving average of the student's. This chapter builds it, schedules it
# and watches it during a short training run.*
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/03_ema_teacher.ipynb)
#
# **Estimated time:** 70 minutes.

# %% [markdown]
# ## Tutorial objectives
#
# - Build the teacher from the student and update it with the exponential moving average
#   $\theta_t \leftarrow \lambda \theta_t + (1 - \lambda)\,\theta_s$ (paper Section 3.1); check that no gradient
#   ever reaches it.
# - Compute the cosine momentum schedule from 0.996 to 1 for the ResNet-50 recipe, and what it means in
#   iterations.
# - Read the teacher as a Polyak–Ruppert average: an ensemble of past students with exponentially decaying
#   weights.
# - Write a short DINO training loop from the package's pieces and compare the teacher with the student it
#   averages, on real images (paper Section 5.2, Fig. 6).

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
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torch import nn

from dino_tutorial.augment import MultiCropAugmentation, eval_transform
from dino_tutorial.data import imagenette, imagenette_root, resolve_data_root
from dino_tutorial.knn import extract_features, knn_classify
from dino_tutorial.loss import DINOLoss
from dino_tutorial.model import DINOHead, MultiCropWrapper, build_backbone
from dino_tutorial.optim import clip_gradients, param_groups
from dino_tutorial.schedules import cosine_schedule
from dino_tutorial.teacher import ema_update, make_teacher
from dino_tutorial.notebook import check_exercise, glue, setup
from dino_tutorial.train import set_seed

DEVICE = setup(seed=0)
print(f"device: {DEVICE}")


# %% tags=["hide-input"]
# The data: Imagenette (imagenette-mini when present, else the 160 px version, downloaded).
try:
    IMAGENETTE = imagenette_root()
except FileNotFoundError as err:
    print(f"This chapter needs Imagenette: set DINO_DATA to a folder with imagenette-mini/ or "
          f"imagenette2-160/, or run online so that it is downloaded into {resolve_data_root()} "
          f"({err})")
    raise SystemExit(1)
print(f"Imagenette found: {IMAGENETTE.name}")

# %% [markdown]
# ## Section 1: a teacher made from the student
#
# In knowledge distillation a small student learns to match the outputs of a large, already trained teacher.
# DINO has no such teacher. Section 3.1 of the paper ("Teacher network") builds it from *past iterations of the
# student*: the teacher $g_{\theta_t}$ has the student's architecture, starts from the same weights, is never
# trained by gradients, and after every student step moves a little towards the student,
#
# $$
# \theta_t \leftarrow \lambda\,\theta_t + (1 - \lambda)\,\theta_s ,
# $$
#
# an exponential moving average (EMA) with a momentum $\lambda$ close to 1, as in the momentum encoder of
# MoCo (He et al. 2020). Section 5.2 (Fig. 6, right) compares other ways to build a teacher from the student:
# copying the student, or taking the student of the previous iteration, does not work at all; the student of
# the previous epoch works, and the momentum teacher works best.
#
# The package's `make_teacher(student)` makes the copy and switches off its gradients. The student here is the
# network of {doc}`02_backbone_and_head`: a ResNet-50 and the DINO head.

# %%
set_seed(0)
backbone, feature_dim = build_backbone("resnet50")
student = MultiCropWrapper(backbone, DINOHead(feature_dim, out_dim=65536))
teacher = make_teacher(student)

same = all(torch.equal(p_t, p_s) for p_t, p_s in zip(teacher.parameters(), student.parameters()))
n_params = sum(p.numel() for p in teacher.parameters())
n_trainable = sum(p.numel() for p in teacher.parameters() if p.requires_grad)
print(f"teacher starts equal to the student: {same}")
print(f"teacher parameters: {n_params / 1e6:.1f} M, of which require a gradient: {n_trainable}")

# %% [markdown]
# One DINO step makes this concrete. The teacher sees the two global views, without recording a graph; the
# student sees all views; the loss compares them; `backward()` computes gradients, and the optimizer only
# knows the student's parameters. A small batch of 2 images is enough to check where the gradients go.

# %%
# 2 x 224 px + 8 x 96 px, as in the recipe
augment = MultiCropAugmentation()
photos = imagenette("val", per_class=1)
set_seed(0)
views = [augment(photos[i][0]) for i in range(2)]
crops = [torch.stack(v) for v in zip(*views)]                        # 10 tensors (2, 3, H, W)
dino_loss = DINOLoss(out_dim=65536, ncrops=len(crops))

with torch.no_grad():
    teacher_out = teacher(crops[:2])                                 # (2 views x 2 images, K)
student_out = student(crops)                                         # (10 views x 2 images, K)
loss = dino_loss(student_out, teacher_out, epoch=0)
loss.backward()

student_grads = sum(p.grad is not None for p in student.parameters())
teacher_grads = sum(p.grad is not None for p in teacher.parameters())
print(f"loss {loss.item():.3f}; parameters with a gradient: student {student_grads} of "
      f"{len(list(student.parameters()))}, teacher {teacher_grads} of "
      f"{len(list(teacher.parameters()))}")
student.zero_grad(set_to_none=True)

# %% [markdown]
# The student's weight $g_k$ of the last layer is fixed (`norm_last_layer=True`), which is why one student
# parameter has no gradient. The teacher has none at all: its outputs are computed under `torch.no_grad()`,
# its parameters do not require gradients, and the loss detaches the teacher's probabilities (the paper's
# Algorithm 1 writes this as a stop-gradient, `t.detach()`). Its only update is the EMA.

# %% [markdown]
# ### Coding exercise 1: the EMA update
#
# Write `my_ema_update(teacher, student, momentum)`: in place, and without recording gradients, every teacher
# parameter becomes `momentum * teacher + (1 - momentum) * student`. Like the authors' code, average the
# *parameters* only: the BatchNorm running statistics (buffers) of the teacher are its own.

# %% tags=["exercise"]
@torch.no_grad()
def my_ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_t <- momentum * theta_t + (1 - momentum) * theta_s for every parameter, in place."""
    #################################################################
    # Fill in the blanks (...), then remove this line.
    raise NotImplementedError("my_ema_update still has blanks (...)")
    #################################################################
    for p_t, p_s in zip(..., ...):
        ...


# %% tags=["solution", "hide-cell"]
# Solution to exercise 1
@torch.no_grad()
def my_ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_t <- momentum * theta_t + (1 - momentum) * theta_s for every parameter, in place."""
    for p_t, p_s in zip(teacher.parameters(), student.parameters()):
        p_t.mul_(momentum).add_(p_s.detach(), alpha=1.0 - momentum)


# %%
def check_ema_update(fn):
    set_seed(0)
    small_backbone, dim = build_backbone("resnet18")
    small_student = MultiCropWrapper(small_backbone, DINOHead(dim, out_dim=256, hidden_dim=64))
    mine, reference = make_teacher(small_student), make_teacher(small_student)
    with torch.no_grad():
        # let the student move away from the teacher
        for p in small_student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for b in small_student.buffers():
            b.add_(1)
    for momentum in (0.9, 0.996, 0.5):
        fn(mine, small_student, momentum)
        ema_update(reference, small_student, momentum)
    for (name, a), b in zip(mine.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6), (f"parameter {name} differs from "
                                                 "dino_tutorial.teacher.ema_update")
        assert not a.requires_grad, f"parameter {name} of the teacher now requires a gradient"
    for (name, a), b in zip(mine.named_buffers(), reference.buffers()):
        assert torch.equal(a, b), f"buffer {name} changed: only parameters are averaged"
    print("Correct: your update matches dino_tutorial.teacher.ema_update")


check_exercise(1, check_ema_update, my_ema_update)

# %% [markdown]
# ### Think! 1
#
# What is the teacher with $\lambda = 0$, and with $\lambda = 1$? Why does neither make a useful teacher?
#
# ```{admonition} Answer
# :class: dropdown
# With $\lambda = 0$ the teacher is a copy of the current student. The student is then asked to predict its
# own (sharpened, centred) outputs on other views, and nothing stops both from drifting together to a trivial
# solution; the paper's "student copy" teacher fails (Section 5.2, Fig. 6 right). With $\lambda = 1$ the teacher
# never moves: it stays the randomly initialised network, and the student can at best learn to imitate a random
# network's outputs. The useful range is in between and close to 1: the teacher follows the student, slowly
# enough that its targets change little from one step to the next.
# ```

# %% [markdown]
# ## Section 2: the momentum schedule
#
# The momentum is not constant. It starts at $\lambda_0 = 0.996$ and follows a cosine to 1 over training
# (Section 3.1), one value per iteration $i$ out of $N$:
#
# $$
# \lambda_i = 1 - (1 - \lambda_0)\,\frac{1 + \cos(\pi i / N)}{2}.
# $$
#
# The package's `cosine_schedule(base_value, final_value, epochs, niter_per_ep)` computes it. For the
# ResNet-50 recipe, 100 epochs of ImageNet's 1,281,167 training images in batches of 512 (the authors'
# command: 8 GPUs of 64 images; the last incomplete batch of an epoch is dropped):

# %%
IMAGENET_TRAIN_IMAGES, TOTAL_BATCH, EPOCHS = 1_281_167, 8 * 64, 100
niter_per_ep = IMAGENET_TRAIN_IMAGES // TOTAL_BATCH
momentum = cosine_schedule(0.996, 1.0, EPOCHS, niter_per_ep)
print(f"{niter_per_ep} iterations per epoch, {len(momentum):,} in all")
print(f"momentum: first {momentum[0]:.4f}, middle {momentum[len(momentum) // 2]:.4f}, last "
      f"{momentum[-1]:.6f}")
glue("niter_per_ep", f"{niter_per_ep:,}", display=False)
glue("niter_total", f"{len(momentum):,}", display=False)

# %% [markdown]
# The value of $\lambda$ is easier to read as an **averaging window**: an EMA with momentum $\lambda$ weights
# the student of $k$ iterations ago by $(1 - \lambda)\lambda^k$, so it averages over roughly the last
# $1 / (1 - \lambda)$ iterations. The figure shows both.

# %% tags=["hide-input"]
epochs_axis = np.arange(len(momentum)) / niter_per_ep
window = 1.0 / np.maximum(1.0 - momentum, 1e-12)
fig, axes = plt.subplots(1, 2, figsize=(9, 2.7))
axes[0].plot(epochs_axis, momentum)
axes[0].set(xlabel="epoch", ylabel="teacher momentum $\\lambda$",
            title="Cosine schedule from 0.996 to 1")
axes[1].plot(epochs_axis[:-1], window[:-1], label="window $1/(1-\\lambda)$ in iterations")
axes[1].plot(epochs_axis[:-1], window[:-1] / niter_per_ep, label="the same in epochs")
axes[1].set(xlabel="epoch", yscale="log", ylim=(0.1, 1e6), ylabel="averaging window",
            title="How far back the teacher averages (infinite at $\\lambda = 1$)")
axes[1].legend()
plt.tight_layout()
plt.show()
for epoch in (0, 50, 90, 99):
    i = epoch * niter_per_ep
    print(f"epoch {epoch:3d}: momentum {momentum[i]:.6f}, window {window[i]:,.0f} iterations "
          f"= {window[i] / niter_per_ep:.2f} epochs")
glue("window_start", f"{window[0]:.0f}", display=False)
glue("window_start_epochs", f"{window[0] / niter_per_ep:.2f}", display=False)
glue("window_90", f"{window[90 * niter_per_ep] / niter_per_ep:.1f}", display=False)

# %% [markdown]
# At the start the teacher averages the last {glue:text}`window_start` iterations
# ({glue:text}`window_start_epochs` of an epoch): it follows the quickly changing student closely. Towards the end the
# window grows beyond an epoch ({glue:text}`window_90` epochs at epoch 90) and the teacher all but freezes
# while the learning rate decays, which turns it into a long average over the final students. With
# {glue:text}`niter_per_ep` iterations per epoch, a shorter run or a smaller dataset needs the base momentum
# adapted: the paper's 0.996 is tuned for about {glue:text}`niter_total` iterations, and the authors advise a
# higher momentum (a longer window) for small batches, where there are more and noisier steps per epoch.

# %% [markdown]
# ### Coding exercise 2: the momentum schedule
#
# Write the schedule: one value per iteration, `epochs * niter_per_ep` in all, from `base` at the first
# iteration along half a cosine towards `final` (reached only after the last iteration, at $i = N$).

# %% tags=["exercise"]
def my_momentum_schedule(base: float, final: float, epochs: int, niter_per_ep: int) -> np.ndarray:
    """lambda_i = final + (base - final) * (1 + cos(pi * i / N)) / 2 for i = 0 .. N - 1, N = epochs
    * niter_per_ep."""
    #################################################################
    # Fill in the blanks (...), then remove this line.
    raise NotImplementedError("my_momentum_schedule still has blanks (...)")
    #################################################################
    n = ...
    i = np.arange(n)
    return ...


# %% tags=["solution", "hide-cell"]
# Solution to exercise 2
def my_momentum_schedule(base: float, final: float, epochs: int, niter_per_ep: int) -> np.ndarray:
    """lambda_i = final + (base - final) * (1 + cos(pi * i / N)) / 2 for i = 0 .. N - 1, N = epochs
    * niter_per_ep."""
    n = epochs * niter_per_ep
    i = np.arange(n)
    return final + (base - final) * (1 + np.cos(np.pi * i / n)) / 2


# %%
def check_momentum_schedule(fn):
    for args in [(0.996, 1.0, EPOCHS, niter_per_ep), (0.99, 1.0, 3, 7), (0.9, 0.95, 1, 1)]:
        mine, reference = np.asarray(fn(*args)), cosine_schedule(*args)
        assert mine.shape == reference.shape, (f"for {args} you return {mine.shape[0]} values, "
                                               f"expected {reference.shape[0]}")
        assert np.allclose(mine, reference, atol=1e-9), (
            f"for {args} your schedule differs from cosine_schedule by up to "
            f"{np.abs(mine - reference).max():.2g}")
    print("Correct: your schedule matches dino_tutorial.schedules.cosine_schedule")


check_exercise(2, check_momentum_schedule, my_momentum_schedule)

# %% [markdown]
# ## Section 3: the teacher is an ensemble of past students
#
# Unroll the update over $n$ steps with a constant $\lambda$, writing $\theta_s^{(i)}$ for the student after
# step $i$:
#
# $$
# \theta_t^{(n)} = \lambda^n\,\theta_t^{(0)} + (1 - \lambda) \sum_{i=1}^{n} \lambda^{\,n-i}\,\theta_s^{(i)} .
# $$
#
# The teacher is a weighted average of all past students, the recent ones weighted most. Section 5.2 of the
# paper relates this to **Polyak–Ruppert averaging** (Polyak and Juditsky 1992; Ruppert 1988): averaging the
# iterates of stochastic gradient descent cancels much of their noise, and an average of models is a form of
# **model ensembling** that usually beats each member. The paper observes that the teacher is better than the
# student throughout training (Fig. 6, left), and that it guides the student by providing better targets.
#
# Averaging *weights* is not the same as averaging *outputs*; it works here because consecutive students are
# close to each other in weight space, where the network is nearly linear in its weights. The figure shows the
# weights of the ensemble for three values of the schedule.

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(7, 3.4))
ages = np.arange(0, 20001)
for lam in (0.996, 0.999, 0.9999):
    # when the schedule reaches lam
    epoch = int(np.argmax(momentum >= lam - 1e-12)) // niter_per_ep
    ax.plot(ages, (1 - lam) * lam ** ages, label=f"$\\lambda$ = {lam} (epoch {epoch}): window "
                                                 f"{1 / (1 - lam):,.0f}")
ax.set(xscale="log", yscale="log", ylim=(1e-7, 1e-2),
       xlabel="age of the student in the average (iterations)",
       ylabel="weight in the teacher", title="The teacher as a weighted average of past students")
ax.legend(fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Think! 2
#
# Two ResNet-50s trained from *different* random initialisations may both be good models, yet the average of
# their weights is usually a useless network. Why does averaging work for the teacher?
#
# ```{admonition} Answer
# :class: dropdown
# A network's function does not change if the channels of a layer are permuted (together with the next
# layer's inputs), so two independently trained networks can compute similar functions with their units in
# different orders: averaging them mixes unrelated units. The students that the teacher averages all descend
# from one initialisation along one trajectory, each a small step from the previous one, so their units
# correspond and their weights are close; in that small region the network is nearly linear in its weights,
# and averaging the weights is close to averaging the functions.
# ```

# %% [markdown]
# ## Section 4: teacher and student during a short run
#
# Fig. 6 (left) of the paper follows the k-NN accuracy of the teacher and of the student through a full
# training run, and the teacher is ahead all along. This section runs the same comparison at the scale of a
# laptop: a short DINO run on real photographs, with a k-NN evaluation of *both* backbones every few
# iterations. The package's `train()` evaluates every few epochs (the student too with `knn_student=True`,
# used at the end of this section), so for evaluations every few iterations the loop is written out here from
# the package's pieces. It is the whole algorithm (the paper's Algorithm 1) in a dozen lines:
# views in, teacher forward without gradients, student forward, loss, backward, clipping, optimizer step, EMA.
#
# The scale is small to fit in about a minute and a half on a CPU: a ResNet-18 instead of a ResNet-50, global
# views of 64 px and four local views of 32 px cut from 1,000 Imagenette training photos, a head with $K$ =
# 1024 outputs, and a hundred iterations of 16 images. Such a run is far too short for the features to
# improve on the random initialisation (the training chapter shows how long that takes at this scale): what
# it can show is how the teacher moves compared with the student. The momentum is adapted to the short run: its
# schedule starts at 0.95 (an averaging window of 20 iterations) instead of 0.996 (250 iterations, longer than
# the whole run). On a GPU the cell makes the run longer.

# %%
ON_GPU = DEVICE.type == "cuda"
RUN = dict(
    arch="resnet18", global_size=64, local_size=32, local_crops=4,
    crops_scale=((0.25, 1.0), (0.05, 0.25)),
    out_dim=1024, head_bn=True, batch=64 if ON_GPU else 16, lr=3e-4, warmup_iters=10,
    weight_decay=0.04,
    base_momentum=0.95, iters=600 if ON_GPU else 100, eval_every=50 if ON_GPU else 10,
    train_per_class=260 if ON_GPU else 100, knn_per_class=100 if ON_GPU else 40,
)


def reduced(image: Image.Image, short_side: int = 80) -> Image.Image:
    """A copy of `image` with its short side resized to `short_side` px: cropping 64 px views stays
    cheap."""
    w, h = image.size
    scale = short_side / min(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


train_set = imagenette("train", per_class=RUN["train_per_class"])
train_images = [reduced(image) for image, _ in train_set]
# resize + centre crop to 64 px, normalised
to_eval = eval_transform(RUN["global_size"])
knn_train = imagenette("train", transform=to_eval, per_class=RUN["knn_per_class"])
knn_val = imagenette("val", transform=to_eval, per_class=RUN["knn_per_class"])


def as_batches(dataset, size=250):
    """The whole dataset as a list of (images, labels) batches: an in-memory loader for
    extract_features."""
    images = torch.stack([x for x, _ in dataset])
    labels = torch.tensor(dataset.targets)
    return list(zip(images.split(size), labels.split(size)))


knn_train_batches, knn_val_batches = as_batches(knn_train), as_batches(knn_val)
print(f"{len(train_images)} training photos; k-NN: {len(knn_train)} labelled training images as "
      f"the memory, {len(knn_val)} validation images to classify")


def knn_top1(backbone: nn.Module) -> float:
    """Top-1 accuracy (%) of the weighted k-NN classifier (k = 20, T = 0.07) on the backbone's
    features."""
    train_features, train_labels = extract_features(backbone, knn_train_batches, DEVICE)
    val_features, val_labels = extract_features(backbone, knn_val_batches, DEVICE)
    return knn_classify(train_features, train_labels, val_features, val_labels, k=20, T=0.07)[0]


# %% [markdown]
# Besides the k-NN accuracy, the loop records where the two backbones are in weight space. A ResNet-18 has
# 11 million weights; the loop projects the change of each network since the start on two fixed random
# directions, which gives a two-dimensional picture of the two trajectories.

# %%
set_seed(0)
backbone, dim = build_backbone(RUN["arch"])
student = (MultiCropWrapper(backbone, DINOHead(dim, out_dim=RUN["out_dim"],
                                               use_bn=RUN["head_bn"])).to(DEVICE))
teacher = make_teacher(student)
ncrops = 2 + RUN["local_crops"]
dino_loss = DINOLoss(RUN["out_dim"], ncrops=ncrops, nepochs=1).to(DEVICE)
optimizer = torch.optim.AdamW(param_groups(student), lr=RUN["lr"], weight_decay=RUN["weight_decay"])
momentum_schedule = cosine_schedule(RUN["base_momentum"], 1.0, epochs=1, niter_per_ep=RUN["iters"])
# warmup, then constant
lr_schedule = cosine_schedule(RUN["lr"], RUN["lr"], epochs=RUN["iters"], niter_per_ep=1,
                              warmup_epochs=RUN["warmup_iters"])
augment = MultiCropAugmentation(*RUN["crops_scale"], local_crops_number=RUN["local_crops"],
                                global_size=RUN["global_size"], local_size=RUN["local_size"])


def flat_backbone(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.backbone.parameters()]).cpu()


start_weights = flat_backbone(student)
directions = torch.randn(2, start_weights.numel())
directions /= directions.norm(dim=1, keepdim=True)
history = {"iteration": [0], "student": [knn_top1(student.backbone)],
           "teacher": [knn_top1(teacher.backbone)],
           "loss": []}
history["teacher"][0] = history["student"][0]                    # identical networks at iteration 0
paths = {"student": [np.zeros(2)], "teacher": [np.zeros(2)]}
print(f"iteration   0: k-NN top-1 {history['student'][0]:.1f}% (random initialisation)")

# %% tags=["nbval-ignore-output"]
# The numbers of this run depend on floating-point summation order, which depends on the CPU's
# thread count
# and kernels; the tests compare what the text claims (the check cell below), not the digits.
set_seed(0)
order = torch.randperm(len(train_images)).tolist()
started = time.perf_counter()
for it in range(RUN["iters"]):
    if len(order) < RUN["batch"]:                                  # a new pass over the photos
        order += torch.randperm(len(train_images)).tolist()
    batch, order = order[:RUN["batch"]], order[RUN["batch"]:]
    views = [augment(train_images[i]) for i in batch]
    # 2 global, then local views: (B, 3, H, W) each
    crops = [torch.stack(v).to(DEVICE) for v in zip(*views)]

    with torch.no_grad():
        # the teacher sees the global views only
        teacher_out = teacher(crops[:2])
    student_out = student(crops)                                  # the student sees them all
    loss = dino_loss(student_out, teacher_out, epoch=0)
    for group in optimizer.param_groups:
        group["lr"] = lr_schedule[it]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_gradients(student, 3.0)
    optimizer.step()
    ema_update(teacher, student, float(momentum_schedule[it]))   # the teacher's only update

    history["loss"].append(loss.item())
    for name, net in (("student", student), ("teacher", teacher)):
        paths[name].append((directions @ (flat_backbone(net) - start_weights)).numpy())
    if (it + 1) % RUN["eval_every"] == 0:
        history["iteration"].append(it + 1)
        history["student"].append(knn_top1(student.backbone))
        history["teacher"].append(knn_top1(teacher.backbone))
        print(f"iteration {it + 1:3d}: loss {loss.item():.3f}, k-NN top-1 student "
              f"{history['student'][-1]:.1f}%, teacher {history['teacher'][-1]:.1f}%")
elapsed = time.perf_counter() - started

# %% tags=["nbval-ignore-output"]
print(f"{RUN['iters']} iterations and {len(history['iteration'])} evaluations of both networks "
      f"took {elapsed:.0f} s on {DEVICE}")

# %% tags=["hide-input"]
iterations = np.array(history["iteration"])
student_path, teacher_path = np.array(paths["student"]), np.array(paths["teacher"])
colours = {"student": "tab:orange", "teacher": "tab:blue"}
fig, axes = plt.subplots(2, 2, figsize=(9, 5.6))
ax = axes[0, 0]
for name in ("student", "teacher"):
    ax.plot(iterations, history[name], "o-", color=colours[name], label=name)
ax.axhline(history["student"][0], color="gray", ls=":", label="random initialisation")
ax.axhline(10, color="k", ls="--", lw=0.8, label="chance (10 classes)")
ax.set(xlabel="iteration", ylabel="k-NN top-1 (%)",
       title="k-NN accuracy of the backbones (Imagenette val)")
ax.legend(fontsize=9)
ax = axes[0, 1]
ax.plot(np.arange(1, len(history["loss"]) + 1), history["loss"], color="k", lw=1)
ax.axhline(np.log(RUN["out_dim"]), color="gray", ls=":", label="$\\ln K$ (uniform outputs)")
ax.set(xlabel="iteration", ylabel="DINO loss (nats)", title="Training loss")
ax.legend(fontsize=9)
ax = axes[1, 0]
steps = np.arange(len(student_path))
for name, path in (("student", student_path), ("teacher", teacher_path)):
    ax.plot(steps, path[:, 0], color=colours[name], lw=1 if name == "student" else 2, label=name)
ax.set(xlabel="iteration", ylabel="change of the weights along direction 1",
       title="One coordinate of the backbone's weights over time")
ax.legend(fontsize=9)
ax = axes[1, 1]
for name, path in (("student", student_path), ("teacher", teacher_path)):
    ax.plot(path[:, 0], path[:, 1], color=colours[name], lw=1 if name == "student" else 2,
            label=name)
    ax.plot(*path[-1], "o", color=colours[name])
ax.plot(0, 0, "ks", label="start (both)")
ax.set(xlabel="direction 1", ylabel="direction 2",
       title="Trajectories in weight space (two random directions)")
ax.legend(fontsize=9)
plt.tight_layout()
plt.show()

# %% tags=["nbval-ignore-output"]
steps_student = np.linalg.norm(np.diff(student_path, axis=0), axis=1)
steps_teacher = np.linalg.norm(np.diff(teacher_path, axis=0), axis=1)
ahead = np.array(history["teacher"][1:]) - np.array(history["student"][1:])
summary = {
    "knn_init": history["student"][0],
    "knn_student_final": history["student"][-1],
    "knn_teacher_final": history["teacher"][-1],
    "knn_student_mean": float(np.mean(history["student"][1:])),
    "knn_teacher_mean": float(np.mean(history["teacher"][1:])),
    "teacher_ahead": int((ahead > 0).sum()),
    "n_evals": len(ahead),
    "step_student": float(steps_student.mean()),
    "step_teacher": float(steps_teacher.mean()),
    "path_ratio": float(steps_student.sum() / steps_teacher.sum()),
    "teacher_knn_jump": float(np.abs(np.diff(history["teacher"][1:])).max()),
    "loss_final": float(np.mean(history["loss"][-10:])),
    "log_k": float(np.log(RUN["out_dim"])),
    "n_val": len(knn_val),
}
for key, value in summary.items():
    print(f"{key:20s} {value:.4g}" if isinstance(value, float) else f"{key:20s} {value}")
    glue(key, f"{value:.2f}" if key in ("loss_final", "log_k") else f"{value:.1f}"
         if isinstance(value, float)
         else value, display=False)

# %% tags=["hide-input"]
# What the text below claims, checked on this machine's run (its digits vary with the thread count).
assert summary["knn_init"] > 10, "the random network should score above chance (10%)"
assert max(summary["knn_student_mean"], summary["knn_teacher_mean"]) < summary["knn_init"], \
    "both networks should score below the random initialisation on average"
assert abs(summary["loss_final"] - summary["log_k"]) < 0.5, "the loss should stay close to ln K"
assert summary["path_ratio"] > 1, "the teacher's path should be shorter than the student's"
print("The run shows what the text says: near-uniform targets, no gain over the random network, a "
      "smoother teacher.")

# %% [markdown]
# **What the run shows.** The randomly initialised ResNet-18 scores {glue:text}`knn_init`% (chance is 10%).
# Over the {glue:text}`n_evals` evaluations during training the teacher averaged {glue:text}`knn_teacher_mean`%
# and the student {glue:text}`knn_student_mean`%; the teacher was ahead at {glue:text}`teacher_ahead` of them,
# and at the end the student scored {glue:text}`knn_student_final`% and the teacher
# {glue:text}`knn_teacher_final`%. These differences are within the noise of a k-NN evaluation on
# {glue:text}`n_val` images: the teacher's accuracy jumps by up to {glue:text}`teacher_knn_jump` points
# between two evaluations while its weights move smoothly. So this run does **not** reproduce Fig. 6 of the
# paper, where the teacher is ahead all along.
#
# The reason is in the loss panel. The loss stays close to $\ln K$ ({glue:text}`loss_final` nats over the last
# ten iterations against {glue:text}`log_k`): the teacher's outputs are nearly uniform, so its targets carry
# little information, and a hundred iterations teach neither network anything that the random network did not
# already know; both score below the random initialisation. An average of students can only beat the
# students once they are going somewhere, and in the paper the gap is measured over hundreds of epochs. Where
# the teacher is ahead here, early in the run, it is mostly because it lags: with a momentum around 0.95 it is
# still largely the random initialisation for the first few tens of iterations, and the random network scores
# better than the first students that training produces.
#
# What the run does show plainly is the smoothing. In weight space (bottom panels) the student moves in
# jittery steps; the teacher follows a smooth curve through the middle of the student's path, trailing behind
# it, and its path is {glue:text}`path_ratio` times shorter than the student's. As the momentum approaches 1 at
# the end of the schedule, the teacher all but stops. This is the Polyak–Ruppert averaging of Section 3: the
# step-to-step noise of the student cancels in the average. In the paper's full runs, where the features do
# improve, the smoother model is also the better one (Fig. 6, left).

# %% [markdown]
# ### Think! 3
#
# In this loop the student's backbone runs twice per step in training mode, once on the 64 px global views and
# once on the 32 px local views, and each call updates its BatchNorm running statistics. The teacher's
# backbone only ever sees the global views. Both are evaluated on 64 px images with their running statistics.
# Which network does this favour, and is that an effect of averaging?
#
# ```{admonition} Answer
# :class: dropdown
# It favours the teacher, and it has nothing to do with averaging. The running statistics move towards each
# batch they see (by 10% per call), and the student's last update of every step comes from the small local
# views, whose statistics differ from those of whole 64 px images. The teacher's statistics come from global
# views only, like the evaluation images. The authors' code has the same asymmetry (the teacher averages
# parameters only, and its BatchNorm statistics are its own), so a fair comparison of the two networks'
# *weights* would re-estimate both networks' statistics on the same images before evaluating.
# ```

# %% [markdown]
# ### Teacher and student over the course's reference run
#
# A run long enough for the features to improve takes about an hour on a 2-core CPU, too long for this page,
# so it was made once and its log committed with the course: the `imagenette` preset of the training chapter
# (a ResNet-18 at a quarter of its width, 2 x 64 px + 4 x 32 px views, 64 epochs of the 9,469 Imagenette
# training photos, momentum from 0.99 to 1), with `knn_student=True`, which evaluates the student's backbone
# beside the teacher's every 8 epochs on the 3,925 validation photos. Evaluating the student changes nothing
# in the training. With 147 iterations per epoch a momentum of 0.99 averages over about 100 iterations, two
# thirds of an epoch: the recipe's regime, where the window is a fraction of an epoch, not several.

# %% tags=["hide-input"]
ts_log_path, ts_info_path = (Path("results") / "imagenette_log.jsonl",
                             Path("results") / "imagenette_run.txt")
if not ts_log_path.exists():
    print(f"{ts_log_path} is not in this copy of the course: run `python -m dino_tutorial.train "
          f"--preset imagenette --data-path DIR --output-dir DIR` to make it")
else:
    ts_log = [json.loads(line) for line in ts_log_path.read_text().splitlines()]
    evals = [r for r in ts_log if "knn_student_top1" in r]
    ts_epochs = [r["epoch"] for r in evals]
    ts_teacher = np.array([r["knn_top1"] for r in evals])
    ts_student = np.array([r["knn_student_top1"] for r in evals])
    iters_per_epoch = 9469 // 64
    n_epochs = ts_log[-1]["epoch"]
    # the noise of one evaluation: a binomial standard error over the 3,925 queries, in points
    noise = 100 * np.sqrt(ts_teacher[-1] / 100 * (1 - ts_teacher[-1] / 100) / 3925)
    fig, (ax, ax_m) = plt.subplots(1, 2, figsize=(9, 2.9))
    ax.plot(ts_epochs, ts_teacher, "o-", label="teacher")
    ax.plot(ts_epochs, ts_student, "s--", label="student")
    ax.axhline(ts_teacher[0], color="gray", lw=0.8, ls=":", label="random initialisation")
    ax.set(xlabel="epoch", ylabel="k-NN top-1 (%)", title="k-NN of the two backbones")
    ax.legend()
    trained = [r for r in ts_log if r["epoch"] > 0]
    window = [1 / (1 - r["teacher_momentum"]) / iters_per_epoch for r in trained]
    ax_m.semilogy([r["epoch"] for r in trained], window, "o-", ms=3,
                  label="1 / (1 - momentum), in epochs")
    ax_m.axhline(n_epochs, color="gray", lw=0.8, ls=":", label=f"the whole run ({n_epochs} epochs)")
    ax_m.set(xlabel="epoch", ylabel="averaging window (epochs)", ylim=(0.3, 300),
             title="How far back the teacher averages")  # the last window is off scale
    ax_m.legend(loc="upper left")
    fig.tight_layout()
    plt.show()
    later = [i for i, e in enumerate(ts_epochs) if e > 0]
    gaps = ts_teacher[later] - ts_student[later]                 # > 0: the teacher is ahead
    clear = np.abs(gaps) > 2 * np.sqrt(2) * noise   # outside twice the noise of a difference
    glue("ts_n_evals", f"{len(later)}", display=False)
    glue("ts_teacher_ahead", f"{int((gaps > 0).sum())}", display=False)
    glue("ts_clear", f"{int(clear.sum())}", display=False)
    glue("ts_teacher_final", f"{ts_teacher[-1]:.1f}", display=False)
    glue("ts_student_final", f"{ts_student[-1]:.1f}", display=False)
    glue("ts_random", f"{ts_teacher[0]:.1f}", display=False)
    glue("ts_mean_gap", f"{gaps.mean():+.1f}", display=False)
    glue("ts_max_abs_gap", f"{np.abs(gaps).max():.1f}", display=False)
    glue("ts_noise", f"{noise:.1f}", display=False)
    glue("ts_window_start", f"{window[0]:.2f}", display=False)
    glue("ts_iters_per_epoch", f"{iters_per_epoch}", display=False)
    glue("ts_epochs", f"{n_epochs}", display=False)
    print(f"teacher ahead at {(gaps > 0).sum()} of {len(later)} evaluations, by "
          f"{gaps.mean():+.1f} points on average (largest difference {np.abs(gaps).max():.1f}); "
          f"{clear.sum()} of the differences exceed twice the noise of a difference "
          f"({2 * np.sqrt(2) * noise:.1f} points); final teacher {ts_teacher[-1]:.1f}%, "
          f"student {ts_student[-1]:.1f}%")

# %% [markdown]
# **What the long run shows.** Both backbones end far above the random network
# ({glue:text}`ts_random`%): the teacher at {glue:text}`ts_teacher_final`%, the student at
# {glue:text}`ts_student_final`%. The teacher is ahead at {glue:text}`ts_teacher_ahead` of the
# {glue:text}`ts_n_evals` evaluations, by {glue:text}`ts_mean_gap` points on average, and no difference is
# larger than {glue:text}`ts_max_abs_gap` points. One evaluation on 3,925 images has a standard error of about
# {glue:text}`ts_noise` points, so a difference of two evaluations is noise below about twice
# $\sqrt{2}$ times that; {glue:text}`ts_clear` of the differences are larger. At this scale the two networks
# are level: the run neither reproduces the teacher's lead of Fig. 6 nor contradicts it, since the paper's
# lead (a few points on ImageNet) would be inside this noise too.
#
# The right panel shows the regime. With {glue:text}`ts_iters_per_epoch` iterations per epoch, a momentum
# of 0.99 averages over {glue:text}`ts_window_start` epochs at the start, and the window passes the length of
# the run only near its end, when the momentum approaches 1 and the learning rate has decayed so far that the
# student hardly moves. In the ResNet-50 recipe an epoch is 2,502 iterations (8 GPUs of 64 images), so 0.996
# (250 iterations) averages over a tenth of an epoch: there the teacher hardly lags at all, and what is left
# is the smoothing.
#
# Two more effects weigh on such curves: the student is evaluated with the weights it has *now* (late in a
# cosine schedule the students barely move and the teacher's averaging has little noise left to remove), and
# the BatchNorm statistics of the two networks come from different views (Think! 3).

# %% [markdown]
# ### Think! 4
#
# How would you set the teacher's momentum so that, in the reference run of 147 iterations per epoch, the
# teacher averages over the same share of an epoch as the recipe's 0.996 does on ImageNet with 8 GPUs of
# 64 images (2,502 iterations per epoch)? What do you expect that teacher to do?
#
# ```{admonition} Answer
# :class: dropdown
# The recipe's window is 1 / (1 - 0.996) = 250 iterations, a tenth of a 2,502-iteration epoch. A tenth of a
# 147-iteration epoch is about 15 iterations: 1 / (1 - m) = 15, so m = 0.93. Such a teacher hardly lags, but
# it averages only some fifteen noisy students, so it is little smoother than the student; and a teacher that
# follows the student closely gives targets that move with it, towards the regime where the paper's "previous
# iteration" and "student copy" teachers fail (Fig. 6, right). Small data sets have no good momentum: a window
# long enough to smooth the student is long compared with an epoch, which is why the teacher's advantage is a
# property of long training on many images.
# ```

# %% [markdown]
# ## Summary
#
# - The teacher has the student's architecture and starts from the same weights; it never receives
#   gradients, and after each student step it becomes $\lambda\,\theta_t + (1 - \lambda)\,\theta_s$.
# - The momentum follows a cosine from 0.996 to 1: for the ResNet-50 recipe, {glue:text}`niter_per_ep`
#   iterations per epoch, an averaging window of {glue:text}`window_start` iterations at the start that grows
#   past an epoch at the end.
# - Unrolled, the teacher is an exponentially weighted average of past students (Polyak–Ruppert averaging),
#   an ensemble that the paper finds better than the student throughout training.
# - In a short run of a few minutes the teacher's weights are visibly a smoothed version of the student's
#   (a path {glue:text}`path_ratio` times shorter), but the features do not improve on the random network yet,
#   and the teacher's k-NN accuracy ({glue:text}`knn_teacher_mean`% on average) is not clearly above the
#   student's ({glue:text}`knn_student_mean`%).
# - Over the {glue:text}`ts_epochs`-epoch reference run both beat the random network by far
#   ({glue:text}`ts_teacher_final`% for the teacher, {glue:text}`ts_student_final`% for the student at the
#   end) and stay within the noise of each other: the teacher's lead of the paper (Fig. 6) is not visible at
#   this scale, and is not contradicted either.
#
# **Next.** The teacher gives targets, but nothing so far prevents the two networks from agreeing on a trivial
# output. {doc}`04_dino_loss` writes the loss that compares them, and the centering and sharpening that keep
# the targets informative.
#
# **Further reading.**
# - Caron et al. 2021, *Emerging Properties in Self-Supervised Vision Transformers* (arXiv 2104.14294):
#   Section 3.1 ("Teacher network"), Section 5.2 and Fig. 6 (building teachers from the student, teacher
#   against student), Algorithm 1.
# - He et al. 2020, *Momentum Contrast for Unsupervised Visual Representation Learning* (MoCo, arXiv
#   1911.05722): the momentum encoder.
# - Tarvainen and Valpola 2017, *Mean teachers are better role models* (arXiv 1703.01780): an EMA teacher in
#   semi-supervised learning.
# - Polyak and Juditsky 1992, *Acceleration of Stochastic Approximation by Averaging*; Izmailov et al. 2018,
#   *Averaging Weights Leads to Wider Optima and Better Generalization* (SWA, arXiv 1803.05407).
