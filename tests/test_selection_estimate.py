"""The label-free score estimate (raysel.selection.estimate): close to the truth with an interval that covers it on
synthetic caches whose truth is known, the agreement reused from voting, stored columns, display, no label read."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raysel.metrics import ConfusionMatrix
from raysel.selection.calibration import (CALIBRATION_FILE, SourceCalibration, calibration_path, load_calibration,
                                          save_calibration)
from raysel.selection.estimate import (ATC, ATC_AND_AGREEMENT, AGREEMENT, PRIOR_FROM_PREDICTIONS_MIN_ACCURACY,
                                       Estimate, agreement_replicates, class_prior_cap, estimate_candidates,
                                       estimate_trials, format_estimate, format_interval, record_estimates,
                                       source_class_prior)
from raysel.selection.estimate_calibration import (EstimateCalibration, ScoreRegression, calibrate_estimate,
                                                   clipped_logit, inverse_logit, regress_estimate)
from raysel.selection.evaluate_estimate import estimate_accuracy
from raysel.selection.predictions import CandidatePredictions, save_predictions
from raysel.selection.voting import fmiou_scores, fused_agreement_scores
from raysel.store import ResultStore
from raysel.reporting.summary import format_trials_table

NUM_CLASSES = 10


CUT = 0.6  # the synthetic models are right where their confidence (plus a little noise) exceeds this


def synthetic_outputs(rng: np.random.Generator, confidence: np.ndarray, num_classes: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities [M, C] float16, predicted [M], truth [M]) of a model whose confidence ranks its right
    predictions above its wrong ones (right where confidence + N(0, 0.03) > CUT: ATC's working assumption) and
    whose wrong pixels' true class follows its probabilities over the other classes (ATC's expected false
    negatives). Predictions are uniform over the classes; the shift lowers the confidence."""
    count = len(confidence)
    predicted = rng.integers(num_classes, size=count)
    others = rng.dirichlet(np.ones(num_classes - 1), size=count)
    other_classes = (predicted[:, None] + 1 + np.arange(num_classes - 1)[None]) % num_classes
    probabilities = np.zeros((count, num_classes))
    probabilities[np.arange(count), predicted] = confidence
    np.put_along_axis(probabilities, other_classes, (1 - confidence)[:, None] * others, axis=1)
    right = confidence + rng.normal(0, 0.03, count) > CUT
    pick = np.minimum((others.cumsum(axis=1) < rng.random(count)[:, None]).sum(axis=1), num_classes - 2)
    truth = np.where(right, predicted, other_classes[np.arange(count), pick])
    return probabilities.astype(np.float16), predicted.astype(np.uint8), truth


def confidences(rng: np.random.Generator, count: int, shift: float) -> np.ndarray:
    """Confidences in (0.3, 1): on the source uniform, on a shifted target moved towards 0.3 by ``shift``."""
    values = rng.uniform(0.3, 1.0, count)
    return np.clip(values - shift * rng.uniform(0, 1, count) * (values - 0.3) * 2, 0.3, 0.999)


def classification_case(rng: np.random.Generator, shift: float, source_images: int = 1500, target_images: int = 1200
                        ) -> tuple[CandidatePredictions, SourceCalibration, float]:
    """A classifier: its calibration cache on source validation and its cache on a target where it is less
    confident by ``shift``; returns (target cache, calibration, its true target accuracy)."""
    source_probabilities, source_predicted, source_truth = synthetic_outputs(
        rng, confidences(rng, source_images, 0.0), NUM_CLASSES)
    calibration = SourceCalibration(probabilities=source_probabilities, predicted=source_predicted,
                                    correct=source_predicted == source_truth, image_of=np.arange(source_images),
                                    num_images=source_images, task="classification",
                                    labels=source_truth.astype(np.uint8))
    probabilities, predicted, truth = synthetic_outputs(rng, confidences(rng, target_images, shift), NUM_CLASSES)
    candidate = CandidatePredictions(labels=predicted, probabilities=probabilities,
                                     image_ids=tuple(f"t{i}" for i in range(target_images)),
                                     image_indices=np.arange(target_images), num_classes=NUM_CLASSES,
                                     task="classification")
    return candidate, calibration, float(np.mean(predicted == truth))


