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
# weights follow a slow exponential moving average of the student's. This chapter builds it, schedules it,
# watches it smooth a noisy student, and compares it with its student over the course's reference run.*
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/03_ema_teacher.ipynb)
#
# **Estimated time:** 55 minutes.

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
# - Watch an EMA teacher smooth a noisy SGD student on a problem small enough to draw, and measure what the
#   smoothing buys and what the lag costs.
# - Compare the teacher with the student it averages over the course's reference DINO run on Imagenette
#   (paper Section 5.2, Fig. 6), with the noise of the comparison.

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

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from dino_tutorial.augment import MultiCropAugmentation
from dino_tutorial.data import imagenette, imagenette_root, resolve_data_root
from dino_tutorial.loss import DINOLoss
from dino_tutorial.model import DINOHead, MultiCropWrapper, build_backbone
from dino_tutorial.schedules import cosine_schedule
from dino_tutorial.teacher import ema_update, make_teacher
from dino_tutorial.notebook import check_exercise, course_file, glue, setup
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
# ### Coding exercise 1: the momentum teacher
#
# Put Sections 1 and 2 together in one small class. `MyMomentumTeacher(student, base_momentum, epochs,
# niter_per_ep)` holds `network`, a copy of the student whose parameters do not require gradients, and
# `momentum`, the schedule of this section (one value per iteration, from `base_momentum` towards 1; use
# `cosine_schedule`). Its `update(student, it)` is the EMA of iteration `it`, in place and without recording
# gradients. Like the authors' code, average the *parameters* only: the BatchNorm running statistics (buffers)
# of the teacher are its own, and the teacher stays in train mode.

# %% tags=["exercise"]
class MyMomentumTeacher:
    """A copy of the student that follows it by an EMA with a cosine momentum schedule."""

    def __init__(self, student: nn.Module, base_momentum: float, epochs: int, niter_per_ep: int):
        #################################################################
        # Fill in the blanks (...), then remove this line.
        raise NotImplementedError("MyMomentumTeacher still has blanks (...)")
        #################################################################
        self.network = ...     # a copy of the student; no parameter requires a gradient
        self.momentum = ...    # (epochs * niter_per_ep,) momentum per iteration

    @torch.no_grad()
    def update(self, student: nn.Module, it: int) -> None:
        """theta_t <- m * theta_t + (1 - m) * theta_s for every parameter, m = momentum[it]."""
        ...


# %% tags=["solution", "hide-cell"]
# Solution to exercise 1
class MyMomentumTeacher:
    """A copy of the student that follows it by an EMA with a cosine momentum schedule."""

    def __init__(self, student: nn.Module, base_momentum: float, epochs: int, niter_per_ep: int):
        self.network = copy.deepcopy(student)
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.momentum = cosine_schedule(base_momentum, 1.0, epochs, niter_per_ep)

    @torch.no_grad()
    def update(self, student: nn.Module, it: int) -> None:
        """theta_t <- m * theta_t + (1 - m) * theta_s for every parameter, m = momentum[it]."""
        m = float(self.momentum[it])
        for p_t, p_s in zip(self.network.parameters(), student.parameters()):
            p_t.mul_(m).add_(p_s.detach(), alpha=1.0 - m)


# %%
def check_momentum_teacher(cls):
    """Against make_teacher, cosine_schedule and ema_update on a small network, over a short run."""
    set_seed(0)
    small_backbone, dim = build_backbone("resnet18")
    small_student = MultiCropWrapper(small_backbone, DINOHead(dim, out_dim=256, hidden_dim=64))
    epochs, per_epoch, base = 2, 3, 0.9
    mine, reference = cls(small_student, base, epochs, per_epoch), make_teacher(small_student)
    assert mine.network is not small_student, "the teacher must be a copy, not the student itself"
    assert all(not p.requires_grad for p in mine.network.parameters()), (
        "a teacher parameter still requires a gradient")
    assert mine.network.training, "the teacher stays in train mode, as in the authors' code"
    expected = cosine_schedule(base, 1.0, epochs, per_epoch)
    assert np.asarray(mine.momentum).shape == expected.shape, (
        f"{len(mine.momentum)} momentum values, expected one per iteration ({len(expected)})")
    assert np.allclose(mine.momentum, expected), ("the momentum schedule differs from "
                                                  "cosine_schedule")
    for it in range(epochs * per_epoch):
        with torch.no_grad():    # a student step: the parameters and the statistics move
            for p in small_student.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            for b in small_student.buffers():
                b.add_(1)
        mine.update(small_student, it)
        ema_update(reference, small_student, float(expected[it]))
    for (name, a), b in zip(mine.network.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6), (f"after {epochs * per_epoch} updates, parameter "
                                                 f"{name} differs from ema_update's")
        assert not a.requires_grad, f"parameter {name} of the teacher now requires a gradient"
    for (name, a), b in zip(mine.network.named_buffers(), reference.buffers()):
        assert torch.equal(a, b), f"buffer {name} changed: only parameters are averaged"
    print("Correct: your teacher matches make_teacher, cosine_schedule and ema_update over "
          f"{epochs * per_epoch} iterations")


