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
# # 01 Multi-crop: many views of one image
#
# *DINO never sees a label: what it learns comes from asking two networks to agree across views of the same
# photograph. This chapter makes those views.*
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/01_multi_crop.ipynb)
#
# **Estimated time:** 85 minutes.

# %% [markdown]
# ## Tutorial objectives
#
# - See the two global and eight local views that DINO makes of every training image, and where each one
#   comes from in the photograph.
# - Write the random crop sampler (`RandomResizedCrop`) yourself and use it to compare the crop sizes of
#   the ResNet-50 recipe with the Vision Transformer defaults.
# - Write the two photometric transforms that torchvision lacks (random Gaussian blur, solarization) and
#   assemble the exact per-view pipelines of the DINO recipe.
# - Know what each transform is for, and measure what the pipeline costs.

# %% [markdown]
# ## Setup

# %% tags=["hide-input"]
# Install the course package when it is missing (in Colab).
# Locally: `pip install -e .` in the repository.
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
import torchvision.transforms.functional as TF
from IPython.display import Markdown, display
from matplotlib.patches import Rectangle
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from dino_tutorial.augment import (IMAGENET_MEAN, IMAGENET_STD,
                                   MultiCropAugmentation, RandomGaussianBlur,
                                   RandomSolarize, denormalize)
from dino_tutorial.data import load_rgb, resolve_data_root, sample_image_paths
from dino_tutorial.notebook import check_exercise, glue, setup
from dino_tutorial.train import set_seed

DEVICE = setup(seed=0)  # unused here: decoding and augmenting run on the CPU


def show(view: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) view as an (H, W, 3) array in [0, 1] for imshow."""
    return denormalize(view).permute(1, 2, 0).numpy()


# %% tags=["hide-input"]
# The data: full-size photographs (imagenet-samples), else Imagenette's val images.
try:
    PHOTO_PATHS, problem = sample_image_paths(), None
except FileNotFoundError as err:
    PHOTO_PATHS, problem = [], err
if problem:
    print(f"This chapter needs photographs: set DINO_DATA to a folder holding "
          f"imagenet-samples/ or imagenette-mini/, or run online so that "
          f"Imagenette is downloaded into {resolve_data_root()} ({problem})")
    raise SystemExit(1)


def pick(paths, keywords):
    """One photo per keyword (its name contains the keyword), else the first few."""
    n = len(keywords)
    chosen = [p for word in keywords for p in paths if word in p.name][:n]
    return chosen if len(chosen) == n else paths[:n]


PHOTOS = [load_rgb(p) for p in
          pick(PHOTO_PATHS, ["lorikeet", "steam_locomotive", "American_chameleon"])]
sizes = ", ".join(f"{w} x {h}" for w, h in (p.size for p in PHOTOS))
print(f"{len(PHOTO_PATHS)} photos; the figures use {len(PHOTOS)} ({sizes} px)")

# %% [markdown]
# ## Section 1: one photograph, ten views
#
# DINO trains a student network to predict a teacher network's output, and the two networks see *different
# views* of the same image (Section 3.1 of the paper). The set of views $V$ of an image holds two **global
# views** $x_1^g, x_2^g$ at 224 × 224 pixels that cover a large part of the image, and several **local
# views** at 96 × 96 pixels that cover a small part. The student sees all of them; the teacher only the
# global ones. The loss (Eq. 3) asks the student to predict, from every view $x'$, the teacher's output for
# each global view $x$ other than $x'$:
#
# $$
# \min_{\theta_s} \sum_{x \in \{x_1^g, x_2^g\}} \; \sum_{x' \in V,\ x' \neq x} H\big(P_t(x), P_s(x')\big).
# $$
#
# From a local view, that means recognising the whole from a part: the paper calls it *local-to-global
# correspondence*. The package's `MultiCropAugmentation` makes these views with the authors' ResNet-50
# settings. Called on a PIL image, it returns a list of ten normalised tensors: global 1, global 2, then
# eight local views.

# %%
augment = MultiCropAugmentation()
set_seed(0)
views = augment(PHOTOS[0])
shapes = [tuple(v.shape) for v in views]
counts = ", ".join(f"{shapes.count(s)} of shape {s}" for s in dict.fromkeys(shapes))
print(f"{len(views)} views: {counts}")

# %% [markdown]
# The views come back without the place they were cut from. To draw that place on the photograph, the cell
# below replays each view's pipeline one step at a time: it draws the crop box first, keeps it, then applies
# the rest of the pipeline. It consumes the same random numbers in the same order as `augment(image)`, so
# with the same seed it gives the same tensors, which the last line checks.

# %%
def views_with_boxes(augment: MultiCropAugmentation, image: Image.Image):
    """`augment(image)` and each view's crop box (top, left, height, width)."""
    pipelines = [augment.global_transform_1, augment.global_transform_2]
    pipelines += [augment.local_transform] * augment.local_crops_number
    views, boxes = [], []
    for pipeline in pipelines:
        # The crop first (keeping its box), then the rest of the view's pipeline.
        crop, rest = pipeline.transforms[0], T.Compose(pipeline.transforms[1:])
        box = crop.get_params(image, crop.scale, crop.ratio)
        cut = TF.resized_crop(image, *box, crop.size, crop.interpolation,
                              antialias=crop.antialias)
        views.append(rest(cut))
        boxes.append(box)
    return views, boxes


