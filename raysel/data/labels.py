"""Label tables: dataset label ids -> the 19 Cityscapes trainIds (255 = ignore), as lookup tables.

Every segmentation family in raysel predicts the 19 Cityscapes trainIds. Each dataset stores its own ids on disk;
a :class:`LabelMapping` turns them into trainIds with one vectorised lookup and rejects ids the table does not know
(a file holding such ids is malformed or from another dataset, and training on it silently would be wrong).

Sources of the tables:

* Cityscapes / GTA5: the ``labels`` table of the PyPI package ``cityscapesscripts`` (ids 0-33; the table's
  ``trainId`` 255 or -1 means ignore). GTA5 labels are stored as Cityscapes label ids, so it shares the table.
  The value 255 is also accepted as "void" (several preprocessed copies of GTA5/Cityscapes write it).
* SYNTHIA-RAND-CITYSCAPES: ids 0-22 from the dataset README; the trainId map is the one in HIAST's
  ``synthia_dataset.py`` and HDRQ's ``tools/convert_datasets/synthia.py`` (identical).
* IDD: ``*_gtFine_labelids.png`` hold the IDD level-4 ``id`` (0-39) and ``*_gtFine_labellevel3Ids.png`` the
  ``level3Id`` (0-25, 255); both tables come from ``helpers/anue_labels.py`` of the official IDD code
  (github.com/AutoNUE/public-code). The ``id`` map uses that file's ``csTrainId`` column, as DAFormer/HDRQ's
  ``tools/convert_datasets/idd.py`` does (note: "non-drivable fallback" -> 9 terrain). For level3, whose classes
  merge several ids, see :data:`IDD_LEVEL3_TO_TRAIN_ID` for the choices made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers import labels as cityscapes_labels

from raysel.conventions import IGNORE_INDEX
from raysel.errors import DataError


CITYSCAPES_CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
NUM_SEGMENTATION_CLASSES = len(CITYSCAPES_CLASS_NAMES)  # 19

# Evaluation subsets for SYNTHIA -> Cityscapes (trainIds kept). mIoU16 drops terrain, truck, train (absent from
# SYNTHIA); mIoU13 also drops wall, fence, pole [HIAST/DAFormer evaluation code].
SYNTHIA_16_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA_13_CLASSES: tuple[int, ...] = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)

# SYNTHIA-RAND-CITYSCAPES id -> trainId (all other ids 0..22 are valid but ignored).
SYNTHIA_TO_TRAIN_ID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13, 18: 14,
    19: 15, 20: 16, 12: 17, 11: 18,
}
SYNTHIA_VALID_IDS = range(0, 23)  # 0 void ... 22 lanemarking

# IDD level-4 id (0..39) -> trainId: anue_labels.py csTrainId column; ids not listed are valid and ignored.
IDD_ID_TO_TRAIN_ID: dict[int, int] = {
    0: 0, 3: 1, 5: 9, 6: 11, 8: 12, 9: 17, 10: 18, 12: 13, 13: 14, 14: 15, 17: 16, 20: 3, 21: 4, 24: 7, 25: 6,
    26: 5, 29: 2, 32: 8, 33: 10,
}
IDD_VALID_IDS = tuple(range(0, 40)) + (255,)

# IDD level3Id (0..25, 255 void) -> trainId. A level3 class that merges ids is mapped to the trainId of its
# dominant member, or ignored when its members disagree: 1 (parking + drivable fallback) -> ignore;
# 3 (rail track + non-drivable fallback) -> 9 terrain, like non-drivable fallback's csTrainId; 4 (person + animal)
# -> 11 person; 12 (caravan, trailer, train, vehicle fallback) -> ignore (train alone would be 16, but vehicle
# fallback dominates); 20 (pole + polegroup) -> 5 pole; 23 (bridge + tunnel) -> ignore; 25 (sky + fallback
# background) -> 10 sky. Unmerged classes follow csTrainId (autorickshaw, curb, guard rail, billboard,
# obs-str-bar-fallback -> ignore).
IDD_LEVEL3_TO_TRAIN_ID: dict[int, int] = {
    0: 0, 2: 1, 3: 9, 4: 11, 5: 12, 6: 17, 7: 18, 9: 13, 10: 14, 11: 15, 14: 3, 15: 4, 18: 7, 19: 6, 20: 5,
    22: 2, 24: 8, 25: 10,
}
IDD_LEVEL3_VALID_IDS = tuple(range(0, 26)) + (255,)


@dataclass(frozen=True)
class LabelMapping:
    """A dataset-id -> trainId lookup table with the set of ids the dataset may legitimately contain."""

    name: str
    lookup: np.ndarray  # uint8 [max_id + 1]: trainId or 255
    valid: np.ndarray  # bool [max_id + 1]: id is in the table

    def to_train_ids(self, ids: np.ndarray, path: Path | str) -> np.ndarray:
        """Map a label-id array to trainIds; ids outside the table raise DataError naming the file and ids."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "ui":
            raise DataError(f"label file {path} has non-integer pixel type {ids.dtype}")
        flat = ids.astype(np.int64, copy=False).ravel()
        size = len(self.valid)
        out_of_range = (flat < 0) | (flat >= size)
        if out_of_range.any():
            bad = np.unique(flat[out_of_range])
        else:
            # bincount over the present ids is one pass; only ids that occur are checked against the table.
            present = np.flatnonzero(np.bincount(flat, minlength=size))
            bad = present[~self.valid[present]]
        if bad.size:
            shown = ", ".join(str(int(value)) for value in bad[:10]) + (" ..." if bad.size > 10 else "")
            raise DataError(
                f"label file {path} contains id(s) {shown} outside the {self.name} label table "
                f"(valid ids: {_describe_ids(np.flatnonzero(self.valid))})"
            )
        return self.lookup[flat].reshape(ids.shape)


