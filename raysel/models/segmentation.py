"""Segmentation networks: a small CPU-friendly encoder-decoder and DeepLab-V2 / ResNet-101 (the papers' model).

Both follow the contract in :mod:`raysel.models.base`: ``forward_features(x) -> [B, F, h, w]``,
``head(features) -> [B, C, h, w]`` and ``forward(x) -> [B, C, H, W]`` (bilinear, align_corners=True).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from raysel.models.base import SegmentationModel
from raysel.models.pretrained import load_imagenet_weights


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, BN follows) + BatchNorm + ReLU with 'same' padding for odd kernels."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LightASPP(nn.Module):
    """DeepLab-V3-style context module, narrow: 1x1 branch, dilated 3x3 branches and an image-pooling branch.

    The image-pooling branch has no BatchNorm so a per-worker batch of 1 still trains (BN on a 1x1 map with one
    sample is undefined).
    """

    def __init__(self, in_channels: int, branch_channels: int, out_channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, branch_channels, kernel_size=1)]
            + [conv_bn_relu(in_channels, branch_channels, dilation=d) for d in dilations]
        )
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, branch_channels, 1), nn.ReLU(inplace=True)
        )
        self.project = conv_bn_relu(branch_channels * (len(dilations) + 2), out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate all branches (pooled one broadcast to the map) and project with a 1x1 conv."""
        outputs = [branch(x) for branch in self.branches]
        outputs.append(self.image_pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outputs, dim=1))


class SmallSegNet(SegmentationModel):
    """Compact encoder-decoder (~0.5M params) that trains in minutes on 2 CPU cores at 96x192 input.

    Encoder: four stride-2 stages (output stride 8) then two dilated (d=2) convs for receptive field without
    further downsampling. Context: :class:`LightASPP`. Decoder (DeepLab-V3+ style): upsample the context to stride
    4, concatenate a 1x1-reduced skip from the stride-4 stage, two 3x3 convs -> features (``feature_dim``).
    Head: 1x1 conv to class logits at stride 4. No ImageNet weights exist for it; ``pretrained`` is ignored.
    """

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = (16, 32, 64, 96),
        aspp_dilations: Sequence[int] = (2, 4, 6),
        aspp_channels: int = 48,
        skip_channels: int = 24,
        feature_dim: int = 64,
    ) -> None:
        super().__init__()
        stem_width, skip_width, deep_width, context_width = widths
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.stem = conv_bn_relu(3, stem_width, stride=2)  # stride 2
        self.stage_stride4 = nn.Sequential(
            conv_bn_relu(stem_width, skip_width, stride=2), conv_bn_relu(skip_width, skip_width)
        )
        self.stage_stride8 = nn.Sequential(
            conv_bn_relu(skip_width, deep_width, stride=2),
            conv_bn_relu(deep_width, deep_width),
            conv_bn_relu(deep_width, context_width, dilation=2),
            conv_bn_relu(context_width, context_width, dilation=2),
        )
        self.context = LightASPP(context_width, aspp_channels, context_width, aspp_dilations)
        self.skip_reduce = conv_bn_relu(skip_width, skip_channels, kernel_size=1)
        self.decoder = nn.Sequential(
            conv_bn_relu(context_width + skip_channels, feature_dim), conv_bn_relu(feature_dim, feature_dim)
        )
        self.classifier = nn.Conv2d(feature_dim, num_classes, kernel_size=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder features ``[B, feature_dim, H/4, W/4]``."""
        skip = self.stage_stride4(self.stem(x))
        context = self.context(self.stage_stride8(skip))
        context = F.interpolate(context, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.decoder(torch.cat([context, self.skip_reduce(skip)], dim=1))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits at feature resolution."""
        return self.classifier(features)

    def backbone_modules(self) -> list[nn.Module]:
        return [self.stem, self.stage_stride4, self.stage_stride8]

    def head_modules(self) -> list[nn.Module]:
        return [self.context, self.skip_reduce, self.decoder, self.classifier]


class ASPPV2(nn.Module):
    """DeepLab-V2 ASPP classifier: parallel 3x3 convs (dilations 6/12/18/24) straight to logits, summed.

    Weights ~ N(0, 0.01) as in HIAST/AdaptSegNet; biases 0 (HIAST leaves PyTorch's default uniform bias, a
    negligible difference we fix to 0 for determinism across versions). All branches are summed; this avoids
    AdaptSegNet's well-known early ``return`` that summed only the first two.
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for branch in self.branches:
            nn.init.normal_(branch.weight, mean=0.0, std=0.01)
            nn.init.zeros_(branch.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the branch logits."""
        return torch.stack([branch(x) for branch in self.branches]).sum(dim=0)


class DeepLabV2(SegmentationModel):
    """DeepLab-V2 with a ResNet-101 backbone at output stride 8 (HIAST's ``DeepLab_V2``).

    Backbone: torchvision ResNet-101 (stride in the 3x3 conv, "v1.5", as HIAST uses; the original Caffe DeepLab puts
    it in the 1x1 conv) with ``replace_stride_with_dilation=[False, True, True]``. That gives exactly HIAST's
    ``_nostride_dilate``: layer3 first block dilation 1 then 2, layer4 first block 2 then 4. Features are the
    2048-channel layer4 output (what HIAST's segmentor returns as features); the head is :class:`ASPPV2`.
    ImageNet weights come from the local torchvision cache only (see :mod:`raysel.models.pretrained`).
    """

    def __init__(self, num_classes: int, pretrained: bool = True, aspp_dilations: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = 2048
        resnet = torchvision.models.resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        if pretrained:
            self.imagenet_pretrained = load_imagenet_weights(
                resnet, torchvision.models.ResNet101_Weights.IMAGENET1K_V1, "resnet101")
        # Keep torchvision's child names so checkpoints stay readable; avgpool and fc are dropped.
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        self.backbone = nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in names))
        self.classifier = ASPPV2(self.feature_dim, num_classes, aspp_dilations)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Layer4 features ``[B, 2048, ~H/8, ~W/8]``."""
        return self.backbone(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """ASPP logits at feature resolution."""
        return self.classifier(features)

    def backbone_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def head_modules(self) -> list[nn.Module]:
        return [self.classifier]
