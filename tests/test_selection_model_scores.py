"""The stronger label-free selectors: consistency and MixVal (scored in the trial from the model), ClassAMI on cached
features, the robust veto-then-rank combination — known answers, order invariance, skips, and no label file read."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from raysel import data
from raysel.data import street_scenes
from raysel.data.street_scenes import StreetScenesConfig
from raysel.models.classification import SmallCNN
from raysel.models.segmentation import SmallSegNet
from raysel.selection.model_scores import (TASK_TRIAL_SCORES, FeatureDropout, class_balanced_agreement,
                                          trial_selection_scores)
from raysel.selection.inference import predict_subset
from raysel.selection.predictions import CandidatePredictions, load_predictions, save_predictions
from raysel.selection.selectors import SelectionSkipped, get_selector, selector_names

NUM_CLASSES = 4


class ColourNet(nn.Module):
    """Pixelwise classifier on colour: ``classifier`` (1x1 conv) over a fixed 1x1-conv embedding; ``collapsed``
    zeroes its weights and biases class 0, so it predicts class 0 everywhere."""

    def __init__(self, segmentation: bool, collapsed: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.segmentation = segmentation
        self.embed = nn.Conv2d(3, 8, 1)
        self.classifier = nn.Conv2d(8, NUM_CLASSES, 1) if segmentation else nn.Linear(8, NUM_CLASSES)
        with torch.no_grad():  # no biases: the prediction follows the colour, so every class appears
            self.embed.bias.zero_()
            self.classifier.bias.zero_()
        if collapsed:
            with torch.no_grad():
                self.classifier.weight.zero_()
                self.classifier.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.tanh(self.embed(images))
        if not self.segmentation:
            features = features.mean(dim=(2, 3)) * 4
        return self.classifier(features)


class ImageList(torch.utils.data.Dataset):
    """Unlabeled images in the data contract (``image``, ``index``, ``name``)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "index": index, "name": f"img{index}"}


@pytest.fixture(scope="module")
def images() -> ImageList:
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randn(24, 3, 4, 8, generator=generator)  # blocky colour regions: several classes per image
    return ImageList(nn.functional.interpolate(blocks, size=(16, 32), mode="nearest"))


def test_new_selectors_are_registered() -> None:
    assert {"cluster_ami", "robust", "consistency", "mixval", "classmix_consistency"} <= set(selector_names())


def test_class_balanced_agreement_gives_a_collapsed_map_one_over_c() -> None:
    collapsed = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    collapsed[0, 0] = 100
    assert class_balanced_agreement(collapsed) == pytest.approx(1 / NUM_CLASSES)
    assert class_balanced_agreement(np.eye(NUM_CLASSES, dtype=np.int64) * 10) == pytest.approx(1.0)


@pytest.mark.parametrize("segmentation", [True, False])
def test_trial_scores_rank_a_collapsed_model_lowest(images, segmentation) -> None:
    task = "segmentation" if segmentation else "classification"
    healthy = [trial_selection_scores(ColourNet(segmentation, seed=seed), images, np.arange(len(images)), "cpu",
                                      task) for seed in range(3)]
    collapsed = trial_selection_scores(ColourNet(segmentation, collapsed=True), images, np.arange(len(images)), "cpu",
                                       task)
    for name in TASK_TRIAL_SCORES[task]:
        assert all(np.isfinite(s[name]) and 0 <= s[name] <= 1 for s in healthy)
        if name == "mixval":  # one predicted class: no inter-cluster probe, so no score at all
            assert math.isnan(collapsed[name])
        else:
            assert collapsed[name] < min(s[name] for s in healthy), (name, collapsed, healthy)


def test_trial_scores_are_deterministic_and_restore_the_mode(images) -> None:
    model = ColourNet(True).train()
    first = trial_selection_scores(model, images, np.arange(10), "cpu", "segmentation")
    assert model.training and first == trial_selection_scores(model, images, np.arange(10), "cpu", "segmentation")


