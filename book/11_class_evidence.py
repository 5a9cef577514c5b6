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
# # 11 Reference: where the class evidence sits in a feature map
#
# *A reference page for {doc}`07_emerging_properties`: before human masks are at hand, can the class labels
# alone say whether a label-free mask covers the object? A test that the frame of a convolutional network
# cannot fool, for a random network and the course's DINO-trained one.*
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/11_class_evidence.ipynb)
#
# **Estimated time:** 15 minutes.

# %% [markdown]
# ## Setup
#
# The networks, image size and masks of chapter 07: the random `small` backbone and the teacher backbone of
# the reference run, made dense (output stride 16), on Imagenette's training images (the bank) and validation
# images (the queries), with the PCA masks of chapter 07's Section 3 (minority rule).

# %% tags=["hide-input"]
# Install the course package when it is missing (Colab); locally: `pip install -e .` in the repo.
try:
    import dino_tutorial
except ImportError:
    # %pip install -q git+https://github.com/dino-tutorial/dino-tutorial
    import dino_tutorial

# %% tags=["hide-input"]
import json

import torch

from dino_tutorial import analysis, checkpoint
from dino_tutorial.augment import eval_transform
from dino_tutorial.data import imagenette, imagenette_root, resolve_data_root
from dino_tutorial.knn import knn_classify
from dino_tutorial.model import build_backbone
from dino_tutorial.notebook import course_file, glue, setup
from dino_tutorial.train import TrainConfig, set_seed

DEVICE = setup(seed=0, font_size=9, one_thread_on_small_cpu=True)
try:
    DATA_ROOT = imagenette_root()
except FileNotFoundError as err:
    print(f"This page needs Imagenette: set DINO_DATA to a folder holding imagenette-mini/, or run "
          f"online so that Imagenette is downloaded into {resolve_data_root()} ({err})")
    raise SystemExit(1)
CLASS_NAMES = imagenette("val").classes


def compare(a: float, b: float, unit: str = " points") -> str:
    """'x above' / 'x below' / 'level with' for the sentence 'a is ... b'."""
    if abs(a - b) < 0.05:
        return "level with"
    return f"{abs(a - b):.1f}{unit} {'above' if a > b else 'below'}"


# %% tags=["hide-input"]
SMALL = TrainConfig.from_preset("small")
low_scale, high_scale = SMALL.global_crops_scale          # chapter 07's image size, Section 1
largest = SMALL.global_size / low_scale ** 0.5
IMAGE_SIZE = round((SMALL.global_size / high_scale ** 0.5 + round(largest)) / 2)
glue("small_global_size", SMALL.global_size, display=False)
trained_file = course_file("assets/imagenette_teacher_backbone.pth")
set_seed(0)
NETWORKS = {"random": build_backbone(SMALL.arch, small_images=SMALL.small_images)[0].eval()}
if trained_file.is_file():
    NETWORKS["DINO"], _ = checkpoint.load_backbone(trained_file)
DENSE = {name: analysis.densify(net.to(DEVICE), 16) for name, net in NETWORKS.items()}
BANK_PER_CLASS, QUERY_PER_CLASS = (None, None) if DEVICE.type == "cuda" else (100, None)


def feature_maps(split: str, per_class):
    dataset = imagenette(split, transform=eval_transform(IMAGE_SIZE), per_class=per_class)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    maps = {name: torch.cat([analysis.feature_map(net, images[i:i + 100].to(DEVICE)).cpu()
                             for i in range(0, len(images), 100)])
            for name, net in DENSE.items()}
    return maps, torch.tensor(dataset.targets)


