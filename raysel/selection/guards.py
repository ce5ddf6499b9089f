"""Guards every prediction-based selector runs first: input checks, non-finite and collapsed candidates.

* :func:`check_candidates` — enough candidates, predicted on the same images, label space and probability grid.
* :func:`finite_candidates` — candidates with NaN or infinite outputs get no score and are left out of every ensemble.
* :func:`collapsed_candidates` — candidates whose predictions use fewer than ``COLLAPSE_EFFECTIVE_CLASSES`` effective
  classes (:func:`effective_classes`); ``entropy`` and ``snd`` give them no score. :func:`collapsed_labels` applies the
  same bound to the hard labels every cache holds (the guarded decision's check, :mod:`raysel.selection.guarded`).
* :class:`SelectionSkipped` — a selector cannot run on these candidates: skip it, the others decide.

See :mod:`raysel.selection.selectors` for why each guard exists.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.special import xlogy

from raysel.errors import DataError
from raysel.metrics import miou, pixel_accuracy
from raysel.selection.predictions import STREAM_IMAGES_PER_BATCH, CandidatePredictions, StreamedLabels


class SelectionSkipped(DataError):
    """A selector cannot run on these candidates (no features cached, no trial score): skip it, the others decide."""


def check_candidates(candidates: Sequence[CandidatePredictions], selector: str, min_candidates: int,
                     needs_probabilities: bool) -> list[CandidatePredictions]:
    """Raise DataError unless the candidates are enough and were predicted on the same images and label space."""
    candidates = list(candidates)
    if len(candidates) < min_candidates:
        reason = " (F-mIoU is undefined for one candidate)" if min_candidates >= 2 else ""
        raise DataError(f"selector {selector!r} needs at least {min_candidates} candidates' predictions; got "
                        f"{len(candidates)}{reason}")
    first = candidates[0]
    for position, candidate in enumerate(candidates[1:], start=1):
        where = f"selector {selector!r}: candidate {position} and candidate 0"
        if candidate.task != first.task:
            raise DataError(f"{where} have different tasks ({candidate.task} vs {first.task})")
        if candidate.num_classes != first.num_classes:
            raise DataError(f"{where} have different class sets ({candidate.num_classes} vs {first.num_classes} "
                            "classes)")
        if candidate.image_ids != first.image_ids or not np.array_equal(candidate.image_indices,
                                                                        first.image_indices):
            raise DataError(f"{where} were predicted on different images; every candidate must predict the same "
                            "selection subset (same size and seed)")
        if candidate.labels.shape != first.labels.shape:
            raise DataError(f"{where} have different prediction shapes ({candidate.labels.shape} vs "
                            f"{first.labels.shape}); predict at one image size")
    if needs_probabilities:
        for position, candidate in enumerate(candidates):
            if candidate.probabilities is None:
                raise DataError(f"selector {selector!r} needs probabilities, but candidate {position} was cached "
                                "without them (predict with keep_probabilities=True)")
        for position, candidate in enumerate(candidates[1:], start=1):
            same_grid = (candidate.probabilities.shape == first.probabilities.shape
                         and same_optional(candidate.probability_rows, first.probability_rows)
                         and same_optional(candidate.probability_cols, first.probability_cols))
            if not same_grid:
                raise DataError(f"selector {selector!r}: candidates 0 and {position} kept probabilities on different "
                                f"pixel grids ({first.probabilities.shape} vs {candidate.probabilities.shape})")
    return candidates


def same_optional(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two optional index arrays are both absent or equal."""
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def agreement_score(matrix: np.ndarray, task: str) -> float:
    """mIoU (segmentation) or accuracy (classification) of one confusion matrix, via raysel.metrics."""
    return miou(matrix) if task == "segmentation" else pixel_accuracy(matrix)


