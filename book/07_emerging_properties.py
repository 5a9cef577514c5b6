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
# # 07 Emerging properties: do self-supervised features find objects?
#
# *The paper's most striking figure shows a Vision Transformer, trained without a single label, outlining the
# objects in its images. A ResNet has no attention to look at; this chapter asks its feature map the same
# question, and puts a number on the answer.*
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/07_emerging_properties.ipynb)
#
# **Estimated time:** 75 minutes.

# %% [markdown]
# ## Tutorial objectives
#
# - Take the last convolutional feature map of a ResNet apart, one descriptor per 32-pixel cell, and make it
#   denser without retraining.
# - Colour every cell by the principal components of the descriptors (you write `pca_rgb`), and threshold
#   the first component into a foreground mask without labels.
# - Compute a class-agnostic saliency map from the feature norms, and meet the trap that makes every
#   convolutional network look centre-seeking.
# - Look at nearest neighbours, and score the masks against human masks of salient objects, beside a fixed
#   prior and a random network, with their intervals.
# - Compare a network trained with DINO against a random one, and say what a ResNet shows less clearly than a
#   ViT's attention.

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
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from dino_tutorial import analysis, checkpoint
from dino_tutorial.augment import denormalize, eval_transform
from dino_tutorial.data import (IMAGENETTE_CLASSES, imagenette, imagenette_root, load_rgb,
                                resolve_data_root, sample_image_paths)
from dino_tutorial.model import build_backbone
from dino_tutorial.notebook import check_exercise, glue, setup
from dino_tutorial.train import TrainConfig, set_seed

try:  # the figures are mostly photographs: JPEG keeps the notebook a fraction of the size PNG would
    from matplotlib_inline.backend_inline import set_matplotlib_formats
    set_matplotlib_formats("jpeg", pil_kwargs={"quality": 90})
except ImportError:
    pass
DEVICE = setup(seed=0, font_size=9, one_thread_on_small_cpu=True)