check_exercise(1, check_momentum_teacher, MyMomentumTeacher)

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
# ## Section 4: the smoothing, seen where it can be drawn
#
# A ResNet's weights live in millions of dimensions, and a DINO run needs the loss of the next chapter and
# the k-NN of chapter 05 before its progress can be measured; the training chapter puts them together. The
# averaging itself can be watched on a problem small enough to draw: a linear model with two weights, fitted
# by SGD to noisy data, with the package's `make_teacher` and `ema_update` making its teacher. The data have
# one steep and one shallow direction (input scales 1 and 0.3) and label noise, so that with a constant
# learning rate the student never settles: it reaches the optimum $w^*$ and then keeps jumping around it, as
# the students of a real run do. Its quality is measured exactly, by the *excess risk*
# $\tfrac12 (w - w^*)^\top \Sigma\, (w - w^*)$ (how much worse than the best model it predicts new data, where
# $\Sigma$ is the input covariance), so no evaluation noise enters. Twenty seeds give the spread.

# %%
W_STAR = torch.tensor([1.0, -1.0], dtype=torch.float64)
W_START = torch.tensor([-1.5, 1.0], dtype=torch.float64)
SCALES = torch.tensor([1.0, 0.3], dtype=torch.float64)          # input standard deviations
TOY = dict(iters=400, lr=0.2, batch=4, label_noise=1.0, momentum=0.95, seeds=20)


def excess_risk(w: np.ndarray) -> np.ndarray:
    """0.5 (w - w*)^T Sigma (w - w*) for each row of w (Sigma = diag(SCALES^2))."""
    return 0.5 * (((w - W_STAR.numpy()) * SCALES.numpy()) ** 2).sum(axis=-1)


def smoothing_run(seed: int) -> tuple:
    """SGD on the toy regression with an EMA teacher; the weights of both after every step."""
    g = torch.Generator().manual_seed(seed)
    toy_student = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        toy_student.weight.copy_(W_START)
    toy_teacher = make_teacher(toy_student)
    sgd = torch.optim.SGD(toy_student.parameters(), lr=TOY["lr"])
    paths = {"student": [W_START.numpy()], "teacher": [W_START.numpy()]}
    for _ in range(TOY["iters"]):
        x = torch.randn(TOY["batch"], 2, generator=g, dtype=torch.float64) * SCALES
        noise = torch.randn(TOY["batch"], generator=g, dtype=torch.float64)
        y = x @ W_STAR + TOY["label_noise"] * noise
        loss = 0.5 * ((toy_student(x).squeeze(1) - y) ** 2).mean()
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        ema_update(toy_teacher, toy_student, TOY["momentum"])       # the teacher's only update
        paths["student"].append(toy_student.weight.detach()[0].numpy().copy())
        paths["teacher"].append(toy_teacher.weight[0].numpy().copy())
    return np.array(paths["student"]), np.array(paths["teacher"])


runs = [smoothing_run(seed) for seed in range(TOY["seeds"])]
half = TOY["iters"] // 2                       # the second half: both networks are near the optimum
risk = {name: np.array([excess_risk(run[k]) for run in runs])
        for k, name in enumerate(("student", "teacher"))}
late_ratio = risk["student"][:, half:].mean(axis=1) / risk["teacher"][:, half:].mean(axis=1)
path_ratio = np.array([np.linalg.norm(np.diff(s, axis=0), axis=1).sum()
                       / np.linalg.norm(np.diff(t, axis=0), axis=1).sum() for s, t in runs])
early = np.arange(1, 31)                        # the first 30 steps: the teacher still lags
behind = risk["teacher"][:, early] > risk["student"][:, early]
early_teacher_worse = int((behind.mean(axis=1) > 0.5).sum())
print(f"second half, student's excess risk / teacher's: {np.median(late_ratio):.1f} (median of "
      f"{TOY['seeds']} seeds, range {late_ratio.min():.1f}-{late_ratio.max():.1f})")
print(f"path length, student / teacher: {np.median(path_ratio):.1f} "
      f"(range {path_ratio.min():.1f}-{path_ratio.max():.1f})")
print(f"seeds where the teacher is behind in most of the first 30 steps: {early_teacher_worse} of "
      f"{TOY['seeds']}")
