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
# # 04 The DINO loss: centering, sharpening and collapse
#
# *The student learns to predict the teacher's distribution from another view of the same image. Left
# alone, both networks would agree by saying the same thing for every image; two small operations on the
# teacher's output, centering and sharpening, stop that.*
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/04_dino_loss.ipynb)
#
# **Estimated time:** 85 minutes.

# %% [markdown]
# ## Tutorial objectives
#
# - Turn the outputs of student and teacher into distributions with a temperature (Eq. 1 of the paper) and
#   see what a low teacher temperature, *sharpening*, does to a distribution.
# - Write the DINO loss (Eq. 2-3): a cross-entropy between the teacher's output for each global view and
#   the student's output for every *other* view, and check it against the package's `DINOLoss`.
# - Turn the loss into the module a training loop calls, with its *centre* (Eq. 4), and see what subtracting
#   the centre does to the teacher's output.
# - Train three small networks on real images, with both tricks, with sharpening only and with centering
#   only, and recognise the two ways of collapsing from the teacher's entropy and the KL divergence
#   (Section 5.3, Fig. 7).

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
import math
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T
from tqdm.auto import tqdm

from dino_tutorial.augment import MultiCropAugmentation
from dino_tutorial.data import imagenette, resolve_data_root
from dino_tutorial.loss import DINOLoss, collapse_stats
from dino_tutorial.model import DINOHead, MultiCropWrapper, build_backbone
from dino_tutorial.teacher import ema_update, make_teacher
from dino_tutorial.notebook import check_exercise, glue, setup
from dino_tutorial.train import set_seed

