"""Office-31 and Office-Home image folders, read by the shared :class:`ImageFolderDataset`.

Layouts: ``<root>/office31/<amazon|dslr|webcam>/images/<class>/*.jpg`` (the original release) and
``<root>/officehome/<Art|Clipart|Product|Real_World>/<class>/*.jpg`` (the release's "Real World" folder with a
space is accepted too). UDA on Office uses every image of a domain both as unlabeled target training data and for
evaluation, so ``train`` and ``heldout`` are the same image set. Class indices follow the sorted official class
lists, identical in every domain.
"""

from __future__ import annotations

from pathlib import Path

from raysel.data.common import ImageFolderDataset, ImageSize, require_directory
from raysel.data.family import DatasetFamily, dataset_directory, register_family
from raysel.errors import DataError

OFFICE31_FOLDER = "office31"
OFFICEHOME_FOLDER = "officehome"
DEFAULT_IMAGE_SIZE = (224, 224)  # ResNet-50 input size used by GSDA and the Office literature

OFFICE31_CLASSES: tuple[str, ...] = tuple(sorted((
    "back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair", "desk_lamp",
    "desktop_computer", "file_cabinet", "headphones", "keyboard", "laptop_computer", "letter_tray", "mobile_phone",
    "monitor", "mouse", "mug", "paper_notebook", "pen", "phone", "printer", "projector", "punchers", "ring_binder",
    "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can",
)))
OFFICEHOME_CLASSES: tuple[str, ...] = tuple(sorted((
    "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator", "Calendar", "Candles",
    "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp", "Drill", "Eraser", "Exit_Sign", "Fan",
    "File_Cabinet", "Flipflops", "Flowers", "Folder", "Fork", "Glasses", "Hammer", "Helmet", "Kettle", "Keyboard",
    "Knives", "Lamp_Shade", "Laptop", "Marker", "Monitor", "Mop", "Mouse", "Mug", "Notebook", "Oven", "Pan",
    "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin", "Radio", "Refrigerator", "Ruler",
    "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda", "Speaker", "Spoon", "TV", "Table", "Telephone",
    "ToothBrush", "Toys", "Trash_Can", "Webcam",
)))
OFFICE31_DOMAINS = ("amazon", "dslr", "webcam")
OFFICEHOME_DOMAINS = ("Art", "Clipart", "Product", "Real_World")
OFFICEHOME_FOLDER_ALIASES = {"Real_World": ("Real_World", "Real World")}


def require_nonempty(directory: Path, what: str) -> Path:
    """Return directory if it exists and holds something, else a DataError naming it."""
    require_directory(directory, what)
    if not any(directory.iterdir()):
        raise DataError(f"{what} directory {directory} is empty")
    return directory


def office31_directory(root: Path, domain: str) -> Path:
    """``<root>/office31/<domain>/images`` (root may also be the office31 folder itself)."""
    return dataset_directory(root, OFFICE31_FOLDER, "amazon") / domain / "images"


def officehome_directory(root: Path, domain: str) -> Path:
    """``<root>/officehome/<domain>``, accepting the release's "Real World" spelling."""
    base = dataset_directory(root, OFFICEHOME_FOLDER, "Art")
    for folder in OFFICEHOME_FOLDER_ALIASES.get(domain, (domain,)):
        if (base / folder).is_dir():
            return base / folder
    return base / domain


def load_office31(root: Path, domain: str, split: str, with_labels: bool, image_size: ImageSize | None
                  ) -> ImageFolderDataset:
    """One Office-31 domain (all its images for either split)."""
    directory = office31_directory(root, domain)
    description = f"Office-31 {domain} (expected <root>/office31/{domain}/images/<class>/*.jpg)"
    return ImageFolderDataset(directory, OFFICE31_CLASSES, with_labels, image_size or DEFAULT_IMAGE_SIZE, description)


def load_officehome(root: Path, domain: str, split: str, with_labels: bool, image_size: ImageSize | None
                    ) -> ImageFolderDataset:
    """One Office-Home domain (all its images for either split)."""
    directory = officehome_directory(root, domain)
    return ImageFolderDataset(directory, OFFICEHOME_CLASSES, with_labels, image_size or DEFAULT_IMAGE_SIZE,
                              description=f"Office-Home {domain} (expected <root>/officehome/{domain}/<class>/*.jpg)")


OFFICE31 = register_family(DatasetFamily(
    name="office31", task="classification", num_classes=len(OFFICE31_CLASSES), class_names=OFFICE31_CLASSES,
    domains=OFFICE31_DOMAINS, default_source="amazon", default_targets=("dslr", "webcam"), embedded=False,
    loader=load_office31,
    preparer=lambda root: require_nonempty(dataset_directory(root, OFFICE31_FOLDER, "amazon"), "Office-31"),
    default_image_size=DEFAULT_IMAGE_SIZE,
    standard_image_sizes={domain: DEFAULT_IMAGE_SIZE for domain in OFFICE31_DOMAINS},
))
OFFICEHOME = register_family(DatasetFamily(
    name="officehome", task="classification", num_classes=len(OFFICEHOME_CLASSES), class_names=OFFICEHOME_CLASSES,
    domains=OFFICEHOME_DOMAINS, default_source="Art", default_targets=("Clipart", "Product", "Real_World"),
    embedded=False, loader=load_officehome,
    preparer=lambda root: require_nonempty(dataset_directory(root, OFFICEHOME_FOLDER, "Art"), "Office-Home"),
    default_image_size=DEFAULT_IMAGE_SIZE,
    standard_image_sizes={domain: DEFAULT_IMAGE_SIZE for domain in OFFICEHOME_DOMAINS},
))
