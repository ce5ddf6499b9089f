"""How close is a label-free score estimate to the held-out score? Evaluation code (issue 29 item 6).

Benchmarks only (SPEC §5), as :mod:`raysel.selection.evaluate`: the held-out scores are an *input*, read from stored
trial rows; this module never opens a label file, and nothing in selection calls it before deciding.

* :func:`estimate_measures` / :func:`estimate_accuracy` compare the stored estimates (``estimate_*`` columns,
  :mod:`raysel.selection.estimate`) with the stored held-out scores: mean absolute error in points and the coverage
  of the 90 % intervals.
* :func:`fit_estimate_calibration` fits the split-conformal calibration (logit space, pre-registered;
  :mod:`raysel.selection.estimate_calibration`) on development rows, and :func:`calibrated_estimate_accuracy` judges
  the calibrated estimate on other rows.
* :func:`fit_score_regression` fits the score regression (logit(held-out) on at most two label-free scores,
  pre-registered), and :func:`regressed_estimate_accuracy` judges it the same way.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from raysel.selection.estimate import ESTIMATE_LEVEL
from raysel.selection.estimate_calibration import (EstimateCalibration, ScoreRegression, calibrate_estimate,
                                                   clipped_logit, inverse_logit, regress_estimate)
from raysel.selection.evaluate import POINTS
from raysel.selection.selectors import (ClassMixConsistencySelector, ClusterAMISelector, ConfidentFMIoUSelector,
                                        ConsistencySelector, EntropySelector, FMIoUSelector,
                                        InformationMaximizationSelector, MixValSelector, SNDSelector, SoftVoteSelector)
from raysel.store.schema import SCORE_PREFIX

ESTIMATE_HELDOUT_COLUMNS = ("heldout_miou", "heldout_accuracy")  # a row's held-out score: the first one it holds


def _number(value: Any) -> float:
    """``value`` as a float; NaN when it is missing or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _heldout(row: Mapping[str, Any]) -> float:
    """A row's held-out score: the first finite one of ``ESTIMATE_HELDOUT_COLUMNS``, else NaN."""
    return next((_number(row.get(column)) for column in ESTIMATE_HELDOUT_COLUMNS
                 if math.isfinite(_number(row.get(column)))), math.nan)


MIN_CALIBRATION_ROWS = 10  # fewer candidates than this give no calibration


ESTIMATE_COLUMNS = ("estimate_score", "estimate_low", "estimate_high")  # a stored estimate: point and interval