def _describe_ids(ids: np.ndarray) -> str:
    """Compact text for a sorted id list: runs become ``a-b``."""
    parts: list[str] = []
    start = previous = None
    for value in (int(v) for v in ids):
        if start is None:
            start = previous = value
        elif value == previous + 1:
            previous = value
        else:
            parts.append(f"{start}-{previous}" if previous != start else str(start))
            start = previous = value
    if start is not None:
        parts.append(f"{start}-{previous}" if previous != start else str(start))
    return ", ".join(parts)


def _mapping(name: str, valid_ids: "range | tuple[int, ...] | list[int]", to_train_id: dict[int, int]) -> LabelMapping:
    """Build a LabelMapping: listed ids map to their trainId, other valid ids to ignore (255)."""
    size = max(valid_ids) + 1
    lookup = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    valid = np.zeros(size, dtype=bool)
    valid[list(valid_ids)] = True
    for dataset_id, train_id in to_train_id.items():
        lookup[dataset_id] = train_id if 0 <= train_id < NUM_SEGMENTATION_CLASSES else IGNORE_INDEX
    return LabelMapping(name=name, lookup=lookup, valid=valid)


def cityscapes_id_to_train_id() -> dict[int, int]:
    """Cityscapes label id -> trainId from cityscapesscripts (trainId 255 / -1 become ignore)."""
    return {label.id: (label.trainId if 0 <= label.trainId < NUM_SEGMENTATION_CLASSES else IGNORE_INDEX)
            for label in cityscapes_labels.labels if label.id >= 0}


def cityscapes_mapping() -> LabelMapping:
    """Cityscapes/GTA5 label ids (0-33, plus 255 as void) -> trainIds."""
    table = cityscapes_id_to_train_id()
    return _mapping("Cityscapes label-id", sorted(table) + [IGNORE_INDEX], table)


def cityscapes_train_id_to_id() -> dict[int, int]:
    """trainId -> Cityscapes label id (used to write GTA5/Cityscapes-style label files)."""
    return {train_id: label_id for label_id, train_id in cityscapes_id_to_train_id().items()
            if train_id != IGNORE_INDEX}


def synthia_mapping() -> LabelMapping:
    """SYNTHIA-RAND-CITYSCAPES class ids (0-22) -> trainIds."""
    return _mapping("SYNTHIA", SYNTHIA_VALID_IDS, SYNTHIA_TO_TRAIN_ID)


def idd_mapping() -> LabelMapping:
    """IDD level-4 ids (``_gtFine_labelids.png``, 0-39 and 255) -> trainIds."""
    return _mapping("IDD id", IDD_VALID_IDS, IDD_ID_TO_TRAIN_ID)


def idd_level3_mapping() -> LabelMapping:
    """IDD level3 ids (``_gtFine_labellevel3Ids.png``, 0-25 and 255) -> trainIds."""
    return _mapping("IDD level3Id", IDD_LEVEL3_VALID_IDS, IDD_LEVEL3_TO_TRAIN_ID)
