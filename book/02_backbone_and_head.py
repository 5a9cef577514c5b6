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
# # 02 Backbone and head: from views to K-dimensional outputs
#
# *A ResNet-50 turns every view into a 2048-d feature; a projection head turns that feature into 65,536
# numbers whose softmax the student and the teacher compare. This chapter builds both, and the wrapper that
# feeds them ten views of two sizes at once.*
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/02_backbone_and_head.ipynb)
#
# **Estimated time:** 70 minutes.

# %% [markdown]
# ## Tutorial objectives
#
# - Use a ResNet-50 as a feature extractor: follow a real photograph through its stages down to the 2048-d
#   pooled feature that k-NN and linear evaluation use.
# - Build the DINO projection head: a 3-layer MLP with GELU, an L2-normalised 256-d bottleneck and a
#   weight-normalised last layer with $K = 65536$ outputs, and count where its parameters are.
# - Understand why the last layer is weight-normalised and what `norm_last_layer` changes: with the norm fixed
#   to 1, every output is a cosine similarity, bounded by 1 before the temperature.
# - Batch the views by resolution, so that the backbone runs once per image size instead of once per view.

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
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from torch import nn

from dino_tutorial.augment import MultiCropAugmentation, denormalize, eval_transform
from dino_tutorial.data import load_rgb, resolve_data_root, sample_image_paths
from dino_tutorial.model import DINOHead, MultiCropWrapper, build_backbone
from dino_tutorial.notebook import check_exercise, glue, setup
from dino_tutorial.train import set_seed

DEVICE = setup(seed=0)
print(f"device: {DEVICE}")


