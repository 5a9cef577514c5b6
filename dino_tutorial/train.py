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
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import PRESETS, TrainConfig  # noqa: F401  (re-exported: dino_tutorial.train.TrainConfig)
from .augment import MultiCropAugmentation, eval_transform
from .engine.compilation import compile_decision
from .engine.control import StopRequest, wait_for_checkpoint
from .engine.distributed import gather_rows, setup_distributed, sharded_knn_hits
from .engine.lookahead import Lookahead
from .engine.precision import (amp_dtype, check_cpu_bf16_convolutions, deterministic_pooling,
                               load_scaler_state, use_deterministic_kernels)
from .device_augment import DeviceMultiCropAugmentation, EncodedBatch, collate_encoded
from .fast_augment import FastMultiCropAugmentation, normalize_uint8
from .data import (BadImageError, ImageFolderDataset, ResumableSampler, TrainingViews, collate_views,
                   imagenet)
from .knn import extract_features
from .loss import DINOLoss, collapse_tensors, diagnose_collapse
from .model import DINOHead, MultiCropWrapper, build_backbone
from .optim import build_optimizer, cancel_last_layer_gradients, clip_gradients
from .schedules import cosine_schedule
from .teacher import ema_update, make_teacher, unwrap


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _loader(dataset, batch_size: int, config: TrainConfig, device: torch.device, sampler=None,
            drop_last: bool = False, collate_fn=None) -> DataLoader:
    workers = min(config.num_workers, os.cpu_count() or 1)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last, collate_fn=collate_fn)


@torch.no_grad()
def embed_split(backbone: nn.Module, config: TrainConfig, split: str, device: torch.device, rank: int = 0,
                world_size: int = 1) -> Tuple[torch.Tensor, torch.Tensor, ImageFolderDataset]:
    """This process's share of a split's frozen features (N_r, D) and labels (N_r,), on ``device``, and the
    split: centre crops at ``knn_image_size``; process r embeds images r, r + world_size, ..."""
    dataset = imagenet(config.data_path, split, eval_transform(config.knn_image_size),
                       per_class=config.knn_per_class or None)
    shard = Subset(dataset, range(rank, len(dataset), world_size))          # every process embeds 1/world
    loader = _loader(shard, 2 * config.batch_size_per_gpu, config, device)
    features, labels = extract_features(backbone, loader, device)
    return features.to(device), labels.to(device), dataset


def knn_evaluate(backbone: nn.Module, config: TrainConfig, device: torch.device, rank: int = 0,
                 world_size: int = 1) -> Tuple[float, float]:
    """k-NN top-1/top-5 (percent) of ``backbone`` features, train split as the bank, val split as queries.

    The bank stays split over the processes (each keeps the rows it embedded); the queries are gathered."""
    bank, bank_labels, train_split = embed_split(backbone, config, "train", device, rank, world_size)
    queries, query_labels, val_split = embed_split(backbone, config, "val", device, rank, world_size)
    queries, query_labels = gather_rows(queries, query_labels, len(val_split), world_size, device)
    top1, top5 = sharded_knn_hits(bank, bank_labels, queries, query_labels, config.knn_k, config.knn_temperature,
                                  len(train_split.classes), world_size)
    return 100.0 * int(top1.sum()) / len(top1), 100.0 * int(top5.sum()) / len(top5)


