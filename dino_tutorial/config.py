"""Every setting of a DINO run in one dataclass, ``TrainConfig``, and the named presets.

Defaults are the authors' ResNet-50 command; ``TrainConfig.from_preset(name, **overrides)`` starts from a
preset; ``validate()`` checks every value before any work starts and names the one that is wrong. Every
field is also a command-line flag of ``python -m dino_tutorial.train`` (see ``cli``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Dict, Tuple

import torch

from .data import split_folder


@dataclass
class TrainConfig:
    """Every setting of a run. Defaults are the authors' ResNet-50 command (preset ``rn50_imagenet``)."""
    data_path: str = ""                  # ImageFolder root with train/ and val/
    output_dir: str = "runs/dino"
    # model
    arch: str = "resnet50"
    small_images: bool = False           # 3x3 stem without max-pool, for images of 32-64 px
    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    # multi-crop
    global_crops_scale: Tuple[float, float] = (0.14, 1.0)
    local_crops_scale: Tuple[float, float] = (0.05, 0.14)
    local_crops_number: int = 8
    global_size: int = 224
    local_size: int = 96
    augmentation: str = "pil"            # pil: the reference PIL pipeline | fast: fast_augment (uint8 views) |
                                         # device: workers send JPEG bytes, views made in batches on the device
    # optimisation
    epochs: int = 100
    batch_size_per_gpu: int = 64
    optimizer: str = "sgd"               # sgd | lars | adamw
    lr: float = 0.03                     # per 256 images: the peak is lr * total batch / 256
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 1e-4
    weight_decay_end: float = 1e-4
    clip_grad: float = 3.0               # per parameter; 0 disables
    freeze_last_layer: int = 1
    # teacher and loss
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0    # the cosine ends here; equal to momentum_teacher keeps it fixed
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    # evaluation during training
    knn_every: int = 0                   # epochs between k-NN evaluations of the teacher; 0 disables
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_image_size: int = 224
    knn_per_class: int = 0               # images per class for k-NN (both splits); 0 = all
    knn_student: bool = False            # also evaluate the student's backbone (teacher vs student, Fig. 6)
    # run
    train_per_class: int = 0             # images per class for training; 0 = all
    max_iters_per_epoch: int = 0         # 0 = the whole epoch
    amp: str = "auto"                    # auto (bf16 on CUDA, fp16 where bf16 is missing) | bf16 | fp16 | none
    channels_last: bool = True           # CUDA only
    compile: bool = False
    num_workers: int = 8
    device: str = "auto"                 # auto | cpu | cuda
    seed: int = 0
    deterministic: bool = False
    resume: str = "auto"                 # auto: output_dir/checkpoint.pth if present | none | a path
    save_every_iters: int = 0            # also checkpoint every N iterations inside an epoch; 0 = at epoch ends
    skip_bad_images: bool = False        # False: an unreadable image stops the run, naming the file
    progress: bool = True

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TrainConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**{**PRESETS[name], **overrides})

    def validate(self) -> None:
        positive = ("out_dim", "head_hidden_dim", "head_bottleneck_dim", "global_size", "local_size", "epochs",
                    "batch_size_per_gpu", "knn_k", "knn_image_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        non_negative = ("local_crops_number", "warmup_epochs", "freeze_last_layer", "knn_every", "knn_per_class",
                        "train_per_class", "max_iters_per_epoch", "num_workers", "clip_grad", "min_lr", "save_every_iters",
                        "weight_decay", "weight_decay_end", "warmup_teacher_temp_epochs")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "teacher_temp", "warmup_teacher_temp", "student_temp", "knn_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("momentum_teacher", "momentum_teacher_end", "center_momentum"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs}); "
                             f"lower it with --warmup-epochs")
        if self.warmup_teacher_temp_epochs > self.epochs:
            raise ValueError(f"warmup_teacher_temp_epochs ({self.warmup_teacher_temp_epochs}) must not exceed "
                             f"epochs ({self.epochs})")
        if self.local_size > self.global_size:
            raise ValueError(f"local_size ({self.local_size}) must not exceed global_size ({self.global_size})")
        choices = {"optimizer": ("sgd", "lars", "adamw"), "amp": ("auto", "bf16", "fp16", "none"),
                   "augmentation": ("pil", "fast", "device"),
                   "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but CUDA is not available on this machine")
        if not self.data_path:
            raise ValueError("data_path is empty: give the folder that holds train/ and val/")
        split_folder(self.data_path, "train")
        if self.knn_every:
            split_folder(self.data_path, "val")
        if self.resume not in ("auto", "none") and not Path(self.resume).is_file():
            raise FileNotFoundError(f"resume checkpoint not found: {self.resume}")


PRESETS: Dict[str, Dict] = {
    # The authors' published ResNet-50 command (README of facebookresearch/dino); all other settings are
    # main_dino.py defaults. Batch 64 per GPU; the learning rate scales with the total batch.
    "rn50_imagenet": dict(arch="resnet50", optimizer="sgd", lr=0.03, weight_decay=1e-4, weight_decay_end=1e-4,
                          global_crops_scale=(0.14, 1.0), local_crops_scale=(0.05, 0.14), epochs=100),
    # A CPU-sized run that beats its own random initialisation on imagenette within 20 minutes on 2 cores.
    # What changed from the ResNet-50 recipe, and why (the training chapter tells the story):
    # - a ResNet-18 at 1/4 width (0.7M parameters) and 64/32 px crops: 1/60 of the multiply-adds per image,
    #   so tens of epochs fit instead of a few hundred iterations;
    # - a smaller head (hidden 512, bottleneck 64, BatchNorm) and K = 2048: with a 256-d bottleneck, random
    #   features of different images give nearly equal cosines, the centred teacher is near-uniform and the run
    #   collapses to uniform outputs (teacher entropy -> ln K);
    # - a sharper teacher (temperature 0.02) for the same reason; AdamW at 1e-3 (SGD at 0.03 x batch / 256
    #   barely moves in a few hundred steps); teacher momentum 0.99 (0.996 averages over too few steps);
    # - the last layer is not frozen (one epoch would be half of the 2-epoch warmup) and crops cover
    #   more of the image (0.25-1 and 0.05-0.25) at this low resolution.
    "small": dict(arch="resnet18_w16", out_dim=2048, head_hidden_dim=512, head_bottleneck_dim=64,
                  use_bn_in_head=True, global_size=64, local_size=32, local_crops_number=4,
                  global_crops_scale=(0.25, 1.0), local_crops_scale=(0.05, 0.25), epochs=30, warmup_epochs=2,
                  batch_size_per_gpu=64, optimizer="adamw", lr=0.004, min_lr=1e-5, weight_decay=0.04,
                  weight_decay_end=0.1, momentum_teacher=0.99, teacher_temp=0.02, warmup_teacher_temp=0.02,
                  freeze_last_layer=0, knn_every=2, knn_image_size=64, num_workers=1),
}
# The course's reference run: the small preset on all of Imagenette (imagenette2-160, 9,469 training images),
# with the uint8 data path (the same views, 2.5x faster per core), 64 epochs (9,472 iterations: about 65 minutes
# on 2 CPU cores; at 24 epochs it only drew level with raw pixels, and its k-NN still rose by 2-3 points per 8
# epochs at 48), and the student's k-NN logged beside the teacher's every 8 epochs (chapter 03, paper Fig. 6).
PRESETS["imagenette"] = dict(PRESETS["small"], augmentation="fast", epochs=64, knn_every=8, knn_student=True)
