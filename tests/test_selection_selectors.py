"""Label-free selectors: registry, known answers on hand-made predictions, and clear errors on bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata

from raysel.errors import ConfigError, DataError, UserError
from raysel.selection.predictions import CandidatePredictions, probability_grid
from raysel.selection.selectors import get_selector, select_best, selector_names

NUM_CLASSES = 4


def segmentation_candidate(labels: np.ndarray, probabilities: np.ndarray | None = None,
                           image_ids: tuple[str, ...] | None = None, num_classes: int = NUM_CLASSES,
                           grid: tuple[int, int] = (2, 2)) -> CandidatePredictions:
    """Candidate over ``labels [N,H,W]``; probabilities default to one-hot of the labels on the grid."""
    labels = np.asarray(labels, dtype=np.uint8)
    rows, cols = probability_grid(labels.shape[1], labels.shape[2], grid)
    if probabilities is None:
        on_grid = labels[:, rows][:, :, cols]
        probabilities = np.moveaxis(np.eye(num_classes, dtype=np.float16)[on_grid], -1, 1)
    ids = image_ids or tuple(f"img{k}" for k in range(labels.shape[0]))
    return CandidatePredictions(labels=labels, probabilities=probabilities, image_ids=ids,
                                image_indices=np.arange(labels.shape[0]), num_classes=num_classes,
                                task="segmentation", probability_rows=rows, probability_cols=cols)


def classification_candidate(probabilities: np.ndarray) -> CandidatePredictions:
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return CandidatePredictions(labels=probabilities.argmax(1).astype(np.uint8),
                                probabilities=probabilities.astype(np.float16),
                                image_ids=tuple(f"img{k}" for k in range(len(probabilities))),
                                image_indices=np.arange(len(probabilities)), num_classes=probabilities.shape[1],
                                task="classification")


@pytest.fixture()
def crowd():
    """Three candidates equal to a reference map, one noisy copy, one random outlier."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, NUM_CLASSES, (3, 8, 8))
    noisy = truth.copy()
    noisy[:, :3] = (noisy[:, :3] + 1) % NUM_CLASSES  # rows 0-2: the 2x2 probability grid sees row 2
    outlier = rng.integers(0, NUM_CLASSES, truth.shape)
    return [segmentation_candidate(m) for m in (truth, noisy, truth, outlier, truth)]


def test_registry_lists_all_selectors_and_rejects_unknown_names():
    assert {"fmiou", "confident_fmiou", "soft_vote", "entropy", "im", "snd", "rank_mean"} <= set(selector_names())
    with pytest.raises(ConfigError, match="unknown selector 'nope'; valid selectors: fmiou"):
        get_selector("nope")
    with pytest.raises(ConfigError, match="has no parameter"):
        get_selector("fmiou", tau=1.0)
    with pytest.raises(ConfigError, match="min_agreement"):
        get_selector("confident_fmiou", min_agreement=1.0)
    assert get_selector("snd", tau=0.1).tau == 0.1
    assert not get_selector("fmiou").needs_probabilities and get_selector("im").needs_probabilities


@pytest.mark.parametrize("name", ["fmiou", "confident_fmiou", "soft_vote", "rank_mean"])
def test_agreement_selectors_prefer_the_majority(crowd, name):
    scores = get_selector(name).score(crowd)
    assert scores.shape == (5,)
    assert scores[0] == scores[2] == scores[4]
    assert scores[0] > scores[1] > scores[3]


def test_fmiou_of_identical_candidates_is_one(crowd):
    same = [crowd[0], crowd[2], crowd[4]]
    np.testing.assert_allclose(get_selector("fmiou").score(same), 1.0)
    np.testing.assert_allclose(get_selector("soft_vote").score(same), 1.0)


def test_confident_fmiou_leaves_out_split_pixels():
    # Pixel votes: (0,0,0) unanimous; (1,2,3) split -> ignored by confident_fmiou, fused 1 for plain fmiou.
    a = segmentation_candidate(np.array([[[0, 1]]]))
    b = segmentation_candidate(np.array([[[0, 2]]]))
    c = segmentation_candidate(np.array([[[0, 3]]]))
    np.testing.assert_allclose(get_selector("confident_fmiou").score([a, b, c]), 1.0)
    plain = get_selector("fmiou").score([a, b, c])
    assert plain[0] == pytest.approx(1.0)
    assert plain[1] == pytest.approx(1 / 3)  # class 0 IoU 1, class 1 IoU 0 (union 1), class 2 IoU 0