def test_atc_estimate_is_close_and_its_interval_covers_under_a_confidence_shift() -> None:
    """Over 12 synthetic cases (two shifts, six seeds, 500 images): mean absolute error under 2.5 points (about the
    sampling error of 500 images), and the 90 % interval covers the true accuracy in at least 9 (its sampling error
    only; the shift here is one ATC handles)."""
    errors, covered = [], []
    for shift in (0.0, 0.3):
        for seed in range(6):
            candidate, calibration, truth = classification_case(np.random.default_rng([seed, 7]), shift, 500, 500)
            (estimate,) = estimate_candidates([candidate], [calibration], replicates=200)
            assert estimate.method == ATC and estimate.low <= estimate.score <= estimate.high
            errors.append(abs(estimate.score - truth))
            covered.append(estimate.low <= truth <= estimate.high)
    assert np.mean(errors) < 0.025 and sum(covered) >= 9, (errors, covered)


def test_atc_splits_ties_exactly_for_saturated_float16_confidences() -> None:
    """One-hot outputs (every confidence ties): 90 % source accuracy gives exactly 90 % on any one-hot target."""
    source = np.eye(NUM_CLASSES, dtype=np.float16)[np.arange(100) % NUM_CLASSES]
    calibration = SourceCalibration(probabilities=source, predicted=np.arange(100, dtype=np.uint8) % NUM_CLASSES,
                                    correct=np.arange(100) < 90, image_of=np.arange(100), num_images=100,
                                    task="classification")
    labels = np.arange(40, dtype=np.uint8) % NUM_CLASSES
    candidate = CandidatePredictions(labels=labels, probabilities=np.eye(NUM_CLASSES, dtype=np.float16)[labels],
                                     image_ids=tuple(map(str, range(40))), image_indices=np.arange(40),
                                     num_classes=NUM_CLASSES, task="classification")
    (estimate,) = estimate_candidates([candidate], [calibration], replicates=50)
    assert estimate.score == pytest.approx(0.9)