DEVICE = setup(seed=0, one_thread_on_small_cpu=True)
QUIET = os.environ.get("TQDM_DISABLE", "") not in ("", "0")  # progress bars off in CI


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of the distributions in the last dimension of `p`."""
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


# %% tags=["hide-input"]
# The data: Imagenette training images, a few dozen per class, shrunk to 64 px once (the views are
# small).
PER_CLASS = 48
try:
    dataset = imagenette("train", per_class=PER_CLASS)
except FileNotFoundError as err:
    print(f"This chapter needs Imagenette: set DINO_DATA to a folder with imagenette-mini/ or "
          f"imagenette2-160/, or run online so that it is downloaded into {resolve_data_root()} "
          f"({err})")
    raise SystemExit(1)
shrink = T.Resize(64, interpolation=T.InterpolationMode.BICUBIC)
IMAGES = [shrink(dataset.loader(path)) for path, _ in dataset.samples]
print(f"{len(IMAGES)} training images of {len(dataset.classes)} classes, shrunk to "
      f"{IMAGES[0].size} px")

# %% [markdown]
# ## Section 1: from outputs to distributions, and sharpening
#
# Student $g_{\theta_s}$ and teacher $g_{\theta_t}$ share one architecture (chapter 02): a backbone and a
# projection head with $K$ outputs. Each output vector becomes a probability distribution over the $K$
# dimensions by a softmax with a *temperature* (Eq. 1 of the paper):
#
# $$
# P_s(x)^{(i)} = \frac{\exp\big(g_{\theta_s}(x)^{(i)} / \tau_s\big)}{\sum_{k=1}^{K} \exp\big(g_{\theta_s}(x)^{(k)} / \tau_s\big)},
# $$
#
# and $P_t$ likewise with the teacher's temperature $\tau_t$. Nothing says what the $K$ dimensions mean: no
# label ever names them. The paper uses $\tau_s = 0.1$ for the student and a lower $\tau_t = 0.04$ for the
# teacher. Dividing by a smaller temperature stretches the differences between outputs, so the teacher's
# distribution is *sharper*: more of its mass sits on its few largest dimensions. This is the first of the
# two operations that the paper applies to the teacher, **sharpening**.
#
# To see it on real outputs, the cell below builds the small network that this chapter trains at the end
# (a ResNet-18 with a head of $K = 256$ outputs; chapter 02 explains both) and runs the randomly initialised
# network on two global and two local views of {glue:text}`n_images_section1` real images. The views are
# made by the multi-crop augmentation of chapter 01, at 32 and 16 pixels to keep this chapter fast.

# %%
OUT_DIM = 256         # K, the number of output dimensions (65536 in the paper)
N_LOCAL = 2           # local views per image (8 in the paper)
STUDENT_TEMP, TEACHER_TEMP = 0.1, 0.04
augment = MultiCropAugmentation(global_crops_scale=(0.25, 1.0), local_crops_scale=(0.05, 0.25),
                                local_crops_number=N_LOCAL, global_size=32, local_size=16)


def make_batch(images, augment):
    """Multi-crop views of `images`, stacked view by view: a list of (B, 3, H, W) tensors."""
    views = [augment(image) for image in images]
    return [torch.stack([v[i] for v in views]) for i in range(len(views[0]))]


def make_network(out_dim: int = OUT_DIM) -> MultiCropWrapper:
    """A ResNet-18 backbone and a small DINO head (with BatchNorm, as in the package's small
    preset)."""
    backbone, feature_dim = build_backbone("resnet18")
    head = DINOHead(feature_dim, out_dim, use_bn=True, hidden_dim=256, bottleneck_dim=64)
    return MultiCropWrapper(backbone, head)


set_seed(0)
crops = make_batch(IMAGES[::12], augment)                     # one image in 12: 40 images
network = make_network().to(DEVICE)
with torch.no_grad():
    outputs = network([c.to(DEVICE) for c in crops]).cpu()    # (4 views * B, K), view-major
batch = len(crops[0])
glue("n_images_section1", batch, display=False)
print(f"{len(crops)} views of {batch} images: {[tuple(c.shape[1:]) for c in crops]} -> outputs "
      f"{tuple(outputs.shape)}")
print(f"outputs lie in [{outputs.min():.2f}, {outputs.max():.2f}]")

# %% [markdown]
# The head's last layer is weight-normalised and its input L2-normalised, so every output is a cosine
# between two unit vectors, in $[-1, 1]$. Here they are small numbers, and at temperature 1 the softmax of
# such numbers is nearly uniform. The figure takes the output for one image and applies the three
# temperatures.

# %%
logits = outputs[0]                                           # global view 1 of the first image
temperatures = {"tau1": ("$\\tau = 1$", 1.0), "student": ("student, $\\tau_s = 0.1$", STUDENT_TEMP),
                "teacher": ("teacher, $\\tau_t = 0.04$", TEACHER_TEMP)}
order = torch.argsort(logits, descending=True)
fig, ax = plt.subplots(figsize=(7, 3.2))
for (key, (label, tau)), color in zip(temperatures.items(), ["0.6", "tab:blue", "tab:red"]):
    p = F.softmax(logits / tau, dim=-1)
    ax.plot(np.arange(1, OUT_DIM + 1), p[order].numpy(), color=color, lw=2,
            label=f"{label}: entropy {entropy(p):.2f} nats")
    glue(f"entropy_{key}", f"{entropy(p):.2f}", display=False)
ax.axhline(1 / OUT_DIM, color="k", lw=0.8, ls=":",
           label=f"uniform, 1/K (entropy ln K = {math.log(OUT_DIM):.2f})")
ax.set(xscale="log", xlabel="output dimension, sorted by the output (rank)", ylabel="probability",
       title="One image's output through a softmax at three temperatures")
ax.legend(fontsize=9)
plt.tight_layout()
plt.show()
glue("ln_k", f"{math.log(OUT_DIM):.2f}", display=False)

# %% [markdown]
# The same numbers give a near-uniform distribution at $\tau = 1$ (entropy {glue:text}`entropy_tau1`
# nats, against $\ln K$ = {glue:text}`ln_k` for the uniform distribution), a flatter one for the student
# (entropy {glue:text}`entropy_student`) and a peaked one for the teacher ({glue:text}`entropy_teacher`).
# Entropy is the measure of sharpness used for the rest of this chapter: $0$ when all the mass is on one
# dimension, $\ln K$ when it is spread evenly.

# %% [markdown]
# ## Section 2: the loss, across views
#
# The student is trained so that its distribution matches the teacher's, measured by the cross-entropy
# $H(a, b) = -\sum_i a^{(i)} \log b^{(i)}$ (Eq. 2). What makes DINO work is *which* distributions are
# compared: the teacher sees only the two global views $x_1^g, x_2^g$ of an image, the student sees every
# view in $V$ (the two global and the local ones), and each teacher output is compared with the student's
# output for every *other* view (Eq. 3):
#
# $$
# \min_{\theta_s} \sum_{x \in \{x_1^g, x_2^g\}} \; \sum_{x' \in V,\ x' \neq x} H\big(P_t(x), P_s(x')\big).
# $$
#
# With $|V|$ views there are $2|V|$ (teacher view, student view) pairs, of which the two same-view pairs
# are skipped: the student would only have to copy the teacher on the very same crop. That leaves
# $2|V| - 2$ terms, 18 for the paper's ten views. The authors' code (and the package) averages the terms
# instead of summing them, which only rescales the learning rate; it also averages over the images of the
# batch. The gradient flows only into the student: the teacher's distribution is a fixed target
# (stop-gradient), and the teacher follows the student by the moving average of chapter 03.
#
# The figure shows the $2 \times |V|$ table of cross-entropies for the paper's ten views (two global, eight
# local) of the same images, averaged over the batch, with the skipped pairs crossed out.

# %%
augment_10 = MultiCropAugmentation(global_crops_scale=(0.25, 1.0), local_crops_scale=(0.05, 0.25),
                                   local_crops_number=8, global_size=32, local_size=16)
set_seed(0)
crops_10 = [c.to(DEVICE) for c in make_batch(IMAGES[::12], augment_10)]
with torch.no_grad():
    student_out = network(crops_10).cpu()                     # (10 * B, K)
    # (2 * B, K): the teacher sees the global views
    teacher_out = network(crops_10[:2]).cpu()
n_views, batch = len(crops_10), len(crops_10[0])
# the centre of Section 3; zero for now
center = torch.zeros(1, OUT_DIM)
p_teacher = F.softmax((teacher_out - center) / TEACHER_TEMP, dim=-1).view(2, batch, OUT_DIM)
log_p_student = F.log_softmax(student_out / STUDENT_TEMP, dim=-1).view(n_views, batch, OUT_DIM)
table = torch.stack([torch.stack([-(p_teacher[t] * log_p_student[v]).sum(-1).mean()
                                  for v in range(n_views)])
                     # (2, |V|): batch-mean H(P_t(t), P_s(v))
                     for t in range(2)])

fig, ax = plt.subplots(figsize=(8, 2.4))
ax.imshow(table.numpy(), cmap="viridis", aspect="auto")
for t in range(2):
    for v in range(n_views):
        text = "skipped" if t == v else f"{table[t, v]:.2f}"
        ax.text(v, t, text, ha="center", va="center", fontsize=9, color="w" if t != v else "r")
ax.set_xticks(range(n_views), ["global 1", "global 2"] + [f"local {i}"
                                                          for i in range(1, n_views - 1)],
                                                          fontsize=9)
ax.set_yticks(range(2), ["global 1", "global 2"])
ax.set(xlabel="student view $x'$", ylabel="teacher view $x$",
       title="Cross-entropy $H(P_t(x), P_s(x'))$ in nats, mean over the batch (random network)")
plt.tight_layout()
plt.show()

same_view = torch.eye(2, n_views, dtype=torch.bool)
by_hand = table[~same_view].mean()
reference = DINOLoss(OUT_DIM, ncrops=n_views)(student_out, teacher_out, epoch=0)
print(f"{(~same_view).sum().item()} pairs; mean of the table without the skipped pairs: "
      f"{by_hand:.4f}, DINOLoss: {reference:.4f}")

# %% [markdown]
# The mean of the 18 kept cells is the number `DINOLoss` returns. The package computes the whole table
# with one `einsum` over views; the exercise below asks for the explicit double loop, which is the form
# that is easiest to check against Eq. 3.
#
# ### Coding exercise 1: the DINO loss as a double loop
#
# Write `dino_loss_loop(student_output, teacher_output, center, ncrops, teacher_temp, student_temp)`.
# `student_output` is `(ncrops * B, K)`, view-major as `MultiCropWrapper` returns it (rows `[i*B, (i+1)*B)`
# are view `i`, global views first); `teacher_output` is `(2 * B, K)`. Centre and sharpen the teacher
# (Eq. 4 below and Eq. 1), take the student's log-softmax at its temperature, then loop over the teacher
# views `t` and the student views `v`, skip `t == v`, add the batch-mean cross-entropy of each pair and
# divide by the number of pairs. The teacher's probabilities must not carry gradients.

# %% tags=["exercise"]
def dino_loss_loop(student_output: torch.Tensor, teacher_output: torch.Tensor, center: torch.Tensor,
                   ncrops: int, teacher_temp: float = 0.04,
                   student_temp: float = 0.1) -> torch.Tensor:
    """Mean over the 2 * ncrops - 2 (teacher view, other student view) pairs of the batch-mean
    H(P_t, P_s)."""
    #################################################################
    # Fill in the blanks (...), then remove this line.
    raise NotImplementedError("dino_loss_loop still has blanks (...)")
    #################################################################
    teacher_views = ...   # list of 2 tensors (B, K): centred, sharpened softmax, no gradient
    student_views = ...   # list of ncrops tensors (B, K): log-softmax at the student temperature
    total, n_pairs = 0.0, 0
    for t, p_t in enumerate(teacher_views):
        for v, log_p_s in enumerate(student_views):
            if ...:
                continue
            total = total + ...   # batch-mean cross-entropy of this pair
            n_pairs += 1
    return total / n_pairs


# Uncomment to try your function:
# print(dino_loss_loop(student_out, teacher_out, center, ncrops=n_views))

# %% tags=["solution", "hide-cell"]
# Solution to exercise 1
def dino_loss_loop(student_output: torch.Tensor, teacher_output: torch.Tensor, center: torch.Tensor,
                   ncrops: int, teacher_temp: float = 0.04,
                   student_temp: float = 0.1) -> torch.Tensor:
    """Mean over the 2 * ncrops - 2 (teacher view, other student view) pairs of the batch-mean
    H(P_t, P_s)."""
    teacher_views = F.softmax((teacher_output - center) / teacher_temp, dim=-1).detach().chunk(2)
    student_views = F.log_softmax(student_output / student_temp, dim=-1).chunk(ncrops)
    total, n_pairs = 0.0, 0
    for t, p_t in enumerate(teacher_views):
        for v, log_p_s in enumerate(student_views):
            if v == t:        # same view for teacher and student: skipped
                continue
            total = total + (-p_t * log_p_s).sum(dim=-1).mean()
            n_pairs += 1
    return total / n_pairs


print(dino_loss_loop(student_out, teacher_out, center, ncrops=n_views))

# %%
def check_dino_loss(loss_fn):
    """Random logits, a random centre, several crop counts and temperatures: compare with DINOLoss.
    """
    generator = torch.Generator().manual_seed(0)
    for ncrops, batch, k, teacher_temp in [(2, 3, 5, 0.04), (4, 8, 32, 0.04), (10, 5, 64, 0.07)]:
        student = torch.randn(ncrops * batch, k, generator=generator, requires_grad=True)
        teacher = torch.randn(2 * batch, k, generator=generator)
        center = torch.randn(1, k, generator=generator)
        reference = (DINOLoss(k, ncrops, warmup_teacher_temp=teacher_temp,
                              teacher_temp=teacher_temp, nepochs=1))
        reference.center.copy_(center)                        # same centre, same epoch
        expected = reference(student, teacher, epoch=0)
        (expected_grad,) = torch.autograd.grad(expected, student)
        yours = loss_fn(student, teacher, center.clone(), ncrops, teacher_temp=teacher_temp)
        assert torch.allclose(yours, expected, atol=1e-5), (
            f"ncrops={ncrops}: your loss is {yours.item():.5f}, DINOLoss gives "
            f"{expected.item():.5f}")
        (grad,) = torch.autograd.grad(yours, student)
        assert torch.allclose(grad, expected_grad, atol=1e-6), (
            f"ncrops={ncrops}: the gradients differ")
    print("Correct: your loss and its gradient match dino_tutorial.loss.DINOLoss")


check_exercise(1, check_dino_loss, dino_loss_loop)

# %% [markdown]
# ### Think! 1
#
# 1. Why does the teacher see only the global views, while the student sees all of them?
# 2. A network that outputs the same vector for every image makes every cell of the table equal to the
#    teacher's entropy. Can the student lower the loss below that by any other means than changing its
#    outputs? What is the cheapest way for *both* networks to lower it?
#
# ```{admonition} Answer
# :class: dropdown
# 1. The student must predict, from a small local view, what the teacher says about a large global view:
#    the local-to-global correspondence of multi-crop (chapter 01). If the teacher also saw local views, the
#    targets themselves would come from parts of the image with little context, and the teacher's forward
#    passes would cost more.
# 2. With $H(P_t, P_s) = h(P_t) + D_{KL}(P_t \| P_s)$, the student can only lower the KL term; the teacher's
#    entropy $h(P_t)$ is out of its reach (stop-gradient). But the teacher is a moving average of the student,
#    so over time it follows. The cheapest joint solution is a teacher whose output does not depend on the
#    image at all: either one dimension always wins (entropy 0, loss 0) or every dimension gets $1/K$. Both
#    are *collapse*, and both minimise the loss without learning anything. Sections 3 and 4 show how DINO
#    avoids them.

# %% [markdown]
# ## Section 3: centering
#
# The second operation on the teacher's output is **centering**: before the softmax, a vector $c$ is
# subtracted from the teacher's outputs, $P_t(x) = \mathrm{softmax}\big((g_{\theta_t}(x) - c) / \tau_t\big)$,
# and $c$ is a running mean of the teacher's outputs over the batches (Eq. 4):
#
# $$
# c \leftarrow m\, c + (1 - m)\, \frac{1}{B} \sum_{i=1}^{B} g_{\theta_t}(x_i),
# $$
#
# with $m = 0.9$ and $B$ the teacher outputs of the batch (both global views of every image). A dimension
# that is large for *every* image is large in $c$ too, and subtracting $c$ removes its advantage: centering
# keeps one dimension from dominating across images. It needs only the mean of the batch, so it costs almost
# nothing. It is the opposite of sharpening: centering
# alone pushes the output towards the uniform distribution, sharpening alone towards one dimension; the
# paper balances the two (Section 3.1, "Avoiding collapse").
#
# The figure uses the teacher outputs of the previous section. On the left, the *batch-mean* distribution,
# averaged over all the images, which shows whether a few dimensions win for every image. On the right, how
# many images have each dimension as their most probable one. The centre is the batch mean itself, the
# value that Eq. 4 settles at when the outputs stay the same.

# %%
batch_center = teacher_out.mean(dim=0, keepdim=True)
fig, axes = plt.subplots(1, 2, figsize=(9, 2.9))
for label, c, color in [("no centering, $c = 0$", torch.zeros(1, OUT_DIM), "tab:orange"),
                        ("centred, $c$ = batch mean", batch_center, "tab:green")]:
    p = F.softmax((teacher_out - c) / TEACHER_TEMP, dim=-1)           # (2B, K)
    mean_p = p.mean(0)
    key = "raw" if c.abs().sum() == 0 else "centred"
    axes[0].plot(np.arange(1, OUT_DIM + 1), mean_p.sort(descending=True).values.numpy(),
                 color=color, lw=2,
                 label=f"{label}: largest {100 * mean_p.max():.1f}%, entropy {entropy(mean_p):.2f}")
    winners = torch.bincount(p.argmax(-1), minlength=OUT_DIM).sort(descending=True).values
    axes[1].plot(np.arange(1, OUT_DIM + 1), winners.numpy(), color=color, lw=2,
                 drawstyle="steps-mid",
                 label=f"{label}: {int((winners > 0).sum())} dimensions win")
    glue(f"top_share_{key}", f"{100 * mean_p.max():.1f}", display=False)
    glue(f"winners_{key}", int((winners > 0).sum()), display=False)
axes[0].axhline(1 / OUT_DIM, color="k", lw=0.8, ls=":", label="uniform, 1/K")
axes[0].set(xscale="log", xlabel="output dimension, sorted (rank)",
            ylabel="mean probability over the batch",
            title="Teacher distribution averaged over the batch")
axes[1].set(xlim=(0.5, 80.5), xlabel="output dimension, sorted (rank)", ylabel="number of views",
            title=f"Most probable dimension of each of the {len(teacher_out)} views")
for ax in axes:
    ax.legend(fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# Even a random network has favourite dimensions: without centering, the most popular dimension holds
# {glue:text}`top_share_raw`% of the batch's probability (the uniform share is 1/256, 0.4%) and only
# {glue:text}`winners_raw` dimensions are anyone's first choice. Subtracting the centre brings the largest
# share down to {glue:text}`top_share_centred`% and spreads the first choices over
# {glue:text}`winners_centred` dimensions. During training such favourites can grow into a dimension that
# wins for every image (Section 4); the centre grows with them and cancels them.
#
# ### Coding exercise 2: the loss with its centre
#
# Turn the loss of exercise 1 into the module a training loop calls once per step. `MyDINOLoss(out_dim,
# ncrops, teacher_temp, student_temp, center_momentum)` keeps the centre $c$ as a buffer of shape `(1, K)`,
# starting at zero; its `forward(student_output, teacher_output)` returns the loss with the *current* centre
# (use your `dino_loss_loop`), and only then moves the centre by Eq. 4 with the batch's teacher outputs
# `(2 * B, K)`, the logits of both global views (before any centering or temperature). The update is not part
# of the gradient computation.

# %% tags=["exercise"]
class MyDINOLoss(nn.Module):
    def __init__(self, out_dim: int, ncrops: int, teacher_temp: float = 0.04,
                 student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.ncrops, self.teacher_temp, self.student_temp = ncrops, teacher_temp, student_temp
        self.center_momentum = center_momentum
        #################################################################
        # Fill in the blanks (...), then remove this line.
        raise NotImplementedError("MyDINOLoss still has blanks (...)")
        #################################################################
        self.register_buffer("center", ...)   # (1, K), zeros

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor) -> torch.Tensor:
        loss = ...                             # with the centre of the previous batches
        with torch.no_grad():
            batch_mean = ...                   # (1, K)
            self.center = ...                  # Eq. 4
        return loss


# Uncomment to try your module:
# print(MyDINOLoss(OUT_DIM, n_views)(student_out, teacher_out))

# %% tags=["solution", "hide-cell"]
# Solution to exercise 2
class MyDINOLoss(nn.Module):
    def __init__(self, out_dim: int, ncrops: int, teacher_temp: float = 0.04,
                 student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.ncrops, self.teacher_temp, self.student_temp = ncrops, teacher_temp, student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor) -> torch.Tensor:
        loss = dino_loss_loop(student_output, teacher_output, self.center, self.ncrops,
                              self.teacher_temp, self.student_temp)
        with torch.no_grad():
            batch_mean = teacher_output.mean(dim=0, keepdim=True)
            self.center = (self.center_momentum * self.center
                           + (1 - self.center_momentum) * batch_mean)
        return loss


print(MyDINOLoss(OUT_DIM, n_views)(student_out, teacher_out))


# %%
def check_dino_loss_module(cls):
    """Three successive batches: the same losses, gradients and centres as DINOLoss."""
    generator = torch.Generator().manual_seed(0)
    for momentum, ncrops, k in [(0.9, 4, 16), (0.5, 2, 8), (1.0, 10, 32)]:
        mine = cls(k, ncrops, teacher_temp=0.04, student_temp=0.1, center_momentum=momentum)
        reference = DINOLoss(k, ncrops, warmup_teacher_temp=0.04, teacher_temp=0.04, nepochs=1,
                             center_momentum=momentum)
        assert torch.equal(mine.center, torch.zeros(1, k)), "the centre starts at zero, (1, K)"
        for step in range(3):
            student = torch.randn(ncrops * 6, k, generator=generator, requires_grad=True)
            teacher = torch.randn(2 * 6, k, generator=generator) * (step + 1)
            yours, expected = mine(student, teacher), reference(student, teacher, epoch=0)
            assert torch.allclose(yours, expected, atol=1e-5), (
                f"momentum {momentum}, batch {step}: your loss {yours.item():.5f}, DINOLoss "
                f"{expected.item():.5f} (is the loss computed before the centre moves?)")
            (grad,) = torch.autograd.grad(yours, student)
            (expected_grad,) = torch.autograd.grad(expected, student)
            assert torch.allclose(grad, expected_grad, atol=1e-6), (
                f"momentum {momentum}, batch {step}: the gradients differ")
            assert mine.center.shape == (1, k), (f"the centre should keep its shape (1, K), got "
                                                 f"{tuple(mine.center.shape)}")
            assert not mine.center.requires_grad, "the centre must not be part of the graph"
            assert torch.allclose(mine.center, reference.center, atol=1e-6), (
                f"momentum {momentum}, after batch {step}: your centre differs from DINOLoss's by "
                f"{(mine.center - reference.center).abs().max():.2e}")
    print("Correct: your loss, its gradient and its centre follow DINOLoss over three batches")


check_exercise(2, check_dino_loss_module, MyDINOLoss)

# %% [markdown]
# ## Section 4: two ways to collapse
#
# The paper splits the cross-entropy into the teacher's entropy and a Kullback-Leibler divergence
# (Section 5.3):
#
# $$
# H\big(P_t, P_s\big) = h\big(P_t\big) + D_{KL}\big(P_t \,\|\, P_s\big).
# $$
#
# Both collapses make the KL term zero: when every image gets the same output, the student copies it
# exactly, whatever the view. They differ in the entropy: one dimension dominating gives $h(P_t) \to 0$,
# a uniform output gives $h(P_t) \to \ln K$. Training that learns keeps the KL away from zero, because the
# teacher's output changes from image to image and view to view, and the student cannot predict it exactly.
# Fig. 7 of the paper follows both numbers over training with and without each operation.
#
# ### Coding exercise 3: the two diagnostics
#
# Write `entropy_and_kl(student_output, teacher_output, center, teacher_temp, student_temp)` returning the
# mean entropy of the teacher's (centred, sharpened) distributions over its $2B$ outputs, and the mean of
# $D_{KL}(P_t(x) \| P_s(x'))$ over the same pairs as the loss. Hint: for a pair, the KL is the cross-entropy
# minus the teacher's entropy.

# %% tags=["exercise"]
@torch.no_grad()
def entropy_and_kl(student_output: torch.Tensor, teacher_output: torch.Tensor, center: torch.Tensor,
                   teacher_temp: float = 0.04, student_temp: float = 0.1) -> tuple:
    """(mean teacher entropy, mean KL(P_t || P_s) over the loss's pairs), both floats in nats."""
    #################################################################
    # Fill in the blanks (...), then remove this line.
    raise NotImplementedError("entropy_and_kl still has blanks (...)")
    #################################################################
    ncrops = student_output.shape[0] * 2 // teacher_output.shape[0]
    teacher_views = ...   # 2 tensors (B, K) of probabilities
    student_views = ...   # ncrops tensors (B, K) of log-probabilities
    mean_entropy = ...
    kls = []
    for t, p_t in enumerate(teacher_views):
        for v, log_p_s in enumerate(student_views):
            if v != t:
                kls.append(...)   # batch mean of KL(P_t || P_s) for this pair
    return mean_entropy, sum(kls) / len(kls)


# Uncomment to try your function:
# print([round(value, 4) for value in entropy_and_kl(student_out, teacher_out, center)])

# %% tags=["solution", "hide-cell"]
# Solution to exercise 3
@torch.no_grad()
def entropy_and_kl(student_output: torch.Tensor, teacher_output: torch.Tensor, center: torch.Tensor,
                   teacher_temp: float = 0.04, student_temp: float = 0.1) -> tuple:
    """(mean teacher entropy, mean KL(P_t || P_s) over the loss's pairs), both floats in nats."""
    ncrops = student_output.shape[0] * 2 // teacher_output.shape[0]
    teacher_views = F.softmax((teacher_output - center) / teacher_temp, dim=-1).chunk(2)
    student_views = F.log_softmax(student_output / student_temp, dim=-1).chunk(ncrops)
    mean_entropy = torch.cat([entropy(p) for p in teacher_views]).mean().item()
    kls = []
    for t, p_t in enumerate(teacher_views):
        for v, log_p_s in enumerate(student_views):
            if v != t:
                cross_entropy = -(p_t * log_p_s).sum(-1)
                kls.append((cross_entropy - entropy(p_t)).mean().item())
    return mean_entropy, sum(kls) / len(kls)


print([round(value, 4) for value in entropy_and_kl(student_out, teacher_out, center)])

# %%
def check_entropy_and_kl(fn):
    """Compare with dino_tutorial.loss.collapse_stats on random logits and centres."""
    generator = torch.Generator().manual_seed(1)
    for ncrops, batch, k in [(2, 4, 8), (4, 6, 32), (10, 3, 64)]:
        student = torch.randn(ncrops * batch, k, generator=generator)
        teacher = torch.randn(2 * batch, k, generator=generator)
        center = torch.randn(1, k, generator=generator)
        expected = collapse_stats(student, teacher, center, teacher_temp=0.04, student_temp=0.1)
        h, kl = fn(student, teacher, center, 0.04, 0.1)
        assert abs(h - expected["teacher_entropy"]) < 1e-4, (
            f"ncrops={ncrops}: teacher entropy {h:.5f}, expected {expected['teacher_entropy']:.5f}")
        assert abs(kl - expected["kl"]) < 1e-4, (f"ncrops={ncrops}: KL {kl:.5f}, expected "
                                                 f"{expected['kl']:.5f}")
    print("Correct: your entropy and KL match dino_tutorial.loss.collapse_stats")


check_exercise(3, check_entropy_and_kl, entropy_and_kl)

# %% [markdown]
# ### Three short runs on real images
#
# Now the experiment of Section 5.3, small. Three networks start from the same random weights and see
# exactly the same batches of real views; only the treatment of the teacher's output differs:
#
# | run | centering | teacher temperature $\tau_t$ | expected |
# | --- | --- | --- | --- |
# | (a) DINO | yes, $m = 0.9$ | 0.04 (sharper than the student's 0.1) | learns: entropy between 0 and $\ln K$, KL > 0 |
# | (b) sharpening only | no ($m = 1$ keeps $c$ at its initial zeros) | 0.04 | one dimension dominates: entropy $\to 0$ |
# | (c) centering only | yes, $m = 0.9$ | 0.1, the student's temperature: no sharpening | uniform output: entropy $\to \ln K$ |
#
# The training step is the one of the full method (chapter 06 adds the schedules and the other details):
# the teacher embeds the two global views without gradients, the student embeds all views, `DINOLoss`
# compares them and updates its centre, the optimiser updates the student and `ema_update` moves the
# teacher towards it. Everything is shrunk to run in about a minute on a laptop CPU: a ResNet-18 at 32 and
# 16 pixels, two local views, a head of 256 outputs, {glue:text}`n_steps` steps of
# {glue:text}`batch_size` images. To make a visible difference in so few steps, the optimiser is AdamW
# (the paper's choice for Vision Transformers), and the teacher momentum is 0.94 instead of 0.996 so that
# the teacher follows the student within tens of steps. The views are drawn once, before the runs.

# %%
N_STEPS = 50
BATCH_SIZE = 64 if DEVICE.type == "cuda" else 16
LR, WARMUP_STEPS, TEACHER_MOMENTUM = 1e-3, 10, 0.94
glue("n_steps", N_STEPS, display=False)
glue("batch_size", BATCH_SIZE, display=False)

set_seed(0)
generator = torch.Generator().manual_seed(0)
order = torch.cat([torch.randperm(len(IMAGES), generator=generator)
                   for _ in range(math.ceil(N_STEPS * BATCH_SIZE / len(IMAGES)))])
BATCHES = [make_batch([IMAGES[i] for i in order[s * BATCH_SIZE:(s + 1) * BATCH_SIZE]], augment)
           for s in range(N_STEPS)]
print(f"{N_STEPS} batches of {BATCH_SIZE} images, {len(BATCHES[0])} views each "
      f"({len(order[:N_STEPS * BATCH_SIZE].unique())} different images)")


# %% tags=["nbval-ignore-output"]
def train_run(name: str, teacher_temp: float, center_momentum: float) -> dict:
    """Train a fresh student/teacher pair on BATCHES; returns the diagnostics of every step."""
    set_seed(0)                                        # same initial weights for every run
    student = make_network().to(DEVICE)
    teacher = make_teacher(student)
    dino_loss = DINOLoss(OUT_DIM, ncrops=2 + N_LOCAL, warmup_teacher_temp=teacher_temp,
                         teacher_temp=teacher_temp, nepochs=1, student_temp=STUDENT_TEMP,
                         center_momentum=center_momentum).to(DEVICE)
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.04)
    history = {"loss": [], "teacher_entropy": [], "kl": []}
    for step, crops in enumerate(tqdm(BATCHES, desc=name, disable=QUIET)):
        # linear warmup of the learning rate, then constant
        for group in optimizer.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / WARMUP_STEPS)
        crops = [c.to(DEVICE) for c in crops]
        with torch.no_grad():
            teacher_out = teacher(crops[:2])           # the teacher sees the two global views
        student_out = student(crops)                   # the student sees all views
        stats = (collapse_stats(student_out, teacher_out, dino_loss.center, teacher_temp,
                                STUDENT_TEMP))
        loss = dino_loss(student_out, teacher_out, epoch=0)   # also updates the centre (Eq. 4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema_update(teacher, student, TEACHER_MOMENTUM)
        history["loss"].append(loss.item())
        history["teacher_entropy"].append(stats["teacher_entropy"])
        history["kl"].append(stats["kl"])
    # the final teacher's output on the first batch
    with torch.no_grad():
        teacher_out = teacher([c.to(DEVICE) for c in BATCHES[0][:2]])
        probs = F.softmax((teacher_out - dino_loss.center) / teacher_temp, dim=-1)
    history["mean_distribution"] = probs.mean(0).cpu()
    return history


