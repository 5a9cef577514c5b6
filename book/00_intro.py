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
# # DINO on ResNet-50: self-distillation with no labels
#
# This course rebuilds DINO (Caron et al. 2021, *Emerging Properties in Self-Supervised Vision
# Transformers*, [arXiv 2104.14294](https://arxiv.org/abs/2104.14294)) piece by piece on a ResNet-50
# backbone, and ends with a full ImageNet training run. Every chapter is a notebook that runs top to bottom
# on a laptop CPU or a free Colab GPU; every piece you write is checked against a small tested package,
# `dino_tutorial`, which the later chapters import.
#
# This page is the paper in one page, the figure to keep in mind, and how to use the course.

# %% [markdown]
# ## The paper in one page
#
# **The question.** Can a network learn useful image features from photographs alone, with no labels and
# no negative pairs? DINO answers with *self-distillation*: a **student** network is trained to predict the
# output of a **teacher** network, and the teacher is nothing but a slowly moving average of the student
# itself. Nobody ever tells either network what is in the picture (Section 3.1 of the paper).
#
# **Two networks, one architecture.** Student $g_{\theta_s}$ and teacher $g_{\theta_t}$ are the same
# network, a backbone (here ResNet-50, whose pooled output is a 2048-d vector) followed by a projection head
# that ends in $K$ output dimensions ($K = 65536$ by default). Each output is turned into a probability
# distribution over the $K$ dimensions with a temperature softmax (Eq. 1 of the paper):
#
# $$
# P_s(x)^{(i)} = \frac{\exp\left(g_{\theta_s}(x)^{(i)} / \tau_s\right)}
#                     {\sum_{k=1}^{K} \exp\left(g_{\theta_s}(x)^{(k)} / \tau_s\right)},
# $$
#
# and $P_t$ likewise with the teacher's temperature $\tau_t$.
#
# **The objective.** The student learns to match the teacher by minimising the cross-entropy between the
# two distributions (Eq. 2):
#
# $$
# \min_{\theta_s} H\big(P_t(x), P_s(x)\big), \qquad H(a, b) = -\sum_{i=1}^{K} a^{(i)} \log b^{(i)}.
# $$
#
# The two networks never see the same view. From each image the augmentation makes two high-resolution
# **global views** and several low-resolution **local views** (multi-crop). The teacher only sees the
# global views; the student sees them all and must predict the teacher's output for one global view from
# every *other* view (Eq. 3), which asks it to recognise the whole from a part.
#
# **The teacher.** Gradients flow only into the student (a *stop-gradient*, "sg", on the teacher). After
# each step the teacher's weights move towards the student's with an exponential moving average,
# $\theta_t \leftarrow \lambda\,\theta_t + (1 - \lambda)\,\theta_s$, with $\lambda$ following a cosine
# schedule from 0.996 to 1 during training.
#
# **Avoiding collapse.** A network that outputs the same thing for every image would match its teacher
# perfectly and learn nothing. DINO prevents this with two opposing operations on the teacher's output only:
# **centering**, subtracting a running mean $c$ of the teacher outputs,
# $c \leftarrow m\,c + (1 - m)\,\frac{1}{B}\sum_{i=1}^{B} g_{\theta_t}(x_i)$ (Eq. 4), which stops one
# dimension from dominating; and **sharpening**, a low teacher temperature ($\tau_t$ between 0.04 and
# 0.07 against $\tau_s = 0.1$; 0.04 in the ResNet-50 recipe), which stops the output from becoming
# uniform.
#
# **What comes out.** After training, the head is thrown away and the backbone's features are evaluated
# with a frozen-feature classifier: a weighted $k$-nearest-neighbour vote ($k = 20$) or a linear layer
# (Section 3.2). The paper is mostly about Vision Transformers, but it also trains a ResNet-50 with the same
# method. Table 2 reports, on ImageNet:
#
# | backbone | method | linear | $k$-NN |
# | --- | --- | --- | --- |
# | ResNet-50 | supervised | 79.3 | 79.3 |
# | ResNet-50 | DINO | 75.3 | 67.5 |
#
# Those two DINO numbers, 75.3% linear and 67.5% $k$-NN top-1, are what this course works towards.

# %% [markdown]
# ## The picture to keep in mind
#
# The figure below is the method in one diagram. The crops are real views of one photograph: the two
# global views (blue, orange) cover most of the image, the local views (green) small parts of it.

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from PIL import Image


