"""A split-conformal correction of the label-free score estimate, fitted on development targets (issue 29 item 6).

Not :mod:`raysel.selection.calibration`, which is the source-validation cache ATC reads: this corrects the estimate
:mod:`raysel.selection.estimate` makes. Both of its estimators are biased on hyperparameter sweeps: the agreement reads
about twice the held-out mIoU on street scenes (a sweep's candidates share their errors), and ATC reads high on
collapsed and entropy-minimised digits candidates, so the raw interval rarely covers the held-out score.

The correction is split-conformal in logit space. On development targets the residual r = logit(held-out) −
logit(estimate) of each candidate is collected (both clipped to [``LOGIT_CLIP``, 1 − ``LOGIT_CLIP``]); a new estimate
is shifted by the residuals' median and its interval by their conformal quantiles. Fitting reads held-out scores, so
it is evaluation code: :func:`raysel.selection.evaluate_estimate.fit_estimate_calibration`. Applying a fitted
:class:`EstimateCalibration` (:func:`calibrate_estimate`) reads no label.

*Pre-registered*: logit space was chosen on development targets only, before any test target was judged. A
leave-one-target-out check on the development rows of the ``selection_wide --budget decision`` campaign covered about
80 % in logit space; difference and ratio spaces covered worse.

**The score regression** (:class:`ScoreRegression`, :func:`regress_estimate`) goes one step further: the offset above
only moves the estimate, so it keeps the estimate's ranking, and on street scenes the estimate (the agreement) ranks
candidates worse than the trial-scored ``consistency`` does (correlation with held-out mIoU 0.71 against 0.87 over the
development candidates). The regression predicts logit(held-out) as a linear function of at most two of a candidate's
label-free scores, chosen on development targets by how well they predict a *left-out* target; its 90 % interval is
the conformal quantiles of those left-out residuals, so it includes the error of moving to a new domain, which the
in-sample residuals of one fit leave out. Fitting (:func:`raysel.selection.evaluate_estimate.fit_score_regression`,
which states the pre-registered procedure) reads held-out scores and is evaluation code; applying one reads no label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["LOGIT_CLIP", "clipped_logit", "inverse_logit", "EstimateCalibration", "calibrate_estimate",
           "ScoreRegression", "regress_estimate"]

LOGIT_CLIP = 1e-3  # scores are clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before the logit, so 0 and 1 stay finite


def clipped_logit(values: Any) -> np.ndarray:
    """logit of scores (fractions) clipped to [``LOGIT_CLIP``, 1 − ``LOGIT_CLIP``], the space calibration works in,
    so that a score of 0 or 1 keeps a finite residual; NaN (and None) give NaN.

    Args:
        values: a score or an array of scores, as fractions.
    """
    clipped = np.clip(np.asarray(np.nan if values is None else values, dtype=np.float64), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(clipped) - np.log1p(-clipped)


def inverse_logit(values: Any) -> np.ndarray:
    """The inverse of the logit (the logistic function), without overflow for large |values|.

    Args:
        values: a logit or an array of logits.
    """
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(values, dtype=np.float64)))


def _interval(logit: np.ndarray, point_offset: float, low_offset: float, high_offset: float) -> tuple[Any, Any, Any]:
    """(point, low, high) as fractions, each ``logit`` shifted by its offset in logit space, with low ≤ point ≤ high
    (an offset pair that does not bracket the point is clamped to it): floats for a scalar ``logit``, else arrays."""
    point = inverse_logit(logit + point_offset)
    low = np.minimum(inverse_logit(logit + low_offset), point)
    high = np.maximum(inverse_logit(logit + high_offset), point)
    if np.ndim(logit) == 0:
        return float(point), float(low), float(high)
    return point, low, high


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
        calibration: fitted on development targets
            (:func:`raysel.selection.evaluate_estimate.fit_estimate_calibration`).
    """
    return _interval(clipped_logit(score), calibration.median_offset, calibration.low_offset,
                     calibration.high_offset)


@dataclass(frozen=True)
class ScoreRegression:
    """logit(held-out score) ≈ ``intercept`` + Σ ``coefficients`` · ``features``, fitted on development candidates,
    with a 90 % interval from the residuals of predicting each left-out group (a development target) from the others.

    Fitted by :func:`raysel.selection.evaluate_estimate.fit_score_regression` (the pre-registered procedure is stated
    there).
    """

    key: str  # what it was fitted for: a family (``street_scenes``) or a task
    features: tuple[str, ...]  # the row columns it reads: ``estimate_score`` or ``score_<selector>``
    intercept: float
    coefficients: tuple[float, ...]  # one per feature, in logit units per unit of the feature
    low_offset: float  # conformal quantiles of the left-out residuals, logit units
    high_offset: float
    level: float  # the interval's nominal coverage
    candidates: int  # rows (candidates) it was fitted on
    fitted_on: tuple[str, ...]  # the development targets of those rows
    left_out_by: str  # the column whose groups were left out in turn: ``target``, or ``sweep_id`` with one target
    left_out_error: float  # mean absolute error (points) of the left-out predictions that chose the features


def regress_estimate(features: Mapping[str, Any], regression: ScoreRegression) -> tuple[Any, Any, Any]:
    """(point, low, high) of the regressed estimate, fractions in [0, 1] with low ≤ point ≤ high, from a candidate's
    label-free scores. Reads no label. Floats when the features are scalars, arrays for arrays; NaN where a feature
    the regression reads is missing.

    Args:
        features: each name in ``regression.features`` -> its value(s) (None counts as missing).
        regression: fitted on development targets (:func:`raysel.selection.evaluate_estimate.fit_score_regression`).

    Example:
        >>> regression = ScoreRegression("street_scenes", ("score_consistency",), -3.0, (4.0,), -0.5, 0.5, 0.9,
        ...                              100, ("day_city",), "sweep_id", 4.0)
        >>> [round(value, 3) for value in regress_estimate({"score_consistency": 0.5}, regression)]
        [0.269, 0.182, 0.378]
    """
    logit = np.asarray(regression.intercept, dtype=np.float64)
    for name, coefficient in zip(regression.features, regression.coefficients):
        value = features.get(name)
        logit = logit + coefficient * np.asarray(np.nan if value is None else value, dtype=np.float64)
    return _interval(logit, 0.0, regression.low_offset, regression.high_offset)