set_seed(0)
replayed, _ = views_with_boxes(augment, PHOTOS[0])
same = all(torch.equal(a, b) for a, b in zip(views, replayed))
print(f"replayed views equal augment(image): {same}")

# %% tags=["hide-input"]
GLOBAL_COLOURS, LOCAL_COLOUR = ["tab:blue", "tab:orange"], "tab:green"


def draw_box(ax, box, colour, **kwargs):
    top, left, height, width = box
    ax.add_patch(Rectangle((left, top), width, height, fill=False, ec=colour,
                           **kwargs))


def plot_views(photos, augment, seed=0):
    """One row per photo: the photo with its crop boxes, then the views."""
    fig = plt.figure(figsize=(9, 1.84 * len(photos)))
    grid = fig.add_gridspec(2 * len(photos), 11, wspace=0.08, hspace=0.3)
    set_seed(seed)
    for row, photo in enumerate(photos):
        views, boxes = views_with_boxes(augment, photo)
        ax = fig.add_subplot(grid[2 * row:2 * row + 2, 0:3])
        ax.imshow(photo)
        for i, box in enumerate(boxes):
            if i < 2:
                draw_box(ax, box, GLOBAL_COLOURS[i], lw=2)
            else:
                draw_box(ax, box, LOCAL_COLOUR, lw=1.3, ls="--")
        ax.set_title(f"{photo.size[0]} x {photo.size[1]} px photo, crop boxes")
        ax.axis("off")
        for i in range(2):
            ax = fig.add_subplot(grid[2 * row:2 * row + 2, 3 + 2 * i:5 + 2 * i])
            ax.imshow(show(views[i]))
            ax.set_xticks([]), ax.set_yticks([])
            plt.setp(list(ax.spines.values()), color=GLOBAL_COLOURS[i], lw=3)
            if row == 0:
                ax.set_title(f"global {i + 1} (224 px)")
        for j, view in enumerate(views[2:]):
            ax = fig.add_subplot(grid[2 * row + j // 4, 7 + j % 4])
            ax.imshow(show(view))
            ax.set_xticks([]), ax.set_yticks([])
            plt.setp(list(ax.spines.values()), color=LOCAL_COLOUR, lw=2)
            if row == 0 and j == 0:
                ax.set_title("8 local views (96 px)", loc="left")
    plt.show()


plot_views(PHOTOS, augment)

# %% [markdown]
# Each row is one photograph: on the left with the boxes the views were cut from (solid: the two global
# views, dashed: the eight local views), then the views as the networks receive them (un-normalised for
# display). The two global views overlap a lot and show most of the object; a local view often shows
# a feather, a wheel or a patch of background. Every view is also flipped, recoloured, blurred or solarized
# at random: Section 4 takes those transforms one by one.

# %% [markdown]
# ## Section 2: sampling a crop box
#
# Every view starts with torchvision's `RandomResizedCrop`: cut a random box out of the photo and resize
# it to the view's size (bicubic interpolation). The box is drawn in two numbers:
#
# - its **area** $s \cdot W H$, with the fraction $s$ drawn uniformly from the `scale` range:
#   (0.14, 1) for the global views and (0.05, 0.14) for the local views in the ResNet-50 recipe;
# - its **aspect ratio** $r = w / h$, drawn so that $\log r$ is uniform in $[\log \tfrac34, \log \tfrac43]$
#   (a wide box is as likely as an equally tall one).
#
# Then $w = \sqrt{s W H r}$ and $h = \sqrt{s W H / r}$, rounded to whole pixels. If the box does not fit in
# the photo, it is drawn again, up to 10 times; after 10 misses, the whole photo is used, centred and cut to
# the nearest allowed aspect ratio. The position is uniform over the places where the box fits.

# %% [markdown]
# ### Coding exercise 1: sample a crop box
#
# Write `sample_crop_box(width, height, scale, ratio)` returning `(top, left, h, w)` in pixels, following the
# recipe above. Draw random numbers with `torch` (for instance `torch.rand(()).item()` for a uniform number
# in [0, 1), `torch.randint(low, high, ()).item()` for an integer in [low, high)), so that `set_seed` makes the
# boxes reproducible.

# %% tags=["exercise"]
def sample_crop_box(width: int, height: int, scale: tuple,
                    ratio: tuple = (3 / 4, 4 / 3)) -> tuple:
    """A random box (top, left, h, w) in a width x height image."""
    #################################################################
    # Fill in the blanks (...), then remove this line.
    raise NotImplementedError("sample_crop_box still has blanks (...)")
    #################################################################
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        s = ...  # area fraction, uniform in [scale[0], scale[1]]
        r = ...  # aspect ratio w / h, log-uniform in [ratio[0], ratio[1]]
        w = ...  # whole pixels, with w * h ~ s * area and w / h ~ r
        h = ...
        if 0 < w <= width and 0 < h <= height:
            top = ...  # uniform over the positions where the box fits
            left = ...
            return top, left, h, w
    # Ten misses: the whole image, cut to the nearest allowed aspect ratio, centred.
    r = min(max(width / height, ratio[0]), ratio[1])
    w, h = min(width, round(height * r)), min(height, round(width / r))
    return (height - h) // 2, (width - w) // 2, h, w


# Uncomment to try your function:
# print(sample_crop_box(500, 375, scale=(0.14, 1.0)))

# %% tags=["solution", "hide-cell"]
# Solution to exercise 1
def sample_crop_box(width: int, height: int, scale: tuple,
                    ratio: tuple = (3 / 4, 4 / 3)) -> tuple:
    """A random box (top, left, h, w) in a width x height image."""
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        s = scale[0] + (scale[1] - scale[0]) * torch.rand(()).item()
        r = math.exp(log_low + (log_high - log_low) * torch.rand(()).item())
        w = round(math.sqrt(s * area * r))
        h = round(math.sqrt(s * area / r))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, ()).item()
            left = torch.randint(0, width - w + 1, ()).item()
            return top, left, h, w
    # Ten misses: the whole image, cut to the nearest allowed aspect ratio, centred.
    r = min(max(width / height, ratio[0]), ratio[1])
    w, h = min(width, round(height * r)), min(height, round(width / r))
    return (height - h) // 2, (width - w) // 2, h, w


print(sample_crop_box(500, 375, scale=(0.14, 1.0)))

# %%
def check_crop_boxes(sampler, n=5000, width=500, height=375):
    """Seeded, `sampler`'s boxes must be distributed as torchvision's boxes are."""
    image = Image.new("RGB", (width, height))
    statistics = {  # of boxes (top, left, h, w) in the rows of an (n, 4) array
        "area fraction": lambda b: b[:, 2] * b[:, 3] / (width * height),
        "aspect ratio w/h": lambda b: b[:, 3] / b[:, 2],
        "horizontal centre": lambda b: (b[:, 1] + b[:, 3] / 2) / width,
        "vertical centre": lambda b: (b[:, 0] + b[:, 2] / 2) / height,
    }
    for scale in [(0.14, 1.0), (0.05, 0.14)]:
        set_seed(0)
        mine = np.array([sampler(width, height, scale) for _ in range(n)], float)
        set_seed(1)
        torchvision_box = T.RandomResizedCrop.get_params
        ref = np.array([torchvision_box(image, list(scale), [3 / 4, 4 / 3])
                        for _ in range(n)], float)
        top, left, h, w = mine.T
        inside = ((top >= 0) & (left >= 0) & (h > 0) & (w > 0)
                  & (top + h <= height) & (left + w <= width))
        assert inside.all(), (f"{(~inside).sum()} of your boxes are empty or leave "
                              f"the image (scale={scale})")
        for name, statistic in statistics.items():
            q = [0.1, 0.25, 0.5, 0.75, 0.9]
            q_mine = np.quantile(statistic(mine), q)
            q_ref = np.quantile(statistic(ref), q)
            assert np.abs(q_mine - q_ref).max() < 0.025, (
                f"the {name} of your boxes (scale={scale}) is distributed "
                f"differently from torchvision's: quantiles {q_mine.round(3)} "
                f"against {q_ref.round(3)}")
    print("Correct: your boxes are distributed as torchvision's RandomResizedCrop")


check_exercise(1, check_crop_boxes, sample_crop_box)

# %% [markdown]
# ## Section 3: ResNet-50 crops are smaller than ViT crops
#
# The paper's default recipe, tuned for Vision Transformers, draws global views from (0.4, 1) of the image
# area and local views from (0.05, 0.4). The authors' ResNet-50 command changes both ranges to (0.14, 1)
# and (0.05, 0.14), the multi-crop ranges of SwAV, the same group's earlier ResNet-50 method. With your
# sampler, compare what each recipe actually cuts from a 500 × 375 photo: the area of the views, how much
# the two global views overlap (intersection over union, IoU), and how much of a local view lies inside a
# global view.

# %%
RECIPES = {"ResNet-50": {"global": (0.14, 1.0), "local": (0.05, 0.14)},
           "ViT (default)": {"global": (0.4, 1.0), "local": (0.05, 0.4)}}
try:  # your sampler from exercise 1, or torchvision's while it still has blanks
    sample_crop_box(500, 375, RECIPES["ResNet-50"]["global"])
    sampler = sample_crop_box
except (NotImplementedError, TypeError):
    print("Exercise 1 is not done yet: the statistics below use torchvision's sampler")

    def sampler(width, height, scale):
        return T.RandomResizedCrop.get_params(Image.new("RGB", (width, height)),
                                              list(scale), [3 / 4, 4 / 3])


def intersection(a, b):
    """Intersection areas of boxes (top, left, h, w), rows of two (n, 4) arrays."""
    top, left = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    bottom = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    right = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    return np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)


