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


def _data_sets(root: Path) -> Path:
    """A data root shaped like the shared one: imagenette-mini/{train,val}/<class>/ and imagenet-samples/."""
    for split in ("train", "val"):
        (root / "imagenette-mini" / split / "n01440764").mkdir(parents=True)
    (root / "imagenet-samples").mkdir()
    return root


def test_data_root_holding_the_data_sets_is_accepted(monkeypatch, tmp_path):
    from dino_tutorial.data import check_data_root
    monkeypatch.setenv("DINO_DATA", str(_data_sets(tmp_path)))
    assert check_data_root(download=False) == tmp_path


@pytest.mark.parametrize("inside", ["imagenette-mini", "imagenette-mini/train", "imagenet-samples"])
def test_data_root_at_a_data_set_folder_says_to_point_at_its_parent(monkeypatch, tmp_path, inside):
    from dino_tutorial.data import DataRootError, check_data_root
    monkeypatch.setenv("DINO_DATA", str(_data_sets(tmp_path) / inside))
    with pytest.raises(DataRootError) as err:
        check_data_root()
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert "DINO_DATA points at a data set folder; point it at its parent" in message
    assert "imagenette-mini/" in message  # what it needs


def test_missing_or_empty_data_root_names_what_it_found_and_needs(monkeypatch, tmp_path):
    from dino_tutorial.data import DataRootError, check_data_root
    monkeypatch.setenv("DINO_DATA", str(tmp_path / "typo"))
    with pytest.raises(DataRootError, match=r"DINO_DATA \(.*typo\) does not exist; it needs .*imagenette-mini/"):
        check_data_root()
    (tmp_path / "other").mkdir()
    with pytest.raises(DataRootError, match=r"holds other; it needs .*imagenette-mini/"):
        check_data_root(tmp_path, download=False)
    assert check_data_root(tmp_path, download=True) == tmp_path  # online, Imagenette is fetched into it


def test_command_line_names_a_bad_data_path_in_one_line(tmp_path, capsys):
    from dino_tutorial.cli import parse_config
    _data_sets(tmp_path)
    for data_path, says in [(tmp_path, "holds data sets (imagenette-mini): give one of them"),
                            (tmp_path / "missing", "missing/train does not exist")]:
        with pytest.raises(SystemExit) as exit_info:
            parse_config(["--preset", "small", "--data-path", str(data_path), "--output-dir", str(tmp_path / "o")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err


def test_chapter_data_functions_check_the_root_first(monkeypatch, tmp_path):
    """What every chapter's first data cell calls fails with the one line, not later with something else."""
    from dino_tutorial.data import DataRootError, imagenette_root, sample_image_paths
    monkeypatch.setenv("DINO_DATA", str(_data_sets(tmp_path) / "imagenette-mini"))
    for call in (imagenette_root, sample_image_paths):
        with pytest.raises(DataRootError, match="point it at its parent"):
            call()