def segmentation_case(rng: np.random.Generator, shift: float, classes: int = 5, images: int = 60
                      ) -> tuple[CandidatePredictions, SourceCalibration, float]:
    """A segmenter (as :func:`synthetic_outputs`) on 6x8 images, the probability grid every pixel; returns
    (target cache, calibration, true target mIoU by raysel.metrics)."""
    height, width = 6, 8

    def draw(confidence_shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probabilities, predicted, truth = synthetic_outputs(
            rng, confidences(rng, images * height * width, confidence_shift), classes)
        return truth, probabilities, predicted

    source_truth, source_probabilities, source_predicted = draw(0.0)
    calibration = SourceCalibration(probabilities=source_probabilities, predicted=source_predicted,
                                    correct=source_predicted == source_truth,
                                    image_of=np.repeat(np.arange(images), height * width), num_images=images,
                                    task="segmentation")
    truth, probabilities, predicted = draw(shift)
    grid = probabilities.reshape(images, height, width, classes).transpose(0, 3, 1, 2)
    candidate = CandidatePredictions(labels=predicted.reshape(images, height, width), probabilities=grid,
                                     image_ids=tuple(map(str, range(images))), image_indices=np.arange(images),
                                     num_classes=classes, task="segmentation", probability_rows=np.arange(height),
                                     probability_cols=np.arange(width))
    matrix = ConfusionMatrix(classes)
    matrix.update(torch.from_numpy(predicted.astype(np.int64)), torch.from_numpy(truth))
    return candidate, calibration, float(matrix.miou())


def test_classwise_atc_estimates_segmentation_miou() -> None:
    """Over 8 synthetic segmenters (two shifts, four seeds): mean absolute error of the mIoU estimate under 1.5
    points, and the interval covers the true mIoU in at least 6."""
    errors, covered = [], []
    for shift in (0.0, 0.3):
        for seed in range(4):
            candidate, calibration, truth = segmentation_case(np.random.default_rng([seed, 8]), shift)
            (estimate,) = estimate_candidates([candidate], [calibration], replicates=100)
            assert estimate.method == ATC
            errors.append(abs(estimate.score - truth))
            covered.append(estimate.low <= truth <= estimate.high)
    assert np.mean(errors) < 0.015 and sum(covered) >= 6, (errors, covered)


def label_candidates(task: str, count: int = 5, seed: int = 2) -> list[CandidatePredictions]:
    """Candidates of varying skill around a shared truth (classification [N] or segmentation [N, 6, 8])."""
    rng = np.random.default_rng(seed)
    shape = (80,) if task == "classification" else (12, 6, 8)
    truth = rng.integers(NUM_CLASSES, size=shape)
    candidates = []
    for index in range(count):
        wrong = rng.random(shape) < 0.1 + 0.1 * index
        labels = np.where(wrong, rng.integers(NUM_CLASSES, size=shape), truth).astype(np.uint8)
        candidates.append(CandidatePredictions(labels=labels, probabilities=None,
                                               image_ids=tuple(map(str, range(shape[0]))),
                                               image_indices=np.arange(shape[0]), num_classes=NUM_CLASSES, task=task))
    return candidates


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_agreement_reuses_the_fused_vote_scores(task: str) -> None:
    candidates = label_candidates(task)
    stack = np.stack([candidate.labels for candidate in candidates])
    expected = (fused_agreement_scores if task == "classification" else fmiou_scores)(stack, NUM_CLASSES)
    weights = np.vstack([np.ones(len(stack[0])), np.random.default_rng(0).multinomial(
        len(stack[0]), np.full(len(stack[0]), 1 / len(stack[0])), size=20)])
    replicates = agreement_replicates(candidates, weights)
    assert replicates.shape == (len(candidates), 21)
    np.testing.assert_allclose(replicates[:, 0], expected, rtol=1e-12)
    estimates = estimate_candidates(candidates, [None] * len(candidates), replicates=50)
    assert [estimate.method for estimate in estimates] == [AGREEMENT] * len(candidates)
    np.testing.assert_allclose([estimate.score for estimate in estimates], np.clip(expected, 0, 1))
    assert all(estimate.low <= estimate.score <= estimate.high for estimate in estimates)


def test_the_interval_is_widened_to_the_other_estimator_and_missing_inputs_give_none() -> None:
    rng = np.random.default_rng(3)
    cases = [classification_case(rng, shift, source_images=300, target_images=300) for shift in (0.0, 0.1, 0.2)]
    aligned = [CandidatePredictions(labels=candidate.labels, probabilities=candidate.probabilities,
                                    image_ids=cases[0][0].image_ids, image_indices=cases[0][0].image_indices,
                                    num_classes=NUM_CLASSES, task="classification") for candidate, _, _ in cases]
    calibrations = [calibration for _, calibration, _ in cases]
    agreement_only = estimate_candidates(aligned, [None] * 3, replicates=50)
    both = estimate_candidates(aligned, [calibrations[0], None, calibrations[2]], replicates=50)
    assert [estimate.method for estimate in both] == [ATC_AND_AGREEMENT, AGREEMENT, ATC_AND_AGREEMENT]
    for combined, agreement in zip(both, agreement_only):
        assert combined.low <= agreement.score <= combined.high
    assert estimate_candidates(aligned[:2], [None, None], replicates=10) == [None, None]  # < 3 finite candidates
    broken = CandidatePredictions(labels=aligned[0].labels, probabilities=aligned[0].probabilities,
                                  image_ids=aligned[0].image_ids, image_indices=aligned[0].image_indices,
                                  num_classes=NUM_CLASSES, task="classification", nonfinite_images=1)
    assert estimate_candidates([broken, *aligned], [calibrations[0]] * 4, replicates=10)[0] is None


def test_the_estimate_is_deterministic() -> None:
    rng = np.random.default_rng(4)
    candidate, calibration, _ = classification_case(rng, 0.2, source_images=200, target_images=200)
    assert (estimate_candidates([candidate], [calibration], replicates=40)
            == estimate_candidates([candidate], [calibration], replicates=40))


def test_calibration_file_round_trip(tmp_path: Path) -> None:
    _, calibration, _ = classification_case(np.random.default_rng(5), 0.0, source_images=50, target_images=10)
    path = save_calibration(calibration_path(tmp_path / "trial" / "predictions.npz"), calibration)
    assert path.name == CALIBRATION_FILE
    loaded = load_calibration(path)
    np.testing.assert_array_equal(loaded.probabilities, calibration.probabilities)
    np.testing.assert_array_equal(loaded.correct, calibration.correct)
    np.testing.assert_array_equal(loaded.labels, calibration.labels)
    assert (loaded.num_images, loaded.task, loaded.accuracy) == (50, "classification", calibration.accuracy)


def test_a_format_1_calibration_file_still_loads_without_labels(tmp_path: Path) -> None:
    _, calibration, _ = classification_case(np.random.default_rng(5), 0.0, source_images=50, target_images=10)
    path = tmp_path / CALIBRATION_FILE
    meta = {"format_version": 1, "task": "classification", "num_images": 50, "source": "clean_digits"}
    np.savez_compressed(path, probabilities=calibration.probabilities, predicted=calibration.predicted,
                        correct=calibration.correct, image_of=calibration.image_of, meta=np.asarray(json.dumps(meta)))
    loaded = load_calibration(path)
    assert loaded.labels is None and loaded.class_prior is None and loaded.accuracy == calibration.accuracy


# ---- the class-prior cap --------------------------------------------------------------------------------------


def test_class_prior_cap_is_the_overlap_of_predicted_and_prior_class_shares() -> None:
    prior = np.array([0.5, 0.25, 0.25])
    weights = np.ones((1, 4))
    np.testing.assert_allclose(class_prior_cap(np.array([0, 0, 1, 2]), prior, weights), [1.0])
    np.testing.assert_allclose(class_prior_cap(np.array([0, 0, 0, 0]), prior, weights), [0.5])
    np.testing.assert_allclose(class_prior_cap(np.array([1, 1, 1, 1]), prior, weights), [0.25])
    resampled = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 4.0, 0.0]])  # row 1 draws only the third sample
    np.testing.assert_allclose(class_prior_cap(np.array([0, 0, 1, 2]), prior, resampled), [1.0, 0.25])


