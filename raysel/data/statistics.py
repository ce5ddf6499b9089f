"""Dataset statistics for inspecting a prepared benchmark (image counts, class pixel frequencies, mean colour).

This is a diagnostic that reads every label file it is given, including target labels; it is meant for people
and benchmark reports, never for methods or selectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysel.data.common import ImageFolderDataset, SegmentationDataset, read_rgb
from raysel.data.family import DatasetFamily
from raysel.data.labels import IGNORE_INDEX
from raysel.errors import DataError


@dataclass(frozen=True)
class SplitStatistics:
    """Statistics of one domain/split: class_fraction is per class (pixels for segmentation, images for
    classification) over all labelled units; None when the split has no labels."""

    domain: str
    split: str
    num_images: int
    mean_rgb: np.ndarray
    class_fraction: np.ndarray | None
    ignore_fraction: float | None
    image_size: tuple[int, int]


def split_statistics(dataset: SegmentationDataset | ImageFolderDataset, num_classes: int, domain: str = "",
                     split: str = "", max_images: int | None = None) -> SplitStatistics:
    """Compute SplitStatistics by reading (up to max_images of) the dataset's files at native size."""
    indices = range(len(dataset) if max_images is None else min(max_images, len(dataset)))
    colour_sum, pixel_count = np.zeros(3), 0
    counts = np.zeros(num_classes + 1, dtype=np.int64)  # last bin: ignore
    sizes: set[tuple[int, int]] = set()
    for index in indices:
        if isinstance(dataset, SegmentationDataset):
            image = np.asarray(read_rgb(dataset.items[index].image), dtype=np.float64) / 255.0
            if dataset.with_labels:
                train_ids = dataset.oracle_train_ids(index).ravel().astype(np.int64)
                counts += np.bincount(np.where(train_ids == IGNORE_INDEX, num_classes, train_ids),
                                      minlength=num_classes + 1)
        else:
            path, label = dataset.items[index]
            image = np.asarray(read_rgb(path), dtype=np.float64) / 255.0
            counts[label] += 1
        sizes.add(image.shape[:2])
        colour_sum += image.reshape(-1, 3).sum(axis=0)
        pixel_count += image.shape[0] * image.shape[1]
    labelled = counts.sum() > 0
    total = max(counts.sum(), 1)
    return SplitStatistics(
        domain=domain, split=split, num_images=len(indices), mean_rgb=colour_sum / max(pixel_count, 1),
        class_fraction=counts[:num_classes] / total if labelled else None,
        ignore_fraction=float(counts[num_classes] / total) if labelled else None,
        image_size=sorted(sizes)[0] if len(sizes) == 1 else (-1, -1),
    )


def family_statistics(family: DatasetFamily, root: Path, max_images: int | None = None) -> list[SplitStatistics]:
    """Statistics of every domain/split of a family that exists under root (labels read where present)."""
    results = []
    for domain in family.domains:
        for split in family.splits(domain):
            try:
                dataset = family.load(root, domain, split, with_labels=True)
            except DataError:
                try:  # images without labels (e.g. unlabeled target data) still get counts and colours
                    dataset = family.load(root, domain, split, with_labels=False)
                except DataError:
                    continue  # this dataset is not under root
            results.append(split_statistics(dataset, family.num_classes, domain, split, max_images))
    return results


def describe_family(family: DatasetFamily, root: Path, max_images: int | None = None) -> str:
    """Human-readable table of :func:`family_statistics` (class frequencies in percent of all pixels/images)."""
    lines = [f"dataset {family.name} ({family.task}, {family.num_classes} classes) under {root}"]
    for stats in family_statistics(family, root, max_images):
        height, width = stats.image_size
        size = f"{height}x{width}" if height > 0 else "mixed sizes"
        red, green, blue = (float(value) for value in stats.mean_rgb)
        lines.append(f"  {stats.domain}/{stats.split}: {stats.num_images} images, {size}, "
                     f"mean RGB ({red:.3f}, {green:.3f}, {blue:.3f})")
        if stats.class_fraction is None:
            lines.append("    (no labels)")
            continue
        present = [(family.class_names[c], 100 * stats.class_fraction[c]) for c in range(family.num_classes)
                   if stats.class_fraction[c] > 0]
        text = ", ".join(f"{name} {percent:.2f}%" for name, percent in present)
        if family.task == "segmentation":
            text += f"; ignore {100 * stats.ignore_fraction:.2f}%"
        lines.append(f"    classes: {text}")
    return "\n".join(lines)
