"""Multi-crop views (paper Sec. 3.1 and Appendix D): sizes, count, and per-view probabilities."""
import math

import pytest
import torch
from PIL import Image

from dino_tutorial import augment
from dino_tutorial.augment import MultiCropAugmentation, denormalize, eval_transform


def test_views_have_the_right_count_and_sizes(photo):
    views = MultiCropAugmentation()(photo)
    assert len(views) == 2 + 8
    assert [tuple(v.shape) for v in views] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 8
    assert all(v.dtype == torch.float32 for v in views)


def test_views_are_imagenet_normalised(photo):
    torch.manual_seed(0)
    view = MultiCropAugmentation(local_crops_number=0)(photo)[0]
    assert view.min() < 0 < view.max()                          # standardised, not in [0, 1]
    assert denormalize(view).min() >= 0 and denormalize(view).max() <= 1


def test_views_are_reproducible_under_torch_manual_seed(photo):
    aug = MultiCropAugmentation(local_crops_number=2, global_size=64, local_size=32)
    torch.manual_seed(3)
    a = aug(photo)
    torch.manual_seed(3)
    b = aug(photo)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


class Counter:
    def __init__(self):
        self.n = 0


@pytest.fixture
def counted(monkeypatch):
    """Count blur and solarization calls by wrapping the PIL functions the augmentation uses."""
    blur, solar = Counter(), Counter()
    real_blur, real_solarize = augment.ImageFilter.GaussianBlur, augment.ImageOps.solarize

    def counting_blur(radius):
        blur.n += 1
        assert 0.1 <= radius <= 2.0, f"blur radius {radius} outside [0.1, 2]"
        return real_blur(radius)

    def counting_solarize(img, threshold):
        solar.n += 1
        return real_solarize(img, threshold)

    monkeypatch.setattr(augment.ImageFilter, "GaussianBlur", counting_blur)
    monkeypatch.setattr(augment.ImageOps, "solarize", counting_solarize)
    return blur, solar


@pytest.mark.parametrize("view, p_blur, p_solarize", [
    ("global_transform_1", 1.0, 0.0), ("global_transform_2", 0.1, 0.2), ("local_transform", 0.5, 0.0)])
def test_blur_and_solarization_probabilities_match_the_recipe(counted, view, p_blur, p_solarize):
    blur, solar = counted
    torch.manual_seed(0)
    transform = getattr(MultiCropAugmentation(global_size=16, local_size=8), view)
    image = Image.new("RGB", (32, 32), (200, 120, 40))
    n = 1000
    for _ in range(n):
        transform(image)
    for count, p in ((blur.n, p_blur), (solar.n, p_solarize)):
        tolerance = 4 * math.sqrt(n * p * (1 - p)) + 1e-9          # 4 standard deviations of a binomial
        assert abs(count - n * p) <= tolerance, f"{view}: {count} of {n}, expected p={p}"


def test_solarization_inverts_bright_pixels_only():
    img = Image.new("RGB", (2, 1))
    img.putpixel((0, 0), (10, 100, 127))
    img.putpixel((1, 0), (128, 200, 255))
    out = augment.RandomSolarize(p=1.0)(img)
    assert out.getpixel((0, 0)) == (10, 100, 127) and out.getpixel((1, 0)) == (127, 55, 0)


def test_crop_scales_of_the_resnet50_recipe_are_the_defaults():
    aug = MultiCropAugmentation()
    assert aug.global_crops_scale == (0.14, 1.0) and aug.local_crops_scale == (0.05, 0.14)
    assert aug.global_transform_1.transforms[0].scale == (0.14, 1.0)
    assert aug.local_transform.transforms[0].interpolation.value == "bicubic"


@pytest.mark.parametrize("kwargs, message", [
    ({"local_crops_number": -1}, "local_crops_number must be >= 0, got -1"),
    ({"global_crops_scale": (0.5, 0.2)}, "global_crops_scale must be"),
    ({"local_crops_scale": (0.0, 0.1)}, "local_crops_scale must be"),
    ({"local_size": 0}, "crop sizes must be >= 1 pixel"),
])
def test_bad_augmentation_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiCropAugmentation(**kwargs)


def test_eval_transform_resizes_and_center_crops(photo):
    assert eval_transform(64)(photo).shape == (3, 64, 64)