RUNS = {"(a) DINO: centering + sharpening": dict(teacher_temp=TEACHER_TEMP, center_momentum=0.9),
        "(b) sharpening only": dict(teacher_temp=TEACHER_TEMP, center_momentum=1.0),
        "(c) centering only": dict(teacher_temp=STUDENT_TEMP, center_momentum=0.9)}
start = time.time()
results = {name: train_run(name, **settings) for name, settings in RUNS.items()}
elapsed = time.time() - start
print(f"3 runs of {N_STEPS} steps in {elapsed:.0f} s on {DEVICE}")

# %% tags=["hide-input"]
colors = dict(zip(RUNS, ["tab:blue", "tab:red", "tab:green"]))
fig, axes = plt.subplots(1, 3, figsize=(9, 3.1))
steps = np.arange(1, N_STEPS + 1)
for name, history in results.items():
    axes[0].plot(steps, history["teacher_entropy"], color=colors[name], lw=2, label=name)
    axes[1].plot(steps, history["kl"], color=colors[name], lw=2, label=name)
    axes[2].plot(np.arange(1, OUT_DIM + 1),
                 history["mean_distribution"].sort(descending=True).values.numpy(),
                 color=colors[name], lw=2, label=name)
axes[0].axhline(math.log(OUT_DIM), color="k", ls="--", lw=1)
axes[0].axhline(0, color="k", ls=":", lw=1)
axes[0].text(1, math.log(OUT_DIM) + 0.12, "ln K: uniform", fontsize=9)
axes[0].text(1, 0.15, "0: one dimension", fontsize=9)
axes[0].set(xlabel="training step", ylabel="nats", title="Teacher entropy $h(P_t)$",
            ylim=(-0.2, 6.6))