def collapsed_candidate(num_images: int = 300, predicted_class: int = 3) -> CandidatePredictions:
    """A classifier that calls every target image one class, with full confidence (a collapse)."""
    probabilities = np.full((num_images, NUM_CLASSES), 1e-4)
    probabilities[:, predicted_class] = 1.0 - 1e-4 * (NUM_CLASSES - 1)
    return CandidatePredictions(labels=np.full(num_images, predicted_class, dtype=np.uint8),
                                probabilities=probabilities.astype(np.float16),
                                image_ids=tuple(f"t{i}" for i in range(num_images)),
                                image_indices=np.arange(num_images), num_classes=NUM_CLASSES, task="classification")


def test_the_class_prior_caps_atc_on_a_collapsed_candidate() -> None:
    _, calibration, _ = classification_case(np.random.default_rng(11), 0.0, source_images=1000, target_images=10)
    candidate = collapsed_candidate()
    prior = calibration.class_prior
    assert prior is not None and abs(prior.sum() - 1.0) < 1e-9
    capped, = estimate_candidates([candidate], [calibration], replicates=50)
    uncapped, = estimate_candidates([candidate], [dataclasses.replace(calibration, labels=None)], replicates=50)
    # the source model is below PRIOR_FROM_PREDICTIONS_MIN_ACCURACY, so without labels there is no prior: ATC alone
    assert calibration.accuracy < PRIOR_FROM_PREDICTIONS_MIN_ACCURACY
    assert uncapped.score > 0.9  # confident everywhere: ATC counts every target image as right
    assert capped.score == pytest.approx(prior[3], abs=1e-6) and capped.high <= prior[3] + 1e-6
    assert capped.method == ATC


