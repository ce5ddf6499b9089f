"""Cached candidate predictions on a fixed, label-free subset of the target *training* images.

Every selector scores candidates from what they predict on the same images, so each trained candidate predicts
once (:func:`predict_subset`) and the result is cached on disk (:func:`save_predictions`). This module never reads
a label: the dataset it gets is the target train split loaded with ``with_labels=False``, and any ``label`` key a
sample might carry is ignored.

Storage format (one ``np.savez_compressed`` file per candidate, written atomically):

* ``labels``: predicted class ids, uint8 — ``[N, H, W]`` (segmentation, full prediction resolution) or ``[N]``.
* ``probabilities`` (only when asked for): softmax probabilities as float16. Classification: ``[N, C]``.
  Segmentation: ``[N, C, gh, gw]`` sampled on a regular grid of at most 16×32 pixel centres per image
  (``probability_rows`` / ``probability_cols`` say which pixels). Entropy, IM, SND and soft voting are means over
  pixels, so a fixed uniform pixel sample estimates them without bias, keeps the file size independent of the
  image resolution (≈ 19·512·2 B ≈ 19 KiB per image before compression) and keeps exact per-pixel values
  (not averaged, which would inflate the entropy at class boundaries).
* ``image_indices`` (int64, indices into the target train split), ``image_ids`` (sample names) and ``meta``
  (JSON: format version, task, num_classes) so that candidates predicted on different images or label spaces are
  detected before they are compared.

* ``features`` (format version 2, optional, kept with the probabilities): a small sample of the penultimate
  features (the input of the model's ``classifier`` module, read by a forward pre-hook), float16. Classification:
  ``[N, D]``; segmentation: ``[N, D, fh, fw]`` at every ``FEATURE_STRIDE``-th pixel of the probability grid
  (``feature_rows`` / ``feature_cols``, at most 4×8 pixels per image). Features wider than ``MAX_FEATURE_DIM`` are
  projected by a fixed seeded Gaussian matrix (Johnson–Lindenstrauss: distances, and so k-means, are kept
  approximately) so that a ResNet's 2048 channels do not bloat the cache. ``cluster_ami`` clusters them.
  Version-1 files (no features) still load; ``features`` is then None.

SND uses the softmax outputs as its features, which is the default of Saito et al.'s released code
(``layer="preds"`` in pytorch-adapt's port).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from raysel.errors import DataError

FORMAT_VERSION = 2  # 2: optional sampled penultimate features
READABLE_FORMAT_VERSIONS = (1, 2)  # version 1 is version 2 without features
FEATURE_STRIDE = 4  # features at every 4th probability-grid row and column
MAX_FEATURE_DIM = 128
TASKS = ("segmentation", "classification")
DEFAULT_PROBABILITY_GRID = (16, 32)
MAX_CLASSES = 255  # class ids are stored as uint8; 255 stays free as the ignore value
LABELS_MEMBER = "labels.npy"
# Label arrays larger than this are streamed from the file (StreamedLabels), not loaded: 16 MiB is 32 images of
# 512x1024 per candidate; selection over 40 such candidates then holds a few images of each at a time.
STREAM_LABELS_BYTES = 16 << 20
STREAM_IMAGES_PER_BATCH = 8


class StreamedLabels:
    """A prediction cache's ``labels`` array, read image by image from the ``.npz`` instead of held in memory.

    Selection at the paper's scale (40 candidates x 500 images of 512x1024: 10 GiB of labels) must stream: the fused
    vote reads one batch of images of every candidate at a time (:meth:`batches`), the probability and feature grids
    pick their pixels in one pass (:meth:`sampled`). ``np.asarray`` of it reads everything (use it only when the
    whole array is wanted anyway).
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.shape = tuple(int(size) for size in shape)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StreamedLabels({str(self.path)!r}, shape={self.shape})"

    def batches(self, images_per_batch: int) -> Iterator[np.ndarray]:
        """Yield consecutive ``[k, ...]`` uint8 batches of at most ``images_per_batch`` images, in order."""
        item_bytes = int(np.prod(self.shape[1:], dtype=np.int64))
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(LABELS_MEMBER) as member:
                _read_npy_header(member)
                for start in range(0, self.shape[0], max(1, images_per_batch)):
                    count = min(images_per_batch, self.shape[0] - start)
                    data = member.read(count * item_bytes)
                    if len(data) != count * item_bytes:
                        raise EOFError(f"labels end after {start} of {self.shape[0]} images")
                    yield np.frombuffer(data, dtype=np.uint8).reshape((count,) + self.shape[1:])
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as error:
            raise DataError(f"prediction file {self.path} is unreadable or truncated ({error})") from None

    def sampled(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Labels at pixels ``rows`` x ``cols`` of every image, ``[N, len(rows), len(cols)]``, in one streamed pass."""
        parts = [batch[:, rows][:, :, cols] for batch in self.batches(STREAM_IMAGES_PER_BATCH)]
        return np.concatenate(parts) if parts else np.empty((0, len(rows), len(cols)), dtype=np.uint8)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = np.concatenate(list(self.batches(STREAM_IMAGES_PER_BATCH)))
        return array if dtype is None else array.astype(dtype)


def _read_npy_header(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the ``.npy`` stream at ``handle``, leaving it at the first data byte."""
    version = np.lib.format.read_magic(handle)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return reader(handle)


def _labels_source(path: Path, archive: Any, stream_labels: bool | None) -> "np.ndarray | StreamedLabels":
    """The ``labels`` array, or a :class:`StreamedLabels` reader when asked to stream (``None``: when larger than
    ``STREAM_LABELS_BYTES``) and the array is C-ordered uint8 (anything else is loaded and checked as before)."""
    with archive.zip.open(LABELS_MEMBER) as member:
        shape, fortran_order, dtype = _read_npy_header(member)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    stream = size > STREAM_LABELS_BYTES if stream_labels is None else stream_labels
    if stream and not fortran_order and dtype == np.uint8 and len(shape) >= 1:
        return StreamedLabels(path, shape)
    return archive["labels"]


@dataclass(frozen=True)
class CandidatePredictions:
    """One candidate's predictions on the selection subset (see the module docstring for the arrays)."""

    labels: "np.ndarray | StreamedLabels"
    probabilities: np.ndarray | None
    image_ids: tuple[str, ...]
    image_indices: np.ndarray
    num_classes: int
    task: str
    probability_rows: np.ndarray | None = None
    probability_cols: np.ndarray | None = None
    features: np.ndarray | None = None
    feature_rows: np.ndarray | None = None
    feature_cols: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}; got {self.task!r}")
        expected_ndim = 3 if self.task == "segmentation" else 1
        if self.labels.dtype != np.uint8 or self.labels.ndim != expected_ndim:
            raise ValueError(f"{self.task} labels must be uint8 with {expected_ndim} dims; got "
                             f"{self.labels.dtype} {self.labels.shape}")
        if len(self.image_ids) != self.labels.shape[0] or len(self.image_indices) != self.labels.shape[0]:
            raise ValueError("image_ids and image_indices need one entry per image")
        if self.probabilities is not None:
            if self.probabilities.shape[:2] != (self.labels.shape[0], self.num_classes):
                raise ValueError(f"probabilities must start with [N={self.labels.shape[0]}, C={self.num_classes}]; "
                                 f"got {self.probabilities.shape}")
            if self.task == "segmentation" and (self.probability_rows is None or self.probability_cols is None):
                raise ValueError("segmentation probabilities need probability_rows/probability_cols")
        if self.features is not None:
            if self.features.shape[0] != self.labels.shape[0]:
                raise ValueError(f"features need one entry per image; got {self.features.shape}")
            if self.task == "segmentation" and (self.feature_rows is None or self.feature_cols is None):
                raise ValueError("segmentation features need feature_rows/feature_cols")

    @property
    def num_images(self) -> int:
        """Number of images in the selection subset."""
        return int(self.labels.shape[0])

    def labels_on_probability_grid(self) -> np.ndarray:
        """Hard labels at the pixels where probabilities were kept (``[N, gh, gw]``; classification: ``[N]``)."""
        if self.task == "classification":
            return self.labels
        if self.probability_rows is None or self.probability_cols is None:
            raise ValueError("no probability grid: predictions were made without keep_probabilities")
        return _labels_at(self.labels, self.probability_rows, self.probability_cols)

    def feature_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """(features float32 ``[samples, D]``, predicted labels ``[samples]``) at the pixels (images) features were
        kept for; ValueError when the cache holds no features."""
        if self.features is None:
            raise ValueError("predictions were cached without features")
        features = self.features.astype(np.float32)
        if self.task == "classification":
            return features, self.labels
        labels = _labels_at(self.labels, self.feature_rows, self.feature_cols)
        return features.transpose(0, 2, 3, 1).reshape(-1, features.shape[1]), labels.reshape(-1)

    def probability_vectors(self) -> np.ndarray:
        """Probabilities as float32 ``[N, samples_per_image, C]`` (classification: ``[N, 1, C]``)."""
        if self.probabilities is None:
            raise ValueError("predictions were made without keep_probabilities")
        probabilities = self.probabilities.astype(np.float32)
        if self.task == "classification":
            return probabilities[:, None, :]
        return probabilities.reshape(self.num_images, self.num_classes, -1).transpose(0, 2, 1)


