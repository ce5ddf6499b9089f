"""A split-conformal correction of the label-free score estimate, fitted on development targets (issue 29 item 6).

Not :mod:`raysel.selection.calibration`, which is the source-validation cache ATC reads: this corrects the estimate
:mod:`raysel.selection.estimate` makes. Both of its estimators are biased on hyperparameter sweeps: the agreement reads
about twice the held-out mIoU on street scenes (a sweep's candidates share their errors), and ATC reads high on
collapsed and entropy-minimised digits candidates, so the raw interval rarely covers the held-out score.

The correction is split-conformal in logit space. On development targets the residual r = logit(held-out) −
logit(estimate) of each candidate is collected (both clipped to [``LOGIT_CLIP``, 1 − ``LOGIT_CLIP``]); a new estimate
is shifted by the residuals' median and its interval by their conformal quantiles. Fitting reads held-out scores, so
it is evaluation code: :func:`raysel.selection.evaluate.fit_estimate_calibration`. Applying a fitted
:class:`EstimateCalibration` (:func:`calibrate_estimate`) reads no label.

*Pre-registered*: logit space was chosen on development targets only, before any test target was judged. A
leave-one-target-out check on the development rows of the ``selection_wide --budget decision`` campaign covered about
80 % in logit space; difference and ratio spaces covered worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LOGIT_CLIP", "clipped_logit", "EstimateCalibration", "calibrate_estimate"]

LOGIT_CLIP = 1e-3  # scores are clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before the logit, so 0 and 1 stay finite


def clipped_logit(values: Any) -> np.ndarray:
    """logit of scores (fractions) clipped to [``LOGIT_CLIP``, 1 − ``LOGIT_CLIP``], the space calibration works in,
    so that a score of 0 or 1 keeps a finite residual; NaN (and None) give NaN.

    Args:
        values: a score or an array of scores, as fractions.
    """
    clipped = np.clip(np.asarray(np.nan if values is None else values, dtype=np.float64), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(clipped) - np.log1p(-clipped)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    """The inverse of the logit, without overflow for large |values|."""
    return 0.5 * (1.0 + np.tanh(0.5 * values))


@dataclass(frozen=True)
class EstimateCalibration:
    """A split-conformal correction of the label-free estimate, fitted on development targets' held-out scores.

    Pre-registered: the space (logit) and the quantiles were fixed on development targets only, before any test target
    was judged. Offsets are quantiles of the residual logit(held-out) − logit(``estimate_score``).
    """

    key: str  # what it was fitted for: a family (``street_scenes``) or a task (``segmentation``)
    estimate_method: str  # the estimate methods of the rows it was fitted on, pooled (comma-separated)
    median_offset: float
    low_offset: float
    high_offset: float
    level: float  # the interval's nominal coverage
    candidates: int  # rows (candidates) it was fitted on
    fitted_on: tuple[str, ...]  # the development targets of those rows


def calibrate_estimate(score: Any, calibration: EstimateCalibration) -> tuple[Any, Any, Any]:
    """(point, low, high) of the calibrated estimate, fractions in [0, 1] with low ≤ point ≤ high: the estimate
    shifted in logit space by the calibration's median residual, the interval by its low and high residual quantiles.
    Reads no label. Floats for a scalar ``score``, arrays for an array; NaN where the score is missing.

    Args:
        score: the stored label-free estimate(s) (``estimate_score``), as fractions.
        calibration: fitted on development targets (:func:`raysel.selection.evaluate.fit_estimate_calibration`).
    """
    logit = clipped_logit(score)
    point = _sigmoid(logit + calibration.median_offset)
    low = np.minimum(_sigmoid(logit + calibration.low_offset), point)
    high = np.maximum(_sigmoid(logit + calibration.high_offset), point)
    if np.ndim(logit) == 0:
        return float(point), float(low), float(high)
    return point, low, high
