"""ImageNet weights for the ResNet backbones, read from the local torchvision cache only (never downloaded).

SPEC §3: "ImageNet weights are loaded from the local torchvision cache when present; nothing downloads at run time".
The file looked for is ``torch.hub.get_dir()/checkpoints/<basename of the torchvision weight URL>``, i.e. exactly
where ``torchvision.models.resnet101(weights="IMAGENET1K_V1")`` would have cached it, so a user pre-fills the cache
once (``python -c "import torchvision; torchvision.models.resnet101(weights='IMAGENET1K_V1')"``) on a machine with
network access. ``TORCH_HOME`` moves the cache as usual.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import WeightsEnum

from raysel.errors import DataError

logger = logging.getLogger(__name__)


def imagenet_checkpoint_path(weights: WeightsEnum) -> Path:
    """Where torchvision caches ``weights`` (``<hub dir>/checkpoints/<file name of weights.url>``)."""
    file_name = os.path.basename(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def load_imagenet_weights(model: nn.Module, weights: WeightsEnum, arch: str) -> bool:
    """Load cached ImageNet weights into a torchvision ``model`` (strict); return False, logging one line, if absent.

    A file that exists but cannot be read or does not match the architecture raises DataError naming the file,
    because silently training from scratch on a corrupt cache would waste a whole sweep.
    """
    path = imagenet_checkpoint_path(weights)
    if not path.is_file():
        logger.warning("ImageNet weights for %s not found in %s; starting from random initialisation", arch, path)
        return False
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated/corrupt pickles
        raise DataError(f"cannot read ImageNet weights {path}: {error}; delete the file or replace it") from None
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise DataError(f"ImageNet weights {path} do not fit {arch}: {first_line}") from None
    logger.info("loaded ImageNet weights for %s from %s", arch, path)
    return True