def count(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def show(view: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) view as an (H, W, 3) array in [0, 1] for imshow."""
    return denormalize(view).permute(1, 2, 0).numpy()


# %% tags=["hide-input"]
# The data: full-size photographs (imagenet-samples), else Imagenette's validation images.
try:
    PHOTO_PATHS = sample_image_paths()
except FileNotFoundError as err:
    print(f"This chapter needs photographs: set DINO_DATA to a folder with imagenet-samples/ or "
          f"imagenette-mini/, or run online so that Imagenette is downloaded into "
          f"{resolve_data_root()} ({err})")
    raise SystemExit(1)


def pick(paths, keywords, n):
    """The photos whose names contain `keywords` (one each), else simply the first n."""
    chosen = ([next(p for p in paths if word in p.name) for word in keywords
               if any(word in p.name for p in paths)])
    return chosen if len(chosen) == n else paths[:n]


PHOTOS = [load_rgb(p) for p in pick(PHOTO_PATHS, ["zebra", "steam_locomotive"], 2)]
print(f"{len(PHOTO_PATHS)} photos found; the figures use {len(PHOTOS)} of sizes "
      f"{[p.size for p in PHOTOS]}")

# %% [markdown]
# ## Section 1: ResNet-50 as a 2048-d feature extractor
#
# DINO trains a network $g = h \circ f$: a **backbone** $f$ and a **projection head** $h$ (Section 3.1 of the
# paper, "Network architecture"). The student $g_{\theta_s}$ and the teacher $g_{\theta_t}$ share this
# architecture. In this course $f$ is a ResNet-50 (He et al. 2016), the convolutional network of the paper's
# Table 2. The features that DINO is judged on, by the k-NN and linear classifiers, are the outputs of $f$;
# the head is used only during training and thrown away afterwards.
#
# `build_backbone("resnet50")` returns torchvision's ResNet-50 with random weights and its 1000-way classifier
# replaced by the identity, together with its feature dimension. Nothing is pretrained: DINO learns every
# weight from unlabelled images.

# %%
backbone, feature_dim = build_backbone("resnet50")
backbone.eval()
print(f"feature dimension: {feature_dim}, parameters: {count(backbone) / 1e6:.2f} M")
print(f"the classifier is gone: backbone.fc = {backbone.fc}")

# %% [markdown]
# A ResNet-50 is a stem (a 7 × 7 convolution with stride 2 and a max-pool, together a factor 4 smaller) and four
# stages of bottleneck blocks; each stage after the first halves the resolution and the last one has 2048
# channels. Global average pooling then turns the final map into one 2048-d vector. The cell below runs a
# photograph through the stages one at a time and prints what comes out of each.

# %%
x = eval_transform(224)(PHOTOS[0]).unsqueeze(0)          # (1, 3, 224, 224), centre crop, normalised
stages = {
    "stem (conv 7x7/2, BN, ReLU, max-pool)": nn.Sequential(backbone.conv1, backbone.bn1,
                                                           backbone.relu,
                                                           backbone.maxpool),
    "layer1 (3 bottleneck blocks)": backbone.layer1,
    "layer2 (4 blocks)": backbone.layer2,
    "layer3 (6 blocks)": backbone.layer3,
    "layer4 (3 blocks)": backbone.layer4,
    "global average pool + flatten": nn.Sequential(backbone.avgpool, nn.Flatten()),
}
rows = ["| stage | output shape | stride | parameters |", "| --- | --- | --- | ---: |",
        f"| input | {tuple(x.shape)} | 1 | |"]
with torch.no_grad():
    out = x
    for name, module in stages.items():
        out = module(out)
        stride = f"{224 // out.shape[-1]}" if out.ndim == 4 else "-"
        rows.append(f"| {name} | {tuple(out.shape)} | {stride} | {count(module):,} |")
    direct = backbone(x)
display(Markdown("\n".join(rows)))
print("stage by stage equals backbone(x):", torch.allclose(out, direct, atol=1e-5))

# %% [markdown]
# Each stage trades resolution for channels: 224 × 224 pixels with 3 colours become a 7 × 7 grid of
# 2048-d vectors, each of which sees a large part of the image. The figure shows, for two photographs, the
# most varying channel of each stage's output. The weights are random here, so the maps respond to edges,
# contrast and colour, not yet to objects; chapter 07 (emerging properties) shows what a
# trained DINO ResNet-50 produces.

# %% tags=["hide-input"]
stage_names = ["layer1", "layer2", "layer3", "layer4"]
fig, axes = plt.subplots(len(PHOTOS), 5, figsize=(9, 3.8))
for row, photo in enumerate(PHOTOS):
    image = eval_transform(224)(photo).unsqueeze(0)
    with torch.no_grad():
        out = stages["stem (conv 7x7/2, BN, ReLU, max-pool)"](image)
        axes[row, 0].imshow(show(image[0]))
        axes[row, 0].set_title("input, 224 px" if row == 0 else "")
        for col, name in enumerate(stage_names, start=1):
            out = getattr(backbone, name)(out)
            fmap = out[0]
            # the channel that varies most over the map
            c = int(fmap.flatten(1).std(dim=1).argmax())
            axes[row, col].imshow(fmap[c].numpy(), cmap="magma")
            axes[row, col].set_title(f"{name}: {fmap.shape[-1]} x {fmap.shape[-1]}, channel {c}",
                                     fontsize=9)
for ax in axes.flat:
    ax.axis("off")
fig.suptitle("One channel of each stage's output, randomly initialised ResNet-50", y=1.0)
plt.tight_layout()
plt.show()

# %% [markdown]
# Global average pooling is also what lets one backbone take views of any size. A 96 × 96 local view gives a
# 3 × 3 map instead of 7 × 7, and the average of either is a 2048-d vector:

# %%
with torch.no_grad():
    for size in (224, 96):
        views = torch.randn(2, 3, size, size)
        last_map = nn.Sequential(*list(backbone.children())[:-2])(views)
        print(f"{size:3d} px views: layer4 map {tuple(last_map.shape)} -> feature "
              f"{tuple(backbone(views).shape)}")

# %% [markdown]
# ### Think! 1
#
# A Vision Transformer, the paper's main backbone, cuts an image into 16 × 16 patches and adds a learnt
# position embedding to each. Why does feeding it 96 px local views need an extra step that a ResNet does
# not need?
#
# ```{admonition} Answer
# :class: dropdown
# A ViT's position embedding is a table with one entry per patch position of the training resolution
# (14 × 14 for 224 px). A 96 px view has 6 × 6 patches, so the table must be resized (the authors' code
# interpolates it). A ResNet has no such table: its convolutions slide over any grid, and global average
# pooling reduces a map of any size to one vector.
# ```

# %% [markdown]
# ## Section 2: the DINO projection head
#
# The head $h$ maps a 2048-d feature to $K$ outputs. Section 3.1 of the paper describes it: a 3-layer MLP with
# hidden dimension 2048, then $\ell_2$ normalisation, then a weight-normalised linear layer to $K$ dimensions.
# The MLP ends in a **bottleneck** of 256 dimensions, which is what gets normalised, and it uses GELU
# activations and no batch normalisation (the paper keeps its ViT system free of BN, heads included, and the
# authors' code uses the same BN-free head for ResNet-50):
#
# $$
# h(y) = W\,\frac{u}{\lVert u \rVert_2},\qquad u = \mathrm{MLP}(y) \in \mathbb{R}^{256},\qquad
# W = \Big[g_k\,\frac{v_k}{\lVert v_k \rVert_2}\Big]_{k=1..K} \in \mathbb{R}^{K \times 256}.
# $$
#
# The package's `DINOHead(in_dim, out_dim=65536)` builds it. The table below lists its layers for the
# ResNet-50 recipe.

# %%
head = DINOHead(feature_dim, out_dim=65536)
print(head)

# %% tags=["hide-input"]
rows = (["| part | layer | weight shape | parameters | trained by SGD |",
         "| --- | --- | --- | ---: | --- |"])
for name, p in head.named_parameters():
    part = "last layer" if name.startswith("last_layer") else "MLP"
    rows.append(f"| {part} | `{name}` | {tuple(p.shape)} | {p.numel():,} | "
                f"{'yes' if p.requires_grad else 'no (fixed at 1)'} |")
head_params, backbone_params = count(head), count(backbone)
last_params = count(head.last_layer)
rows.append(f"| **head** | | | **{head_params:,}** | |")
rows.append(f"| **backbone** (ResNet-50) | | | **{backbone_params:,}** | |")
display(Markdown("\n".join(rows)))
glue("head_millions", f"{head_params / 1e6:.1f}", display=False)
glue("backbone_millions", f"{backbone_params / 1e6:.1f}", display=False)
glue("last_layer_share", f"{100 * last_params / head_params:.0f}", display=False)
# a last layer fed by 2048-d
glue("wide_last_layer_millions", f"{2048 * 65536 / 1e6:.0f}", display=False)
print(f"head {head_params / 1e6:.1f} M, backbone {backbone_params / 1e6:.1f} M, "
      f"last layer {100 * last_params / head_params:.0f}% of the head")

# %% [markdown]
# The head, with {glue:text}`head_millions` million parameters, is *larger* than the ResNet-50 it sits on
# ({glue:text}`backbone_millions` million), and {glue:text}`last_layer_share`% of it is the last layer: one
# 256-d vector $v_k$ for each of the 65,536 outputs. The bottleneck keeps this layer affordable: fed by the
# 2048-d hidden width instead of 256, it would hold {glue:text}`wide_last_layer_millions` million parameters.
# The last layer has no bias.

# %% [markdown]
# ### Coding exercise 1: the DINO head
#
# Write the head of the figure: the MLP (three linear layers, GELU between them), the $\ell_2$ normalisation
# of the 256-d bottleneck, and the weight-normalised last layer. Weight normalisation (Salimans and Kingma
# 2016) writes each row of a weight matrix as a direction times a length, $w_k = g_k\, v_k / \lVert v_k
# \rVert$, and learns $v_k$ and $g_k$ instead of $w_k$: write its forward pass in `MyWeightNormLinear`, then
# `MyDINOHead` with the same parameter names as the package's head (`mlp` a `Sequential` whose linear layers sit
# at indices 0, 2 and 4, and `last_layer` holding `weight_v` and `weight_g`), so that the check can copy the
# package head's weights into yours.
#
# `MyWeightNormLinear` starts `weight_v` as the authors' code does: their last layer is created after the MLP's
# std-0.02 initialisation, so it keeps `nn.Linear`'s default, uniform in $\pm 1/\sqrt{256}$ (rows of length
# about $\sqrt{1/3} = 0.58$). The forward pass ignores that length, but training does not: an SGD step turns each
# row $v_k$ by an angle proportional to $1 / \|v_k\|^2$, so rows drawn with std 0.02 (length 0.32) would turn
# about 3.3 times as far per step.

# %% tags=["exercise"]
class MyWeightNormLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        # nn.Linear's default initialisation
        bound = 1 / math.sqrt(in_dim)
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim).uniform_(-bound, bound))
        # norm_last_layer=True
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, d) -> (B, K) outputs u @ W.T with rows W_k = g_k * v_k / ||v_k||."""
        #################################################################
        # Fill in the blanks (...), then remove this line.
        raise NotImplementedError("MyWeightNormLinear still has blanks (...)")
        #################################################################
        weight = ...  # (K, d): each row of weight_v scaled to length weight_g
        return ...


class MyDINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256):
        super().__init__()
        #################################################################
        # Fill in the blanks (...), then remove this line.
        raise NotImplementedError("MyDINOHead still has blanks (...)")
        #################################################################
        self.mlp = nn.Sequential(...)  # Linear, GELU, Linear, GELU, Linear (to the bottleneck)
        self.last_layer = MyWeightNormLinear(..., ...)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        u = ...  # (B, bottleneck_dim), each row of unit length
        return ...


