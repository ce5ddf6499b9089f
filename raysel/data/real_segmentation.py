"""The real segmentation families gta5, synthia, cityscapes and idd, registered with one shared domain set.

All four predict the 19 Cityscapes trainIds and any of them can be a source or a target, so every real
segmentation family accepts every real segmentation domain (``gta5``, ``synthia``, ``cityscapes``, ``idd``); the
family name only chooses the default benchmark: gta5 -> (cityscapes, idd) as in HDRQ, synthia -> cityscapes,
cityscapes -> GTA5->Cityscapes, idd -> GTA5->IDD. Each dataset lives in its own folder under the data root
(``<root>/gta5``, ``<root>/synthia``, ``<root>/cityscapes``, ``<root>/idd``).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from raysel.data import cityscapes, gta5, idd, synthia
from raysel.data.common import ImageSize
from raysel.data.family import DatasetFamily, dataset_directory, register_family
from raysel.data.labels import CITYSCAPES_CLASS_NAMES, NUM_SEGMENTATION_CLASSES
from raysel.data.office import require_nonempty

DOMAINS = ("gta5", "synthia", "cityscapes", "idd")
FOLDERS = {"gta5": (gta5.FOLDER, "images"), "synthia": (synthia.FOLDER, "RGB"),
           "cityscapes": (cityscapes.FOLDER, "leftImg8bit"), "idd": (idd.FOLDER, "leftImg8bit")}
# Sizes (height, width) the reference code trains at [HIAST/DAFormer configs]; callers may pass them as image_size.
STANDARD_IMAGE_SIZES = {"gta5": (720, 1280), "synthia": (760, 1280), "cityscapes": (512, 1024), "idd": (720, 1280)}
SOURCE_ONLY_DOMAINS = ("gta5", "synthia")  # no held-out split


def domain_directory(root: Path, domain: str) -> Path:
    """Where a real segmentation dataset lives: ``<root>/<folder>`` (or root itself if it is that folder)."""
    folder, probe = FOLDERS[domain]
    return dataset_directory(root, folder, probe)


def load_real_segmentation(root: Path, domain: str, split: str, with_labels: bool,
                           image_size: ImageSize | None) -> Dataset:
    """Dispatch one domain/split to its dataset's loader."""
    directory = domain_directory(root, domain)
    if domain == "gta5":
        return gta5.load_gta5(directory, with_labels, image_size)
    if domain == "synthia":
        return synthia.load_synthia(directory, with_labels, image_size)
    if domain == "cityscapes":
        return cityscapes.load_cityscapes(directory, split, with_labels, image_size)
    return idd.load_idd(directory, split, with_labels, image_size)


def _family(name: str, default_source: str, default_targets: tuple[str, ...]) -> DatasetFamily:
    return DatasetFamily(
        name=name, task="segmentation", num_classes=NUM_SEGMENTATION_CLASSES, class_names=CITYSCAPES_CLASS_NAMES,
        domains=DOMAINS, default_source=default_source, default_targets=default_targets, embedded=False,
        loader=load_real_segmentation,
        preparer=lambda root: require_nonempty(domain_directory(root, name), name),
        standard_image_sizes=STANDARD_IMAGE_SIZES,
        splits_by_domain={domain: ("train",) for domain in SOURCE_ONLY_DOMAINS},
    )


GTA5 = register_family(_family("gta5", "gta5", ("cityscapes", "idd")))
SYNTHIA = register_family(_family("synthia", "synthia", ("cityscapes",)))
CITYSCAPES = register_family(_family("cityscapes", "gta5", ("cityscapes",)))
IDD = register_family(_family("idd", "gta5", ("idd",)))
