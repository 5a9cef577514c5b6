"""The fast uint8 multi-crop path draws the reference recipe's views and renders them like the reference.

Sampling is checked statistically against torchvision's RandomResizedCrop and the recipe's probabilities
(seeded, so the checks are deterministic); rendering is checked view by view against the reference chain of
PIL operations given the same random draws.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from dino_tutorial.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation
from dino_tutorial.data import BadImageError
from dino_tutorial.fast_augment import (BRIGHTNESS, CONTRAST, HUE, SATURATION, FastMultiCropAugmentation, ViewParams,
                                        normalize_uint8, render_view, _pixels)


def binomial_ok(count: int, n: int, p: float) -> bool:
    """``count`` successes in ``n`` trials is within 4 standard deviations of probability ``p``."""
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the empirical distributions of ``a`` and ``b``."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def reference_view(img: Image.Image, p: ViewParams, size: int) -> torch.Tensor:
    """The reference recipe's operations (torchvision on PIL, as in ``MultiCropAugmentation``) for given draws."""
    out = TF.resized_crop(img, p.top, p.left, p.height, p.width, [size, size], TF.InterpolationMode.BICUBIC)
    if p.flip:
        out = TF.hflip(out)
    if p.jitter:
        ops = {BRIGHTNESS: lambda i: TF.adjust_brightness(i, p.brightness),
               CONTRAST: lambda i: TF.adjust_contrast(i, p.contrast),
               SATURATION: lambda i: TF.adjust_saturation(i, p.saturation),
               HUE: lambda i: TF.adjust_hue(i, p.hue)}
        for op in p.order:
            out = ops[op](out)
    if p.grayscale:
        out = TF.rgb_to_grayscale(out, num_output_channels=3)
    if p.blur_radius > 0:
        out = out.filter(ImageFilter.GaussianBlur(radius=p.blur_radius))
    if p.solarize:
        out = ImageOps.solarize(out, threshold=128)
    return TF.pil_to_tensor(out)


@pytest.fixture
def jpeg(tmp_path, photo) -> Path:
    path = tmp_path / "photo.jpg"
    photo.save(path, quality=90)
    return path


def test_views_have_the_right_count_sizes_and_dtype(jpeg, photo):
    aug = FastMultiCropAugmentation()
    for source in (jpeg, str(jpeg), photo):
        views = aug(source)
        assert len(views) == aug.n_crops == 10
        assert [tuple(v.shape) for v in views] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 8
        assert all(v.dtype == torch.uint8 and v.is_contiguous() for v in views)
    small = FastMultiCropAugmentation(local_crops_number=3, global_size=64, local_size=32)(photo)
    assert [tuple(v.shape) for v in small] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 3


def test_views_are_reproducible_and_a_path_gives_the_pil_views(jpeg):
    aug = FastMultiCropAugmentation(local_crops_number=2)
    torch.manual_seed(5)
    a = aug(jpeg)
    torch.manual_seed(5)
    b = aug(jpeg)
    torch.manual_seed(5)
    c = aug(Image.open(jpeg))          # full-size decode; the path may decode smaller only if every crop allows
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    if aug.draft_scale(aug.sample(*Image.open(jpeg).size)) == 1:
        assert all(torch.equal(x, y) for x, y in zip(a, c))


def test_constructor_validates_like_the_reference():
    with pytest.raises(ValueError, match="local_crops_number"):
        FastMultiCropAugmentation(local_crops_number=-1)
    with pytest.raises(ValueError, match="global_crops_scale"):
        FastMultiCropAugmentation(global_crops_scale=(0.5, 0.2))


