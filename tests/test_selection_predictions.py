"""Prediction cache: the seeded subset, label-free prediction, and the compressed on-disk format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from raysel.data.common import selection_subset
from raysel.errors import DataError
from raysel.selection.inference import predict_subset
from raysel.selection.predictions import CandidatePredictions, load_predictions, probability_grid, save_predictions


class LabelTrap(dict):
    """A sample dict whose ``label`` entry fails the test if anything reads it."""

    def __getitem__(self, key):
        if key == "label":
            raise AssertionError("prediction code read a target label")
        return super().__getitem__(key)


class TinyImages(Dataset):
    """Random images with a (trapped) label, like a target split that happens to have labels."""

    def __init__(self, count: int, height: int = 12, width: int = 20, odd_size_at: int | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = [torch.randn(3, height, width + (1 if k == odd_size_at else 0), generator=generator)
                       for k in range(count)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return LabelTrap(image=self.images[index], index=index, name=f"frame_{index:03d}",
                         label=torch.zeros(1))


class PixelClassifier(nn.Module):
    """1x1 convolution: segmentation logits at input size."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ImageClassifier(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


def test_selection_subset_is_seeded_sorted_and_complete_when_small():
    subset = selection_subset(2975, size=500, seed=0)
    assert subset.shape == (500,) and np.all(np.diff(subset) > 0) and subset.max() < 2975
    np.testing.assert_array_equal(subset, selection_subset(2975, size=500, seed=0))
    assert not np.array_equal(subset, selection_subset(2975, size=500, seed=1))
    np.testing.assert_array_equal(selection_subset(7, size=500), np.arange(7))


def test_predict_subset_segmentation_never_reads_labels():
    torch.manual_seed(0)
    model = PixelClassifier().train()
    dataset = TinyImages(9)
    indices = np.array([1, 4, 5, 8])
    predictions = predict_subset(model, dataset, indices, "cpu", keep_probabilities=True, batch_size=3, grid=(4, 5))
    assert model.training  # mode restored
    assert predictions.task == "segmentation" and predictions.num_classes == 5
    assert predictions.labels.shape == (4, 12, 20) and predictions.labels.dtype == np.uint8
    assert predictions.image_ids == ("frame_001", "frame_004", "frame_005", "frame_008")
    np.testing.assert_array_equal(predictions.image_indices, indices)
    with torch.no_grad():
        logits = model.eval()(torch.stack([dataset.images[i] for i in indices]))
    np.testing.assert_array_equal(predictions.labels, logits.argmax(1).numpy())
    rows, cols = probability_grid(12, 20, (4, 5))
    np.testing.assert_array_equal(predictions.probability_rows, rows)
    expected = torch.softmax(logits, 1)[:, :, rows][:, :, :, cols].numpy()
    assert predictions.probabilities.shape == (4, 5, 4, 5) and predictions.probabilities.dtype == np.float16
    np.testing.assert_allclose(predictions.probabilities, expected, atol=1e-3)
    np.testing.assert_array_equal(predictions.labels_on_probability_grid(), predictions.labels[:, rows][:, :, cols])


def test_predict_subset_classification_and_size_errors():
    predictions = predict_subset(ImageClassifier(), TinyImages(5), [0, 2, 3], "cpu", keep_probabilities=True)
    assert predictions.task == "classification" and predictions.labels.shape == (3,)
    assert predictions.probabilities.shape == (3, 3)
    np.testing.assert_allclose(predictions.probabilities.astype(np.float32).sum(1), 1.0, atol=1e-2)
    with pytest.raises(DataError, match="differ in size"):
        predict_subset(PixelClassifier(), TinyImages(4, odd_size_at=2), [0, 1, 2, 3], "cpu", batch_size=4)
    with pytest.raises(DataError, match="give predictions of shape"):
        predict_subset(PixelClassifier(), TinyImages(4, odd_size_at=2), [0, 1, 2, 3], "cpu", batch_size=1)


