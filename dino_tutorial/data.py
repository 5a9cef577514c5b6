"""Data: where images live, ImageNet and Imagenette as ImageFolder datasets, and readable errors.

The data root is resolved in this order: an explicit path, else the ``DINO_DATA`` environment variable,
else the ``data/`` folder of this repository (or of the working directory when the package is installed
elsewhere). Under it the package looks for ``imagenette-mini`` (a small fixed subset used for tests),
torchvision's Imagenette (downloaded there when missing and online) and ``imagenet-samples``.
"""
from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from PIL import Image
from torchvision.datasets import ImageFolder

IMAGENETTE_CLASSES: Dict[str, str] = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball", "n03888257": "parachute",
}
IMAGENETTE_FOLDERS = ("imagenette-mini", "imagenette2-160", "imagenette2-320", "imagenette2")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class BadImageError(RuntimeError):
    """An image file that cannot be decoded; the message names the file."""


def resolve_data_root(path: Optional[str | os.PathLike] = None) -> Path:
    """The data root: ``path``, else ``$DINO_DATA``, else ``data/`` of the repository or working directory."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get("DINO_DATA"):
        return Path(os.environ["DINO_DATA"]).expanduser()
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").exists():
        return repo / "data"
    return Path("data")


class DataRootError(FileNotFoundError):
    """A data root without the expected data sets; the message is one line: what was found, what is needed."""


DATA_SET_FOLDERS = IMAGENETTE_FOLDERS + ("imagenet-samples", "duts-te-500")


def check_data_root(path: Optional[str | os.PathLike] = None, download: bool = True) -> Path:
    """The data root (as ``resolve_data_root``), checked before anything reads from it.

    Raises DataRootError, one line, when the root is itself a data set folder (``.../imagenette-mini``, a folder
    with ``train/`` and ``val/``, or one of images only), when ``DINO_DATA`` names a folder that does not
    exist, or, with ``download=False``, when it holds none of the data sets. A root without data is accepted
    with ``download=True``: the chapters then fetch Imagenette into it.
    """
    root = resolve_data_root(path)
    named = "the data path" if path is not None else ("DINO_DATA" if os.environ.get("DINO_DATA") else "data/")
    needs = "a folder holding imagenette-mini/ or imagenette2-160/ (and imagenet-samples/ for full-size photos)"
    if root.is_dir():
        subfolders = sorted(p.name for p in root.iterdir() if p.is_dir())
        looks_like_a_set = root.name in DATA_SET_FOLDERS + ("train", "val") or {"train", "val"} <= set(subfolders) \
            or (not subfolders and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir()))
        if looks_like_a_set:
            parent = root.parent.parent if root.name in ("train", "val") else root.parent
            raise DataRootError(f"{named} points at a data set folder; point it at its parent ({parent}): "
                                f"{named} needs {needs}, found {root}")
        if not download and not any(name in subfolders for name in DATA_SET_FOLDERS):
            found = ", ".join(subfolders[:5]) + ("..." if len(subfolders) > 5 else "") if subfolders else "nothing"
            raise DataRootError(f"{named} ({root}) holds {found}; it needs {needs}")
    elif named == "DINO_DATA" or not download:
        raise DataRootError(f"{named} ({root}) does not exist; it needs {needs}")
    return root


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB; a truncated or unreadable file raises BadImageError naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"cannot read image {path}: {err}") from err


class ImageFolderDataset(ImageFolder):
    """``root/<class>/<image>`` with clear errors and an optional deterministic subset of each class.

    ``per_class=n`` keeps the first n images (sorted by name) of every class.
    """

    def __init__(self, root: str | os.PathLike, transform: Optional[Callable] = None, per_class: Optional[int] = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data folder not found: {root}")
        if not any(p.is_dir() for p in root.iterdir()):
            raise FileNotFoundError(f"data folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
        try:
            super().__init__(str(root), transform=transform, loader=load_rgb)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"no images found under {root}: {err}") from err
        if per_class is not None:
            if per_class < 1:
                raise ValueError(f"per_class must be >= 1, got {per_class}")
            seen: Dict[int, int] = {}
            kept = []
            for path, label in self.samples:
                if seen.get(label, 0) < per_class:
                    kept.append((path, label))
                    seen[label] = seen.get(label, 0) + 1
            self.samples = self.imgs = kept
            self.targets = [label for _, label in kept]


def split_folder(root: str | os.PathLike, split: str) -> Path:
    """``root/split`` for split in {"train", "val"}, with an error that says what layout is expected."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    folder = Path(root) / split
    if not folder.is_dir():
        inside = sorted(p.name for p in Path(root).iterdir() if (p / split).is_dir()) if Path(root).is_dir() else []
        hint = f"; {root} holds data sets ({', '.join(inside)}): give one of them" if inside else ""
        raise FileNotFoundError(f"{folder} does not exist: expected an ImageFolder layout {root}/train/<class>/... "
                                f"and {root}/val/<class>/...{hint}")
    return folder