def _labels_at(labels: "np.ndarray | StreamedLabels", rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Labels at pixels ``rows`` x ``cols`` of every image (streamed in one pass when ``labels`` is streamed)."""
    if isinstance(labels, StreamedLabels):
        return labels.sampled(rows, cols)
    return labels[:, rows][:, :, cols]


def probability_grid(height: int, width: int, grid: tuple[int, int] = DEFAULT_PROBABILITY_GRID
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a regular grid of at most ``grid`` pixel-cell centres in an ``height × width`` image."""
    grid_height, grid_width = min(grid[0], height), min(grid[1], width)
    rows = ((np.arange(grid_height) + 0.5) * height / grid_height).astype(np.int64)
    cols = ((np.arange(grid_width) + 0.5) * width / grid_width).astype(np.int64)
    return rows, cols


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
                                feature_cols=feature_cols if keep_grid else None)


def _task_of(logits: torch.Tensor) -> tuple[str, int]:
    """(task, num_classes) from the logits' shape; class ids must fit uint8."""
    if logits.ndim not in (2, 4):
        raise ValueError(f"model output must be [B, C] or [B, C, H, W] logits; got shape {tuple(logits.shape)}")
    num_classes = int(logits.shape[1])
    if num_classes > MAX_CLASSES:
        raise DataError(f"{num_classes} classes do not fit the uint8 prediction cache (at most {MAX_CLASSES})")
    return ("segmentation" if logits.ndim == 4 else "classification"), num_classes


