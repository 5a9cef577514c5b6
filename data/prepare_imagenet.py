"""Turn the official ILSVRC2012 archives into the ImageFolder layout the trainer reads.

    OUT/train/<wnid>/<image>.JPEG    from ILSVRC2012_img_train.tar (a tar of 1,000 per-class tars nXXXXXXXX.tar)
    OUT/val/<wnid>/<image>.JPEG      from ILSVRC2012_img_val.tar (50,000 flat JPEGs) labelled with the devkit
                                     ILSVRC2012_devkit_t12.tar.gz (data/meta.mat + validation ground truth)

Images are copied straight out of the archives (nothing is extracted to a temporary folder). A file that
already exists with the size recorded in the archive is skipped, so an interrupted run resumes where it
stopped and a second run writes nothing. Afterwards every split is checked: image and class counts against
the expected numbers, files missing or of the wrong size, and (with --check-images) images PIL cannot decode.

Usage (about 150 GB of free space for OUT; the train archive takes hours to copy on a single disk):

    python data/prepare_imagenet.py --archives ~/Downloads/imagenet --out $DINO_DATA/imagenet
    python data/prepare_imagenet.py --out $DINO_DATA/imagenet --verify-only --check-images

Exit code: 0 when everything checks out, 1 when the checks found problems, 2 for an error that stopped the run.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_META = "ILSVRC2012_devkit_t12/data/meta.mat"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"

EXPECTED_TRAIN_IMAGES = 1_281_167
EXPECTED_VAL_IMAGES = 50_000
EXPECTED_CLASSES = 1_000

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
MAX_REPORTED = 50  # problems printed one per line; the rest are counted
WNID = re.compile(r"n\d{8}")
CLASS_TAR = re.compile(r"(n\d{8})\.tar")
VAL_IMAGE = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")

# Expected output files of one split: path -> size in bytes, as recorded in the archive (str keys: a
# Path per file would cost several hundred MB for the 1.28 million training images).
Manifest = Dict[str, int]


class PrepareError(Exception):
    """A problem that stops the preparation; the message is one line that names it."""


# ----------------------------------------------------------------------------------------------- helpers

def progress(iterable: Iterable, total: Optional[int], desc: str, unit: str) -> Iterable:
    """A tqdm bar on an interactive terminal; the bare iterable when not a TTY, TQDM_DISABLE is set or tqdm is missing."""
    if os.environ.get("TQDM_DISABLE") or not sys.stderr.isatty():
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit=unit)


def open_tar(path: Path, what: str) -> tarfile.TarFile:
    """Open an archive for random access, with a one-line error when it is absent or not a tar."""
    if not path.is_file():
        raise PrepareError(f"missing archive: {path} (the {what}; pass --archives DIR or the path explicitly)")
    try:
        return tarfile.open(path, mode="r:*")
    except tarfile.TarError as err:
        raise PrepareError(f"{path} is not a readable tar archive ({err})") from err


def copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> bool:
    """Write one archive member to ``dest`` unless it already exists with the right size; True if written.

    The bytes go to ``dest.part`` first and are renamed at the end, so an interrupted copy never leaves a
    file that looks complete.
    """
    if dest.is_file() and dest.stat().st_size == member.size:
        return False
    source = tar.extractfile(member)
    if source is None:
        raise PrepareError(f"{member.name} in {tar.name} is not a regular file")
    partial = dest.with_name(dest.name + ".part")
    with source, open(partial, "wb") as out:
        shutil.copyfileobj(source, out, length=1 << 20)
    os.replace(partial, dest)
    return True


def safe_name(name: str, archive: str) -> str:
    """The base name of an archive member, refusing names that could escape the class folder."""
    base = name.rsplit("/", 1)[-1]
    if not base or base.startswith(".") or "\\" in base:
        raise PrepareError(f"unexpected member name {name!r} in {archive}")
    return base


# ----------------------------------------------------------------------------------------------- train

def prepare_train(train_tar: Path, out_dir: Path) -> tuple[Manifest, int]:
    """Copy every per-class tar ``nXXXXXXXX.tar`` of the train archive into ``out_dir/nXXXXXXXX/``.

    Returns the manifest of expected files and the number of files actually written.
    """
    manifest: Manifest = {}
    written = 0
    with open_tar(train_tar, "ImageNet train archive") as outer:
        members = [m for m in outer.getmembers() if m.isfile()]
        if not members:
            raise PrepareError(f"wrong archive layout: {train_tar} holds no files")
        for member in members:
            match = CLASS_TAR.fullmatch(member.name.rsplit("/", 1)[-1])
            if match is None:
                raise PrepareError(f"wrong archive layout: {train_tar} should hold per-class tars like "
                                   f"n01440764.tar, found {member.name!r}")
        for member in progress(members, len(members), "train classes", "class"):
            wnid = CLASS_TAR.fullmatch(member.name.rsplit("/", 1)[-1]).group(1)
            class_dir = out_dir / wnid
            class_dir.mkdir(parents=True, exist_ok=True)
            try:
                inner = tarfile.open(fileobj=outer.extractfile(member), mode="r:")
            except tarfile.TarError as err:
                raise PrepareError(f"wrong archive layout: {member.name} in {train_tar} is not a tar ({err})") from err
            with inner:
                for image in inner.getmembers():
                    if not image.isfile():
                        continue
                    dest = class_dir / safe_name(image.name, member.name)
                    manifest[str(dest)] = image.size
                    written += copy_member(inner, image, dest)
    return manifest, written


# ----------------------------------------------------------------------------------------------- val

def read_mapping_file(path: Path) -> Dict[int, str]:
    """ILSVRC2012_ID -> wnid from a text file of lines ``<ILSVRC2012_ID> <wnid>`` ('#' starts a comment)."""
    if not path.is_file():
        raise PrepareError(f"missing mapping file: {path}")
    mapping: Dict[int, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit() or WNID.fullmatch(fields[1]) is None:
            raise PrepareError(f"{path}:{number}: expected '<ILSVRC2012_ID> <wnid>', got {line.strip()!r}")
        mapping[int(fields[0])] = fields[1]
    return mapping


def read_meta_mat(data: bytes) -> Dict[int, str]:
    """ILSVRC2012_ID -> wnid of the leaf synsets (the 1,000 classes) in the devkit's meta.mat."""
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise PrepareError("reading the devkit's meta.mat needs scipy (pip install scipy), or pass "
                           "--mapping FILE with lines '<ILSVRC2012_ID> <wnid>'") from err
    try:
        synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets.ravel() if int(s["num_children"]) == 0}
    except Exception as err:  # scipy raises several types for a damaged or foreign file
        raise PrepareError(f"cannot read {DEVKIT_META}: {type(err).__name__}: {err}") from err


