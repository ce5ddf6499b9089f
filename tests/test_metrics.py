"""raysel.metrics against scikit-learn on random label maps with ignored pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import hmean
from sklearn.metrics import accuracy_score, jaccard_score
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from raysel.metrics import (
    IGNORE_INDEX,
    ConfusionMatrix,
    confusion_matrix,
    harmonic_mean,
    iou_per_class,
    miou,
    pixel_accuracy,
)

NUM_CLASSES = 7


def random_images(seed: int, count: int = 4, shape: tuple[int, int] = (12, 17), absent: tuple[int, ...] = (6,)):
    """Random (prediction, target) label maps with ~15% ignored target pixels and the ``absent`` classes never used."""
    rng = np.random.default_rng(seed)
    used = np.array([c for c in range(NUM_CLASSES) if c not in absent])
    images = []
    for _ in range(count):
        target = rng.choice(used, size=shape)
        # Predictions agree with the target on ~half the pixels so IoUs are neither 0 nor 1.
        prediction = np.where(rng.random(shape) < 0.5, target, rng.choice(used, size=shape))
        target[rng.random(shape) < 0.15] = IGNORE_INDEX
        images.append((prediction, target))
    return images


def flatten_valid(images):
    """Concatenate all images' pixels, dropping ignored ones (what sklearn needs)."""
    predictions = np.concatenate([p.ravel() for p, _ in images])
    targets = np.concatenate([t.ravel() for _, t in images])
    keep = targets != IGNORE_INDEX
    return predictions[keep], targets[keep]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_accumulation_equals_one_shot_and_sklearn_confusion(seed: int) -> None:
    images = random_images(seed)
    streaming = ConfusionMatrix(NUM_CLASSES)
    for prediction, target in images:
        streaming.update(prediction, target)
    one_shot = confusion_matrix(
        np.stack([p for p, _ in images]), np.stack([t for _, t in images]), NUM_CLASSES
    )
    np.testing.assert_array_equal(streaming.matrix, one_shot)
    predictions, targets = flatten_valid(images)
    # Rows are targets, columns predictions, as in sklearn.
    np.testing.assert_array_equal(one_shot, sklearn_confusion_matrix(targets, predictions, labels=range(NUM_CLASSES)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_and_miou_match_sklearn_jaccard_with_absent_class_skipped(seed: int) -> None:
    images = random_images(seed, absent=(6,))
    accumulator = ConfusionMatrix(NUM_CLASSES)
    for prediction, target in images:
        accumulator.update(torch.from_numpy(prediction), torch.from_numpy(target))  # tensors accepted too
    predictions, targets = flatten_valid(images)
    present = list(range(6))

    per_class = accumulator.iou_per_class()
    expected = jaccard_score(targets, predictions, labels=present, average=None)
    np.testing.assert_allclose(per_class[:6], expected, rtol=1e-12)
    assert math.isnan(per_class[6])  # absent from target and prediction: NaN, not 0
    expected_macro = jaccard_score(targets, predictions, labels=present, average="macro")
    assert accumulator.miou() == pytest.approx(expected_macro, rel=1e-12)
    assert accumulator.pixel_accuracy() == pytest.approx(accuracy_score(targets, predictions), rel=1e-12)


def test_missed_and_false_positive_classes_count_as_zero() -> None:
    # Class 1 is in the target but never predicted; class 2 is predicted but never in the target.
    target = np.array([[0, 0, 1, 1]])
    prediction = np.array([[0, 0, 2, 2]])
    values = iou_per_class(confusion_matrix(prediction, target, 4))
    np.testing.assert_allclose(values[:3], [1.0, 0.0, 0.0])
    assert math.isnan(values[3])
    assert miou(confusion_matrix(prediction, target, 4)) == pytest.approx(1.0 / 3.0)


def test_ignored_pixels_do_not_count() -> None:
    target = np.array([[0, 1, IGNORE_INDEX, IGNORE_INDEX]], dtype=np.uint8)  # uint8 labels as read from PNGs
    prediction = np.array([[0, 1, 1, 0]])
    matrix = confusion_matrix(prediction, target, 2)
    np.testing.assert_array_equal(matrix, [[1, 0], [0, 1]])
    assert pixel_accuracy(matrix) == 1.0
    assert miou(matrix) == 1.0


def test_all_ignored_gives_nan() -> None:
    matrix = confusion_matrix(np.zeros((3, 3)), np.full((3, 3), IGNORE_INDEX), 5)
    assert matrix.sum() == 0
    assert math.isnan(miou(matrix))
    assert math.isnan(pixel_accuracy(matrix))


@pytest.mark.parametrize("bad_value", [NUM_CLASSES, -1])
def test_out_of_range_prediction_raises(bad_value: int) -> None:
    target = np.zeros((2, 2), dtype=np.int64)
    prediction = np.zeros((2, 2), dtype=np.int64)
    prediction[1, 1] = bad_value
    with pytest.raises(ValueError, match="prediction class ids"):
        confusion_matrix(prediction, target, NUM_CLASSES)


def test_out_of_range_target_and_shape_mismatch_raise() -> None:
    with pytest.raises(ValueError, match="target class ids"):
        confusion_matrix(np.zeros(3), np.array([0, 1, 9]), 3)
    with pytest.raises(ValueError, match="elements"):
        confusion_matrix(np.zeros(3), np.zeros(4), 3)


def test_harmonic_mean() -> None:
    a, b = 0.42, 0.61
    assert harmonic_mean([a, b]) == pytest.approx(2 * a * b / (a + b))
    assert harmonic_mean([0.3, 0.5, 0.9]) == pytest.approx(hmean([0.3, 0.5, 0.9]))
    assert harmonic_mean(iter([0.5, 0.5])) == pytest.approx(0.5)  # any iterable
    assert harmonic_mean([0.7, 0.0]) == 0.0
    assert math.isnan(harmonic_mean([]))
    assert math.isnan(harmonic_mean([0.5, float("nan")]))
