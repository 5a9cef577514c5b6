"""Backbone, head and multi-crop wrapper (paper Sec. 3.1, "Network architecture")."""
import pytest
import torch

from dino_tutorial.model import DINOHead, MultiCropWrapper, build_backbone


def test_resnet50_backbone_outputs_2048_features_without_classifier():
    backbone, dim = build_backbone("resnet50")
    assert dim == 2048
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2048)
    assert not any(isinstance(m, torch.nn.Linear) for m in backbone.modules())


def test_unknown_backbone_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown backbone 'vgg11'"):
        build_backbone("vgg11")


def test_head_has_the_papers_shape_and_parameter_count():
    head = DINOHead(2048, out_dim=65536)
    assert head(torch.randn(3, 2048)).shape == (3, 65536)
    mlp = 2048 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 256 + 256
    last = 65536 * 256 + 65536                          # v and g of the weight-normalised layer, no bias
    assert sum(p.numel() for p in head.parameters()) == mlp + last


def test_head_bottleneck_is_l2_normalised_so_logits_are_cosines():
    head = DINOHead(32, out_dim=50, hidden_dim=16, bottleneck_dim=8)
    with torch.no_grad():
        logits = head(100 * torch.randn(20, 32))
    assert logits.abs().max() <= 1.0 + 1e-5             # |<z/|z|, w/|w|>| <= 1


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_last_layer_weight_norm_is_fixed_only_when_norm_last_layer(norm_last_layer):
    torch.manual_seed(0)
    head = DINOHead(16, out_dim=10, hidden_dim=16, bottleneck_dim=8, norm_last_layer=norm_last_layer)
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    for _ in range(5):
        opt.zero_grad()
        (head(torch.randn(8, 16)) ** 2).sum().mul(-1).backward()   # push logits up: would grow the rows
        opt.step()
    row_norms = head.last_layer.weight.norm(dim=1)
    if norm_last_layer:
        torch.testing.assert_close(row_norms, torch.ones(10))
    else:
        assert (row_norms - 1).abs().max() > 1e-3


def test_head_with_batchnorm_and_one_layer():
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in DINOHead(8, 4, use_bn=True, hidden_dim=8).modules())
    one = DINOHead(8, 4, nlayers=1, bottleneck_dim=5)
    assert isinstance(one.mlp, torch.nn.Linear) and one.mlp.out_features == 5


def test_multicrop_wrapper_runs_the_backbone_once_per_resolution_group():
    backbone, dim = build_backbone("resnet18")
    calls = []
    backbone.register_forward_hook(lambda module, inputs, output: calls.append(tuple(inputs[0].shape)))
    model = MultiCropWrapper(backbone, DINOHead(dim, 32, hidden_dim=16, bottleneck_dim=8))
    crops = [torch.randn(2, 3, 64, 64)] * 2 + [torch.randn(2, 3, 32, 32)] * 3
    out = model(crops)
    assert out.shape == (5 * 2, 32)
    assert calls == [(4, 3, 64, 64), (6, 3, 32, 32)]


def test_multicrop_output_is_stacked_in_crop_order():
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18")
    model = MultiCropWrapper(backbone, DINOHead(dim, 32, hidden_dim=16, bottleneck_dim=8)).eval()
    crops = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)]
    with torch.no_grad():
        together = model(crops)
        separately = torch.cat([model(c) for c in crops])
    torch.testing.assert_close(together, separately, rtol=1e-4, atol=1e-5)


def test_resolution_groups_are_consecutive_runs():
    shapes = [64, 64, 32, 32, 32, 64]
    crops = [torch.zeros(1, 3, s, s) for s in shapes]
    assert MultiCropWrapper.resolution_groups(crops) == [(0, 2), (2, 5), (5, 6)]


def test_narrow_resnet18_keeps_the_layout_with_a_fraction_of_the_width():
    narrow, dim = build_backbone("resnet18_w16")
    full, _ = build_backbone("resnet18")
    assert dim == 8 * 16
    assert [n for n, _ in narrow.named_children()] == [n for n, _ in full.named_children()]
    assert narrow.layer4[1].conv2.out_channels == 128 and narrow.conv1.out_channels == 16
    with torch.no_grad():
        assert narrow.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 128)
    n_narrow = sum(p.numel() for p in narrow.parameters())
    n_full = sum(p.numel() for p in full.parameters())
    assert 1 / 20 < n_narrow / n_full < 1 / 12           # conv weights scale with width squared