def read_devkit(devkit: Path, mapping_file: Optional[Path]) -> tuple[List[int], Dict[int, str]]:
    """The validation ground truth (one ILSVRC2012_ID per val image, in image order) and the ID -> wnid map."""
    wanted = [DEVKIT_GROUND_TRUTH] + ([] if mapping_file else [DEVKIT_META])
    found: Dict[str, bytes] = {}
    with open_tar(devkit, "ImageNet devkit") as tar:
        for member in tar.getmembers():
            if member.name in wanted and member.isfile():
                found[member.name] = tar.extractfile(member).read()
    missing = [name for name in wanted if name not in found]
    if missing:
        raise PrepareError(f"wrong archive layout: {devkit} has no {', '.join(missing)}")
    try:
        ground_truth = [int(line) for line in found[DEVKIT_GROUND_TRUTH].decode().split()]
    except ValueError as err:
        raise PrepareError(f"{DEVKIT_GROUND_TRUTH} in {devkit} should hold one integer per line ({err})") from err
    mapping = read_mapping_file(mapping_file) if mapping_file else read_meta_mat(found[DEVKIT_META])
    return ground_truth, mapping


def prepare_val(val_tar: Path, devkit: Path, mapping_file: Optional[Path], out_dir: Path) -> tuple[Manifest, int]:
    """Copy the flat validation JPEGs into ``out_dir/<wnid>/``, the wnid read from the devkit's ground truth."""
    ground_truth, mapping = read_devkit(devkit, mapping_file)
    unknown = sorted(set(ground_truth) - set(mapping))
    if unknown:
        raise PrepareError(f"the validation ground truth uses ILSVRC2012_IDs with no wnid in the mapping, "
                           f"e.g. {unknown[:5]}")
    manifest: Manifest = {}
    written = 0
    with open_tar(val_tar, "ImageNet validation archive") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for member in members:
            if VAL_IMAGE.fullmatch(member.name.rsplit("/", 1)[-1]) is None:
                raise PrepareError(f"wrong archive layout: {val_tar} should hold flat images like "
                                   f"ILSVRC2012_val_00000001.JPEG, found {member.name!r}")
        if len(members) != len(ground_truth):
            raise PrepareError(f"ground-truth count mismatch: {DEVKIT_GROUND_TRUTH} lists {len(ground_truth)} "
                               f"labels but {val_tar} holds {len(members)} images")
        for wnid in sorted(set(mapping[i] for i in ground_truth)):
            (out_dir / wnid).mkdir(parents=True, exist_ok=True)
        for member in progress(members, len(members), "val images", "img"):
            name = member.name.rsplit("/", 1)[-1]
            index = int(VAL_IMAGE.fullmatch(name).group(1))  # 1-based, the line of its label
            if not 1 <= index <= len(ground_truth):
                raise PrepareError(f"ground-truth count mismatch: {name} has no line in {DEVKIT_GROUND_TRUTH} "
                                   f"({len(ground_truth)} lines)")
            dest = out_dir / mapping[ground_truth[index - 1]] / name
            manifest[str(dest)] = member.size
            written += copy_member(tar, member, dest)
    return manifest, written


