"""DatasetFamily (the data contract every other part of raysel uses) and the family registry."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from torch.utils.data import Dataset

from raysel.data.common import SPLITS, ImageSize, match_choice
from raysel.errors import ConfigError

Loader = Callable[[Path, str, str, bool, "ImageSize | None"], Dataset]
Preparer = Callable[[Path], Path]


@dataclass(frozen=True)
class DatasetFamily:
    """A named group of domains sharing one label space, with its loader and its one-time preparation.

    ``load(root, domain, split, with_labels, image_size)``: split ``"train"`` is the source's labelled training set
    or a target's unlabeled training images; ``"heldout"`` is a target's evaluation split. ``with_labels=False``
    never opens a label file. ``image_size`` is (height, width); None keeps the native size for segmentation and
    uses ``default_image_size`` for classification (whose images must be batched at one size).
    ``standard_image_sizes`` lists, per domain, the size the reference papers train at (for callers to pass).
    ``default_targets`` are the *development* targets (defaults and design choices may be tuned on their held-out
    labels); ``test_targets`` are held back: their labels are read only by final evaluation tables (SPEC §5).
    """

    name: str
    task: str
    num_classes: int
    class_names: tuple[str, ...]
    domains: tuple[str, ...]
    default_source: str
    default_targets: tuple[str, ...]
    embedded: bool
    loader: Loader = field(repr=False, compare=False)
    preparer: Preparer = field(repr=False, compare=False)
    default_image_size: ImageSize | None = None
    standard_image_sizes: Mapping[str, ImageSize] = field(default_factory=dict, repr=False, compare=False)
    splits_by_domain: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)
    test_targets: tuple[str, ...] = ()

    @property
    def development_targets(self) -> tuple[str, ...]:
        """The targets whose held-out labels may justify defaults and design choices (= ``default_targets``)."""
        return self.default_targets

    def resolve_domain(self, domain: str) -> str:
        """The canonical domain name (case-insensitive match); ConfigError listing valid domains otherwise."""
        return match_choice(domain, self.domains, f"domain for dataset {self.name!r}")

    def splits(self, domain: str) -> tuple[str, ...]:
        """The splits a domain has (a source dataset without a held-out split has only "train")."""
        return tuple(self.splits_by_domain.get(self.resolve_domain(domain), SPLITS))

    def load(self, root: Path, domain: str, split: str, with_labels: bool,
             image_size: ImageSize | None = None) -> Dataset:
        """Build the torch Dataset of one domain/split under the data root (validating names first)."""
        domain = self.resolve_domain(domain)
        split = match_choice(split, self.splits(domain), f"split for {self.name}/{domain}")
        if image_size is not None:
            image_size = _check_image_size(image_size)
        elif self.task == "classification":
            image_size = self.default_image_size
        return self.loader(Path(root).expanduser(), domain, split, with_labels, image_size)


def _check_image_size(image_size: ImageSize) -> ImageSize:
    """(height, width) of two positive ints, or ConfigError."""
    try:
        height, width = (int(value) for value in image_size)
    except (TypeError, ValueError):
        raise ConfigError(f"image_size must be (height, width), got {image_size!r}") from None
    if height <= 0 or width <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size!r}")
    return height, width


_REGISTRY: dict[str, DatasetFamily] = {}


def register_family(family: DatasetFamily) -> DatasetFamily:
    """Add a family to the registry under its name (a second registration of a name is a programming error)."""
    if family.name in _REGISTRY and _REGISTRY[family.name] is not family:
        raise ValueError(f"dataset family {family.name!r} registered twice")
    _REGISTRY[family.name] = family
    return family


def registered_families() -> dict[str, DatasetFamily]:
    """The registry itself (name -> family), in registration order."""
    return _REGISTRY


def get_family(name: str | DatasetFamily) -> DatasetFamily:
    """Look up a family by name (case-insensitive); ConfigError listing the valid names otherwise."""
    if isinstance(name, DatasetFamily):
        return name
    return _REGISTRY[match_choice(name, tuple(_REGISTRY), "dataset")]


def family_names() -> list[str]:
    """Names of all registered dataset families."""
    return list(_REGISTRY)


def default_data_root() -> Path:
    """The data root: $RAYSEL_DATA_ROOT, else ~/.cache/raysel/data."""
    configured = os.environ.get("RAYSEL_DATA_ROOT")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "raysel" / "data"


def dataset_directory(root: Path, folder: str, probe: str) -> Path:
    """``<root>/<folder>``, or root itself when it already is that folder (it contains ``probe``)."""
    root = Path(root).expanduser()
    candidate = root / folder
    if candidate.is_dir() or not (root / probe).exists():
        return candidate
    return root
