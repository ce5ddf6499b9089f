"""The embedded segmentation benchmark: layout on disk, determinism, classes, a measurable domain shift, label
hygiene (with_labels=False never opens label files), atomic and concurrent-safe generation."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from raysel import data
from raysel.data import street_scenes
from raysel.data.common import SegmentationDataset, read_rgb
from raysel.data.generation import read_marker
from raysel.data.statistics import split_statistics
from raysel.data.street_scenes import StreetScenesConfig
from raysel.errors import DataError

# Enough images that every class statistic below is stable, few enough to generate in about a second.
CONFIG = StreetScenesConfig(source_train=16, target_train=8, target_heldout=8)
TINY = StreetScenesConfig(source_train=2, target_train=1, target_heldout=1)
HARD_CLASSES = {5: "pole", 6: "traffic light", 7: "traffic sign", 11: "person", 12: "rider", 18: "bicycle"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One generated small benchmark shared by this module's tests."""
    directory = tmp_path_factory.mktemp("street")
    street_scenes.prepare_street_scenes(directory, CONFIG)
    return directory


@pytest.fixture(scope="module")
def family() -> data.DatasetFamily:
    return data.get_family("street_scenes")


def tree_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under a tree except the marker (which records the generation time)."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name != ".raysel_generated.json"}


def domain_labels(family, root, domain: str) -> list[np.ndarray]:
    """Every labelled trainId map of a domain (source train; target train + heldout)."""
    maps = []
    for split in family.splits(domain):
        dataset = family.load(root, domain, split, with_labels=True)
        maps.extend(dataset.oracle_train_ids(index) for index in range(len(dataset)))
    return maps


def test_family_contract(family) -> None:
    assert family.task == "segmentation" and family.embedded and family.num_classes == 19
    assert family.domains == ("game", "day_city", "dusk_city", "foggy_city")
    assert family.default_source == "game" and family.default_targets == ("day_city", "dusk_city")
    assert family.development_targets == family.default_targets and family.test_targets == ("foggy_city",)
    assert family.splits("game") == ("train",) and family.splits("day_city") == ("train", "heldout")


