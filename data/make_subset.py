"""Carve a class subset (e.g. ImageNet-100) out of an ImageFolder ImageNet, for train and val.

    python data/make_subset.py --src $DINO_DATA/imagenet --dst $DINO_DATA/imagenet100 --classes imagenet100

Each selected class folder SRC/<split>/<wnid> appears as DST/<split>/<wnid>: a symbolic link by default
(instant, no extra space), or a real copy with --copy (for a file system without links, or to move the
subset to another disk). Running the command again is harmless: links already in place are kept and a
copy only adds the files that are missing.

``--classes imagenet100`` uses data/imagenet100.txt, the 100-class subset of ImageNet introduced by
Tian, Krishnan and Isola, "Contrastive Multiview Coding" (2019) and reused across the self-supervised
literature (one wnid per line, in the order published with that paper). Any other value is a path to a
text file of the same format; blank lines and '#' comments are ignored.

Exit code: 0 on success, 2 for an error (a class missing in the source, a clash in the destination...).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path
from typing import List, Optional

WNID = re.compile(r"n\d{8}")
SHIPPED_LISTS = {"imagenet100": Path(__file__).resolve().parent / "imagenet100.txt"}


class SubsetError(Exception):
    """A problem that stops the subset; the message is one line that names it."""


def read_class_list(spec: str) -> List[str]:
    """The wnids of a shipped list name (``imagenet100``) or of a text file with one wnid per line."""
    path = SHIPPED_LISTS.get(spec, Path(spec))
    if not path.is_file():
        raise SubsetError(f"class list not found: {path} (use a file path or one of {sorted(SHIPPED_LISTS)})")
    wnids: List[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if WNID.fullmatch(entry) is None:
            raise SubsetError(f"{path}:{number}: expected a wnid like n01440764, got {entry!r}")
        if entry in wnids:
            raise SubsetError(f"{path}:{number}: {entry} is listed twice")
        wnids.append(entry)
    if not wnids:
        raise SubsetError(f"class list {path} is empty")
    return wnids


def copy_missing(src: Path, dst: Path) -> int:
    """Copy the files of ``src`` into ``dst`` that are absent or of another size there; returns how many."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = 0
    for item in sorted(src.iterdir()):
        target = dst / item.name
        if item.is_file() and not (target.is_file() and target.stat().st_size == item.stat().st_size):
            shutil.copy2(item, target)
            copied += 1
    return copied


def check_source(src: Path, wnids: List[str]) -> None:
    """Raise SubsetError naming the classes of ``wnids`` that have no folder in ``src``."""
    if not src.is_dir():
        raise SubsetError(f"source split not found: {src} (expected SRC/train/<wnid>/ and SRC/val/<wnid>/)")
    missing = [wnid for wnid in wnids if not (src / wnid).is_dir()]
    if missing:
        raise SubsetError(f"{len(missing)} of {len(wnids)} classes missing in {src}: {', '.join(missing[:5])}"
                          f"{' ...' if len(missing) > 5 else ''}")


def make_split(src: Path, dst: Path, wnids: List[str], copy: bool) -> int:
    """Link or copy ``src/<wnid>`` to ``dst/<wnid>`` for every wnid; returns the number of images in the subset."""
    dst.mkdir(parents=True, exist_ok=True)
    selected = set(wnids)
    extra = sorted(p.name for p in dst.iterdir() if p.name not in selected)
    if extra:
        raise SubsetError(f"{dst} holds folders that are not in the class list ({', '.join(extra[:5])}); "
                          f"remove them or choose another --dst")
    for wnid in wnids:
        source, target = (src / wnid).resolve(), dst / wnid
        if copy:
            if target.is_symlink():
                raise SubsetError(f"{target} is a link from an earlier run without --copy; remove it first")
            copy_missing(source, target)
        elif target.is_symlink():
            if target.resolve() != source:
                raise SubsetError(f"{target} links to {target.resolve()}, not to {source}")
        elif target.exists():
            raise SubsetError(f"{target} exists and is not a link (made with --copy?); remove it first")
        else:
            os.symlink(source, target, target_is_directory=True)
    return sum(1 for wnid in wnids for p in (dst / wnid).iterdir() if p.is_file())


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="ImageFolder root holding train/ and val/")
    parser.add_argument("--dst", type=Path, required=True, help="root of the subset (created)")
    parser.add_argument("--classes", required=True,
                        help=f"one of {sorted(SHIPPED_LISTS)} or a text file with one wnid per line")
    parser.add_argument("--copy", action="store_true", help="copy the images instead of linking class folders")
    parser.add_argument("--splits", nargs="+", choices=("train", "val"), default=["train", "val"])
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        wnids = read_class_list(args.classes)
        for split in args.splits:  # check every source split before writing anything
            check_source(args.src / split, wnids)
        for split in args.splits:
            n_images = make_split(args.src / split, args.dst / split, wnids, args.copy)
            print(f"{split}: {len(wnids)} classes, {n_images} images in {args.dst / split} "
                  f"({'copied' if args.copy else 'linked'})")
    except (SubsetError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