@pytest.mark.parametrize("width, height", [(500, 375), (375, 500), (1152, 864)])
def test_crop_area_and_aspect_ratio_follow_random_resized_crop(width, height):
    """~500 crops per view kind: same area-fraction and aspect-ratio distributions as torchvision's sampler."""
    n = 500
    ref = MultiCropAugmentation()
    aug = FastMultiCropAugmentation()
    torch.manual_seed(0)
    draws = [aug.sample(width, height) for _ in range(n // 2)]      # 2 global and 8 local views per draw
    dummy = torch.empty(3, height, width)
    for kind, rrc, views in (("global", ref.global_transform_1.transforms[0], [0, 1]),
                             ("local", ref.local_transform.transforms[0], [2, 3])):
        ours = np.array([(d[v].width, d[v].height) for d in draws for v in views], dtype=float)
        boxes = [rrc.get_params(dummy, rrc.scale, rrc.ratio) for _ in range(n)]       # (top, left, h, w)
        theirs = np.array([(w, h) for _, _, h, w in boxes], dtype=float)
        area = ours.prod(axis=1) / (width * height)
        ref_area = theirs.prod(axis=1) / (width * height)
        low, high = rrc.scale
        # every crop within the scale range (up to rounding w and h to whole pixels)
        slack = (ours.sum(axis=1) + 1) / (2 * width * height)
        assert np.all(area >= low - slack) and np.all(area <= high + slack), kind
        # aspect ratio within [3/4, 4/3] up to rounding each side by half a pixel
        assert np.all((ours[:, 0] - 0.5) / (ours[:, 1] + 0.5) <= 4 / 3), kind
        assert np.all((ours[:, 0] + 0.5) / (ours[:, 1] - 0.5) >= 3 / 4), kind
        # distributions: mean, quantiles and the KS distance against the reference sampler
        assert abs(area.mean() - ref_area.mean()) < 0.06 * (high - low), kind
        for q in (0.1, 0.5, 0.9):
            assert abs(np.quantile(area, q) - np.quantile(ref_area, q)) < 0.08 * (high - low), (kind, q)
        assert ks_statistic(area, ref_area) < 0.12, kind
        log_ratio, ref_log_ratio = np.log(ours[:, 0] / ours[:, 1]), np.log(theirs[:, 0] / theirs[:, 1])
        assert ks_statistic(log_ratio, ref_log_ratio) < 0.12, kind
        # the position is uniform: the crop's left edge covers the whole admissible range
        lefts = np.array([d[v].left / max(1, width - d[v].width) for d in draws for v in views if d[v].width < width])
        assert 0.4 < lefts.mean() < 0.6, kind


def test_impossible_crops_fall_back_to_the_reference_central_crop():
    torch.manual_seed(0)
    for width, height in ((1000, 50), (50, 1000)):
        params = FastMultiCropAugmentation().sample(width, height)[0]
        expected = RandomResizedCrop.get_params(torch.empty(3, height, width), (0.14, 1.0), (3 / 4, 4 / 3))
        assert (params.top, params.left, params.height, params.width) == expected


def test_per_view_probabilities_match_the_recipe():
    n = 2000
    aug = FastMultiCropAugmentation(local_crops_number=1)
    torch.manual_seed(1)
    draws = [aug.sample(400, 300) for _ in range(n)]
    expected = {0: (1.0, 0.0), 1: (0.1, 0.2), 2: (0.5, 0.0)}           # view -> (blur p, solarize p)
    for view, (p_blur, p_solarize) in expected.items():
        params = [d[view] for d in draws]
        counts = {"flip": sum(p.flip for p in params), "jitter": sum(p.jitter for p in params),
                  "grayscale": sum(p.grayscale for p in params), "blur": sum(p.blur_radius > 0 for p in params),
                  "solarize": sum(p.solarize for p in params)}
        probabilities = {"flip": 0.5, "jitter": 0.8, "grayscale": 0.2, "blur": p_blur, "solarize": p_solarize}
        for name, count in counts.items():
            assert binomial_ok(count, n, probabilities[name]), f"view {view}: {name} {count}/{n}"
        radii = np.array([p.blur_radius for p in params if p.blur_radius > 0])
        assert radii.min() >= 0.1 and radii.max() <= 2.0 and abs(radii.mean() - 1.05) < 0.06
        assert all(0.6 <= p.brightness <= 1.4 and 0.6 <= p.contrast <= 1.4 and 0.8 <= p.saturation <= 1.2
                   and -0.1 <= p.hue <= 0.1 for p in params)
        assert all(sorted(p.order) == [0, 1, 2, 3] for p in params)
        for op in range(4):                                      # each operation comes first a quarter of the time
            assert binomial_ok(sum(p.order[0] == op for p in params), n, 0.25)


def _params(**changes) -> ViewParams:
    base = ViewParams(top=10, left=20, height=150, width=170, flip=False, jitter=False, order=(0, 1, 2, 3),
                      brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0, grayscale=False, blur_radius=0.0,
                      solarize=False)
    return base._replace(**changes)


def test_rendering_matches_the_reference_operations(photo):
    """Given the same draws, the fast view and the reference PIL chain differ by about a grey level."""
    img = photo.convert("RGB")
    pixels = _pixels(img)
    aug = FastMultiCropAugmentation()
    torch.manual_seed(2)
    differences = []
    for _ in range(4):
        for params, spec in zip(aug.sample(*img.size), aug.specs):
            ours = render_view(pixels, params, spec.size).int()
            theirs = reference_view(img, params, spec.size).int()
            difference = (ours - theirs).abs().float().mean().item()
            assert difference < 3.0, (difference, params)
            differences.append(difference)
    assert np.mean(differences) < 1.5
    # each operation alone, at the ends of its range; PIL truncates after every operation where the fast path
    # rounds once, so a chain of four differs by about one level
    for changes, tolerance in ((dict(), 0.1), (dict(flip=True), 0.1), (dict(grayscale=True), 0.1),
                               (dict(solarize=True), 0.1), (dict(blur_radius=2.0), 1.0), (dict(blur_radius=0.1), 1.0),
                               (dict(jitter=True, brightness=1.4), 1.0), (dict(jitter=True, contrast=0.6), 1.0),
                               (dict(jitter=True, saturation=1.2), 1.0), (dict(jitter=True, hue=-0.1), 1.0),
                               (dict(jitter=True, hue=0.1, order=(3, 2, 1, 0), brightness=0.7, contrast=1.3,
                                     saturation=0.8), 1.5)):
        params = _params(**changes)
        ours = render_view(pixels, params, 96).int()
        theirs = reference_view(img, params, 96).int()
        assert (ours - theirs).abs().float().mean() < tolerance, changes


def test_flip_grayscale_and_solarization_are_exact(photo):
    pixels = _pixels(photo.convert("RGB"))
    plain = render_view(pixels, _params(blur_radius=1.0), 64)
    assert torch.equal(render_view(pixels, _params(blur_radius=1.0, flip=True), 64), plain.flip(-1))
    solarized = render_view(pixels, _params(blur_radius=1.0, solarize=True), 64)
    assert torch.equal(solarized, torch.where(plain >= 128, 255 - plain, plain))
    gray = render_view(pixels, _params(grayscale=True), 64)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_reduced_jpeg_decoding_keeps_the_views(tmp_path):
    """A large JPEG is decoded at 1/2 or less when every crop allows it, and the views barely change."""
    yy, xx = np.mgrid[0:1600, 0:2000].astype(np.float32)
    pixels = np.stack([128 + 100 * np.sin(xx / 90), 128 + 100 * np.cos(yy / 70), (xx + yy) / 3600 * 255], -1)
    path = tmp_path / "large.jpg"
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=95)
    aug = FastMultiCropAugmentation(local_crops_scale=(0.1, 0.14), local_crops_number=2)
    reductions = []
    for seed in range(4):
        torch.manual_seed(seed)
        reductions.append(aug.draft_scale(aug.sample(2000, 1600)))
        torch.manual_seed(seed)
        drafted = aug(path)
        torch.manual_seed(seed)
        full = aug(Image.open(path))
        for a, b in zip(drafted, full):
            assert (a.int() - b.int()).abs().float().mean() < 3.0
    assert max(reductions) >= 2


def test_unreadable_files_raise_bad_image_error_naming_the_file(tmp_path, jpeg):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 3])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image" * 10)
    aug = FastMultiCropAugmentation(local_crops_number=1)
    for path in (truncated, garbage, tmp_path / "missing.jpg"):
        with pytest.raises(BadImageError, match=path.name):
            aug(path)