BANK, bank_labels = feature_maps("train", BANK_PER_CLASS)
QUERIES, query_labels = feature_maps("val", QUERY_PER_CLASS)
h, w = BANK["random"].shape[-2:]
CENTRE_BOX = torch.zeros(h, w, dtype=torch.bool)
CENTRE_BOX[h // 4:h - h // 4, w // 4:w - w // 4] = True        # the central half of each axis
ALL_MASKS = {}
for name in NETWORKS:
    masks = analysis.foreground_mask(torch.cat([BANK[name], QUERIES[name]]), method="pca",
                                     orient="minority", centre="image")
    ALL_MASKS[name] = (masks[:len(bank_labels)], masks[len(bank_labels):])
baselines_file = course_file("results/baselines.json")
baselines = json.loads(baselines_file.read_text()) if baselines_file.is_file() else {}
glue("reference_knn", f"{baselines['trained/imagenette']['top1']:.0f}" if baselines
     else "(not measured)", display=False)
glue("random_knn", f"{baselines['random/imagenette']['mean']:.0f}" if baselines
     else "(not measured)", display=False)
print(f"{', '.join(NETWORKS)} networks at {IMAGE_SIZE} px, {h} x {w} maps; bank "
      f"{len(bank_labels)} training images, {len(query_labels)} validation queries")

# %% [markdown]
# ## A proxy for the masks, without segmentations
#
# A mask is scored by comparing it with a ground-truth segmentation: the paper reports the Jaccard index
# (intersection over union, `analysis.mask_iou`) of masks from its attention maps against PASCAL VOC
# segmentations (Section 4.2). The data here has class labels but no segmentations, so any score must be a
# proxy, and a proxy is only worth what it cannot be fooled by. Two candidates:
#
# 1. **How central is the mask?** Photographers centre their subjects, so a good mask should lie mostly in
#    the middle of the frame. Chapter 07's Section 4 showed why this can mislead: a network's maps favour the middle of the
#    frame for reasons that have nothing to do with objects, so a central mask is no evidence of an object.
# 2. **Does the mask hold the class?** If a mask covers the object, the feature pooled *inside* it
#    (`analysis.masked_mean`) should be more typical of the image's class than the feature pooled *outside*
#    it. The labels score this without segmentations: pool every bank and query image inside its own mask
#    and run the weighted k-NN classifier of chapter 05 ($k = 20$, $T = 0.07$) on those features. Then do the
#    same outside the masks, and, as the control that the frame could fool, over the same number of
#    positions taken from the **centre** of each image (the positions closest to the middle), and over the
#    same number taken at **random**.
#
# Neither is an IoU, and the second measures where the class evidence is, which includes context (water
# around a tench, sky around a parachute). What it cannot do is reward a mask for being central: the central
# control gets that reward too. (This is also why the masks are oriented by the minority rule: a mask
# oriented towards the middle of the frame would have the centre built in before it is scored against it.)

# %%
centre_share = CENTRE_BOX.float().mean().item()
print(f"the central region holds {100 * centre_share:.0f}% of the {h} x {w} positions")
for name in NETWORKS:
    masks = torch.cat(ALL_MASKS[name])
    inside = (masks & CENTRE_BOX).sum().item() / masks.sum().item()
    glue(f"centre_fraction_{name}", f"{100 * inside:.0f}", display=False)
    print(f"{name}: the PCA masks cover {100 * masks.float().mean():.0f}% of the positions, and "
          f"{100 * inside:.0f}% of their positions lie in the central region")
glue("centre_share", f"{100 * centre_share:.0f}", display=False)
if "DINO" in NETWORKS:
    dino_masks = torch.cat(ALL_MASKS["DINO"])
    dino_inside = (dino_masks & CENTRE_BOX).sum().item() / dino_masks.sum().item()
    glue("centre_fraction_trained", f"and the DINO network's {100 * dino_inside:.0f}%",
         display=False)
else:
    glue("centre_fraction_trained", "", display=False)

# %% [markdown]
# A mask that ignored the image would put {glue:text}`centre_share`% of its positions in the central region;
# the random network's masks put {glue:text}`centre_fraction_random`% there {glue:text}`centre_fraction_trained`.
# A share above the blind one could come from the objects, from the photographers, or from the frame; the
# first proxy cannot tell them apart, and a network can score on it without finding anything. The second proxy can be
# computed with the labels:

# %%
def same_count_masks(masks: torch.Tensor, where: str, seed: int = 0) -> torch.Tensor:
    """Masks with as many positions as `masks`, taken closest to the centre ("centre") or at random.
    """
    B, h, w = masks.shape
    counts = masks.flatten(1).sum(dim=1)
    if where == "centre":
        rows, cols = (torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2,
                                     indexing="ij"))
        # ties broken by index
        distance = (rows ** 2 + cols ** 2).flatten() + 1e-3 * torch.arange(h * w)
        order = distance.argsort().expand(B, -1)
    else:
        generator = torch.Generator().manual_seed(seed)
        order = torch.stack([torch.randperm(h * w, generator=generator) for _ in range(B)])
    rank = (torch.empty(B, h * w, dtype=torch.long).scatter_(1, order,
                                                             torch.arange(h * w).expand(B, -1)))
    return (rank < counts[:, None]).reshape(B, h, w)


