"""Cityscapes: ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (label ids -> trainIds via cityscapesscripts).

raysel's ``train`` split is Cityscapes ``train`` (the unlabeled target training images) and ``heldout`` is
Cityscapes ``val`` (the evaluation split every UDA paper reports on).
"""

from __future__ import annotations

from pathlib import Path

from raysel.data.common import (ImageSize, SegmentationDataset, SegmentationItem, find_images, missing_labels_error,
                                require_directory)
from raysel.data.labels import cityscapes_mapping
from raysel.errors import DataError

FOLDER = "cityscapes"
SPLIT_FOLDERS = {"train": "train", "heldout": "val"}
IMAGE_SUFFIX = "_leftImg8bit"
LABEL_SUFFIX = "_gtFine_labelIds.png"
LAYOUT = ("<root>/cityscapes/leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
          "gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png")


def cityscapes_style_items(dataset_dir: Path, split_folder: str, with_labels: bool, label_suffixes: tuple[str, ...],
                           dataset: str, layout: str) -> list[SegmentationItem]:
    """Images ``leftImg8bit/<split>/<group>/<stem>_leftImg8bit.*`` paired with the first existing
    ``gtFine/<split>/<group>/<stem><suffix>`` (Cityscapes and IDD share this layout)."""
    layout = layout.format(split=split_folder)
    image_dir = require_directory(dataset_dir / "leftImg8bit" / split_folder, f"{dataset} image (expected {layout})")
    images = [path for path in find_images(image_dir, recursive=True) if path.stem.endswith(IMAGE_SUFFIX)]
    if not images:
        raise DataError(f"{dataset}: no *{IMAGE_SUFFIX} images found under {image_dir} (expected {layout})")
    items: list[SegmentationItem] = []
    missing: list[tuple[Path, Path]] = []
    label_root = dataset_dir / "gtFine" / split_folder
    for path in images:
        stem = path.stem[: -len(IMAGE_SUFFIX)]
        label = None
        if with_labels:
            label_dir = label_root / path.parent.relative_to(image_dir)
            candidates = [label_dir / (stem + suffix) for suffix in label_suffixes]
            label = next((candidate for candidate in candidates if candidate.is_file()), None)
            if label is None:
                missing.append((path, candidates[0]))
        items.append(SegmentationItem(image=path, label=label, name=stem))
    if missing:
        raise missing_labels_error(missing, dataset)
    return items


def load_cityscapes(dataset_dir: Path, split: str, with_labels: bool, image_size: ImageSize | None
                    ) -> SegmentationDataset:
    """Cityscapes ``train`` (split "train") or ``val`` (split "heldout") as a segmentation dataset."""
    split_folder = SPLIT_FOLDERS[split]
    items = cityscapes_style_items(dataset_dir, split_folder, with_labels, (LABEL_SUFFIX,), "Cityscapes", LAYOUT)
    return SegmentationDataset(items, cityscapes_mapping(), with_labels, image_size,
                               description=f"Cityscapes {split_folder} at {dataset_dir}")
