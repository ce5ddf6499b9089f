"""Real dataset loaders on tiny on-disk fixtures in the exact GTA5 / Cityscapes / IDD / SYNTHIA / Office layouts."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raysel import data
from raysel.data import labels as label_tables
from raysel.data.common import ImageFolderDataset, SegmentationDataset, read_png_channel0_16bit
from raysel.data.office import OFFICE31_CLASSES, OFFICEHOME_CLASSES
from raysel.errors import ConfigError, DataError

HEIGHT, WIDTH = 6, 8


# ----------------------------------------------------------------------------------------------------------------
# Fixture writers (shared with test_data_errors.py)
# ----------------------------------------------------------------------------------------------------------------


def write_rgb(path: Path, seed: int = 0, size: tuple[int, int] = (HEIGHT, WIDTH), fmt: str | None = None) -> None:
    """A small random RGB image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=size + (3,), dtype=np.uint8)
    Image.fromarray(pixels, mode="RGB").save(path, format=fmt)


def id_map(values: list[int], size: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """A label-id map whose rows cycle through the given ids."""
    rows = np.array(values * (size[0] // len(values) + 1))[: size[0]]
    return np.repeat(rows[:, None], size[1], axis=1)


def write_label_l(path: Path, ids: np.ndarray) -> None:
    """An 8-bit greyscale label-id PNG (Cityscapes ``*_gtFine_labelIds.png``, IDD label PNGs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), mode="L").save(path)


def write_label_palette(path: Path, ids: np.ndarray) -> None:
    """A palette label PNG whose indices are label ids (how GTA5 ships its labels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="L").convert("P")
    image.putpalette([value for index in range(256) for value in (index, 255 - index, (7 * index) % 256)])
    image.save(path)


def write_png16_rgb(path: Path, channels: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (SYNTHIA GT/LABELS), rows Sub-filtered to exercise PNG unfiltering."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width, _ = channels.shape
    raw = bytearray()
    for row in channels.astype(">u2"):
        data_bytes = np.frombuffer(row.tobytes(), dtype=np.uint8).astype(np.int32)
        filtered = data_bytes.copy()
        filtered[6:] = (data_bytes[6:] - data_bytes[:-6]) % 256  # Sub filter, 6 bytes per pixel
        raw += bytes([1]) + filtered.astype(np.uint8).tobytes()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw)))
                     + chunk(b"IEND", b""))


GTA5_IDS = [7, 26, 0, 14, 33, 11, 255]  # road, car, unlabeled, guard rail, bicycle, building, void
GTA5_TRAIN_IDS = [0, 13, 255, 255, 18, 2]


def make_gta5(root: Path, count: int = 3) -> Path:
    """``<root>/gta5/images/0000N.png`` + ``labels/0000N.png`` (palette, Cityscapes label ids)."""
    for index in range(1, count + 1):
        write_rgb(root / "gta5" / "images" / f"{index:05d}.png", seed=index)
        write_label_palette(root / "gta5" / "labels" / f"{index:05d}.png", id_map(GTA5_IDS[:6]))
    return root / "gta5"


CITYSCAPES_IDS = [7, 8, 24, 23, 9, 26]  # road, sidewalk, person, sky, parking (ignored), car


def make_cityscapes(root: Path) -> Path:
    """Cityscapes ``leftImg8bit``/``gtFine`` with two train cities and one val city."""
    frames = {"train": [("aachen", "000000", "000019"), ("aachen", "000001", "000019"), ("bochum", "000000", "001097")],
              "val": [("frankfurt", "000000", "000294"), ("lindau", "000000", "000019")]}
    for split, entries in frames.items():
        for number, (city, sequence, frame) in enumerate(entries):
            stem = f"{city}_{sequence}_{frame}"
            write_rgb(root / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=number)
            write_label_l(root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                          id_map(CITYSCAPES_IDS))
    return root / "cityscapes"


IDD_IDS = [0, 5, 29, 11, 33, 26]  # road, non-drivable fallback, building, autorickshaw, sky, pole
IDD_LEVEL3_IDS = [0, 22, 12, 25, 3, 255]  # road, building, vehicle fallback, sky, non-drivable fallback, void


