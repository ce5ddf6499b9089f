"""Shared model contract: ``forward = head(forward_features(x))`` (+ upsampling for segmentation), parameter groups.

Every network in raysel splits into a feature extractor and a head so that methods can put discriminators, projectors
or prototypes on the features and give newly initialised layers a 10x learning rate (DeepLab / DANN practice).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from raysel.conventions import BATCHNORM_TYPES



class FeatureModel(nn.Module):
    """Base class: subclasses define ``forward_features``, ``head``, ``feature_dim`` and the backbone/head modules."""

    feature_dim: int
    num_classes: int

    def __init__(self) -> None:
        super().__init__()
        self.batchnorm_frozen = False
        # True once the backbone's ImageNet weights were loaded (raysel.models.pretrained.load_imagenet_weights's
        # result); read by DAFormer's feature distance to pick its frozen ImageNet reference.
        self.imagenet_pretrained = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def backbone_modules(self) -> list[nn.Module]:  # pragma: no cover - abstract
        """Modules whose parameters get the base learning rate (ImageNet-initialised where available)."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:  # pragma: no cover - abstract
        """Newly initialised modules that get the 10x learning rate."""
        raise NotImplementedError

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the feature backbone (base lr); together with ``head_parameters`` they cover the model."""
        for module in self.backbone_modules():
            yield from module.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the new layers (10x lr in DeepLab/DANN-style training)."""
        for module in self.head_modules():
            yield from module.parameters()

    def freeze_batchnorm(self, frozen: bool = True) -> "FeatureModel":
        """Freeze every BatchNorm (affine parameters stop learning, running stats stop updating), as HIAST does.

        The freeze survives later ``model.train()`` calls because ``train`` re-applies it.
        """
        self.batchnorm_frozen = frozen
        for module in self.modules():
            if isinstance(module, BATCHNORM_TYPES):
                for parameter in module.parameters():
                    parameter.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "FeatureModel":
        """Set train/eval mode; frozen BatchNorm layers stay in eval mode (use their running statistics)."""
        super().train(mode)
        if self.batchnorm_frozen:
            for module in self.modules():
                if isinstance(module, BATCHNORM_TYPES):
                    module.eval()
        return self


class SegmentationModel(FeatureModel):
    """Segmentation contract: logits at feature resolution from ``head``; ``forward`` upsamples to the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[B, C, H, W]`` bilinearly upsampled (align_corners=True) to the input's ``H, W``."""
        logits = self.head(self.forward_features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)


class ClassificationModel(FeatureModel):
    """Classification contract: ``forward(x) = head(forward_features(x))`` with features ``[B, feature_dim]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits ``[B, C]``."""
        return self.head(self.forward_features(x))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (optionally only trainable) parameters, for reports and tests."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
