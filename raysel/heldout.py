"""Held-out target evaluation: the only place (with selection's evaluation) that reads target labels.

Never imported by methods or selectors. Segmentation: a confusion matrix accumulated over the whole held-out split
(:class:`raysel.metrics.ConfusionMatrix`, absent classes NaN-skipped) -> mIoU and per-class IoU. Classification:
top-1 accuracy (and per-class recall).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from raysel.data import default_data_root, get_family
from raysel.metrics import ConfusionMatrix

__all__ = [
    "HELDOUT_SPLIT", "heldout_scores",
]

HELDOUT_SPLIT = "heldout"


def _resolve(family_or_ctx: Any, data_root: Path | str | None, target: str | None, device: torch.device | None,
             image_size: tuple[int, int] | None) -> tuple[Any, Path, str, torch.device, tuple[int, int] | None]:
    """Accept a RunContext or an explicit (family, data_root, target)."""
    if hasattr(family_or_ctx, "spec") and hasattr(family_or_ctx, "family"):
        ctx = family_or_ctx
        return (ctx.family, Path(ctx.data_root), target or ctx.target, device or ctx.device,
                image_size if image_size is not None else ctx.spec.image_size)
    family = get_family(family_or_ctx) if isinstance(family_or_ctx, str) else family_or_ctx
    root = Path(data_root) if data_root is not None else default_data_root()
    return family, root, target or family.default_targets[0], device or torch.device("cpu"), image_size


@torch.no_grad()
def heldout_scores(model: nn.Module, family_or_ctx: Any, data_root: Path | str | None = None,
                   target: str | None = None, device: torch.device | None = None, *,
                   image_size: tuple[int, int] | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Score ``model`` on the labelled held-out split of the target domain.

    ``family_or_ctx`` is a RunContext (family, data root, target, device and image size taken from it) or a
    DatasetFamily / family name with ``data_root`` and ``target``. Segmentation returns ``heldout_miou`` (fraction,
    NaN-skipping absent classes), ``heldout_iou`` (list per class, NaN for absent) and ``heldout_pixel_accuracy``;
    classification returns ``heldout_accuracy`` and ``heldout_class_accuracy``. Predictions are made at the
    dataset's image size; logits are resized to the label size when they differ.
    """
    family, root, target, device, image_size = _resolve(family_or_ctx, data_root, target, device, image_size)
    dataset = family.load(root, target, HELDOUT_SPLIT, with_labels=True, image_size=image_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(family.num_classes)
    for batch in loader:
        logits = model(batch["image"].to(device)).float()
        labels = batch["label"]
        if logits.dim() == 4 and logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
        matrix.update(logits.argmax(dim=1).cpu(), labels)
    model.train(was_training)
    if family.task == "classification":
        with np.errstate(divide="ignore", invalid="ignore"):
            per_class = np.diag(matrix.matrix) / matrix.matrix.sum(axis=1)
        return {"heldout_accuracy": matrix.pixel_accuracy(), "heldout_class_accuracy": per_class.tolist(),
                "heldout_images": len(dataset)}
    return {"heldout_miou": matrix.miou(), "heldout_iou": matrix.iou_per_class().tolist(),
            "heldout_pixel_accuracy": matrix.pixel_accuracy(), "heldout_images": len(dataset)}