# %% tags=["solution", "hide-cell"]
# Solution to exercise 1
class MyWeightNormLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        # nn.Linear's default initialisation
        bound = 1 / math.sqrt(in_dim)
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim).uniform_(-bound, bound))
        # norm_last_layer=True
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, d) -> (B, K) outputs u @ W.T with rows W_k = g_k * v_k / ||v_k||."""
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return u @ weight.T


class MyDINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        self.last_layer = MyWeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        u = F.normalize(self.mlp(y), dim=-1)
        return self.last_layer(u)


# %%
def check_head(cls):
    set_seed(0)
    ref = DINOHead(feature_dim, out_dim=65536)
    mine = cls(feature_dim, out_dim=65536)
    ref_norm = ref.last_layer.weight_v.norm(dim=1).mean().item()
    my_norm = mine.last_layer.weight_v.norm(dim=1).mean().item()
    assert abs(my_norm - ref_norm) < 0.02, (
        f"your last layer's rows start with length {my_norm:.3f}, the authors' with "
        f"{ref_norm:.3f}: keep MyWeightNormLinear's initialisation")
    y = torch.randn(4, feature_dim) * 3
    for rows in ("as initialised", "of many lengths, gains other than 1"):
        if rows != "as initialised":
            with torch.no_grad():
                ref.last_layer.weight_v.mul_(torch.rand(65536, 1) * 5)
                ref.last_layer.weight_g.copy_(torch.rand(65536, 1) * 3)
        try:
            mine.load_state_dict(ref.state_dict())
        except RuntimeError as err:
            raise AssertionError(f"your head's parameters do not have the package head's names "
                                 f"and shapes: {err}")
        with torch.no_grad():
            ours, theirs = mine(y), ref(y)
        assert ours.shape == theirs.shape, (f"your output has shape {tuple(ours.shape)}, expected "
                                            f"{tuple(theirs.shape)}")
        assert torch.allclose(ours, theirs, atol=1e-5), (
            f"last-layer rows {rows}: outputs differ by up to {(ours - theirs).abs().max():.3g}; "
            "check the activations (GELU), the normalisation (over the last dimension), that every "
            "row of v is divided by its own norm, and the order of the steps")
    print("Correct: with the same weights, your head computes what dino_tutorial.model.DINOHead "
          "computes")


check_exercise(1, check_head, MyDINOHead)

# %% [markdown]
# ## Section 3: why the last layer is weight-normalised
#
# Look at one output of the head. The bottleneck vector $\hat u = u / \lVert u \rVert$ has length 1, and the
# row $w_k = g_k\, v_k / \lVert v_k \rVert$ has length $g_k$, so
#
# $$
# h(y)_k = g_k \,\cos(u, v_k) \in [-g_k,\ g_k].
# $$
#
# With `norm_last_layer=True` (the default, and the ResNet-50 recipe) the lengths are **fixed at
# $g_k = 1$**: `weight_g` is not a trained parameter. Every output is then a cosine similarity between the
# image's bottleneck vector and one of $K$ learnt unit "prototype" directions, bounded by 1. The student's
# probabilities $P_s = \mathrm{softmax}(h(y)/\tau_s)$ with $\tau_s = 0.1$ take logits in $[-10, 10]$, and the
# teacher's with $\tau_t = 0.04$ in $[-25, 25]$: **the temperature alone decides how peaked a distribution
# can get**, not the size of the weights.
#
# With `norm_last_layer=False`, $g_k$ is learnt. The network can then make its outputs sharper by growing
# some lengths, which the loss rewards, and the effective temperature drifts during training. The authors'
# code documents the trade-off: an unnormalised last layer can give better accuracy but can make training
# unstable; they leave it free for ViT-S/16 and fix it for ViT-B, and the ResNet-50 command keeps the default,
# fixed.
#
# To see the difference, the cell below trains a head on fixed features of real photographs with a
# DINO-style target: the head's own output, sharpened with $\tau_t = 0.04$ and detached, predicted at
# $\tau_s = 0.1$. This target always asks for a sharper distribution, so it shows what a head does when
# sharpening is rewarded. It runs the same SGD steps twice, with `norm_last_layer` True and False, and records
# the lengths of the rows of the effective weight $W$ and the largest output. To keep it quick the head has
# $K$ = 4096 outputs here.

# %%
# 2048-d features of 32 real photographs from the (random) ResNet-50: the inputs of the head.
with torch.no_grad():
    photos = torch.stack([eval_transform(224)(load_rgb(p)) for p in PHOTO_PATHS[:32]])
    features = backbone(photos)
print(f"features: {tuple(features.shape)}")


def train_head(norm_last_layer: bool, steps: int = 60, lr: float = 0.3,
               out_dim: int = 4096) -> dict:
    """SGD on a fresh head with a self-sharpening target; returns row lengths of W and the largest
    output."""
    set_seed(0)
    head = DINOHead(feature_dim, out_dim=out_dim, norm_last_layer=norm_last_layer)
    optimizer = (torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=lr,
                                 momentum=0.9))
    record = {"max_output": [], "loss": []}
    for _ in range(steps):
        out = head(features)                                                 # (32, K)
        # sharpened, no gradient
        target = F.softmax(out.detach() / 0.04, dim=-1)
        loss = -(target * F.log_softmax(out / 0.1, dim=-1)).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        record["max_output"].append(out.detach().abs().max().item())
        record["loss"].append(loss.item())
    record["row_norms"] = head.last_layer.weight.detach().norm(dim=1)
    with torch.no_grad():
        # distinct top outputs over 32 photos
        record["outputs_used"] = head(features).argmax(dim=1).unique().numel()
    return record


runs = {norm: train_head(norm) for norm in (True, False)}
for norm, r in runs.items():
    print(f"norm_last_layer={norm!s:5}: row lengths in [{r['row_norms'].min():.3f}, "
          f"{r['row_norms'].max():.3f}], largest output {r['max_output'][-1]:.3f}, loss "
          f"{r['loss'][-1]:.2g}, distinct top outputs over the 32 photos: {r['outputs_used']}")
longest = runs[False]["row_norms"].max().item()
glue("free_max_norm", f"{longest:.1f}", display=False)
glue("free_max_output", f"{runs[False]['max_output'][-1]:.1f}", display=False)
glue("free_effective_temp", f"{0.1 / longest:.3f}", display=False)
glue("fixed_loss", f"{runs[True]['loss'][-1]:.2g}", display=False)
glue("free_loss", f"{runs[False]['loss'][-1]:.2g}", display=False)
glue("fixed_used", runs[True]["outputs_used"], display=False)
glue("free_used", runs[False]["outputs_used"], display=False)

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 3, figsize=(9, 2.3))
colours = {True: "tab:blue", False: "tab:orange"}
steps = np.arange(1, len(runs[True]["loss"]) + 1)
for norm, r in runs.items():
    label = f"norm_last_layer={norm}"
    axes[0].plot(steps, r["loss"], color=colours[norm], label=label)
    axes[1].plot(steps, r["max_output"], color=colours[norm], label=label)
    ranked = r["row_norms"].sort(descending=True).values.numpy()
    axes[2].plot(np.arange(1, len(ranked) + 1), ranked, color=colours[norm], lw=2, label=label)
axes[1].axhline(1.0, color="k", ls="--", lw=1, label="bound when $g_k = 1$")
axes[0].set(xlabel="SGD step", ylabel="cross-entropy (nats)", title="Both heads fit the target")
axes[1].set(xlabel="SGD step", ylabel="largest $|h(y)_k|$ in the batch",
            title="Largest output, before $1/\\tau$")
axes[2].set(xscale="log", xlabel="output row k, longest first",
            ylabel="row length $\\|w_k\\| = g_k$",
            title=f"Row lengths after {len(steps)} steps")
for ax in axes:
    ax.legend(fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# Both heads fit this easy target (32 photographs, 4096 outputs): the loss falls to {glue:text}`fixed_loss`
# nats with fixed lengths and to {glue:text}`free_loss` with free ones. They get there differently. With fixed
# lengths every row keeps length 1 and the largest output levels off just below 1: the head can only sharpen
# by turning prototypes towards the images' bottleneck vectors. With free lengths a few rows grow to length
# {glue:text}`free_max_norm` and the largest output reaches {glue:text}`free_max_output`: the head sharpens by
# inflating a few prototypes, which divides the temperature of their outputs by $g_k$ (an effective student
# temperature of {glue:text}`free_effective_temp` instead of 0.1 for the longest row). In a real run such
# logits make the softmaxes sharper than the temperatures intend, and they can overflow in half precision.
# Fixing $g_k$ removes this way of sharpening: the temperatures keep control.
#
# One thing the weight normalisation does *not* prevent: in both runs, all 32 photographs end up with the same
# top output (the count of distinct top outputs is {glue:text}`fixed_used` with fixed lengths and
# {glue:text}`free_used` with free ones). A target that only asks for sharpness is met by sending every image
# to one dimension. That is collapse, and the remedy is the centering of the teacher's outputs that
# {doc}`04_dino_loss` adds.
#
# Note how the gradient treats the directions $v_k$: the output depends on $v_k$ only through
# $v_k / \lVert v_k \rVert$, so its gradient is orthogonal to $v_k$, and a plain SGD step can only lengthen
# $v_k$, never shorten it. Shrinking $v_k$ (which is what weight decay does) changes nothing the layer
# computes, and as $v_k$ grows, the same gradient step turns its direction less: the effective learning rate
# of a direction falls like $1 / \lVert v_k \rVert^2$.

# %% [markdown]
# ### Think! 2
#
# The authors' recipe also *freezes the whole last layer* during the first epoch (`freeze_last_layer=1`):
# its gradients are dropped, so the $K$ prototype directions stay random while the MLP and the backbone
# learn. With $g_k = 1$ and random directions in 256 dimensions, what are the head's outputs like at the
# start, and why might it help to let the rest of the network settle first?
#
# ```{admonition} Answer
# :class: dropdown
# Random unit vectors in 256 dimensions are nearly orthogonal to any given vector: the cosines have a spread
# of about $1/\sqrt{256} = 0.06$. So at the start every output is a small number near 0, and both softmaxes are
# close to uniform. If the prototypes moved from the first step, they would chase the features of a network
# that is itself changing quickly, and a few prototypes could capture most images early on. Keeping them fixed
# for an epoch makes the first task "arrange the features among fixed random directions", which the authors
# found steadier. Chapter 06 (the training loop) uses this option.
# ```

# %% [markdown]
# ## Section 4: batching views by resolution
#
# Every training image gives 2 global views of 224 px and 8 local views of 96 px
# ({doc}`01_multi_crop`). A data loader stacks the views of a batch of $B$ images *view by view*: the student
# receives a list of 10 tensors, two of shape (B, 3, 224, 224) and eight of shape (B, 3, 96, 96). Running the
# backbone on each tensor separately costs 10 calls. Tensors of the same size can be concatenated along the
# batch dimension, though, so the package's `MultiCropWrapper` runs the backbone **once per group of
# consecutive views of the same resolution**: one call on the $2B$ global views, one on the $8B$ local views.
# It then concatenates the 2048-d features and runs the head once on all $10B$ of them.

# %%
augment = MultiCropAugmentation()               # 2 global views of 224 px, 8 local views of 96 px
set_seed(0)
per_image = [augment(photo) for photo in PHOTOS]                 # B lists of 10 views
# 10 tensors (B, 3, H, W), view by view
crops = [torch.stack(views) for views in zip(*per_image)]
print(f"B = {len(PHOTOS)} images, {len(crops)} views each:")
for i, c in enumerate(crops):
    print(f"  crop {i}: {tuple(c.shape)}")
print("resolution groups (start, end):", MultiCropWrapper.resolution_groups(crops))

# %% tags=["hide-input"]
fig, axes = (plt.subplots(len(PHOTOS), 10, figsize=(9, 2.1),
                          gridspec_kw={"width_ratios": [224] * 2 + [96] * 8}))
for b in range(len(PHOTOS)):
    for i, c in enumerate(crops):
        axes[b, i].imshow(show(c[b]))
        axes[b, i].set_xticks([])
        axes[b, i].set_yticks([])
        if b == 0:
            axes[b, i].set_title(("global" if i < 2 else "local") + f" {i}\n{c.shape[-1]} px",
                                 fontsize=9)
    axes[b, 0].set_ylabel(f"image {b}")
fig.suptitle("The student's input: a list of 10 tensors, each holding one view of every image",
             y=1.1)
plt.show()

# %% [markdown]
# To see what the wrapper does, a forward hook on the backbone records the shape of every batch it receives.
# The student network is the wrapper around the backbone and a head.

# %%
student = MultiCropWrapper(backbone, DINOHead(feature_dim, out_dim=65536))
calls = []
hook = student.backbone.register_forward_hook(lambda module, inputs, output: calls.append(
    (tuple(inputs[0].shape), tuple(output.shape))))
with torch.no_grad():
    student_out = student(crops)
hook.remove()
print(f"backbone calls: {len(calls)}")
for n, (shape_in, shape_out) in enumerate(calls):
    print(f"  call {n}: {shape_in} -> {shape_out}")
print(f"student output: {tuple(student_out.shape)} = (10 views x {len(PHOTOS)} images, K)")
glue("n_backbone_calls", len(calls), display=False)

# %% [markdown]
# The backbone ran {glue:text}`n_backbone_calls` times instead of 10. The output rows keep the order of the
# views: rows $[iB, (i+1)B)$ belong to view $i$, so `student_out.chunk(10)` gives the outputs per view, which
# is how the loss in {doc}`04_dino_loss` pairs them. The teacher gets only the two global views and makes one
# backbone call.
#
# Fewer, larger calls are faster on a GPU, where a batch of a few images leaves most of the device idle. On a
# CPU the arithmetic is the same either way, but the time need not be: each call has its own overhead and
# reads the weights again, and a larger batch uses the vectorised kernels better. The cell times both on this
# chapter's `DEVICE` (a timing, so its output varies from run to run, and the ratio with the machine):

# %% tags=["nbval-ignore-output"]
def seconds(fn, repeats=2):
    """Best wall-clock time of `fn()` over a few repeats, with the device synchronised."""
    best = float("inf")
    for _ in range(repeats):
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


student.to(DEVICE)
crops_on_device = [c.to(DEVICE) for c in crops]
with torch.no_grad():
    grouped = seconds(lambda: student(crops_on_device))
    per_view = seconds(lambda: student.head(
        torch.cat([student.backbone(c) for c in crops_on_device])))
student.to("cpu")
print(f"on {DEVICE}: grouped by resolution (2 backbone calls) {1000 * grouped:.0f} ms, "
      f"one call per view (10 calls) {1000 * per_view:.0f} ms")

# %% [markdown]
# ### Coding exercise 2: the multi-crop forward pass
#
# Write what `MultiCropWrapper` does: `multi_crop_forward(backbone, head, crops)` returns the head's outputs for
# every view, `(len(crops) * B, K)` in the order of `crops`, with one backbone call per run of consecutive views
# of the same resolution and a single head call on all the features. `torch.unique_consecutive` on the list of
# side lengths, with `return_counts=True`, gives the length of each run.

# %% tags=["exercise"]
def multi_crop_forward(backbone: nn.Module, head: nn.Module, crops: list) -> torch.Tensor:
    """The head's outputs for all views, one backbone call per run of equal resolutions."""
    #################################################################
    # Fill in the blanks (...), then remove this line.
    raise NotImplementedError("multi_crop_forward still has blanks (...)")
    #################################################################
    sizes = torch.tensor([...])                 # one number per view: its side length
    _, counts = torch.unique_consecutive(sizes, return_counts=True)
    features, start = [], 0
    for count in counts.tolist():
        ...                                     # one backbone call on views start .. start + count
        start += count
    return ...                                  # one head call on all the features


