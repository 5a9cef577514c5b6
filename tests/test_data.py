"""Data folders, readable errors, and where the data root is looked for."""
from pathlib import Path

import pytest

from dino_tutorial.data import BadImageError, ImageFolderDataset, imagenet, load_rgb, resolve_data_root


def test_data_root_prefers_explicit_path_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DINO_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("DINO_DATA")
    assert resolve_data_root().name == "data"


def test_missing_data_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nowhere/train does not exist"):
        imagenet(tmp_path / "nowhere", "train")


def test_empty_data_folder_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="has no class sub-folders"):
        imagenet(tmp_path, "train")


def test_truncated_image_error_names_the_file(tiny_folder):
    path = next((tiny_folder / "train" / "class0").iterdir())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match=str(path)):
        load_rgb(path)
    dataset = imagenet(tiny_folder, "train")
    index = [p for p, _ in dataset.samples].index(str(path))
    with pytest.raises(BadImageError, match="cannot read image"):
        dataset[index]


def test_per_class_keeps_the_first_images_of_every_class(tiny_folder):
    dataset = ImageFolderDataset(tiny_folder / "val", per_class=2)
    assert len(dataset) == 4 and dataset.targets == [0, 0, 1, 1]
    assert [Path(p).name for p, _ in dataset.samples] == ["0.jpg", "1.jpg"] * 2


def test_bad_split_is_rejected(tiny_folder):
    with pytest.raises(ValueError, match="split must be 'train' or 'val', got 'test'"):
        imagenet(tiny_folder, "test")
