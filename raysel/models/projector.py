"""Projector head g for pixel-level contrast (T2S-DA §3.1/§4) and a segmenter+projector wrapper for one DDP forward.

The paper: "The projector g takes the feature provided by the encoder as input and consists of two Conv-BN-ReLU
blocks." Kernel sizes and widths are not given; we use a 3x3 then a 1x1 block (the spatial layout of the first
author's U2PL representation head) with width ``in_channels`` and output dimension ``d``. Taken literally the second
block ends in ReLU, so every embedding lies in the positive orthant (all cosine similarities >= 0);
``final_relu=False`` drops that last ReLU (U2PL's head ends in a plain conv), a cheap alternative kept as a switch.
Embeddings are returned un-normalised: Eq. 10 averages raw projector outputs before ``norm()`` (Eq. 11).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from raysel.models.base import FeatureModel


class ProjectorHead(nn.Module):
    """g: ``[B, in_channels, h, w] -> [B, out_channels, h, w]`` with two Conv-BN-ReLU blocks (T2S-DA §4)."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int | None = None,
                 final_relu: bool = True) -> None:
        super().__init__()
        hidden = hidden_channels or in_channels
        self.out_channels = out_channels
        self.block1 = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        # Without the final ReLU the last conv keeps a bias and the BN, so outputs can take either sign.
        self.block2 = nn.Sequential(
            nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
            *([nn.ReLU(inplace=True)] if final_relu else []),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Un-normalised embeddings at feature resolution."""
        return self.block2(self.block1(features))


class SegmenterWithProjector(nn.Module):
    """A raysel segmentation model plus a projector, so that one forward yields logits and embeddings.

    One forward per iteration keeps DistributedDataParallel simple; the EMA teacher is a copy of the whole wrapper
    (T2S-DA's positive keys come from the teacher's projector, Eq. 10). ``segmenter`` is what gets evaluated.
    """

    def __init__(self, segmenter: FeatureModel, projector: ProjectorHead) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.projector = projector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, C, h, w], embeddings [B, d, h, w])``, both at feature resolution."""
        features = self.segmenter.forward_features(images)
        return self.segmenter.head(features), self.projector(features)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """The segmenter's backbone (base learning rate x backbone ratio)."""
        yield from self.segmenter.backbone_parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Segmenter head and projector: T2S-DA gives both the segmentor's learning rate (§4)."""
        yield from self.segmenter.head_parameters()
        yield from self.projector.parameters()

    def freeze_batchnorm(self, frozen: bool = True) -> "SegmenterWithProjector":
        """Freeze the segmenter's BatchNorm (the projector's BN keeps training: it is newly initialised)."""
        self.segmenter.freeze_batchnorm(frozen)
        return self