def as_image(tensor: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) image as an (H, W, 3) array in [0, 1] for imshow."""
    return denormalize(tensor.cpu()).permute(1, 2, 0).numpy()


def dim_outside(image: np.ndarray, mask: torch.Tensor) -> np.ndarray:
    """The image with the positions outside a (H, W) bool mask darkened."""
    return image * (0.3 + 0.7 * mask.cpu().numpy()[..., None])


# %% tags=["hide-input"]
# The data: full-size photographs (imagenet-samples) for the figures, Imagenette for the numbers.
try:
    PHOTO_PATHS, DATA_ROOT, problem = sample_image_paths(), imagenette_root(), None
except FileNotFoundError as err:
    problem = err
if problem:
    print(f"This chapter needs photographs and Imagenette: set DINO_DATA to a folder holding "
          f"imagenet-samples/ and imagenette-mini/, or run online so that Imagenette is downloaded "
          f"into {resolve_data_root()} ({problem})")
    raise SystemExit(1)
CLASS_NAMES = [IMAGENETTE_CLASSES.get(wnid, wnid) for wnid in imagenette("val").classes]
print(f"{len(PHOTO_PATHS)} photos for the figures; Imagenette at {DATA_ROOT.name}, "
      f"{len(CLASS_NAMES)} classes")

# %% [markdown]
# ## Section 1: attention maps, and what a ResNet has instead
#
# Figure 1 of the paper shows, for a ViT trained with DINO, where the `[CLS]` token of the last layer looks:
# its self-attention falls on the bird, the boat, the dog, and not on the background, although the network
# never saw a label or a mask. Figure 3 shows that different attention heads pick different parts of the
# object, and Section 4.2 turns the maps into masks by keeping the most-attended patches. The abstract adds a
# careful rider: this information "does not emerge as clearly with supervised ViTs, nor with convnets".
#
# This course trains a ResNet, and a ResNet has no attention. What it does have is its **last convolutional
# feature map**: the output of `layer4`, a tensor $(C, h, w)$ that the global average pool turns into the
# feature that k-NN and the DINO head use. The network downsamples by 32, so a 224-pixel image gives $h = w =
# 7$: each of the 49 positions holds a $C$-dimensional descriptor of a region of the image (centred on its
# 32 × 32 pixel cell, though it sees much more of the image than that cell). Everything in this chapter reads
# that map: `dino_tutorial.analysis.feature_map(backbone, images)` runs the ResNet up to `layer4` and stops
# before the pool.
#
# Two networks of the same architecture are compared: one **trained with DINO** (the teacher backbone of the
# course's reference run, the `small` preset trained on all of Imagenette in chapter 06 and stored with the book) and one **random**, initialised and
# never trained. A random convolutional network is a demanding baseline (chapter 05): whatever it shows comes
# from the architecture and the image statistics, not from learning.

# %%
SMALL = TrainConfig.from_preset("small")
BACKBONE_FILE = Path(os.environ.get("DINO_BACKBONE", "assets/imagenette_teacher_backbone.pth"))
BACKBONE_URL = ("https://github.com/dino-tutorial/dino-tutorial/raw/main/book/assets/"
                "imagenette_teacher_backbone.pth")


def fetch(path: Path, url: str):
    """`path` when it exists, else the file downloaded from `url` to `path`; None when that fails
    (offline)."""
    if path.is_file():
        return path
    download = Path(tempfile.mkdtemp()) / path.name
    try:
        with urllib.request.urlopen(url, timeout=15) as response, open(download, "wb") as out:
            shutil.copyfileobj(response, out)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(download, path)
        return path
    except Exception:  # no network, no such file: the chapter goes on without it
        return None
    finally:
        shutil.rmtree(download.parent, ignore_errors=True)


trained_file = fetch(BACKBONE_FILE, BACKBONE_URL)
if trained_file is not None:
    stored = checkpoint.load(trained_file)
    ARCH, SMALL_IMAGES = stored["arch"], stored["small_images"]
else:
    ARCH, SMALL_IMAGES = SMALL.arch, SMALL.small_images

set_seed(0)
random_backbone, FEATURE_DIM = build_backbone(ARCH, small_images=SMALL_IMAGES)
NETWORKS = {"random": random_backbone.eval()}
if trained_file is not None:
    NETWORKS["DINO"], _ = checkpoint.load_backbone(trained_file)
    print(f"DINO: the teacher backbone of the reference run ({ARCH}) after {stored['epochs']} "
          f"epochs, from {BACKBONE_FILE.name}")
else:
    print(f"No DINO-trained backbone at {BACKBONE_FILE} (and none could be downloaded): this run "
          f"shows the random network only. The comparison with the DINO-trained network appears "
          "when the file is there.")
NETWORKS = {name: net.to(DEVICE) for name, net in NETWORKS.items()}
print(f"random: {ARCH} initialised with seed 0, {FEATURE_DIM}-d features")

# %% [markdown]
# The figures use six full-size photographs, resized and centre-cropped as for evaluation. The subjects were
# picked to vary in size and place: a mask that simply covers the middle of the frame will not look right on
# all of them. At what size should the networks see them? A convolutional network accepts any size, but it
# knows objects at the scales it was trained on. The `small` preset resizes global views to
# {glue:text}`small_global_size` pixels, and each view covers {glue:text}`small_scale_range` of the image's
# area: a whole image therefore appears in training as if it were {glue:text}`small_global_size` to
# {glue:text}`small_largest` pixels wide. This chapter shows the photos at the middle of that range,
# {glue:text}`image_size` pixels. (The figures draw the same crops at 224 pixels, for the eye.)

# %%
low_scale, high_scale = SMALL.global_crops_scale
# a view of the smallest area, blown up to full size
largest = round(SMALL.global_size / low_scale ** 0.5)
IMAGE_SIZE = round((SMALL.global_size / high_scale ** 0.5 + largest) / 2)
DISPLAY_SIZE = 224
glue("small_global_size", SMALL.global_size, display=False)
glue("small_scale_range", f"{100 * low_scale:.0f}% to {100 * high_scale:.0f}%", display=False)
glue("small_largest", largest, display=False)
glue("image_size", IMAGE_SIZE, display=False)
FIGURE_PHOTOS = (["black_swan", "tench", "sea_lion", "Shetland_sheepdog", "water_tower",
                  "spaghetti_squash"])
chosen = [p for name in FIGURE_PHOTOS for p in PHOTO_PATHS if p.stem.endswith(name)]
chosen = chosen if len(chosen) == len(FIGURE_PHOTOS) else PHOTO_PATHS[:len(FIGURE_PHOTOS)]
PHOTO_TITLES = [p.stem.split("_", 1)[-1].replace("_", " ") for p in chosen]
photos = [load_rgb(p) for p in chosen]
# what the networks see
PHOTOS = torch.stack([eval_transform(IMAGE_SIZE)(photo) for photo in photos])
# the same crops, larger
SHOWN = torch.stack([eval_transform(DISPLAY_SIZE)(photo) for photo in photos])

for name, net in NETWORKS.items():
    maps = analysis.feature_map(net, PHOTOS.to(DEVICE)).cpu()
    with torch.no_grad():
        pooled = net(PHOTOS.to(DEVICE)).cpu()
    same = torch.allclose(maps.mean(dim=(2, 3)), pooled, atol=1e-4)
    print(f"{name}: images {tuple(PHOTOS.shape)} -> feature maps {tuple(maps.shape)}; "
          f"their spatial mean equals the pooled feature: {same}")

# %% [markdown]
# At {glue:text}`image_size` pixels the map has only {glue:text}`original_map_size` positions: too few to say
# where anything is. There are two ways to get more. The first is a larger image: at 224 pixels the map has
# 7 × 7 positions, but the network then sees every object several times larger than in training. The second
# keeps the image and samples the same filters more densely. `analysis.densify(backbone, output_stride=16)`
# sets the stride of `layer4` to 1 and spreads the taps of its 3 × 3 convolutions apart by the factor the
# stride would have skipped (a *dilated*, or "à trous", convolution, as in DeepLab; Chen et al. 2017);
# `output_stride=8` does the same to `layer3` as well. No weight changes. The map becomes denser, and it
# contains the original map: every second (output stride 16) or fourth (output stride 8) position of the dense
# map is exactly a position of the original one, and the positions in between are what the network computes
# for the image shifted by a fraction of 32 pixels. The cell checks that.

# %%
OUTPUT_STRIDE = 16
DENSE = {name: analysis.densify(net, OUTPUT_STRIDE) for name, net in NETWORKS.items()}
MAPS = {name: analysis.feature_map(net, PHOTOS.to(DEVICE)).cpu() for name, net in DENSE.items()}
step = 32 // OUTPUT_STRIDE
for name, maps in MAPS.items():
    original = analysis.feature_map(NETWORKS[name], PHOTOS.to(DEVICE)).cpu()
    contained = torch.allclose(maps[..., ::step, ::step], original, atol=1e-4, rtol=1e-4)
    print(f"{name}, output stride {OUTPUT_STRIDE}: feature maps {tuple(maps.shape)}; positions 0, "
          f"{step}, {2 * step}, ... equal the original map: {contained}")
glue("original_map_size", " × ".join(map(str, original.shape[-2:])), display=False)
h, w = MAPS["random"].shape[-2:]
glue("map_size", f"{h} × {w}", display=False)
glue("cell_pixels", f"{DISPLAY_SIZE * OUTPUT_STRIDE // IMAGE_SIZE}", display=False)
glue("feature_dim", FEATURE_DIM, display=False)
glue("output_stride", OUTPUT_STRIDE, display=False)

# %% [markdown]
# The figure shows what each choice gives for one photo: the first three principal components of the map
# (Section 2 explains them; here they only show how many positions there are and how they vary), for three
# output strides at {glue:text}`image_size` pixels and for the original network at 224 pixels. The rest of
# the chapter uses output stride {glue:text}`output_stride`: a twice denser map whose new positions are
# still close to what the network saw in training (Think! 1 asks why not denser, or larger).

# %% tags=["hide-input"]
SETTINGS = [(IMAGE_SIZE, 32), (IMAGE_SIZE, 16), (IMAGE_SIZE, 8), (DISPLAY_SIZE, 32)]
example = PHOTO_TITLES.index("sea lion") if "sea lion" in PHOTO_TITLES else 0
fig, axes = (plt.subplots(len(NETWORKS), len(SETTINGS) + 1, figsize=(9, 1.9 * len(NETWORKS)),
                          squeeze=False))
for row, (name, net) in enumerate(NETWORKS.items()):
    axes[row, 0].imshow(as_image(SHOWN[example]))
    axes[row, 0].set_ylabel(name)
    for col, (size, stride) in enumerate(SETTINGS, start=1):
        images = torch.stack([eval_transform(size)(photo) for photo in photos]).to(DEVICE)
        maps = analysis.feature_map(analysis.densify(net, stride), images).cpu()
        colours = analysis.upsample(analysis.pca_rgb(maps), (DISPLAY_SIZE, DISPLAY_SIZE))[example]
        axes[row, col].imshow(colours)
        axes[row, col].set_title(f"{size} px, stride {stride}: {maps.shape[-2]} × {maps.shape[-1]}")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Think! 1
#
# Why not output stride 8, or 4, for an even denser map? And why not simply show the network 224-pixel images?
#
# ```{admonition} Answer
# :class: dropdown
# A denser map is larger but hardly sharper. Each step of `densify` quadruples the positions of the last
# stages (and their cost), but neighbouring positions then describe the same region shifted by a few pixels,
# so they differ little; and the positions added along the bottom and right edges describe images shifted
# partly out of the frame, mostly zero padding. A strided network is also not exactly shift-invariant
# (Zhang 2019): the in-between positions are valid responses, but to slightly different images, and
# averaging them changes the pooled feature.
# A larger image keeps all positions "trained", but every object then appears several times larger than in
# any training view, and a network's features are tuned to the scales it was trained on. Both roads exist to
# trade resolution for faithfulness; the figure shows the map for each.
# ```


# %% tags=["hide-input"]
def plot_rows(rows, titles, height=1.9):
    """A grid of images: `rows` is a list of (row label, list of arrays, imshow keyword arguments).
    """
    width = 1.9 * len(titles) + 0.6
    shrink = min(1.0, 9 / width)  # at most 9 inches: the width of the book's column
    fig, axes = plt.subplots(len(rows), len(titles), squeeze=False,
                             figsize=(shrink * width, shrink * height * len(rows)))
    for r, (label, images, kwargs) in enumerate(rows):
        for c, image in enumerate(images):
            axes[r, c].imshow(image, **kwargs)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(titles[c])
        axes[r, 0].set_ylabel(label)
    fig.tight_layout()
    plt.show()


# %% [markdown]
# ## Section 2: colour the cells by their principal components
#
# A {glue:text}`feature_dim`-dimensional descriptor cannot be looked at, but its main directions of variation can. Stack the
# descriptors of **all positions of all images** into one matrix $X$ of shape $(B h w, C)$, subtract the
# mean row, and find the principal directions: the right singular vectors $v_1, v_2, \dots$ of the centred
# matrix ($X = U S V^\top$), ordered by how much variance they explain. Projecting every position on the
# first three, $p_k = (x - \bar x) \cdot v_k$, and scaling each projection to $[0, 1]$ gives three numbers per
# position: a colour. Positions that the network describes alike get alike colours, in every image at
# once, because the directions are shared by the batch. This is the visualisation that DINOv2 (Oquab et al.
# 2023, Figure 1) uses for its patch features.
#
# ### Coding exercise 1: `pca_rgb`
#
# Write `pca_rgb(feature_maps, n_components=3)`: from $(B, C, h, w)$ feature maps to $(B, h, w, n)$ values in
# $[0, 1]$. Scale each component by its minimum and maximum over the whole batch. (The sign of a singular
# vector is arbitrary: the check accepts either sign of each component.)

# %% tags=["exercise"]
def pca_rgb(feature_maps: torch.Tensor, n_components: int = 3) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w, n_components): principal components of all positions, scaled to [0,
    1]."""
    B, C, h, w = feature_maps.shape
    #################################################################
    # Fill in the blanks (...), then remove this line.
    raise NotImplementedError("pca_rgb still has blanks (...)")
    #################################################################
    # (B * h * w, C): one row per position, the images one after another
    x = ...
    x = ...                      # centred: the mean row subtracted
    _, _, vt = torch.linalg.svd(x, full_matrices=False)
    p = ...                      # (B * h * w, n_components): projections on the first rows of vt
    p = ...                      # each column scaled to [0, 1] by its minimum and maximum
    return p.reshape(B, h, w, n_components)