def test_save_load_round_trip(tmp_path):
    predictions = predict_subset(PixelClassifier(), TinyImages(6), [0, 3, 5], "cpu", keep_probabilities=True)
    path = save_predictions(tmp_path / "trial" / "predictions.npz", predictions)
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.npz"]  # no temp file left behind
    loaded = load_predictions(path)
    for field in ("labels", "probabilities", "image_indices", "probability_rows", "probability_cols"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(predictions, field))
    assert loaded.image_ids == predictions.image_ids
    assert (loaded.num_classes, loaded.task) == (5, "segmentation")
    assert load_predictions(path, with_probabilities=False).probabilities is None
    labels_only = predict_subset(PixelClassifier(), TinyImages(6), [0, 3, 5], "cpu")
    assert load_predictions(save_predictions(tmp_path / "labels.npz", labels_only)).probabilities is None


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_predictions(tmp_path / "missing.npz")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match="broken.npz is unreadable"):
        load_predictions(broken)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, meta=np.asarray('{"format_version": 99}'))
    with pytest.raises(DataError, match="format version 99"):
        load_predictions(foreign)


def test_candidate_predictions_validates_shapes():
    with pytest.raises(ValueError, match="uint8"):
        CandidatePredictions(labels=np.zeros((2, 3, 3), dtype=np.int64), probabilities=None, image_ids=("a", "b"),
                             image_indices=np.arange(2), num_classes=3, task="segmentation")
    with pytest.raises(ValueError, match="one entry per image"):
        CandidatePredictions(labels=np.zeros(2, dtype=np.uint8), probabilities=None, image_ids=("a",),
                             image_indices=np.arange(2), num_classes=3, task="classification")


def test_cache_candidate_predictions_predicts_the_runs_seeded_subset(tmp_path):
    """The one implementation a trial and a re-prediction task share: seeded subset, spec's probability switch."""
    from types import SimpleNamespace

    from raysel.execution.prediction_cache import cache_candidate_predictions

    model = PixelClassifier()
    dataset = TinyImages(9)
    spec = SimpleNamespace(selection_size=4, selection_seed=3, keep_probabilities=False)
    ctx = SimpleNamespace(spec=spec, device=torch.device("cpu"), target_dataset=lambda: dataset)
    path = cache_candidate_predictions(model, ctx, tmp_path / "trial" / "predictions.npz")
    assert path == tmp_path / "trial" / "predictions.npz"
    cached = load_predictions(path)
    expected = predict_subset(model, dataset, selection_subset(9, size=4, seed=3), "cpu")
    np.testing.assert_array_equal(cached.labels, expected.labels)
    np.testing.assert_array_equal(cached.image_indices, selection_subset(9, size=4, seed=3))
    assert cached.probabilities is None


class NonFiniteOn(nn.Module):
    """ImageClassifier whose logits are NaN for the images at ``broken`` positions of every batch."""

    def __init__(self, broken: slice) -> None:
        super().__init__()
        self.inner, self.broken = ImageClassifier(), broken

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x).clone()
        logits[self.broken] = float("nan")
        return logits


def test_non_finite_outputs_are_counted_and_survive_the_cache_without_probabilities(tmp_path):
    """fmiou loads no probabilities, so the cache itself must say that a candidate's outputs were not finite."""
    from raysel.selection.selectors import get_selector

    dataset = TinyImages(6)
    broken = predict_subset(NonFiniteOn(slice(0, 1)), dataset, np.arange(6), "cpu", batch_size=3)
    assert broken.nonfinite_images == 2 and predict_subset(ImageClassifier(), dataset, np.arange(6),
                                                           "cpu").nonfinite_images == 0
    loaded = load_predictions(save_predictions(tmp_path / "b.npz", broken), with_probabilities=False)
    assert loaded.nonfinite_images == 2 and loaded.probabilities is None
    healthy = [predict_subset(ImageClassifier(), dataset, np.arange(6), "cpu") for _ in range(2)]
    scores = get_selector("fmiou").score(healthy + [loaded])
    assert np.isnan(scores[2]) and np.isfinite(scores[:2]).all()