def entropy(probabilities: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy (nats) along ``axis``; 0·log 0 = 0."""
    return -xlogy(probabilities, probabilities).sum(axis=axis)


def finite_candidates(candidates: Sequence[CandidatePredictions]) -> np.ndarray:
    """Boolean mask: the candidates whose outputs are finite (no image with a NaN/inf logit when predicted, and
    finite probabilities where loaded). The one check behind every selector's exclusion of broken candidates."""
    return np.array([candidate.nonfinite_images == 0 and (candidate.probabilities is None
                                                          or bool(np.isfinite(candidate.probabilities).all()))
                     for candidate in candidates], dtype=bool)


# A candidate is collapsed when its hard predictions use fewer effective classes than this (see effective_classes).
COLLAPSE_EFFECTIVE_CLASSES = 2.0


def effective_classes(labels: np.ndarray, num_classes: int) -> float:
    """exp(entropy) of the histogram of predicted ``labels``: 1 for one class everywhere, C for an even spread.

    The collapse bound ``COLLAPSE_EFFECTIVE_CLASSES`` = 2 uses no target label: below it the predictions carry less
    class information than an even split between two classes. A correct model is flagged only if the target's own
    labels have fewer than 2 effective classes: more than 86 % (10 classes) or 88 % (18-19 classes) of them in one
    class with the rest spread over the others, or just two classes present, unevenly. The labelled *source* splits
    put that far out of reach of UDA's limited label shift: 6.6 effective classes on street_scenes (18 classes present,
    top class 33 % of pixels; 24 generated source images) and 8.8 on digits (60 generated images per domain).
    """
    return effective_classes_of_counts(predicted_class_counts(labels, num_classes))


def effective_classes_of_counts(counts: np.ndarray) -> float:
    """exp(entropy) of a histogram of predicted classes (see :func:`effective_classes`)."""
    counts = np.asarray(counts, dtype=np.float64)
    return float(np.exp(entropy(counts / max(counts.sum(), 1.0))))


def predicted_class_counts(labels: "np.ndarray | StreamedLabels", num_classes: int) -> np.ndarray:
    """How often each class id is predicted in ``labels``; a streamed cache is read in image batches, not whole."""
    if isinstance(labels, StreamedLabels):
        counts = np.zeros(num_classes, dtype=np.int64)
        for batch in labels.batches(STREAM_IMAGES_PER_BATCH):
            counts += np.bincount(batch.reshape(-1), minlength=num_classes)[:num_classes]
        return counts
    return np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=num_classes)


def collapsed_candidates(candidates: Sequence[CandidatePredictions]) -> np.ndarray:
    """Boolean mask: candidates whose cached probabilities' argmax uses < ``COLLAPSE_EFFECTIVE_CLASSES`` classes."""
    return np.array([effective_classes(candidate.probability_vectors().argmax(axis=-1), candidate.num_classes)
                     < COLLAPSE_EFFECTIVE_CLASSES for candidate in candidates], dtype=bool)


def collapsed_labels(candidates: Sequence[CandidatePredictions]) -> np.ndarray:
    """Boolean mask: candidates whose cached hard labels (every pixel or image) use < ``COLLAPSE_EFFECTIVE_CLASSES``
    effective classes. The bound of :func:`collapsed_candidates`, on the labels every cache holds (probabilities are
    optional), so a sweep without probabilities is checked too."""
    return np.array([effective_classes(candidate.labels, candidate.num_classes) < COLLAPSE_EFFECTIVE_CLASSES
                     for candidate in candidates], dtype=bool)


def unless_collapsed(scores: np.ndarray, candidates: Sequence[CandidatePredictions]) -> np.ndarray:
    """``scores`` with NaN (no score, never selected) for the collapsed candidates."""
    return np.where(collapsed_candidates(candidates), np.nan, np.asarray(scores, dtype=np.float64))


__all__ = ["SelectionSkipped", "check_candidates", "same_optional", "agreement_score", "entropy", "finite_candidates",
           "COLLAPSE_EFFECTIVE_CLASSES", "effective_classes", "effective_classes_of_counts", "predicted_class_counts",
           "collapsed_candidates", "collapsed_labels", "unless_collapsed"]
