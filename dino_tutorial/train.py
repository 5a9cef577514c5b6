"""The DINO trainer: one process, one GPU or many (``torchrun``), CPU or CUDA (paper Alg. 1, Appendix D).

One iteration, for a batch of multi-crop views:

    teacher_out = teacher(global views)                 # no gradient
    student_out = student(all views)
    loss = DINOLoss(student_out, teacher_out, epoch)    # also updates the centre
    loss.backward(); clip each gradient; drop last-layer gradients in epoch 0; optimizer.step()
    ema_update(teacher, student, momentum[it])

Schedules: learning rate and weight decay per iteration, teacher momentum per iteration, teacher
temperature per epoch. A checkpoint is written atomically after every epoch; re-running the same command
resumes from it exactly. Metrics go to ``log.jsonl``, one JSON object per epoch.

Run ``python -m dino_tutorial.train --preset small --data-path DIR --output-dir DIR`` or, on several
GPUs, ``torchrun --nproc_per_node=8 -m dino_tutorial.train --preset rn50_imagenet ...``.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .augment import MultiCropAugmentation, eval_transform
from .data import BadImageError, imagenet, split_folder
from .knn import extract_features, knn_classify
from .loss import DINOLoss, collapse_stats
from .model import DINOHead, MultiCropWrapper, build_backbone
from .optim import build_optimizer, cancel_last_layer_gradients, clip_gradients
from .schedules import cosine_schedule
from .teacher import ema_update, make_teacher


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
    # run
    train_per_class: int = 0             # images per class for training; 0 = all
    max_iters_per_epoch: int = 0         # 0 = the whole epoch
    amp: str = "auto"                    # auto (bf16 on CUDA) | bf16 | fp16 | none
    channels_last: bool = True           # CUDA only
    compile: bool = False
    num_workers: int = 8
    device: str = "auto"                 # auto | cpu | cuda
    seed: int = 0
    deterministic: bool = False
    resume: str = "auto"                 # auto: output_dir/checkpoint.pth if present | none | a path
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
                        "train_per_class", "max_iters_per_epoch", "num_workers", "clip_grad", "min_lr",
                        "weight_decay", "weight_decay_end", "warmup_teacher_temp_epochs")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "teacher_temp", "warmup_teacher_temp", "student_temp", "knn_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("momentum_teacher", "center_momentum"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs})")
        if self.warmup_teacher_temp_epochs > self.epochs:
            raise ValueError(f"warmup_teacher_temp_epochs ({self.warmup_teacher_temp_epochs}) must not exceed "
                             f"epochs ({self.epochs})")
        if self.local_size > self.global_size:
            raise ValueError(f"local_size ({self.local_size}) must not exceed global_size ({self.global_size})")
        choices = {"optimizer": ("sgd", "lars", "adamw"), "amp": ("auto", "bf16", "fp16", "none"),
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
    # A CPU-sized run that learns in minutes on imagenette (see the training chapter for what changed and why).
    "small": dict(arch="resnet18", small_images=False, out_dim=4096, head_hidden_dim=1024, head_bottleneck_dim=256,
                  use_bn_in_head=True, global_size=96, local_size=48, local_crops_number=4,
                  global_crops_scale=(0.25, 1.0), local_crops_scale=(0.05, 0.25), epochs=10, warmup_epochs=1,
                  batch_size_per_gpu=64, optimizer="adamw", lr=0.002, min_lr=1e-5, weight_decay=0.04,
                  weight_decay_end=0.1, momentum_teacher=0.99, teacher_temp=0.04, warmup_teacher_temp=0.04,
                  knn_every=1, knn_image_size=96, num_workers=2),
}


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup_distributed(config: TrainConfig) -> Tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL on CUDA, gloo on CPU."""
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world_size, device


def _loader(dataset, batch_size: int, config: TrainConfig, device: torch.device, sampler=None,
            shuffle_generator: Optional[torch.Generator] = None, drop_last: bool = False) -> DataLoader:
    workers = min(config.num_workers, os.cpu_count() or 1)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last, generator=shuffle_generator,
                      persistent_workers=False)


