"""Measure what the course's learnt numbers are compared with, and write them to book/results/baselines.json.

    python tools/course_baselines.py [--data DIR] [--only pixels random trained masks]

- pixels:  k-NN of raw 16 x 16 thumbnails on imagenette-mini and on all of Imagenette (with bootstrap intervals);
- random:  k-NN of each committed architecture at random initialisation, five seeds (mean, sd, every value);
- trained: k-NN of the committed teacher backbones (book/assets) with bootstrap intervals;
- masks:   mean Jaccard of label-free masks on duts-te-500 for the reference backbone, a random network of the
           same architecture and the centred-ellipse prior, with bootstrap intervals.
Entries are merged into the JSON file, so parts can be measured at different times. Every entry records the
settings that produced it. k-NN: k = 20, T = 0.07, the train split as the bank, the val split as queries.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from dino_tutorial import checkpoint
from dino_tutorial.analysis import saliency_jaccard
from dino_tutorial.baselines import bootstrap_mean, knn_interval, pixel_knn, random_init_knn, split_features
from dino_tutorial.data import resolve_data_root
from dino_tutorial.model import build_backbone

BOOK = Path(__file__).resolve().parents[1] / "book"
# (data set, committed backbone file, the preset it came from)
TRAINED = {"small": ("imagenette-mini", "small_teacher_backbone.pth"),
           "imagenette": ("imagenette2-160", "imagenette_teacher_backbone.pth")}
SEEDS = (0, 1, 2, 3, 4)
MASK_SIZE = 128


def interval_entry(interval) -> dict:
    return {"top1": round(interval.top1, 2), "low": round(interval.low, 2), "high": round(interval.high, 2),
            "level": interval.level}


def backbone_info(name: str) -> dict:
    return checkpoint.load(BOOK / "assets" / TRAINED[name][1])


def measure(parts, data: Path) -> dict:
    out = {}
    if "pixels" in parts:
        for dataset in ("imagenette-mini", "imagenette2-160"):
            start = time.time()
            out[f"pixels/{dataset}"] = {**interval_entry(pixel_knn(data / dataset, size=16)), "thumbnail": 16,
                                        "seconds": round(time.time() - start)}
            print(f"pixels/{dataset}", out[f"pixels/{dataset}"], flush=True)
    for name, (dataset, file) in TRAINED.items():
        if not (BOOK / "assets" / file).is_file():
            print(f"skipped {name}: book/assets/{file} is missing", flush=True)
            continue
        info = backbone_info(name)
        arch, small_images, size = info["arch"], info["small_images"], info["knn_image_size"]
        if "random" in parts:
            spread = random_init_knn(arch, data / dataset, size, seeds=SEEDS, small_images=small_images)
            out[f"random/{name}"] = {"arch": arch, "dataset": dataset, "image_size": size, "seeds": list(SEEDS),
                                     "values": list(spread.values), "mean": round(spread.mean, 2),
                                     "sd": round(spread.sd, 2)}
            print(f"random/{name}", out[f"random/{name}"], flush=True)
        if "trained" in parts:
            backbone, _ = checkpoint.load_backbone(BOOK / "assets" / file)
            out[f"trained/{name}"] = {"arch": arch, "dataset": dataset, "image_size": size,
                                      "epochs": info["epochs"],
                                      **interval_entry(knn_interval(split_features(backbone.float(), data / dataset,
                                                                                   size)))}
            print(f"trained/{name}", out[f"trained/{name}"], flush=True)
    if "masks" in parts and (BOOK / "assets" / TRAINED["imagenette"][1]).is_file():
        folder = data / "duts-te-500"
        info = backbone_info("imagenette")
        trained, _ = checkpoint.load_backbone(BOOK / "assets" / TRAINED["imagenette"][1])
        torch.manual_seed(0)
        random_net, _ = build_backbone(info["arch"], small_images=info["small_images"])
        scores = {"centred ellipse (60% of width and height)": saliency_jaccard(None, folder)}
        for label, net in (("random", random_net), ("DINO", trained.float())):
            for method in ("pca", "norm"):
                scores[f"{label}, {method}"] = saliency_jaccard(net, folder, size=MASK_SIZE, method=method)
        for label, values in scores.items():
            mean, low, high = bootstrap_mean(values)
            out[f"masks/{label}"] = {"mean_jaccard": round(mean, 4), "low": round(low, 4), "high": round(high, 4),
                                     "images": len(values), "input_size": MASK_SIZE}
            print(f"masks/{label}", out[f"masks/{label}"], flush=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder holding the data sets (default: DINO_DATA or data/)")
    parser.add_argument("--only", nargs="+", default=["pixels", "random", "trained", "masks"],
                        choices=["pixels", "random", "trained", "masks"])
    parser.add_argument("--out", default=str(BOOK / "results" / "baselines.json"))
    args = parser.parse_args(argv)
    data = resolve_data_root(args.data)
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.update(measure(args.only, data))
    results["_machine"] = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                           f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    path.write_text(json.dumps(dict(sorted(results.items())), indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