def imagenet(root: str | os.PathLike, split: str, transform: Optional[Callable] = None,
             per_class: Optional[int] = None) -> ImageFolderDataset:
    """ImageNet (or any dataset) in the layout ``root/{train,val}/<wnid>/*.JPEG`` (see data/README.md)."""
    return ImageFolderDataset(split_folder(root, split), transform=transform, per_class=per_class)


def imagenette_root(root: Optional[str | os.PathLike] = None, download: bool = True) -> Path:
    """A folder with Imagenette's ``train/`` and ``val/``: found under the data root, else downloaded there.

    The root is checked first (``check_data_root``), so a chapter's first data cell, which calls this or
    ``sample_image_paths``, says in one line what a wrong ``DINO_DATA`` holds and what it needs.
    """
    data_root = check_data_root(root, download)
    for name in IMAGENETTE_FOLDERS:
        if (data_root / name / "train").is_dir():
            return data_root / name
    if not download:
        raise FileNotFoundError(f"no Imagenette under {data_root}: set DINO_DATA to a folder holding "
                                f"imagenette-mini or imagenette2-160, or call with download=True")
    from torchvision.datasets import Imagenette
    try:
        Imagenette(str(data_root), split="train", size="160px", download=True)
    except Exception as err:  # network errors come in many types
        raise FileNotFoundError(f"no Imagenette under {data_root} and the download failed ({err}); set DINO_DATA "
                                f"to a folder holding imagenette2-160 or imagenette-mini") from err
    return data_root / "imagenette2-160"


def imagenette(split: str, transform: Optional[Callable] = None, root: Optional[str | os.PathLike] = None,
               per_class: Optional[int] = None, download: bool = True) -> ImageFolderDataset:
    """Imagenette's ``split`` ("train" or "val") as an ImageFolder dataset (labels follow sorted wnids)."""
    return ImageFolderDataset(split_folder(imagenette_root(root, download), split), transform, per_class)


def sample_image_paths(n: Optional[int] = None, root: Optional[str | os.PathLike] = None) -> List[Path]:
    """Paths of real photos for figures: full-size ``imagenet-samples`` when present, else Imagenette val."""
    folder = check_data_root(root) / "imagenet-samples"
    if folder.is_dir():
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    else:
        val = split_folder(imagenette_root(root), "val")
        paths = [sorted(d.iterdir())[0] for d in sorted(val.iterdir()) if d.is_dir()]
    if not paths:
        raise FileNotFoundError(f"no images found in {folder}")
    return paths[:n] if n is not None else paths


class TrainingViews(torch.utils.data.Dataset):
    """Training samples whose random views depend only on (seed, epoch, index).

    Each ``__getitem__`` seeds torch's generator from the triple before the transform runs, so a sample's views
    are the same whichever worker loads it and wherever a run resumes: this makes resuming in the middle of
    an epoch, and the ``deterministic`` setting, exact. With ``skip_bad_images``, an unreadable file is
    reported (one line on stderr and in ``bad_images_log``) and the sample is dropped from its batch instead of
    stopping the run; ``collate_views`` counts the drops.
    """

    def __init__(self, dataset: ImageFolderDataset, seed: int = 0, skip_bad_images: bool = False,
                 bad_images_log: Optional[str | os.PathLike] = None):
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self.skip_bad_images, self.bad_images_log = skip_bad_images, bad_images_log

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        try:
            return self.dataset[index]
        except BadImageError as err:
            if not self.skip_bad_images:
                raise
            self.report_bad_image(err)
            return None

    def report_bad_image(self, message) -> None:
        """One line on stderr and in ``bad_images_log`` for a skipped image (the message names the file)."""
        print(f"skipping unreadable image: {message}", file=sys.stderr)
        if self.bad_images_log:
            with open(self.bad_images_log, "a") as f:
                f.write(f"epoch {self.epoch}\t{message}\n")


def collate_views(samples):
    """Stack [(views, label), ...] into ([crop batch per view], labels, number of skipped samples)."""
    kept = [s for s in samples if s is not None]
    if not kept:
        return None, None, len(samples)
    views = [torch.stack([s[0][v] for s in kept]) for v in range(len(kept[0][0]))]
    labels = torch.tensor([s[1] for s in kept])
    return views, labels, len(samples) - len(kept)


class ResumableSampler(torch.utils.data.DistributedSampler):
    """A DistributedSampler (shuffled by seed and epoch, drop_last) that can start part-way through an epoch."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start_index = 0

    def set_start(self, epoch: int, start_index: int) -> None:
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start_index, None)

    def __len__(self) -> int:
        return self.num_samples - self.start_index
