"""Backbone, head and multi-crop wrapper (paper Sec. 3.1, "Network architecture")."""
import math

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


def test_head_hidden_layers_use_gelu_in_the_authors_order():
    """Linear -> GELU -> Linear -> GELU -> Linear, checked against a float64 forward with GELU written from erf."""
    torch.manual_seed(0)
    head = DINOHead(6, out_dim=5, hidden_dim=7, bottleneck_dim=4).double()
    with torch.no_grad():
        for module in head.mlp:
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_()                   # O(1) pre-activations, where GELU and ReLU differ
                module.bias.normal_()
    x = torch.randn(3, 6, dtype=torch.float64)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    h = x
    for i, layer in enumerate(linears):
        h = h @ layer.weight.detach().T + layer.bias.detach()
        if i < len(linears) - 1:
            h = 0.5 * h * (1 + torch.special.erf(h / math.sqrt(2)))
    with torch.no_grad():
        torch.testing.assert_close(head.mlp(x), h)


def test_bottleneck_is_l2_normalised_before_the_last_layer():
    """With the identity as prototypes, the logits are the bottleneck divided by its norm."""
    torch.manual_seed(0)
    head = DINOHead(10, out_dim=8, hidden_dim=12, bottleneck_dim=8)
    with torch.no_grad():
        head.last_layer.weight_v.copy_(torch.eye(8) * 3.0)
        x = torch.randn(5, 10)
        z = head.mlp(x)
        expected = z / z.norm(dim=1, keepdim=True)
        torch.testing.assert_close(head(x), expected)
        torch.testing.assert_close(head(x).norm(dim=1), torch.ones(5))
    assert z.norm(dim=1).max() < 0.5                     # so an un-normalised head would give other logits


def test_mlp_layers_start_from_truncated_normal_std_002_and_zero_bias():
    torch.manual_seed(0)
    head = DINOHead(512, out_dim=64, hidden_dim=1024, bottleneck_dim=256)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3
    for layer in linears:
        w = layer.weight.detach()
        assert abs(w.std().item() - 0.02) < 0.0005 and abs(w.mean().item()) < 0.0005
        assert w.abs().max() <= 2.0                       # trunc_normal_'s bounds are absolute: [-2, 2]
        kurtosis = ((w - w.mean()) ** 4).mean() / w.var() ** 2
        assert abs(kurtosis.item() - 3.0) < 0.1            # a normal (a uniform would give 1.8)
        assert torch.equal(layer.bias.detach(), torch.zeros_like(layer.bias))


def test_last_layer_starts_as_nn_linears_default_with_row_norm_sqrt_one_third():
    """The authors create last_layer after the std-0.02 initialisation: v ~ U(-1/sqrt(d), 1/sqrt(d)), g = 1."""
    torch.manual_seed(0)
    d, k = 256, 4096
    layer = DINOHead(64, out_dim=k, hidden_dim=32, bottleneck_dim=d).last_layer
    v = layer.weight_v.detach().double()
    bound = 1 / math.sqrt(d)                              # 0.0625
    assert v.abs().max() <= bound and v.abs().max() > 0.999 * bound
    # E ||v_k||^2 = d * bound^2 / 3 = 1/3: row norm about 0.577 (std-0.02 rows would be 0.32)
    row_norms = v.norm(dim=1)
    assert abs(row_norms.mean().item() - math.sqrt(1 / 3)) < 0.005
    assert row_norms.std().item() < 0.02
    # uniform entries: Kolmogorov-Smirnov distance to U(-bound, bound) over a million values
    values = torch.sort(v.flatten()).values
    n = len(values)
    cdf = (values + bound) / (2 * bound)
    ks = torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max().item()
    assert ks < 1.63 / math.sqrt(n) * 1.5
    assert torch.equal(layer.weight_g.detach(), torch.ones(k, 1)) and not layer.weight_g.requires_grad


def test_first_sgd_step_turns_each_prototype_by_lr_times_projected_gradient_over_norm_squared():
    """One SGD step on v moves the direction w = v / ||v|| by an angle of lr * ||(I - w w^T) dL/dw|| / ||v||^2
    to first order: with the authors' initial norms (0.58) that is (0.58 / 0.32)^2 = 3.3x less than with
    std-0.02 rows. Checked against the closed form in float64 and against PyTorch's own weight norm."""
    torch.manual_seed(0)
    d, k, lr = 256, 512, 1e-3
    layer = DINOHead(16, out_dim=k, hidden_dim=16, bottleneck_dim=d).last_layer.double()
    reference = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(d, k, bias=False).double())
    with torch.no_grad():
        reference.parametrizations.weight.original0.fill_(1.0)
        reference.parametrizations.weight.original1.copy_(layer.weight_v)
    reference.parametrizations.weight.original0.requires_grad_(False)
    u = torch.nn.functional.normalize(torch.randn(32, d, dtype=torch.float64), dim=1)
    target = torch.randn(32, k, dtype=torch.float64)
    v0 = layer.weight_v.detach().clone()
    w0 = v0 / v0.norm(dim=1, keepdim=True)
    # closed form: dL/dw for L = sum(target * u w^T) is target^T u; the angle is lr |P g| / |v|^2
    g = target.T @ u
    projected = g - (g * w0).sum(1, keepdim=True) * w0
    expected = lr * projected.norm(dim=1) / v0.norm(dim=1) ** 2
    angles = []
    for module, params in ((layer, [layer.weight_v]), (reference, [reference.parametrizations.weight.original1])):
        opt = torch.optim.SGD(params, lr=lr)
        (target * module(u)).sum().backward()
        opt.step()
        v1 = params[0].detach()
        cos = (v1 * v0).sum(1) / (v1.norm(dim=1) * v0.norm(dim=1))
        angles.append(torch.arccos(cos.clamp(max=1.0)))
    torch.testing.assert_close(angles[0], expected, rtol=2e-3, atol=0)
    torch.testing.assert_close(angles[0], angles[1], rtol=1e-6, atol=1e-12)
    assert abs(v0.norm(dim=1).mean().item() - 0.577) < 0.01


