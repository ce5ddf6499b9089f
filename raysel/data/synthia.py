"""SYNTHIA-RAND-CITYSCAPES: ``<root>/synthia/RGB/0000000.png`` with ``GT/LABELS/0000000.png``, a 16-bit PNG whose
first channel is the SYNTHIA class id (0-22) and second the instance id. Like GTA5 it is a source-only dataset
(split ``train``). Evaluate SYNTHIA->Cityscapes on :data:`SYNTHIA_16_CLASSES` / :data:`SYNTHIA_13_CLASSES`.
"""

from __future__ import annotations

from pathlib import Path

from raysel.data.common import (ImageSize, SegmentationDataset, SegmentationItem, find_images, missing_labels_error,
                                read_png_channel0_16bit, require_directory)
from raysel.data.labels import SYNTHIA_13_CLASSES, SYNTHIA_16_CLASSES, synthia_mapping
from raysel.errors import DataError

__all__ = ["FOLDER", "SYNTHIA_13_CLASSES", "SYNTHIA_16_CLASSES", "load_synthia", "synthia_items"]

FOLDER = "synthia"
LAYOUT = "<root>/synthia/RGB/<nnnnnnn>.png and <root>/synthia/GT/LABELS/<nnnnnnn>.png (16-bit, id in channel 0)"


def synthia_items(dataset_dir: Path, with_labels: bool) -> list[SegmentationItem]:
    """Pair ``RGB/<name>.png`` with ``GT/LABELS/<name>.png``; missing labels raise one DataError (eagerly)."""
    image_dir = require_directory(dataset_dir / "RGB", f"SYNTHIA image (expected {LAYOUT})")
    images = find_images(image_dir)
    if not images:
        raise DataError(f"SYNTHIA: no images found in {image_dir} (expected {LAYOUT})")
    if not with_labels:
        return [SegmentationItem(image=path, label=None, name=path.stem) for path in images]
    label_dir = require_directory(dataset_dir / "GT" / "LABELS", f"SYNTHIA label (expected {LAYOUT})")
    items = [SegmentationItem(image=path, label=label_dir / (path.stem + ".png"), name=path.stem) for path in images]
    missing = [(item.image, item.label) for item in items if not item.label.is_file()]
    if missing:
        raise missing_labels_error(missing, "SYNTHIA")
    return items


def load_synthia(dataset_dir: Path, with_labels: bool, image_size: ImageSize | None) -> SegmentationDataset:
    """SYNTHIA-RAND-CITYSCAPES as a segmentation dataset with Cityscapes trainIds."""
    return SegmentationDataset(synthia_items(dataset_dir, with_labels), synthia_mapping(), with_labels, image_size,
                               description=f"SYNTHIA at {dataset_dir}", label_reader=read_png_channel0_16bit)