# %% tags=["solution", "hide-cell"]
# Solution to exercise 2
def multi_crop_forward(backbone: nn.Module, head: nn.Module, crops: list) -> torch.Tensor:
    """The head's outputs for all views, one backbone call per run of equal resolutions."""
    sizes = torch.tensor([c.shape[-1] for c in crops])
    _, counts = torch.unique_consecutive(sizes, return_counts=True)
    features, start = [], 0
    for count in counts.tolist():
        features.append(backbone(torch.cat(crops[start:start + count])))
        start += count
    return head(torch.cat(features))


# %%
def check_multi_crop_forward(fn):
    """Outputs and backbone calls of MultiCropWrapper, in train mode (BatchNorm uses each call's
    batch, so a different grouping gives different outputs)."""
    set_seed(0)
    tiny, dim = build_backbone("resnet18")
    wrapper = MultiCropWrapper(tiny, DINOHead(dim, out_dim=32, hidden_dim=16, bottleneck_dim=8))
    calls = {"backbone": [], "head": []}
    for part in calls:
        getattr(wrapper, part).register_forward_hook(
            lambda module, inputs, output, part=part: calls[part].append(inputs[0].shape[0]))
    orders = {"2 global + 8 local": [64] * 2 + [32] * 8, "2 global + 0 local": [64] * 2,
              "alternating sizes": [64, 32, 64, 32], "three sizes": [64, 64, 48, 32, 32, 32]}
    for name, sizes in orders.items():
        views = [torch.randn(2, 3, s, s) for s in sizes]
        with torch.no_grad():
            for part in calls:
                calls[part].clear()
            expected = wrapper(views)
            expected_calls = {part: list(seen) for part, seen in calls.items()}
            for part in calls:
                calls[part].clear()
            mine = fn(wrapper.backbone, wrapper.head, views)
        assert calls == expected_calls, (
            f"{name}: your backbone batches {calls['backbone']} and head batches {calls['head']}, "
            f"the wrapper's {expected_calls['backbone']} and {expected_calls['head']}")
        assert mine.shape == expected.shape, (f"{name}: output shape {tuple(mine.shape)}, expected "
                                              f"{tuple(expected.shape)}")
        assert torch.allclose(mine, expected, atol=1e-5), (
            f"{name}: your outputs differ from MultiCropWrapper's: are the views kept in order?")
    print("Correct: your forward pass makes MultiCropWrapper's calls and gives its outputs")