def test_the_source_class_prior_comes_from_labels_else_from_a_nearly_perfect_candidate() -> None:
    _, calibration, _ = classification_case(np.random.default_rng(12), 0.0, source_images=400, target_images=10)
    np.testing.assert_allclose(source_class_prior([None, calibration]), calibration.class_prior)
    unlabelled = dataclasses.replace(calibration, labels=None)
    assert source_class_prior([unlabelled, None]) is None  # about 60 % accurate: its predictions are no prior
    perfect = dataclasses.replace(unlabelled, predicted=calibration.labels, correct=np.ones(400, dtype=bool))
    np.testing.assert_allclose(source_class_prior([unlabelled, perfect]),
                               np.bincount(calibration.labels, minlength=NUM_CLASSES) / 400)


# ---- the store, the sweep table, the report's measure, and the label audit -----------------------------------


def stored_sweep(root: Path, with_calibration: tuple[bool, ...] = (True, False, True)) -> ResultStore:
    """Three finished candidates with prediction caches (and calibration caches where asked) in a real store."""
    rng = np.random.default_rng(6)
    cases = [classification_case(rng, shift, source_images=200, target_images=150) for shift in (0.0, 0.15, 0.3)]
    store = ResultStore(root / "results")
    for index, ((candidate, calibration, truth), calibrated) in enumerate(zip(cases, with_calibration)):
        trial_dir = root / "trials" / f"t{index}"
        aligned = CandidatePredictions(labels=candidate.labels, probabilities=candidate.probabilities,
                                       image_ids=cases[0][0].image_ids, image_indices=cases[0][0].image_indices,
                                       num_classes=NUM_CLASSES, task="classification")
        predictions = save_predictions(trial_dir / "predictions.npz", aligned)
        if calibrated:
            save_calibration(calibration_path(predictions), calibration)
        store.write_trial({"sweep_id": "sw", "trial_id": f"t{index}", "method": "source_only", "target": "photo_digits",
                           "task": "classification", "status": "finished", "predictions_path": str(predictions),
                           "heldout_accuracy": truth, "wall_time_s": 1.0})
    store.write_trial({"sweep_id": "sw", "trial_id": "t9", "method": "source_only", "target": "photo_digits",
                       "status": "failed", "error": "boom"})
    return store


def test_record_estimates_writes_the_trial_columns_and_the_sweep_table_shows_them(tmp_path: Path) -> None:
    store = stored_sweep(tmp_path)
    trials = store.load_sweep("sw")
    assert trials["estimate_score"].isna().all()  # declared fixed columns: present, NULL before selection
    estimates = record_estimates(store, "sw", "photo_digits", trials, io.StringIO())
    assert set(estimates) == {"t0", "t1", "t2"}
    stored = store.load_sweep("sw").set_index("trial_id")
    assert stored.loc["t0", "estimate_method"] == ATC_AND_AGREEMENT and stored.loc["t1", "estimate_method"] == AGREEMENT
    assert stored.loc["t0", "estimate_score"] == pytest.approx(estimates["t0"].score)
    assert pd.isna(stored.loc["t9", "estimate_score"])
    table = format_trials_table(store.load_sweep("sw"), [])
    header = table.splitlines()[0].split()
    assert "estimate" in header and "estimate_90" in header
    row = next(line for line in table.splitlines() if line.lstrip().startswith("t0"))
    assert format_estimate(estimates["t0"].score) in row
    assert format_interval(estimates["t0"].low, estimates["t0"].high) in row
    error, coverage = estimate_accuracy(store.load_sweep("sw"))
    assert 0 <= error < 25 and 0 <= coverage <= 1


