"""Classification networks: a small CNN for 32x32 digit images and ResNet-50 with a DANN-style bottleneck.

Both follow the contract in :mod:`raysel.models.base`: ``forward_features(x) -> [B, feature_dim]``,
``head(features) -> [B, C]``, ``forward(x) = head(forward_features(x))``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from torch import nn

from raysel.models.base import ClassificationModel
from raysel.models.pretrained import load_imagenet_weights
from raysel.models.segmentation import conv_bn_relu


class SmallCNN(ClassificationModel):
    """Small VGG-style CNN for 32x32 digits (MNIST-M style): 5 conv-BN-ReLU layers, 3 max-pools, global pooling.

    Features are a 128-d fully connected layer (BN + ReLU) on the pooled conv map, the input of the domain
    discriminators (DANN puts its discriminator on the feature extractor output too). Any input size >= 8 works.
    No ImageNet weights exist for it; ``pretrained`` is ignored.
    """

    def __init__(self, num_classes: int, widths: tuple[int, int, int] = (32, 64, 128), feature_dim: int = 128) -> None:
        super().__init__()
        first, second, third = widths
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.encoder = nn.Sequential(
            conv_bn_relu(3, first), conv_bn_relu(first, first), nn.MaxPool2d(2),  # 16x16
            conv_bn_relu(first, second), conv_bn_relu(second, second), nn.MaxPool2d(2),  # 8x8
            conv_bn_relu(second, third), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.embedding = nn.Sequential(
            nn.Linear(third, feature_dim, bias=False), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature vectors ``[B, feature_dim]``."""
        return self.embedding(self.encoder(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.classifier(features)

    def backbone_modules(self) -> list[nn.Module]:
        return [self.encoder, self.embedding]

    def head_modules(self) -> list[nn.Module]:
        return [self.classifier]


class ResNet50Classifier(ClassificationModel):
    """ResNet-50 + 256-d bottleneck (Linear, BN, ReLU) + linear classifier, the DANN/CDAN-style DA classifier.

    ``bottleneck_dim=256`` (default) gives 256-d features, as DANN/CDAN/SHOT-style DA code does for ResNet-50;
    ``bottleneck_dim=0`` uses the plain 2048-d pooled backbone features (switch for methods that want them).
    The bottleneck and the classifier are the new (10x lr) layers; ImageNet weights for the backbone come from the
    local torchvision cache only.
    """

    def __init__(self, num_classes: int, pretrained: bool = True, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.num_classes = num_classes
        resnet = torchvision.models.resnet50(weights=None)
        if pretrained:
            self.imagenet_pretrained = load_imagenet_weights(
                resnet, torchvision.models.ResNet50_Weights.IMAGENET1K_V1, "resnet50")
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
        self.backbone = nn.Sequential(OrderedDict([*((n, getattr(resnet, n)) for n in names), ("flatten", nn.Flatten())]))
        backbone_dim = resnet.fc.in_features
        if bottleneck_dim > 0:
            self.bottleneck: nn.Module = nn.Sequential(
                nn.Linear(backbone_dim, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU(inplace=True)
            )
            self.feature_dim = bottleneck_dim
        else:
            self.bottleneck = nn.Identity()
            self.feature_dim = backbone_dim
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck features ``[B, feature_dim]`` (2048-d pooled backbone output if the bottleneck is off)."""
        return self.bottleneck(self.backbone(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.classifier(features)

    def backbone_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def head_modules(self) -> list[nn.Module]:
        return [self.bottleneck, self.classifier]