def crop_statistics(scales, n=4000, width=500, height=375):
    """Boxes for n images (2 global views, 1 local): their areas and overlaps."""
    def boxes(kind):
        scale = scales[kind]
        return np.array([sampler(width, height, scale) for _ in range(n)], float)

    g1, g2, local = boxes("global"), boxes("global"), boxes("local")
    a1, a2, a_local = (b[:, 2] * b[:, 3] for b in (g1, g2, local))
    overlap = intersection(g1, g2)
    return {
        "global area": np.concatenate([a1, a2]) / (width * height),
        "local area": a_local / (width * height),
        "global IoU": overlap / (a1 + a2 - overlap),
        "local inside global": intersection(local, g1) / a_local,
    }


set_seed(0)
stats = {name: crop_statistics(scales) for name, scales in RECIPES.items()}
means = {name: {key: values.mean() for key, values in s.items()}
         for name, s in stats.items()}
for name, m in means.items():
    print(f"{name}: mean area of a global view {m['global area']:.2f}, "
          f"of a local view {m['local area']:.3f};\n"
          f"    mean IoU of the two global views {m['global IoU']:.2f}; "
          f"share of a local view inside global 1 {m['local inside global']:.2f}")
for key, name in [("rn50", "ResNet-50"), ("vit", "ViT (default)")]:
    m = means[name]
    glue(f"{key}_global_area", f"{m['global area']:.2f}", display=False)
    glue(f"{key}_local_area", f"{m['local area']:.3f}", display=False)
    glue(f"{key}_global_iou", f"{m['global IoU']:.2f}", display=False)
    inside = 100 * m["local inside global"]
    glue(f"{key}_local_inside", f"{inside:.0f}", display=False)

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 3, figsize=(9, 2.5))
bins = np.linspace(0, 1, 51)
for ax, (name, s) in zip(axes[:2], stats.items()):
    ax.hist(s["local area"], bins, color=LOCAL_COLOUR, alpha=0.8, label="local")
    ax.hist(s["global area"], bins, color="tab:blue", alpha=0.6, label="global")
    ax.set(title=f"{name} recipe: crop areas", ylabel="number of crops",
           xlabel="crop area (fraction of the photo)")
    ax.legend()
