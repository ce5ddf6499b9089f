"""Conventions every layer shares (data, models, quantisation, metrics, methods): defined once, at the bottom layer.

Images are normalised with ImageNet statistics; photometric ops and generators work on [0, 1] pixels. Label 255 marks
pixels that carry no class. ``BATCHNORM_TYPES`` are the layers whose statistics are frozen, folded or adapted.
"""

from __future__ import annotations

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
