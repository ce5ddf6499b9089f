"""Run a candidate model over the label-free selection subset once and return its predictions for the cache.

The torch half of the prediction cache (:mod:`raysel.selection.predictions` holds the format, with numpy only):
:func:`predict_subset` is called by every trial and by re-prediction
(:func:`raysel.execution.prediction_cache.cache_candidate_predictions`); selection itself only reads the cached files,
so it never needs this module or torch. No label is read: only the ``image``, ``index`` and ``name`` keys of a sample.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from raysel.errors import DataError
from raysel.selection.predictions import (DEFAULT_PROBABILITY_GRID, FEATURE_STRIDE, MAX_CLASSES, MAX_FEATURE_DIM,
                                          CandidatePredictions, probability_grid)

__all__ = ["predict_subset", "FeatureRecorder"]


def _image_batches(dataset: Dataset, indices: np.ndarray, batch_size: int, num_workers: int
                   ) -> Iterator[tuple[torch.Tensor, list[int], list[str]]]:
    """Yield (images, dataset indices, names) batches; only the ``image``, ``index`` and ``name`` keys are read."""
    loader = DataLoader(Subset(dataset, [int(i) for i in indices]), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=list)
    for samples in loader:
        shapes = {tuple(sample["image"].shape) for sample in samples}
        if len(shapes) != 1:
            raise DataError(f"images {[s['name'] for s in samples]} differ in size {sorted(shapes)}; predictions "
                            "need one image size (load the dataset with image_size=(height, width))")
        images = torch.stack([sample["image"] for sample in samples])
        yield images, [int(sample["index"]) for sample in samples], [str(sample["name"]) for sample in samples]


@torch.inference_mode()
def predict_subset(model: torch.nn.Module, dataset: Dataset, indices: Sequence[int] | np.ndarray,
                   device: torch.device | str, keep_probabilities: bool = False, batch_size: int = 8,
                   grid: tuple[int, int] = DEFAULT_PROBABILITY_GRID, num_workers: int = 0,
                   keep_features: bool = False) -> CandidatePredictions:
    """Predict the images ``indices`` of ``dataset`` (target train split, no labels) once; return them compactly.

    The task follows from the logits: ``[B, C, H, W]`` is segmentation, ``[B, C]`` classification. The model is
    put in eval mode for the pass and its previous mode restored afterwards. ``keep_features`` also keeps a sample
    of the classifier's input features (see the module docstring) when the model has a ``classifier`` module.
    """
    recorder = FeatureRecorder(model) if keep_features else None
    try:
        predictions = _predict(model, dataset, indices, device, keep_probabilities, batch_size, grid, num_workers,
                               recorder)
    finally:
        if recorder is not None:
            recorder.remove()
    return predictions


class FeatureRecorder:
    """Forward pre-hook on ``model.classifier`` that keeps the last batch of its input (the penultimate features)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.last: torch.Tensor | None = None
        classifier = getattr(getattr(model, "module", model), "classifier", None)
        self.handle = (classifier.register_forward_pre_hook(self._keep)
                       if isinstance(classifier, torch.nn.Module) else None)

    def _keep(self, module: torch.nn.Module, inputs: tuple) -> None:
        self.last = inputs[0].detach() if inputs and isinstance(inputs[0], torch.Tensor) else None

    def sample(self, rows: np.ndarray | None, cols: np.ndarray | None, height: int, width: int) -> np.ndarray | None:
        """The kept batch at the prediction pixels ``rows`` × ``cols`` (nearest feature cell), projected; or None."""
        if self.handle is None or self.last is None:
            return None
        features = self.last.float()
        if features.ndim == 4:
            feature_rows = np.rint(rows * (features.shape[2] - 1) / max(height - 1, 1)).astype(np.int64)
            feature_cols = np.rint(cols * (features.shape[3] - 1) / max(width - 1, 1)).astype(np.int64)
            features = features[:, :, torch.from_numpy(feature_rows).to(features.device)]
            features = features[:, :, :, torch.from_numpy(feature_cols).to(features.device)]
        elif features.ndim != 2:
            return None
        if features.shape[1] > MAX_FEATURE_DIM:
            projection = torch.randn(features.shape[1], MAX_FEATURE_DIM, generator=torch.Generator().manual_seed(0))
            projection = (projection / MAX_FEATURE_DIM ** 0.5).to(features.device)
            features = torch.movedim(torch.movedim(features, 1, -1) @ projection, -1, 1)
        return features.to(torch.float16).cpu().numpy()

    def remove(self) -> None:
        """Detach the hook (the model is left as it was)."""
        if self.handle is not None:
            self.handle.remove()


