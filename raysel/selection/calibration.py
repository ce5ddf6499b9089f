"""The source-validation calibration cache: one candidate's softmax outputs on labelled *source* held-out images.

ATC (:mod:`raysel.selection.estimate`) fits its confidence threshold on it. A trial writes it next to its prediction
cache (:func:`raysel.execution.prediction_cache.cache_candidate_predictions`) when the source has a validation split of
its own. Selection reads it with numpy only, like the prediction cache (:mod:`raysel.selection.predictions`).
Source labels are allowed here. Since format 2 the file also keeps the source labels, from which the estimate takes
the source class prior (its bound on what a candidate with a lopsided prediction can score; format-1 files, which
kept only whether each prediction was right, still load, without labels).

Storage format (one ``np.savez_compressed`` file, ``source_calibration.npz``, written atomically): ``probabilities``
float16 ``[M, C]``, ``predicted`` uint8 ``[M]``, ``correct`` bool ``[M]``, ``image_of`` int64 ``[M]``, ``labels`` uint8
``[M]`` (format 2) and ``meta`` (JSON: format version, task, number of images, source domain). A sample is an image
(classification) or a pixel of the probability grid (segmentation).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysel.errors import DataError
from raysel.selection.predictions import save_npz_atomically

__all__ = ["CALIBRATION_FILE", "CALIBRATION_FORMAT_VERSION", "SourceCalibration", "calibration_path",
           "save_calibration", "load_calibration"]

CALIBRATION_FILE = "source_calibration.npz"  # next to the trial's predictions.npz
CALIBRATION_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)  # format 1 has no labels


@dataclass(frozen=True)
class SourceCalibration:
    """One candidate's softmax outputs on labelled *source* validation samples: what ATC fits its threshold on.

    A sample is an image (classification) or a pixel of the probability grid (segmentation; pixels labelled
    ``ignore`` are left out). ``image_of`` says which validation image each sample comes from, so that the bootstrap
    resamples images, not pixels.
    """

    probabilities: np.ndarray  # float16 [M, C]
    predicted: np.ndarray  # uint8 [M]: the argmax of the full-precision logits
    correct: np.ndarray  # bool [M]: predicted == the source label
    image_of: np.ndarray  # int64 [M] in [0, num_images)
    num_images: int
    task: str
    source: str = ""
    labels: np.ndarray | None = None  # uint8 [M]: the source labels (None when read from a format-1 file)

    def __post_init__(self) -> None:
        samples = self.probabilities.shape[0] if self.probabilities.ndim == 2 else -1
        if samples < 0 or not (len(self.predicted) == len(self.correct) == len(self.image_of) == samples):
            raise ValueError(f"a calibration needs [M, C] probabilities and M predicted/correct/image_of entries; got "
                             f"{self.probabilities.shape}, {len(self.predicted)}, {len(self.correct)}, "
                             f"{len(self.image_of)}")
        if self.labels is not None and len(self.labels) != samples:
            raise ValueError(f"a calibration needs one label per sample; got {len(self.labels)} for {samples}")
        if samples and (int(self.image_of.min()) < 0 or int(self.image_of.max()) >= self.num_images):
            raise ValueError(f"image_of must lie in [0, {self.num_images})")

    @property
    def num_classes(self) -> int:
        """Classes of the candidate's label space."""
        return int(self.probabilities.shape[1])

    @property
    def accuracy(self) -> float:
        """The candidate's source-validation accuracy (pixel accuracy on the grid for segmentation)."""
        return float(self.correct.mean()) if len(self.correct) else math.nan

    @property
    def class_prior(self) -> np.ndarray | None:
        """The share of source-validation samples of each class (None without labels or samples)."""
        if self.labels is None or not len(self.labels):
            return None
        counts = np.bincount(self.labels.astype(np.int64), minlength=self.num_classes)[:self.num_classes]
        return counts / len(self.labels)


def calibration_path(predictions_path: str | os.PathLike) -> Path:
    """Where a trial keeps its calibration cache: next to its prediction cache."""
    return Path(predictions_path).with_name(CALIBRATION_FILE)


def save_calibration(path: str | os.PathLike, calibration: SourceCalibration) -> Path:
    """Write ``calibration`` to ``path`` (.npz, compressed) atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": CALIBRATION_FORMAT_VERSION, "task": calibration.task,
            "num_images": int(calibration.num_images), "source": calibration.source}
    arrays = {"probabilities": calibration.probabilities.astype(np.float16, copy=False),
              "predicted": calibration.predicted.astype(np.uint8, copy=False),
              "correct": calibration.correct.astype(bool, copy=False),
              "image_of": calibration.image_of.astype(np.int64, copy=False), "meta": np.asarray(json.dumps(meta))}
    if calibration.labels is not None:
        arrays["labels"] = calibration.labels.astype(np.uint8, copy=False)
    return save_npz_atomically(path, arrays)


def load_calibration(path: str | os.PathLike) -> SourceCalibration:
    """Read a file written by :func:`save_calibration`; a missing, truncated or foreign file raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta.get("format_version") not in READABLE_FORMAT_VERSIONS:
                raise DataError(f"calibration file {path} has format version {meta.get('format_version')}; this "
                                f"raysel reads versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}")
            arrays = {key: archive[key] for key in ("probabilities", "predicted", "correct", "image_of")}
            labels = archive["labels"] if "labels" in archive.files else None
        return SourceCalibration(**arrays, num_images=int(meta["num_images"]), task=str(meta["task"]),
                                 source=str(meta.get("source", "")), labels=labels)
    except DataError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as error:
        raise DataError(f"calibration file {path} is unreadable or inconsistent ({error})") from None
