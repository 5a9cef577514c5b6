"""Shared fixtures: small real-looking image folders made on the fly, and the shared data when present."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(os.environ.get("DINO_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def make_image_folder(root: Path, classes: int = 2, per_class: int = 6, size: int = 40, seed: int = 0) -> Path:
    """root/{train,val}/<class>/<i>.jpg with class-dependent colour blobs, so classes are separable."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.zeros((size, size, 3), np.float32)
                base[..., c % 3] = 180
                noise = rng.normal(0, 40, (size, size, 3))
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "tiny")


@pytest.fixture
def folder_80px(tmp_path: Path) -> Path:
    """Like tiny_folder, with 80 px images (room for 64 px crops) and 12 per class."""
    return make_image_folder(tmp_path / "images80", size=80, per_class=12)


@pytest.fixture
def folder_24_per_class(tmp_path: Path) -> Path:
    """Like tiny_folder with 24 images per class: 6 iterations of two processes of 4 images."""
    return make_image_folder(tmp_path / "images24", per_class=24)


@pytest.fixture
def photo() -> Image.Image:
    """A real photograph when the shared data is present, else a synthetic 300x200 image."""
    samples = SHARED_DATA / "imagenet-samples"
    if samples.is_dir():
        path = sorted(samples.iterdir())[0]
        return Image.open(path).convert("RGB")
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