def _predict(model: torch.nn.Module, dataset: Dataset, indices: Sequence[int] | np.ndarray,
             device: torch.device | str, keep_probabilities: bool, batch_size: int, grid: tuple[int, int],
             num_workers: int, recorder: "FeatureRecorder | None") -> CandidatePredictions:
    """The prediction pass behind :func:`predict_subset`."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise DataError("the selection subset is empty: the target training split has no images")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    labels = probabilities = rows = cols = feature_rows = feature_cols = None
    feature_batches: list[np.ndarray] = []
    names: list[str] = []
    dataset_indices: list[int] = []
    task = ""
    num_classes = 0
    nonfinite_images = 0  # recorded in the cache: selectors that read labels only must leave such a candidate out
    try:
        for images, batch_indices, batch_names in _image_batches(dataset, indices, batch_size, num_workers):
            logits = model(images.to(device)).float()
            if labels is None:
                task, num_classes = _task_of(logits)
                labels = np.empty((indices.size,) + tuple(logits.shape[2:]), dtype=np.uint8)
                if keep_probabilities and task == "segmentation":
                    rows, cols = probability_grid(logits.shape[2], logits.shape[3], grid)
                    probabilities = np.empty((indices.size, num_classes, rows.size, cols.size), dtype=np.float16)
                elif keep_probabilities:
                    probabilities = np.empty((indices.size, num_classes), dtype=np.float16)
                if task == "segmentation":
                    grid_rows, grid_cols = probability_grid(logits.shape[2], logits.shape[3], grid)
                    feature_rows, feature_cols = grid_rows[::FEATURE_STRIDE], grid_cols[::FEATURE_STRIDE]
            if tuple(logits.shape[1:]) != (num_classes,) + labels.shape[1:]:
                raise DataError(f"images {batch_names} give predictions of shape {tuple(logits.shape[1:])}, "
                                f"others {(num_classes,) + labels.shape[1:]}; use one image size")
            start = len(names)
            stop = start + logits.shape[0]
            labels[start:stop] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
            nonfinite_images += int((~torch.isfinite(logits).flatten(1).all(dim=1)).sum())
            if recorder is not None:
                sampled = recorder.sample(feature_rows, feature_cols, logits.shape[-2] if task == "segmentation"
                                          else 1, logits.shape[-1] if task == "segmentation" else 1)
                if sampled is not None:
                    feature_batches.append(sampled)
            if probabilities is not None:
                if task == "segmentation":
                    logits = logits[:, :, torch.from_numpy(rows).to(device)][:, :, :, torch.from_numpy(cols).to(device)]
                probabilities[start:stop] = torch.softmax(logits, dim=1).to(torch.float16).cpu().numpy()
            names.extend(batch_names)
            dataset_indices.extend(batch_indices)
    finally:
        model.train(was_training)
    assert labels is not None
    features = np.concatenate(feature_batches) if feature_batches and sum(
        len(batch) for batch in feature_batches) == indices.size else None
    keep_grid = features is not None and task == "segmentation"
    return CandidatePredictions(labels=labels, probabilities=probabilities, image_ids=tuple(names),
                                image_indices=np.asarray(dataset_indices, dtype=np.int64), num_classes=num_classes,
                                task=task, probability_rows=rows, probability_cols=cols, features=features,
                                feature_rows=feature_rows if keep_grid else None,
                                feature_cols=feature_cols if keep_grid else None, nonfinite_images=nonfinite_images)


def _task_of(logits: torch.Tensor) -> tuple[str, int]:
    """(task, num_classes) from the logits' shape; class ids must fit uint8."""
    if logits.ndim not in (2, 4):
        raise ValueError(f"model output must be [B, C] or [B, C, H, W] logits; got shape {tuple(logits.shape)}")
    num_classes = int(logits.shape[1])
    if num_classes > MAX_CLASSES:
        raise DataError(f"{num_classes} classes do not fit the uint8 prediction cache (at most {MAX_CLASSES})")
    return ("segmentation" if logits.ndim == 4 else "classification"), num_classes
