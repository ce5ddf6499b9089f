"""Shared data pieces: safe image/label reading, the segmentation and image-folder datasets, and transforms.

Every file read goes through :func:`read_rgb` / :func:`read_label_ids`, which turn any PIL/decoder failure into a
:class:`~raysel.errors.DataError` naming the file, so a corrupt file fails with context instead of an opaque
exception deep inside a DataLoader worker. Index building (listing files, pairing images with labels) happens
eagerly in the dataset constructors, where errors are cheap to find; decoding is lazy, per sample.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from raysel.conventions import IMAGENET_MEAN, IMAGENET_STD
from raysel.data.labels import LabelMapping
from raysel.errors import DataError, unknown_name_error

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
SPLITS = ("train", "heldout")

ImageSize = tuple[int, int]  # (height, width)


# ----------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------


def read_rgb(path: Path) -> Image.Image:
    """Decode an image file fully into an RGB PIL image; any decoder failure becomes a DataError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()  # force decoding now: a truncated file fails here, not later in a transform
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... for bad files
        raise DataError(f"cannot read image file {path}: {error}") from error


@contextlib.contextmanager
def label_read_errors(path: Path) -> Iterator[None]:
    """Turn any failure while reading a label file into one DataError that names the file."""
    try:
        yield
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"label file {path} does not exist") from None
    except Exception as error:
        raise DataError(f"cannot read label file {path}: {error}") from error


def read_label_ids(path: Path) -> np.ndarray:
    """Decode a single-channel (8/16-bit or palette) label PNG into its raw ids; errors name the file."""
    with label_read_errors(path), Image.open(path) as image:
        image.load()
        if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise DataError(f"label file {path} has image mode {image.mode}; expected a single-channel "
                            "id image (mode L, P or I;16)")
        # Palette images keep their indices (GTA5 labels are palette PNGs whose indices are label ids).
        return np.array(image)


def read_png_channel0_16bit(path: Path) -> np.ndarray:
    """Channel 0 of a 16-bit RGB(A) PNG at full precision (SYNTHIA GT), as uint16; errors name the file.

    Pillow reduces 16-bit-per-channel colour PNGs to 8 bits by keeping the high byte, which would turn every
    SYNTHIA class id (< 256) into 0. The PNG decoder is run twice with the big- and little-endian 16-bit raw
    modes, which unfilter identically (same 48/64 bits per pixel) and keep the high and the low byte
    respectively; their combination is the exact 16-bit value. Single-channel and 8-bit files are read as is.
    """
    with label_read_errors(path):
        with Image.open(path) as probe:
            tile = probe.tile[0] if probe.tile else None
            rawmode = tile.args if tile is not None and isinstance(tile.args, str) else None
            if probe.format != "PNG" or rawmode not in ("RGB;16B", "RGBA;16B"):
                probe.load()
                array = np.array(probe)
                return (array[..., 0] if array.ndim == 3 else array).astype(np.uint16)
        high = _decode_png_with_rawmode(path, rawmode)
        low = _decode_png_with_rawmode(path, rawmode[:-1] + "L")
        return (high[..., 0].astype(np.uint16) << 8) | low[..., 0].astype(np.uint16)


def _decode_png_with_rawmode(path: Path, rawmode: str) -> np.ndarray:
    """Decode a PNG with a replaced unpacker raw mode (see read_png_channel0_16bit)."""
    with Image.open(path) as image:
        image.tile = [tile._replace(args=rawmode) for tile in image.tile]
        image.load()
        return np.array(image)


def find_images(directory: Path, recursive: bool = False) -> list[Path]:
    """Image files (by extension, case-insensitive) under a directory, sorted for a stable sample order."""
    pattern = "**/*" if recursive else "*"
    return sorted(path for path in directory.glob(pattern)
                  if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())


def require_directory(path: Path, what: str) -> Path:
    """Return path if it is an existing directory, else raise DataError naming it and what was expected."""
    if not path.is_dir():
        raise DataError(f"{what} directory {path} does not exist")
    return path