glue("toy_ratio", f"{np.median(late_ratio):.1f}", display=False)
glue("toy_ratio_min", f"{late_ratio.min():.1f}", display=False)
glue("toy_ratio_max", f"{late_ratio.max():.1f}", display=False)
glue("path_ratio", f"{np.median(path_ratio):.1f}", display=False)
glue("toy_early", f"{early_teacher_worse}", display=False)
glue("toy_seeds", f"{TOY['seeds']}", display=False)

# %% tags=["hide-input"]
toy_s, toy_t = runs[0]
grid = np.stack(np.meshgrid(np.linspace(-2, 2.5, 120), np.linspace(-2.2, 1.8, 120)), axis=-1)
fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(9, 3.6))
ax.contour(grid[..., 0], grid[..., 1], excess_risk(grid), levels=[0.01, 0.05, 0.2, 0.5, 1, 2],
           colors="lightgray", linewidths=0.8)
ax.plot(toy_s[:, 0], toy_s[:, 1], color="tab:orange", lw=0.7, label="student")
ax.plot(toy_t[:, 0], toy_t[:, 1], color="tab:blue", lw=2, label="teacher")
ax.plot(*W_STAR.numpy(), "k*", ms=10, label="optimum $w^*$")
ax.plot(*W_START.numpy(), "ks", label="start (both)")
ax.set(xlabel="weight 1", ylabel="weight 2", title="Paths in weight space (seed 0)")
ax.legend(fontsize=9, loc="lower left")
steps = np.arange(TOY["iters"] + 1)
for name, colour in (("student", "tab:orange"), ("teacher", "tab:blue")):
    ax_r.semilogy(steps, np.median(risk[name], axis=0), color=colour, label=f"{name} (median)")
    ax_r.fill_between(steps, *np.percentile(risk[name], [10, 90], axis=0), color=colour, alpha=0.2)
ax_r.set(xlabel="iteration", ylabel="excess risk",
         title=f"Over {TOY['seeds']} seeds (band: 10-90%)")
ax_r.legend(fontsize=9)
fig.tight_layout()
plt.show()

# %% tags=["hide-input"]
# What the text below claims, checked on the run above.
assert late_ratio.min() > 1, "the teacher should beat the student near the optimum in every seed"
assert path_ratio.min() > 1, "the teacher's path should be shorter than the student's"
assert early_teacher_worse > TOY["seeds"] // 2, "the teacher should lag early in most seeds"

# %% [markdown]
# **What the toy shows.** Near the optimum (the second half of the run) the student's excess risk is
# {glue:text}`toy_ratio` times the teacher's (median of {glue:text}`toy_seeds` seeds; from
# {glue:text}`toy_ratio_min` to {glue:text}`toy_ratio_max`), and the teacher's path is
# {glue:text}`path_ratio` times shorter: the student's step-to-step noise cancels in the average, which is
# Polyak–Ruppert averaging at work (Section 3). The price is the lag: early on, while the student is still
# travelling, the teacher trails behind it and is the worse model (in {glue:text}`toy_early` of the
# {glue:text}`toy_seeds` seeds during most of the first 30 steps). A teacher helps once the student's motion is
# mostly noise around where it is going, not while it is still going there, which is why the momentum starts
# near 0.996 (a short window) and only grows towards 1 as the learning rate decays.
#
# The same trade-off decides whether a DINO teacher leads its student, with one more twist: in DINO the
# student learns *from* the teacher, so the targets that the smoothing improves feed back into the student.
# The next section looks at a real run.

# %% [markdown]
# ## Section 5: teacher and student over the course's reference run
#
# A run long enough for the features to improve takes about an hour on a 2-core CPU, too long for this page,
# so it was made once and its log committed with the course: the `imagenette` preset of the training chapter
# (a ResNet-18 at a quarter of its width, 2 x 64 px + 4 x 32 px views, 64 epochs of the 9,469 Imagenette
# training photos, momentum from 0.99 to 1), with `knn_student=True`, which evaluates the student's backbone
# beside the teacher's every 8 epochs on the 3,925 validation photos. Evaluating the student changes nothing
# in the training. With 147 iterations per epoch a momentum of 0.99 averages over about 100 iterations, two
# thirds of an epoch: the recipe's regime, where the window is a fraction of an epoch, not several.

# %% tags=["hide-input"]
ts_log_path = course_file("results/imagenette_log.jsonl")  # downloaded when opened alone
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
# ### Think! 3
#
# In each step of the reference run the student's backbone runs twice in training mode, once on the 64 px
# global views and once on the 32 px local views, and each call updates its BatchNorm running statistics. The
# teacher's backbone only ever sees the global views. Both are evaluated on 64 px images with their running
# statistics.
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
# - On a noisy two-weight problem the teacher's path is {glue:text}`path_ratio` times shorter than the
#   student's and, near the optimum, its excess risk {glue:text}`toy_ratio` times smaller; early on, while the
#   student still travels, the lagging teacher is the worse model.
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
