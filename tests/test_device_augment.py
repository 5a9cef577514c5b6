"""The batched on-device multi-crop path makes the recipe's views: checked on CPU tensors.

Three kinds of check: (1) each batched operation equals the CPU fast path's given the same draws (and the
reference PIL chain within a few grey levels); (2) per-view statistics of the whole path, from files to
normalised views, match the recipe (crop scales and aspect ratios from the draws; flips, grayscale and
solarization read back from the pixels; jitter and blur from the draws); (3) bad files are named.
"""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from dino_tutorial.augment import IMAGENET_MEAN, IMAGENET_STD
from dino_tutorial.data import BadImageError
from dino_tutorial.device_augment import (BLUR_RADIUS, HEIGHT, JITTER, LEFT, TOP, WIDTH, DeviceMultiCropAugmentation,
                                          blur_kernels, collate_encoded, pack_params)
from dino_tutorial.fast_augment import (BRIGHTNESS, CONTRAST, HUE, SATURATION, ViewParams, blur_kernel, render_view,
                                        _pixels)
from test_fast_augment import binomial_ok, ks_statistic, reference_view


def grey_levels(views: torch.Tensor) -> torch.Tensor:
    """Normalised views (..., 3, H, W) back to [0, 255] grey levels."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (views * std + mean) * 255.0


def encode(aug, paths, seed=0):
    torch.manual_seed(seed)
    return collate_encoded([(aug(p), 0) for p in paths])[0]


@pytest.fixture
def jpegs(tmp_path, photo):
    paths = []
    for i, size in enumerate([(300, 200), (180, 240), (500, 375)]):
        path = tmp_path / f"photo{i}.jpg"
        photo.resize(size).save(path, quality=90)
        paths.append(path)
    return paths


def test_blur_kernels_are_pils_kernel_for_every_radius():
    radii = torch.linspace(0.1, 2.0, 39)
    kernels = blur_kernels(radii)
    for row, radius in zip(kernels, radii.tolist()):
        expected = blur_kernel(radius)
        pad = (len(row) - len(expected)) // 2
        assert torch.allclose(row[pad:pad + len(expected)], expected, atol=1e-6)
        assert row[:pad].abs().sum() == 0 and row[pad + len(expected):].abs().sum() == 0


def test_the_draw_table_keeps_every_field_exactly():
    aug = DeviceMultiCropAugmentation()
    torch.manual_seed(3)
    params = aug.sample(500, 375)
    table = pack_params(params)
    assert table.shape == (10, 17)
    for row, p in zip(table.tolist(), params):
        assert (row[TOP], row[LEFT], row[HEIGHT], row[WIDTH]) == (p.top, p.left, p.height, p.width)
        assert tuple(int(v) for v in row[6:10]) == p.order
        assert row[10:14] == [p.brightness, p.contrast, p.saturation, p.hue] and row[BLUR_RADIUS] == p.blur_radius


def test_views_have_the_right_count_sizes_normalisation_and_memory_format(jpegs):
    aug = DeviceMultiCropAugmentation()
    batch = encode(aug, jpegs)
    views, kept, failures = aug.views(batch, "cpu", memory_format=torch.channels_last)
    assert kept == [0, 1, 2] and failures == []
    assert [tuple(v.shape) for v in views] == [(3, 3, 224, 224)] * 2 + [(3, 3, 96, 96)] * 8
    assert all(v.dtype == torch.float32 and v.is_contiguous(memory_format=torch.channels_last) for v in views)
    levels = torch.cat([grey_levels(v).flatten() for v in views])
    assert levels.min() > -0.01 and levels.max() < 255.01
    assert torch.allclose(levels, levels.round(), atol=1e-3)       # whole grey levels, as uint8 views
    again = aug.views(encode(aug, jpegs), "cpu")[0]
    assert all(torch.equal(a, b) for a, b in zip(views, again))    # same seed, same views


def _with(p: ViewParams, **changes) -> ViewParams:
    return p._replace(**changes)


def test_batched_rendering_equals_the_fast_path_and_the_pil_chain_for_the_same_draws(jpegs):
    """Every operation forced on in some views: jitter in several orders, grayscale, blur radii, solarize, flip."""
    aug = DeviceMultiCropAugmentation(global_size=96, local_size=48, local_crops_number=4)
    pictures = [Image.open(p).convert("RGB") for p in jpegs]
    torch.manual_seed(0)
    orders = [(BRIGHTNESS, CONTRAST, SATURATION, HUE), (HUE, SATURATION, CONTRAST, BRIGHTNESS),
              (SATURATION, HUE, BRIGHTNESS, CONTRAST), (CONTRAST, BRIGHTNESS, HUE, SATURATION)]
    tables, drawn = [], []
    for b, picture in enumerate(pictures):
        params = aug.sample(*picture.size)
        forced = []
        for v, p in enumerate(params):
            k = b * len(params) + v
            forced.append(_with(p, jitter=k % 5 != 0, order=orders[k % 4], grayscale=k % 7 == 3,
                                blur_radius=[0.0, 0.1, 0.8, 2.0][k % 4], solarize=k % 3 == 1, flip=k % 2 == 0))
        drawn.append(forced)
        tables.append(pack_params(forced))
    images = [_pixels(picture)[0].contiguous() for picture in pictures]
    views = aug.render(images, torch.stack(tables))
    for b, picture in enumerate(pictures):
        for v, p in enumerate(drawn[b]):
            ours = grey_levels(views[v][b])
            fast = render_view(_pixels(picture), p, aug.specs[v].size).float()
            pil = reference_view(picture, p, aug.specs[v].size).float()
            assert (ours - fast).abs().max() <= 2.01, f"image {b} view {v}: {p}"
            assert (ours - pil).abs().mean() < 2.0, f"image {b} view {v}: {p}"


def test_the_float_resize_used_on_cuda_gives_the_same_views(jpegs, monkeypatch):
    """CUDA resizes in float and rounds the batch afterwards; run that arithmetic on the CPU and compare."""
    import dino_tutorial.device_augment as device_augment
    aug = DeviceMultiCropAugmentation(global_size=96, local_size=48, local_crops_number=3)
    uint8_views = aug.views(encode(aug, jpegs), "cpu")[0]
    monkeypatch.setattr(device_augment, "resizes_in_float", lambda device: True)
    float_views = aug.views(encode(aug, jpegs), "cpu")[0]
    for a, b in zip(uint8_views, float_views):
        difference = (grey_levels(a) - grey_levels(b)).abs()
        # a grey level of difference after the resize, amplified by up to 1.4 x 1.4 by the jitter, at worst
        assert (difference > 2.01).float().mean() < 1e-3 and difference.mean() < 0.25, (difference.max(),
                                                                                       difference.mean())
        assert torch.allclose(grey_levels(b), grey_levels(b).round(), atol=1e-3)


def _uniform(tmp_path, name, colour, size=(64, 48)):
    path = tmp_path / name
    Image.new("RGB", size, colour).save(path, quality=95)
    return path


def _gradient(tmp_path, name, size=(64, 48)):
    """A grey ramp from 20 (left) to 90 (right): every jitter keeps it increasing and below the solarize threshold."""
    ramp = np.linspace(20, 90, size[0]).round().astype(np.uint8)
    pixels = np.broadcast_to(ramp[None, :, None], (size[1], size[0], 3)).copy()
    path = tmp_path / name
    Image.fromarray(pixels).save(path, format="PNG")            # lossless, so the ramp is exact
    return path


def test_per_view_statistics_of_the_whole_path_match_the_recipe(tmp_path):
    aug = DeviceMultiCropAugmentation(global_size=24, local_size=12, local_crops_number=4)
    n = 600
    # A uniform colour of moderate chroma that no jitter clamps: grayscale views, and only they, have equal
    # channels. A pale colour whose channels stay >= 128 through any jitter: a solarized view is one whose
    # channels are all below 128. A grey ramp (see _gradient): a flipped view decreases from left to right.
    colour = _uniform(tmp_path, "colour.jpg", (150, 110, 130))
    pale = _uniform(tmp_path, "pale.jpg", (250, 235, 245))
    ramp = _gradient(tmp_path, "ramp.png")
    rendered = {colour: [], pale: [], ramp: []}
    tables = []
    for start in range(0, n, 100):
        for k, path in enumerate(rendered):
            batch = encode(aug, [path] * 100, seed=start + 10_000 * k)
            views, kept, _ = aug.views(batch, "cpu")
            assert len(kept) == 100
            rendered[path].append([grey_levels(v).round() for v in views])
            tables.append(batch.params)
    colour_views, pale_views, ramp_views = ([torch.cat([chunk[v] for chunk in chunks]) for v in range(aug.n_crops)]
                                            for chunks in rendered.values())
    table = torch.cat(tables)                                  # (3n, views, 17)
    blur_p, solarize_p = [1.0, 0.1] + [0.5] * 4, [0.0, 0.2] + [0.0] * 4
    for v in range(aug.n_crops):
        colour_v, pale_v, ramp_v = colour_views[v], pale_views[v], ramp_views[v]
        gray = (colour_v[:, 0] == colour_v[:, 1]).all(dim=(1, 2)) & (colour_v[:, 1] == colour_v[:, 2]).all(dim=(1, 2))
        assert binomial_ok(int(gray.sum()), n, 0.2), f"view {v}: {int(gray.sum())} grayscale of {n}"
        solarized = (pale_v < 128).all(dim=(1, 2, 3))
        assert not ((pale_v < 128).any(dim=(1, 2, 3)) & ~solarized).any()      # all channels or none
        if solarize_p[v] == 0:
            assert solarized.sum() == 0, f"view {v} was solarized"
        else:
            assert binomial_ok(int(solarized.sum()), n, solarize_p[v])
        half = ramp_v.shape[-1] // 2
        flipped = ramp_v[..., :half].mean(dim=(1, 2, 3)) > ramp_v[..., half:].mean(dim=(1, 2, 3))
        assert binomial_ok(int(flipped.sum()), n, 0.5), f"view {v}: {int(flipped.sum())} flipped of {n}"
        column = table[:, v]
        assert binomial_ok(int((column[:, JITTER] > 0.5).sum()), 3 * n, 0.8)
        blurred = column[:, BLUR_RADIUS] > 0
        assert binomial_ok(int(blurred.sum()), 3 * n, blur_p[v])
        assert column[blurred, BLUR_RADIUS].min() >= 0.1 and column[blurred, BLUR_RADIUS].max() <= 2.0
        # crop boxes: the same area-fraction and aspect-ratio distributions as torchvision's RandomResizedCrop
        # on an image of this size (64 x 48), within its ranges up to rounding the sides to whole pixels
        scale = aug.specs[v].scale
        width, height = column[:, WIDTH].numpy(), column[:, HEIGHT].numpy()
        area = width * height / (64 * 48)
        slack = (width + height + 1) / (2 * 64 * 48)
        assert np.all(area >= scale[0] - slack) and np.all(area <= scale[1] + slack), f"view {v}"
        assert np.all((width - 0.5) / (height + 0.5) <= 4 / 3) and np.all((width + 0.5) / (height - 0.5) >= 3 / 4)
        torch.manual_seed(v)
        boxes = [RandomResizedCrop.get_params(torch.empty(3, 48, 64), list(scale), [3 / 4, 4 / 3]) for _ in range(2000)]
        ref_area = np.array([h * w for _, _, h, w in boxes]) / (64 * 48)
        ref_ratio = np.log([w / h for _, _, h, w in boxes])
        assert ks_statistic(area, ref_area) < 0.1, f"view {v}: crop areas differ from RandomResizedCrop's"
        assert ks_statistic(np.log(width / height), ref_ratio) < 0.1, f"view {v}: aspect ratios differ"


def test_unreadable_files_are_named_and_can_be_skipped(tmp_path, jpegs):
    aug = DeviceMultiCropAugmentation(global_size=64, local_size=32, local_crops_number=2)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(BadImageError, match="garbage.jpg"):
        aug(garbage)                                   # the worker cannot even read the header
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpegs[0].read_bytes()[:2000])  # a whole header, half the pixels
    png = tmp_path / "photo.png"
    Image.open(jpegs[1]).save(png)                     # not a JPEG: decoded by the per-image fallback
    bmp = tmp_path / "photo.bmp"
    Image.open(jpegs[2]).save(bmp)                     # a format only PIL reads
    batch = encode(aug, [jpegs[0], truncated, png, bmp])
    with pytest.raises(BadImageError, match="truncated.jpg"):
        aug.views(batch, "cpu")
    views, kept, failures = aug.views(batch, "cpu", skip_bad_images=True)
    assert kept == [0, 2, 3] and len(failures) == 1 and "truncated.jpg" in failures[0]
    assert views[0].shape == (3, 3, 64, 64)
    images, _ = aug.decode(batch, "cpu")
    assert torch.equal(images[3], torch.from_numpy(np.array(Image.open(bmp).convert("RGB"))).permute(2, 0, 1))


def test_gpu_decoding_runs_on_its_own_stream_and_the_training_stream_waits_for_it():
    """pytorch/vision PR #9606: the batched decoder must not share the training stream (fake CUDA on the CPU)."""
    import contextlib
    from dino_tutorial.device_augment import decode_on_idle_stream
    events = []

    class FakeStream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            events.append(("wait", self.name, other.name))

    class Image:
        def record_stream(self, stream):
            events.append(("record", stream.name))

    class FakeCuda:
        current = FakeStream("training")
        active = current

        def Stream(self, device):
            return FakeStream("decode")

        def current_stream(self, device):
            return self.active

        @contextlib.contextmanager
        def stream(self, stream):
            previous, self.active = self.active, stream
            yield
            self.active = previous

    cuda = FakeCuda()

    def decode():
        events.append(("decode on", cuda.active.name))
        return [Image(), Image()]

    images = decode_on_idle_stream(decode, "cuda:0", cuda)
    assert len(images) == 2
    assert events == [("decode on", "decode"), ("wait", "training", "decode"), ("record", "training"),
                      ("record", "training")]