check_exercise(2, check_multi_crop_forward, multi_crop_forward)

# %% [markdown]
# ### Think! 3
#
# In training mode, a ResNet's batch normalisation layers normalise with the mean and variance of the batch
# they receive. With the grouping, what batch does a local view's activation get normalised with? What would
# change if the views were ordered global, local, global, local, ...?
#
# ```{admonition} Answer
# :class: dropdown
# The statistics of its group: the $8B$ local views of the batch, never the global views. Each call is a
# separate batch for BN, so global and local views are normalised separately, each with statistics of their
# own resolution. With alternating sizes, `unique_consecutive` finds a new group at every change: 10 backbone
# calls of $B$ views each, which is slower and gives BN smaller, noisier batches. That is why the augmentation
# returns the global views first and the local views after them (and why the grouping only merges
# *consecutive* views: it must not reorder the outputs).
# ```

# %% [markdown]
# ## Summary
#
# - The backbone is a randomly initialised ResNet-50 without its classifier: stem and four stages take a
#   224 px view to a 7 × 7 × 2048 map, and global average pooling to the 2048-d feature that evaluation uses.
#   A 96 px view goes through the same network to the same 2048 dimensions.
# - The projection head is a 3-layer MLP (hidden 2048, GELU) to a 256-d bottleneck, $\ell_2$-normalised, and a
#   weight-normalised linear layer without bias to $K = 65536$ outputs: {glue:text}`head_millions` million
#   parameters, most of them in the last layer.
# - With `norm_last_layer=True` the row lengths are fixed at 1, so every output is a cosine similarity in
#   $[-1, 1]$ and only the temperatures set how sharp the softmaxes can be; with free lengths the head can
#   sharpen its outputs by growing a few rows.
# - `MultiCropWrapper` runs the backbone once per run of equal-size views (2 calls for 2 × 224 + 8 × 96) and
#   the head once, and returns the outputs view by view.
#
# **Next.** The student is this network trained by gradients. {doc}`03_ema_teacher` builds the teacher from
# it: the same architecture, updated not by gradients but as a moving average of the student's weights.
#
# **Further reading.**
# - Caron et al. 2021, *Emerging Properties in Self-Supervised Vision Transformers* (arXiv 2104.14294):
#   Section 3.1 ("Network architecture"), Table 2 (ResNet-50 results) and the appendix ablations of the
#   projection head.
# - He et al. 2016, *Deep Residual Learning for Image Recognition* (arXiv 1512.03385), Table 1: the ResNet-50
#   stages.
# - Salimans and Kingma 2016, *Weight Normalization* (arXiv 1602.07868).
# - Caron et al. 2020, *SwAV* (arXiv 2006.09882): a head with $\ell_2$-normalised prototypes, and the
#   multi-crop wrapper that groups views by resolution.