def make_idd(root: Path) -> Path:
    """IDD Segmentation: one frame with ``_gtFine_labelids.png``, one with only ``_gtFine_labellevel3Ids.png``."""
    base = root / "idd"
    write_rgb(base / "leftImg8bit" / "train" / "0" / "005506_leftImg8bit.png", seed=1)
    write_label_l(base / "gtFine" / "train" / "0" / "005506_gtFine_labelids.png", id_map(IDD_IDS))
    write_rgb(base / "leftImg8bit" / "train" / "201" / "frame0029_leftImg8bit.jpg", seed=2, fmt="JPEG")
    write_label_l(base / "gtFine" / "train" / "201" / "frame0029_gtFine_labellevel3Ids.png", id_map(IDD_LEVEL3_IDS))
    write_rgb(base / "leftImg8bit" / "val" / "119" / "000150_leftImg8bit.png", seed=3)
    write_label_l(base / "gtFine" / "val" / "119" / "000150_gtFine_labelids.png", id_map(IDD_IDS))
    return base


SYNTHIA_IDS = [3, 8, 10, 0, 22, 15]  # road, car, pedestrian, void, lanemarking, traffic light


def make_synthia(root: Path, count: int = 2) -> Path:
    """SYNTHIA-RAND-CITYSCAPES ``RGB/*.png`` + 16-bit ``GT/LABELS/*.png`` (class id ch0, instance id ch1)."""
    for index in range(count):
        write_rgb(root / "synthia" / "RGB" / f"{index:07d}.png", seed=index)
        channels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint16)
        channels[..., 0] = id_map(SYNTHIA_IDS)
        channels[..., 1] = 300 + np.arange(WIDTH)[None, :]  # instance ids > 255 must not leak into the class
        write_png16_rgb(root / "synthia" / "GT" / "LABELS" / f"{index:07d}.png", channels)
    return root / "synthia"


def make_office31(root: Path) -> Path:
    """Office-31: ``office31/<domain>/images/<class>/frame_000N.jpg`` for two classes in two domains."""
    for domain in ("amazon", "webcam"):
        for class_name in ("back_pack", "trash_can"):
            for index in range(2):
                write_rgb(root / "office31" / domain / "images" / class_name / f"frame_{index + 1:04d}.jpg",
                          seed=index, size=(20, 30), fmt="JPEG")
    return root / "office31"


def make_officehome(root: Path) -> Path:
    """Office-Home: ``officehome/<Domain>/<class>/0000N.jpg``; Real World uses the release's spaced folder name."""
    for domain in ("Art", "Real World"):
        for class_name in ("Alarm_Clock", "Webcam", "TV"):
            write_rgb(root / "officehome" / domain / class_name / "00001.jpg", seed=1, size=(25, 17), fmt="JPEG")
    return root / "officehome"


# ----------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------


def test_registry_lists_every_family_with_its_contract_fields() -> None:
    names = data.family_names()
    for name in ("street_scenes", "digits", "gta5", "cityscapes", "idd", "synthia", "office31", "officehome"):
        assert name in names
        family = data.get_family(name)
        assert family.name == name
        assert family.default_source in family.domains
        assert set(family.default_targets) <= set(family.domains)
        assert len(family.class_names) == family.num_classes
    assert data.get_family("GTA5") is data.get_family("gta5")  # case-insensitive
    assert data.get_family("cityscapes").num_classes == 19
    assert data.get_family("office31").num_classes == 31 and len(set(OFFICE31_CLASSES)) == 31
    assert data.get_family("officehome").num_classes == 65 and len(set(OFFICEHOME_CLASSES)) == 65


def test_default_data_root_follows_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RAYSEL_DATA_ROOT", str(tmp_path / "custom"))
    assert data.default_data_root() == tmp_path / "custom"
    monkeypatch.delenv("RAYSEL_DATA_ROOT")
    assert data.default_data_root() == Path.home() / ".cache" / "raysel" / "data"


def test_cityscapes_table_comes_from_cityscapesscripts() -> None:
    table = label_tables.cityscapes_id_to_train_id()
    assert sorted(train_id for train_id in table.values() if train_id != 255) == list(range(19))
    assert table[7] == 0 and table[33] == 18 and table[9] == 255 and table[0] == 255
    assert label_tables.cityscapes_train_id_to_id()[13] == 26


