"""Losses shared by several methods: cross-entropy with the ignore label, and the LSGAN terms of HIAST Eq. 2-3."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from raysel.conventions import IGNORE_INDEX


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels/samples; 0 (with a gradient path) when everything is ignored."""
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


def lsgan_generator_loss(target_scores: torch.Tensor) -> torch.Tensor:
    """Generator term of HIAST Eq. 2: ``mean (D(M(x_t)) - 1)^2``, pulling target outputs towards "source" (label 1)."""
    return (target_scores - 1.0).pow(2).mean()


def lsgan_discriminator_loss(source_scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares discriminator loss, source labelled 1 and target 0 (paper §3.3): ``1/2 [(D_s - 1)^2 + D_t^2]``.

    Eq. 3 as printed writes the objective with the labels swapped and "max"; this is the standard LSGAN form with
    the labels of Eq. 2, which is what both the paper's text and the reference code (labels flipped) optimise.
    """
    return 0.5 * ((source_scores - 1.0).pow(2).mean() + target_scores.pow(2).mean())