def test_normalize_uint8_matches_float_normalisation():
    batch = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = normalize_uint8(batch)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, (batch.float() / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    assert normalize_uint8(batch[0], dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="uint8"):
        normalize_uint8(batch.float())


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 96, 96), (3, 200, 200), (1, 40, 300)])
def test_blur_is_pils_kernel_with_replicated_edges(shape):
    """Both ways of filtering (matrix products for small views, shifted sums for large) give the same blur."""
    from dino_tutorial.fast_augment import blur_kernel, gaussian_blur
    torch.manual_seed(0)
    x = torch.rand(shape) * 255
    for radius in (0.1, 1.0, 2.0):
        kernel = blur_kernel(radius)
        half = len(kernel) // 2
        assert abs(kernel.sum().item() - 1) < 1e-5
        variance = (kernel * torch.arange(-half, half + 1.0) ** 2).sum().item()
        assert abs(variance - radius ** 2) < 1e-4                      # PIL's blur has variance radius ** 2
        padded = torch.nn.functional.pad(x.unsqueeze(0), (half,) * 4, mode="replicate")[0].unsqueeze(1)
        expected = torch.nn.functional.conv2d(torch.nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1)),
                                              kernel.view(1, 1, -1, 1)).squeeze(1)
        torch.testing.assert_close(gaussian_blur(x, radius), expected, atol=1e-3, rtol=1e-5)