def test_the_sweep_selection_records_the_estimates(tmp_path: Path) -> None:
    from raysel.selection.decision import select_sweep

    store = stored_sweep(tmp_path)
    select_sweep(store, "sw", selectors=["fmiou"], stream=io.StringIO())
    assert store.load_sweep("sw")["estimate_score"].notna().sum() == 3


def test_the_report_shows_the_estimates_and_how_close_they_came(tmp_path: Path) -> None:
    from raysel.report import write_report

    store = stored_sweep(tmp_path)
    estimates = record_estimates(store, "sw", "photo_digits", store.load_sweep("sw"), io.StringIO())
    markdown = write_report(store, "sw", tmp_path / "report").read_text()
    assert "estimate (points, label-free)" in markdown and "90 % interval" in markdown
    assert format_interval(estimates["t0"].low, estimates["t0"].high) in markdown
    assert "mean absolute error" in markdown and "covers the held-out score" in markdown
    page = (tmp_path / "report" / "report.html").read_text()
    assert format_interval(estimates["t0"].low, estimates["t0"].high) in page


def test_estimates_are_written_onto_rows_stored_before_the_estimate_columns_existed(tmp_path: Path) -> None:
    store = stored_sweep(tmp_path)
    import pyarrow.parquet as pq

    for path in store.files("trials", sweep_id="sw"):  # rewrite the rows as an older raysel wrote them
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([c for c in table.column_names if c.startswith("estimate_")]), path)
    assert "estimate_score" not in store.load_sweep("sw")
    record_estimates(store, "sw", "photo_digits", store.load_sweep("sw"), io.StringIO())
    assert store.load_sweep("sw")["estimate_score"].notna().sum() == 3


def test_record_estimates_says_why_when_nothing_can_be_estimated(tmp_path: Path) -> None:
    store = stored_sweep(tmp_path, with_calibration=(False, False, False))
    trials = store.load_sweep("sw")
    trials = trials[trials["trial_id"] != "t2"]  # two candidates, no calibration
    printed = io.StringIO()
    assert record_estimates(store, "sw", "photo_digits", trials, printed) == {"t0": None, "t1": None}
    assert "no score estimate" in printed.getvalue() and "source calibration" in printed.getvalue()


def test_estimate_accuracy_is_mae_in_points_and_interval_coverage() -> None:
    rows = [{"estimate_score": 0.50, "estimate_low": 0.40, "estimate_high": 0.60, "heldout_accuracy": 0.55},
            {"estimate_score": 0.70, "estimate_low": 0.65, "estimate_high": 0.75, "heldout_miou": 0.60},
            {"estimate_score": None, "estimate_low": None, "estimate_high": None, "heldout_accuracy": 0.3},
            {"estimate_score": 0.2, "estimate_low": 0.1, "estimate_high": 0.3}]  # no held-out score: not counted
    error, coverage = estimate_accuracy(rows)
    assert error == pytest.approx(7.5) and coverage == pytest.approx(0.5)
    assert all(math.isnan(value) for value in estimate_accuracy([]))
    assert estimate_accuracy(pd.DataFrame(rows)) == pytest.approx((7.5, 0.5))


def _calibration(median: float, low: float, high: float) -> EstimateCalibration:
    return EstimateCalibration(key="digits", estimate_method="atc", median_offset=median, low_offset=low,
                               high_offset=high, level=0.9, candidates=10, fitted_on=("photo_digits",))


