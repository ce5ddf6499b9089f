"""Datasets: the embedded benchmarks (``street_scenes``, ``digits``) and real GTA5, SYNTHIA, Cityscapes, IDD,
Office-31 and Office-Home, all behind one :class:`DatasetFamily` interface.

Samples are dicts: ``image`` float32 [3,H,W] (ImageNet-normalised), ``label`` (int64 [H,W] trainIds with 255
ignore for segmentation, an int64 scalar for classification; only when loaded ``with_labels``), ``index``, ``name``.
"""

from __future__ import annotations

from pathlib import Path

from raysel.data.common import IMAGENET_MEAN, IMAGENET_STD, SPLITS, denormalize
from raysel.data.family import DatasetFamily, default_data_root, family_names, get_family
from raysel.data.labels import (CITYSCAPES_CLASS_NAMES, IGNORE_INDEX, NUM_SEGMENTATION_CLASSES, SYNTHIA_13_CLASSES,
                                SYNTHIA_16_CLASSES)
from raysel.data.statistics import describe_family

# Importing the family modules registers them (order = order of family_names()).
from raysel.data import street_scenes as _street_scenes  # noqa: E402,F401  isort: skip
from raysel.data import digits as _digits  # noqa: E402,F401  isort: skip
from raysel.data import real_segmentation as _real_segmentation  # noqa: E402,F401  isort: skip
from raysel.data import office as _office  # noqa: E402,F401  isort: skip

__all__ = [
    "CITYSCAPES_CLASS_NAMES", "DatasetFamily", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD",
    "NUM_SEGMENTATION_CLASSES", "SPLITS", "SYNTHIA_13_CLASSES", "SYNTHIA_16_CLASSES", "default_data_root",
    "denormalize", "describe", "family_names", "get_family", "prepare",
]


def prepare(family: DatasetFamily | str, root: Path | str | None = None) -> Path:
    """Make a family usable under root: embedded ones are generated once (deterministic, atomic, locked);
    real ones are checked to exist and be non-empty (DataError otherwise). Returns the family's folder."""
    family = get_family(family)
    return family.preparer(Path(root).expanduser() if root is not None else default_data_root())


def describe(family: DatasetFamily | str, root: Path | str | None = None) -> str:
    """Printable statistics of a prepared family: per domain/split image count, class frequencies, mean RGB."""
    family = get_family(family)
    return describe_family(family, Path(root).expanduser() if root is not None else default_data_root())