# Uncomment to try your function:
# print(tuple(pca_rgb(MAPS["random"]).shape))

# %% tags=["solution", "hide-cell"]
# Solution to exercise 1
def pca_rgb(feature_maps: torch.Tensor, n_components: int = 3) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w, n_components): principal components of all positions, scaled to [0,
    1]."""
    B, C, h, w = feature_maps.shape
    x = feature_maps.permute(0, 2, 3, 1).reshape(-1, C)
    x = x - x.mean(dim=0)
    _, _, vt = torch.linalg.svd(x, full_matrices=False)
    p = x @ vt[:n_components].T
    p = (p - p.min(dim=0).values) / (p.max(dim=0).values - p.min(dim=0).values)
    return p.reshape(B, h, w, n_components)


print(tuple(pca_rgb(MAPS["random"]).shape))


# %%
def check_pca_rgb(pca_fn):
    """Equal to dino_tutorial.analysis.pca_rgb up to the sign of each component, on the photos'
    feature maps."""
    for name, maps in MAPS.items():
        for n in (1, 3):
            yours, reference = pca_fn(maps, n), analysis.pca_rgb(maps, n)
            assert yours.shape == reference.shape, (f"expected shape {tuple(reference.shape)}, got "
                                                    f"{tuple(yours.shape)}")
            for k in range(n):
                a, b = yours[..., k], reference[..., k]
                assert (torch.allclose(a, b, atol=1e-3) or torch.allclose(a, 1 - b, atol=1e-3)), (
                    f"{name}: component {k + 1} differs from dino_tutorial.analysis.pca_rgb (even "
                    "with its sign flipped)")
    print("Correct: your colours match dino_tutorial.analysis.pca_rgb")


check_exercise(1, check_pca_rgb, pca_rgb)

# %% tags=["hide-input"]
DISPLAY = (DISPLAY_SIZE, DISPLAY_SIZE)
photo_row = [("photo", [as_image(p) for p in SHOWN], {})]
pca_rows = [(f"{name}: PCA colours", list(analysis.upsample(analysis.pca_rgb(maps), DISPLAY)), {})
            for name, maps in MAPS.items()]
plot_rows(photo_row + pca_rows, PHOTO_TITLES)

# %% [markdown]
# Each network's first three principal components, computed over the positions of all six photos and shown
# as red, green and blue, then upsampled bilinearly from {glue:text}`map_size` positions to the image.
#
# What to look for: for a network whose features had learnt objects, a colour would mean a kind of thing, and
# the animals of different photos would share a hue that their backgrounds do not. What the figure shows
# instead depends on where the variance of the descriptors lies. Variance *between* photos (one photo's
# positions all differ from another's) makes the colours change from photo to photo; variance *within* a
# photo makes them change across it. The cell splits the total variance of each network's descriptors in
# these two parts.

# %%
shares = {}
for name, maps in MAPS.items():
    per_image_mean = maps.mean(dim=(2, 3), keepdim=True)                      # (B, C, 1, 1)
    within = ((maps - per_image_mean) ** 2).sum().item()
    between = ((per_image_mean - maps.mean(dim=(0, 2, 3), keepdim=True)) ** 2).sum().item() * h * w
    shares[name] = f"{100 * between / (between + within):.0f}%"
    print(f"{name}: {100 * between / (between + within):.0f}% of the variance of the descriptors "
          f"lies between the photos, {100 * within / (between + within):.0f}% within them")
glue("between_shares", " and ".join(f"{share} for the {name} network" for name,
                                    share in shares.items()),
     display=False)

# %% [markdown]
# The share of the variance that lies between photos is {glue:text}`between_shares`. The larger it is, the
# more the principal components describe *which photo* a position belongs to rather than *where in the photo*
# it is, and the less a component shared by the batch can say about the objects inside each photo.

# %% [markdown]
# ## Section 3: a foreground mask from the first component
#
# If one direction of the descriptor space separates objects from backgrounds, it is likely the first
# principal direction: in photographs of single objects, object against background is the largest
# difference there is between positions. Thresholding the first projection $p_1$ at zero, the mean of all
# positions, splits the positions in two. This is the co-localisation method of Wei et al. (2017, Deep
# Descriptor Transforming), which finds the common object of a set of images with the first principal
# component of a pre-trained network's features.
#
# Which side is the object? A principal direction has no sign, so a rule must choose. `analysis.foreground_mask`
# offers two: `orient="minority"` takes the smaller side of the batch's positions (an object usually covers
# less of a photo than its surroundings); `orient="centre"` takes the side that is larger in the middle of the
# frames. This chapter uses the minority rule, for a reason that the reference page {doc}`11_class_evidence` makes clear.
#
# The first principal direction is the largest difference between *any* two groups of positions, and the
# previous cell showed that much of the variance can lie between whole photos. Then the first component
# separates photos, not objects: a photo gets an empty mask or a full one. The cell counts those.

# %%
counts = {}
for name, maps in MAPS.items():
    masks = analysis.foreground_mask(maps, method="pca", orient="minority", centre="batch")
    share = masks.flatten(1).float().mean(dim=1)
    degenerate = int(((share == 0) | (share == 1)).sum())
    counts[name] = f"{degenerate} of {len(share)} photos from the {name} network"
    print(f"{name}, centred on the batch mean: foreground share of each photo: "
          f"{', '.join(f'{100 * x:.0f}%' for x in share)} ({degenerate} empty or full)")
glue("degenerate", " and ".join(counts.values()), display=False)

# %% [markdown]
# With the batch mean subtracted, an empty or full mask goes to {glue:text}`degenerate`. The remedy is to subtract each photo's
# own mean descriptor before the principal components are computed (`centre="image"`): differences between
# photos then no longer count, and the first direction is the largest contrast *within* photos, shared by the
# batch. The masks from here on are computed that way.

# %%
MASKS = {name: analysis.foreground_mask(maps, method="pca", orient="minority", centre="image")
         for name, maps in MAPS.items()}
for name, masks in MASKS.items():
    share = ", ".join(f"{100 * m.float().mean():.0f}%" for m in masks)
    print(f"{name}, centred per photo: foreground share of each photo's positions: {share}")

# %% tags=["hide-input"]
mask_rows = [(f"{name}: PCA mask", [dim_outside(as_image(p), m) for p, m in
              zip(SHOWN, analysis.upsample(MASKS[name], DISPLAY))], {}) for name in MASKS]
plot_rows(photo_row + mask_rows, PHOTO_TITLES)

# %% [markdown]
# The photos with the positions outside each mask darkened. Each mask is a set of whole cells of the
# {glue:text}`map_size` grid ({glue:text}`cell_pixels` pixels wide in the figure): a ResNet's masks are coarse
# whatever its weights.
#
# ### Think! 2
#
# The first principal direction is computed over a *batch*, even with each photo centred on its own mean.
# What changes if the batch holds photos of a single class (six swans) instead of six different subjects? And
# what if it holds one photo only?
#
# ```{admonition} Answer
# :class: dropdown
# With six swans, the largest difference between positions is likely "swan or not swan", and the component
# becomes a swan detector shared by the batch: that is the co-localisation setting of Deep Descriptor
# Transforming, where the common object of a set is the target. With six different subjects, the component
# must capture what objects have in common against backgrounds, which is harder and may instead capture
# another large contrast (bright against dark, sky against ground, border against middle). With one photo,
# the component separates the two most different groups of positions of that photo, which often but not
# always are object and background. In every case the orientation rule decides which side is called
# "foreground", and a wrong choice inverts the mask.
# ```

# %% [markdown]
# ## Section 4: saliency from the feature norms, and the frame
#
# A second label-free reading needs no batch and no principal components. After the last ReLU every feature
# is non-negative, so the L2 norm of a position's descriptor, $\|x_{ij}\|$, measures how strongly the
# network responds there overall. Scaled to $[0, 1]$ per image, it is a class-agnostic **saliency** map;
# keeping the positions above its mean gives a second mask. Wei et al. (2017, Selective Convolutional
# Descriptor Aggregation) used this recipe (with the sum over channels) to find the object in fine-grained
# retrieval with a supervised network.
#
# The package's `analysis.saliency(feature_maps)` computes it: $(B, C, h, w) \to (B, h, w)$, the norm over
# the channels, scaled per image so that its smallest value is 0 and its largest 1.

# %% tags=["hide-input"]
NORM_MASKS = {name: analysis.foreground_mask(maps, method="norm") for name, maps in MAPS.items()}
saliency_rows = []
for name, maps in MAPS.items():
    heat = analysis.upsample(analysis.saliency(maps), DISPLAY)
    big_masks = analysis.upsample(NORM_MASKS[name], DISPLAY)
    saliency_rows.append((f"{name}: saliency", list(heat),
                          {"cmap": "inferno", "vmin": 0, "vmax": 1}))
    saliency_rows.append((f"{name}: norm mask", [dim_outside(as_image(p), m) for p,
                                                 m in zip(SHOWN, big_masks)], {}))
plot_rows(photo_row + saliency_rows, PHOTO_TITLES)

# %% [markdown]
# The saliency maps (bright: large feature norm) and the masks that keep the positions above each image's
# mean saliency. Both networks' saliency tends to be brighter towards the middle of the frame and darker at
# its edges. Is that the networks finding objects in the middle of photos, or something else? A photo cannot tell, because photographers centre their subjects. An
# image with no subject can: the next cell feeds each network images of pure noise, identical in
# distribution at every place, and averages their feature norms per position.

# %%
set_seed(0)
noise = torch.randn(32, 3, IMAGE_SIZE, IMAGE_SIZE)
ring = torch.ones(h, w, dtype=torch.bool)
ring[1:-1, 1:-1] = False                                       # the outermost positions of the map
CENTRE_BOX = torch.zeros(h, w, dtype=torch.bool)
CENTRE_BOX[h // 4:h - h // 4, w // 4:w - w // 4] = True        # the central half of each axis
NOISE_NORMS = {}
for name, net in DENSE.items():
    # (h, w)
    NOISE_NORMS[name] = analysis.feature_map(net, noise.to(DEVICE)).cpu().norm(dim=1).mean(dim=0)
    ratio = (NOISE_NORMS[name][CENTRE_BOX].mean() / NOISE_NORMS[name][ring].mean()).item()
    glue(f"noise_ratio_{name}", f"{ratio:.2f}", display=False)
    print(f"{name}: on noise, the mean feature norm of the central positions is {ratio:.2f} times "
          f"that of the border positions")

fig, axes = plt.subplots(1, len(NOISE_NORMS), figsize=(min(9, 3.9 * len(NOISE_NORMS)), 2.9),
                         squeeze=False)
for ax, (name, norms) in zip(axes[0], NOISE_NORMS.items()):
    image = ax.imshow(norms, cmap="inferno")
    fig.colorbar(image, ax=ax, label="mean feature norm")
    ax.set(title=f"{name}: 32 noise images", xlabel="position (column)", ylabel="position (row)")
fig.tight_layout()
plt.show()

# %% [markdown]
# On noise, where nothing distinguishes one place from another, the random network's central positions
# respond {glue:text}`noise_ratio_random` times as strongly as its border positions. Some of the saliency's
# preference for the middle is a property of the network's *frame*, not of the photos.
#
# ### Think! 3
#
# Where does the frame come from? Every convolution applies the same weights at every position, so a
# convolutional network should treat all positions alike.
#
# ```{admonition} Answer
# :class: dropdown
# Except at the edges. Each convolution pads its input with zeros, so a position near the border sums over
# fewer real inputs than one in the middle. After one layer the difference is one pixel wide; after the
# dozens of layers of a ResNet, whose last positions see a region far larger than the image (several hundred
# pixels), every position of the last map sees some padding, and the central ones see the least. With
# non-negative activations after each ReLU, fewer real inputs mean smaller activations, so the norm falls off
# towards the border. The network thereby knows where it is in the frame: Islam et al. (2020) and Kayhan and
# van Gemert (2020) show that convolutional networks use padding to encode absolute position. Training can
# use or suppress this signal, but it is there at initialisation, and any method that rewards "central"
# masks rewards it too.
# ```

# %% [markdown]
# ## Section 5: nearest neighbours
#
# The next sections need a labelled set: Imagenette, the training images as a memory bank and the
# validation images as queries (chapter 05), at {glue:text}`image_size` pixels. Each network turns every image
# into its dense feature map once; the rest of the chapter only pools and compares those maps.

# %%
BANK_PER_CLASS, QUERY_PER_CLASS = (None, None) if DEVICE.type == "cuda" else (100, None)


def load_split(split: str, per_class):
    dataset = imagenette(split, transform=eval_transform(IMAGE_SIZE), per_class=per_class)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    dataset.transform = eval_transform(DISPLAY_SIZE)           # for drawing a few of them later
    return images, torch.tensor(dataset.targets), dataset


def feature_maps_of(net, images, batch_size=100):
    return torch.cat([analysis.feature_map(net, images[i:i + batch_size].to(DEVICE)).cpu()
                      for i in range(0, len(images), batch_size)])


bank_images, bank_labels, bank_dataset = load_split("train", BANK_PER_CLASS)
query_images, query_labels, query_dataset = load_split("val", QUERY_PER_CLASS)
BANK = {name: feature_maps_of(net, bank_images) for name, net in DENSE.items()}
QUERIES = {name: feature_maps_of(net, query_images) for name, net in DENSE.items()}
print(f"memory bank: {len(bank_labels)} training images, queries: {len(query_labels)} validation "
      f"images; feature maps {tuple(BANK['random'].shape[1:])} each")

# %% [markdown]
# For each query, the figure shows its five nearest training images by cosine similarity of the pooled
# features (the mean of the dense map, close to the whole-image feature of chapter 05), with each image's PCA
# mask drawn on it: the principal direction is computed over all bank and query positions of that network
# together, each image centred on its own mean. A neighbour
# is framed green when its class matches the query's. The question is not only *whether* the neighbours
# match, but *what* they share with the query: the object, the background, or the layout.

# %% tags=["hide-input"]
ALL_MASKS = {}   # PCA masks of every bank and query image, one principal direction per network
for name in NETWORKS:
    masks = analysis.foreground_mask(torch.cat([BANK[name], QUERIES[name]]), method="pca",
                                     orient="minority",
                                     centre="image")
    ALL_MASKS[name] = (masks[:len(bank_labels)], masks[len(bank_labels):])


def nearest(name, k=5):
    """(similarities, indices), both (queries, k), of the k nearest bank images by cosine
    similarity."""
    bank = F.normalize(BANK[name].mean(dim=(2, 3)), dim=1)
    queries = F.normalize(QUERIES[name].mean(dim=(2, 3)), dim=1)
    return (queries @ bank.T).topk(k, dim=1)


def show_neighbours(name, query_ids, k=5):
    similarity, index = nearest(name, k)
    bank_masks, query_masks = (analysis.upsample(m, DISPLAY) for m in ALL_MASKS[name])
    fig, axes = plt.subplots(len(query_ids), k + 1, figsize=(1.5 * (k + 1), 1.65 * len(query_ids)))
    for row, q in enumerate(query_ids):
        axes[row, 0].imshow(dim_outside(as_image(query_dataset[q][0]), query_masks[q]))
        axes[row, 0].set_title(f"query: {CLASS_NAMES[query_labels[q]]}", fontweight="bold")
        for col in range(k):
            i = index[q, col].item()
            same = bank_labels[i] == query_labels[q]
            colour = "tab:green" if same else "tab:red"
            ax = axes[row, col + 1]
            ax.imshow(dim_outside(as_image(bank_dataset[i][0]), bank_masks[i]))
            ax.set_title(f"{CLASS_NAMES[bank_labels[i]]}\ns = {similarity[q, col]:.3f}",
                         fontsize=9, color=colour)  # two lines: long names do not collide
            plt.setp(list(ax.spines.values()), color=colour, lw=3)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{name} network: five nearest training images, PCA masks drawn", fontsize=10)
    fig.tight_layout()
    plt.show()


# one query from each of four classes: English springer, church, gas pump, parachute
QUERY_IDS = [int((query_labels == c).nonzero()[2]) for c in (1, 4, 7, 9)]
for name in NETWORKS:
    show_neighbours(name, QUERY_IDS)

# %%
for name in NETWORKS:
    similarity, index = nearest(name)
    agreement = 100 * (bank_labels[index] == query_labels[:, None]).float().mean().item()
    glue(f"agreement_{name}", f"{agreement:.1f}", display=False)
    print(f"{name}: {agreement:.1f}% of the five nearest training images share the query's class "
          f"(chance: {100 / len(CLASS_NAMES):.0f}%)")

# %% [markdown]
# Over all {glue:text}`n_queries` queries, {glue:text}`agreement_random`% of the random network's five
# nearest neighbours share the query's class. Its neighbours share colour, brightness and composition: a
# sky-filled frame finds other sky-filled frames, whether they hold a church or a parachute.
# {glue:text}`trained_agreement_sentence`

# %% tags=["remove-cell"]
glue("n_queries", len(query_labels), display=False)
if "DINO" in NETWORKS:
    dino_agreement = (bank_labels[nearest("DINO")[1]] == query_labels[:, None]).float().mean()
    sentence = ("The DINO-trained network's neighbours share the query's class in "
                f"{100 * dino_agreement:.1f}% of cases.")
else:
    sentence = ("(The DINO-trained network's neighbours appear here when its backbone file is "
                "present.)")
glue("trained_agreement_sentence", sentence, display=False)

# %% [markdown]
# ## Section 6: the masks against human masks
#
# Imagenette has class labels but no segmentations; whether the labels alone can score a mask, with a test that
# the frame cannot fool, is the subject of the reference page {doc}`11_class_evidence`. Human masks answer the
# question directly.
#
# The paper scores its attention maps by the Jaccard similarity between the thresholded map and a human
# segmentation (Section 4.2.1, Table 5 and Fig. 4). The same can be done for the masks of this chapter with
# `duts-te-500`: 500 photos of the DUTS test set (Wang et al. 2017), each with a human mask of its salient
# object. `analysis.saliency_jaccard` resizes every photo to {glue:text}`mask_input_size` px, takes the label-free
# mask of Section 3 (`pca`) or 4 (`norm`), brings it back to the photo's size and computes the Jaccard index
# with the human mask. The fixed prior is a centred ellipse spanning 60% of the width and height: it knows
# nothing about the photo, only that photographers centre their subject. Each mean has a 95% bootstrap interval
# over the 500 photos. Scoring three predictors on 500 photos takes minutes on a CPU, so the numbers were
# measured once by `tools/course_baselines.py --only masks` and are read from `results/baselines.json`; the
# cell after shows the masks of a few of the photos, computed here.

# %%
import json

baselines_file = Path("results/baselines.json")
baselines = json.loads(baselines_file.read_text()) if baselines_file.is_file() else {}
mask_scores = {key.split("/", 1)[1]: value for key, value in baselines.items()
               if key.startswith("masks/")}
# the reference network's k-NN and a random network's, for the text above
glue("reference_knn", f"{baselines['trained/imagenette']['top1']:.0f}" if baselines
     else "(not measured)", display=False)
glue("random_knn", f"{baselines['random/imagenette']['mean']:.0f}" if baselines
     else "(not measured)", display=False)
if not mask_scores:
    print("results/baselines.json has no mask scores: run tools/course_baselines.py --only masks")
else:
    width = max(map(len, mask_scores))
    for label, score in mask_scores.items():
        print(f"{label:<{width}}  mean Jaccard {score['mean_jaccard']:.3f}  [{score['low']:.3f}, "
              f"{score['high']:.3f}]  ({score['images']} photos)")
prior = mask_scores.get("centred ellipse (60% of width and height)")
learnt = {label: score for label, score in mask_scores.items() if not label.startswith("centred")}
best_label = max(learnt, key=lambda label: learnt[label]["mean_jaccard"]) if learnt else None
glue("mask_input_size", mask_scores[best_label]["input_size"] if best_label else 128, display=False)
if prior and best_label:
    best = learnt[best_label]
    relation = ("above the prior, outside its interval" if best["low"] > prior["high"] else
                "below the prior, outside its interval" if best["high"] < prior["low"] else
                "level with the prior: the intervals overlap")
    dino = {label: score for label, score in learnt.items() if label.startswith("DINO")}
    random_ = {label: score for label, score in learnt.items() if label.startswith("random")}
    best_dino = max(dino.values(), key=lambda score: score["mean_jaccard"])
    best_random = max(random_.values(), key=lambda score: score["mean_jaccard"])
    glue("mask_prior", f"{prior['mean_jaccard']:.3f}", display=False)
    glue("mask_best", f"{best_label} ({best['mean_jaccard']:.3f})", display=False)
    glue("mask_relation", relation, display=False)
    glue("mask_dino_vs_random",
         ("better than" if min(s["low"] for s in [best_dino]) > best_random["high"] else
          "worse than" if best_dino["high"] < best_random["low"] else "not distinguishable from"),
          display=False)
else:
    for name in ("mask_prior", "mask_best", "mask_relation", "mask_dino_vs_random"):
        glue(name, "(not measured)", display=False)

# %% tags=["hide-input"]
from dino_tutorial.analysis import centred_ellipse, saliency_pairs

SALIENCY_SET = resolve_data_root() / "duts-te-500"
if not (SALIENCY_SET / "images").is_dir():
    print(f"duts-te-500 is not under the data folder, so its masks are not drawn. It is a "
          f"500-photo subset of the DUTS test set (saliencydetection.net/duts): put its images/ "
          f"and masks/ in {SALIENCY_SET.name}/.")
else:
    pairs = saliency_pairs(SALIENCY_SET)[::100][:5]
    size = 128
    photos_s = [load_rgb(i) for i, _ in pairs]
    truths = [np.asarray(load_rgb(m).convert("L")) > 127 for _, m in pairs]
    batch = (torch.stack([eval_transform(size, resize_size=size)(p.resize((size, size)))
                          for p in photos_s]).to(DEVICE))
    rows = ["photo", "human mask", "centred ellipse"] + [f"{name}, pca" for name in NETWORKS]
    fig, axes = plt.subplots(len(rows), len(pairs), figsize=(1.3 * len(pairs), 1.1 * len(rows)))
    masks_by_row = {"centred ellipse": [centred_ellipse(*t.shape).numpy() for t in truths]}
    for name, net in NETWORKS.items():
        found = analysis.foreground_mask(analysis.feature_map(net, batch).cpu(), method="pca")
        masks_by_row[f"{name}, pca"] = ([analysis.upsample(m[None], t.shape)[0].numpy() for m,
                                         t in zip(found, truths)])
    for col, (photo, truth) in enumerate(zip(photos_s, truths)):
        axes[0, col].imshow(photo)
        axes[1, col].imshow(truth, cmap="gray")
        for row, label in enumerate(rows[2:], start=2):
            mask = masks_by_row[label][col]
            iou = (mask & truth).sum() / max((mask | truth).sum(), 1)
            axes[row, col].imshow(mask, cmap="gray")
            axes[row, col].set_title(f"J = {iou:.2f}", fontsize=9)
    for row, label in enumerate(rows):
        axes[row, 0].set_ylabel(label, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("duts-te-500: human masks and label-free masks (J: Jaccard index)", fontsize=9)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# On the 500 photos the fixed prior scores a mean Jaccard of {glue:text}`mask_prior`. The best label-free mask is
# {glue:text}`mask_best`, {glue:text}`mask_relation`; the DINO network's best mask is
# {glue:text}`mask_dino_vs_random` the random network's best. This is the honest measurement behind the pictures
# of this chapter.

# %% [markdown]
# ## Section 7: the authors' DINO ResNet-50
#
# The authors released the ResNet-50 they trained with DINO on ImageNet for 800 epochs (75.3% linear top-1,
# Table 2). When this chapter runs online, the next cell loads it through `torch.hub` and draws the same
# figures for it and for a random ResNet-50. It was trained at 224 pixels, so that is the size it is shown,
# with `densify` at output stride 16 for a 14 × 14 map. Offline, the cell says so in one line and the chapter
# goes on.

# %% tags=["nbval-ignore-output"]
def load_authors_resnet50():
    """The authors' DINO ResNet-50 backbone (fc = identity) from torch.hub, or None when it cannot
    be loaded."""
    try:
        return (torch.hub.load("facebookresearch/dino:main", "dino_resnet50", trust_repo=True,
                               verbose=False))
    except Exception:  # offline, or the hub is unreachable
        return None


authors_resnet50 = load_authors_resnet50()
if authors_resnet50 is None:
    print("Skipped: the authors' DINO ResNet-50 could not be loaded through torch.hub (offline?).")
else:
    set_seed(0)
    random_resnet50, _ = build_backbone("resnet50")
    big = {"DINO ResNet-50": authors_resnet50, "random ResNet-50": random_resnet50}
    rows = [("photo", [as_image(p) for p in SHOWN], {})]
    for name, net in big.items():
        maps = (analysis.feature_map(analysis.densify(net.eval(), 16).to(DEVICE),
                                     SHOWN.to(DEVICE)).cpu())
        masks = analysis.upsample(analysis.foreground_mask(maps, centre="image"), DISPLAY)
        rows += [(f"{name}\nPCA colours", list(analysis.upsample(analysis.pca_rgb(maps), DISPLAY)),
                  {}),
                 (f"{name}\nPCA mask", [dim_outside(as_image(p), m) for p, m in zip(SHOWN, masks)],
                  {}),
                 (f"{name}\nsaliency", list(analysis.upsample(analysis.saliency(maps), DISPLAY)),
                  {"cmap": "inferno", "vmin": 0, "vmax": 1})]
    plot_rows(rows, PHOTO_TITLES)

# %% [markdown]
# When the figure is there, read it row against row rather than against an ideal. Even the random
# ResNet-50 draws outlines: its early layers respond to local contrast, so edges and bright regions
# raise the feature norm wherever they are. What training should add is *grouping*: one colour for the whole
# animal and another for its background, in every photo, and a mask that covers the object rather than its
# edges or the middle of the frame.

# %% [markdown]
# ## Section 8: what a ResNet shows less clearly than a ViT
#
# Even a well-trained ResNet gives coarser and murkier answers to the question of this chapter than a DINO
# ViT does, for reasons that are built into the architecture:
#
# - **Resolution.** The last map of a ResNet has one position per 32 pixels (7 × 7 at 224 pixels); a ViT-S/8
#   has one token per 8 pixels (28 × 28), and its masks follow contours that a ResNet's blocks cannot. A
#   larger image changes the scale the network sees; `densify` samples the map as densely as the ViT's, but
#   each of its positions still summarises a wide, blurred neighbourhood, so neighbouring positions differ
#   little and boundaries stay soft.
# - **No query.** The ViT's map is the attention of one token, the `[CLS]` token whose output is the image
#   feature, over all patches: it says which patches that feature is made of. A ResNet's image feature is a
#   plain average of all positions, so every position counts equally, and "where the network looks" must be
#   inferred indirectly, through principal components or norms, as here.
# - **No heads.** The ViT has several attention heads per layer, and the paper's Figure 3 shows them
#   specialising in different parts of the object. A ResNet offers no such decomposition.
# - **A frame.** Zero padding gives every convolutional map a border-to-centre gradient (Section 4) that
#   mixes with whatever the features say about objects. A ViT tells positions apart only through its
#   position embeddings, which DINO learns along with everything else.
#
# The paper's own summary is that the segmentation property "does not emerge as clearly" with convnets: not
# that a ResNet learns nothing about objects, but that one must look harder, and check against the frame,
# to see it.

# %% [markdown]
# ## Summary
#
# - A ResNet's last convolutional feature map, $(C, h, w)$ with one position per 32 pixels, is what it
#   offers in place of the attention maps of the paper's Figures 1 and 3; its spatial mean is the feature
#   that k-NN and the DINO head use. Dilating instead of striding (`densify`) makes it denser without
#   retraining and without changing the scale the network sees.
# - Principal components of all positions of a batch, shown as colours, reveal what the network describes
#   alike; the first component thresholded at zero gives a label-free foreground mask (Deep Descriptor
#   Transforming), and the feature norms give a saliency map (SCDA).
# - Zero padding gives every convolutional network a frame: on pure noise, the random network's central
#   positions respond {glue:text}`noise_ratio_random` times as strongly as its border positions. Any test
#   that rewards central masks rewards the frame.
# - Against the human masks of 500 DUTS photos, the best label-free mask, {glue:text}`mask_best`, lies
#   {glue:text}`mask_relation` (the prior: a centred ellipse that knows nothing of the photo,
#   {glue:text}`mask_prior`), and the DINO network's masks are {glue:text}`mask_dino_vs_random` the random
#   network's: at this scale, class evidence emerges in the features, object outlines do not.
#
# **Next.** {doc}`08_full_training` trains the ResNet-50 of the paper on ImageNet, the network whose maps
# Section 7 shows when it runs online.
#
# **Further reading.**
# - Caron et al. 2021, *Emerging Properties in Self-Supervised Vision Transformers* (arXiv 2104.14294):
#   Figures 1 and 3 (attention maps), Section 4.2 (properties of the features: retrieval, copy detection,
#   segmentation masks, video segmentation).
# - Wei, Zhang, Li, Shen, Wu and Zhou 2017, *Deep Descriptor Transforming for Image Co-Localization* (IJCAI):
#   the first principal component of convolutional descriptors as an object detector.
# - Wei, Luo, Wu and Zhou 2017, *Selective Convolutional Descriptor Aggregation for Fine-Grained Image
#   Retrieval* (IEEE Transactions on Image Processing): the summed activation map thresholded at its mean.
# - Islam, Jia and Bruce 2020, *How Much Position Information Do Convolutional Neural Networks Encode?* (ICLR),
#   and Kayhan and van Gemert 2020, *On Translation Invariance in CNNs* (CVPR): padding tells a convolutional
#   network where it is.
# - Chen, Papandreou, Kokkinos, Murphy and Yuille 2017, *DeepLab* (IEEE TPAMI): atrous (dilated) convolution
#   for dense feature maps from a classification network; Zhang 2019, *Making Convolutional Networks
#   Shift-Invariant Again* (ICML), on what striding does to shifts.
# - Oquab et al. 2023, *DINOv2: Learning Robust Visual Features without Supervision* (arXiv 2304.07193),
#   Figure 1: principal components of patch features as colours, with a foreground found by thresholding the
#   first.
# - Siméoni et al. 2021, *Localizing Objects with Self-Supervised Transformers and no Labels* (LOST, BMVC):
#   object boxes from DINO ViT features, the step from "the maps look right" to a measured localisation.