def save_predictions(path: str | os.PathLike, predictions: CandidatePredictions) -> Path:
    """Write ``predictions`` to ``path`` (.npz, compressed) atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, "task": predictions.task, "num_classes": predictions.num_classes}
    arrays: dict[str, np.ndarray] = {
        "labels": predictions.labels,
        "image_indices": np.asarray(predictions.image_indices, dtype=np.int64),
        "image_ids": np.asarray(predictions.image_ids, dtype=np.str_),
        "meta": np.asarray(json.dumps(meta)),
    }
    if predictions.probabilities is not None:
        arrays["probabilities"] = predictions.probabilities.astype(np.float16, copy=False)
        if predictions.probability_rows is not None and predictions.probability_cols is not None:
            arrays["probability_rows"] = predictions.probability_rows
            arrays["probability_cols"] = predictions.probability_cols
    if predictions.features is not None:
        arrays["features"] = predictions.features.astype(np.float16, copy=False)
        if predictions.feature_rows is not None and predictions.feature_cols is not None:
            arrays["feature_rows"] = predictions.feature_rows
            arrays["feature_cols"] = predictions.feature_cols
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez_compressed(stream, **arrays)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def load_predictions(path: str | os.PathLike, with_probabilities: bool = True,
                     stream_labels: bool | None = None) -> CandidatePredictions:
    """Read a file written by :func:`save_predictions`; ``with_probabilities=False`` skips the probability array.

    ``stream_labels``: keep segmentation labels in the file and read them in image batches when used
    (:class:`StreamedLabels`); default: when they exceed ``STREAM_LABELS_BYTES``. A missing, truncated or foreign
    file raises DataError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prediction file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta.get("format_version") not in READABLE_FORMAT_VERSIONS:
                raise DataError(f"prediction file {path} has format version {meta.get('format_version')}; "
                                f"this raysel reads version {FORMAT_VERSION} (predict the candidates again)")
            arrays: dict[str, Any] = {key: archive[key] for key in ("image_indices", "image_ids")}
            arrays["labels"] = _labels_source(path, archive, stream_labels)
            keep = with_probabilities and "probabilities" in archive.files
            for key in ("probabilities", "probability_rows", "probability_cols"):
                arrays[key] = archive[key] if keep and key in archive.files else None
            for key in ("features", "feature_rows", "feature_cols"):
                arrays[key] = archive[key] if with_probabilities and key in archive.files else None
    except DataError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as error:
        raise DataError(f"prediction file {path} is unreadable or not a raysel prediction cache ({error})") from None
    try:
        return CandidatePredictions(labels=arrays["labels"], probabilities=arrays["probabilities"],
                                    image_ids=tuple(str(name) for name in arrays["image_ids"]),
                                    image_indices=arrays["image_indices"], num_classes=int(meta["num_classes"]),
                                    task=str(meta["task"]), probability_rows=arrays["probability_rows"],
                                    probability_cols=arrays["probability_cols"], features=arrays["features"],
                                    feature_rows=arrays["feature_rows"], feature_cols=arrays["feature_cols"])
    except (ValueError, KeyError) as error:
        raise DataError(f"prediction file {path} is inconsistent: {error}") from None