def _check_crop_sizes(images, global_size: int, samples: int = 16) -> None:
    """Fail before any work when the typical image is smaller than a global crop (a few small ones are fine)."""
    from PIL import Image
    step = max(1, len(images.samples) // samples)
    sides = []
    for path, _ in images.samples[::step][:samples]:
        try:
            with Image.open(path) as img:                # reads the header only
                sides.append(min(img.size))
        except (OSError, SyntaxError):
            continue                                     # unreadable files are the training loop's to report
    if not sides:
        return
    median = sorted(sides)[len(sides) // 2]
    if median < global_size:
        raise ValueError(f"global_size {global_size} is larger than the images: their median short side is "
                         f"{median} px over {len(sides)} sampled; lower --global-size")


class Trainer:
    """Builds everything a run needs from a config, then trains epoch by epoch (see the module docstring)."""

    def __init__(self, config: TrainConfig):
        config.validate()
        self.config = config
        self.rank, self.world_size, self.device = setup_distributed(config.device)
        self.is_main = self.rank == 0
        self.show_progress = self.is_main and config.progress and not os.environ.get("TQDM_DISABLE")
        self.output_dir = Path(config.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        use_deterministic_kernels(config.deterministic, self.device)
        set_seed(config.seed)
        self._build_data()
        self._build_models()
        self._build_schedules()

    def _build_data(self) -> None:
        """Multi-crop views of the training split; every process reads its own shard."""
        c = self.config
        views = {"pil": MultiCropAugmentation, "fast": FastMultiCropAugmentation,
                 "device": DeviceMultiCropAugmentation}[c.augmentation]
        self.augmentation = views(c.global_crops_scale, c.local_crops_scale, c.local_crops_number, c.global_size,
                                  c.local_size)
        images = imagenet(c.data_path, "train", self.augmentation, per_class=c.train_per_class or None)
        if c.augmentation != "pil":
            images.loader = os.fspath           # these paths read the file themselves (fast: at reduced size)
        _check_crop_sizes(images, c.global_size)
        if len(images) < c.batch_size_per_gpu * self.world_size:
            raise ValueError(f"{len(images)} training images cannot fill one batch of "
                             f"{c.batch_size_per_gpu} x {self.world_size} processes")
        self.dataset = TrainingViews(images, c.seed, c.skip_bad_images, self.output_dir / "bad_images.log")
        self.sampler = ResumableSampler(self.dataset, self.world_size, self.rank, c.seed)
        self.loader = _loader(self.dataset, c.batch_size_per_gpu, c, self.device, self.sampler, drop_last=True,
                              collate_fn=collate_encoded if c.augmentation == "device" else collate_views)
        self.niter = len(self.loader) if not c.max_iters_per_epoch else min(len(self.loader), c.max_iters_per_epoch)

    def _build_models(self) -> None:
        """Student (backbone + head), its EMA teacher, the loss with its centre, the optimizer."""
        c, device = self.config, self.device
        backbone, feature_dim = build_backbone(c.arch, small_images=c.small_images)
        head = DINOHead(feature_dim, c.out_dim, use_bn=c.use_bn_in_head, norm_last_layer=c.norm_last_layer,
                        hidden_dim=c.head_hidden_dim, bottleneck_dim=c.head_bottleneck_dim)
        student = MultiCropWrapper(backbone, head)
        if c.deterministic and device.type == "cuda":
            deterministic_pooling(student)          # the same numbers; a backward CUDA can make repeatable
        if self.world_size > 1 and device.type == "cuda":
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        self.memory_format = (torch.channels_last if c.channels_last and device.type == "cuda"
                              else torch.contiguous_format)
        self.student = student.to(device, memory_format=self.memory_format)
        self.teacher = make_teacher(self.student)
        ddp = nn.parallel.DistributedDataParallel(
            self.student, device_ids=[device.index] if device.type == "cuda" else None) if self.world_size > 1 \
            else self.student
        compiled, why_not = compile_decision(c.compile, self.student)
        if why_not and self.is_main:
            warnings.warn(why_not, RuntimeWarning, stacklevel=2)
        self.student_fn = torch.compile(ddp) if compiled else ddp
        self.teacher_fn = torch.compile(self.teacher) if compiled else self.teacher
        self.dino_loss = DINOLoss(c.out_dim, 2 + c.local_crops_number, c.warmup_teacher_temp, c.teacher_temp,
                                  c.warmup_teacher_temp_epochs, c.epochs, c.student_temp, c.center_momentum).to(device)
        self.optimizer = build_optimizer(c.optimizer, self.student)
        self.amp_dtype = amp_dtype(c.amp, device)
        if self.amp_dtype == torch.bfloat16 and device.type == "cpu":
            check_cpu_bf16_convolutions(backbone, sorted({c.global_size, c.local_size}))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

    def _build_schedules(self) -> None:
        c = self.config
        self.total_batch = c.batch_size_per_gpu * self.world_size
        self.lr_schedule = cosine_schedule(c.lr * self.total_batch / 256, c.min_lr, c.epochs, self.niter,
                                           c.warmup_epochs)
        self.wd_schedule = cosine_schedule(c.weight_decay, c.weight_decay_end, c.epochs, self.niter)
        self.momentum_schedule = cosine_schedule(c.momentum_teacher, c.momentum_teacher_end, c.epochs, self.niter)

    # ---- checkpoints and logs
    def save_checkpoint(self, epochs_done: int, iteration: int, partial_sums: Dict[str, float]) -> None:
        """Atomic checkpoint after ``epochs_done`` epochs and ``iteration`` iterations of the next one."""
        if self.is_main:
            ckpt.save(self.output_dir / ckpt.CHECKPOINT_NAME, {
                "epoch": epochs_done, "iteration": iteration, "partial_sums": partial_sums,
                "student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict(), "dino_loss": self.dino_loss.state_dict(),
                "scaler": self.scaler.state_dict(), "config": asdict(self.config)})

    def resume(self) -> Tuple[int, int, Dict[str, float]]:
        """(epoch, iteration, partial metric sums) to start from: a checkpoint's, or zeros for a fresh run."""
        c = self.config
        path = self.output_dir / ckpt.CHECKPOINT_NAME if c.resume == "auto" else (
            None if c.resume == "none" else Path(c.resume))
        if path is None or not path.is_file():
            if self.is_main and (self.output_dir / "log.jsonl").exists():
                (self.output_dir / "log.jsonl").unlink()      # a fresh run starts a fresh log
            return 0, 0, {}
        state = ckpt.load(path, map_location=self.device)
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.dino_loss.load_state_dict(state["dino_loss"])
        load_scaler_state(self.scaler, state["scaler"])
        if self.is_main:
            where = f", iteration {state['iteration']}" if state["iteration"] else ""
            print(f"resumed from {path} at epoch {state['epoch']}{where}")
        return state["epoch"], state["iteration"], state["partial_sums"]

    def log(self, record: Dict) -> None:
        if self.is_main:
            with open(self.output_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def knn(self) -> Dict[str, float]:
        """k-NN top-1/top-5 of the teacher's backbone (and of the student's with ``knn_student``), percent."""
        record = dict(zip(("knn_top1", "knn_top5"), knn_evaluate(self.teacher.backbone, self.config, self.device,
                                                                 self.rank, self.world_size)))
        if self.config.knn_student:
            student = unwrap(self.student).backbone
            record.update(zip(("knn_student_top1", "knn_student_top5"),
                              knn_evaluate(student, self.config, self.device, self.rank, self.world_size)))
        return record

    # ---- training
    def fit(self) -> Dict[str, float]:
        """Train until ``config.epochs``; returns the last epoch's record ({"interrupted": True, ...} on a signal)."""
        c = self.config
        epoch, start_iter, sums = self.resume()
        if epoch == 0 and start_iter == 0 and c.knn_every:
            record = self.knn()
            self.log({"epoch": 0, **record})
            if self.is_main:
                print(f"k-NN of the randomly initialised network: top-1 {record['knn_top1']:.2f}%, "
                      f"top-5 {record['knn_top5']:.2f}%")
        last: Dict[str, float] = {}
        with StopRequest() as stop:
            for epoch in range(epoch, c.epochs):
                record = self.train_one_epoch(epoch, start_iter, sums, stop)
                if record is None:
                    return {"interrupted": True, "epoch": epoch, "signal": stop.signal}
                last, start_iter, sums = record, 0, {}
        if self.world_size > 1:
            dist.destroy_process_group()
        return last

    def train_one_epoch(self, epoch: int, start_iter: int, sums: Dict[str, float],
                        stop: StopRequest) -> Optional[Dict[str, float]]:
        """One epoch from iteration ``start_iter``; returns its log record, or None when a signal stopped it."""
        c, device = self.config, self.device
        # Views depend on (seed, epoch, sample index) only, so a resumed run sees exactly the views an
        # uninterrupted run would, whichever worker loads them.
        set_seed(c.seed + 1000 * epoch + self.rank)
        self.dataset.set_epoch(epoch)
        self.sampler.set_start(epoch, start_iter * c.batch_size_per_gpu)
        self.student.train()
        start = time.time()
        bar = tqdm(total=self.niter, initial=start_iter, desc=f"epoch {epoch + 1}/{c.epochs}",
                   disable=not self.show_progress)
        batches = Lookahead(self.loader, self.device_views)
        for i, (crops, _, skipped) in enumerate(batches, start=start_iter):
            if i >= self.niter:
                break
            halt, skip = stop.agree(crops is not None, self.world_size, device)
            if halt:
                self.save_checkpoint(epoch, i, sums)
                if self.is_main:
                    print(f"stopped by signal {stop.signal} at epoch {epoch + 1}, iteration {i}: checkpoint "
                          f"saved; run the same command again to resume")
                bar.close()
                wait_for_checkpoint(self.world_size)
                return None
            sums["skipped_images"] = sums.get("skipped_images", 0) + skipped
            if not skip:
                # augmentation="device": the next batch's views are launched on the device before this step's
                # loss is waited for, so that making them overlaps the step instead of following it
                ahead = batches.prefetch if c.augmentation == "device" and i + 1 < self.niter else None
                loss, stats = self.train_step(crops, epoch, epoch * self.niter + i, i, before_sync=ahead)
                for key, value in {"loss": loss, **stats}.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.set_postfix(loss=f"{loss:.3f}", H_t=f"{stats['teacher_entropy']:.2f}")
            bar.update()
            if c.save_every_iters and (i + 1) % c.save_every_iters == 0 and i + 1 < self.niter:
                self.save_checkpoint(epoch, i + 1, sums)
        bar.close()
        elapsed = time.time() - start
        it = (epoch + 1) * self.niter - 1
        skipped = int(sums.pop("skipped_images", 0))
        record = {"epoch": epoch + 1, **{k: v / self.niter for k, v in sums.items()}, "skipped_images": skipped,
                  "lr": float(self.lr_schedule[it]), "weight_decay": float(self.wd_schedule[it]),
                  "teacher_momentum": float(self.momentum_schedule[it]),
                  "teacher_temp": self.dino_loss.teacher_temp(epoch), "epoch_time_s": elapsed,
                  "images_per_s": (self.niter - start_iter) * self.total_batch / elapsed}
        if c.knn_every and ((epoch + 1) % c.knn_every == 0 or epoch + 1 == c.epochs):
            record.update(self.knn())
        self.log(record)
        self.save_checkpoint(epoch + 1, 0, {})
        if self.is_main:
            knn = f", k-NN top-1 {record['knn_top1']:.2f}%" if "knn_top1" in record else ""
            print(f"epoch {epoch + 1}/{c.epochs}: loss {record['loss']:.4f}, teacher entropy "
                  f"{record['teacher_entropy']:.3f}{knn}, {elapsed:.0f} s")
            warning = diagnose_collapse(record["teacher_entropy"], record["center_entropy"], c.out_dim)
            if warning:
                warnings.warn(f"epoch {epoch + 1}: {warning}", RuntimeWarning, stacklevel=2)
            if skipped:
                print(f"epoch {epoch + 1}: skipped {skipped} unreadable image(s), listed in bad_images.log")
        if self.world_size > 1:
            dist.barrier()
        return record

    def device_views(self, batch: EncodedBatch, skipped: int) -> Tuple[Optional[List[torch.Tensor]], int]:
        """The views of a batch of JPEG bytes, made on the training device; files it cannot decode are
        reported and skipped under ``skip_bad_images`` (else ``BadImageError`` stops the run, naming the file)."""
        views, _, failures = self.augmentation.views(batch, self.device, memory_format=self.memory_format,
                                                     skip_bad_images=self.config.skip_bad_images)
        for message in failures:
            self.dataset.report_bad_image(message)
        return views or None, skipped + len(failures)

    def train_step(self, crops, epoch: int, it: int, i: int,
                   before_sync: Optional[Callable[[], None]] = None) -> Tuple[float, Dict[str, float]]:
        """One DINO iteration (global iteration ``it``, iteration ``i`` of the epoch); returns (loss, collapse stats).

        ``before_sync`` runs once every kernel of the step has been launched, before the host waits for its loss.
        """
        c, device = self.config, self.device
        for g, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr_schedule[it])                # plain floats keep checkpoints weights_only
            if g == 0:
                group["weight_decay"] = float(self.wd_schedule[it])
        crops = [x.to(device, non_blocking=True, memory_format=self.memory_format) for x in crops]
        if crops[0].dtype == torch.uint8:                        # the fast data path: normalise on the device
            crops = [normalize_uint8(x) for x in crops]
        with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            with torch.no_grad():
                teacher_out = self.teacher_fn(crops[:2])
            student_out = self.student_fn(crops)
        # The softmaxes, the cross-entropy and the centre in fp32: autocast runs softmax in fp32 on CUDA but
        # leaves it in bf16 on the CPU, which moves the loss by a few percent.
        student_out, teacher_out = student_out.float(), teacher_out.float()
        stats = collapse_tensors(student_out, teacher_out, self.dino_loss.center, self.dino_loss.teacher_temp(epoch),
                                 c.student_temp)
        loss = self.dino_loss(student_out, teacher_out, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if c.clip_grad:
            clip_gradients(self.student, c.clip_grad)
        cancel_last_layer_gradients(self.student, epoch, c.freeze_last_layer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(self.teacher, self.student, float(self.momentum_schedule[it]))
        if before_sync is not None:
            before_sync()
        values = torch.stack([loss.detach(), *stats.values()]).tolist()    # the step's only wait for the device
        if not math.isfinite(values[0]):
            raise FloatingPointError(
                f"loss is {values[0]} at epoch {epoch + 1}, iteration {i + 1}: likely causes are fp16 overflow "
                f"(try amp=bf16 or none), a learning rate too high (lr={self.lr_schedule[it]:.3g}) or a teacher "
                f"temperature too low ({self.dino_loss.teacher_temp(epoch)}); the last checkpoint is intact")
        return values[0], dict(zip(stats, values[1:]))


def train(config: TrainConfig) -> Dict[str, float]:
    """Train DINO as ``config`` says; returns the last epoch's metrics (also written to output_dir/log.jsonl)."""
    return Trainer(config).fit()


def main(argv=None) -> None:
    import sys
    from .cli import parse_config
    config = parse_config(argv)
    try:
        result = train(config)
    except (BadImageError, FloatingPointError) as err:
        sys.exit(f"error: {str(err).strip().splitlines()[-1]}")
    if result.get("interrupted"):
        sys.exit(128 + result["signal"])          # the shell convention: schedulers can tell "stopped" from "done"


if __name__ == "__main__":
    main()