for name, s in stats.items():
    axes[2].hist(s["global IoU"], bins=bins, histtype="step", lw=2, label=name)
axes[2].set(title="overlap of the two global views", ylabel="number of images",
            xlabel="IoU of global 1 and global 2")
axes[2].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The ranges do what their numbers say, with one twist: boxes that do not fit are redrawn, so large
# areas are a little rarer than a uniform draw would give. On average a ResNet-50 global view covers
# {glue:text}`rn50_global_area` of the photo against {glue:text}`vit_global_area` for the ViT recipe, and the
# two global views of an image overlap less (mean IoU {glue:text}`rn50_global_iou` against
# {glue:text}`vit_global_iou`). A ResNet-50 local view is small (mean area {glue:text}`rn50_local_area`),
# and on average {glue:text}`rn50_local_inside`% of it lies inside the first global view
# ({glue:text}`vit_local_inside`% for the ViT recipe): most local views show a part of what the teacher saw.
#
# In both recipes the two ranges meet without overlapping, so a local view is never larger than a global view.

# %% [markdown]
# ### Think! 1
#
# The ResNet-50 recipe makes the two global views of an image smaller and less alike than the ViT recipe
# does. Why might that help a ResNet-50? And why does the teacher see only the global views, never the
# local ones?
#
# ```{admonition} Answer
# :class: dropdown
# Less alike global views make the global-to-global pairs of the loss a harder prediction task: the student
# must map two quite different crops (a whole bird and its wing and branch) to the same output, which is
# a stronger augmentation. Convolutional networks trained with SwAV's multi-crop used exactly these ranges;
# the DINO paper does not ablate them for ResNet-50, so this is the design's reasoning, not a measured result.
# A ViT with (0.14, 1) global crops would also see smaller objects at its fixed 16-pixel patch size.
#
# The teacher provides the *targets*. A global view shows most of the image, so its teacher output describes
# the whole; asking the student to predict it from a local view is the local-to-global task. If the teacher
# saw local views, the student would be asked to predict one small patch from another, often unrelated,
# patch of the same photo, a target with little to do with what the image shows (Section 3.1).
# ```