@torch.no_grad()
def knn_evaluate(backbone: nn.Module, config: TrainConfig, device: torch.device, rank: int = 0,
                 world_size: int = 1) -> Tuple[float, float]:
    """k-NN top-1/top-5 (percent) of ``backbone`` features, train split as the bank, val split as queries."""
    transform = eval_transform(config.knn_image_size)
    per_class = config.knn_per_class or None
    results = []
    for split in ("train", "val"):
        dataset = imagenet(config.data_path, split, transform, per_class=per_class)
        shard = Subset(dataset, range(rank, len(dataset), world_size))      # every process embeds 1/world
        loader = _loader(shard, 2 * config.batch_size_per_gpu, config, device)
        features, labels = extract_features(backbone, loader, device)
        results.append(_gather_shards(features, labels, len(dataset), world_size, device))
    (train_f, train_l), (val_f, val_l) = results
    return knn_classify(train_f.to(device), train_l, val_f.to(device), val_l, k=config.knn_k,
                        T=config.knn_temperature)


def _gather_shards(features, labels, total: int, world_size: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Undo the ``rank::world_size`` sharding: every process gets all rows in dataset order."""
    if world_size == 1:
        return features, labels
    rows = math.ceil(total / world_size)
    padded = torch.zeros(rows, features.shape[1] + 1, device=device)
    padded[:len(features), :-1] = features.to(device)
    padded[:len(features), -1] = labels.to(device).float()
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    interleaved = torch.stack(gathered, dim=1).reshape(rows * world_size, -1)[:total].cpu()
    return interleaved[:, :-1], interleaved[:, -1].long()


def _amp_dtype(config: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    if config.amp == "none" or (config.amp == "auto" and device.type != "cuda"):
        return None
    if config.amp == "fp16":
        return torch.float16
    return torch.bfloat16


def train(config: TrainConfig) -> Dict[str, float]:
    """Train DINO as ``config`` says; returns the last epoch's metrics (and writes them to log.jsonl)."""
    config.validate()
    rank, world_size, device = setup_distributed(config)
    is_main = rank == 0
    show_progress = is_main and config.progress and not os.environ.get("TQDM_DISABLE")
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    set_seed(config.seed)

    # ---- data: multi-crop views of the training split, a different shard on every process
    augmentation = MultiCropAugmentation(config.global_crops_scale, config.local_crops_scale,
                                         config.local_crops_number, config.global_size, config.local_size)
    dataset = imagenet(config.data_path, "train", augmentation, per_class=config.train_per_class or None)
    if len(dataset) < config.batch_size_per_gpu * world_size:
        raise ValueError(f"{len(dataset)} training images cannot fill one batch of "
                         f"{config.batch_size_per_gpu} x {world_size} processes")
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed,
                                 drop_last=True)
    generator = torch.Generator()
    loader = _loader(dataset, config.batch_size_per_gpu, config, device, sampler, generator, drop_last=True)
    niter = len(loader) if not config.max_iters_per_epoch else min(len(loader), config.max_iters_per_epoch)

    # ---- student, teacher, loss, optimizer
    backbone, feature_dim = build_backbone(config.arch, small_images=config.small_images)
    head = DINOHead(feature_dim, config.out_dim, use_bn=config.use_bn_in_head, norm_last_layer=config.norm_last_layer,
                    hidden_dim=config.head_hidden_dim, bottleneck_dim=config.head_bottleneck_dim)
    student = MultiCropWrapper(backbone, head)
    if world_size > 1 and device.type == "cuda":
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    memory_format = torch.channels_last if (config.channels_last and device.type == "cuda") else torch.contiguous_format
    student = student.to(device, memory_format=memory_format)
    teacher = make_teacher(student)
    student_ddp = nn.parallel.DistributedDataParallel(
        student, device_ids=[device.index] if device.type == "cuda" else None) if world_size > 1 else student
    student_fn = torch.compile(student_ddp) if config.compile else student_ddp
    teacher_fn = torch.compile(teacher) if config.compile else teacher
    ncrops = 2 + config.local_crops_number
    dino_loss = DINOLoss(config.out_dim, ncrops, config.warmup_teacher_temp, config.teacher_temp,
                         config.warmup_teacher_temp_epochs, config.epochs, config.student_temp,
                         config.center_momentum).to(device)
    optimizer = build_optimizer(config.optimizer, student)
    amp_dtype = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    total_batch = config.batch_size_per_gpu * world_size
    lr_schedule = cosine_schedule(config.lr * total_batch / 256, config.min_lr, config.epochs, niter,
                                  config.warmup_epochs)
    wd_schedule = cosine_schedule(config.weight_decay, config.weight_decay_end, config.epochs, niter)
    momentum_schedule = cosine_schedule(config.momentum_teacher, 1.0, config.epochs, niter)

    # ---- resume
    start_epoch, last = 0, {}
    resume_path = output_dir / ckpt.CHECKPOINT_NAME if config.resume == "auto" else (
        None if config.resume == "none" else Path(config.resume))
    if resume_path is not None and resume_path.is_file():
        state = ckpt.load(resume_path, map_location=device)
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        dino_loss.load_state_dict(state["dino_loss"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"]
        if is_main:
            print(f"resumed from {resume_path} at epoch {start_epoch}")
    log_path = output_dir / "log.jsonl"
    if start_epoch == 0 and is_main and log_path.exists():
        log_path.unlink()                                       # a fresh run starts a fresh log

    def log(record: Dict) -> None:
        if is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    if start_epoch == 0 and config.knn_every:
        top1, top5 = knn_evaluate(teacher.backbone, config, device, rank, world_size)
        log({"epoch": 0, "knn_top1": top1, "knn_top5": top5})
        if is_main:
            print(f"k-NN of the randomly initialised network: top-1 {top1:.2f}%, top-5 {top5:.2f}%")

    for epoch in range(start_epoch, config.epochs):
        # Re-seed from (seed, epoch, rank): a resumed run sees exactly the views an uninterrupted run would.
        set_seed(config.seed + 1000 * epoch + rank)
        generator.manual_seed(config.seed + 1000 * epoch + rank)
        sampler.set_epoch(epoch)
        student.train()
        sums: Dict[str, float] = {}
        start = time.time()
        bar = tqdm(total=niter, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show_progress)
        for i, (crops, _) in enumerate(loader):
            if i >= niter:
                break
            it = epoch * niter + i
            for g, group in enumerate(optimizer.param_groups):
                group["lr"] = float(lr_schedule[it])          # plain floats keep the checkpoint weights_only
                if g == 0:
                    group["weight_decay"] = float(wd_schedule[it])
            crops = [c.to(device, non_blocking=True, memory_format=memory_format) for c in crops]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                with torch.no_grad():
                    teacher_out = teacher_fn(crops[:2])
                student_out = student_fn(crops)
                stats = collapse_stats(student_out, teacher_out, dino_loss.center, dino_loss.teacher_temp(epoch),
                                       config.student_temp)
                loss = dino_loss(student_out, teacher_out, epoch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, iteration {i + 1}: likely causes are fp16 overflow "
                    f"(try amp=bf16 or none), a learning rate too high (lr={lr_schedule[it]:.3g}) or a teacher "
                    f"temperature too low ({dino_loss.teacher_temp(epoch)}); the last checkpoint is intact")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if config.clip_grad:
                clip_gradients(student, config.clip_grad)
            cancel_last_layer_gradients(student, epoch, config.freeze_last_layer)
            scaler.step(optimizer)
            scaler.update()
            ema_update(teacher, student, float(momentum_schedule[it]))

            for key, value in {"loss": loss.item(), **stats}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{loss.item():.3f}", H_t=f"{stats['teacher_entropy']:.2f}")
            bar.update()
        bar.close()
        elapsed = time.time() - start
        record = {"epoch": epoch + 1, **{k: v / niter for k, v in sums.items()}, "lr": float(lr_schedule[it]),
                  "weight_decay": float(wd_schedule[it]), "teacher_momentum": float(momentum_schedule[it]),
                  "teacher_temp": dino_loss.teacher_temp(epoch), "epoch_time_s": elapsed,
                  "images_per_s": niter * total_batch / elapsed}
        if config.knn_every and ((epoch + 1) % config.knn_every == 0 or epoch + 1 == config.epochs):
            record["knn_top1"], record["knn_top5"] = knn_evaluate(teacher.backbone, config, device, rank, world_size)
        log(record)
        if is_main:
            ckpt.save(output_dir / ckpt.CHECKPOINT_NAME, {
                "epoch": epoch + 1, "student": student.state_dict(), "teacher": teacher.state_dict(),
                "optimizer": optimizer.state_dict(), "dino_loss": dino_loss.state_dict(),
                "scaler": scaler.state_dict(), "config": asdict(config)})
            knn = f", k-NN top-1 {record['knn_top1']:.2f}%" if "knn_top1" in record else ""
            print(f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f}, teacher entropy "
                  f"{record['teacher_entropy']:.3f}{knn}, {elapsed:.0f} s")
        if world_size > 1:
            dist.barrier()
        last = record
    if world_size > 1:
        dist.destroy_process_group()
    return last


def main(argv=None) -> None:
    import sys
    from .cli import parse_config
    config = parse_config(argv)
    try:
        train(config)
    except (BadImageError, FloatingPointError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