class CountingNet(ColourNet):
    """ColourNet that counts its forward calls and the images they carry."""

    def __init__(self, segmentation: bool) -> None:
        super().__init__(segmentation)
        self.calls = self.images = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += len(images)
        return super().forward(images)


@pytest.mark.parametrize("segmentation", [True, False])
def test_trial_scores_reuse_the_cached_unperturbed_pass(images, segmentation) -> None:
    """With the candidate's prediction cache the unperturbed labels are read, not predicted again: the same scores
    from one forward image fewer per view; the perturbed views of a batch go through the model as one batch."""
    task = "segmentation" if segmentation else "classification"
    indices = np.arange(len(images))
    alone, cached = CountingNet(segmentation), CountingNet(segmentation)
    predictions = predict_subset(cached, images, indices, "cpu")
    cached.calls = cached.images = 0
    expected = trial_selection_scores(alone, images, indices, "cpu", task, batch_size=8)
    scores = trial_selection_scores(cached, images, indices, "cpu", task, batch_size=8, predictions=predictions)
    assert scores == expected
    assert alone.images - cached.images == len(images)  # the unperturbed pass is the one skipped
    batches = math.ceil(len(images) / 8)
    mixval_batches = 0 if segmentation else alone.calls - 2 * batches  # MixVal's probes run after the loop
    assert cached.calls == batches + mixval_batches  # one stacked forward per batch of images


def test_feature_dropout_drops_only_its_rows_of_a_stacked_batch() -> None:
    """The dropout view's labels are the same whether it runs alone or stacked with other views."""
    model = ColourNet(True).eval()
    batch = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        alone = FeatureDropout(model, p=0.5, seed=3).predict(model, batch)
        stacked = FeatureDropout(model, p=0.5, seed=3).predict(model, torch.cat([batch * 2, batch]), slice(4, 8))
        untouched = model(batch * 2).argmax(dim=1)
    assert torch.equal(stacked[4:], alone) and torch.equal(stacked[:4], untouched)


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_trial_scores_on_real_small_models(task) -> None:
    """The project's own networks: scores are finite, features are sampled from the classifier's input."""
    torch.manual_seed(0)
    model = SmallSegNet(19) if task == "segmentation" else SmallCNN(10)
    dataset = ImageList(torch.randn(6, 3, 32, 64) if task == "segmentation" else torch.randn(6, 3, 32, 32))
    scores = trial_selection_scores(model, dataset, np.arange(6), "cpu", task, batch_size=4)
    assert set(scores) == set(TASK_TRIAL_SCORES[task]) and np.isfinite(scores["consistency"])
    assert task == "classification" or np.isfinite(scores["classmix_consistency"])  # mixval: NaN if one class
    predictions = predict_subset(model, dataset, np.arange(6), "cpu", keep_probabilities=True, keep_features=True)
    samples, labels = predictions.feature_samples()
    assert samples.shape == (len(labels), 64 if task == "segmentation" else 128) and np.isfinite(samples).all()


def test_features_round_trip_and_version_one_files_still_load(images, tmp_path) -> None:
    predictions = predict_subset(ColourNet(True), images, np.arange(5), "cpu", keep_probabilities=True,
                                 keep_features=True)
    assert predictions.features.shape == (5, 8, 4, 8)  # every 4th cell of the 16x32 probability grid
    loaded = load_predictions(save_predictions(tmp_path / "p.npz", predictions))
    assert np.array_equal(loaded.features, predictions.features)
    assert np.array_equal(loaded.feature_rows, predictions.feature_rows)
    old = predict_subset(ColourNet(True), images, np.arange(5), "cpu", keep_probabilities=True)
    path = save_predictions(tmp_path / "old.npz", old)
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["meta"] = np.asarray(json.dumps({"format_version": 1, "task": "segmentation", "num_classes": 4}))
    np.savez_compressed(path, **arrays)
    assert load_predictions(path).features is None


# ---- selectors over cached candidates ------------------------------------------------------------------------