def test_calibrate_estimate_shifts_in_logit_space_and_bounds_the_interval() -> None:
    """A zero calibration returns the estimate; a known offset gives the sigmoid of the shifted logit; the interval
    holds the point and stays in [0, 1], also at the edges; NaN and None give NaN."""
    assert calibrate_estimate(0.3, _calibration(0.0, 0.0, 0.0)) == pytest.approx((0.3, 0.3, 0.3))
    sigmoid = (lambda value: 1.0 / (1.0 + math.exp(-value)))
    point, low, high = calibrate_estimate(0.6, _calibration(-1.0, -2.0, 0.5))
    logit = math.log(0.6 / 0.4)
    assert (point, low, high) == pytest.approx((sigmoid(logit - 1.0), sigmoid(logit - 2.0), sigmoid(logit + 0.5)))
    scores = np.array([0.0, 1e-6, 0.2, 0.5, 0.999999, 1.0, float("nan")])
    point, low, high = calibrate_estimate(scores, _calibration(3.0, -50.0, 50.0))
    finite = np.isfinite(scores)
    assert np.all(np.isnan(point[~finite]) & np.isnan(low[~finite]) & np.isnan(high[~finite]))
    assert np.all((0.0 <= low[finite]) & (low[finite] <= point[finite]) & (point[finite] <= high[finite])
                  & (high[finite] <= 1.0))
    assert point[0] == pytest.approx(sigmoid(float(clipped_logit(0.0)) + 3.0))  # 0 is clipped, not infinite
    assert all(math.isnan(value) for value in calibrate_estimate(None, _calibration(0.0, -1.0, 1.0)))


def test_display_formats() -> None:
    assert format_estimate(0.412) == "41.2" and format_interval(0.35, 0.479) == "[35.0, 47.9]"
    assert format_estimate(None) == "-" and format_interval(float("nan"), 0.5) == "-"
    assert Estimate(0.4, 0.3, 0.5, ATC).columns() == {"estimate_score": 0.4, "estimate_low": 0.3,
                                                       "estimate_high": 0.5, "estimate_method": ATC}


def test_the_estimator_opens_only_the_caches_never_a_label_or_heldout_file(tmp_path: Path) -> None:
    """Label audit: every file opened while estimating is a prediction or calibration cache."""
    store = stored_sweep(tmp_path)
    trials = store.load_sweep("sw")
    opened: list[str] = []
    active = [True]
    sys.addaudithook(lambda event, args: opened.append(str(args[0])) if active[0] and event == "open" and args
                     and isinstance(args[0], (str, Path)) else None)
    try:
        estimates = estimate_trials(trials)
    finally:
        active[0] = False
    assert all(estimate is not None for estimate in estimates.values())
    opened_files = {Path(path).name for path in opened if Path(path).suffix == ".npz"}
    assert opened_files == {"predictions.npz", CALIBRATION_FILE}
    assert not [path for path in opened if "heldout" in Path(path).parts or "labels" in Path(path).parts
                or "gtFine" in path]
    assert all(Path(path).name in {"predictions.npz", CALIBRATION_FILE} for path in opened
               if str(tmp_path) in path)


# ---- the trial side: the calibration cache a trial writes ---------------------------------------------------


class TinyClassifier(torch.nn.Module):
    """Mean colour -> 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.mean(dim=(2, 3)))


class TinySegmenter(torch.nn.Module):
    """1x1 conv -> 3 classes per pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


class LabelledImages(torch.utils.data.Dataset):
    """Random images with labels (class ids, or label maps with some ignored pixels)."""

    def __init__(self, count: int, segmentation: bool) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(count, 3, 6, 10, generator=generator)
        shape = (count, 6, 10) if segmentation else (count,)
        self.labels = torch.randint(0, 3, shape, generator=generator)
        if segmentation:
            self.labels[:, 0, :] = 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index], "index": index, "name": f"i{index}"}


