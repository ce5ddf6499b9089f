"""Fused majority vote and F-mIoU: known answers, tie rule, streaming, and equality with a naive reference."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.stats

from raysel.errors import DataError

from raysel.metrics import confusion_matrix, miou
from raysel.selection import predictions, voting
from raysel.selection.selectors import get_selector
from raysel.selection.voting import (FusedVoteAccumulator, fmiou_scores, fused_agreement_scores, fused_vote,
                                     pixel_runs, plurality_vote, small_histogram)


def test_ties_go_to_the_lowest_class_id():
    # Per pixel the three candidates say: (2,1,0) three-way tie -> 0; (1,1,2) -> 1; (2,2,1) -> 2; (3,0,3) -> 3;
    # (4,3,3) -> 3; (0,4,4) -> 4.
    candidates = np.array([[[2, 1, 2, 3, 4, 0]],
                           [[1, 1, 2, 0, 3, 4]],
                           [[0, 2, 1, 3, 3, 4]]], dtype=np.uint8)
    expected = np.array([[0, 1, 2, 3, 3, 4]], dtype=np.uint8)
    np.testing.assert_array_equal(fused_vote(candidates, num_classes=5), expected)
    two_way_tie = np.array([[[3]], [[1]]], dtype=np.uint8)  # two candidates disagreeing: lowest id wins
    np.testing.assert_array_equal(fused_vote(two_way_tie, num_classes=4), [[1]])


def test_fmiou_hand_computed():
    # Fused = [0, 0, 1, 1] (see votes below); candidate 2 predicts [0, 1, 1, 1]:
    # class 0: TP 1, union 2 -> 0.5; class 1: TP 2, union 3 -> 2/3; F-mIoU = (0.5 + 2/3) / 2.
    candidates = [np.array([[0, 0, 1, 1]]), np.array([[0, 0, 1, 0]]), np.array([[0, 1, 1, 1]])]
    scores = fmiou_scores(candidates, num_classes=2)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx((2 / 3 + 1 / 2) / 2)  # class 0: TP 2 / union 3; class 1: TP 1 / union 2
    assert scores[2] == pytest.approx((0.5 + 2 / 3) / 2)


def test_identical_candidates_score_one_and_majority_beats_outlier():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 19, (4, 16, 24), dtype=np.uint8)
    assert np.allclose(fmiou_scores([truth, truth.copy(), truth.copy()], 19), 1.0)
    outlier = rng.integers(0, 19, truth.shape, dtype=np.uint8)
    noisy = truth.copy()
    noisy[:, :2] = outlier[:, :2]
    scores = fmiou_scores([truth, noisy, truth.copy(), outlier, truth.copy()], 19)
    assert scores[0] == pytest.approx(1.0)
    assert scores[0] > scores[1] > scores[3]


@pytest.mark.parametrize("num_candidates,num_classes", [(2, 3), (3, 19), (4, 2), (10, 19), (11, 2), (41, 19),
                                                        (5, 45)])
def test_matches_scipy_mode_and_metrics_confusion(num_candidates, num_classes):
    # Covers: pairwise and per-class exact votes (n > 2C+1), paired and single bincounts (C**3 > 2**16).
    rng = np.random.default_rng(num_candidates * 100 + num_classes)
    base = rng.integers(0, num_classes, (3, 9, 13))
    maps = np.where(rng.random((num_candidates, 3, 9, 13)) < 0.4,
                    rng.integers(0, num_classes, (num_candidates, 3, 9, 13)), base).astype(np.uint8)
    expected = scipy.stats.mode(maps, axis=0, keepdims=False).mode
    accumulator = FusedVoteAccumulator(num_candidates, num_classes)
    np.testing.assert_array_equal(accumulator.update(maps, return_fused=True), expected)
    np.testing.assert_array_equal(fused_vote(maps, num_classes), expected)
    for i in range(num_candidates):
        np.testing.assert_array_equal(accumulator.confusion_matrices[i],
                                      confusion_matrix(maps[i], expected, num_classes))
    labels, counts = plurality_vote(maps.reshape(num_candidates, -1), num_classes)
    np.testing.assert_array_equal(labels, expected.reshape(-1))
    np.testing.assert_array_equal(counts, (maps == expected).sum(axis=0).reshape(-1))


@pytest.mark.parametrize("symmetric_from", [1, 1 << 30])
def test_both_pairwise_strategies_agree_with_scipy(monkeypatch, symmetric_from):
    monkeypatch.setattr(voting, "PAIRWISE_SYMMETRIC_PIXELS", symmetric_from)
    labels = np.random.default_rng(5).integers(0, 4, (6, 500)).astype(np.uint8)
    winners, counts = plurality_vote(labels, 4)
    expected = scipy.stats.mode(labels, axis=0)
    np.testing.assert_array_equal(winners, expected.mode)
    np.testing.assert_array_equal(counts, expected.count)


def test_streaming_equals_one_shot_and_small_chunks(monkeypatch):
    rng = np.random.default_rng(3)
    maps = np.where(rng.random((6, 5, 20, 30)) < 0.3, rng.integers(0, 7, (6, 5, 20, 30)),
                    rng.integers(0, 7, (5, 20, 30))).astype(np.uint8)
    one_shot = FusedVoteAccumulator(6, 7)
    fused_one_shot = one_shot.update(maps, return_fused=True)
    per_image = FusedVoteAccumulator(6, 7)
    fused_per_image = np.stack([per_image.update(maps[:, k], return_fused=True) for k in range(maps.shape[1])])
    np.testing.assert_array_equal(fused_per_image, fused_one_shot)
    np.testing.assert_array_equal(per_image.confusion_matrices, one_shot.confusion_matrices)
    # Many chunks per update (and a reference candidate that changes between updates) give the same counts.
    monkeypatch.setattr(voting, "CHUNK_BYTES", 64)
    monkeypatch.setattr(voting, "MIN_CHUNK_PIXELS", 37)
    chunked = FusedVoteAccumulator(6, 7)
    for k in range(maps.shape[1]):
        chunked.update(maps[:, k])
    np.testing.assert_array_equal(chunked.confusion_matrices, one_shot.confusion_matrices)
    np.testing.assert_allclose(fmiou_scores(list(maps), 7), one_shot.miou())
    expected_miou = [miou(confusion_matrix(maps[i], fused_one_shot, 7)) for i in range(6)]
    np.testing.assert_allclose(one_shot.miou(), expected_miou)


def test_pixel_runs_hand_example_and_noise():
    chunk = np.array([[1, 1, 1, 2, 2, 0],
                      [3, 3, 4, 4, 4, 4]], dtype=np.uint8)
    starts, lengths = pixel_runs(chunk, max_fraction=1.0)
    np.testing.assert_array_equal(starts, [0, 2, 3, 5])
    np.testing.assert_array_equal(lengths, [2, 1, 2, 1])
    assert pixel_runs(chunk, max_fraction=0.5) is None  # 4 runs for 6 pixels: no gain
    noise = np.random.default_rng(0).integers(0, 19, (5, 1000), dtype=np.uint8)
    assert pixel_runs(noise, max_fraction=0.5) is None


@pytest.mark.parametrize("min_votes", [0, 3, 5])
def test_run_compression_gives_identical_results(min_votes):
    rng = np.random.default_rng(min_votes)
    blocks = np.where(rng.random((7, 4, 6, 10)) < 0.3, rng.integers(0, 19, (7, 4, 6, 10)),
                      rng.integers(0, 19, (4, 6, 10)))
    maps = blocks.repeat(5, axis=-1).astype(np.uint8)  # runs of 5 pixels along each row
    compressed = FusedVoteAccumulator(7, 19, min_votes=min_votes)
    plain = FusedVoteAccumulator(7, 19, min_votes=min_votes, compress_runs=False)
    np.testing.assert_array_equal(compressed.update(maps, return_fused=True), plain.update(maps, return_fused=True))
    np.testing.assert_array_equal(compressed.confusion_matrices, plain.confusion_matrices)
    expected = scipy.stats.mode(maps, axis=0, keepdims=False).mode
    if min_votes == 0:
        for i in range(7):
            np.testing.assert_array_equal(plain.confusion_matrices[i], confusion_matrix(maps[i], expected, 19))


def test_min_votes_ignores_pixels_without_enough_agreement():
    candidates = np.array([[0, 0, 1, 2], [0, 1, 1, 0], [0, 2, 2, 1]], dtype=np.uint8)
    # winning votes per pixel: 3, 1 (tie -> 0), 2, 1 (tie -> 0)
    accumulator = FusedVoteAccumulator(3, 3, min_votes=2)
    np.testing.assert_array_equal(accumulator.update(candidates, return_fused=True), [0, 255, 1, 255])
    for i in range(3):
        np.testing.assert_array_equal(accumulator.confusion_matrices[i],
                                      confusion_matrix(candidates[i], [0, 255, 1, 255], 3))


def test_classification_agreement_is_accuracy_against_the_vote():
    candidates = [np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), np.array([1, 1, 2, 0])]
    # votes: 0 (2 of 3), 1, 2, 2
    np.testing.assert_allclose(fused_agreement_scores(candidates, 3), [1.0, 0.75, 0.5])


@pytest.mark.parametrize("num_bins,size", [(2, 10), (3, 1000), (19, 5000), (20, 999), (40, 1234), (200, 700)])
def test_small_histogram_equals_bincount(num_bins, size):
    values = np.random.default_rng(size).integers(0, num_bins, size).astype(np.uint8)
    np.testing.assert_array_equal(small_histogram(values, num_bins), np.bincount(values, minlength=num_bins))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="lie in"):
        FusedVoteAccumulator(2, 3).update(np.array([[0, 3], [1, 1]], dtype=np.uint8))
    with pytest.raises(ValueError, match="differ in shape"):
        fmiou_scores([np.zeros((2, 3)), np.zeros((2, 4))], 2)
    with pytest.raises(ValueError, match="expected labels of 3 candidates"):
        FusedVoteAccumulator(3, 2).update(np.zeros((2, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="class ids must lie"):
        fused_vote([np.array([300]), np.array([1])])
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        fused_vote([np.array([2]), np.array([1])], num_classes=2)


# --------------------------------------------------------------------------------------------------------------
# Streamed prediction files: the selection reads a few images of each candidate at a time
# --------------------------------------------------------------------------------------------------------------


def _saved_candidates(folder, num_candidates: int = 5, shape=(12, 32, 48), num_classes: int = 7,
                      keep_grids: bool = True) -> list:
    """Real prediction files (save_predictions) of candidates that mostly agree, with probability/feature grids."""
    rng = np.random.default_rng(3)
    truth = rng.integers(0, num_classes, shape, dtype=np.uint8)
    rows, cols = predictions.probability_grid(shape[1], shape[2], (4, 8))
    paths = []
    for index in range(num_candidates):
        noise = rng.integers(0, 5 * num_classes, shape, dtype=np.uint8)  # 20% of the pixels: a random class
        labels = np.where(noise < num_classes, noise, truth)
        probabilities = rng.dirichlet(np.ones(num_classes), (shape[0], rows.size, cols.size)).transpose(0, 3, 1, 2)
        candidate = predictions.CandidatePredictions(
            labels=labels, probabilities=probabilities.astype(np.float16) if keep_grids else None,
            image_ids=tuple(f"img{i}" for i in range(shape[0])), image_indices=np.arange(shape[0]),
            num_classes=num_classes, task="segmentation", probability_rows=rows if keep_grids else None,
            probability_cols=cols if keep_grids else None)
        paths.append(predictions.save_predictions(folder / f"c{index}.npz", candidate))
    return paths


def test_streamed_prediction_files_give_exactly_the_in_memory_scores(tmp_path):
    paths = _saved_candidates(tmp_path)
    eager = [predictions.load_predictions(path, stream_labels=False) for path in paths]
    streamed = [predictions.load_predictions(path, stream_labels=True) for path in paths]
    assert all(isinstance(c.labels, predictions.StreamedLabels) for c in streamed)
    assert all(isinstance(c.labels, np.ndarray) for c in eager)  # small files load whole by default too
    assert all(isinstance(predictions.load_predictions(path).labels, np.ndarray) for path in paths)
    assert streamed[0].labels.shape == eager[0].labels.shape == (12, 32, 48)
    for name in ("fmiou", "confident_fmiou", "soft_vote"):
        selector = get_selector(name)
        np.testing.assert_array_equal(selector.score(streamed), selector.score(eager))
    np.testing.assert_array_equal(streamed[1].labels_on_probability_grid(), eager[1].labels_on_probability_grid())
    np.testing.assert_array_equal(np.asarray(streamed[2].labels), eager[2].labels)
    batches = list(streamed[0].labels.batches(5))
    assert [len(batch) for batch in batches] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate(batches), eager[0].labels)


def _peak_traced_bytes_of_fmiou(folder, num_images: int) -> int:
    """Peak traced allocations (numpy reports its buffers to tracemalloc) while F-mIoU scores 8 streamed candidates."""
    paths = _saved_candidates(folder, num_candidates=8, shape=(num_images, 128, 256), num_classes=19, keep_grids=False)
    candidates = [predictions.load_predictions(path, with_probabilities=False, stream_labels=True) for path in paths]
    tracemalloc.start()
    try:
        scores = get_selector("fmiou").score(candidates)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.isfinite(scores).all() and scores.shape == (8,)
    return peak


def test_streamed_scoring_memory_stays_flat_as_the_images_grow(tmp_path):
    """8x the images (8 x 256 images of 128x256 = 64 MiB of labels) and the peak barely moves: the selection holds a
    few images of each candidate, never every candidate's labels (which would add 56 MiB here)."""
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small = _peak_traced_bytes_of_fmiou(tmp_path / "small", 32)
    large = _peak_traced_bytes_of_fmiou(tmp_path / "large", 256)
    assert large < 1.3 * small, f"peak {large / 2**20:.1f} MiB for 256 images, {small / 2**20:.1f} MiB for 32"


def test_a_truncated_streamed_prediction_file_is_a_data_error_naming_it(tmp_path):
    (path,) = _saved_candidates(tmp_path, num_candidates=1, keep_grids=False)
    streamed = predictions.load_predictions(path, stream_labels=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=f"prediction file {path}"):
        list(streamed.labels.batches(4))