# %% [markdown]
# ## Section 4: the photometric recipe
#
# After the crop, each view is flipped, recoloured and blurred at random, following the augmentations of
# BYOL (Section 3.2 of the paper, "Implementation details"). The table below is read off the package's
# pipelines, so it always shows what the code does.

# %% tags=["hide-input"]
def describe(t) -> list:
    """(step, parameters) for each step of a torchvision pipeline, in order."""
    if isinstance(t, T.Compose):
        return [step for inner in t.transforms for step in describe(inner)]
    if isinstance(t, T.RandomApply):
        return [(step, f"{params}, p = {t.p}")
                for inner in t.transforms for step, params in describe(inner)]
    if isinstance(t, T.RandomResizedCrop):
        scale = tuple(round(x, 2) for x in t.scale)
        return [("random resized crop", f"{t.size[0]} px, scale {scale}, "
                 f"ratio (3/4, 4/3), {t.interpolation.value}")]
    if isinstance(t, T.RandomHorizontalFlip):
        return [("horizontal flip", f"p = {t.p}")]
    if isinstance(t, T.ColorJitter):
        return [("colour jitter", f"brightness {t.brightness[1] - 1:.1f}, "
                 f"contrast {t.contrast[1] - 1:.1f}, "
                 f"saturation {t.saturation[1] - 1:.1f}, hue {t.hue[1]:.1f}")]
    if isinstance(t, T.RandomGrayscale):
        return [("grayscale", f"p = {t.p}")]
    if isinstance(t, RandomGaussianBlur):
        return [("Gaussian blur",
                 f"p = {t.p}, radius in [{t.radius_min}, {t.radius_max}]")]
    if isinstance(t, RandomSolarize):
        return [("solarization", f"p = {t.p}")]
    if isinstance(t, T.ToTensor):
        return [("to tensor", "values in [0, 1]")]
    if isinstance(t, T.Normalize):
        return [("normalise", f"ImageNet mean {tuple(t.mean)}, std {tuple(t.std)}")]
    return [(type(t).__name__, repr(t))]


columns = {"global 1": augment.global_transform_1,
           "global 2": augment.global_transform_2,
           f"local (x {augment.local_crops_number})": augment.local_transform}
steps = {name: dict(describe(pipeline)) for name, pipeline in columns.items()}
# Rows in the order of the longest pipeline, so that each step sits where it runs.
longest_first = sorted(steps, key=lambda name: -len(steps[name]))
order = list(dict.fromkeys(step for name in longest_first for step in steps[name]))
rows = ["| step | " + " | ".join(columns) + " |",
        "| --- " * (len(columns) + 1) + "|"]