axes[1].set(xlabel="training step", ylabel="nats", yscale="log",
            title="$D_{KL}(P_t \\| P_s)$, mean over the loss's pairs")
axes[2].axhline(1 / OUT_DIM, color="k", lw=0.8, ls=":")
axes[2].set(xscale="log", yscale="log", ylim=(1e-6, 1.5), xlabel="output dimension, sorted (rank)",
            ylabel="mean probability", title="Final teacher output, averaged over a batch")
# one legend under the three panels, where it hides no curve
fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=9,
           frameon=False)
fig.tight_layout(rect=(0, 0.1, 1, 1))
plt.show()

# %% tags=["hide-input"]
print(f"{'run':<36}{'teacher entropy':>18}{'KL':>10}{'largest mean share':>22}")
for key, (name, history) in zip(["dino", "sharpen", "center"], results.items()):
    h, kl = history["teacher_entropy"][-1], history["kl"][-1]
    share = 100 * history["mean_distribution"].max().item()
    print(f"{name:<36}{h:>18.2f}{kl:>10.3f}{share:>21.1f}%")
    glue(f"final_entropy_{key}", f"{h:.2f}", display=False)
    glue(f"final_kl_{key}", f"{kl:.3f}", display=False)
    glue(f"final_share_{key}", f"{share:.1f}", display=False)