def feature_candidate(labels: np.ndarray, features: np.ndarray) -> CandidatePredictions:
    """Classification candidate with one-hot-ish probabilities and cached features."""
    probabilities = np.full((len(labels), NUM_CLASSES), 0.05, dtype=np.float32)
    probabilities[np.arange(len(labels)), labels] = 0.85
    return CandidatePredictions(labels=labels.astype(np.uint8), probabilities=probabilities.astype(np.float16),
                                image_ids=tuple(f"img{k}" for k in range(len(labels))),
                                image_indices=np.arange(len(labels)), num_classes=NUM_CLASSES,
                                task="classification", features=features.astype(np.float16))


@pytest.fixture()
def candidates() -> list[CandidatePredictions]:
    """Three good candidates (features clustered by their labels), one noisy, one collapsed to class 0."""
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(NUM_CLASSES), 30)
    centres = rng.normal(0, 5, (NUM_CLASSES, 6))
    features = centres[truth] + rng.normal(0, 0.5, (len(truth), 6))
    noisy = np.where(rng.random(len(truth)) < 0.4, rng.integers(0, NUM_CLASSES, len(truth)), truth)
    return [feature_candidate(truth, features), feature_candidate(noisy, features),
            feature_candidate(np.zeros_like(truth), rng.normal(0, 1, features.shape)),
            feature_candidate(truth, features + rng.normal(0, 1.0, features.shape)),
            feature_candidate(truth, features)]


@pytest.mark.parametrize("name", ["cluster_ami", "robust"])
def test_collapsed_candidate_scores_lowest_and_order_does_not_matter(candidates, name) -> None:
    scores = get_selector(name).score(candidates)
    assert np.isfinite(scores).all() and int(np.argmin(scores)) == 2
    assert scores[1] < scores[0] and scores[1] < scores[4]  # the noisy candidate below the clean ones
    order = [4, 2, 0, 3, 1]
    reordered = get_selector(name).score([candidates[k] for k in order])
    assert np.allclose(reordered, scores[order])


def test_cluster_ami_is_skipped_without_features(candidates) -> None:
    bare = [CandidatePredictions(labels=c.labels, probabilities=c.probabilities, image_ids=c.image_ids,
                                 image_indices=c.image_indices, num_classes=c.num_classes, task=c.task)
            for c in candidates]
    with pytest.raises(SelectionSkipped, match="features"):
        get_selector("cluster_ami").score(bare)


def test_robust_vetoes_the_ensemble_outlier_even_when_its_ranker_loves_it() -> None:
    """A confident, class-balanced candidate that disagrees with everyone wins IM but is vetoed by the guard."""
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(NUM_CLASSES), 20)
    crowd = [feature_candidate(np.where(rng.random(80) < 0.1, (truth + 1) % NUM_CLASSES, truth), np.zeros((80, 2)))
             for _ in range(4)]
    outlier_labels = (truth + 2) % NUM_CLASSES
    outlier = CandidatePredictions(labels=outlier_labels.astype(np.uint8),
                                   probabilities=np.eye(NUM_CLASSES, dtype=np.float16)[outlier_labels],
                                   image_ids=crowd[0].image_ids, image_indices=crowd[0].image_indices,
                                   num_classes=NUM_CLASSES, task="classification")
    everyone = crowd + [outlier]
    assert int(np.argmax(get_selector("im").score(everyone))) == 4
    scores = get_selector("robust").score(everyone)
    assert int(np.argmin(scores)) == 4 and int(np.argmax(scores)) != 4


def test_trial_scored_selectors_read_stored_scores_and_skip_when_absent() -> None:
    trials = pd.DataFrame({"trial_id": ["a", "b"], "score_consistency": [0.4, 0.7], "score_mixval": [0.9, 0.2]})
    assert get_selector("consistency").score_trials(trials).tolist() == [0.4, 0.7]
    assert get_selector("mixval").score_trials(trials).tolist() == [0.9, 0.2]
    with pytest.raises(SelectionSkipped, match="score_consistency"):
        get_selector("consistency").score_trials(trials.drop(columns="score_consistency"))