for step in order:
    cells = [steps[name].get(step, "-") for name in columns]
    rows.append(f"| {step} | " + " | ".join(cells) + " |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# What each step is for:
#
# - **Random resized crop.** Makes the views (Sections 1-3): the networks must agree on crops of different
#   places and sizes, so the output has to describe *what* is in the photo rather than where.
# - **Horizontal flip** (p = 0.5). The world looks the same in a mirror; the output should not change.
# - **Colour jitter** (p = 0.8) and **grayscale** (p = 0.2). Two crops of one photo share its colour
#   histogram, a shortcut that would let the networks agree without looking at shapes. Random changes
#   of brightness, contrast, saturation and hue, and sometimes no colour at all, close that shortcut.
# - **Gaussian blur** (radius 0.1 to 2 pixels). Removes fine texture, so that agreement cannot rest on
#   the high-frequency details. It is asymmetric: always on global view 1, rarely (p = 0.1) on global
#   view 2, half the time on local views.
# - **Solarization** (p = 0.2, global view 2 only): inverts every bright pixel. Also asymmetric: global view 1
#   is never solarized, so the pair of global views often has one mild and one strong view.
# - **Normalisation** with the ImageNet mean and standard deviation: the input statistics a ResNet-50 is built
#   for.
#
# The figure shows each step alone on one global crop (at its strongest for the blur), then five complete
# draws of everything that follows the crop in the pipeline of global view 2.

# %% tags=["hide-input"]
set_seed(3)
box = T.RandomResizedCrop.get_params(PHOTOS[0], [0.3, 0.6], [3 / 4, 4 / 3])
crop = TF.resized_crop(PHOTOS[0], *box, [224, 224], T.InterpolationMode.BICUBIC)
alone = {
    "the crop": crop,
    "flip": TF.hflip(crop),
    "colour jitter": T.ColorJitter(0.4, 0.4, 0.2, 0.1)(crop),
    "grayscale": TF.rgb_to_grayscale(crop, num_output_channels=3),
    "Gaussian blur, radius 2": crop.filter(ImageFilter.GaussianBlur(radius=2)),
    "solarization": RandomSolarize(p=1.0)(crop),
}
fig, axes = plt.subplots(2, 6, figsize=(9, 3.3))
for ax, (name, image) in zip(axes[0], alone.items()):
    ax.imshow(image)
    ax.set_title(name)
set_seed(4)
axes[1, 0].imshow(crop)
axes[1, 0].set_title("the crop")
for i, ax in enumerate(axes[1, 1:]):
    after_crop = T.Compose(augment.global_transform_2.transforms[1:])
    ax.imshow(show(after_crop(crop)))
    ax.set_title(f"global 2, draw {i + 1}")
for ax in axes.flat:
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Coding exercise 2: random blur and solarization
#
# torchvision has no "blur with probability p and a random radius" and no randomly applied solarization, so
# the package defines both. Write them as callable classes that take and return a PIL image:
#
# - `MyGaussianBlur(p, radius_min=0.1, radius_max=2.0)`: draw `u = torch.rand(()).item()`; if `u >= p`
#   return the image unchanged; otherwise draw the radius uniformly in `[radius_min, radius_max]` with a
#   second `torch.rand(())` and blur with PIL's `ImageFilter.GaussianBlur(radius)`.
# - `MySolarize(p, threshold=128)`: the same random decision; then replace every channel value $v \geq$
#   `threshold` by $255 - v$. Do it with NumPy on `np.asarray(image)`, not with `ImageOps.solarize`.
#
# Drawing the random numbers in this order makes your transforms reproduce the package's exactly.

# %% tags=["exercise"]
class MyGaussianBlur:
    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0):
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, image: Image.Image) -> Image.Image:
        #################################################################
        # Fill in the blanks (...), then remove this line.
        raise NotImplementedError("MyGaussianBlur still has blanks (...)")
        #################################################################
        if ...:  # skip with probability 1 - p
            return image
        radius = ...
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


class MySolarize:
    def __init__(self, p: float, threshold: int = 128):
        self.p, self.threshold = p, threshold

    def __call__(self, image: Image.Image) -> Image.Image:
        #################################################################
        # Fill in the blanks (...), then remove this line.
        raise NotImplementedError("MySolarize still has blanks (...)")
        #################################################################
        if ...:
            return image
        pixels = np.asarray(image)
        return Image.fromarray(...)


# Uncomment to try your function:
# MySolarize(p=1.0)(PHOTOS[0])

# %% tags=["solution", "hide-cell"]
# Solution to exercise 2
class MyGaussianBlur:
    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0):
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return image
        u = torch.rand(()).item()
        radius = self.radius_min + (self.radius_max - self.radius_min) * u
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


class MySolarize:
    def __init__(self, p: float, threshold: int = 128):
        self.p, self.threshold = p, threshold

    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return image
        pixels = np.asarray(image)
        solarized = np.where(pixels >= self.threshold, 255 - pixels, pixels)
        return Image.fromarray(solarized.astype(np.uint8))


# %%
def check_blur_and_solarize(blur_class, solarize_class, draws=12):
    """Seeded, the learner's transforms and the package's give identical pixels."""
    photos = [photo.resize((160, 120)) for photo in PHOTOS]
    for p in (0.0, 0.1, 0.5, 1.0):
        pairs = [(blur_class(p), RandomGaussianBlur(p)),
                 (solarize_class(p), RandomSolarize(p))]
        for mine, reference in pairs:
            for seed in range(draws):
                photo = photos[seed % len(photos)]
                set_seed(seed)
                a = np.asarray(mine(photo))
                set_seed(seed)
                b = np.asarray(reference(photo))
                assert a.shape == b.shape and np.array_equal(a, b), (
                    f"{type(mine).__name__}(p={p}) differs from "
                    f"{type(reference).__name__} after set_seed({seed})")
    solarized = np.asarray(solarize_class(1.0)(photos[0]))
    assert np.array_equal(solarized, np.asarray(ImageOps.solarize(photos[0]))), \
        "with p = 1 your solarization should equal PIL's ImageOps.solarize"
    print("Correct: your blur and solarization match dino_tutorial.augment's")


check_exercise(2, check_blur_and_solarize, MyGaussianBlur, MySolarize)

