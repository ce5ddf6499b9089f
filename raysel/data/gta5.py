"""GTA5 (Richter et al. 2016): ``<root>/gta5/images/00001.png`` with ``labels/00001.png`` holding Cityscapes label ids.

GTA5 has no official held-out split in UDA use: all 24,966 frames are the labelled source set, so the only split
is ``train``. Label PNGs are palette images whose indices are Cityscapes label ids; they map to trainIds through
the cityscapesscripts table (:func:`raysel.data.labels.cityscapes_mapping`).
"""

from __future__ import annotations

from pathlib import Path

from raysel.data.common import (ImageSize, SegmentationDataset, SegmentationItem, find_images, missing_labels_error,
                                require_directory)
from raysel.data.labels import cityscapes_mapping
from raysel.errors import DataError

FOLDER = "gta5"
LAYOUT = "<root>/gta5/images/<nnnnn>.png and <root>/gta5/labels/<nnnnn>.png"


def gta5_items(dataset_dir: Path, with_labels: bool) -> list[SegmentationItem]:
    """Pair every image with its same-named label file; missing labels raise one DataError (eagerly)."""
    image_dir = require_directory(dataset_dir / "images", f"GTA5 image (expected {LAYOUT})")
    images = find_images(image_dir)
    if not images:
        raise DataError(f"GTA5: no images found in {image_dir} (expected {LAYOUT})")
    if not with_labels:
        return [SegmentationItem(image=path, label=None, name=path.stem) for path in images]
    label_dir = require_directory(dataset_dir / "labels", f"GTA5 label (expected {LAYOUT})")
    items = [SegmentationItem(image=path, label=label_dir / (path.stem + ".png"), name=path.stem) for path in images]
    missing = [(item.image, item.label) for item in items if not item.label.is_file()]
    if missing:
        raise missing_labels_error(missing, "GTA5")
    return items


def load_gta5(dataset_dir: Path, with_labels: bool, image_size: ImageSize | None) -> SegmentationDataset:
    """The GTA5 frames under dataset_dir as a segmentation dataset with Cityscapes trainIds."""
    return SegmentationDataset(gta5_items(dataset_dir, with_labels), cityscapes_mapping(), with_labels, image_size,
                               description=f"GTA5 at {dataset_dir}")