kl_dino = results[next(iter(RUNS))]["kl"][-1]
kl_collapsed = max(r["kl"][-1] for r in list(results.values())[1:])
glue("kl_ratio", f"{kl_dino / kl_collapsed:.0f}", display=False)

# %% [markdown]
# The three runs part within a few dozen steps, as Fig. 7 of the paper describes over many epochs:
#
# - **(b) Sharpening only.** Without a centre, the teacher's largest dimension gets sharpened and the
#   student learns to produce it from every view; the teacher, its moving average, follows. The teacher's
#   entropy falls to {glue:text}`final_entropy_sharpen` nats and one dimension holds
#   {glue:text}`final_share_sharpen`% of the mass for every image: the network maps every image to the same
#   one-hot output.
# - **(c) Centering only.** Subtracting the centre removes whatever the images have in common, and without
#   a temperature below the student's nothing makes any dimension stand out: the entropy climbs to
#   {glue:text}`final_entropy_center` nats, next to $\ln K$ = {glue:text}`ln_k`. Every image gets the
#   uniform distribution.
# - **(a) DINO.** With both, the entropy stays in between ({glue:text}`final_entropy_dino` nats after
#   {glue:text}`n_steps` steps) and the KL stays at {glue:text}`final_kl_dino` nats, about
#   {glue:text}`kl_ratio` times the larger KL of the two collapsed runs (collapsed: {glue:text}`final_kl_sharpen`
#   and {glue:text}`final_kl_center`): the teacher still says different things about different views, so
#   there is something left to learn. It is not a finished picture either: one dimension already holds
#   {glue:text}`final_share_dino`% of the batch's mass, because the centre (a running mean with $m = 0.9$)
#   lags behind a network that changes fast. The KL, not the entropy, is what separates (a) from (b).
#
# In both collapsed runs the KL goes to zero: student and teacher agree perfectly, because there is
# nothing to disagree about. That is why a low loss alone says nothing about a DINO run, and why the trainer
# of chapter 06 logs the teacher's entropy and the KL at every step. A few dozen steps are far too few to
# learn good features, and the DINO run's KL is still falling; whether it settles, as in the paper, or
# drifts towards one of the collapses depends on the recipe (learning rate, teacher momentum and
# temperature, batch size), which is the subject of chapter 06.
#
# ### Think! 2
#
# 1. In run (b) the teacher temperature is 0.04 and the centre stays at zero. Would a *higher* centre
#    momentum than 0.9, say 0.999, behave more like (a) or like (b) in a short run?
# 2. The paper's Algorithm 1 updates the centre with the teacher outputs of the current batch *after*
#    computing the loss. What would go wrong, for a batch of size 1, if the loss used a centre equal to the
#    current batch's mean?
#
# ```{admonition} Answer
# :class: dropdown
# 1. More like (b) at first: with $m = 0.999$ the centre moves only 0.1% of the way to the batch mean per
#    step, so for hundreds of steps it is nearly zero and does not cancel a dominating dimension. Over a
#    long run it does catch up, so the momentum sets how fast centering reacts, not whether it acts.
# 2. With one image, subtracting the mean of that single output leaves zero in every dimension: the teacher
#    distribution would be uniform whatever the image, and the loss would teach nothing. A centre averaged
#    over many past batches removes only what the images have in common, so each image keeps what is
#    particular to it.

