"""The one implementation of segmentation/classification metrics used everywhere in raysel.

Conventions (chosen once, used by training, selection and evaluation alike):

* Pixels whose target is ``ignore_index`` (255) are skipped; predictions are never ignored.
* Intersections and unions are accumulated over a whole image set (a confusion matrix), then IoU is taken per
  class; per-image mIoUs are never averaged (HIAST's metric code does the same).
* **Absent-class convention**: a class with union 0 over the whole set (neither predicted nor present) is
  excluded from the mean (IoU is NaN for it, and ``miou`` is a NaN-skipping mean). A class that is present in the
  target but never predicted correctly counts as 0. This matches mmseg and scikit-learn's ``jaccard_score``
  restricted to the labels that occur; it differs from HIAST's code, which counts absent classes as 0 and so
  depends on how many classes a small subset happens to contain.
* Values are fractions in [0, 1]; reports multiply by 100 to give "mIoU points".
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from raysel.conventions import IGNORE_INDEX

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "confusion_matrix", "ConfusionMatrix", "iou_per_class", "miou", "pixel_accuracy", "harmonic_mean",
]

ArrayLike = "np.ndarray | torch.Tensor"


def _flat_int64(values: ArrayLike) -> np.ndarray:
    # torch is not imported here (selection and the light commands use these metrics on numpy arrays without it): a
    # tensor can only exist when its caller has imported torch, so look it up in sys.modules instead.
    torch_module = sys.modules.get("torch")
    if torch_module is not None and isinstance(values, torch_module.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1).astype(np.int64, copy=False)


def confusion_matrix(
    prediction: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Return the ``[num_classes, num_classes]`` int64 confusion matrix (rows: target, columns: prediction).

    Uses a single ``bincount`` over ``target * C + prediction``; pixels whose target is ``ignore_index`` are
    dropped. Prediction values outside ``[0, C)`` raise ``ValueError`` rather than silently corrupting counts.
    """
    prediction = _flat_int64(prediction)
    target = _flat_int64(target)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction has {prediction.size} elements but target has {target.size}")
    keep = target != ignore_index
    prediction, target = prediction[keep], target[keep]
    if prediction.size and (prediction.min() < 0 or prediction.max() >= num_classes):
        raise ValueError(f"prediction class ids must lie in [0, {num_classes}); got {prediction.min()}..{prediction.max()}")
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target class ids must lie in [0, {num_classes}) or be {ignore_index}; got {target.min()}..{target.max()}")
    counts = np.bincount(target * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class ConfusionMatrix:
    """Streaming accumulator: call ``update`` once per image (or batch), then read IoU / mIoU / accuracy."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: ArrayLike, target: ArrayLike) -> "ConfusionMatrix":
        """Add one image's (or batch's) counts."""
        self.matrix += confusion_matrix(prediction, target, self.num_classes, self.ignore_index)
        return self

    def iou_per_class(self) -> np.ndarray:
        return iou_per_class(self.matrix)

    def miou(self) -> float:
        return miou(self.matrix)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.matrix)


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN); NaN where the class is absent from both target and prediction."""
    true_positive = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, true_positive / np.maximum(union, 1), np.nan)


def miou(matrix: np.ndarray) -> float:
    """Mean IoU over classes present in target or prediction (absent classes skipped); NaN if none."""
    values = iou_per_class(matrix)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def pixel_accuracy(matrix: np.ndarray) -> float:
    """Fraction of non-ignored pixels predicted correctly (for classification: top-1 accuracy)."""
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")


def harmonic_mean(values: Sequence[float] | Iterable[float]) -> float:
    """Harmonic mean over domains (HDRQ reports 2ab/(a+b)); 0 if any value is 0, NaN if empty or any NaN."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0 or np.isnan(array).any():
        return float("nan")
    if (array <= 0).any():
        return 0.0
    return float(array.size / np.sum(1.0 / array))
