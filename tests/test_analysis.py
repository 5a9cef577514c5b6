"""Reading a ResNet's feature map (paper Sec. 4.2): checked on feature maps with a planted object and on
hand-made masks, against numbers computed independently (NumPy's eigendecomposition, counting by hand)."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dino_tutorial.analysis import (densify, feature_map, foreground_mask, mask_iou, masked_mean, pca_rgb,
                                    principal_components, saliency, upsample)
from dino_tutorial.model import build_backbone


def planted(B=3, C=16, h=8, w=8, box=(2, 5, 3, 7), noise=0.05, seed=0):
    """Feature maps whose positions inside `box` (rows r0:r1, cols c0:c1) carry the feature `obj`, the others
    `bg`, plus Gaussian noise. Returns (feature_maps, the planted (B, h, w) mask)."""
    rng = np.random.default_rng(seed)
    bg, obj = rng.normal(size=C), rng.normal(size=C)
    mask = np.zeros((B, h, w), bool)
    r0, r1, c0, c1 = box
    mask[:, r0:r1, c0:c1] = True
    x = np.where(mask[..., None], obj, bg) + noise * rng.normal(size=(B, h, w, C))
    return torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2), torch.tensor(mask)


def test_feature_map_is_the_map_that_the_backbone_pools():
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18_w16")
    backbone.eval()
    images = torch.randn(2, 3, 96, 96)
    maps = feature_map(backbone, images)
    assert maps.shape == (2, dim, 3, 3)                            # 96 / 32 positions per side
    with torch.no_grad():
        pooled = backbone(images)
    assert torch.allclose(maps.mean(dim=(2, 3)), pooled, atol=1e-5)


def test_feature_map_of_the_small_image_stem_has_stride_8():
    backbone, dim = build_backbone("resnet18_w16", small_images=True)
    assert feature_map(backbone.eval(), torch.randn(1, 3, 64, 64)).shape == (1, dim, 8, 8)


@pytest.mark.parametrize("arch, size", [("resnet18_w16", 96), ("resnet50", 64)])   # basic and bottleneck blocks
def test_dense_map_holds_the_original_map_at_every_step(arch, size):
    torch.manual_seed(0)
    backbone, _ = build_backbone(arch)
    backbone.eval()
    images = torch.randn(1, 3, size, size)
    original = feature_map(backbone, images)
    for output_stride in (16, 8):
        dense = feature_map(densify(backbone, output_stride), images)
        step = 32 // output_stride
        assert dense.shape[-2:] == (size // output_stride, size // output_stride)
        assert torch.allclose(dense[..., ::step, ::step], original, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(dense[..., 1::step, 1::step], original, atol=1e-2)   # new positions are new


def test_densify_leaves_the_original_network_alone():
    backbone, _ = build_backbone("resnet18_w16")
    before = [(m.stride, m.dilation) for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    densify(backbone, 8)
    assert [(m.stride, m.dilation) for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)] == before
    with pytest.raises(ValueError, match="output_stride"):
        densify(backbone, 4)


def test_feature_map_refuses_a_network_that_is_not_a_resnet():
    with pytest.raises(ValueError, match="ResNet"):
        feature_map(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8))


def test_principal_components_equal_numpy_eigenvectors_of_the_covariance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 5, 4)) * np.arange(1, 7)[None, :, None, None]   # distinct variances
    rows = x.transpose(0, 2, 3, 1).reshape(-1, 6)
    rows = rows - rows.mean(axis=0)
    values, vectors = np.linalg.eigh(rows.T @ rows)
    expected = rows @ vectors[:, ::-1][:, :3]                       # largest eigenvalues first
    got = principal_components(torch.tensor(x, dtype=torch.float32), 3).reshape(-1, 3).double().numpy()
    for k in range(3):                                              # equal up to the sign of each component
        sign = np.sign(got[:, k] @ expected[:, k])
        np.testing.assert_allclose(got[:, k], sign * expected[:, k], atol=1e-4)


def test_pca_rgb_is_in_the_unit_range_with_each_channel_spanning_it():
    maps, _ = planted()
    rgb = pca_rgb(maps)
    assert rgb.shape == (3, 8, 8, 3)
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(rgb.amin(dim=(0, 1, 2)), torch.zeros(3))
    assert torch.allclose(rgb.amax(dim=(0, 1, 2)), torch.ones(3))


def test_first_component_separates_a_planted_object_from_the_background():
    maps, truth = planted()
    first = pca_rgb(maps, n_components=1)[..., 0]
    inside, outside = first[truth], first[~truth]
    assert inside.min() > outside.max() or inside.max() < outside.min()


def test_pca_mask_recovers_the_planted_object_as_the_minority():
    maps, truth = planted()                                          # object: 3 x 4 of 8 x 8 positions
    mask = foreground_mask(maps, method="pca", orient="minority")
    assert mask.shape == truth.shape and mask.dtype == torch.bool
    assert torch.equal(mask, truth)


def test_image_centring_ignores_differences_between_images():
    maps, truth = planted()
    maps[0] += 5.0                                                   # one image far brighter than the others
    assert foreground_mask(maps, centre="batch").flatten(1).all(dim=1).tolist() == [True, False, False]
    assert torch.equal(foreground_mask(maps, centre="image"), truth)


def test_centre_orientation_picks_a_central_object_even_when_it_is_the_majority():
    maps, truth = planted(box=(1, 7, 1, 7))                          # 36 of 64 positions, centred
    assert torch.equal(foreground_mask(maps, orient="centre"), truth)
    assert torch.equal(foreground_mask(maps, orient="minority"), ~truth)


def test_saliency_is_the_feature_norm_scaled_to_the_unit_range_per_image():
    maps = torch.zeros(2, 2, 1, 3)
    maps[0, :, 0, 0] = torch.tensor([3.0, 4.0])                      # norm 5
    maps[0, :, 0, 2] = torch.tensor([6.0, 8.0])                      # norm 10, position 1 stays 0
    maps[1] = 7.0                                                    # constant norms
    s = saliency(maps)
    assert torch.allclose(s[0, 0], torch.tensor([0.5, 0.0, 1.0]))
    assert torch.equal(s[1], torch.zeros(1, 3))


def test_norm_mask_keeps_the_positions_above_the_mean_saliency():
    maps = torch.tensor([1.0, 2.0, 3.0, 10.0]).reshape(1, 1, 2, 2)   # saliency 0, 1/9, 2/9, 1; mean 1/3
    assert foreground_mask(maps, method="norm").tolist() == [[[False, False], [False, True]]]
    assert foreground_mask(maps, method="norm", threshold=0.1).tolist() == [[[False, True], [True, True]]]


def test_mask_iou_on_hand_made_masks():
    a = torch.zeros(4, 4, 4, dtype=torch.bool)
    b = torch.zeros(4, 4, 4, dtype=torch.bool)
    a[0, 0:2], b[0, 1:3] = True, True                                # overlap 4 of 12 cells
    a[1, :, :2], b[1, :, 2:] = True, True                            # disjoint
    a[2, 1:3, 1:3], b[2, 1:3, 1:3] = True, True                      # identical
    # image 3: both empty
    assert mask_iou(a, b).tolist() == pytest.approx([1 / 3, 0.0, 1.0, 1.0])
    assert mask_iou(a, b).tolist() == mask_iou(b, a).tolist()


def test_masked_mean_pools_only_the_masked_positions():
    maps = torch.arange(8.0).reshape(1, 2, 2, 2)                     # channel 0: 0 1 2 3, channel 1: 4 5 6 7
    mask = torch.tensor([[[True, False], [False, True]]])
    assert masked_mean(maps, mask).tolist() == [[1.5, 5.5]]
    assert torch.allclose(masked_mean(maps, torch.ones(1, 2, 2, dtype=torch.bool)), maps.mean(dim=(2, 3)))
    assert masked_mean(maps, torch.zeros(1, 2, 2, dtype=torch.bool)).tolist() == [[0.0, 0.0]]


def test_upsample_turns_each_mask_position_into_a_block_and_keeps_layouts():
    mask = torch.tensor([[[True, False], [False, False]]])
    big = upsample(mask, (4, 6))
    assert big.dtype == torch.bool and big.shape == (1, 4, 6)
    assert big.sum() == 6 and big[0, :2, :3].all()
    rgb = torch.rand(2, 3, 3, 3)
    assert upsample(rgb, (12, 9)).shape == (2, 12, 9, 3)
    flat = torch.full((1, 3, 3), 0.25)
    assert torch.allclose(upsample(flat, (7, 7)), torch.full((1, 7, 7), 0.25))


def test_unknown_method_and_orientation_are_refused():
    maps, _ = planted()
    with pytest.raises(ValueError, match="method"):
        foreground_mask(maps, method="attention")
    with pytest.raises(ValueError, match="orient"):
        foreground_mask(maps, orient="largest")
    with pytest.raises(ValueError, match="centre"):
        principal_components(maps, centre="dataset")


def test_centred_ellipse_covers_pi_ab_of_the_frame():
    from dino_tutorial.analysis import centred_ellipse
    mask = centred_ellipse(300, 400, fraction=0.6)
    # semi-axes 0.3 of each side: area pi * 0.3 * 0.3 = 0.2827 of the frame
    assert mask.float().mean().item() == pytest.approx(math.pi * 0.09, rel=0.01)
    assert mask[150, 200] and not mask[0, 0] and not mask[150, 30]


def _saliency_folder(root, masks):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i, mask in enumerate(masks):
        Image.fromarray(rng.integers(0, 255, (*mask.shape, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{i}.png")
    return root


def test_saliency_jaccard_of_the_prior_is_one_on_its_own_masks_and_zero_on_the_complement(tmp_path):
    from dino_tutorial.analysis import centred_ellipse, saliency_jaccard
    ellipse = centred_ellipse(60, 80).numpy()
    folder = _saliency_folder(tmp_path / "set", [ellipse, ~ellipse])
    assert saliency_jaccard(None, folder).tolist() == pytest.approx([1.0, 0.0])


def test_saliency_jaccard_scores_a_network_mask_per_image(tmp_path):
    from dino_tutorial.analysis import saliency_jaccard
    folder = _saliency_folder(tmp_path / "set", [np.ones((40, 40), bool), np.zeros((40, 40), bool)] * 2)
    backbone, _ = build_backbone("resnet18_w16")
    scores = saliency_jaccard(backbone, folder, size=64, method="norm", batch_size=3)
    assert scores.shape == (4,) and bool(((scores >= 0) & (scores <= 1)).all())


def test_saliency_pairs_name_a_folder_that_is_not_a_saliency_set(tmp_path):
    from dino_tutorial.analysis import saliency_pairs
    with pytest.raises(FileNotFoundError, match="no images/ and masks/"):
        saliency_pairs(tmp_path)
