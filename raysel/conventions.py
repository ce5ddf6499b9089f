"""Conventions every layer shares (data, models, quantisation, metrics, methods): defined once, at the bottom layer.

Images are normalised with ImageNet statistics; photometric ops and generators work on [0, 1] pixels. Label 255 marks
pixels that carry no class. ``BATCHNORM_TYPES`` are the layers whose statistics are frozen, folded or adapted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IGNORE_INDEX", "BATCHNORM_TYPES", "RESULTS_ENV", "default_results_root",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255
RESULTS_ENV = "RAYSEL_RESULTS"


def default_results_root() -> Path:
    """The result store used when none is given, by every command and the Python API: ``$RAYSEL_RESULTS``, else
    ``./results``. Here, at the bottom layer, so that the light commands read it without importing the store."""
    return Path(os.environ.get(RESULTS_ENV) or "results")


def __getattr__(name: str) -> Any:
    """``BATCHNORM_TYPES``, built on first use: the constants above stay importable without torch (PEP 562)."""
    if name == "BATCHNORM_TYPES":
        # Lazy for start-up time only: metrics (and through it selection, the store's readers and the light commands
        # `raysel query|select|report|status`) need IGNORE_INDEX, and importing torch costs them seconds.
        from torch import nn

        globals()[name] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)  # built once
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
