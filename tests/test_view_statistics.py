"""Every probability and range of the multi-crop recipe, for each data path (``pil``, ``fast``, ``device`` run on
the CPU), within binomial (4 standard deviations) or Kolmogorov-Smirnov bounds (paper Appendix D; BYOL's recipe).

Read back from the produced views where the view shows it: three synthetic images make each operation visible
(a uniform colour: grayscale views have equal channels, and a view keeps the colour exactly only if it was
neither jittered, grayed nor solarized; a pale colour that no jitter brings below 128: a solarized view is one
whose channels are all below 128; a grey ramp: a flipped view decreases from left to right). What a view cannot
show (the jitter factors, the blur radius of a flat image, the crop box) is read from the draws: torchvision's
samplers for ``pil`` (recorded as they are called), the draw table for ``fast`` and ``device``.
"""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import RandomResizedCrop

from dino_tutorial import augment
from dino_tutorial.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation
from dino_tutorial.device_augment import DeviceMultiCropAugmentation, collate_encoded
from dino_tutorial.fast_augment import FastMultiCropAugmentation

N = 300                                       # draws per view kind and image
SIZE = (120, 90)                              # (width, height) of the synthetic images
COLOUR, PALE = (150, 110, 130), (250, 235, 245)
RECIPE = {  # view: (crop scale, blur p, solarization p), the ResNet-50 command's scales
    0: ((0.14, 1.0), 1.0, 0.0), 1: ((0.14, 1.0), 0.1, 0.2), 2: ((0.05, 0.14), 0.5, 0.0)}
JITTER_RANGES = {"brightness": (0.6, 1.4), "contrast": (0.6, 1.4), "saturation": (0.8, 1.2), "hue": (-0.1, 0.1)}