# ---- label hygiene -------------------------------------------------------------------------------------------


def test_new_selectors_never_open_a_label_file(tmp_path) -> None:
    """Trial scores, feature caching, cluster_ami and robust on a real embedded target: no label file is opened."""
    street_scenes.prepare_street_scenes(tmp_path, StreetScenesConfig(height=32, width=64, source_train=1,
                                                                     target_train=4, target_heldout=1))
    opened: list[str] = []
    active = [True]
    sys.addaudithook(lambda event, args: opened.append(str(args[0])) if active[0] and event == "open" and args
                     and isinstance(args[0], (str, Path)) else None)
    try:
        target = data.get_family("street_scenes").load(tmp_path, "foggy_city", "train", with_labels=False)
        candidates = []
        for seed in range(3):
            torch.manual_seed(seed)
            model = SmallSegNet(19)
            trial_selection_scores(model, target, np.arange(len(target)), "cpu", "segmentation")
            candidates.append(predict_subset(model, target, np.arange(len(target)), "cpu", keep_probabilities=True,
                                             keep_features=True))
        for name in ("cluster_ami", "robust"):
            assert np.isfinite(get_selector(name).score(candidates)).all()
    finally:
        active[0] = False
    assert any("leftImg8bit" in path for path in opened)
    assert not [path for path in opened if "gtFine" in path or "heldout" in Path(path).parts]


# ---- issue 29: defects of the trial-scored selectors, each test fails on the code before the fix --------------


class RecordingImages(ImageList):
    """ImageList that records which dataset indices were read."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__(images)
        self.read: list[int] = []

    def __getitem__(self, index: int) -> dict:
        self.read.append(int(index))
        return super().__getitem__(index)


def test_trial_scores_use_a_seeded_random_subset_not_the_lowest_indices() -> None:
    """On class-sorted data the first 100 sorted indices are the low classes; a seeded random 100 spans them all."""
    from raysel.selection.model_scores import TRIAL_SCORE_IMAGES

    dataset = RecordingImages(torch.randn(500, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    indices = np.arange(500)  # sorted, as selection_subset returns it

    def scored(seed: int) -> list[int]:
        dataset.read.clear()
        trial_selection_scores(ColourNet(False), dataset, indices, "cpu", "classification", seed=seed)
        return sorted(set(dataset.read))

    first = scored(0)
    assert len(first) == TRIAL_SCORE_IMAGES
    assert sum(index >= 250 for index in first) >= 30  # drawn over the whole subset, not its lowest 100
    assert scored(0) == first and scored(1) != first  # deterministic per seed: the same for every candidate


def test_mixval_pairs_share_the_pseudo_label_intra_and_differ_inter() -> None:
    from raysel.selection.model_scores import mixval_pairs

    labels = np.repeat(np.arange(5), [30, 30, 20, 19, 1])[np.random.default_rng(3).permutation(100)]
    pairs = mixval_pairs(labels, np.random.default_rng(0))
    intra_a, intra_b = pairs["intra"]
    inter_a, inter_b = pairs["inter"]
    lonely = int(np.flatnonzero(labels == 4)[0])  # the only image of its pseudo-class has no intra partner
    assert sorted(intra_a.tolist()) == [k for k in range(100) if k != lonely]  # one intra probe per other image
    assert (labels[intra_a] == labels[intra_b]).all() and (intra_a != intra_b).all()
    assert sorted(inter_a.tolist()) == list(range(100))  # one inter probe per image
    assert (labels[inter_a] != labels[inter_b]).all()
    again = mixval_pairs(labels, np.random.default_rng(0))
    assert all(np.array_equal(x, y) for kind in pairs for x, y in zip(pairs[kind], again[kind]))
    assert mixval_pairs(np.zeros(10, dtype=np.int64), np.random.default_rng(0))["inter"][0].size == 0


class ChannelArgmax(nn.Module):
    """Classifies an image by its brightest channel: 0.55·a + 0.45·b of one-hot colour images keeps a's class."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def one_hot_colour_images(classes: np.ndarray) -> ImageList:
    """Images whose channel ``c`` is 1 (the others 0) for class c."""
    images = torch.zeros(len(classes), 3, 4, 4)
    images[torch.arange(len(classes)), torch.as_tensor(classes)] = 1.0
    return ImageList(images)


