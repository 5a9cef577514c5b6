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
# # 10 Reference: mixed precision and the gradient scaler
#
# *A reference page for {doc}`06_training_loop`: why the authors' fp16 runs need a gradient scaler, measured on
# the first gradient of a real DINO batch, and why bf16 does not.*
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/10_mixed_precision.ipynb)
#
# **Estimated time:** 15 minutes.

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

import matplotlib.pyplot as plt
import numpy as np
import torch

from dino_tutorial.augment import MultiCropAugmentation
from dino_tutorial.data import collate_views, imagenet, imagenette_root
from dino_tutorial.loss import DINOLoss
from dino_tutorial.model import DINOHead, MultiCropWrapper, build_backbone
from dino_tutorial.notebook import glue, setup
from dino_tutorial.train import TrainConfig, set_seed

DEVICE = setup(seed=0)
try:
    DATA_ROOT, problem = imagenette_root(), None
except FileNotFoundError as err:
    DATA_ROOT, problem = None, err
if problem:
    print(f"This page needs Imagenette: set DINO_DATA to a folder holding imagenette-mini/ or "
          f"imagenette2-160/, or run online so that Imagenette is downloaded ({problem})")
    raise SystemExit(1)

# %% [markdown]
# ## The first gradient of a DINO run
#
# The authors' network, a ResNet-50 with the DINO head of $K = 65{,}536$ outputs, freshly initialised as at the
# first iteration of a run, sees a real batch of Imagenette images with the recipe's views (2 global views of
# 224 px and 8 local views of 96 px; 4 images on a CPU, 16 on a GPU). At the first iteration the teacher equals
# the student, and BatchNorm normalises the two global views with the same batch in both, so the teacher's
# outputs are the student's first rows. The loss's gradient with respect to the student's outputs is the first
# gradient of the backward pass.

# %%
rn50 = TrainConfig.from_preset("rn50_imagenet")
BATCH = 16 if DEVICE.type == "cuda" else 4
set_seed(0)
recipe_views = MultiCropAugmentation(rn50.global_crops_scale, rn50.local_crops_scale,
                                     rn50.local_crops_number, rn50.global_size, rn50.local_size)
images = imagenet(DATA_ROOT, "train", recipe_views, per_class=math.ceil(BATCH / 10))
crops = [c.to(DEVICE) for c in collate_views([images[i] for i in range(BATCH)])[0]]
backbone, feature_dim = build_backbone("resnet50")
student = MultiCropWrapper(backbone, DINOHead(feature_dim, rn50.out_dim)).to(DEVICE)
with torch.no_grad():
    outputs = student(crops)
teacher_out = outputs[:2 * BATCH]                     # the teacher is the student at iteration 0
student_out = outputs.clone().requires_grad_(True)
dino_loss = DINOLoss(rn50.out_dim, len(crops)).to(DEVICE)
loss = dino_loss(student_out, teacher_out, epoch=0)
loss.backward()
print(f"batch of {BATCH} images, {len(crops)} views: loss {loss.item():.3f} "
      f"(ln K = {math.log(rn50.out_dim):.3f}); d loss / d student_out has "
      f"{student_out.grad.numel():,} entries")

# %% [markdown]
# ## fp16, bf16 and loss scaling
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
# student's outputs, `student_out.grad`, computed above: with 65,536 outputs per view, a softmax spreads its mass
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
# ### Think! 1
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


# %% [markdown]
# ## Summary
#
# - fp16 needs loss scaling because most entries of the first backward gradient fall below its normal range;
#   `torch.amp.GradScaler` multiplies the loss, unscales before clipping, and skips steps that overflow.
# - bf16 has float32's range: nothing underflows, and no scaler is needed.
# - The package's trainer uses bf16 autocast on CUDA GPUs, fp16 with the scaler on request, and float32 on the
#   CPU.