def missing_labels_error(missing: Sequence[tuple[Path, Path]], dataset: str) -> DataError:
    """One DataError listing (some of) the images whose label file is missing."""
    shown = "; ".join(f"{label} (for image {image})" for image, label in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return DataError(f"{dataset}: {len(missing)} label file(s) missing: {shown}{more}")


# ----------------------------------------------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------------------------------------------


def image_to_tensor(image: Image.Image, image_size: ImageSize | None) -> torch.Tensor:
    """PIL RGB -> float32 [3,H,W], resized (bilinear, antialiased) when asked, normalised with ImageNet stats."""
    tensor = TF.pil_to_tensor(image)
    if image_size is not None and tuple(tensor.shape[-2:]) != tuple(image_size):
        tensor = TF.resize(tensor, list(image_size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    tensor = TF.to_dtype(tensor, torch.float32, scale=True)
    return TF.normalize(tensor, list(IMAGENET_MEAN), list(IMAGENET_STD))


def label_to_tensor(train_ids: np.ndarray, image_size: ImageSize | None) -> torch.Tensor:
    """trainId map -> int64 [H,W], resized with nearest neighbour (never interpolating class ids)."""
    tensor = torch.from_numpy(np.ascontiguousarray(train_ids, dtype=np.uint8))[None]
    if image_size is not None and tuple(tensor.shape[-2:]) != tuple(image_size):
        tensor = TF.resize(tensor, list(image_size), interpolation=TF.InterpolationMode.NEAREST)
    return tensor[0].to(torch.int64)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation: float [3,H,W] or [B,3,H,W] back to [0,1] RGB (for statistics and viewing)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype).view(3, 1, 1)
    return image * std + mean


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentationItem:
    """One image with (optionally) its label file and the reader/mapping that turns the file into trainIds."""

    image: Path
    label: Path | None
    name: str


LabelReader = Callable[[Path], np.ndarray]


class SegmentationDataset(Dataset):
    """Image + label-id files -> samples ``dict(image, label, index, name)`` with Cityscapes trainIds.

    ``label`` is present only when ``with_labels`` is true; without labels no label path is ever opened.
    """

    def __init__(self, items: Sequence[SegmentationItem], mapping: LabelMapping | None, with_labels: bool,
                 image_size: ImageSize | None, description: str,
                 label_reader: LabelReader = read_label_ids,
                 mappings_by_suffix: dict[str, LabelMapping] | None = None) -> None:
        if not items:
            raise DataError(f"{description}: no images found")
        self.items = list(items)
        self.mapping = mapping
        self.mappings_by_suffix = mappings_by_suffix or {}
        self.with_labels = with_labels
        self.image_size = tuple(image_size) if image_size is not None else None
        self.description = description
        self.label_reader = label_reader

    def __len__(self) -> int:
        return len(self.items)

    def _mapping_for(self, label_path: Path) -> LabelMapping:
        """The label table for a file: by file-name suffix when the dataset mixes label kinds (IDD)."""
        for suffix, mapping in self.mappings_by_suffix.items():
            if label_path.name.endswith(suffix):
                return mapping
        assert self.mapping is not None, "a label mapping is required when reading labels"
        return self.mapping

    def oracle_train_ids(self, index: int) -> np.ndarray:
        """The trainId map of one sample at native size, without decoding the image (for held-out evaluation and
        statistics: methods and selectors must not call this on target data)."""
        label_path = self.items[index].label
        assert label_path is not None, "dataset was built without label files"
        return self._mapping_for(label_path).to_train_ids(self.label_reader(label_path), label_path)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        image = read_rgb(item.image)
        sample = {"image": image_to_tensor(image, self.image_size), "index": index, "name": item.name}
        if self.with_labels:
            train_ids = self.oracle_train_ids(index)
            if train_ids.shape != (image.height, image.width):
                raise DataError(f"label file {item.label} has size {train_ids.shape[1]}x{train_ids.shape[0]} but "
                                f"image {item.image} has size {image.width}x{image.height}")
            sample["label"] = label_to_tensor(train_ids, self.image_size)
        return sample


class ImageFolderDataset(Dataset):
    """``<directory>/<class>/<image>`` folders (Office-31/Office-Home style) -> ``dict(image, label, index, name)``.

    Class indices come from the family's fixed class list (not from the folders found), so every domain agrees on
    them even when a domain lacks a class. A folder that is not a known class name is a DataError. The label is
    the folder name; with ``with_labels=False`` it is simply not returned.
    """

    def __init__(self, directory: Path, class_names: Sequence[str], with_labels: bool, image_size: ImageSize,
                 description: str) -> None:
        require_directory(directory, description)
        class_index = {name: index for index, name in enumerate(class_names)}
        items: list[tuple[Path, int]] = []
        for class_dir in sorted(path for path in directory.iterdir() if path.is_dir()):
            name = class_dir.name
            if name not in class_index:
                raise DataError(f"{description}: folder {class_dir} is not a known class; expected one of "
                                f"{', '.join(class_names)}")
            items.extend((path, class_index[name]) for path in find_images(class_dir))
        if not items:
            raise DataError(f"{description}: no images found under {directory} "
                            "(expected <class>/<image>.jpg|png folders)")
        self.items = items
        self.directory = directory
        self.class_names = tuple(class_names)
        self.with_labels = with_labels
        self.image_size = tuple(image_size)
        self.description = description

    def __len__(self) -> int:
        return len(self.items)

    def oracle_labels(self) -> list[int]:
        """Class index of every sample, from the folder names (held-out evaluation only, never for methods)."""
        return [label for _, label in self.items]

    def __getitem__(self, index: int) -> dict:
        path, label = self.items[index]
        sample = {"image": image_to_tensor(read_rgb(path), self.image_size), "index": index,
                  "name": str(path.relative_to(self.directory))}
        if self.with_labels:
            sample["label"] = torch.tensor(label, dtype=torch.int64)
        return sample


def match_choice(value: str, choices: Iterable[str], what: str) -> str:
    """Return the choice equal to value (case-insensitively); else ConfigError listing the valid choices."""
    choices = tuple(choices)
    if value in choices:
        return value
    folded = {choice.lower(): choice for choice in choices}
    if isinstance(value, str) and value.lower() in folded:
        return folded[value.lower()]
    raise unknown_name_error(what, value, choices)


DEFAULT_SELECTION_SIZE = 500  # HIAST §4.5: 500 random target training images


def selection_subset(num_images: int, size: int = DEFAULT_SELECTION_SIZE, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed seeded random subset of ``size`` target training images (all if fewer).

    The same (num_images, size, seed) always gives the same subset, so every candidate of a sweep, on any worker,
    predicts the same images.
    """
    if num_images < 0 or size < 1:
        raise DataError(f"selection subset needs num_images >= 0 and size >= 1; got {num_images}, {size}")
    if num_images <= size:
        return np.arange(num_images, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(num_images, size=size, replace=False)
    return np.sort(chosen).astype(np.int64)
