"""Backbone, projection head and the multi-crop wrapper (paper Sec. 3.1, "Network architecture").

The network ``g = h o f`` is a backbone ``f`` (here a torchvision ResNet whose classifier is removed, so it
outputs the 2048-d pooled feature for ResNet-50) followed by a projection head ``h``: a 3-layer MLP
(hidden 2048, GELU), an L2-normalised bottleneck of 256 dimensions and a weight-normalised linear layer
to ``K`` output dimensions (K = 65536). The backbone features are what k-NN and linear evaluation use.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet18_w32", "resnet18_w24", "resnet18_w16")


def narrow_resnet18(width: int) -> torchvision.models.ResNet:
    """ResNet-18's layout (BasicBlocks [2, 2, 2, 2], stem, strides) with stage widths w, 2w, 4w, 8w instead of 64..512.

    Width 16 has 1/16 of ResNet-18's multiply-adds: the CPU-sized backbone of the ``small`` preset.
    """
    net = torchvision.models.resnet18(weights=None)
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
        setattr(net, name, net._make_layer(torchvision.models.resnet.BasicBlock, width * 2 ** i, 2,
                                           stride=1 if i == 0 else 2))
    net.fc = nn.Linear(8 * width, 1000)
    for m in net.modules():                       # the same initialisation as torchvision's ResNet
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def build_backbone(name: str = "resnet50", small_images: bool = False) -> Tuple[nn.Module, int]:
    """A randomly initialised torchvision ResNet with its classifier replaced by the identity.

    Returns ``(backbone, feature_dim)``: the backbone maps (B, 3, H, W) images to (B, feature_dim)
    pooled features (2048 for ResNet-50, 512 for ResNet-18/34, 8w for ``resnet18_w{w}``). ``small_images=True``
    replaces the 7x7/2 stem and its max-pool by a 3x3/1 convolution (the usual change for images of 32-64 px).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if "_w" in name:
        backbone = narrow_resnet18(int(name.split("_w")[1]))
    else:
        backbone = getattr(torchvision.models, name)(weights=None)
    feature_dim = backbone.fc.in_features
    backbone.fc = nn.Identity()
    if small_images:
        backbone.conv1 = nn.Conv2d(3, backbone.bn1.num_features, kernel_size=3, stride=1, padding=1, bias=False)
        backbone.maxpool = nn.Identity()
    return backbone, feature_dim


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose weight rows are ``g * v / ||v||`` (Salimans & Kingma, 2016).

    With ``fix_norm=True`` the gain ``g`` stays at 1: each output is then a cosine similarity between the
    (L2-normalised) input and a unit "prototype" vector, bounded in [-1, 1].

    ``v`` starts as ``nn.Linear``'s default weight, uniform in [-1/sqrt(in_dim), 1/sqrt(in_dim)] (row norm about
    sqrt(1/3) = 0.58), as in the authors' head, whose last layer is created after the std-0.02 initialisation of
    the MLP. The length of ``v`` matters although the forward pass ignores it: an SGD step turns a row's
    direction by an angle proportional to ``1 / ||v||^2``.
    """

    def __init__(self, in_dim: int, out_dim: int, fix_norm: bool = True):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight_v, -bound, bound)      # nn.Linear's default (kaiming_uniform_, a=sqrt(5))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_norm)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """Projection head: (B, in_dim) backbone features -> (B, out_dim) logits (before any temperature)."""

    def __init__(self, in_dim: int, out_dim: int = 65536, use_bn: bool = False, norm_last_layer: bool = True,
                 nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("nlayers", nlayers),
                            ("hidden_dim", hidden_dim), ("bottleneck_dim", bottleneck_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: List[nn.Module] = []
            dims = [in_dim] + [hidden_dim] * (nlayers - 1)
            for d_in, d_out in zip(dims[:-1], dims[1:]):
                layers.append(nn.Linear(d_in, d_out))
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """Runs a backbone and a head on a list of crops of different resolutions.

    ``forward(crops)`` takes a list of (B, 3, H_i, W_i) tensors, e.g. 2 global and N local views. The backbone
    runs once per group of consecutive crops of the same resolution (all global crops together, then all
    local crops), and the head once on all the features. Returns (n_crops * B, out_dim), crop-major:
    rows [i * B, (i + 1) * B) belong to crop i.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    @staticmethod
    def resolution_groups(crops: Sequence[torch.Tensor]) -> List[Tuple[int, int]]:
        """[(start, end), ...] index ranges of consecutive crops that share a resolution."""
        groups, start = [], 0
        for i in range(1, len(crops) + 1):
            if i == len(crops) or crops[i].shape[-2:] != crops[start].shape[-2:]:
                groups.append((start, i))
                start = i
        return groups

    def forward(self, crops: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        features = [self.backbone(torch.cat(list(crops[s:e]))) for s, e in self.resolution_groups(crops)]
        return self.head(torch.cat(features))