def test_synthia_evaluation_subsets() -> None:
    assert len(data.SYNTHIA_16_CLASSES) == 16 and len(data.SYNTHIA_13_CLASSES) == 13
    assert not {9, 14, 16} & set(data.SYNTHIA_16_CLASSES)
    assert not {3, 4, 5, 9, 14, 16} & set(data.SYNTHIA_13_CLASSES)
    assert set(data.SYNTHIA_13_CLASSES) < set(data.SYNTHIA_16_CLASSES)


def test_gta5_palette_labels_map_to_train_ids(tmp_path) -> None:
    make_gta5(tmp_path)
    family = data.get_family("gta5")
    dataset = family.load(tmp_path, "gta5", "train", with_labels=True)
    assert isinstance(dataset, SegmentationDataset) and len(dataset) == 3
    sample = dataset[0]
    assert sample["image"].shape == (3, HEIGHT, WIDTH) and sample["image"].dtype == torch.float32
    assert sample["label"].dtype == torch.int64 and sample["name"] == "00001" and sample["index"] == 0
    assert sample["label"][:, 0].tolist() == GTA5_TRAIN_IDS
    assert family.splits("gta5") == ("train",)
    with pytest.raises(ConfigError, match="train"):
        family.load(tmp_path, "gta5", "heldout", with_labels=True)


def test_gta5_accepts_void_255(tmp_path) -> None:
    make_gta5(tmp_path, count=1)
    write_label_palette(tmp_path / "gta5" / "labels" / "00001.png", id_map([255, 7]))
    label = data.get_family("gta5").load(tmp_path, "gta5", "train", True)[0]["label"]
    assert label[:2, 0].tolist() == [255, 0]


def test_cityscapes_train_and_heldout_splits(tmp_path) -> None:
    make_cityscapes(tmp_path)
    family = data.get_family("cityscapes")
    train = family.load(tmp_path, "cityscapes", "train", with_labels=True)
    heldout = family.load(tmp_path, "cityscapes", "heldout", with_labels=True)
    assert len(train) == 3 and len(heldout) == 2
    assert [train[i]["name"] for i in range(3)] == ["aachen_000000_000019", "aachen_000001_000019",
                                                   "bochum_000000_001097"]
    assert heldout[0]["name"] == "frankfurt_000000_000294"
    assert heldout[0]["label"][:, 0].tolist() == [0, 1, 11, 10, 255, 13]


def test_segmentation_image_size_resizes_image_bilinear_and_label_nearest(tmp_path) -> None:
    make_cityscapes(tmp_path)
    sample = data.get_family("cityscapes").load(tmp_path, "cityscapes", "train", True, image_size=(12, 4))[0]
    assert sample["image"].shape == (3, 12, 4) and sample["label"].shape == (12, 4)
    assert set(sample["label"].unique().tolist()) <= {0, 1, 11, 10, 255, 13}  # nearest: no blended ids


def test_image_is_imagenet_normalised(tmp_path) -> None:
    path = tmp_path / "gta5" / "images" / "00001.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 255, np.uint8)).save(path)
    write_label_palette(tmp_path / "gta5" / "labels" / "00001.png", id_map([7]))
    image = data.get_family("gta5").load(tmp_path, "gta5", "train", True)[0]["image"]
    expected = (1 - torch.tensor(data.IMAGENET_MEAN)) / torch.tensor(data.IMAGENET_STD)
    assert torch.allclose(image[:, 0, 0], expected)
    assert torch.allclose(data.denormalize(image), torch.ones_like(image))


def test_idd_maps_both_label_kinds(tmp_path) -> None:
    make_idd(tmp_path)
    family = data.get_family("idd")
    train = family.load(tmp_path, "idd", "train", with_labels=True)
    assert len(train) == 2
    by_name = {train[i]["name"]: train[i]["label"][:, 0].tolist() for i in range(2)}
    # ids: road 0, non-drivable fallback -> terrain 9, building 2, autorickshaw ignored, sky 10, pole 5
    assert by_name["005506"] == [0, 9, 2, 255, 10, 5]
    # level3: road 0, building 2, vehicle fallback ignored, sky 10, non-drivable fallback 9, void
    assert by_name["frame0029"] == [0, 2, 255, 10, 9, 255]
    assert len(family.load(tmp_path, "idd", "heldout", True)) == 1


