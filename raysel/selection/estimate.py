"""A label-free estimate of each candidate's target score, with a 90 % interval (issue 29 item 6).

What is estimated: the score held-out evaluation gives (accuracy for classification, mIoU for segmentation), as a
fraction. The inputs are what selection already has, the candidates' cached predictions on the target *training*
subset, plus, where the trial could make one, a small *source-validation* calibration cache
(:class:`~raysel.selection.calibration.SourceCalibration`, written next to the prediction cache by
:func:`raysel.execution.prediction_cache.cache_candidate_predictions`). That cache holds the candidate's probabilities
on labelled source held-out images and their labels (its format: :mod:`raysel.selection.calibration`). Source labels
may be used; target labels never are.

There are two estimators, because each fails where the other does not:

* **ATC** (Garg et al., ICLR 2022, "Leveraging unlabeled data to predict out-of-distribution performance"): fit a
  threshold t on the candidate's source-validation confidence so that the share of source samples above t equals
  its source accuracy. The estimate is the share of target samples above t. The confidence is the negative entropy
  of the softmax (ATC-NE, which Garg et al. found at least as good as the maximum probability). It also separates
  the float16 probabilities the caches keep, where many confident maximum probabilities round to exactly 1. Ties
  at t are split fractionally, so the source share matches the source accuracy exactly.
  *Segmentation* uses class-wise thresholds: one per predicted class, the class-specific ATC that roughly halves
  the error on segmentation (MICCAI 2022). Where the source has no pixel of a class, the pooled threshold is used.
  A target pixel above its class's threshold counts as a true positive of that class. A pixel below it counts as a
  false positive, and its true class is spread over the other classes in proportion to its own probabilities
  (expected false negatives). mIoU is the mean, over the classes the candidate predicts, of
  TP / (predicted + expected FN). A class the candidate never predicts is not counted: the estimate cannot see it,
  so it reads high when such a class is present.
* **Agreement** with the fused vote of all finite candidates: HIAST's F-mIoU for segmentation, fused-vote accuracy
  for classification, computed by :mod:`raysel.selection.voting` and not re-implemented here. It needs no source
  data, so it works for every sweep with at least ``MIN_AGREEMENT_CANDIDATES`` finite candidates. But it measures
  agreement, not accuracy. It reads too high when the candidates share errors (a narrow sweep) and too low for a
  good candidate among many bad ones.

**Primary estimator: ATC**, wherever the candidate has a calibration cache and cached probabilities; otherwise the
agreement. ``estimate_method`` says which: ``atc``, ``atc+agreement`` (ATC's point, with an interval widened by the
agreement, see below) or ``agreement``. ATC's error depends on the candidate and the shift; Garg et al. measured a
few points of mean absolute error across many shifts. The agreement's error depends on the pool, and a
hyperparameter sweep makes its candidates as correlated as a pool can be. ATC's known failure is entropy
minimisation: a candidate trained to be confident on the target looks confident everywhere, and ATC then reads high.
Where no source validation split exists (``street_scenes``' ``game`` source and GTA5 have only a training split;
Office's held-out split *is* its training set), only the agreement is available.

**The class-prior cap (classification).** No classifier can be right on more target samples than
Σ_c min(q_c, π_c), where q_c is the share of target samples it predicts as class c and π_c the share of class c among
the target's samples: a candidate that calls every digit a 3 is right on at most the 3s. raysel takes π from the
source-validation labels of the calibration cache (the closed-set assumption of UDA without label shift: the target
has the source's classes in the source's proportions) and caps both estimators' points and replicates by it. This
is what removes ATC's worst failure: a collapsed or entropy-minimised candidate is confident everywhere and ATC then
reads 90-100 %. On the development digits candidates of ``selection_wide --budget decision`` (photo, noisy, inverted;
chunks 1-2) the cap took ATC's mean absolute error from 35 to 15 points (correlation with the held-out accuracy
0.33 to 0.78). Where the target's classes are far from the source's proportions the cap can read low; it is not
applied to segmentation, whose class pixel shares move with the scene layout from domain to domain. Format-1
calibration caches hold no labels; there the prior comes from the predictions of the sweep's most accurate
candidate on the source (when it is at least ``PRIOR_FROM_PREDICTIONS_MIN_ACCURACY`` accurate there), else no cap.

**The 90 % interval**, in two steps:

1. A percentile bootstrap over images (``BOOTSTRAP_REPLICATES`` seeded replicates). The target images are
   resampled, the same draw for both estimators, and for ATC the source-validation images too, so the threshold's
   own noise is included. This covers the estimate's sampling error, not its bias.
2. When both estimators ran, the interval is widened to contain the other estimator's point estimate. The gap
   between two estimators that fail differently is the part of the bias the data can show, and a bootstrap alone
   would give a confident interval around a biased value. A wide interval therefore means "do not trust this
   number much".

**Calibration on development targets**: both estimators are biased on hyperparameter sweeps, so the raw interval
rarely covers. :mod:`raysel.selection.estimate_calibration` corrects an estimate with a split-conformal calibration
in logit space fitted on labelled development targets; ``benchmarks/selection_wide.py`` measures it (fitted on the
embedded benchmark's development targets, judged on its test targets). Sweeps do not apply it: a calibration fitted
on one benchmark's targets says nothing about another dataset's.

Everything is vectorised numpy. Labels are streamed one image batch at a time, as in :mod:`raysel.selection.voting`.
Nothing here reads a label: :func:`estimate_trials` opens only the candidates' prediction and calibration caches.
Held-out scores meet the estimates only in :func:`raysel.selection.evaluate_estimate.estimate_accuracy`, which is
evaluation.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from raysel.errors import DataError
from raysel.selection.calibration import SourceCalibration, calibration_path, load_calibration
from raysel.selection.guards import check_candidates, entropy, finite_candidates
from raysel.selection.predictions import (STREAM_IMAGES_PER_BATCH, CandidatePredictions, StreamedLabels,
                                          load_predictions)
from raysel.selection.voting import FusedVoteAccumulator, fused_vote
from raysel.store.schema import TRIAL_ESTIMATE_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    import pandas

__all__ = [
    "ESTIMATE_LEVEL", "BOOTSTRAP_REPLICATES", "MIN_AGREEMENT_CANDIDATES", "PRIOR_FROM_PREDICTIONS_MIN_ACCURACY", "ATC",
    "AGREEMENT", "ATC_AND_AGREEMENT", "Estimate", "confidence_scores", "atc_replicates", "agreement_replicates",
    "class_prior_cap", "source_class_prior", "estimate_candidates", "estimate_trials", "record_estimates",
    "format_estimate", "format_interval",
]

ESTIMATE_LEVEL = 0.90
BOOTSTRAP_REPLICATES = 500
BOOTSTRAP_SEED = 0
MIN_AGREEMENT_CANDIDATES = 3  # with two candidates the fused vote is one of them wherever they disagree
# A format-1 calibration cache has no labels: its predictions stand in for them only when nearly all are right.
PRIOR_FROM_PREDICTIONS_MIN_ACCURACY = 0.9
ATC, AGREEMENT, ATC_AND_AGREEMENT = "atc", "agreement", "atc+agreement"
# A wrong pixel whose other classes hold less probability than this spreads its true class uniformly over them.
SPREAD_UNIFORMLY_BELOW = 1e-6
POINTS = 100.0


# --------------------------------------------------------------------------------------------------------------
# ATC: a confidence threshold fitted on source validation, applied to the target
# --------------------------------------------------------------------------------------------------------------


def confidence_scores(probabilities: np.ndarray) -> np.ndarray:
    """ATC's confidence per row of ``[..., C]`` probabilities: negative entropy (nats), computed from the float16
    values the caches keep, in the same way for source and target so that equal outputs tie exactly."""
    values = np.ascontiguousarray(np.asarray(probabilities).astype(np.float16).astype(np.float32))
    return -entropy(values, axis=-1)


class _Levels:
    """Source samples grouped into (group, confidence) levels, sorted by group then confidence.

    Every bootstrap replicate fits its thresholds on this one structure with a few ``bincount`` calls.
    """

    def __init__(self, groups: np.ndarray, scores: np.ndarray, num_groups: int) -> None:
        order = np.lexsort((scores, groups))
        sorted_groups, sorted_scores = groups[order], scores[order]
        new = np.ones(len(order), dtype=bool)
        new[1:] = (sorted_groups[1:] != sorted_groups[:-1]) | (sorted_scores[1:] != sorted_scores[:-1])
        self.level_of = np.empty(len(order), dtype=np.int64)
        self.level_of[order] = np.cumsum(new) - 1
        self.group = sorted_groups[new]
        self.score = sorted_scores[new]
        self.sample_group = groups
        self.num_groups = num_groups
        self.first_level = np.searchsorted(self.group, np.arange(num_groups))

    def thresholds(self, weights: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per group: (threshold t, fraction f of the samples at t that count, whether the group has samples).

        With sample weights ``weights``, t and f solve mass(score > t) + f · mass(score = t) = mass(correct) within
        each group, which is ATC's equation with ties split exactly.
        """
        num_levels = len(self.group)
        mass = np.bincount(self.level_of, weights, minlength=num_levels)
        total = np.bincount(self.group, mass, minlength=self.num_groups)
        needed = np.bincount(self.sample_group, weights * correct, minlength=self.num_groups)
        cumulative = np.concatenate([[0.0], np.cumsum(mass)])
        inclusive = cumulative[1:] - cumulative[self.first_level][self.group]
        above = total[self.group] - inclusive  # mass strictly above each level, within its group
        need = needed[self.group]
        fits = (mass > 0) & (above <= need) & (need <= above + mass)
        chosen = np.full(self.num_groups, -1, dtype=np.int64)
        np.maximum.at(chosen, self.group[fits], np.flatnonzero(fits))
        valid = chosen >= 0
        safe = np.where(valid, chosen, 0)
        threshold = np.where(valid, self.score[safe] if num_levels else 0.0, np.inf)
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(valid, (need[safe] - above[safe]) / mass[safe] if num_levels else 0.0, 0.0)
        return threshold, fraction, valid


