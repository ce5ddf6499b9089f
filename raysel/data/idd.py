"""IDD Segmentation (India Driving Dataset): Cityscapes-like layout,
``leftImg8bit/<split>/<seq>/<id>_leftImg8bit.png`` (or ``.jpg``) with ``gtFine/<split>/<seq>/<id>_gtFine_labelids.png``
(level-4 ids 0-39, written by the official ``createLabels.py``/mseg dump) or, when that is absent,
``<id>_gtFine_labellevel3Ids.png`` (26 level3 classes). Both map to the 19 Cityscapes trainIds; the tables and
their source (AutoNUE/public-code ``helpers/anue_labels.py``) are in :mod:`raysel.data.labels`. IDD has no trainId
16 (train) in level3. ``heldout`` is IDD ``val``.
"""

from __future__ import annotations

from pathlib import Path

from raysel.data.cityscapes import cityscapes_style_items
from raysel.data.common import ImageSize, SegmentationDataset
from raysel.data.labels import idd_level3_mapping, idd_mapping

FOLDER = "idd"
SPLIT_FOLDERS = {"train": "train", "heldout": "val"}
LABEL_ID_SUFFIX = "_gtFine_labelids.png"
LABEL_LEVEL3_SUFFIX = "_gtFine_labellevel3Ids.png"
LAYOUT = ("<root>/idd/leftImg8bit/{split}/<seq>/<id>_leftImg8bit.png and "
          "gtFine/{split}/<seq>/<id>_gtFine_labelids.png (or _gtFine_labellevel3Ids.png)")


def load_idd(dataset_dir: Path, split: str, with_labels: bool, image_size: ImageSize | None) -> SegmentationDataset:
    """IDD ``train`` or ``val`` (split "heldout"); each label file is mapped by the table matching its suffix."""
    split_folder = SPLIT_FOLDERS[split]
    items = cityscapes_style_items(dataset_dir, split_folder, with_labels, (LABEL_ID_SUFFIX, LABEL_LEVEL3_SUFFIX),
                                   "IDD", LAYOUT)
    return SegmentationDataset(items, None, with_labels, image_size, description=f"IDD {split_folder} at {dataset_dir}",
                               mappings_by_suffix={LABEL_ID_SUFFIX: idd_mapping(),
                                                   LABEL_LEVEL3_SUFFIX: idd_level3_mapping()})