def _estimate_rows(rows: Any, numbers: Sequence[str], texts: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The rows that have both a finite ``estimate_score`` and a finite held-out score (a row's ``heldout_miou``, else
    its ``heldout_accuracy``), as arrays: ``heldout`` (fractions), each column of ``numbers`` (floats, NaN where a row
    has none) and each column of ``texts`` (strings, empty where a row has none)."""
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    kept = [(row, heldout) for row in records
            if math.isfinite(heldout := _heldout(row)) and math.isfinite(_number(row.get("estimate_score")))]
    table = {"heldout": np.array([heldout for _, heldout in kept], dtype=np.float64)}
    for name in numbers:
        table[name] = np.array([_number(row.get(name)) for row, _ in kept], dtype=np.float64)
    for name in texts:
        table[name] = np.array([value if isinstance(value := row.get(name), str) else "" for row, _ in kept],
                               dtype=object)
    return table


def _estimate_errors(estimate: np.ndarray, low: np.ndarray, high: np.ndarray,
                     heldout: np.ndarray) -> tuple[float, float, float, float]:
    """(mean and median absolute error in points, interval coverage, mean interval width in points) of estimates
    against held-out scores (fractions); a missing bound covers nothing and has no width. NaNs when there is no row."""
    if not estimate.size:
        return math.nan, math.nan, math.nan, math.nan
    bounded = np.isfinite(low) & np.isfinite(high)
    covered = bounded & (low <= heldout) & (heldout <= high)
    width = float(np.mean(high[bounded] - low[bounded]) * POINTS) if bounded.any() else math.nan
    errors = np.abs(estimate - heldout) * POINTS
    return float(np.mean(errors)), float(np.median(errors)), float(np.mean(covered)), width


def estimate_measures(rows: Any) -> tuple[float, float, float, float]:
    """(mean absolute error in points, median absolute error in points, coverage, mean interval width in points) of
    the stored label-free estimates against the stored held-out scores, over the rows that have both (as
    :func:`estimate_accuracy`, which gives the first and third); NaNs when no row has both.

    Args:
        rows: trial rows (a DataFrame or mappings) with ``estimate_*`` and ``heldout_miou`` or ``heldout_accuracy``.
    """
    table = _estimate_rows(rows, ESTIMATE_COLUMNS)
    return _estimate_errors(*(table[name] for name in ESTIMATE_COLUMNS), table["heldout"])


def estimate_accuracy(rows: Any) -> tuple[float, float]:
    """(mean absolute error in points, coverage) of the stored label-free estimates against the stored held-out
    scores: |``estimate_score`` − held-out| averaged over the rows that have both, and the share of those rows whose
    held-out score lies in [``estimate_low``, ``estimate_high``]. ``rows``: trial rows (a DataFrame or mappings);
    the held-out score is a row's ``heldout_miou``, else its ``heldout_accuracy``. (NaN, NaN) when no row has both.
    Evaluation only: the held-out scores are an input, read from the rows, and never reach the estimator."""
    error, _, coverage, _ = estimate_measures(rows)
    return error, coverage


def _conformal_rank(n: int, probability: float) -> int:
    """Split conformal's finite-sample quantile rank: ceil((n + 1) · p), clamped to 1..n (the sample's range)."""
    rank = math.ceil((n + 1) * probability - 1e-9)  # the tolerance keeps an exact product from rounding up
    return min(max(rank, 1), n)


def fit_estimate_calibration(rows: Any, *, level: float = ESTIMATE_LEVEL,
                             key: str = "") -> EstimateCalibration | None:
    """Split-conformal calibration of the label-free estimate in logit space, fitted on development rows' held-out
    scores (evaluation code: call it on development targets only, never on the targets it will be judged on).

    Pre-registered before any test target was judged: residual r = logit(held-out) − logit(estimate), both clipped to
    [1e-3, 1 − 1e-3]; the point shifts by median(r), the interval spans the ceil((n + 1)(1 + level)/2)-th smallest r
    and its mirror (the n + 1 − that rank), clamped to the sample's range. None with fewer than
    ``MIN_CALIBRATION_ROWS`` rows that have both a finite ``estimate_score`` and a held-out score; other rows are
    skipped.

    Args:
        rows: trial rows (a DataFrame or mappings) with ``estimate_score`` and ``heldout_miou`` or
            ``heldout_accuracy``; ``estimate_method`` and ``target`` are recorded when present.
        level: the interval's nominal coverage.
        key: what the calibration is for (a family or task name), kept in the result.
    """
    table = _estimate_rows(rows, ("estimate_score",), ("estimate_method", "target"))
    n = len(table["heldout"])
    if n < MIN_CALIBRATION_ROWS:
        return None
    residuals = np.sort(clipped_logit(table["heldout"]) - clipped_logit(table["estimate_score"]))
    rank = _conformal_rank(n, (1.0 + level) / 2.0)
    low, high = float(residuals[n - rank]), float(residuals[rank - 1])  # the (n + 1 − k)-th and k-th smallest
    return EstimateCalibration(key=key, estimate_method=", ".join(sorted(set(table["estimate_method"]) - {""})),
                               median_offset=float(np.median(residuals)), low_offset=low, high_offset=high,
                               level=level, candidates=n, fitted_on=tuple(sorted(set(table["target"]) - {""})))


def calibrated_estimate_accuracy(fit_rows: Any, eval_rows: Any,
                                 level: float = ESTIMATE_LEVEL) -> tuple[float, float, float]:
    """(mean absolute error in points, coverage, mean interval width in points) of the estimate calibrated on
    ``fit_rows`` (:func:`fit_estimate_calibration`), measured on ``eval_rows`` as :func:`estimate_accuracy` measures
    the raw one. NaNs when no calibration can be fitted or no eval row has both scores.

    Args:
        fit_rows: the development rows the calibration is fitted on (never the rows it is judged on).
        eval_rows: the rows it is judged on.
        level: the interval's nominal coverage.
    """
    calibration = fit_estimate_calibration(fit_rows, level=level)
    if calibration is None:
        return math.nan, math.nan, math.nan
    table = _estimate_rows(eval_rows, ("estimate_score",))
    point, low, high = calibrate_estimate(table["estimate_score"], calibration)
    error, _, coverage, width = _estimate_errors(point, low, high, table["heldout"])
    return error, coverage, width


# The score regression's candidate features: the stored estimate and every selector score that is a magnitude of the
# candidate's own predictions. rank_mean and robust are left out: their scores are ranks within a sweep.
REGRESSION_FEATURES = ("estimate_score", *(f"{SCORE_PREFIX}{selector.name}" for selector in (
    ConsistencySelector, ClassMixConsistencySelector, MixValSelector, FMIoUSelector, ConfidentFMIoUSelector,
    SoftVoteSelector, ClusterAMISelector, InformationMaximizationSelector, EntropySelector, SNDSelector)))
MAX_REGRESSION_FEATURES = 2  # two development targets per family cannot carry more
MIN_FEATURE_GAIN_POINTS = 0.25  # a second feature must cut the left-out error by this much to be taken
MIN_FEATURE_SHARE = 0.9  # a feature must be finite on this share of the fit's rows to be considered


def _linear_fit(matrix: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Ordinary least squares with an intercept: (intercept, coefficients...)."""
    design = np.column_stack([np.ones(len(matrix)), matrix])
    return np.linalg.lstsq(design, response, rcond=None)[0]


