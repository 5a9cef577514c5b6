"""The ImageNet preparation scripts in data/, run on tiny archives built with the real ILSVRC2012 layout."""
from __future__ import annotations

import importlib.util
import io
import os
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"data_{name}", DATA_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare = load_script("prepare_imagenet")
subset = load_script("make_subset")

# ILSVRC2012_IDs are not in sorted-wnid order in the real devkit either (ID 1 is n02119789).
ID_TO_WNID = {1: "n02979186", 2: "n01440764", 3: "n02102040"}
TRAIN_PER_CLASS = 4
# Label of val image i (1-based) is line i; class n01440764 (ID 2) gets images 1 and 6.
GROUND_TRUTH = [2, 1, 3, 3, 1, 2]
TINY = ["--expect-train", "12", "--expect-val", "6", "--expect-classes", "3"]


def jpeg_bytes(seed: int, size: int = 24) -> bytes:
    """A small real JPEG of noise (noise compresses badly, so cutting the file loses image data)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def tar_bytes(files: dict, mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_meta_mat(path: Path) -> None:
    """A meta.mat shaped like the devkit's: a struct array 'synsets', leaves have num_children == 0."""
    from scipy.io import savemat
    rows = [(i, wnid, f"class {i}", 0) for i, wnid in ID_TO_WNID.items()]
    rows.append((1001, "n00001740", "entity", 2))  # an inner node of the hierarchy, not a class
    synsets = np.array(rows, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    savemat(path, {"synsets": synsets})


@pytest.fixture
def archives(tmp_path):
    """Tiny ILSVRC2012 archives; returns (folder, {archive-relative expected path: bytes})."""
    folder = tmp_path / "archives"
    folder.mkdir()
    expected = {}
    class_tars = {}
    for c, wnid in enumerate(sorted(ID_TO_WNID.values())):
        images = {f"{wnid}_{k}.JPEG": jpeg_bytes(10 * c + k) for k in range(TRAIN_PER_CLASS)}
        class_tars[f"{wnid}.tar"] = tar_bytes(images)
        expected.update({f"train/{wnid}/{name}": data for name, data in images.items()})
    (folder / prepare.TRAIN_TAR).write_bytes(tar_bytes(class_tars))

    val_images = {}
    for i, label in enumerate(GROUND_TRUTH, start=1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        val_images[name] = jpeg_bytes(100 + i)
        expected[f"val/{ID_TO_WNID[label]}/{name}"] = val_images[name]
    (folder / prepare.VAL_TAR).write_bytes(tar_bytes(val_images))

    devkit_files = {prepare.DEVKIT_GROUND_TRUTH: "".join(f"{i}\n" for i in GROUND_TRUTH).encode()}
    try:
        write_meta_mat(tmp_path / "meta.mat")
        devkit_files[prepare.DEVKIT_META] = (tmp_path / "meta.mat").read_bytes()
    except ImportError:
        pass
    (folder / prepare.DEVKIT).write_bytes(tar_bytes(devkit_files, mode="w:gz"))
    (folder / "mapping.txt").write_text("# ILSVRC2012_ID wnid\n" + "".join(f"{i} {w}\n" for i, w in ID_TO_WNID.items()))
    return folder, expected


def files_under(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_prepare(folder, out, *extra):
    return prepare.main(["--archives", str(folder), "--out", str(out), *TINY, *extra])


# ------------------------------------------------------------------------------------------ prepare_imagenet

def test_archives_become_imagefolder_with_val_labels_from_ground_truth(archives, tmp_path, capsys):
    folder, expected = archives
    out = tmp_path / "imagenet"
    assert run_prepare(folder, out, "--mapping", str(folder / "mapping.txt")) == 0
    assert files_under(out) == expected
    printed = capsys.readouterr().out
    assert "train: 12 images in 3 classes" in printed and "val: 6 images in 3 classes" in printed


def test_val_labels_from_the_devkit_meta_mat(archives, tmp_path):
    pytest.importorskip("scipy")
    folder, expected = archives
    out = tmp_path / "imagenet"
    assert run_prepare(folder, out) == 0
    assert files_under(out) == expected
    assert sorted(p.name for p in (out / "val" / "n01440764").iterdir()) == [
        "ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000006.JPEG"]
    # only leaf synsets are classes; inner nodes of the WordNet hierarchy are left out
    assert prepare.read_meta_mat((tmp_path / "meta.mat").read_bytes()) == ID_TO_WNID


def test_meta_mat_without_scipy_names_scipy_and_the_alternative(tmp_path, monkeypatch, capsys, request):
    # scipy is optional (only ImageNet's devkit meta.mat needs it); the fixture needs it to write one.
    pytest.importorskip("scipy", reason="the archives fixture writes meta.mat with scipy, which is optional")
    folder, _ = request.getfixturevalue("archives")
    monkeypatch.setitem(sys.modules, "scipy", None)  # makes `import scipy.io` raise ImportError
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    assert run_prepare(folder, tmp_path / "out", "--splits", "val") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scipy" in err and "--mapping" in err


def test_rerun_writes_nothing_and_repairs_missing_or_partial_files(archives, tmp_path, capsys):
    folder, expected = archives
    out = tmp_path / "imagenet"
    mapping = ["--mapping", str(folder / "mapping.txt")]
    assert run_prepare(folder, out, *mapping) == 0
    capsys.readouterr()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.JPEG")}
    assert run_prepare(folder, out, *mapping) == 0
    printed = capsys.readouterr().out
    assert "train: wrote 0 files, 12 already in place" in printed
    assert "val: wrote 0 files, 6 already in place" in printed
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.JPEG")} == stamps

    (out / "train" / "n02102040" / "n02102040_1.JPEG").unlink()
    partial = out / "val" / "n02979186" / "ILSVRC2012_val_00000002.JPEG"
    partial.write_bytes(partial.read_bytes()[:100])  # as if a copy had been interrupted
    assert run_prepare(folder, out, "--verify-only") == 1
    assert "found 11 images, expected 12" in capsys.readouterr().err
    assert run_prepare(folder, out, *mapping) == 0
    assert "train: wrote 1 files" in capsys.readouterr().out
    assert files_under(out) == expected


def test_truncated_jpeg_is_reported_only_by_check_images(archives, tmp_path, capsys):
    folder, _ = archives
    good = jpeg_bytes(7, size=64)
    Image.open(io.BytesIO(good[: int(len(good) * 0.7)])).verify()  # verify() alone would let it through
    class_tars = {"n01440764.tar": tar_bytes({"n01440764_0.JPEG": good,
                                              "n01440764_1.JPEG": good[: int(len(good) * 0.7)]})}
    (folder / prepare.TRAIN_TAR).write_bytes(tar_bytes(class_tars))
    args = ["--archives", str(folder), "--out", str(tmp_path / "out"), "--splits", "train",
            "--expect-train", "2", "--expect-classes", "1"]
    assert prepare.main(args) == 0
    capsys.readouterr()
    assert prepare.main(args + ["--check-images"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"unreadable image \S*n01440764_1\.JPEG", err)
    assert "n01440764_0.JPEG" not in err


def test_count_checks_use_the_expected_numbers(archives, tmp_path, capsys):
    folder, _ = archives
    args = ["--archives", str(folder), "--out", str(tmp_path / "out"), "--mapping", str(folder / "mapping.txt")]
    assert prepare.main(args + ["--expect-train", "13", "--expect-val", "6", "--expect-classes", "3"]) == 1
    err = capsys.readouterr().err
    assert "train: found 12 images, expected 13" in err and "val:" not in err
    assert prepare.main(args + ["--expect-train", "12", "--expect-val", "6", "--expect-classes", "4"]) == 1
    assert "found 3 classes, expected 4" in capsys.readouterr().err


def test_defaults_expect_the_full_imagenet(archives, tmp_path, capsys):
    folder, _ = archives
    args = ["--archives", str(folder), "--out", str(tmp_path / "out"), "--mapping", str(folder / "mapping.txt")]
    assert prepare.main(args) == 1
    err = capsys.readouterr().err
    assert "expected 1281167" in err and "expected 50000" in err and "expected 1000" in err


def test_missing_archive_is_a_one_line_error(archives, tmp_path, capsys):
    folder, _ = archives
    (folder / prepare.VAL_TAR).unlink()
    out = tmp_path / "out"
    assert run_prepare(folder, out, "--mapping", str(folder / "mapping.txt")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: missing archive") and prepare.VAL_TAR in err
    assert not out.exists()  # found out before copying anything, not after the (hours long) train split


def test_train_archive_of_flat_images_is_a_layout_error(archives, tmp_path, capsys):
    folder, _ = archives
    (folder / prepare.TRAIN_TAR).write_bytes(tar_bytes({"n01440764_0.JPEG": jpeg_bytes(0)}))
    assert run_prepare(folder, tmp_path / "out", "--splits", "train") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wrong archive layout" in err and "n01440764_0.JPEG" in err


def test_ground_truth_shorter_than_val_archive_is_an_error(archives, tmp_path, capsys):
    folder, _ = archives
    truth = "".join(f"{i}\n" for i in GROUND_TRUTH[:-1]).encode()
    (folder / prepare.DEVKIT).write_bytes(tar_bytes({prepare.DEVKIT_GROUND_TRUTH: truth}, mode="w:gz"))
    out = tmp_path / "out"
    assert run_prepare(folder, out, "--splits", "val", "--mapping", str(folder / "mapping.txt")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ground-truth count mismatch" in err and "5 labels" in err and "6 images" in err
    assert not (out / "val").exists() or not any((out / "val").rglob("*.JPEG"))


def test_devkit_without_ground_truth_is_a_layout_error(archives, tmp_path, capsys):
    folder, _ = archives
    (folder / prepare.DEVKIT).write_bytes(tar_bytes({"README.txt": b"hello"}, mode="w:gz"))
    assert run_prepare(folder, tmp_path / "out", "--splits", "val", "--mapping", str(folder / "mapping.txt")) == 2
    err = capsys.readouterr().err
    assert "wrong archive layout" in err and "validation_ground_truth" in err


# ------------------------------------------------------------------------------------------ make_subset

def shipped_list():
    return (DATA_DIR / "imagenet100.txt").read_text().split()


def test_shipped_imagenet100_list_has_100_unique_wnids():
    wnids = shipped_list()
    assert len(wnids) == 100 and len(set(wnids)) == 100
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert (DATA_DIR / "imagenet100.txt").read_text().splitlines() == wnids  # one per line, nothing else
    assert subset.read_class_list("imagenet100") == wnids


@pytest.fixture
def imagefolder(tmp_path):
    """A fake ImageNet with the 100 listed classes plus two others, 2 train and 1 val file each."""
    src = tmp_path / "imagenet"
    for wnid in shipped_list() + ["n01440764", "n15075141"]:
        for split, count in (("train", 2), ("val", 1)):
            (src / split / wnid).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                (src / split / wnid / f"{wnid}_{k}.JPEG").write_bytes(f"{split} {wnid} {k}".encode())
    return src


def test_imagenet100_subset_links_exactly_the_listed_classes(imagefolder, tmp_path, capsys):
    dst = tmp_path / "imagenet100"
    argv = ["--src", str(imagefolder), "--dst", str(dst), "--classes", "imagenet100"]
    assert subset.main(argv) == 0
    for split in ("train", "val"):
        entries = sorted((dst / split).iterdir())
        assert [p.name for p in entries] == sorted(shipped_list())
        assert all(p.is_symlink() and p.resolve() == (imagefolder / split / p.name).resolve() for p in entries)
    assert "train: 100 classes, 200 images" in capsys.readouterr().out
    assert subset.main(argv) == 0  # running again keeps the links


def test_copy_mode_makes_real_folders(imagefolder, tmp_path):
    classes = tmp_path / "two.txt"
    classes.write_text("# two classes\nn01440764\n\nn15075141\n")
    dst = tmp_path / "two"
    assert subset.main(["--src", str(imagefolder), "--dst", str(dst), "--classes", str(classes), "--copy"]) == 0
    assert files_under(dst) == {f"{split}/{w}/{f.name}": f.read_bytes()
                                for split in ("train", "val") for w in ("n01440764", "n15075141")
                                for f in (imagefolder / split / w).iterdir()}
    assert not any(p.is_symlink() for p in dst.rglob("*"))


def test_class_missing_in_source_is_an_error_and_writes_nothing(imagefolder, tmp_path, capsys):
    victim = shipped_list()[37]
    for path in (imagefolder / "val" / victim).iterdir():
        path.unlink()
    (imagefolder / "val" / victim).rmdir()
    dst = tmp_path / "imagenet100"
    assert subset.main(["--src", str(imagefolder), "--dst", str(dst), "--classes", "imagenet100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and victim in err and "missing" in err
    assert not dst.exists()


def test_malformed_class_list_is_an_error(imagefolder, tmp_path, capsys):
    classes = tmp_path / "bad.txt"
    classes.write_text("n01440764\ntench\n")
    assert subset.main(["--src", str(imagefolder), "--dst", str(tmp_path / "d"), "--classes", str(classes)]) == 2
    assert "bad.txt:2" in capsys.readouterr().err
