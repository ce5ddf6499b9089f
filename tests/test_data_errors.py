"""Bad input to the data layer: one DataError/ConfigError naming the file, key or valid choices, never a bare
PIL/numpy exception; cheap checks eager (index building), decoding checks lazy (per sample)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raysel import data
from raysel.data.labels import cityscapes_mapping
from raysel.errors import ConfigError, DataError, UserError
from tests.test_data_real import (id_map, make_cityscapes, make_gta5, make_idd, make_office31, make_synthia,
                            write_label_l, write_label_palette, write_png16_rgb, write_rgb)


def truncate(path, keep: float = 0.5) -> None:
    """Cut a file to a fraction of its bytes (a download or copy that died part-way)."""
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * keep)])


def test_errors_are_user_errors() -> None:
    assert issubclass(DataError, UserError) and issubclass(ConfigError, UserError)


def test_missing_data_root(tmp_path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(DataError, match=str(missing / "gta5" / "images")):
        data.get_family("gta5").load(missing, "gta5", "train", with_labels=True)
    with pytest.raises(DataError, match="does not exist"):
        data.prepare("gta5", missing)


def test_empty_data_root(tmp_path) -> None:
    (tmp_path / "gta5" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images found in .*gta5/images"):
        data.get_family("gta5").load(tmp_path, "gta5", "train", with_labels=False)
    (tmp_path / "cityscapes" / "leftImg8bit" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match="no \\*_leftImg8bit images"):
        data.get_family("cityscapes").load(tmp_path, "cityscapes", "heldout", with_labels=True)
    with pytest.raises(DataError, match=r"leftImg8bit/train does not exist"):
        data.get_family("cityscapes").load(tmp_path, "cityscapes", "train", with_labels=False)
    with pytest.raises(DataError, match="empty"):
        data.prepare("gta5", tmp_path / "gta5" / "images")


def test_corrupt_image_fails_lazily_with_the_file_name(tmp_path) -> None:
    make_cityscapes(tmp_path)
    bad = tmp_path / "cityscapes" / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    truncate(bad)
    dataset = data.get_family("cityscapes").load(tmp_path, "cityscapes", "train", with_labels=False)  # lazy: ok
    assert dataset[1]["image"].shape[0] == 3
    with pytest.raises(DataError, match=f"cannot read image file {bad}"):
        dataset[0]


def test_not_an_image_at_all(tmp_path) -> None:
    make_gta5(tmp_path, count=1)
    (tmp_path / "gta5" / "images" / "00001.png").write_text("this is not a png")
    with pytest.raises(DataError, match="00001.png"):
        data.get_family("gta5").load(tmp_path, "gta5", "train", True)[0]


def test_corrupt_label_fails_with_the_label_file_name(tmp_path) -> None:
    make_gta5(tmp_path, count=1)
    bad = tmp_path / "gta5" / "labels" / "00001.png"
    truncate(bad, keep=0.7)
    with pytest.raises(DataError, match=f"cannot read label file {bad}"):
        data.get_family("gta5").load(tmp_path, "gta5", "train", True)[0]


def test_missing_label_file_fails_eagerly(tmp_path) -> None:
    make_cityscapes(tmp_path)
    gone = tmp_path / "cityscapes" / "gtFine" / "train" / "bochum" / "bochum_000000_001097_gtFine_labelIds.png"
    gone.unlink()
    family = data.get_family("cityscapes")
    with pytest.raises(DataError, match=f"1 label file\\(s\\) missing: {gone}"):
        family.load(tmp_path, "cityscapes", "train", with_labels=True)
    assert len(family.load(tmp_path, "cityscapes", "train", with_labels=False)) == 3  # no labels needed


def test_missing_label_file_gta5_and_synthia(tmp_path) -> None:
    make_gta5(tmp_path)
    (tmp_path / "gta5" / "labels" / "00002.png").unlink()
    with pytest.raises(DataError, match="GTA5: 1 label file.*00002.png"):
        data.get_family("gta5").load(tmp_path, "gta5", "train", True)
    make_synthia(tmp_path)
    (tmp_path / "synthia" / "GT" / "LABELS" / "0000001.png").unlink()
    with pytest.raises(DataError, match="SYNTHIA: 1 label file.*0000001.png"):
        data.get_family("synthia").load(tmp_path, "synthia", "train", True)


def test_missing_label_directory(tmp_path) -> None:
    write_rgb(tmp_path / "gta5" / "images" / "00001.png")
    with pytest.raises(DataError, match=r"gta5/labels does not exist"):
        data.get_family("gta5").load(tmp_path, "gta5", "train", True)


def test_label_id_outside_the_table_names_file_and_ids(tmp_path) -> None:
    make_gta5(tmp_path, count=1)
    bad = tmp_path / "gta5" / "labels" / "00001.png"
    write_label_palette(bad, id_map([7, 250, 34]))
    with pytest.raises(DataError, match=f"label file {bad} contains id\\(s\\) 34, 250 outside the Cityscapes"):
        data.get_family("gta5").load(tmp_path, "gta5", "train", True)[0]


def test_label_id_outside_the_table_cityscapes_idd_synthia(tmp_path) -> None:
    make_cityscapes(tmp_path)
    bad = tmp_path / "cityscapes" / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    write_label_l(bad, id_map([7, 40]))
    heldout = data.get_family("cityscapes").load(tmp_path, "cityscapes", "heldout", True)
    assert heldout[0]["label"].shape == (6, 8)
    with pytest.raises(DataError, match=f"{bad}.*40"):
        heldout[1]
    make_idd(tmp_path)
    write_label_l(tmp_path / "idd" / "gtFine" / "val" / "119" / "000150_gtFine_labelids.png", id_map([0, 41]))
    with pytest.raises(DataError, match="000150_gtFine_labelids.png contains id\\(s\\) 41 outside the IDD id"):
        data.get_family("idd").load(tmp_path, "idd", "heldout", True)[0]
    make_synthia(tmp_path, count=1)
    channels = np.zeros((6, 8, 3), dtype=np.uint16)
    channels[..., 0] = 23
    write_png16_rgb(tmp_path / "synthia" / "GT" / "LABELS" / "0000000.png", channels)
    with pytest.raises(DataError, match="23 outside the SYNTHIA"):
        data.get_family("synthia").load(tmp_path, "synthia", "train", True)[0]


def test_ids_ignored_by_the_table_map_to_255_not_errors() -> None:
    mapping = cityscapes_mapping()
    ids = np.array([[0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 255]], dtype=np.uint8)
    assert (mapping.to_train_ids(ids, "x.png") == 255).all()


def test_colour_label_image_is_rejected(tmp_path) -> None:
    make_gta5(tmp_path, count=1)
    write_rgb(tmp_path / "gta5" / "labels" / "00001.png")
    with pytest.raises(DataError, match="image mode RGB; expected a single-channel"):
        data.get_family("gta5").load(tmp_path, "gta5", "train", True)[0]


def test_label_and_image_size_mismatch(tmp_path) -> None:
    make_gta5(tmp_path, count=1)
    write_label_palette(tmp_path / "gta5" / "labels" / "00001.png", id_map([7], size=(3, 8)))
    with pytest.raises(DataError, match="has size 8x3 but image .* has size 8x6"):
        data.get_family("gta5").load(tmp_path, "gta5", "train", True)[0]


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'kitti'; valid choices: street_scenes, digits, .*idd"):
        data.get_family("kitti")
    with pytest.raises(ConfigError, match="valid choices"):
        data.prepare("kitti", "/tmp")


def test_unknown_domain_split_and_size_are_config_errors(tmp_path) -> None:
    family = data.get_family("street_scenes")
    with pytest.raises(ConfigError, match="unknown domain .*'night_city'.* game, day_city, dusk_city"):
        family.load(tmp_path, "night_city", "train", False)
    with pytest.raises(ConfigError, match="unknown split .*'test'.*train, heldout"):
        family.load(tmp_path, "day_city", "test", False)
    with pytest.raises(ConfigError, match="unknown split .*'heldout'.*valid choices: train"):
        family.load(tmp_path, "game", "heldout", False)
    with pytest.raises(ConfigError, match="image_size"):
        family.load(tmp_path, "game", "train", False, image_size=(0, 10))
    with pytest.raises(ConfigError, match="amazon, dslr, webcam"):
        data.get_family("office31").load(tmp_path, "caltech", "train", False)


def test_unknown_class_folder_in_image_folder_dataset(tmp_path) -> None:
    make_office31(tmp_path)
    write_rgb(tmp_path / "office31" / "amazon" / "images" / "hoverboard" / "frame_0001.jpg", fmt="JPEG")
    with pytest.raises(DataError, match="hoverboard is not a known class; expected one of back_pack"):
        data.get_family("office31").load(tmp_path, "amazon", "train", True)


def test_empty_office_domain(tmp_path) -> None:
    (tmp_path / "office31" / "dslr" / "images" / "mug").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found under .*dslr/images"):
        data.get_family("office31").load(tmp_path, "dslr", "train", True)


def test_corrupt_office_jpeg(tmp_path) -> None:
    make_office31(tmp_path)
    bad = tmp_path / "office31" / "amazon" / "images" / "back_pack" / "frame_0001.jpg"
    Image.new("RGB", (300, 300), "red").save(bad, quality=95)
    truncate(bad, keep=0.3)
    dataset = data.get_family("office31").load(tmp_path, "amazon", "train", True)
    with pytest.raises(DataError, match=f"cannot read image file {bad}"):
        dataset[0]