def masked_knn(name, regions):
    """k-NN top-1 (%) with every bank and query image pooled over its own region (B, h, w) bool."""
    bank_regions, query_regions = regions[:len(bank_labels)], regions[len(bank_labels):]
    bank = analysis.masked_mean(BANK[name], bank_regions)
    queries = analysis.masked_mean(QUERIES[name], query_regions)
    return (knn_classify(bank, bank_labels, queries, query_labels, k=20, T=0.07,
                         num_classes=len(CLASS_NAMES))[0])


SCORES, IOU_WITH_CENTRE = {}, {}
for name in NETWORKS:
    pca_masks = torch.cat(ALL_MASKS[name])
    norm_masks = analysis.foreground_mask(torch.cat([BANK[name], QUERIES[name]]), method="norm")
    regions = {
        "whole image": torch.ones_like(pca_masks),
        "inside the PCA mask": pca_masks,
        "outside the PCA mask": ~pca_masks,
        "centre, as many positions": same_count_masks(pca_masks, "centre"),
        "random, as many positions": same_count_masks(pca_masks, "random"),
        "inside the norm mask": norm_masks,
        "outside the norm mask": ~norm_masks,
        "centre, as many as the norm mask": same_count_masks(norm_masks, "centre"),
    }
    SCORES[name] = {region: masked_knn(name, r) for region, r in regions.items()}
    IOU_WITH_CENTRE[name] = (analysis.mask_iou(pca_masks,
                                               regions["centre, as many positions"]).mean().item())

print(f"{'k-NN top-1 (%), pooled over':<34}" + "".join(f"{name:>10}" for name in NETWORKS))
for region in SCORES["random"]:
    print(f"{region:<34}" + "".join(f"{SCORES[name][region]:10.1f}" for name in NETWORKS))
print(f"{'mean IoU, PCA mask with the centre':<34}" + "".join(f"{IOU_WITH_CENTRE[name]:10.2f}"
                                                              for name in NETWORKS))

# %% tags=["remove-cell"]
for name, scores in SCORES.items():
    glue(f"whole_{name}", f"{scores['whole image']:.1f}", display=False)
    glue(f"inside_{name}", f"{scores['inside the PCA mask']:.1f}", display=False)
    glue(f"outside_{name}", f"{scores['outside the PCA mask']:.1f}", display=False)
    glue(f"centre_{name}", f"{scores['centre, as many positions']:.1f}", display=False)
    glue(f"iou_centre_{name}", f"{IOU_WITH_CENTRE[name]:.2f}", display=False)
    glue(f"inside_vs_centre_{name}", compare(scores["inside the PCA mask"],
                                             scores["centre, as many positions"]),
         display=False)
    glue(f"norm_vs_centre_{name}", compare(scores["inside the norm mask"],
                                           scores["centre, as many as the norm mask"]),
         display=False)
glue("point", f"{100 / len(query_labels):.1f}", display=False)
NOISE_POINTS = 2.0   # differences smaller than this are within the noise of this many queries


