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
# # 08 Full ImageNet training
#
# *The authors' ResNet-50 recipe on ImageNet, from one notebook: it checks the run before spending GPU
# hours, launches it on one GPU or many, resumes where it stopped, plots what the trainer logged, and ends
# with the paper's two evaluations of the teacher, weighted k-NN and a linear classifier on frozen features.*
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dino-tutorial/dino-tutorial/blob/main/book/08_full_training.ipynb)
#
# **Estimated time:** 40 minutes to read; the smoke run below took {glue:text}`wall_minutes` minutes on a CPU.
# The full run was not made for this book; chapter 09 quotes the one published timing of a comparable run.
#
# ```{important}
# **The outputs on this page come from a smoke run**: a ResNet-18 trained for a few iterations on
# `imagenette-mini` (160 training images, 64-pixel crops) on a CPU, made with
# `-p smoke True -p data_path "$DINO_DATA/imagenette-mini"` (papermill wrote them into the cell after the
# parameters cell). They show that every step of the pipeline works and what its outputs look like; their
# accuracies say nothing about what DINO learns.
# ```

# %% [markdown]
# ## Tutorial objectives
#
# - Launch the authors' ResNet-50 recipe on ImageNet with one command, on one GPU, on several GPUs of one
#   machine, or on several machines.
# - Know what is checked before the run starts, and how a stopped run picks up from its last checkpoint.
# - Read a run's curves: loss, teacher entropy, k-NN accuracy, learning rate and teacher momentum.
# - Evaluate the final teacher as the paper does (Sec. 4.1, Table 2): weighted k-NN (k = 20, T = 0.07) and a
#   linear classifier trained on its frozen features.

# %% [markdown]
# ## How to run this notebook
#
# [papermill](https://papermill.readthedocs.io) executes the notebook top to bottom with the parameters of
# the next cell replaced by those on its command line, and saves the executed copy. From the repository root:
#
# ```bash
# # The full run: the authors' recipe (preset rn50_imagenet), on every visible GPU
# papermill -k python3 book/08_full_training.ipynb runs/rn50_imagenet.ipynb \
#     -p data_path /data/imagenet -p output_dir runs/rn50_imagenet
#
# # A smoke run of a minute or two on a CPU, to check an installation (what this page shows)
# papermill -k python3 book/08_full_training.ipynb /tmp/smoke.ipynb \
#     -p smoke True -p data_path "$DINO_DATA/imagenette-mini" -p output_dir /tmp/smoke
# ```
#
# Running the same command again resumes the run from its last checkpoint; once the run is complete, it only
# evaluates. In JupyterLab, edit the parameters cell and run all cells.
#
# On a GPU, making the ten views of every image can cost more than training on them: the recipe's PIL
# pipeline makes about 50 images per second per CPU core, the `fast` one about 130 (uint8 views, same
# recipe), and `-p augmentation device` leaves the workers only reading files while the GPU decodes them and
# makes the views of the whole batch at once. The {doc}`Performance <performance>` page measures all three.

# %% tags=["parameters"]
data_path = None         # folder of train/, val/; None: $DINO_DATA/imagenet (data/README.md)
output_dir = None        # checkpoint.pth, log.jsonl, summary.txt; None: runs/<preset> of the repo
preset = "rn50_imagenet"  # a TrainConfig preset: rn50_imagenet (the authors' command) or small
epochs = None            # None: the preset's (100 for rn50_imagenet)
batch_size_per_gpu = None  # None: the preset's (64); the learning rate scales with the total batch
num_gpus = None          # None: every visible GPU; 0: CPU (smoke runs only)
num_workers = None       # data-loading processes per GPU; None: the preset's (8)
augmentation = None      # None: the preset's (pil); fast: uint8 views on the CPU; device: on GPU
resume = True            # continue from output_dir/checkpoint.pth when it exists
knn_every = 10           # epochs between k-NN evaluations during training; 0: never
launcher = "auto"        # auto: torchrun for several GPUs, else this kernel | torchrun | kernel
smoke = False            # a tiny run (ResNet-18, 64 px, a few steps) to check the pipeline on a CPU