def test_mixval_scores_the_dominant_pseudo_label_and_a_collapsed_model_cannot_be_scored() -> None:
    dataset = one_hot_colour_images(np.arange(30) % 3)
    scores = trial_selection_scores(ChannelArgmax(), dataset, np.arange(30), "cpu", "classification")
    assert scores["mixval"] == pytest.approx(1.0)  # every probe keeps the dominant image's class
    collapsed = trial_selection_scores(ColourNet(False, collapsed=True), dataset, np.arange(30), "cpu",
                                       "classification")
    assert math.isnan(collapsed["mixval"])  # no inter-cluster probe exists: no score (it was 0.5)


class MirrorSensitive(nn.Module):
    """Class 0 when the image's left half is brighter than its right half, else class 1: as for a digit, a mirror
    image is another class; a photometric change (contrast, brightness) keeps the class."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        half = images.shape[-1] // 2
        difference = images[..., :half].mean(dim=(1, 2, 3)) - images[..., half:].mean(dim=(1, 2, 3))
        return torch.stack([difference, -difference], dim=1)


def test_consistency_does_not_flip_classification_images_since_training_does_not() -> None:
    from raysel.methods.augment import training_flips

    assert not training_flips(segmentation=False) and training_flips(segmentation=True)
    dataset = ImageList(torch.randn(12, 3, 4, 8, generator=torch.Generator().manual_seed(1)))
    scores = trial_selection_scores(MirrorSensitive(), dataset, np.arange(12), "cpu", "classification")
    assert scores["consistency"] == pytest.approx(1.0)  # 0.5 when the flip counted


def test_segmentation_probe_is_named_classmix_consistency_and_mixval_stays_the_papers(images) -> None:
    from raysel.selection.model_scores import TRIAL_SCORE_NAMES
    from raysel.selection.selectors import TRIAL_SCORE_SELECTORS

    segmentation = trial_selection_scores(ColourNet(True), images, np.arange(8), "cpu", "segmentation")
    classification = trial_selection_scores(ColourNet(False), images, np.arange(8), "cpu", "classification")
    assert set(segmentation) == {"consistency", "classmix_consistency"}
    assert set(classification) == {"consistency", "mixval"}
    assert set(TRIAL_SCORE_NAMES) == {"consistency", "mixval", "classmix_consistency"}
    assert set(TRIAL_SCORE_NAMES) <= set(TRIAL_SCORE_SELECTORS) and "classmix_consistency" in selector_names()


def test_old_segmentation_mixval_column_is_read_as_classmix_consistency_and_never_as_mixval() -> None:
    old = pd.DataFrame({"trial_id": ["a", "b", "c"], "task": ["segmentation"] * 3, "score_mixval": [0.4, 0.6, 0.5]})
    assert get_selector("classmix_consistency").score_trials(old).tolist() == [0.4, 0.6, 0.5]
    with pytest.raises(SelectionSkipped, match="score_mixval"):
        get_selector("mixval").score_trials(old)  # the old segmentation probe was not MixVal
    new = old.assign(score_classmix_consistency=[0.1, 0.2, np.nan])
    assert get_selector("classmix_consistency").score_trials(new).tolist() == [0.1, 0.2, 0.5]
    classification = old.assign(task="classification")
    assert get_selector("mixval").score_trials(classification).tolist() == [0.4, 0.6, 0.5]
    with pytest.raises(SelectionSkipped):
        get_selector("classmix_consistency").score_trials(classification)