def load_photo() -> Image.Image:
    """A full-size photograph for the diagram; a synthetic one without data."""
    try:
        from dino_tutorial.data import sample_image_paths

        paths = sample_image_paths()
        path = next((p for p in paths if "zebra" in p.name), paths[0])
        return Image.open(path).convert("RGB")
    except Exception:  # no package or no data: the diagram still renders
        yy, xx = np.mgrid[0:300, 0:400] / 300.0
        sky = np.stack([0.4 + 0.3 * yy, 0.6 + 0.2 * yy, 0.9 - 0.2 * yy], axis=-1)
        hill = (yy > 0.6 + 0.15 * np.sin(3 * xx))[..., None]
        picture = np.where(hill, np.array([0.3, 0.6, 0.25]), sky)
        return Image.fromarray((255 * picture).astype(np.uint8))


photo = load_photo()
W, H = photo.size
# Fixed crop boxes, as fractions (left, top, width, height) of the photo.
GLOBAL_BOXES = [(0.02, 0.05, 0.80, 0.90), (0.25, 0.10, 0.72, 0.85)]
LOCAL_BOXES = [(0.10, 0.15, 0.28, 0.30), (0.55, 0.20, 0.25, 0.28),
               (0.35, 0.55, 0.30, 0.35), (0.68, 0.60, 0.24, 0.30)]
GLOBAL_COLOURS = ["tab:blue", "tab:orange"]
LOCAL_COLOUR = "tab:green"


def crop(box, size):
    left, top, width, height = box
    corners = (left * W, top * H, (left + width) * W, (top + height) * H)
    cut = photo.crop(tuple(int(c) for c in corners))
    return cut.resize((size, size), Image.BICUBIC)


def box(ax, xy, wh, text, colour, fontsize=10):
    ax.add_patch(FancyBboxPatch(xy, *wh, boxstyle="round,pad=0.08", fc=colour,
                                ec="0.2", lw=1.2))
    ax.text(xy[0] + wh[0] / 2, xy[1] + wh[1] / 2, text, ha="center", va="center",
            fontsize=fontsize)


def arrow(ax, start, end, colour="0.2", style="-|>", **kwargs):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=14,
                                 color=colour, lw=1.5, **kwargs))


def thumbnail(ax, image, x, y, size, colour):
    ax.imshow(image, extent=(x, x + size, y, y + size), zorder=3)
    ax.add_patch(Rectangle((x, y), size, size, fill=False, ec=colour, lw=2.5,
                           zorder=4))


fig, ax = plt.subplots(figsize=(9, 4.8))
ax.set_xlim(0, 17)
ax.set_ylim(0, 9)
ax.set_aspect("equal")
ax.axis("off")

# The photograph x with the crop boxes on it.
px, py, pw = 0.1, 3.1, 3.3
ph = pw * H / W
ax.imshow(photo, extent=(px, px + pw, py, py + ph), zorder=2)

def outline(b, **style):
    """Draw box b (fractions of the photo) on the photo drawn at (px, py)."""
    corner = (px + b[0] * pw, py + (1 - b[1] - b[3]) * ph)
    ax.add_patch(Rectangle(corner, b[2] * pw, b[3] * ph, fill=False, zorder=3,
                           **style))


for b, c in zip(GLOBAL_BOXES, GLOBAL_COLOURS):
    outline(b, ec=c, lw=2)
for b in LOCAL_BOXES:
    outline(b, ec=LOCAL_COLOUR, lw=1.5, ls="--")
ax.text(px + pw / 2, py - 0.35, "image $x$ (no label)", ha="center", va="top",
        fontsize=11)

# Student branch (top): every view.
g_size, l_size = 1.05, 0.6
ax.text(4.0, 8.65, "all views: 2 global (224 px) + local (96 px)", va="center")
for i, (b, c) in enumerate(zip(GLOBAL_BOXES, GLOBAL_COLOURS)):
    thumbnail(ax, crop(b, 224), 4.0 + i * 1.2, 7.05, g_size, c)