def _counted(scores: np.ndarray, groups: np.ndarray, fitted: tuple[np.ndarray, np.ndarray, np.ndarray],
             pooled: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Per target sample, how much of it ATC counts as correct: 1 above its group's threshold, f at it, else 0."""
    threshold, fraction, valid = fitted
    use = valid[groups]
    t = np.where(use, threshold[groups], pooled[0][0])
    f = np.where(use, fraction[groups], pooled[1][0])
    return (scores > t) + f * (scores == t)


def _target_samples(candidate: CandidatePredictions) -> tuple[np.ndarray, np.ndarray, int]:
    """(probabilities [P, C] float16, predicted class [P], samples per image) on the candidate's probability grid."""
    if candidate.probabilities is None:
        raise DataError("ATC needs the candidate's cached probabilities (predict with keep_probabilities=True)")
    if candidate.task == "classification":
        return candidate.probabilities, np.asarray(candidate.labels).astype(np.int64), 1
    probabilities = candidate.probabilities  # [N, C, gh, gw]
    per_image = int(np.prod(probabilities.shape[2:]))
    flat = np.moveaxis(probabilities, 1, -1).reshape(-1, candidate.num_classes)
    return flat, candidate.labels_on_probability_grid().reshape(-1).astype(np.int64), per_image


def _expected_missed(probabilities: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """[P, C]: the true class of each pixel, should its prediction be wrong, as its probabilities over the other
    classes renormalised (uniform over them when they hold almost nothing), 0 at the predicted class."""
    others = probabilities.astype(np.float32)
    rows = np.arange(len(predicted))
    others[rows, predicted] = 0.0
    rest = others.sum(axis=1, keepdims=True)
    uniform = np.full_like(others, 1.0 / max(others.shape[1] - 1, 1))
    uniform[rows, predicted] = 0.0
    return np.where(rest > SPREAD_UNIFORMLY_BELOW, others / np.maximum(rest, SPREAD_UNIFORMLY_BELOW), uniform)


def atc_replicates(calibration: SourceCalibration, candidate: CandidatePredictions, target_weights: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """ATC's estimate (fraction) for each row of ``target_weights [R, N]`` (per-image weights; row 0 all ones is
    the point estimate). Row r > 0 also resamples the source-validation images with ``rng``."""
    if calibration.task != candidate.task or calibration.num_classes != candidate.num_classes:
        raise DataError(f"the calibration cache ({calibration.task}, {calibration.num_classes} classes) does not "
                        f"match the candidate ({candidate.task}, {candidate.num_classes} classes)")
    if not len(calibration.correct):
        raise DataError("the calibration cache holds no source-validation sample")
    segmentation = candidate.task == "segmentation"
    num_classes = candidate.num_classes
    source_groups = calibration.predicted.astype(np.int64) if segmentation else np.zeros(len(calibration.correct),
                                                                                         dtype=np.int64)
    source_scores = confidence_scores(calibration.probabilities)
    levels = _Levels(source_groups, source_scores, num_classes if segmentation else 1)
    pooled_levels = _Levels(np.zeros_like(source_groups), source_scores, 1) if segmentation else levels
    correct = calibration.correct.astype(np.float64)
    probabilities, predicted, per_image = _target_samples(candidate)
    target_scores = confidence_scores(probabilities)
    target_groups = predicted if segmentation else np.zeros(len(predicted), dtype=np.int64)
    missed = _expected_missed(probabilities, predicted) if segmentation else None
    replicates = target_weights.shape[0]
    source_weights = np.vstack([np.ones(calibration.num_images),
                                _resampled_images(calibration.num_images, replicates - 1, rng)])
    estimates = np.empty(replicates)
    for replicate in range(replicates):
        weights = source_weights[replicate][calibration.image_of]
        fitted = levels.thresholds(weights, correct)
        pooled = pooled_levels.thresholds(weights, correct) if segmentation else fitted
        counted = _counted(target_scores, target_groups, fitted, pooled)
        sample_weights = np.repeat(target_weights[replicate], per_image)
        if not segmentation:
            estimates[replicate] = float(sample_weights @ counted) / max(float(sample_weights.sum()), 1e-12)
            continue
        true_positive = np.bincount(predicted, sample_weights * counted, minlength=num_classes)
        predicted_mass = np.bincount(predicted, sample_weights, minlength=num_classes)
        missed_mass = (sample_weights * (1.0 - counted)) @ missed
        present = predicted_mass > 0
        iou = true_positive[present] / (predicted_mass[present] + missed_mass[present])
        estimates[replicate] = float(iou.mean()) if iou.size else math.nan
    return estimates


def _resampled_images(num_images: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """``[replicates, num_images]`` bootstrap weights: how often each image is drawn (multinomial, n draws)."""
    if replicates <= 0 or num_images <= 0:
        return np.empty((max(replicates, 0), max(num_images, 0)))
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=replicates).astype(np.float64)


# --------------------------------------------------------------------------------------------------------------
# Agreement with the fused vote (F-mIoU / fused accuracy), per resampled image set
# --------------------------------------------------------------------------------------------------------------


def _label_batches(labels: "np.ndarray | StreamedLabels") -> Iterator[np.ndarray]:
    """One candidate's labels in consecutive image batches (read from the file when streamed)."""
    if isinstance(labels, StreamedLabels):
        yield from labels.batches(STREAM_IMAGES_PER_BATCH)
        return
    for start in range(0, labels.shape[0], STREAM_IMAGES_PER_BATCH):
        yield np.asarray(labels[start:start + STREAM_IMAGES_PER_BATCH])


def _image_stacks(candidates: Sequence[CandidatePredictions]) -> Iterator[np.ndarray]:
    """``[n, H, W]`` label stacks of every candidate, one image at a time (memory: a batch of images)."""
    for parts in zip(*(_label_batches(candidate.labels) for candidate in candidates)):
        stack = np.stack(parts)
        for image in range(stack.shape[1]):
            yield stack[:, image]


def agreement_replicates(candidates: Sequence[CandidatePredictions], target_weights: np.ndarray) -> np.ndarray:
    """``[n, R]``: each candidate's agreement with the fused vote of all ``candidates`` (F-mIoU for segmentation,
    accuracy for classification) under each row of per-image ``target_weights [R, N]`` (row 0 all ones: the value
    :func:`raysel.selection.voting.fmiou_scores` / ``fused_agreement_scores`` give)."""
    first = candidates[0]
    num_classes = first.num_classes
    if first.task == "classification":
        stack = np.stack([np.asarray(candidate.labels) for candidate in candidates])
        agrees = (stack == fused_vote(stack, num_classes)[None]).astype(np.float64)
        return agrees @ target_weights.T / np.maximum(target_weights.sum(axis=1), 1e-12)
    count = len(candidates)
    shape = (first.num_images, count, num_classes)
    intersection, fused_counts, predicted_counts = np.empty(shape), np.empty(shape), np.empty(shape)
    for image, stack in enumerate(_image_stacks(candidates)):
        accumulator = FusedVoteAccumulator(count, num_classes)
        accumulator.update(stack)
        matrices = accumulator.confusion_matrices  # [n, C, C], rows: fused label
        intersection[image] = np.diagonal(matrices, axis1=1, axis2=2)
        fused_counts[image] = matrices.sum(axis=2)
        predicted_counts[image] = matrices.sum(axis=1)
    flat = (first.num_images, count * num_classes)
    resampled = [(target_weights @ part.reshape(flat)).reshape(-1, count, num_classes)
                 for part in (intersection, fused_counts, predicted_counts)]
    inter, fused, predicted = resampled
    union = fused + predicted - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)
    present = np.isfinite(iou)
    miou = np.where(present.any(axis=2), np.nansum(iou, axis=2) / np.maximum(present.sum(axis=2), 1), np.nan)
    return miou.T


# --------------------------------------------------------------------------------------------------------------
# The class-prior cap (classification)
# --------------------------------------------------------------------------------------------------------------


def source_class_prior(calibrations: Sequence[SourceCalibration | None]) -> np.ndarray | None:
    """The source class shares ``[C]`` of a sweep's calibration caches: from the first one that keeps labels, else
    the predictions of the most accurate one if it is at least ``PRIOR_FROM_PREDICTIONS_MIN_ACCURACY`` accurate on
    the source (format-1 caches), else None. Every candidate of a sweep is calibrated on the same source split."""
    present = [calibration for calibration in calibrations if calibration is not None and len(calibration.correct)]
    for calibration in present:
        if calibration.class_prior is not None:
            return calibration.class_prior
    best = max(present, key=lambda calibration: calibration.accuracy, default=None)
    if best is None or not best.accuracy >= PRIOR_FROM_PREDICTIONS_MIN_ACCURACY:
        return None
    counts = np.bincount(best.predicted.astype(np.int64), minlength=best.num_classes)[:best.num_classes]
    return counts / len(best.predicted)


def class_prior_cap(predicted: np.ndarray, prior: np.ndarray, target_weights: np.ndarray) -> np.ndarray:
    """``[R]``: the most accuracy a classifier predicting ``predicted [N]`` can have when the target's class shares
    are ``prior [C]``, Σ_c min(q_c, π_c) with q its predicted-class shares under each row of ``target_weights
    [R, N]``."""
    num_classes = len(prior)
    one_hot = np.eye(num_classes)[np.clip(np.asarray(predicted).astype(np.int64), 0, num_classes - 1)]
    shares = target_weights @ one_hot / np.maximum(target_weights.sum(axis=1, keepdims=True), 1e-12)
    return np.minimum(shares, np.asarray(prior)[None, :]).sum(axis=1)


# --------------------------------------------------------------------------------------------------------------
# The estimate: primary estimator, bootstrap interval, widened by the other estimator
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A candidate's estimated target score and its interval (fractions), and the estimator that made them."""

    score: float
    low: float
    high: float
    method: str

    def columns(self) -> dict[str, Any]:
        """The trial-row columns (``estimate_score``, ``estimate_low``, ``estimate_high``, ``estimate_method``)."""
        return dict(zip(TRIAL_ESTIMATE_COLUMNS, (self.score, self.low, self.high, self.method)))


NO_ESTIMATE: dict[str, Any] = dict.fromkeys(TRIAL_ESTIMATE_COLUMNS)  # the columns of a candidate without one


def _interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of the bootstrap replicates (row 0, the point estimate, excluded when others exist)."""
    values = replicates[1:] if replicates.size > 1 else replicates
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    low, high = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def _combine(atc: np.ndarray | None, agreement: np.ndarray | None, level: float) -> Estimate | None:
    """ATC's point and bootstrap interval, widened to the agreement's point; or the agreement alone."""
    usable = [(name, values) for name, values in ((ATC, atc), (AGREEMENT, agreement))
              if values is not None and math.isfinite(float(values[0]))]
    if not usable:
        return None
    (name, values), others = usable[0], usable[1:]
    point = float(values[0])
    low, high = _interval(values, level)
    low, high = (point, point) if not math.isfinite(low) else (low, high)
    for _, other in others:
        low, high = min(low, float(other[0])), max(high, float(other[0]))
    method = ATC_AND_AGREEMENT if others else name
    clip = (lambda value: float(min(max(value, 0.0), 1.0)))
    return Estimate(score=clip(point), low=clip(min(low, point)), high=clip(max(high, point)), method=method)


def estimate_candidates(candidates: Sequence[CandidatePredictions],
                        calibrations: Sequence[SourceCalibration | None], *,
                        replicates: int = BOOTSTRAP_REPLICATES, seed: int = BOOTSTRAP_SEED,
                        level: float = ESTIMATE_LEVEL) -> list[Estimate | None]:
    """One :class:`Estimate` per candidate (None where neither estimator can run: a non-finite candidate, or no
    calibration cache and fewer than ``MIN_AGREEMENT_CANDIDATES`` finite candidates). Candidates must have predicted
    the same images; the same resampled target images serve every candidate and both estimators."""
    candidates = check_candidates(candidates, "estimate", 1, needs_probabilities=False)
    if len(calibrations) != len(candidates):
        raise ValueError(f"need one calibration (or None) per candidate; got {len(calibrations)} for "
                         f"{len(candidates)}")
    rng = np.random.default_rng(seed)
    num_images = candidates[0].num_images
    target_weights = np.vstack([np.ones(num_images), _resampled_images(num_images, replicates, rng)])
    finite = finite_candidates(candidates)
    agreement = np.full((len(candidates), replicates + 1), np.nan)
    if finite.sum() >= MIN_AGREEMENT_CANDIDATES:
        agreement[finite] = agreement_replicates([c for c, ok in zip(candidates, finite) if ok], target_weights)
    prior = source_class_prior(calibrations) if candidates[0].task == "classification" else None
    estimates: list[Estimate | None] = []
    for index, (candidate, calibration) in enumerate(zip(candidates, calibrations)):
        if not finite[index]:
            estimates.append(None)
            continue
        atc = None
        if calibration is not None and candidate.probabilities is not None:
            atc = atc_replicates(calibration, candidate, target_weights, np.random.default_rng([seed, 1, index]))
        candidate_agreement = agreement[index] if np.isfinite(agreement[index, 0]) else None
        if prior is not None:
            cap = class_prior_cap(np.asarray(candidate.labels), prior, target_weights)
            atc, candidate_agreement = (None if values is None else np.minimum(values, cap)
                                        for values in (atc, candidate_agreement))
        estimates.append(_combine(atc, candidate_agreement, level))
    return estimates


def _finished_with_predictions(trials: "pandas.DataFrame") -> "pandas.DataFrame":
    """The finished rows whose prediction cache exists, by trial id (the candidates selection scores)."""
    if "predictions_path" not in trials or trials.empty:
        return trials.iloc[0:0]
    finished = trials[trials["status"] == "finished"].sort_values("trial_id")
    has_file = [isinstance(path, str) and Path(path).is_file() for path in finished["predictions_path"]]
    return finished[has_file]


def estimate_trials(trials: "pandas.DataFrame",
                    loaded: Mapping[tuple[str, bool], CandidatePredictions] | None = None,
                    **options: Any) -> dict[str, Estimate | None]:
    """trial id -> its estimate, for one target's finished trials that have a prediction cache. Reads the prediction
    caches (with probabilities; ``loaded`` may hold them already, keyed like selection's ``(path, True)``) and each
    trial's calibration cache where it exists; nothing else. ``options`` go to :func:`estimate_candidates`."""
    rows = _finished_with_predictions(trials)
    if rows.empty:
        return {}
    loaded = loaded or {}
    candidates, calibrations = [], []
    for path in rows["predictions_path"]:
        candidates.append(loaded.get((path, True)) or load_predictions(path, with_probabilities=True))
        calibration_file = calibration_path(path)
        calibrations.append(load_calibration(calibration_file) if calibration_file.is_file() else None)
    estimates = estimate_candidates(candidates, calibrations, **options)
    return dict(zip((str(trial_id) for trial_id in rows["trial_id"]), estimates))


def record_estimates(store: Any, sweep_id: str, target: str, trials: "pandas.DataFrame", stream: Any = None,
                     loaded: Mapping[tuple[str, bool], CandidatePredictions] | None = None
                     ) -> dict[str, Estimate | None]:
    """Estimate one target's candidates and write the ``estimate_*`` columns of their trial rows (NULL where none
    could be made); a reason that no estimate could be made is printed as one line. Called by the sweep's
    selection (:func:`raysel.selection.decision.select_target`)."""
    stream = stream or sys.stdout
    try:
        estimates = estimate_trials(trials, loaded)
    except DataError as error:
        print(f"target {target}: no score estimate: {error}", file=stream)
        return {}
    for trial_id, estimate in estimates.items():
        store.update_trial_columns(sweep_id, trial_id, estimate.columns() if estimate is not None else NO_ESTIMATE)
    if estimates and all(estimate is None for estimate in estimates.values()):
        print(f"target {target}: no score estimate: it needs a source calibration cache (a source validation split) "
              f"or at least {MIN_AGREEMENT_CANDIDATES} finished candidates with finite outputs", file=stream)
    return estimates


# --------------------------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------------------------


def _finite_number(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_estimate(score: Any) -> str:
    """An estimated score (fraction) in points with one decimal: ``41.2``; ``-`` when there is none."""
    number = _finite_number(score)
    return "-" if number is None else f"{POINTS * number:.1f}"


def format_interval(low: Any, high: Any) -> str:
    """A 90 % interval (fractions) in points: ``[35.0, 47.9]``; ``-`` when there is none."""
    bounds = [_finite_number(low), _finite_number(high)]
    if None in bounds:
        return "-"
    return f"[{POINTS * bounds[0]:.1f}, {POINTS * bounds[1]:.1f}]"
