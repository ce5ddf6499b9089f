"""Optimisers and learning-rate schedules shared by the methods: backbone vs head learning rates, cosine/poly decay."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from raysel.errors import ConfigError
from raysel.methods.networks import unwrap

__all__ = [
    "parameter_groups", "build_optimizer", "build_scheduler",
]


def parameter_groups(model: nn.Module, learning_rate: float, backbone_lr_ratio: float = 1.0) -> list[dict[str, Any]]:
    """Trainable parameters split into backbone (``learning_rate * backbone_lr_ratio``) and head (``learning_rate``).

    Models following raysel's FeatureModel contract expose ``backbone_parameters`` / ``head_parameters``
    (DeepLab practice: ImageNet backbone at 1/10 of the new layers' rate); other modules form one group.
    Frozen parameters (e.g. frozen BatchNorm affine weights) are left out.
    """
    model = unwrap(model)
    if hasattr(model, "backbone_parameters") and hasattr(model, "head_parameters"):
        backbone = [p for p in model.backbone_parameters() if p.requires_grad]
        head = [p for p in model.head_parameters() if p.requires_grad]
        covered = {id(p) for p in backbone} | {id(p) for p in head}
        head += [p for p in model.parameters() if p.requires_grad and id(p) not in covered]
        groups = [{"params": backbone, "lr": learning_rate * backbone_lr_ratio, "name": "backbone"},
                  {"params": head, "lr": learning_rate, "name": "head"}]
        return [group for group in groups if group["params"]]
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": learning_rate, "name": "all"}]


def build_optimizer(model: nn.Module, learning_rate: float, *, optimizer: str = "adam", weight_decay: float = 5e-4,
                    backbone_lr_ratio: float = 1.0, momentum: float = 0.9,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """Adam (HIAST/IAST: betas 0.9/0.999, weight decay 5e-4) or SGD with momentum over :func:`parameter_groups`."""
    groups = parameter_groups(model, learning_rate, backbone_lr_ratio)
    if optimizer == "adam":
        return torch.optim.Adam(groups, lr=learning_rate, betas=betas, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {optimizer!r}; valid: adam, sgd")


def build_scheduler(optimizer: torch.optim.Optimizer, total_iterations: int, schedule: str = "cosine",
                    eta_min_ratio: float = 1e-3, power: float = 0.9) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule: cosine annealing to ``lr * eta_min_ratio`` (HIAST), poly (DeepLab) or constant."""
    total = max(1, int(total_iterations))
    if schedule == "cosine":
        def factor(step: int) -> float:
            progress = min(step, total) / total
            return eta_min_ratio + (1.0 - eta_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "poly":
        def factor(step: int) -> float:
            return max(0.0, 1.0 - min(step, total) / total) ** power
    elif schedule == "constant":
        def factor(step: int) -> float:
            return 1.0
    else:
        raise ConfigError(f"unknown schedule {schedule!r}; valid: cosine, poly, constant")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