def test_large_reductions_are_resized_in_steps_of_at_most_32x():
    from dino_tutorial.device_augment import resize_stages
    assert resize_stages(500, 400, 224) == [(224, 224)]
    assert resize_stages(3000, 2000, 64) == [(94, 64), (64, 64)]          # 47x would fail on CUDA: two steps
    assert resize_stages(100000, 50, 32) == [(3125, 32), (98, 32), (32, 32)]
    for h, w, size in [(4000, 3000, 32), (2049, 33, 64), (5000, 5000, 96)]:
        stages = resize_stages(h, w, size)
        previous = (h, w)
        for step in stages:
            assert max(previous[0] / step[0], previous[1] / step[1]) <= 32
            previous = step
        assert stages[-1] == (size, size)


def test_the_stepwise_float_resize_matches_the_one_step_resize(monkeypatch):
    """What CUDA computes for a 62x reduction (in float, in two steps) against the CPU's one-step uint8 kernel."""
    from dino_tutorial import device_augment
    generator = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 40, 30, generator=generator) * 255, size=(2000, 1500),
                                             mode="bilinear", align_corners=False)
    image = smooth.round().clamp(0, 255).to(torch.uint8)[0]
    row = [0.0] * 17
    row[device_augment.TOP:device_augment.WIDTH + 1] = [0, 0, 2000, 1500]
    one_step = device_augment.crop_resize(image, row, 32)
    monkeypatch.setattr(device_augment, "resizes_in_float", lambda device: True)
    stepwise = device_augment.crop_resize(image, row, 32)
    assert stepwise.shape == one_step.shape == (3, 32, 32)
    # two filters in a row are a slightly wider filter than one: with detail near the output's Nyquist frequency
    # (this image) they differ by about one grey level on average; a wrong stage (a crop, a transposed size)
    # differs by tens
    assert (stepwise - one_step).abs().mean() < 2.0