for i, b in enumerate(LOCAL_BOXES):
    x, y = 6.5 + (i % 2) * 0.7, 7.5 - (i // 2) * 0.7
    thumbnail(ax, crop(b, 96), x, y, l_size, LOCAL_COLOUR)
ax.text(7.05, 6.55, "(8 local views in DINO)", ha="center", fontsize=9,
        color="0.3")

# Teacher branch (bottom): global views only.
ax.text(4.0, 0.35, "global views only", va="center")
for i, (b, c) in enumerate(zip(GLOBAL_BOXES, GLOBAL_COLOURS)):
    thumbnail(ax, crop(b, 224), 4.0 + i * 1.2, 0.8, g_size, c)

arrow(ax, (px + pw, py + ph * 0.75), (3.9, 7.5))
arrow(ax, (px + pw, py + ph * 0.25), (3.9, 1.4))

# Networks and their outputs.
box(ax, (8.2, 7.0), (2.3, 1.2), "student $g_{\\theta_s}$\nResNet-50 + head",
    "#cfe3f7")
box(ax, (8.2, 0.75), (2.3, 1.2), "teacher $g_{\\theta_t}$\nResNet-50 + head",
    "#fde2c8")
arrow(ax, (7.45, 7.6), (8.1, 7.6))
arrow(ax, (6.45, 1.35), (8.1, 1.35))

box(ax, (10.9, 7.0), (2.0, 1.2), "softmax\n$\\cdot\\,/\\,\\tau_s$,  $\\tau_s = 0.1$",
    "#eeeeee", 9.5)
box(ax, (10.9, 0.75), (1.4, 1.2), "centering\n$g - c$", "#eeeeee", 9.5)
box(ax, (12.75, 0.75), (1.75, 1.2),
    "softmax\n$\\cdot\\,/\\,\\tau_t$,  $\\tau_t = 0.04$", "#eeeeee", 9.5)
arrow(ax, (10.6, 7.6), (10.8, 7.6))
arrow(ax, (10.6, 1.35), (10.8, 1.35))
arrow(ax, (12.4, 1.35), (12.65, 1.35))
ax.text(11.6, 0.3,
        "$c \\leftarrow m\\,c + (1 - m)\\,\\mathrm{mean}_{\\mathrm{batch}}\\, g_{\\theta_t}(x)$",
        fontsize=9, ha="center", va="center")

# Loss: the teacher's output for a global view against the student's for the others.
box(ax, (14.3, 4.05), (2.6, 1.3), "loss\n$\\sum_{x \\neq x'} H(P_t(x), P_s(x'))$",
    "#f7d4d4", 10)
arrow(ax, (13.0, 7.6), (15.6, 5.45), connectionstyle="arc3,rad=-0.25")
ax.text(14.9, 6.9, "$P_s$", fontsize=12)
arrow(ax, (14.6, 1.35), (15.6, 3.95), connectionstyle="arc3,rad=0.2")
ax.text(15.55, 2.3, "$P_t$", fontsize=12)
ax.text(14.55, 2.45, "sg", fontsize=11, color="tab:red", fontweight="bold",
        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="tab:red"))

# Gradients into the student only; EMA from student to teacher.
arrow(ax, (14.2, 5.0), (10.6, 7.0), colour="tab:red", ls="--",
      connectionstyle="arc3,rad=0.2")
ax.text(11.6, 5.75, "gradients\n(student only)", fontsize=9, color="tab:red",
        ha="center")
arrow(ax, (9.35, 6.9), (9.35, 2.05), colour="tab:purple", ls="--")
ema = "EMA\n$\\theta_t \\leftarrow \\lambda\\theta_t + (1 - \\lambda)\\theta_s$"
ax.text(9.5, 4.5, ema + "\n$\\lambda$: 0.996 $\\to$ 1", fontsize=9,
        color="tab:purple", va="center")

ax.set_title("DINO: from every view, the student learns to predict the teacher's "
             "output for a different global view", fontsize=11.5)
fig.tight_layout()
plt.show()

# %% [markdown]
# The student (top) sees every view; the teacher (bottom) sees the global views only, its output is
# centred and sharpened, and no gradient flows through it ("sg"). The loss compares the teacher's
# distribution for each global view with the student's distribution for every *other* view. Only the
# student is trained by gradient descent; the teacher follows it by an exponential moving average.

# %% [markdown]
# ## From Vision Transformers to ResNet-50
#
# DINO is described for Vision Transformers, but nothing in the method needs one: it asks for a backbone
# that maps an image of any size to one vector. A ResNet-50 does, with its global average pooling, and its
# 2048-d pooled feature takes the place of the ViT's class token. The authors' recipe for ResNet-50
# (the README of their code, github.com/facebookresearch/dino) changes a handful of settings from the ViT
# defaults:
#
# | setting | ViT default | ResNet-50 |
# | --- | --- | --- |
# | backbone output | class token (384-d for ViT-S/16) | pooled feature, 2048-d |
# | optimiser | AdamW | SGD with momentum |
# | learning rate (per 256 images) | 0.0005 | 0.03 |
# | weight decay | 0.04 $\to$ 0.4 (cosine) | $10^{-4}$, constant |
# | global crop scale | (0.4, 1) | (0.14, 1) |
# | local crop scale | (0.05, 0.4) | (0.05, 0.14) |
#
# Everything else stays: 2 global views of 224 px and 8 local views of 96 px, a projection head with a
# weight-normalised last layer of $K = 65536$ dimensions, teacher temperature 0.04, teacher momentum 0.996,
# gradient clipping, 10 warm-up epochs and a frozen last layer during the first epoch. Because ResNets use
# BatchNorm, the networks are trained with synchronised BatchNorm across GPUs. The published ResNet-50
# checkpoint was trained longer (800 epochs) with a much larger batch than the README command; chapter 08
# runs the README recipe (the package's `rn50_imagenet` preset) and chapter 09 compares the result with
# Table 2.