def test_on_disk_layout_is_gta5_for_source_and_cityscapes_for_targets(root) -> None:
    tree = root / "street_scenes"
    image = tree / "game" / "images" / "00001.png"
    label = tree / "game" / "labels" / "00001.png"
    assert image.is_file() and label.is_file()
    with PIL.Image.open(label) as handle:
        assert handle.mode == "P"  # GTA5 ships palette PNGs of Cityscapes label ids
        assert set(np.unique(np.array(handle))) <= set(street_scenes.ID.values())
    assert len(list((tree / "game" / "images").glob("*.png"))) == CONFIG.source_train
    for domain in ("day_city", "dusk_city"):
        for split, number in (("train", CONFIG.target_train), ("val", CONFIG.target_heldout)):
            images = sorted((tree / domain / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
            assert len(images) == number
            city = images[0].parent.name
            assert images[0].name.startswith(f"{city}_") and city in street_scenes.CITIES[domain][split]
            stem = images[0].name[: -len("_leftImg8bit.png")]
            assert (tree / domain / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png").is_file()
    marker = read_marker(tree)
    assert marker["version"] == street_scenes.GENERATOR_VERSION and marker["config"]["seed"] == CONFIG.seed


def test_generation_is_deterministic_in_the_seed(tmp_path) -> None:
    first = street_scenes.prepare_street_scenes(tmp_path / "a", TINY)
    second = street_scenes.prepare_street_scenes(tmp_path / "b", TINY)
    other = street_scenes.prepare_street_scenes(tmp_path / "c", StreetScenesConfig(
        seed=TINY.seed + 1, source_train=2, target_train=1, target_heldout=1))
    hashes = tree_hashes(first)
    assert len(hashes) == 2 * (2 + 3 * (1 + 1))  # game + three targets (train, val), image + label each
    assert hashes == tree_hashes(second)
    assert set(hashes) == set(tree_hashes(other)) and hashes != tree_hashes(other)


def test_domains_written_by_worker_processes_are_the_same_bytes(tmp_path) -> None:
    """generate_domains spreads the domains over processes; every scene has its own seeded stream, so the tree is
    byte for byte the one a single process writes."""
    (tmp_path / "serial").mkdir()
    (tmp_path / "parallel").mkdir()
    serial = street_scenes.generate_domains(tmp_path / "serial", TINY, workers=1)
    parallel = street_scenes.generate_domains(tmp_path / "parallel", TINY, workers=2)
    assert serial == parallel
    assert tree_hashes(tmp_path / "serial") == tree_hashes(tmp_path / "parallel")


def test_samples_follow_the_data_contract(family, root) -> None:
    dataset = family.load(root, "game", "train", with_labels=True)
    assert isinstance(dataset, SegmentationDataset) and len(dataset) == CONFIG.source_train
    sample = dataset[3]
    assert sample["image"].shape == (3, 96, 192) and sample["image"].dtype == torch.float32
    assert sample["label"].shape == (96, 192) and sample["label"].dtype == torch.int64
    assert sample["index"] == 3 and sample["name"] == "00004"
    values = set(sample["label"].unique().tolist())
    assert values <= set(range(19)) | {255}


def test_at_least_eight_classes_including_the_hard_ones(family, root) -> None:
    for domain in family.domains:
        present = set(np.unique(np.concatenate([m.ravel() for m in domain_labels(family, root, domain)])).tolist())
        present.discard(255)
        assert len(present) >= 14, (domain, present)
        missing_hard = {name for train_id, name in HARD_CLASSES.items() if train_id not in present}
        assert not missing_hard, (domain, missing_hard)


def test_hard_classes_are_small(family, root) -> None:
    """Hard classes cover a tiny share of pixels (as in Cityscapes), road and building a large one."""
    maps = np.stack(domain_labels(family, root, "game"))
    fraction = np.bincount(maps.ravel(), minlength=256)[:19] / maps.size
    assert fraction[0] > 0.15 and fraction[2] > 0.15
    for train_id in HARD_CLASSES:
        assert 0 < fraction[train_id] < 0.02


def horizon_row(train_ids: np.ndarray) -> int:
    """Topmost image row containing road: where the street meets the horizon."""
    rows = np.flatnonzero((train_ids == 0).any(axis=1))
    return int(rows[0])


def test_domain_shift_is_measurable(family, root) -> None:
    stats = {}
    for domain in family.domains:
        dataset = family.load(root, domain, "train", with_labels=True)
        stats[domain] = split_statistics(dataset, 19, domain, "train")
    game, day, dusk = stats["game"], stats["day_city"], stats["dusk_city"]
    # Appearance: mean colour differs between every pair of domains; dusk is dark and orange-cast.
    for a, b in ((game, day), (game, dusk), (day, dusk)):
        assert np.abs(a.mean_rgb - b.mean_rgb).sum() > 0.08, (a.domain, b.domain)
    assert dusk.mean_rgb.mean() < 0.6 * game.mean_rgb.mean() and dusk.mean_rgb[0] > dusk.mean_rgb[2]
    # Layout: class frequencies (sky, vegetation, car) and the ego hood (ignore) differ in a known direction.
    sky, vegetation, car = 10, 8, 13
    assert dusk.class_fraction[sky] > game.class_fraction[sky] > day.class_fraction[sky]
    assert dusk.class_fraction[vegetation] > 2 * day.class_fraction[vegetation]
    assert day.class_fraction[car] > dusk.class_fraction[car]
    assert game.ignore_fraction == 0 and day.ignore_fraction > 0.04 and dusk.ignore_fraction > 0.02
    # Horizon height: day (high horizon) < game < dusk (low horizon) in image rows.
    horizons = {domain: np.median([horizon_row(m) for m in domain_labels(family, root, domain)])
                for domain in family.domains}
    assert horizons["day_city"] < horizons["game"] < horizons["dusk_city"]


def test_game_is_flat_and_targets_carry_photo_texture(family, root) -> None:
    """Inside the road, neighbouring pixels barely differ in the flat game render but do in the photo-textured
    targets (gravel/moon textures, sensor noise): part of the shift is real image statistics."""
    texture = {}
    for domain in family.domains:
        dataset = family.load(root, domain, "train", with_labels=True)
        values = []
        for index in range(6):
            image = np.asarray(read_rgb(dataset.items[index].image), dtype=np.float32) / 255
            road = dataset.oracle_train_ids(index) == 0
            both_road = road[:, 1:] & road[:, :-1]
            step = np.abs(np.diff(image, axis=1)).mean(axis=2)[both_road]
            values.append(np.median(step) / max(image[road].mean(), 1e-3))
        texture[domain] = float(np.mean(values))
    assert texture["day_city"] > 0.02 and texture["dusk_city"] > 0.02
    assert texture["day_city"] > 3 * texture["game"] and texture["dusk_city"] > 3 * texture["game"]


def test_with_labels_false_never_opens_a_label_file(family, root, monkeypatch) -> None:
    opened: list[str] = []
    real_open = PIL.Image.open

    def recording_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", recording_open)
    for domain, split in (("game", "train"), ("day_city", "train"), ("dusk_city", "heldout")):
        dataset = family.load(root, domain, split, with_labels=False)
        for index in range(3):
            assert "label" not in dataset[index]
    assert opened and not [path for path in opened if "gtFine" in path or "/labels/" in path]
    # ... and the loader does not even need the label folders.
    labels_dir = root / "street_scenes" / "day_city" / "gtFine"
    moved = labels_dir.with_name("gtFine-moved")
    labels_dir.rename(moved)
    try:
        assert len(family.load(root, "day_city", "train", with_labels=False)) == CONFIG.target_train
        with pytest.raises(DataError, match="label"):
            family.load(root, "day_city", "train", with_labels=True)
    finally:
        moved.rename(labels_dir)


def test_heldout_split_loads_labels_from_separate_cities(family, root) -> None:
    heldout = family.load(root, "day_city", "heldout", with_labels=True)
    train = family.load(root, "day_city", "train", with_labels=False)
    assert len(heldout) == CONFIG.target_heldout
    heldout_names = {heldout[index]["name"] for index in range(len(heldout))}
    train_names = {train[index]["name"] for index in range(len(train))}
    assert not heldout_names & train_names
    assert all(name.startswith("brightmoor_") for name in heldout_names)
    label = heldout[0]["label"]
    assert label.dtype == torch.int64 and (label == 255).any()  # the ego hood is ignored


def test_image_size_resizes(family, root) -> None:
    sample = family.load(root, "dusk_city", "heldout", with_labels=True, image_size=(48, 96))[0]
    full = family.load(root, "dusk_city", "heldout", with_labels=True)[0]
    assert sample["image"].shape == (3, 48, 96) and sample["label"].shape == (48, 96)
    assert torch.equal(sample["label"], full["label"][::2, ::2])  # nearest neighbour: ids are never blended


def test_prepare_is_idempotent_and_leaves_no_temporaries(tmp_path) -> None:
    tree = street_scenes.prepare_street_scenes(tmp_path, TINY)
    stamp = (tree / "game" / "images" / "00001.png").stat().st_mtime_ns
    assert street_scenes.prepare_street_scenes(tmp_path, TINY) == tree
    assert (tree / "game" / "images" / "00001.png").stat().st_mtime_ns == stamp
    assert sorted(path.name for path in tmp_path.iterdir()) == [".street_scenes.lock", "street_scenes"]
    # A different config replaces the tree atomically.
    bigger = StreetScenesConfig(source_train=3, target_train=1, target_heldout=1)
    street_scenes.prepare_street_scenes(tmp_path, bigger)
    assert len(list((tree / "game" / "images").glob("*.png"))) == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == [".street_scenes.lock", "street_scenes"]


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    def exploding(directory, domain, config):
        (directory / domain).mkdir(parents=True)
        raise RuntimeError("killed")

    monkeypatch.setattr(street_scenes, "generate_domain", exploding)
    with pytest.raises(RuntimeError):
        street_scenes.prepare_street_scenes(tmp_path, TINY)
    assert [path.name for path in tmp_path.iterdir()] == [".street_scenes.lock"]


def _prepare_in_child(root: str, counter: str) -> str:
    """Child process body: count generate_domain calls in a file, then prepare."""
    original = street_scenes.generate_domain

    def counting(directory, domain, config):
        with open(counter, "a") as handle:
            handle.write(domain + "\n")
        return original(directory, domain, config)

    street_scenes.generate_domain = counting
    return str(street_scenes.prepare_street_scenes(Path(root), TINY))


def test_concurrent_prepare_generates_once(tmp_path) -> None:
    counter = tmp_path / "calls.txt"
    context = multiprocessing.get_context("fork")
    with context.Pool(3) as pool:
        results = pool.starmap(_prepare_in_child, [(str(tmp_path / "root"), str(counter))] * 3)
    assert len(set(results)) == 1
    assert counter.read_text().split() == list(street_scenes.DOMAINS)  # one generation in total
    assert sorted(path.name for path in (tmp_path / "root").iterdir()) == [".street_scenes.lock", "street_scenes"]


def test_describe_reports_counts_frequencies_and_colour(root) -> None:
    text = data.describe("street_scenes", root)
    assert "game/train: 16 images, 96x192" in text
    assert "day_city/heldout: 8 images" in text and "dusk_city/train: 8 images" in text
    assert "mean RGB (" in text and "road " in text and "ignore " in text


# Pixels of the three original domains (sorted paths, decoded images) for the config below, computed on the generator
# before the foggy_city test target was added: adding it must not shift their random streams.
ORIGINAL_DOMAINS_PIXELS_SHA256 = "3bf0b3b7bbc7219178590b97e4949f997617de23456dfa01be43a9440a2e9862"


def test_adding_the_test_target_left_the_original_domains_byte_identical(tmp_path) -> None:
    config = StreetScenesConfig(height=48, width=96, source_train=3, target_train=3, target_heldout=2)
    tree = street_scenes.prepare_street_scenes(tmp_path, config)
    digest = hashlib.sha256()
    for domain in ("game", "day_city", "dusk_city"):
        for path in sorted((tree / domain).rglob("*.png")):
            digest.update(str(path.relative_to(tree)).encode())
            digest.update(np.asarray(PIL.Image.open(path)).tobytes())
    assert digest.hexdigest() == ORIGINAL_DOMAINS_PIXELS_SHA256


def test_foggy_city_fades_with_distance(family, root) -> None:
    """Fog is not a re-tint: far road (near the horizon) is closer to the fog colour, i.e. lower in contrast, than
    near road at the image bottom, much more so than in day_city; and the test target's held-out split loads."""

    def far_to_near_contrast(domain: str) -> float:
        dataset = family.load(root, domain, "train", with_labels=True)
        ratios = []
        for index in range(len(dataset)):
            image = np.asarray(read_rgb(dataset.items[index].image), dtype=np.float32) / 255
            road_rows = np.flatnonzero((dataset.oracle_train_ids(index) == 0).any(axis=1))
            far, near = image[road_rows[0]:road_rows[0] + 4], image[-8:]
            ratios.append(far.std() / max(near.std(), 1e-3))
        return float(np.median(ratios))

    assert far_to_near_contrast("foggy_city") < 0.8 * far_to_near_contrast("day_city")
    heldout = family.load(root, "foggy_city", "heldout", with_labels=True)
    assert len(heldout) == CONFIG.target_heldout and heldout[0]["label"].shape == (96, 192)