def binomial_ok(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9


def ks_uniform(values, low: float, high: float) -> float:
    """Kolmogorov-Smirnov distance between the sample and U(low, high)."""
    x = np.sort((np.asarray(values, dtype=float) - low) / (high - low))
    n = len(x)
    return float(max((np.arange(1, n + 1) / n - x).max(), (x - np.arange(n) / n).max()))


def ks_two(a, b) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def images():
    colour = Image.new("RGB", SIZE, COLOUR)
    pale = Image.new("RGB", SIZE, PALE)
    ramp = np.linspace(20, 90, SIZE[0]).round().astype(np.uint8)
    ramp = Image.fromarray(np.broadcast_to(ramp[None, :, None], (SIZE[1], SIZE[0], 3)).copy())
    return {"colour": colour, "pale": pale, "ramp": ramp}


def grey_levels(normalised: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((normalised * std + mean) * 255.0).round()


def draws_from_table(rows):
    """ViewParams-like rows -> dict of arrays (the draws a view cannot show)."""
    rows = list(rows)
    jittered = [p for p in rows if p.jitter]
    return {"area": np.array([p.width * p.height for p in rows], float) / (SIZE[0] * SIZE[1]),
            "ratio": np.array([p.width / p.height for p in rows], float),
            "blur": np.array([p.blur_radius for p in rows]),
            **{name: np.array([getattr(p, name) for p in jittered]) for name in JITTER_RANGES},
            "first_op": np.array([p.order[0] for p in jittered])}


def run_pil(monkeypatch):
    """Views of the reference PIL chain, with torchvision's and the blur's draws recorded per view."""
    aug = MultiCropAugmentation(global_size=16, local_size=8, local_crops_number=1)
    transforms = [aug.global_transform_1, aug.global_transform_2, aug.local_transform]
    record = {"view": 0}
    log = {v: {"box": [], "scale": set(), "ratio": set(), "jitter": [], "blur": []} for v in range(3)}
    crop_params, jitter_params = RandomResizedCrop.get_params, T.ColorJitter.get_params
    real_blur = augment.ImageFilter.GaussianBlur

    def crop(img, scale, ratio):
        box = crop_params(img, scale, ratio)
        entry = log[record["view"]]
        entry["box"].append(box)
        entry["scale"].add(tuple(scale))
        entry["ratio"].add(tuple(ratio))
        return box

    def jitter(*args):
        out = jitter_params(*args)
        log[record["view"]]["jitter"].append(out)
        return out

    def blur(radius):
        log[record["view"]]["blur"].append(radius)
        return real_blur(radius)

    monkeypatch.setattr(RandomResizedCrop, "get_params", staticmethod(crop))
    monkeypatch.setattr(T.ColorJitter, "get_params", staticmethod(jitter))
    monkeypatch.setattr(augment.ImageFilter, "GaussianBlur", blur)
    torch.manual_seed(0)
    pictures = images()
    views = {name: [] for name in pictures}
    for name, picture in pictures.items():
        for _ in range(N):
            row = []
            for v, transform in enumerate(transforms):
                record["view"] = v
                row.append(grey_levels(transform(picture)))
            views[name].append(row)
    draws = {}
    for v, entry in log.items():
        assert entry["scale"] == {RECIPE[v][0]} and entry["ratio"] == {(3 / 4, 4 / 3)}, entry["scale"]
        boxes = np.array([(h, w) for _, _, h, w in entry["box"]], float)
        jit = entry["jitter"]                            # (order, brightness, contrast, saturation, hue) when applied
        draws[v] = {"area": boxes[:, 0] * boxes[:, 1] / (SIZE[0] * SIZE[1]), "ratio": boxes[:, 1] / boxes[:, 0],
                    "blur": np.array(entry["blur"] + [0.0] * (3 * N - len(entry["blur"]))),
                    "brightness": np.array([j[1] for j in jit]), "contrast": np.array([j[2] for j in jit]),
                    "saturation": np.array([j[3] for j in jit]), "hue": np.array([j[4] for j in jit]),
                    "first_op": np.array([int(j[0][0]) for j in jit]), "jitter_count": len(jit)}
    return views, draws


def run_fast(monkeypatch):
    aug = FastMultiCropAugmentation(global_size=16, local_size=8, local_crops_number=1)
    torch.manual_seed(0)
    views = {name: [[v.float() for v in aug(picture)] for _ in range(N)] for name, picture in images().items()}
    torch.manual_seed(1)
    table = [aug.sample(*SIZE) for _ in range(3 * N)]
    return views, {v: draws_from_table(row[v] for row in table) for v in range(3)}


def run_device(monkeypatch, tmp_path):
    from dino_tutorial.fast_augment import ViewParams
    aug = DeviceMultiCropAugmentation(global_size=16, local_size=8, local_crops_number=1)
    views, tables = {}, []
    for k, (name, picture) in enumerate(images().items()):
        path = tmp_path / f"{name}.png"
        picture.save(path)                                   # lossless: the colours stay exact
        torch.manual_seed(k)
        batch = collate_encoded([(aug(path), 0) for _ in range(N)])[0]
        out, kept, _ = aug.views(batch, "cpu")
        assert len(kept) == N
        views[name] = [[grey_levels(out[v][b]) for v in range(3)] for b in range(N)]
        tables.append(batch.params)
    table = torch.cat(tables)                                # (3N, views, 17)

    def row(r):
        r = r.tolist()
        return ViewParams(int(r[0]), int(r[1]), int(r[2]), int(r[3]), r[4] > 0.5, r[5] > 0.5,
                          tuple(int(x) for x in r[6:10]), r[10], r[11], r[12], r[13], r[14] > 0.5, r[15], r[16] > 0.5)

    return views, {v: draws_from_table(row(table[i, v]) for i in range(len(table))) for v in range(3)}


@pytest.fixture(params=["pil", "fast", "device"], scope="module")
def produced(request, tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        if request.param == "pil":
            return request.param, *run_pil(monkeypatch)
        if request.param == "fast":
            return request.param, *run_fast(monkeypatch)
        return request.param, *run_device(monkeypatch, tmp_path_factory.mktemp("device"))
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("v", [0, 1, 2])
def test_flip_grayscale_jitter_and_solarization_probabilities_read_back_from_the_views(produced, v):
    path, views, _ = produced
    _, _, p_solarize = RECIPE[v]
    colour = torch.stack([row[v] for row in views["colour"]])           # (N, 3, H, W)
    pale = torch.stack([row[v] for row in views["pale"]])
    ramp = torch.stack([row[v] for row in views["ramp"]])
    gray = (colour[:, 0] == colour[:, 1]).all(dim=(1, 2)) & (colour[:, 1] == colour[:, 2]).all(dim=(1, 2))
    assert binomial_ok(int(gray.sum()), N, 0.2), f"{path} view {v}: {int(gray.sum())} grayscale of {N}"
    # a non-grayscale view keeps the colour only if neither jittered (p 0.2) nor solarized
    unchanged = (colour == torch.tensor(COLOUR, dtype=colour.dtype).view(3, 1, 1)).all(dim=(1, 2, 3))
    kept = int(unchanged[~gray].sum())
    assert binomial_ok(kept, int((~gray).sum()), 0.2 * (1 - p_solarize)), \
        f"{path} view {v}: {kept} of {int((~gray).sum())} views not jittered, expected p = {0.2 * (1 - p_solarize)}"
    solarized = (pale < 128).all(dim=(1, 2, 3))
    assert not ((pale < 128).any(dim=(1, 2, 3)) & ~solarized).any()      # all channels or none
    assert binomial_ok(int(solarized.sum()), N, p_solarize), f"{path} view {v}: {int(solarized.sum())} solarized"
    half = ramp.shape[-1] // 2
    flipped = ramp[..., :half].mean(dim=(1, 2, 3)) > ramp[..., half:].mean(dim=(1, 2, 3))
    assert binomial_ok(int(flipped.sum()), N, 0.5), f"{path} view {v}: {int(flipped.sum())} flipped of {N}"


@pytest.mark.parametrize("v", [0, 1, 2])
def test_jitter_factors_blur_and_crops_follow_the_recipes_distributions(produced, v):
    path, _, all_draws = produced
    draws, n = all_draws[v], 3 * N
    (low, high), p_blur, _ = RECIPE[v]
    if path == "pil":                                  # the jitter's sampler is called only for jittered views
        assert binomial_ok(draws["jitter_count"], n, 0.8), f"view {v}: {draws['jitter_count']} jittered of {n}"
    for name, (a, b) in JITTER_RANGES.items():
        values = draws[name]
        assert values.min() >= a and values.max() <= b, f"{path} view {v}: {name} outside [{a}, {b}]"
        assert ks_uniform(values, a, b) < 1.95 / math.sqrt(len(values)), f"{path} view {v}: {name} not U[{a}, {b}]"
    for op in range(4):                                # each jitter operation comes first a quarter of the time
        assert binomial_ok(int((draws["first_op"] == op).sum()), len(draws["first_op"]), 0.25), (path, v, op)
    radii = draws["blur"][draws["blur"] > 0]
    assert binomial_ok(len(radii), n, p_blur), f"{path} view {v}: {len(radii)} blurred of {n}, expected p = {p_blur}"
    if len(radii):
        assert radii.min() >= 0.1 and radii.max() <= 2.0
        assert ks_uniform(radii, 0.1, 2.0) < 1.95 / math.sqrt(len(radii)), f"{path} view {v}: radius not U[0.1, 2]"
    # crops: within the scale range (up to rounding each side to whole pixels) and aspect ratio in [3/4, 4/3],
    # distributed as torchvision's RandomResizedCrop with the recipe's scale
    area, ratio = draws["area"], draws["ratio"]
    slack = 1.5 * (SIZE[0] + SIZE[1]) / (SIZE[0] * SIZE[1])
    assert area.min() >= low - slack and area.max() <= high + slack, f"{path} view {v}: areas {area.min()}-{area.max()}"
    assert area.min() < low + 0.05 * (high - low), f"{path} view {v}: no crop near the smallest scale {low}"
    assert ratio.min() >= 0.75 * 0.97 and ratio.max() <= 4 / 3 * 1.03
    torch.manual_seed(10 + v)
    boxes = [RandomResizedCrop.get_params(torch.empty(3, SIZE[1], SIZE[0]), [low, high], [3 / 4, 4 / 3])
             for _ in range(4000)]
    ref_area = np.array([h * w for _, _, h, w in boxes], float) / (SIZE[0] * SIZE[1])
    ref_ratio = np.array([w / h for _, _, h, w in boxes], float)
    bound = 1.95 * math.sqrt((n + 4000) / (n * 4000))            # KS at the 0.1% level
    assert ks_two(area, ref_area) < bound, f"{path} view {v}: crop areas differ from RandomResizedCrop's"
    assert ks_two(np.log(ratio), np.log(ref_ratio)) < bound, f"{path} view {v}: aspect ratios differ"