# ----------------------------------------------------------------------------------------------- checks

def is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS


def count_images(split_dir: Path) -> Dict[str, int]:
    """class name -> number of image files in ``split_dir/<class>/``, as ImageFolder would see them."""
    with os.scandir(split_dir) as entries:
        class_dirs = sorted(entry.path for entry in entries if entry.is_dir())
    counts = {}
    for class_dir in class_dirs:
        with os.scandir(class_dir) as entries:
            counts[os.path.basename(class_dir)] = sum(1 for entry in entries if is_image(entry))
    return counts


def iter_images(split_dir: Path) -> Iterator[Path]:
    """The image files of ``split_dir/<class>/``, class by class in sorted order."""
    for wnid in count_images(split_dir):
        with os.scandir(split_dir / wnid) as entries:
            names = sorted(entry.name for entry in entries if is_image(entry))
        for name in names:
            yield split_dir / wnid / name


def unreadable(path: Path) -> Optional[str]:
    """Why PIL cannot read an image, or None. ``verify()`` checks the structure but does not decode, so a
    JPEG cut short passes it; a full ``load()`` afterwards catches truncation."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        return f"{type(err).__name__}: {err}"
    return None


def check_split(split: str, split_dir: Path, expect_images: int, expect_classes: int,
                manifest: Optional[Manifest], check_images: bool) -> List[str]:
    """Print a summary of one prepared split and return its problems (empty when it checks out)."""
    if not split_dir.is_dir():
        return [f"{split}: folder {split_dir} does not exist"]
    classes = count_images(split_dir)
    n_images = sum(classes.values())
    print(f"{split}: {n_images} images in {len(classes)} classes under {split_dir}")
    problems = []
    if n_images != expect_images:
        problems.append(f"{split}: found {n_images} images, expected {expect_images}")
    if len(classes) != expect_classes:
        problems.append(f"{split}: found {len(classes)} classes, expected {expect_classes}")
    empty = [name for name, count in classes.items() if count == 0]
    if empty:
        problems.append(f"{split}: {len(empty)} empty class folders, e.g. {empty[:5]}")
    if manifest is not None:
        for path, size in manifest.items():
            if not os.path.isfile(path):
                problems.append(f"{split}: missing {path}")
            elif os.path.getsize(path) != size:
                problems.append(f"{split}: {path} has {os.path.getsize(path)} bytes, the archive has {size}")
    if check_images:
        for path in progress(iter_images(split_dir), n_images, f"checking {split} images", "img"):
            reason = unreadable(path)
            if reason is not None:
                problems.append(f"{split}: unreadable image {path} ({reason})")
    return problems


# ----------------------------------------------------------------------------------------------- CLI

def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archives", type=Path, default=Path("."),
                        help=f"folder holding {TRAIN_TAR}, {VAL_TAR} and {DEVKIT} (default: current folder)")
    parser.add_argument("--out", type=Path, required=True, help="output root; train/ and val/ are created in it")
    parser.add_argument("--train-tar", type=Path, help=f"path of {TRAIN_TAR} (default: in --archives)")
    parser.add_argument("--val-tar", type=Path, help=f"path of {VAL_TAR} (default: in --archives)")
    parser.add_argument("--devkit", type=Path, help=f"path of {DEVKIT} (default: in --archives)")
    parser.add_argument("--mapping", type=Path,
                        help="text file of '<ILSVRC2012_ID> <wnid>' lines, used instead of the devkit's meta.mat "
                             "(which needs scipy)")
    parser.add_argument("--splits", nargs="+", choices=("train", "val"), default=["train", "val"])
    parser.add_argument("--verify-only", action="store_true", help="only check an existing OUT, read no archive")
    parser.add_argument("--check-images", action="store_true",
                        help="decode every image with PIL to find unreadable or truncated files (slow)")
    parser.add_argument("--expect-train", type=int, default=EXPECTED_TRAIN_IMAGES, metavar="N",
                        help="number of train images to expect (default: %(default)s)")
    parser.add_argument("--expect-val", type=int, default=EXPECTED_VAL_IMAGES, metavar="N",
                        help="number of val images to expect (default: %(default)s)")
    parser.add_argument("--expect-classes", type=int, default=EXPECTED_CLASSES, metavar="N",
                        help="number of classes to expect in each split (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    expected = {"train": args.expect_train, "val": args.expect_val}
    manifests: Dict[str, Optional[Manifest]] = {split: None for split in args.splits}
    train_tar = args.train_tar or args.archives / TRAIN_TAR
    val_tar, devkit = args.val_tar or args.archives / VAL_TAR, args.devkit or args.archives / DEVKIT
    try:
        if not args.verify_only:
            # Every input is looked for before hours of copying start; val (small) goes first so that a
            # problem with the devkit shows up within minutes.
            needed = {"train": [(train_tar, "ImageNet train archive")],
                      "val": [(val_tar, "ImageNet validation archive"), (devkit, "ImageNet devkit")]}
            for split in args.splits:
                for path, what in needed[split]:
                    if not path.is_file():
                        raise PrepareError(f"missing archive: {path} (the {what}; pass --archives DIR or "
                                           f"the path explicitly)")
            if "val" in args.splits:
                manifests["val"], written = prepare_val(val_tar, devkit, args.mapping, args.out / "val")
                print(f"val: wrote {written} files, {len(manifests['val']) - written} already in place")
            if "train" in args.splits:
                manifests["train"], written = prepare_train(train_tar, args.out / "train")
                print(f"train: wrote {written} files, {len(manifests['train']) - written} already in place")
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, permissions...
        print(f"error: {err}", file=sys.stderr)
        return 2

    problems: List[str] = []
    for split in args.splits:
        problems += check_split(split, args.out / split, expected[split], args.expect_classes,
                                manifests[split], args.check_images)
    if set(args.splits) == {"train", "val"} and (args.out / "train").is_dir() and (args.out / "val").is_dir():
        train_classes, val_classes = set(count_images(args.out / "train")), set(count_images(args.out / "val"))
        if train_classes != val_classes:
            problems.append(f"train and val class folders differ, e.g. "
                            f"{sorted(train_classes ^ val_classes)[:5]}")
    for problem in problems[:MAX_REPORTED]:
        print(f"problem: {problem}", file=sys.stderr)
    if len(problems) > MAX_REPORTED:
        print(f"... and {len(problems) - MAX_REPORTED} more", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found; running the same command again repairs missing or partial files",
              file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
