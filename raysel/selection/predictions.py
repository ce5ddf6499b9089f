"""Cached candidate predictions on a fixed, label-free subset of the target *training* images.

Every selector scores candidates from what they predict on the same images, so each trained candidate predicts
once (:func:`raysel.selection.inference.predict_subset`) and the result is cached on disk (:func:`save_predictions`).
This module is the cache: its format, writing and reading, with numpy only, so that selection from cached outputs
(``raysel select`` without ``--repredict``) never imports torch; running a model lives in
:mod:`raysel.selection.inference`. No label is read: the dataset predicted is the target train split loaded with
``with_labels=False``, and any ``label`` key a sample might carry is ignored.

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
* ``meta["nonfinite_images"]`` (optional): how many images gave a NaN or infinite logit when predicted. Such a
  candidate's argmax labels are meaningless (class 0), and selectors that read labels only (F-mIoU) could not tell
  otherwise; they leave it out (:func:`raysel.selection.guards.finite_candidates`). Absent in older files: 0.

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
from typing import Any, Iterator

import numpy as np

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
    nonfinite_images: int = 0  # images whose logits were not all finite when predicted

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


def save_predictions(path: str | os.PathLike, predictions: CandidatePredictions) -> Path:
    """Write ``predictions`` to ``path`` (.npz, compressed) atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, "task": predictions.task, "num_classes": predictions.num_classes,
            "nonfinite_images": int(predictions.nonfinite_images)}
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
    return save_npz_atomically(path, arrays)


def save_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as a compressed .npz at ``path`` through a temporary file and a rename, so a killed writer
    never leaves a truncated cache that a selector would read."""
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
                                    feature_rows=arrays["feature_rows"], feature_cols=arrays["feature_cols"],
                                    nonfinite_images=int(meta.get("nonfinite_images", 0)))
    except (ValueError, KeyError) as error:
        raise DataError(f"prediction file {path} is inconsistent: {error}") from None