def test_head_defaults_are_the_papers_head():
    head = DINOHead(2048)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 2048), (2048, 2048), (2048, 256)]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())
    assert head.last_layer.weight_v.shape == (65536, 256) and not head.last_layer.weight_g.requires_grad
    two = DINOHead(8, 4, nlayers=2, hidden_dim=6, bottleneck_dim=5)
    assert [type(m).__name__ for m in two.mlp] == ["Linear", "GELU", "Linear"]
    with_bn = DINOHead(8, 4, nlayers=2, hidden_dim=6, bottleneck_dim=5, use_bn=True)
    assert [type(m).__name__ for m in with_bn.mlp] == ["Linear", "BatchNorm1d", "GELU", "Linear"]


@pytest.mark.parametrize("name", ["in_dim", "out_dim", "nlayers", "hidden_dim", "bottleneck_dim"])
def test_bad_head_sizes_are_named(name):
    sizes = dict(in_dim=8, out_dim=4, nlayers=3, hidden_dim=6, bottleneck_dim=5)
    sizes[name] = 0
    with pytest.raises(ValueError, match=f"^{name} must be >= 1, got 0$"):
        DINOHead(**sizes)


def test_weight_norm_layer_learns_its_gain_only_without_fix_norm():
    from dino_tutorial.model import WeightNormLinear
    assert not WeightNormLinear(4, 3).weight_g.requires_grad          # fix_norm defaults to True
    assert WeightNormLinear(4, 3, fix_norm=False).weight_g.requires_grad
    layer = WeightNormLinear(4, 3)
    with torch.no_grad():
        layer.weight_v.copy_(torch.tensor([[3.0, 4.0, 0, 0], [0, 0, 2.0, 0], [1.0, 1.0, 1.0, 1.0]]))
        layer.weight_g.copy_(torch.tensor([[1.0], [2.0], [0.5]]))
        out = layer(torch.tensor([[1.0, 1.0, 1.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[7 / 5, 2.0, 1.0]]))


def test_resolution_groups_compare_height_and_width():
    shapes = [(64, 64), (64, 32), (64, 32), (32, 64)]
    crops = [torch.zeros(1, 3, h, w) for h, w in shapes]
    assert MultiCropWrapper.resolution_groups(crops) == [(0, 1), (1, 3), (3, 4)]
    assert MultiCropWrapper.resolution_groups(crops[:1]) == [(0, 1)]
    assert MultiCropWrapper.resolution_groups([torch.zeros(1, 3, 8, 8)] * 3) == [(0, 3)]


@pytest.mark.parametrize("name", ["resnet18", "resnet18_w16"])
def test_backbone_stems_full_size_and_small_images(name):
    backbone, dim = build_backbone(name)
    width = backbone.bn1.num_features
    c = backbone.conv1
    assert (c.kernel_size, c.stride, c.padding, c.bias, c.in_channels) == ((7, 7), (2, 2), (3, 3), None, 3)
    assert isinstance(backbone.maxpool, torch.nn.MaxPool2d)
    small, small_dim = build_backbone(name, small_images=True)
    c = small.conv1
    assert small_dim == dim and c.out_channels == width
    assert (c.kernel_size, c.stride, c.padding, c.bias, c.in_channels) == ((3, 3), (1, 1), (1, 1), None, 3)
    assert isinstance(small.maxpool, torch.nn.Identity) and isinstance(small.fc, torch.nn.Identity)
    maps = []
    small.layer4.register_forward_hook(lambda m, i, o: maps.append(o.shape[-1]))
    with torch.no_grad():
        assert small.eval()(torch.randn(1, 3, 32, 32)).shape == (1, dim)
    assert maps == [4]                                             # strides 1, 1, 2, 2, 2: 32 px -> 4 x 4


def test_narrow_resnet18_has_resnet18_strides_and_kaiming_initialisation():
    net, dim = build_backbone("resnet18_w32")
    assert dim == 256
    for i, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
        assert len(layer) == 2
        assert layer[0].conv1.stride == ((1, 1) if i == 0 else (2, 2))
        assert layer[0].conv1.out_channels == layer[1].conv2.out_channels == 32 * 2 ** i
        assert layer[0].conv1.in_channels == (32 if i == 0 else 16 * 2 ** i)
    conv = net.layer3[0].conv1                                      # fan_out = 128 * 3 * 3
    assert abs(conv.weight.std().item() - math.sqrt(2 / (128 * 9))) < 0.003
    assert net.bn1.num_features == 32 and net.conv1.out_channels == 32
    assert isinstance(net.maxpool, torch.nn.MaxPool2d)