# %% [markdown]
# ## Summary
#
# - Student and teacher outputs become distributions by a softmax with a temperature (Eq. 1); the teacher's
#   is lower (0.04 against 0.1), which **sharpens** its distribution.
# - The loss is a cross-entropy between the teacher's distribution for each global view and the student's for
#   every other view (Eq. 2-3): $2|V| - 2$ pairs, averaged, with no gradient through the teacher.
# - **Centering** subtracts a running mean of the teacher's outputs (Eq. 4) so that no dimension wins for
#   every image.
# - Alone, each operation collapses the network (Section 5.3, Fig. 7): sharpening to one dimension
#   (entropy → 0), centering to the uniform distribution (entropy → $\ln K$); in both the KL between teacher
#   and student goes to 0. Together they balance, and the KL stays positive.
#
# **Next.** {doc}`05_knn_evaluation` asks how good the features of a trained backbone are, without training
# anything more: the weighted k-nearest-neighbour classifier that the paper reports next to linear probing.
#
# **Further reading.**
# - Caron et al. 2021, *Emerging Properties in Self-Supervised Vision Transformers* (arXiv 2104.14294):
#   Section 3.1 (Eq. 1-4, "Avoiding collapse", Algorithm 1), Section 5.3 and Fig. 7 (the collapse study).
# - Hinton, Vinyals and Dean 2015, *Distilling the Knowledge in a Neural Network* (arXiv 1503.02531): the
#   softmax temperature in knowledge distillation, which DINO's loss takes over without labels.
# - Caron et al. 2020, *Unsupervised Learning of Visual Features by Contrasting Cluster Assignments* (SwAV,
#   arXiv 2006.09882), which avoids collapse with an explicit equipartition constraint instead of a centre.