@pytest.mark.parametrize("segmentation", [False, True])
def test_source_calibration_records_outputs_and_correctness(segmentation: bool) -> None:
    from raysel.execution.prediction_cache import source_calibration

    torch.manual_seed(0)
    model = TinySegmenter() if segmentation else TinyClassifier()
    dataset = LabelledImages(7, segmentation)
    calibration = source_calibration(model, dataset, np.arange(7), "cpu", source="src", batch_size=3)
    assert calibration.task == ("segmentation" if segmentation else "classification")
    assert calibration.num_images == 7 and calibration.probabilities.dtype == np.float16
    with torch.no_grad():
        logits = model(dataset.images)
    if segmentation:
        predicted = logits.argmax(1)[:, 1:, :].reshape(-1)  # row 0 is ignored; the grid covers every pixel here
        truth = dataset.labels[:, 1:, :].reshape(-1)
        assert len(calibration.correct) == 7 * 5 * 10
        np.testing.assert_array_equal(np.bincount(calibration.image_of), np.full(7, 50))
    else:
        predicted, truth = logits.argmax(1), dataset.labels
    np.testing.assert_array_equal(calibration.predicted, predicted.numpy())
    np.testing.assert_array_equal(calibration.correct, (predicted == truth).numpy())
    np.testing.assert_array_equal(calibration.labels, truth.numpy())
    assert model.training  # the mode is restored


def test_only_a_source_with_its_own_validation_split_gets_a_calibration(tmp_path: Path) -> None:
    from raysel.data.common import ImageFolderDataset
    from raysel.execution.prediction_cache import source_validation_dataset

    class Context:
        """The two things source_validation_dataset asks of a RunContext."""

        def __init__(self, splits: tuple[str, ...], same_images: bool, target: str = "tgt") -> None:
            self.source, self.target = "src", target
            self.family = type("Family", (), {"splits": staticmethod(lambda domain: splits)})()
            self.same_images = same_images

        def source_dataset(self, split: str = "train") -> object:
            folder = tmp_path / ("train" if split == "train" or self.same_images else split)
            (folder / "0").mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.new("RGB", (4, 4)).save(folder / "0" / "a.png")
            return ImageFolderDataset(folder, ("0",), True, (4, 4), description="test")

    assert source_validation_dataset(Context(("train",), False)) is None  # GTA5, street_scenes' game
    assert source_validation_dataset(Context(("train", "heldout"), True)) is None  # Office: held-out is train
    assert source_validation_dataset(Context(("train", "heldout"), False)) is not None  # digits' clean_digits
    assert source_validation_dataset(Context(("train", "heldout"), False, target="src")) is None  # the target itself


def _regression(**changes: object) -> ScoreRegression:
    base = dict(key="street_scenes", features=("score_consistency", "estimate_score"), intercept=-3.0,
                coefficients=(4.0, 1.0), low_offset=-0.5, high_offset=0.4, level=0.9, candidates=50,
                fitted_on=("day_city", "dusk_city"), left_out_by="target", left_out_error=4.0)
    return ScoreRegression(**{**base, **changes})


def test_regress_estimate_applies_the_linear_logit_and_its_offsets() -> None:
    point, low, high = regress_estimate({"score_consistency": 0.5, "estimate_score": 0.3}, _regression())
    logit = -3.0 + 4.0 * 0.5 + 1.0 * 0.3
    assert point == pytest.approx(1 / (1 + math.exp(-logit)))
    assert low == pytest.approx(1 / (1 + math.exp(-(logit - 0.5))))
    assert high == pytest.approx(1 / (1 + math.exp(-(logit + 0.4))))


def test_regress_estimate_gives_nan_where_a_feature_is_missing_and_keeps_low_below_high() -> None:
    features = {"score_consistency": np.array([0.2, np.nan, 0.6]), "estimate_score": np.array([0.5, 0.5, 0.5])}
    point, low, high = regress_estimate(features, _regression(low_offset=0.3, high_offset=0.2))  # both above
    assert np.isnan(point[1]) and np.all(np.isfinite(point[[0, 2]]))
    assert np.all((low[[0, 2]] <= point[[0, 2]]) & (point[[0, 2]] <= high[[0, 2]]))
    assert all(math.isnan(value) for value in regress_estimate({"score_consistency": None}, _regression()))


def test_inverse_logit_undoes_the_logit_and_stays_finite_far_out() -> None:
    scores = np.array([0.01, 0.3, 0.5, 0.9])
    assert inverse_logit(clipped_logit(scores)) == pytest.approx(scores)
    assert inverse_logit(np.array([-1000.0, 1000.0])).tolist() == [0.0, 1.0]