# %% [markdown]
# ## How to use this course
#
# **Read it.** Every chapter in this book shows its executed outputs (figures, tables, numbers), so you can
# learn the method without running anything.
#
# **Run it in Colab.** Each chapter starts with an *Open in Colab* badge (or use the rocket button at the
# top of the page). The first code cell installs the `dino_tutorial` package from the repository when it is
# missing; pick a GPU runtime to make the experiments larger and faster.
#
# **Run it locally in JupyterLab.** From a clone of the repository:
#
# ```bash
# pip install -e ".[book,test]"
# export DINO_DATA=/path/to/data   # optional, where the images are (default: data/)
# jupyter lab book/
# ```
#
# The chapters that need images fetch Imagenette with torchvision when `DINO_DATA` holds no copy.
# Each chapter runs on a laptop CPU in a few minutes. Reading the chapters carefully and doing their
# exercises takes about ten and a half hours in all; each chapter states its own time, counted as its prose
# at about 110 words a minute, its code at 15 lines a minute and 12 minutes per exercise.
#
# **Check it.** The chapters are tested like code: `pytest --nbval` executes every notebook and compares
# its outputs with the stored ones, and the package has its own unit tests.
#
# ```bash
# pytest tests/                              # the package and the book's structure
# pytest --nbval --nbval-current-env book/   # run every chapter, compare outputs
# jupyter-book build .                       # the book, in _build/html
# ```
#
# **Train it for real.** The full ImageNet run, {doc}`08_full_training`, is a notebook with a `parameters`
# cell, executed with [papermill](https://papermill.readthedocs.io): tiny parameters in CI, the real ones on
# GPUs. From the repository root:
#
# ```bash
# papermill -k python3 book/08_full_training.ipynb runs/rn50_imagenet.ipynb \
#     -p data_path /data/imagenet -p output_dir runs/rn50_imagenet
# ```
#
# **Exercises.** Every chapter asks you to write the central pieces yourself. A coding exercise is a cell
# with `...` blanks; until you fill them in, its function raises `NotImplementedError` when called, and the
# commented line at the end of the cell tries it once you uncomment it. The check cell that follows
# compares your function with the package's reference and says in one line whether it is right, or that
# the exercise is not done yet, so that "Run all" goes through either way. In the book the solution follows
# in a collapsed cell; the notebooks under `student/` leave it out and link to it. *Think!* questions have
# their answers in collapsed boxes: try before you open them.

# %% [markdown]
# ## Chapter map
#
# | chapter | you learn | package module |
# | --- | --- | --- |
# | {doc}`01 Multi-crop <01_multi_crop>` | global and local views, the exact augmentation recipe, what each transform is for | `augment` |
# | {doc}`02 Backbone and head <02_backbone_and_head>` | ResNet-50 as a 2048-d feature extractor, the projection head, the weight-normalised last layer | `model` |
# | {doc}`03 EMA teacher <03_ema_teacher>` | the momentum teacher, its cosine schedule, the teacher as an ensemble | `teacher` |
# | {doc}`04 The DINO loss <04_dino_loss>` | cross-entropy across views, centering and sharpening, what collapse looks like | `loss` |
# | {doc}`05 k-NN evaluation <05_knn_evaluation>` | frozen features, the weighted $k$-NN classifier, retrieval | `knn` |
# | 06 Training loop | schedules, clipping, freezing the last layer, DINO from a blank cell, the committed runs | `schedules`, `train` |
# | 07 Emerging properties | what a DINO ResNet learns: feature maps, retrieval, masks against human masks | `analysis` |
# | {doc}`08 Full ImageNet training <08_full_training>` | the papermill run on one or many GPUs, resuming, logs, final $k$-NN | `train` |
# | {doc}`09 Results <09_results>` | what was reproduced, against the paper's Table 2 | - |
# | {doc}`10 Mixed precision <10_mixed_precision>` (reference) | why fp16 needs a gradient scaler, on a real gradient | `train` |
# | {doc}`11 Class evidence <11_class_evidence>` (reference) | where a feature map's class evidence sits, against controls | `analysis` |
#
# Start with {doc}`01_multi_crop`.