# %% [markdown]
# ### Coding exercise 3: assemble the three pipelines
#
# Now put the whole recipe together, in the order of the table above: random resized crop (bicubic),
# horizontal flip, colour jitter applied with p = 0.8, grayscale, your blur (p = 1.0, 0.1 or 0.5), your
# solarization (global view 2 only), then `ToTensor` and `Normalize` with `IMAGENET_MEAN` and `IMAGENET_STD`.
# Use torchvision's `T.RandomResizedCrop`, `T.RandomHorizontalFlip`, `T.RandomApply`, `T.ColorJitter`,
# `T.RandomGrayscale`, `T.ToTensor`, `T.Normalize` and `T.Compose`. If you keep exactly this order, your
# pipelines draw the same random numbers as the package's, and the check compares the ten views exactly.

# %% tags=["exercise"]
def build_view_pipelines(global_scale=(0.14, 1.0), local_scale=(0.05, 0.14),
                         global_size=224, local_size=96):
    """(global_1, global_2, local): PIL image -> normalised (3, size, size)."""
    #################################################################
    # Fill in the blanks (...), then remove this line.
    raise NotImplementedError("build_view_pipelines still has blanks (...)")
    #################################################################
    bicubic = T.InterpolationMode.BICUBIC
    flip_and_colour = T.Compose([...])  # flip, colour jitter (p = 0.8), grayscale
    to_tensor = T.Compose([...])        # ToTensor, Normalize
    global_crop = T.RandomResizedCrop(global_size, global_scale,
                                      interpolation=bicubic)
    local_crop = T.RandomResizedCrop(local_size, local_scale, interpolation=bicubic)
    global_1 = T.Compose([global_crop, flip_and_colour, ..., to_tensor])
    global_2 = ...
    local = ...
    return global_1, global_2, local


# Uncomment to try your function:
# global_1, global_2, local = build_view_pipelines()

# %% tags=["solution", "hide-cell"]
# Solution to exercise 3
def build_view_pipelines(global_scale=(0.14, 1.0), local_scale=(0.05, 0.14),
                         global_size=224, local_size=96):
    """(global_1, global_2, local): PIL image -> normalised (3, size, size)."""
    bicubic = T.InterpolationMode.BICUBIC
    flip_and_colour = T.Compose([
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2,
                                     hue=0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ])
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    global_crop = T.RandomResizedCrop(global_size, global_scale,
                                      interpolation=bicubic)
    local_crop = T.RandomResizedCrop(local_size, local_scale, interpolation=bicubic)
    global_1 = T.Compose([global_crop, flip_and_colour, MyGaussianBlur(p=1.0),
                          to_tensor])
    global_2 = T.Compose([global_crop, flip_and_colour, MyGaussianBlur(p=0.1),
                          MySolarize(p=0.2), to_tensor])
    local = T.Compose([local_crop, flip_and_colour, MyGaussianBlur(p=0.5),
                       to_tensor])
    return global_1, global_2, local


global_1, global_2, local = build_view_pipelines()

# %%
def check_pipelines(build, seeds=range(4)):
    """Seeded, the learner's pipelines reproduce MultiCropAugmentation's views."""
    global_1, global_2, local = build()
    reference = MultiCropAugmentation()
    for seed in seeds:
        photo = PHOTOS[seed % len(PHOTOS)]
        set_seed(seed)
        expected = reference(photo)
        set_seed(seed)
        mine = [global_1(photo), global_2(photo)]
        mine += [local(photo) for _ in range(reference.local_crops_number)]
        for i, (a, b) in enumerate(zip(mine, expected)):
            assert a.shape == b.shape, (f"view {i} has shape {tuple(a.shape)}, "
                                        f"expected {tuple(b.shape)}")
            assert torch.equal(a, b), (f"view {i} differs from the package's "
                                       f"after set_seed({seed})")
    print("Correct: your pipelines reproduce MultiCropAugmentation's ten views")


check_exercise(3, check_pipelines, build_view_pipelines)

# %% [markdown]
# ## Section 5: what the pipeline costs
#
# Every training image is decoded from JPEG and turned into ten views, on the CPU, every epoch. The cell below
# times the three stages on the full-size photos: decoding, the two global views, the eight local views. It
# uses one thread, as each worker process of a PyTorch `DataLoader` does.

# %% tags=["nbval-ignore-output"]
timed_paths = PHOTO_PATHS[:30]
threads = torch.get_num_threads()
torch.set_num_threads(1)
seconds = {"decode JPEG": 0.0, "2 global views": 0.0, "8 local views": 0.0}
set_seed(0)
for path in timed_paths:
    start = time.perf_counter()
    photo = load_rgb(path)
    decoded = time.perf_counter()
    augment.global_transform_1(photo), augment.global_transform_2(photo)
    global_done = time.perf_counter()
    [augment.local_transform(photo) for _ in range(augment.local_crops_number)]
    local_done = time.perf_counter()
    seconds["decode JPEG"] += decoded - start
    seconds["2 global views"] += global_done - decoded
    seconds["8 local views"] += local_done - global_done
torch.set_num_threads(threads)