def verdict(scores) -> str:
    """Whether either mask holds more of the class than its central control, in words."""
    gains = [scores["inside the PCA mask"] - scores["centre, as many positions"],
             scores["inside the norm mask"] - scores["centre, as many as the norm mask"]]
    if max(gains) >= NOISE_POINTS:
        return "at least one of its masks holds more of the class than the middle of the frame does"
    return "neither of its masks holds more of the class than the middle of the frame does"


glue("noise_points", f"{NOISE_POINTS:.0f}", display=False)
glue("verdict_random", verdict(SCORES["random"]), display=False)
if "DINO" in NETWORKS:
    s = SCORES["DINO"]
    sentence = (f"For the DINO-trained network, the whole image scores {s['whole image']:.1f}%; "
                f"inside its PCA mask {s['inside the PCA mask']:.1f}%, outside it "
                f"{s['outside the PCA mask']:.1f}%, and its central control "
                f"{s['centre, as many positions']:.1f}%; its norm mask "
                f"{compare(s['inside the norm mask'], s['centre, as many as the norm mask'])} its "
                f"own central control. By this test, {verdict(s)}. (For scale: its whole-image "
                f"feature scores {compare(s['whole image'], SCORES['random']['whole image'])} the "
                "random network's.)")
else:
    sentence = ("The same numbers for the DINO-trained network appear here when its backbone file "
                "is present; they are the test of whether training moved the masks onto the "
                "objects.")
glue("trained_mask_sentence", sentence, display=False)

# %% [markdown]
# How to read the table: each row pools every image's feature map over one region, for the bank and the
# queries alike, and classifies the queries by k-NN. One query is worth {glue:text}`point` points; with
# accuracies near 25%, differences under {glue:text}`noise_points` points are within the noise.
#
# - The whole image is the reference ({glue:text}`whole_random`% for the random network).
# - For the random network, the inside of its PCA mask scores {glue:text}`inside_random`%, the outside
#   {glue:text}`outside_random`%, and the central positions {glue:text}`centre_random`%: the mask is
#   {glue:text}`inside_vs_centre_random` the central control. Its norm mask is
#   {glue:text}`norm_vs_centre_random` its own central control. By this test, {glue:text}`verdict_random`.
# - The last row uses `analysis.mask_iou` to say how much each PCA mask *is* the central control: a mean
#   Jaccard index of {glue:text}`iou_centre_random` for the random network (1 would be the same positions,
#   0 none in common).
#
# {glue:text}`trained_mask_sentence`
#
# Keep the scale of this experiment in mind. The paper's observation was made with ViTs trained for hundreds
# of epochs on ImageNet; this network was trained on a CPU, on Imagenette at {glue:text}`small_global_size`
# pixels. Its features classify far better than a random network's (k-NN {glue:text}`reference_knn`% against
# {glue:text}`random_knn`%, chapter 09), yet
# class evidence is not the same as an object's outline: masks that do not find objects are the expected
# result at this scale, not a verdict on DINO.
#
# ### Think! 1
#
# A skeptic says: "the mask scores above its central control, so it segments the object". What else could
# make a region hold more class evidence than the centre, and what data would settle the question?
#
# ```{admonition} Answer
# :class: dropdown
# The region might cover the *context* that identifies the class rather than the object: water for a tench,
# sky around a parachute, asphalt under a garbage truck. Imagenette's classes come with distinctive
# backgrounds, so context alone classifies well (compare the "outside" rows with chance, 10%). The test
# shows where the class evidence sits, not where the object's boundary is. Settling it needs segmentations:
# either a dataset that has them (PASCAL VOC for images and DAVIS for video, as in the paper's Section 4.2), or
# photos with human masks of their salient object, which is what chapter 07's Section 6 uses.
# ```

# %% [markdown]
# ## Summary
#
# - Without segmentations, a fair proxy asks whether the class evidence lies inside a mask, against a control
#   of as many central positions: for the random network, the PCA mask is {glue:text}`inside_vs_centre_random`
#   that control. {glue:text}`trained_mask_sentence`
# - Class evidence includes context, so the proxy says where the evidence is, not where the object's outline
#   is; human masks (chapter 07, Section 6) answer that.
