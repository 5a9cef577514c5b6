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


# ---- the recipe's constants read back from the pipelines (found by mutation testing)

def _all_transforms(transform):
    import torchvision.transforms as T
    if isinstance(transform, (T.Compose,)):
        for t in transform.transforms:
            yield from _all_transforms(t)
    elif isinstance(transform, T.RandomApply):
        yield transform
        for t in transform.transforms:
            yield from _all_transforms(t)
    else:
        yield transform


def test_every_view_uses_the_authors_colour_jitter_and_bicubic_crops():
    import torchvision.transforms as T
    aug = MultiCropAugmentation()
    for pipeline in (aug.global_transform_1, aug.global_transform_2, aug.local_transform):
        parts = list(_all_transforms(pipeline))
        (jitter,) = [t for t in parts if isinstance(t, T.ColorJitter)]
        # brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, as ranges around "unchanged"
        assert (jitter.brightness, jitter.contrast) == ((0.6, 1.4), (0.6, 1.4))
        assert jitter.saturation == pytest.approx((0.8, 1.2)) and jitter.hue == (-0.1, 0.1)
        (crop,) = [t for t in parts if isinstance(t, T.RandomResizedCrop)]
        assert crop.interpolation == T.InterpolationMode.BICUBIC


@pytest.mark.parametrize("size, resize", [(224, 256), (64, 73), (96, 110)])
def test_the_evaluation_view_resizes_to_256_224ths_then_crops_bicubic(size, resize):
    import torchvision.transforms as T
    resize_step, crop_step = eval_transform(size).transforms[:2]
    assert resize_step.size == resize and resize_step.interpolation == T.InterpolationMode.BICUBIC
    assert crop_step.size == (size, size)
    assert eval_transform(1).transforms[1].size == (1, 1)                 # the smallest size is allowed
    with pytest.raises(ValueError, match="^image_size must be >= 1, got 0$"):
        eval_transform(0)


def test_denormalize_inverts_the_normalisation_and_clips_to_the_unit_range():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 5, 4, generator=generator)
    mean, std = torch.tensor(augment.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(augment.IMAGENET_STD).view(3, 1, 1)
    assert augment.IMAGENET_MEAN == (0.485, 0.456, 0.406) and augment.IMAGENET_STD == (0.229, 0.224, 0.225)
    assert torch.allclose(denormalize((image - mean) / std), image, atol=1e-6)
    assert denormalize(torch.full((3, 2, 2), 100.0)).eq(1.0).all()
    assert denormalize(torch.full((3, 2, 2), -100.0)).eq(0.0).all()


def test_probabilities_and_scales_at_their_limits():
    augment.RandomGaussianBlur(p=0.0), augment.RandomGaussianBlur(p=1.0), augment.RandomSolarize(p=0.0)
    with pytest.raises(ValueError, match=r"^blur p must be in \[0, 1\], got 1.5$"):
        augment.RandomGaussianBlur(p=1.5)
    with pytest.raises(ValueError, match=r"^solarization p must be in \[0, 1\], got -0.1$"):
        augment.RandomSolarize(p=-0.1)
    MultiCropAugmentation(global_crops_scale=(0.5, 0.5), local_crops_scale=(0.05, 1.0), global_size=1, local_size=1)
    with pytest.raises(ValueError, match=r"^global_crops_scale must be \(min, max\) with 0 < min <= max <= 1"):
        MultiCropAugmentation(global_crops_scale=(0.5, 1.5))