def _linear_predict(weights: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The fitted linear function at each row of ``matrix``."""
    return weights[0] + matrix @ weights[1:]


def _left_out_residuals(matrix: np.ndarray, response: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row's residual (response − prediction) under a fit on the other groups' rows; NaN for a group whose
    complement has fewer than ``MIN_CALIBRATION_ROWS`` rows."""
    residuals = np.full(len(response), np.nan)
    for group in dict.fromkeys(groups):
        inside = groups == group
        if (~inside).sum() >= MIN_CALIBRATION_ROWS:
            weights = _linear_fit(matrix[~inside], response[~inside])
            residuals[inside] = response[inside] - _linear_predict(weights, matrix[inside])
    return residuals


def _left_out_error(residuals: np.ndarray, response: np.ndarray, heldout: np.ndarray) -> float:
    """Mean absolute error (points) of the left-out predictions logit⁻¹(response − residual) against the held-out
    scores, over the rows that have one."""
    known = np.isfinite(residuals)
    if not known.any():
        return math.inf
    predicted = inverse_logit(response[known] - residuals[known])
    return float(np.mean(np.abs(predicted - heldout[known])) * POINTS)


def fit_score_regression(rows: Any, *, level: float = ESTIMATE_LEVEL, key: str = "",
                         features: Sequence[str] = REGRESSION_FEATURES,
                         max_features: int = MAX_REGRESSION_FEATURES) -> ScoreRegression | None:
    """The score regression fitted on development rows' held-out scores (evaluation code: call it on development
    targets only, never on the targets it will be judged on).

    Pre-registered, on development targets only and before any test target judged it: the response is
    logit(held-out), clipped as in :func:`~raysel.selection.estimate_calibration.clipped_logit`; the fit is ordinary
    least squares on at most ``max_features`` of ``features``; the features are chosen forward, each step taking
    the one whose model best predicts a *left-out group* (mean absolute error in points when each group is predicted
    by a fit on the others; groups are the rows' targets, or their sweeps when the rows hold one target), and a
    second feature only when it cuts that error by ``MIN_FEATURE_GAIN_POINTS``; a feature is considered when it is
    finite on ``MIN_FEATURE_SHARE`` of the rows. The point is the fit on every row, the 90 % interval the conformal
    quantiles (as :func:`fit_estimate_calibration`) of the left-out residuals of the chosen model. None with fewer
    than ``MIN_CALIBRATION_ROWS`` usable rows or fewer than two groups.

    Args:
        rows: trial rows (a DataFrame or mappings) with ``estimate_score``, the ``features`` columns, a held-out
            score (``heldout_miou`` or ``heldout_accuracy``), ``target`` and ``sweep_id``.
        level: the interval's nominal coverage.
        key: what the regression is for (a family or task name), kept in the result.
        features: the columns the features are chosen from.
        max_features: the most features the regression reads.

    Example:
        >>> rows = [{"estimate_score": 0.5, "score_consistency": c, "heldout_miou": 1 / (1 + math.exp(3 - 4 * c)),
        ...          "target": t, "sweep_id": f"{t}-0"} for t in ("day", "dusk") for c in np.linspace(0.1, 0.6, 10)]
        >>> regression = fit_score_regression(rows, features=["score_consistency"])
        >>> regression.features, round(regression.intercept, 2), [round(c, 2) for c in regression.coefficients]
        (('score_consistency',), -3.0, [4.0])
    """
    table = _estimate_rows(rows, features, ("target", "sweep_id"))
    heldout = table["heldout"]
    left_out_by = "target" if len(set(table["target"])) >= 2 else "sweep_id"
    groups = table[left_out_by]
    if len(heldout) < MIN_CALIBRATION_ROWS or len(set(groups)) < 2:
        return None
    response = clipped_logit(heldout)
    chosen, error = _choose_features(table, response, groups, features, max_features)
    if not chosen:
        return None
    usable = np.all([np.isfinite(table[name]) for name in chosen], axis=0)
    matrix = np.column_stack([table[name][usable] for name in chosen])
    residuals = _left_out_residuals(matrix, response[usable], groups[usable])
    residuals = np.sort(residuals[np.isfinite(residuals)])
    n = len(residuals)
    if n < MIN_CALIBRATION_ROWS:
        return None
    rank = _conformal_rank(n, (1.0 + level) / 2.0)
    weights = _linear_fit(matrix, response[usable])
    return ScoreRegression(key=key, features=tuple(chosen), intercept=float(weights[0]),
                           coefficients=tuple(float(w) for w in weights[1:]), low_offset=float(residuals[n - rank]),
                           high_offset=float(residuals[rank - 1]), level=level, candidates=int(usable.sum()),
                           fitted_on=tuple(sorted(set(table["target"][usable]) - {""})), left_out_by=left_out_by,
                           left_out_error=error)


def _choose_features(table: dict[str, np.ndarray], response: np.ndarray, groups: np.ndarray,
                     features: Sequence[str], max_features: int) -> tuple[list[str], float]:
    """Forward selection of at most ``max_features`` features by the left-out error (points), over the rows where
    every eligible feature is finite; (chosen features, their left-out error), ([], inf) when none predicts."""
    eligible = [name for name in features
                if np.isfinite(table[name]).mean() >= MIN_FEATURE_SHARE and np.nanstd(table[name]) > 0]
    complete = np.all([np.isfinite(table[name]) for name in eligible], axis=0) if eligible else None
    chosen: list[str] = []
    error = math.inf
    while eligible and len(chosen) < max_features:
        trials = []
        for name in (name for name in eligible if name not in chosen):
            matrix = np.column_stack([table[column][complete] for column in chosen + [name]])
            residuals = _left_out_residuals(matrix, response[complete], groups[complete])
            trials.append((_left_out_error(residuals, response[complete], table["heldout"][complete]), name))
        if not trials:
            break
        best_error, best = min(trials)
        if not math.isfinite(best_error) or (chosen and best_error > error - MIN_FEATURE_GAIN_POINTS):
            break
        chosen, error = chosen + [best], best_error
    return chosen, error


def regressed_estimate_accuracy(fit_rows: Any, eval_rows: Any,
                                level: float = ESTIMATE_LEVEL) -> tuple[float, float, float, int]:
    """(mean absolute error in points, coverage, mean interval width in points, candidates judged) of the score
    regression fitted on ``fit_rows`` (:func:`fit_score_regression`), measured on the ``eval_rows`` that have a
    stored estimate, a held-out score and every feature it reads. NaNs and 0 when none can be fitted or judged.

    Args:
        fit_rows: the development rows the regression is fitted on (never the rows it is judged on).
        eval_rows: the rows it is judged on.
        level: the interval's nominal coverage.
    """
    regression = fit_score_regression(fit_rows, level=level)
    if regression is None:
        return math.nan, math.nan, math.nan, 0
    table = _estimate_rows(eval_rows, regression.features)
    point, low, high = regress_estimate(table, regression)
    judged = np.isfinite(point)
    if not judged.any():
        return math.nan, math.nan, math.nan, 0
    error, _, coverage, width = _estimate_errors(point[judged], low[judged], high[judged], table["heldout"][judged])
    return error, coverage, width, int(judged.sum())