per_image_ms = {stage: 1000 * s / len(timed_paths) for stage, s in seconds.items()}
images_per_second = len(timed_paths) / sum(seconds.values())
GPU_IMAGES_PER_SECOND = 1000  # an example training speed, to size the data loading
processes_needed = math.ceil(GPU_IMAGES_PER_SECOND / images_per_second)
glue("images_per_second", f"{images_per_second:.0f}", display=False)
glue("ms_per_image", f"{1000 / images_per_second:.0f}", display=False)
glue("processes_needed", f"{processes_needed}", display=False)
glue("gpu_images_per_second", f"{GPU_IMAGES_PER_SECOND:,}", display=False)
glue("slowest_stage", max(per_image_ms, key=per_image_ms.get), display=False)

fig, ax = plt.subplots(figsize=(7, 2.2))
stages = list(per_image_ms)[::-1]
ax.barh(stages, [per_image_ms[s] for s in stages],
        color=["tab:green", "tab:blue", "0.5"])
ax.set(xlabel="time per image (ms, one process)",
       title=f"multi-crop pipeline on {len(timed_paths)} full-size photos: "
             f"{images_per_second:.0f} images/s")
fig.tight_layout()
plt.show()
print({stage: round(ms, 1) for stage, ms in per_image_ms.items()})

# %% [markdown]
# One process turns about {glue:text}`images_per_second` photos per second into views here (the slowest
# stage: {glue:text}`slowest_stage`). A GPU that trains on, say, {glue:text}`gpu_images_per_second` images
# per second would need about {glue:text}`processes_needed` such processes working in parallel (the
# `num_workers` of a PyTorch `DataLoader`) just to keep it fed: on large runs the data pipeline, not the
# network, is often the bottleneck.

# %% [markdown]
# ### Think! 2
#
# How could the pipeline be made cheaper without changing the distribution of views it produces?
#
# ```{admonition} Answer
# :class: dropdown
# First look at where the time goes. For photos of ImageNet's usual size the decode is the small part: the
# time goes into the ten views, and within a view mostly into colour jitter (its hue shift converts every
# pixel to another colour space and back), the bicubic resize and the blur. Then:
#
# - Use more processes: `DataLoader(num_workers=...)` scales almost linearly with CPU cores.
# - Use a faster image library for the same operations (pillow-simd is a drop-in replacement for PIL).
# - Do the photometric steps on the GPU, on a batch of crops at once, with random parameters drawn *per
#   image*. Beware: torchvision's transforms applied to a batched tensor draw one set of random parameters for
#   the whole batch, which is a different (much weaker) augmentation.
# - For very large photos, decode at a reduced scale (PIL's `Image.draft` decodes a JPEG at 1/2, 1/4 or 1/8
#   of its size almost for free), as long as every crop still gets at least as many pixels as it is resized to.
# ```

# %% [markdown]
# ## Summary
#
# - DINO makes two global views (224 px) and several local views (96 px) of every image; the student sees all
#   of them, the teacher only the global ones, so the student learns to predict the whole from its parts
#   (local-to-global correspondence, Eq. 3 and Section 3.1).
# - A view is a random resized crop (area drawn from a scale range, log-uniform aspect ratio) followed by
#   flip, colour jitter, grayscale, blur and, on global view 2 only, solarization; blur and solarization are
#   applied asymmetrically to the two global views.
# - The ResNet-50 recipe uses smaller crops than the ViT default, (0.14, 1) and (0.05, 0.14) instead of
#   (0.4, 1) and (0.05, 0.4): its global views overlap less and its local views are always small parts.
# - Decoding and augmenting one image took about {glue:text}`ms_per_image` ms in one process here, mostly in
#   the views rather than the decode: a full training run needs many loader processes.
#
# **Next.** {doc}`02_backbone_and_head` feeds these views to a ResNet-50: ten views of two sizes per image,
# turned into 2048-d features and then into $K$-dimensional outputs by the DINO projection head.
#
# **Further reading.**
# - Caron et al. 2021, *Emerging Properties in Self-Supervised Vision Transformers* (arXiv 2104.14294):
#   Section 3.1 (multi-crop, Eq. 3), Section 3.2 (implementation details) and the ablations of Section 5.
# - Caron et al. 2020, *Unsupervised Learning of Visual Features by Contrasting Cluster Assignments* (SwAV,
#   arXiv 2006.09882), where multi-crop was introduced.
# - Grill et al. 2020, *Bootstrap Your Own Latent* (BYOL, arXiv 2006.07733), the source of the photometric
#   recipe and its asymmetric blur and solarization.
# - Chen et al. 2020, *A Simple Framework for Contrastive Learning of Visual Representations* (SimCLR, arXiv
#   2002.05709), Section 3, on why colour distortion matters when two crops share a colour histogram.