def test_synthia_reads_16bit_class_channel(tmp_path) -> None:
    make_synthia(tmp_path)
    raw = read_png_channel0_16bit(tmp_path / "synthia" / "GT" / "LABELS" / "0000000.png")
    assert raw.dtype == np.uint16 and raw[:, 0].tolist() == SYNTHIA_IDS
    dataset = data.get_family("synthia").load(tmp_path, "synthia", "train", with_labels=True)
    assert len(dataset) == 2
    assert dataset[1]["label"][:, 0].tolist() == [0, 13, 11, 255, 255, 6]


def test_synthia_16bit_id_above_255_is_reported_exactly(tmp_path) -> None:
    make_synthia(tmp_path, count=1)
    channels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint16)
    channels[..., 0] = 3
    channels[0, 0, 0] = 300  # low byte 44, high byte 1: an 8-bit reader would see 44 or 1
    write_png16_rgb(tmp_path / "synthia" / "GT" / "LABELS" / "0000000.png", channels)
    with pytest.raises(DataError, match=r"0000000\.png.*300"):
        data.get_family("synthia").load(tmp_path, "synthia", "train", True)[0]


def test_every_real_segmentation_family_reaches_every_real_domain(tmp_path) -> None:
    make_gta5(tmp_path)
    make_cityscapes(tmp_path)
    for name in ("gta5", "cityscapes", "idd", "synthia"):
        family = data.get_family(name)
        assert len(family.load(tmp_path, "gta5", "train", False)) == 3
        assert len(family.load(tmp_path, "cityscapes", "heldout", True)) == 2
    assert data.get_family("gta5").default_targets == ("cityscapes", "idd")


def test_root_may_point_at_the_dataset_folder_itself(tmp_path) -> None:
    gta5_dir = make_gta5(tmp_path)
    assert len(data.get_family("gta5").load(gta5_dir, "gta5", "train", True)) == 3


def test_prepare_real_family_validates_root(tmp_path) -> None:
    make_gta5(tmp_path)
    assert data.prepare("gta5", tmp_path) == tmp_path / "gta5"
    with pytest.raises(DataError, match="cityscapes"):
        data.prepare("cityscapes", tmp_path)
    (tmp_path / "office31").mkdir()
    with pytest.raises(DataError, match="empty"):
        data.prepare("office31", tmp_path)


def test_office31_image_folders(tmp_path) -> None:
    make_office31(tmp_path)
    family = data.get_family("office31")
    dataset = family.load(tmp_path, "amazon", "train", with_labels=True)
    assert isinstance(dataset, ImageFolderDataset) and len(dataset) == 4
    labels = sorted(int(dataset[i]["label"]) for i in range(4))
    assert labels == [OFFICE31_CLASSES.index("back_pack")] * 2 + [OFFICE31_CLASSES.index("trash_can")] * 2
    assert dataset[0]["image"].shape == (3, 224, 224)  # classification default size
    assert dataset[0]["name"] == "back_pack/frame_0001.jpg"
    unlabeled = family.load(tmp_path, "webcam", "heldout", with_labels=False, image_size=(32, 48))
    assert "label" not in unlabeled[0] and unlabeled[0]["image"].shape == (3, 32, 48)


def test_officehome_image_folders_accept_real_world_with_space(tmp_path) -> None:
    make_officehome(tmp_path)
    family = data.get_family("officehome")
    dataset = family.load(tmp_path, "real_world", "train", with_labels=True, image_size=(16, 16))
    names = {dataset[i]["name"].split("/")[0]: int(dataset[i]["label"]) for i in range(len(dataset))}
    assert names == {name: OFFICEHOME_CLASSES.index(name) for name in ("Alarm_Clock", "TV", "Webcam")}
    assert len(family.load(tmp_path, "Art", "train", False)) == 3