def test_soft_vote_uses_mean_probabilities():
    # One pixel, three candidates: argmax of the mean is class 2 although two candidates predict class 0.
    probabilities = [np.array([0.5, 0.0, 0.5, 0.0]), np.array([0.5, 0.0, 0.5, 0.0]), np.array([0.0, 0.0, 1.0, 0.0])]
    probabilities[0] = np.array([0.55, 0.0, 0.45, 0.0])
    probabilities[1] = np.array([0.55, 0.0, 0.45, 0.0])
    candidates = [segmentation_candidate(np.array([[[int(p.argmax())]]]), p.reshape(1, 4, 1, 1).astype(np.float16),
                                         grid=(1, 1)) for p in probabilities]
    np.testing.assert_allclose(get_selector("soft_vote").score(candidates), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(get_selector("fmiou").score(candidates), [1.0, 1.0, 0.0])


def test_entropy_and_im_known_values():
    # Nearly uniform probabilities whose argmax differs per image (an exactly uniform row's argmax is class 0 for
    # every image, i.e. a one-class model that entropy's collapse guard leaves out).
    near_uniform = (np.full((4, NUM_CLASSES), 1 / NUM_CLASSES) + 0.004 * np.eye(NUM_CLASSES)) / 1.004
    uniform = classification_candidate(near_uniform)
    balanced = classification_candidate(np.eye(NUM_CLASSES))
    collapsed = classification_candidate(np.tile(np.eye(NUM_CLASSES)[:1], (4, 1)))
    entropy = get_selector("entropy").score([uniform, balanced, collapsed])
    np.testing.assert_allclose(entropy, [-math.log(NUM_CLASSES), 0.0, np.nan], atol=1e-3)  # collapsed: no score
    information = get_selector("im").score([uniform, balanced, collapsed])
    np.testing.assert_allclose(information, [0.0, math.log(NUM_CLASSES), 0.0], atol=1e-3)


def test_snd_matches_a_direct_implementation():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(30, NUM_CLASSES)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    candidate = classification_candidate(probabilities)
    features = candidate.probabilities.astype(np.float64)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    similarity = features @ features.T / 0.05
    np.fill_diagonal(similarity, -1 / 0.05)
    neighbourhood = np.exp(similarity - similarity.max(1, keepdims=True))
    neighbourhood /= neighbourhood.sum(1, keepdims=True)
    expected = float(np.mean(-(neighbourhood * np.log(np.maximum(neighbourhood, 1e-300))).sum(1)))
    assert get_selector("snd").score([candidate])[0] == pytest.approx(expected, rel=1e-4)


def test_snd_segmentation_samples_the_same_pixels_for_every_candidate(crowd):
    selector = get_selector("snd", pixels_per_image=3, seed=7)
    first = selector.score([crowd[0]])
    again = selector.score([crowd[2], crowd[0]])
    assert first[0] == again[0] == again[1]  # identical predictions, identical sampled pixels
    assert np.isfinite(selector.score(crowd)).all()


def test_rank_mean_is_the_mean_rank_of_its_components(crowd):
    components = [get_selector(name).score(crowd) for name in ("fmiou", "soft_vote", "im")]
    expected = np.mean([rankdata(scores) for scores in components], axis=0)
    np.testing.assert_allclose(get_selector("rank_mean").score(crowd), expected)


def test_classification_agreement_selectors():
    a = classification_candidate(np.eye(NUM_CLASSES))
    b = classification_candidate(np.eye(NUM_CLASSES)[[0, 1, 2, 0]])
    c = classification_candidate(np.eye(NUM_CLASSES)[[1, 1, 2, 3]])
    np.testing.assert_allclose(get_selector("fmiou").score([a, b, c]), [1.0, 0.75, 0.75])
    np.testing.assert_allclose(get_selector("soft_vote").score([a, b, c]), [1.0, 0.75, 0.75])


def test_bad_candidate_sets_raise_user_errors(crowd):
    with pytest.raises(DataError, match="F-mIoU is undefined for one candidate"):
        get_selector("fmiou").score(crowd[:1])
    other_classes = segmentation_candidate(np.zeros((3, 8, 8)), num_classes=5)
    with pytest.raises(DataError, match="different class sets"):
        get_selector("fmiou").score([crowd[0], other_classes])
    other_images = segmentation_candidate(np.zeros((3, 8, 8)), image_ids=("a", "b", "c"))
    with pytest.raises(DataError, match="different images"):
        get_selector("fmiou").score([crowd[0], other_images])
    other_shape = segmentation_candidate(np.zeros((3, 8, 9)))
    with pytest.raises(DataError, match="different prediction shapes"):
        get_selector("fmiou").score([crowd[0], other_shape])
    without = CandidatePredictions(labels=crowd[1].labels, probabilities=None, image_ids=crowd[1].image_ids,
                                   image_indices=crowd[1].image_indices, num_classes=NUM_CLASSES,
                                   task="segmentation")
    with pytest.raises(DataError, match="keep_probabilities=True"):
        get_selector("entropy").score([crowd[0], without])
    assert issubclass(DataError, UserError)


def test_select_best_skips_nan_and_prefers_the_first_of_ties():
    assert select_best([0.2, np.nan, 0.5, 0.5]) == 2
    with pytest.raises(DataError, match="no candidate"):
        select_best([np.nan, np.nan])


# ---- issue 29: non-finite candidates and collapsed models (each test fails on the code before the fix) ----------


def confident_candidate(labels: np.ndarray, confidence: float = 0.85, nan: bool = False) -> CandidatePredictions:
    """Classification candidate putting ``confidence`` on ``labels`` (the rest spread); ``nan``: NaN probabilities,
    as a model with non-finite outputs caches them (its argmax labels are class 0)."""
    probabilities = np.full((len(labels), NUM_CLASSES), (1 - confidence) / (NUM_CLASSES - 1), dtype=np.float32)
    probabilities[np.arange(len(labels)), labels] = confidence
    if nan:
        probabilities[:] = np.nan
        labels = np.zeros_like(labels)
    return CandidatePredictions(labels=np.asarray(labels, dtype=np.uint8),
                                probabilities=probabilities.astype(np.float16),
                                image_ids=tuple(f"img{k}" for k in range(len(labels))),
                                image_indices=np.arange(len(labels)), num_classes=NUM_CLASSES, task="classification")


@pytest.fixture()
def with_broken():
    """Two good candidates, one collapsed to class 0, one with NaN probabilities (last)."""
    rng = np.random.default_rng(0)
    truth = np.arange(40) % NUM_CLASSES
    noisy = np.where(rng.random(40) < 0.2, (truth + 1) % NUM_CLASSES, truth)
    return [confident_candidate(truth), confident_candidate(noisy), confident_candidate(np.zeros(40, dtype=int)),
            confident_candidate(truth, nan=True)]


@pytest.mark.parametrize("name", ["soft_vote", "rank_mean", "robust", "fmiou", "confident_fmiou", "im", "entropy"])
def test_a_non_finite_candidate_gets_no_score_and_is_left_out_of_the_ensemble(with_broken, name):
    scores = get_selector(name).score(with_broken)
    assert np.isnan(scores[3]) and np.isfinite(scores[:2]).all()
    assert select_best(scores) in (0, 1), scores  # the NaN ensemble used to make class 0 the truth: collapsed won
    if name == "soft_vote":
        np.testing.assert_allclose(scores[:3], get_selector(name).score(with_broken[:3]))  # as if it were absent


def test_too_few_finite_candidates_is_a_clear_skip(with_broken):
    from raysel.selection.selectors import SelectionSkipped

    with pytest.raises(SelectionSkipped, match="non-finite predictions"):
        get_selector("soft_vote").score([with_broken[0], with_broken[3]])


def test_effective_classes_and_the_collapse_bound():
    from raysel.selection.selectors import COLLAPSE_EFFECTIVE_CLASSES, effective_classes

    assert effective_classes(np.zeros(50, dtype=int), NUM_CLASSES) == pytest.approx(1.0)
    assert effective_classes(np.arange(40) % NUM_CLASSES, NUM_CLASSES) == pytest.approx(NUM_CLASSES)
    assert effective_classes(np.arange(40) % 2, NUM_CLASSES) == pytest.approx(2.0)
    assert COLLAPSE_EFFECTIVE_CLASSES == 2.0


@pytest.mark.parametrize("name", ["entropy", "snd"])
def test_entropy_and_snd_never_select_a_one_class_model(name):
    truth = np.arange(40) % NUM_CLASSES
    rng = np.random.default_rng(2)
    good = [confident_candidate(np.where(rng.random(40) < 0.1, (truth + 1) % NUM_CLASSES, truth), 0.9)
            for _ in range(3)]
    collapsed = confident_candidate(np.zeros(40, dtype=int), 0.99)  # confident, and one class everywhere
    scores = get_selector(name).score(good + [collapsed])
    assert np.isnan(scores[3]) and np.isfinite(scores[:3]).all() and select_best(scores) != 3