# %% tags=["injected-parameters"]
# Parameters
smoke = True
data_path = "$DINO_DATA/imagenette-mini"


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
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display
from torch.utils.data import DataLoader

from dino_tutorial import checkpoint as ckpt
from dino_tutorial.augment import eval_transform
from dino_tutorial.data import IMAGE_EXTENSIONS, imagenet, resolve_data_root
from dino_tutorial.knn import extract_features, knn_classify
from dino_tutorial.linear import linear_evaluate
from dino_tutorial.model import build_backbone
from dino_tutorial.schedules import cosine_schedule
from dino_tutorial.notebook import glue
from dino_tutorial.train import PRESETS, TrainConfig, train

plt.rcParams.update({"figure.dpi": 100, "axes.titlesize": 10, "axes.labelsize": 10})
NOTEBOOK_START = time.time()
REPO = Path(dino_tutorial.__file__).resolve().parents[1]
# the package is installed, not a checkout: runs/ goes here
if not (REPO / "pyproject.toml").exists():
    REPO = Path.cwd()


class BadParameter(Exception):
    """A parameter of this notebook, or the data it points to, cannot give a run; the message says
    why."""


def shown(path: Path) -> str:
    """A path as printed on the page: relative to the working directory when that is short."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith(os.path.join("..", "..")) else str(path)


# %% [markdown]
# ## Check everything before the run
#
# A full run holds GPUs for a long time, so everything that can be wrong is checked first, and a problem stops
# the notebook here with one line that names it: a parameter of the wrong type, a preset that does not exist,
# GPUs that are not there, data that is not in the ImageFolder layout.

# %%
def is_count(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


if preset not in PRESETS:
    raise BadParameter(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
for name, value, minimum in (("epochs", epochs, 1), ("batch_size_per_gpu", batch_size_per_gpu, 1),
                             ("num_gpus", num_gpus, 0), ("num_workers", num_workers, 0)):
    if value is not None and not is_count(value, minimum):
        raise BadParameter(f"{name} must be None or an integer >= {minimum}, got {value!r}")
if not is_count(knn_every, 0):
    raise BadParameter(f"knn_every must be an integer >= 0, got {knn_every!r}")
for name, value in (("resume", resume), ("smoke", smoke)):
    if not isinstance(value, bool):
        raise BadParameter(f"{name} must be True or False, got {value!r}")
if augmentation not in (None, "pil", "fast", "device"):
    raise BadParameter(f"augmentation must be None, pil, fast or device, got {augmentation!r}")
if launcher not in ("auto", "torchrun", "kernel"):
    raise BadParameter(f"launcher must be auto, torchrun or kernel, got {launcher!r}")

visible_gpus = torch.cuda.device_count()
gpus = visible_gpus if num_gpus is None else num_gpus
if gpus > visible_gpus:
    raise BadParameter(f"num_gpus={num_gpus} but this machine has {visible_gpus} visible CUDA"
                       f" GPU(s)")
if gpus == 0 and not smoke:
    none = "num_gpus=0 asks for none" if num_gpus == 0 else "none is visible"
    raise BadParameter(f"the full run needs CUDA GPUs and {none}; pass -p smoke True for a CPU run "
                       f"that checks the pipeline")
if gpus > 1 and launcher == "kernel":
    raise BadParameter(f"launcher='kernel' runs one process, but {gpus} GPUs were asked for: use "
                       "auto or torchrun")
print(f"parameters: preset {preset}, {'smoke run' if smoke else 'full run'}, "
      f"{f'{gpus} GPU(s)' if gpus else 'CPU'}")

# %% [markdown]
# The data must be an ImageFolder tree, `train/<class>/<image>` and `val/<class>/<image>`, with the same class
# folders in both splits ([data/README.md](https://github.com/dino-tutorial/dino-tutorial/blob/main/data/README.md)
# turns the ImageNet archives into it). The check counts the image files of every class folder.

# %%
def count_images(split_dir: Path) -> dict:
    """{class folder name: number of image files} for one split."""
    counts = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.is_dir():
            counts[entry.name] = sum(1 for f in os.scandir(entry.path)
                                     if f.name.lower().endswith(IMAGE_EXTENSIONS))
    return counts


data_root = (Path(os.path.expandvars(str(data_path))).expanduser().resolve()
             if data_path is not None
             else resolve_data_root().resolve() / "imagenet")
if not data_root.is_dir():
    unset = "; an environment variable in it is not set" if "$" in str(data_root) else ""
    raise BadParameter(f"data_path {data_path if data_path is not None else shown(data_root)!r} is "
                       f"not a folder{unset}: give the ImageFolder root that holds train/ and val/ "
                       "(see data/README.md)")
image_counts = {}
for split in ("train", "val"):
    if not (data_root / split).is_dir():
        raise BadParameter(f"{shown(data_root / split)} is missing: data_path must hold "
                           f"train/<class>/<image> and val/<class>/<image>")
    image_counts[split] = count_images(data_root / split)
    empty = [name for name, n in image_counts[split].items() if n == 0]
    if not image_counts[split] or empty:
        raise BadParameter(f"{shown(data_root / split)} has no class folders with images"
                           + (f" (empty: {', '.join(empty[:3])})" if empty else ""))
if set(image_counts["train"]) != set(image_counts["val"]):
    different = sorted(set(image_counts["train"]) ^ set(image_counts["val"]))
    raise BadParameter(f"train/ and val/ must hold the same class folders; {len(different)} "
                       f"differ, e.g. {different[0]}")
num_classes = len(image_counts["train"])
print(f"data: {data_path if data_path is not None else shown(data_root)}: "
      f"{sum(image_counts['train'].values()):,} train and {sum(image_counts['val'].values()):,} "
      f"val images, {num_classes:,} classes")

# %% [markdown]
# ## The configuration
#
# The preset holds the recipe; the parameters above override it. `smoke=True` shrinks everything that costs
# time, and nothing else: the optimiser, the schedules, the teacher and the loss stay those of the preset.

# %%
SMOKE = dict(
    arch="resnet18",                                   # 11M parameters instead of 23M
    # 2 x 64 px + 2 x 32 px views instead of 2 x 224 + 8 x 96
    global_size=64, local_size=32, local_crops_number=2,
    # a small head (65,536 outputs in the recipe)
    out_dim=1024, head_hidden_dim=512, head_bottleneck_dim=128,
    batch_size_per_gpu=16, epochs=2, warmup_epochs=1,
    # 160 images of imagenette-mini, 5 iterations an epoch
    train_per_class=16, max_iters_per_epoch=5,
    knn_per_class=20, knn_image_size=64, knn_every=1,  # k-NN on 20 images per class, every epoch
    num_workers=2,
)

overrides = dict(data_path=str(data_root), resume="auto" if resume else "none",
                 device="cuda" if gpus else "cpu", knn_every=knn_every)
if smoke:
    overrides.update(SMOKE)
for name, value in (("epochs", epochs), ("batch_size_per_gpu", batch_size_per_gpu),
                    ("num_workers", num_workers),
                    ("augmentation", augmentation)):
    if value is not None:
        overrides[name] = value
config = TrainConfig.from_preset(preset, **overrides)
if config.warmup_epochs > config.epochs:
    print(f"{config.epochs} epochs are fewer than the preset's {config.warmup_epochs} warmup "
          f"epochs: the warmup is shortened to {config.epochs}")
    config.warmup_epochs = config.epochs
run_name = preset + ("_smoke" if smoke else "")
run_dir = (Path(os.path.expandvars(str(output_dir))).expanduser().resolve()
           if output_dir is not None
           else REPO / "runs" / run_name)
config.output_dir = str(run_dir)
try:
    config.validate()
except (ValueError, FileNotFoundError) as err:
    raise BadParameter(str(err)) from None
if resume and (run_dir / ckpt.CHECKPOINT_NAME).exists():
    # A checkpoint of another network cannot be resumed: say so now rather than inside the trainer.
    saved = ckpt.load(run_dir / ckpt.CHECKPOINT_NAME)["config"]
    model_fields = ("arch", "small_images", "out_dim", "head_hidden_dim", "head_bottleneck_dim",
                    "use_bn_in_head",
                    "norm_last_layer")
    differ = ([f"{k} {saved[k]} vs {getattr(config, k)}" for k in model_fields
               if saved[k] != getattr(config, k)])
    if differ:
        raise BadParameter(f"{shown(run_dir)} holds a run of another network "
                           f"({', '.join(differ)}): choose another output_dir, or resume=False to "
                           "overwrite it")

total_batch = config.batch_size_per_gpu * max(gpus, 1)
rows = [("backbone", config.arch), ("epochs", config.epochs),
        ("batch", f"{config.batch_size_per_gpu} per process x {max(gpus, 1)} = {total_batch}"),
        ("optimizer", f"{config.optimizer}, peak lr {config.lr} x {total_batch}/256 = "
                      f"{config.lr * total_batch / 256:.4g}, {config.warmup_epochs} warmup epochs, "
                      f"weight decay {config.weight_decay}"),
        ("views", f"2 x {config.global_size} px + {config.local_crops_number} x "
                  f"{config.local_size} px"),
        ("head", f"{config.out_dim:,} outputs"),
        ("teacher", f"momentum {config.momentum_teacher} to 1, temperature {config.teacher_temp}"),
        ("k-NN during training", f"every {config.knn_every} epochs" if config.knn_every else "off"),
        ("output_dir", shown(run_dir))]
display(Markdown("| setting | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k,
                                                                    v in rows)))

# %% [markdown]
# ## Launch
#
# **One GPU or the CPU.** The trainer runs inside this kernel: `train(config)` is an ordinary function call, its
# progress and errors appear in the cell, and nothing has to be serialised into command-line flags.
#
# **Several GPUs.** PyTorch's data-parallel training needs one process per GPU, and a notebook kernel is one
# process; so the cell starts `torchrun --nproc_per_node=N -m dino_tutorial.train ...` as a child process, with
# every setting of `config` passed as a flag, and prints its output line by line as it comes. Each process
# trains on its own shard of every batch (`DistributedSampler`), gradients are averaged across processes, and
# BatchNorm statistics are synchronised (`SyncBatchNorm`), as in the authors' code. Interrupting the cell
# stops the child processes. `launcher="torchrun"` takes this path on one GPU or the CPU as well.
#
# **Resuming.** The trainer writes `checkpoint.pth` atomically after every epoch, and also when it is stopped
# by a signal (the notebook's stop button, `kill`, a cluster's time limit), then at the current iteration.
# When `output_dir` already holds one and `resume=True`, the run continues from it, with the exact state of the
# student, teacher, optimiser and loss centre, and the same views; a complete run skips straight to the
# evaluation. A run that was stopped ends this cell with a message, so that a half-trained network is never
# evaluated as if it were finished.

# %%
def config_flags(config: TrainConfig) -> list:
    """Every TrainConfig field as a command-line flag of dino_tutorial.train (see
    dino_tutorial/cli.py)."""
    flags = []
    for field in fields(config):
        value = getattr(config, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag, str(value).lower()]
        elif isinstance(value, tuple):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def run_streaming(command: list) -> None:
    """Run ``command``, print its output line by line while it runs, stop it if the cell is
    interrupted."""
    # The child processes import the same dino_tutorial as this kernel, and print without buffering.
    path = (os.pathsep.join(filter(None, [str(Path(dino_tutorial.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH")])))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1,
                               env=env)
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
        process.wait()
    except BaseException:               # KeyboardInterrupt from the notebook's stop button
        process.terminate()
        process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"training stopped with exit code {process.returncode} (see its output "
                           f"above); the last checkpoint is intact: run this notebook again to "
                           "resume")


def logged_epochs(run_dir: Path) -> list:
    log_path = run_dir / "log.jsonl"
    return ([json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists()
            else [])


done = [r["epoch"] for r in logged_epochs(run_dir) if r["epoch"] > 0]
if (run_dir / ckpt.CHECKPOINT_NAME).exists():
    plan = "resumes from it" if resume else "starts again and overwrites it (resume=False)"
    print(f"{shown(run_dir)} holds a run at epoch {max(done, default=0)} of {config.epochs}: this "
          f"run {plan}")

train_start = time.time()
if launcher == "torchrun" or (launcher == "auto" and gpus > 1):
    # python -m torch.distributed.run is torchrun, run by this kernel's Python
    # --standalone: a rendezvous on a free local port, so two runs on one machine do not collide
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={max(gpus, 1)}",
               "-m", "dino_tutorial.train", "--preset", preset,
               *config_flags(replace(config, progress=False))]
    print("$ torchrun " + shlex.join(command[3:]))
    run_streaming(command)
else:
    train(config)
if torch.cuda.is_available():
    torch.cuda.empty_cache()
# A signal (the stop button, a cluster's time limit) makes the trainer save a checkpoint mid-epoch
# and return.
last_epoch = max((r["epoch"] for r in logged_epochs(run_dir)), default=0)
if last_epoch < config.epochs:
    raise KeyboardInterrupt(f"training stopped after epoch {last_epoch} of {config.epochs}; its "
                            f"checkpoint is saved: run this notebook again to resume")

# %% [markdown]
# ### Several machines
#
# For more GPUs than one machine holds, the same trainer runs under `torchrun` on every machine, and the
# machines find each other through a rendezvous point (one of them, at a port that all can reach). The
# learning rate scales with the total batch by itself: 2 machines x 8 GPUs x 64 images give a batch of 1,024
# and a peak learning rate of 0.03 x 1024 / 256 = 0.12. On each machine, with `HEAD` the first machine's
# host name:
#
# ```bash
# torchrun --nnodes 2 --nproc_per_node 8 \
#     --rdzv-id dino-rn50 --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" \
#     -m dino_tutorial.train --preset rn50_imagenet \
#     --data-path /data/imagenet --output-dir /shared/runs/rn50_imagenet --knn-every 10
# ```
#
# On a SLURM cluster, one task per machine starts that `torchrun`: `sbatch tools/slurm_rn50_imagenet.sh` from
# the repository root. The script (it begins with the `#!/bin/bash` line that `sbatch` requires):
#
# ```bash
# #SBATCH --job-name=dino-rn50
# #SBATCH --nodes=2
# #SBATCH --ntasks-per-node=1          # one torchrun per machine; it starts one process per GPU
# #SBATCH --gpus-per-node=8
# #SBATCH --cpus-per-task=64           # 8 data-loading workers for each of the 8 processes
# #SBATCH --time=48:00:00
# #SBATCH --output=%x-%j.out
#
# HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# srun torchrun --nnodes "$SLURM_JOB_NUM_NODES" --nproc_per_node 8 \
#     --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" \
#     -m dino_tutorial.train --preset rn50_imagenet \
#     --data-path /data/imagenet --output-dir /shared/runs/rn50_imagenet --knn-every 10
# ```
#
# `output_dir` must be on a file system that every machine sees: all processes read the checkpoint when they
# resume. A job stopped by its time limit continues when the same script is submitted again. When the job
# has finished, run this notebook with the same `output_dir` (on one GPU): the training cell finds the run
# complete, and the cells below plot and evaluate it.

# %% [markdown]
# ## The curves
#
# The trainer appends one line per epoch to `log.jsonl` (epoch 0 holds the k-NN accuracy of the randomly
# initialised network). Things to look for in a healthy run (chapter 04): the loss falls below its value at
# uniform outputs, $\ln K$; the teacher's entropy stays well between 0 (every image sent to one output: collapse
# to a single dimension) and $\ln K$ (uniform outputs: the other collapse); the k-NN accuracy rises above the
# random network's. The learning rate warms up linearly and then follows a cosine; the teacher momentum goes
# from 0.996 to 1 along a cosine.

# %%
records = logged_epochs(run_dir)
trained = [r for r in records if r["epoch"] > 0]
knn_points = [r for r in records if "knn_top1" in r]
ln_k = math.log(config.out_dim)
# The schedules the trainer follows, one value per iteration (DistributedSampler drops the last
# partial batch).
processes = max(gpus, 1)
niter = (sum(min(n, config.train_per_class or n)
             for n in image_counts["train"].values()) // processes
         // config.batch_size_per_gpu)
niter = min(niter, config.max_iters_per_epoch or niter)
schedules = {"lr": cosine_schedule(config.lr * total_batch / 256, config.min_lr, config.epochs,
                                   niter,
                                   config.warmup_epochs),
             "teacher_momentum": cosine_schedule(config.momentum_teacher, 1.0, config.epochs,
                                                 niter)}

fig, axes = plt.subplots(2, 3, figsize=(9, 4.9))
panels = [("loss", "DINO loss (nats)", trained), ("teacher_entropy", "teacher entropy (nats)",
                                                  trained),
          ("knn_top1", "k-NN top-1 (%)", knn_points), ("lr", "learning rate", trained),
          ("teacher_momentum", "teacher momentum", trained),
          ("images_per_s", "training images / s", trained)]
for ax, (key, label, points) in zip(axes.flat, panels):
    if key in schedules:
        steps = (torch.arange(len(schedules[key])) + 1) / niter
        ax.plot(steps, schedules[key], color="grey", linewidth=1, label="schedule (per iteration)")
    ax.plot([r["epoch"] for r in points], [r[key] for r in points], "o-", markersize=4,
            label="logged")
    ax.set(xlabel="epoch", ylabel=label)
    if key in ("loss", "teacher_entropy"):
        ax.axhline(ln_k, color="grey", linestyle="--", linewidth=1)
        ax.text(0.02, ln_k, f"ln K = {ln_k:.2f} (uniform)", transform=ax.get_yaxis_transform(),
                va="top",
                color="grey", fontsize=9)
    if key in schedules:
        ax.legend(fontsize=9)
    if key == "knn_top1" and points and points[0]["epoch"] == 0:
        ax.annotate("random init", (0, points[0][key]), textcoords="offset points", xytext=(4, -12),
                    fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
fig.suptitle(f"{'Smoke run' if smoke else 'Run'}: {config.arch}, {len(trained)} epochs logged in "
             f"{shown(run_dir)}",
             fontsize=11)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Final evaluation of the teacher
#
# The paper evaluates the teacher's backbone (Sec. 4.1): the head is thrown away and the 2048-d pooled
# features of ResNet-50 are used as they are, frozen. Every image of the train and val splits is embedded
# once, on a central crop (`eval_transform`), and the same features serve both evaluations:
#
# - **weighted k-NN** (chapter 05): each val image takes the 20 most similar train images, whose votes are
#   weighted by $\exp(\text{cosine}/0.07)$;
# - **linear evaluation** (`dino_tutorial.linear`): a linear classifier trained with labels on the frozen train
#   features for 100 epochs with SGD, then applied to the val features. The authors train it on augmented
#   crops (random resized crops and flips) and report the best of its evaluations during training; here it
#   sees the central crop of each image only, and the number reported is the one after the last epoch.
#   Expect it to come out somewhat below what the authors' protocol gives.
#
# This step runs in the notebook's own process, on the first GPU: on ImageNet it embeds 1.33M images, whose
# features take 11 GB of memory as float32.

# %%
eval_start = time.time()
device = torch.device("cuda" if gpus else "cpu")
state = ckpt.load(run_dir / ckpt.CHECKPOINT_NAME, map_location="cpu")
backbone, feature_dim = build_backbone(config.arch, small_images=config.small_images)
backbone.load_state_dict({k[len("backbone."):]: v for k, v in state["teacher"].items()
                          if k.startswith("backbone.")})
backbone.to(device)

features = {}
for split in ("train", "val"):
    dataset = imagenet(config.data_path, split, eval_transform(config.knn_image_size),
                       per_class=config.knn_per_class or None)
    loader = DataLoader(dataset, batch_size=256, num_workers=min(config.num_workers, os.cpu_count()
                                                                 or 1),
                        pin_memory=device.type == "cuda")
    features[split] = extract_features(backbone, loader, device)
(train_x, train_y), (val_x, val_y) = features["train"], features["val"]
knn_top1, knn_top5 = (knn_classify(train_x.to(device), train_y, val_x.to(device), val_y, k=20,
                                   T=0.07))
linear_top1, linear_top5 = (linear_evaluate(train_x, train_y, val_x, val_y, num_classes=num_classes,
                                            device=device))
eval_seconds = time.time() - eval_start
print(f"teacher backbone at epoch {state['epoch']}, {feature_dim}-d features of {len(train_x):,} "
      f"train and {len(val_x):,} val images")
print(f"weighted k-NN (k=20, T=0.07): top-1 {knn_top1:.2f}%, top-5 {knn_top5:.2f}%")
print(f"linear on frozen features:    top-1 {linear_top1:.2f}%, top-5 {linear_top5:.2f}%")

# %% [markdown]
# ## The summary
#
# `summary.txt` in `output_dir` holds the run's results, one `metric value` per line, for chapter 09 and for
# anyone comparing runs. `train_time_s` adds up the training time of every epoch in the log, across restarts;
# `wall_time_s` is this execution of the notebook, from its first cell to here.

# %%
if torch.cuda.is_available() and gpus:
    hardware = f"{gpus}x {torch.cuda.get_device_name(0)}"
else:
    threads = torch.get_num_threads()
    hardware = f"CPU, {threads} thread{'s' if threads > 1 else ''}"
records = logged_epochs(run_dir)
trained = [r for r in records if r["epoch"] > 0]
train_images = sum(min(n, config.train_per_class or n) for n in image_counts["train"].values())
summary = {
    "knn_top1": f"{knn_top1:.2f}", "knn_top5": f"{knn_top5:.2f}",
    "linear_top1": f"{linear_top1:.2f}", "linear_top5": f"{linear_top5:.2f}",
    "epochs": state["epoch"], "images": train_images,
    "images_seen": round(sum(r["images_per_s"] * r["epoch_time_s"] for r in trained)),
    "hardware": hardware,
    "train_time_s": f"{sum(r['epoch_time_s'] for r in trained):.0f}",
    "eval_time_s": f"{eval_seconds:.0f}",
    "wall_time_s": f"{time.time() - NOTEBOOK_START:.0f}",
    "preset": preset, "arch": config.arch, "smoke": smoke,
}
(run_dir / "summary.txt").write_text("".join(f"{k} {v}\n" for k, v in summary.items()))
print(f"{shown(run_dir / 'summary.txt')}:")
print((run_dir / "summary.txt").read_text(), end="")

for key in ("knn_top1", "knn_top5", "linear_top1", "linear_top5", "epochs", "hardware"):
    glue(key, summary[key], display=False)
glue("images", f"{train_images:,}", display=False)
glue("train_minutes", f"{float(summary['train_time_s']) / 60:.1f}", display=False)
glue("wall_minutes", f"{float(summary['wall_time_s']) / 60:.1f}", display=False)

# %% [markdown]
# ## What this run shows
#
# The teacher trained for {glue:text}`epochs` epochs on {glue:text}`images` images ({glue:text}`hardware`,
# {glue:text}`train_minutes` minutes of training). Its frozen features give {glue:text}`knn_top1`% top-1 with
# weighted k-NN and {glue:text}`linear_top1`% with a linear classifier.
#
# For the smoke run on this page these numbers only prove that the pipeline runs from the parameters to the
# summary: a ResNet-18 that has seen a few hundred small crops is close to its random initialisation, and a
# linear classifier on random features of ten easy classes already beats chance (10%). The paper's ResNet-50
# reaches 67.5% (k-NN) and 75.3% (linear) on ImageNet's 1,000 classes (Table 2). Chapter 09 puts every result
# of this course next to those.
#
# ```{admonition} Think! Why is the k-NN accuracy logged during training computed with the teacher, and what would the student give?
# :class: dropdown
# The paper reports the teacher because in its ImageNet runs the teacher is the better network throughout
# training (Sec. 5.2, Fig. 6): an exponential moving average of the student's weights behaves like an
# ensemble of recent students (Polyak averaging). That is a measurement of long runs, not a rule. The
# course's Imagenette run logs both (`knn_top1` for the teacher, `knn_student_top1` for the student, in
# `book/results/imagenette_log.jsonl`): there the two stay within the noise of a k-NN evaluation of each
# other, and neither leads at every evaluation (chapter 03, Section 4, counts it). On a small data set the
# teacher averages over a window that is long in epochs and lags a student that is still improving; the
# paper's advantage appears when that window is a small part of an epoch.
# ```
#
# ```{admonition} Think! A run is stopped during epoch 38 (the cluster takes the machine back). What is lost when it is started again?
# :class: dropdown
# If the stop came as a signal (SIGTERM, which clusters send before they kill a job, or the stop button),
# nothing: the trainer finishes the current iteration and checkpoints there. If the process died without
# warning (SIGKILL, a power cut), the iterations of epoch 38 since the last checkpoint, which was the end of
# epoch 37 unless `save_every_iters` asked for more. Either way the checkpoint holds the student, the teacher,
# the optimiser's momentum buffers, the loss's centre and the mixed-precision scaler, and the views of an
# image depend only on (seed, epoch, image), so the resumed run sees what an uninterrupted one would have.
# The log keeps its 37 lines and grows from there; the k-NN point of epoch 40 comes when it would have.
# ```
#
# ## Summary
#
# - One notebook runs the authors' ResNet-50 recipe on ImageNet: papermill sets its parameters, the first cells
#   stop a run that cannot work, `torchrun` spreads the run over the GPUs of one machine, and the same trainer
#   runs on several machines under `torchrun` or SLURM.
# - A run resumes from the checkpoint of its last complete epoch by running the same command again.
# - The log tells whether a run is healthy before the final numbers do: loss below $\ln K$, teacher entropy
#   away from 0 and from $\ln K$, k-NN accuracy above the random network's.
# - The teacher is evaluated as in the paper, with weighted k-NN and a linear classifier on its frozen
#   features; the linear classifier here is trained on precomputed central-crop features, for speed.
#
# Next, chapter 09 compares what this course reproduced with the paper's Table 2.
#
# **Further reading.** Caron et al. 2021 (arXiv 2104.14294): Sec. 4.1 (evaluation protocols), Table 2,
# Appendix (training and evaluation details); PyTorch's
# [torchrun documentation](https://pytorch.org/docs/stable/elastic/run.html) for the rendezvous options;
# [papermill](https://papermill.readthedocs.io) for parameterised notebooks.
