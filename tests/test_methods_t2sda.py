"""T2S-DA: each loss and sampler on small hand-made tensors, config checks, and a tiny end-to-end resumable run."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from raysel.conventions import IMAGENET_MEAN, IMAGENET_STD
from raysel.errors import ConfigError
from raysel.hyperparameters import config_from_dict
from raysel.methods import daformer_strategies as daformer
from raysel.methods import t2sda
from raysel.methods.base import LocalSession, RunContext, RunSpec, StopRun
from raysel.models.projector import ProjectorHead, SegmenterWithProjector

REPO = Path(__file__).resolve().parent.parent


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# FDA (Eq. 6-8)
# ---------------------------------------------------------------------------------------------------------------


def test_fda_with_empty_window_is_identity():
    source, target = torch.rand(2, 3, 32, 48), torch.rand(2, 3, 32, 48)
    assert t2sda.fda_window_half_size(32, 48, 0.01) == 0
    assert torch.allclose(t2sda.fda_source_to_target(source, target, 0.01), source, atol=1e-5)
    normalised = (source - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    translated = t2sda.translate_to_target_style(normalised, normalised.flip(0), 0.01, generator())
    assert torch.allclose(translated, normalised, atol=1e-4)


def test_fda_keeps_source_phase_and_swaps_low_frequency_amplitude():
    source, target = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32) * 2.0
    out = t2sda.fda_source_to_target(source, target, 0.1)  # b = 3: frequencies |k| <= 2 on both axes
    mask = t2sda.fda_low_frequency_mask(32, 32, 0.1)
    assert int(mask.sum()) == 5 * 5 and bool(mask[0, 0]) and bool(mask[-2, 2]) and not bool(mask[3, 0])
    spectrum_out, spectrum_source = torch.fft.fft2(out.double()), torch.fft.fft2(source.double())
    spectrum_target = torch.fft.fft2(target.double())
    # Phase: unit phasors agree everywhere (up to float32 round-off of the round trip).
    phasor_out = spectrum_out / spectrum_out.abs().clamp(min=1e-9)
    phasor_source = spectrum_source / spectrum_source.abs().clamp(min=1e-9)
    assert (phasor_out - phasor_source).abs().max() < 1e-3
    assert torch.allclose(spectrum_out.abs()[..., mask], spectrum_target.abs()[..., mask], rtol=1e-4, atol=1e-3)
    assert torch.allclose(spectrum_out.abs()[..., ~mask], spectrum_source.abs()[..., ~mask], rtol=1e-4, atol=1e-3)
    # The DC term carries the mean colour: the output takes the target's mean.
    assert torch.allclose(out.mean(dim=(-2, -1)), target.mean(dim=(-2, -1)), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# DACS baseline pieces
# ---------------------------------------------------------------------------------------------------------------


def test_pseudo_label_quality_counts_pixels_above_delta_p():
    confidence = torch.tensor([[[0.99, 0.5], [0.97, 0.968]], [[0.1, 0.2], [0.3, 0.999]]])
    per_image = t2sda.pseudo_label_quality(confidence, 0.968)
    assert torch.allclose(per_image, torch.tensor([0.5, 0.25]))  # 0.968 itself is not > delta_p
    assert torch.allclose(t2sda.pseudo_label_quality(confidence, 0.968, per_image=False), torch.tensor([0.375, 0.375]))


def test_class_mix_masks_pick_half_the_classes_of_each_image_and_never_ignore():
    labels = torch.tensor([[[0, 1, 2, 255], [0, 1, 2, 255]], [[3, 3, 4, 4], [3, 255, 4, 4]]])
    for seed in range(5):
        masks = t2sda.class_mix_masks(labels, generator(seed))
        chosen0 = set(labels[0][masks[0]].tolist())
        chosen1 = set(labels[1][masks[1]].tolist())
        assert len(chosen0) == 2 and chosen0 <= {0, 1, 2}       # ceil(3/2)
        assert len(chosen1) == 1 and chosen1 <= {3, 4}          # ceil(2/2)
        assert torch.equal(masks[0], torch.isin(labels[0], torch.tensor(sorted(chosen0))))
        assert not bool(masks[labels == 255].any())


def test_class_mix_pastes_source_pixels_with_weight_one():
    masks = torch.tensor([[[True, False], [False, True]]])
    source_images, target_images = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    images, labels, weights = t2sda.class_mix(source_images, torch.full((1, 2, 2), 7), target_images,
                                              torch.full((1, 2, 2), 3), torch.tensor([0.25]), masks)
    assert torch.equal(images[0, 0], masks[0].float())
    assert labels.tolist() == [[[7, 3], [3, 7]]]
    assert weights.tolist() == [[[1.0, 0.25], [0.25, 1.0]]]


def test_dacs_strong_augment_and_blur_kernel_size():
    assert [t2sda.dacs_blur_kernel_size(n) for n in (96, 192, 11, 512)] == [9, 19, 1, 51]
    images = torch.randn(2, 3, 16, 24)
    out = t2sda.dacs_strong_augment(images, generator(), jitter_strength=0.2, jitter_probability=0.0, blur=True)
    assert out.shape == images.shape and bool(torch.isfinite(out).all())
    assert not torch.allclose(out, images.clamp(-3, 3), atol=1e-3)


def test_weighted_cross_entropy_scales_each_pixel():
    logits = torch.zeros(1, 2, 1, 2)
    loss = t2sda.weighted_cross_entropy(logits, torch.tensor([[[0, 1]]]), torch.tensor([[[1.0, 0.0]]]))
    assert math.isclose(float(loss), math.log(2) / 2, rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Queries, keys and negatives (Eq. 9-16)
# ---------------------------------------------------------------------------------------------------------------


def test_class_balanced_query_counts_follow_the_label_distribution():
    labels = torch.cat([torch.zeros(60), torch.ones(30), torch.full((10,), 2), torch.full((5,), 255)]).long()
    counts = t2sda.class_balanced_query_counts(labels, num_classes=4, n=3)
    # p = (0.6, 0.3, 0.1, 0); n_q = ceil(4 * p * 3) = (ceil 7.2, ceil 3.6, ceil 1.2, 0)
    assert counts.tolist() == [8, 4, 2, 0]
    indices, classes = t2sda.sample_queries(labels, counts, generator())
    assert torch.bincount(classes, minlength=4).tolist() == [8, 4, 2, 0]
    assert torch.equal(labels[indices], classes) and indices.unique().numel() == indices.numel()
    # Capped at the pixels available (queries are distinct pixels); the equalized variant gives n per class.
    assert t2sda.class_balanced_query_counts(labels, 4, n=100).tolist() == [60, 30, 10, 0]
    assert t2sda.class_equalized_query_counts(labels, 4, n=20).tolist() == [20, 20, 10, 0]
    assert t2sda.class_balanced_query_counts(torch.full((4,), 255), 4, n=3).tolist() == [0, 0, 0, 0]


def test_unreliable_partition_takes_the_least_confident_alpha_share():
    confidence = torch.linspace(0.1, 1.0, 10)
    assert t2sda.unreliable_target_mask(confidence, 0.5).tolist() == [True] * 5 + [False] * 5
    assert t2sda.unreliable_target_mask(confidence, 0.1).tolist() == [True] + [False] * 9
    assert int(t2sda.unreliable_target_mask(torch.rand(1000), 0.9).sum()) == 900


def test_domain_equalized_negatives_counts_and_candidates():
    source_labels = torch.tensor([0, 0, 1, 2, 255, 1])
    target_pseudo = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    unreliable = torch.tensor([True, True, True, True, False, False, False, False])
    queries = torch.tensor([0, 0, 1, 2])
    negatives, valid = t2sda.sample_negative_keys(queries, source_labels, target_pseudo, unreliable, m=10,
                                                  generator=generator())
    assert negatives.shape == (4, 10) and bool(valid.all())
    offset = source_labels.numel()
    for row, class_index in enumerate(queries.tolist()):
        from_source = negatives[row][negatives[row] < offset]
        from_target = negatives[row][negatives[row] >= offset] - offset
        assert from_source.numel() == 5 and from_target.numel() == 5
        assert not bool((source_labels[from_source] == class_index).any())
        assert not bool((source_labels[from_source] == 255).any())
        assert bool(unreliable[from_target].all()) and not bool((target_pseudo[from_target] == class_index).any())


def test_negatives_fall_back_to_one_domain_and_drop_queries_without_candidates():
    source_labels = torch.tensor([0, 0, 1])
    target_pseudo = torch.tensor([0, 0])
    unreliable = torch.tensor([True, True])
    negatives, valid = t2sda.sample_negative_keys(torch.tensor([0, 1]), source_labels, target_pseudo, unreliable,
                                                  m=6, generator=generator())
    assert valid.tolist() == [True, True]
    assert bool((negatives[0] == 2).all())           # class 0: only source pixel 2 (target all class 0)
    assert bool((negatives[1] < 3).sum() >= 1)       # class 1: m/2 from source pixels {0, 1} and m/2 from the target
    assert int((negatives[1] >= 3).sum()) == 3
    _, valid = t2sda.sample_negative_keys(torch.tensor([0]), torch.tensor([0, 255]), torch.tensor([0]),
                                          torch.tensor([True]), m=4, generator=generator())
    assert valid.tolist() == [False]
    pooled, _ = t2sda.sample_negative_keys(torch.tensor([0] * 200), torch.tensor([1]), torch.tensor([1]),
                                           torch.tensor([True]), m=10, generator=generator(), domain_equalized=False)
    assert set(pooled.unique().tolist()) == {0, 1}


def test_source_prototypes_are_normalised_class_means():
    embeddings = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 4.0], [100.0, 100.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 255, 0])
    prototypes, present = t2sda.source_prototypes(embeddings, labels, num_classes=3)
    assert present.tolist() == [True, True, False]
    assert torch.allclose(prototypes[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))   # mean (1, 1)
    assert torch.allclose(prototypes[1], torch.tensor([0.6, 0.8]))
    assert torch.allclose(prototypes[2], torch.zeros(2))


# ---------------------------------------------------------------------------------------------------------------
# Losses and weights (Eq. 4-5, 17-18)
# ---------------------------------------------------------------------------------------------------------------


def test_info_nce_hand_made_value():
    queries, positives = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    bank = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    loss = t2sda.info_nce_loss(queries, positives, bank, torch.tensor([[0, 1]]), tau=0.5)
    assert math.isclose(float(loss), math.log(1 + math.exp(2) + math.exp(-2)), rel_tol=1e-6)


def test_info_nce_is_minimal_at_perfect_alignment():
    tau, m = 0.2, 4
    query = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)  # float64: the value is ~2e-4, a difference of logs
    bank = torch.tensor([[-1.0, 0.0, 0.0]], dtype=torch.float64)
    aligned = t2sda.info_nce_loss(query, query, bank, torch.zeros(1, m, dtype=torch.long), tau)
    assert math.isclose(float(aligned), math.log(1 + m * math.exp(-2 / tau)), rel_tol=1e-5)
    assert float(aligned) < 1e-3
    others = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=1)
    misaligned = t2sda.info_nce_loss(others, query.expand(50, 3), bank, torch.zeros(50, m, dtype=torch.long), tau)
    assert bool((misaligned > aligned).all())


def test_mse_pull_loss_between_unit_vectors():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert torch.allclose(t2sda.mse_pull_loss(q, k), torch.tensor([0.0, 2.0, 4.0]))


def test_class_target_confidence_is_mean_confidence_per_pseudo_label():
    confidence = t2sda.class_target_confidence(torch.tensor([0, 0, 2]), torch.tensor([0.9, 0.7, 0.4]), 3)
    assert torch.allclose(confidence[[0, 2]], torch.tensor([0.8, 0.4])) and math.isnan(float(confidence[1]))


def test_dynamic_weights_favour_low_confidence_classes():
    confidence = torch.tensor([0.9, 0.5, 0.2, float("nan"), 0.3])
    active = torch.tensor([True, True, True, True, False])
    weights = t2sda.dynamic_class_weights(confidence, beta=0.5, active=active)
    raw = torch.tensor([0.125, 0.625, 1.0, 1.0]).sqrt()   # Eq. 17: (shortfall / max shortfall 0.8) ** 0.5
    assert torch.allclose(weights[:4], raw / raw.sum()) and float(weights[4]) == 0.0
    assert float(weights[0]) < float(weights[1]) < float(weights[2])
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-6)
    uniform = t2sda.dynamic_class_weights(confidence, beta=0.0, active=active)
    assert torch.allclose(uniform[:4], torch.full((4,), 0.25))
    sharper = t2sda.dynamic_class_weights(confidence, beta=2.0, active=active)
    assert float(sharper[2] / sharper[0]) > float(weights[2] / weights[0])
    assert torch.allclose(t2sda.dynamic_class_weights(torch.ones(3), 0.5, torch.ones(3, dtype=torch.bool)),
                          torch.full((3,), 1 / 3))


def test_pull_loss_reductions():
    per_query = torch.tensor([1.0, 3.0, 10.0])
    classes = torch.tensor([0, 0, 2])
    weights = torch.tensor([0.25, 0.0, 0.75])
    assert math.isclose(float(t2sda.reduce_pull_loss(per_query, classes, weights, 3)), 0.25 * 2 + 0.75 * 10)
    assert math.isclose(float(t2sda.reduce_pull_loss(per_query, classes, weights, 3, "paper_sum")),
                        (0.25 * 4 + 0.75 * 10) / 3, rel_tol=1e-6)


def _pull_inputs(labels: torch.Tensor, dim: int = 8) -> t2sda.PullInputs:
    pixels = labels.numel()
    return t2sda.PullInputs(
        query_embeddings=torch.randn(pixels, dim, requires_grad=True), source_labels=labels,
        teacher_source=torch.randn(pixels, dim), teacher_target=torch.randn(pixels, dim),
        target_pseudo_labels=torch.randint(0, 3, (pixels,)), target_confidence=torch.rand(pixels),
        class_confidence=torch.tensor([0.9, 0.5, float("nan")]))


@pytest.mark.parametrize("pull_loss", ["infonce", "mse"])
def test_pull_loss_on_a_batch_gives_query_gradients(pull_loss):
    torch.manual_seed(0)
    inputs = _pull_inputs(torch.randint(0, 3, (40,)))
    config = t2sda.T2sdaConfig(n=4, m=8, pull_loss=pull_loss)
    loss, statistics = t2sda.pull_loss(inputs, config, 3, generator())
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert statistics["queries"] > 0 and inputs.query_embeddings.grad.abs().sum() > 0
    empty = _pull_inputs(torch.full((10,), 255))
    loss, statistics = t2sda.pull_loss(empty, config, 3, generator())
    loss.backward()
    assert loss.item() == 0.0 and statistics["queries"] == 0.0 and empty.query_embeddings.grad is not None


# ---------------------------------------------------------------------------------------------------------------
# Config, schedule, projector, registration, search space
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value, fragment", [
    ("fda_beta", 0.0, "fda_beta must be in (0, 0.5]"), ("fda_beta", 0.6, "fda_beta must be in (0, 0.5]"),
    ("alpha", 0.0, "alpha"), ("alpha", 1.5, "alpha"), ("tau", 0.0, "tau"), ("m", 1, "m (negative"),
    ("n", 0, "n (base"), ("lambda_", -1.0, "lambda_"), ("pull_loss", "l1", "infonce, mse"),
    ("query_sampling", "x", "class_balanced"), ("eta", 1.0, "eta"), ("delta_p", 1.0, "delta_p"),
])
def test_config_errors_name_the_key(key, value, fragment):
    with pytest.raises(ConfigError) as error:
        config_from_dict(t2sda.T2sdaConfig, {key: value})
    assert fragment in str(error.value)


def test_config_defaults_are_the_papers():
    config = config_from_dict(t2sda.T2sdaConfig, {})
    paper = (0.1, 0.2, 0.5, 0.5, 128, 1024)
    assert (config.lambda_, config.tau, config.beta, config.alpha, config.n, config.m) == paper
    assert config.delta_p == 0.968
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        config_from_dict(t2sda.T2sdaConfig, {"lambda": 0.1})


def test_warmup_poly_schedule_and_ema_momentum():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = t2sda.warmup_poly_scheduler(optimizer, warmup_iterations=2, total_iterations=10)
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5, 1.0, 0.8, 0.7, 0.6])
    assert t2sda.ema_momentum(1, 0.99) == 0.5 and t2sda.ema_momentum(10_000, 0.99) == 0.99


def test_projector_head_shapes_and_parameter_groups():
    from raysel.methods.optim import parameter_groups
    from raysel.models import build_model

    projector = ProjectorHead(64, 16)
    out = projector(torch.randn(2, 64, 5, 7))
    assert out.shape == (2, 16, 5, 7) and bool((out >= 0).all())
    assert bool((ProjectorHead(64, 16, final_relu=False).eval()(torch.randn(2, 64, 5, 7)) < 0).any())
    wrapper = SegmenterWithProjector(build_model("small_segnet", "segmentation", 19), projector)
    logits, embeddings = wrapper(torch.randn(2, 3, 32, 64))
    assert logits.shape == (2, 19, 8, 16) and embeddings.shape == (2, 16, 8, 16)
    groups = parameter_groups(wrapper, 6e-4, 0.1)
    assert [group["lr"] for group in groups] == pytest.approx([6e-5, 6e-4])
    assert sum(len(group["params"]) for group in groups) == len(list(wrapper.parameters()))


def test_registered_and_search_space_loads():
    from raysel.registry import _REGISTRY
    from raysel.search_space import load_search_space

    method = _REGISTRY["t2sda"]
    assert method.tasks == ("segmentation",) and method.config_class is t2sda.T2sdaConfig
    space = load_search_space(REPO / "search_spaces" / "t2sda.yaml", method)
    assert set(space.swept_names()) == {"lambda_", "tau", "beta", "alpha", "n", "m", "fda_beta"}
    assert space.num_grid_points() == 6
    assert space.fixed_values() == {"rare_class_sampling": True, "rcs_temperature": 0.01, "feature_distance": True,
                                    "lambda_fd": 0.005}


# ---------------------------------------------------------------------------------------------------------------
# End to end: a tiny LocalSession run on an in-test synthetic dataset, stopped after one report and resumed
# ---------------------------------------------------------------------------------------------------------------


class SyntheticStreets(Dataset):
    """Road / building / sky bands with a car blob; the target domain is darker and tinted (a style shift)."""

    def __init__(self, domain: str, with_labels: bool, count: int = 8, size: tuple[int, int] = (16, 32)) -> None:
        self.domain, self.with_labels, self.count, self.size = domain, with_labels, count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        height, width = self.size
        g = torch.Generator().manual_seed(index + (0 if self.domain == "src" else 1000))
        label = torch.full((height, width), 2, dtype=torch.long)              # building
        label[: height // 4] = 10                                            # sky
        label[height * 3 // 4:] = 0                                          # road
        car_height, car_width = max(2, height // 6), max(3, width // 5)
        left = int(torch.randint(0, width - car_width, (), generator=g))
        label[height // 2: height // 2 + car_height, left:left + car_width] = 13   # car
        label[0, 0] = 255
        palette = torch.zeros(256, 3)
        palette[[0, 2, 10, 13, 255]] = torch.tensor([[0.4, 0.4, 0.4], [0.7, 0.5, 0.3], [0.5, 0.7, 1.0],
                                                     [0.9, 0.1, 0.1], [0.0, 0.0, 0.0]])
        pixels = palette[label].permute(2, 0, 1) + 0.05 * torch.randn(3, height, width, generator=g)
        if self.domain == "tgt":
            pixels = pixels * 0.6 + torch.tensor([0.0, 0.05, 0.15]).view(3, 1, 1)
        pixels = pixels.clamp(0, 1)
        image = (pixels - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        sample = {"image": image, "index": index, "name": f"{self.domain}_{index}"}
        if self.with_labels:
            sample["label"] = label
        return sample


def register_family(monkeypatch, name: str, dataset_class):
    """A 19-class src -> tgt segmentation family served by ``dataset_class``, visible to ``get_family`` for one test."""
    import raysel.data as data_package
    from raysel.data.family import DatasetFamily

    family = DatasetFamily(
        name=name, task="segmentation", num_classes=19, class_names=tuple(str(i) for i in range(19)),
        domains=("src", "tgt"), default_source="src", default_targets=("tgt",), embedded=True,
        loader=lambda root, domain, split, with_labels, image_size: dataset_class(domain, with_labels),
        preparer=lambda root: root)
    original = getattr(data_package, "get_family", None)
    monkeypatch.setattr(data_package, "get_family",
                        lambda requested: family if requested == family.name else original(requested), raising=False)
    return family


@pytest.fixture()
def synthetic_family(monkeypatch):
    return register_family(monkeypatch, "t2sda_synthetic", SyntheticStreets)


def test_end_to_end_run_reports_and_resumes(tmp_path, synthetic_family):
    spec = RunSpec(method="t2sda", dataset="t2sda_synthetic", data_root=str(tmp_path / "data"),
                   cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path), seed=0, num_threads=1)
    config = config_from_dict(t2sda.T2sdaConfig, {"iterations": 4, "report_interval": 2, "source_iterations": 1,
                                                  "n": 8, "m": 16, "fda_beta": 0.1, "warmup_iterations": 1})
    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"), stop_after_reports=1)
    with pytest.raises(StopRun):
        t2sda.train(config, RunContext(spec, session))
    assert [report["iteration"] for report in session.reports] == [2]

    session.stop_after_reports = None
    model = t2sda.train(config, RunContext(spec, session)).model
    assert [report["epoch"] for report in session.reports] == [1, 2]   # resumed: no second report of epoch 1
    assert [report["iteration"] for report in session.reports] == [2, 4]
    for report in session.reports:
        assert math.isfinite(report["loss"]) and 0 < report["target_confidence"] <= 1
        assert report["queries"] > 0 and report["loss_pull"] > 0
    assert model.forward(torch.zeros(1, 3, 16, 32)).shape == (1, 19, 16, 32)
    assert (tmp_path / "cache" / "source_only").is_dir()               # the source stage was cached and reused


def test_end_to_end_with_the_ablation_switches(tmp_path, synthetic_family):
    spec = RunSpec(method="t2sda", dataset="t2sda_synthetic", data_root=str(tmp_path / "data"),
                   cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path), seed=1, num_threads=1)
    config = config_from_dict(t2sda.T2sdaConfig, {
        "iterations": 2, "report_interval": 5, "source_iterations": 1, "n": 4, "m": 8, "pull_loss": "mse",
        "query_sampling": "class_equalized", "negative_sampling": "pooled", "pull_reduction": "paper_sum",
        "quality_weight": "batch", "dynamic_reweighting": False, "freeze_batchnorm": False,
        "projector_final_relu": False, "evaluate_teacher": True, "warmup_iterations": 0})
    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    model = t2sda.train(config, RunContext(spec, session)).model
    assert [report["epoch"] for report in session.reports] == [1]      # the last iteration always reports
    assert math.isfinite(session.reports[0]["loss"]) and not model.training


# ---------------------------------------------------------------------------------------------------------------
# DAFormer's strategies in the baseline: rare-class sampling (Eq. 6-7) and the thing-class feature distance (Eq. 8-10)
# ---------------------------------------------------------------------------------------------------------------

class RareThingStreets(Dataset):
    """Building with a road band; one image in eight also holds a 16x16 bicycle (a rare thing class)."""

    def __init__(self, domain: str, with_labels: bool, count: int = 32, size: tuple[int, int] = (32, 64)) -> None:
        self.domain, self.with_labels, self.count, self.size = domain, with_labels, count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        height, width = self.size
        label = torch.full((height, width), 2, dtype=torch.long)               # building
        label[height * 3 // 4:] = 0                                           # road
        if index % 8 == 0:
            label[8:24, 16:32] = 18                                           # bicycle
        label[0, 0] = 255
        g = torch.Generator().manual_seed(index + (0 if self.domain == "src" else 1000))
        palette = torch.zeros(256, 3)
        palette[[0, 2, 18, 255]] = torch.tensor([[0.4, 0.4, 0.4], [0.7, 0.5, 0.3], [0.1, 0.8, 0.2], [0.0, 0.0, 0.0]])
        pixels = palette[label].permute(2, 0, 1) + 0.05 * torch.randn(3, height, width, generator=g)
        if self.domain == "tgt":
            pixels = pixels * 0.6 + 0.1
        image = (pixels.clamp(0, 1) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        sample = {"image": image, "index": index, "name": f"{self.domain}_{index}"}
        if self.with_labels:
            sample["label"] = label
        return sample


@pytest.fixture()
def rare_thing_family(monkeypatch):
    return register_family(monkeypatch, "t2sda_rare_things", RareThingStreets)


def _rare_thing_context(tmp_path: Path, run: str = "run") -> RunContext:
    spec = RunSpec(method="t2sda", dataset="t2sda_rare_things", data_root=str(tmp_path / "data"),
                   cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path), seed=0, num_threads=1)
    return RunContext(spec, LocalSession(checkpoint_root=str(tmp_path / f"ckpt_{run}")))


def test_source_class_pixel_counts_count_each_image_without_ignore():
    counts = daformer.source_class_pixel_counts(RareThingStreets("src", True, count=10), 19, batch_size=4)
    assert counts.shape == (10, 19) and counts.dtype == torch.int64
    assert counts.sum(dim=1).tolist() == [32 * 64 - 1] * 10                      # the ignore pixel is not counted
    assert counts[:, 18].tolist() == [256 if index % 8 == 0 else 0 for index in range(10)]
    assert counts[:, 0].tolist() == [8 * 64] * 10


def test_rare_class_probabilities_follow_eq7():
    probabilities = daformer.rare_class_probabilities(torch.tensor([0, 90, 10]), temperature=0.1)
    expected = torch.tensor([0.1 / 0.1, 0.9 / 0.1]).softmax(dim=0)                # (1 - f_c) / T for f = 0.9, 0.1
    assert probabilities[0] == 0 and probabilities[1:].tolist() == pytest.approx(expected.tolist())
    assert daformer.rare_class_probabilities(torch.tensor([50, 50]), 0.01).tolist() == pytest.approx([0.5, 0.5])


def test_rare_class_sampler_draws_images_holding_the_drawn_class():
    counts = daformer.source_class_pixel_counts(RareThingStreets("src", True), 19)
    sampler = daformer.RareClassSampler(counts, temperature=0.01, num_samples=500, seed=0)
    images, classes = sampler.sample(torch.Generator().manual_seed(0))
    assert bool((counts[images, classes] > 0).all())
    assert set(classes.tolist()) <= {0, 2, 18}
    sampler.set_epoch(1)
    first_pass = list(iter(sampler))
    sampler.set_epoch(2)
    second_pass = list(iter(sampler))
    assert len(first_pass) == 500 and first_pass != second_pass                 # a fresh stream per epoch
    sampler.set_epoch(1)
    assert list(iter(sampler)) == first_pass                                      # and a reproducible one


def test_rare_class_sampling_over_represents_the_rare_class(tmp_path, rare_thing_family):
    """The source loader with RCS returns bicycle images far more often than the 1 in 8 of a uniform shuffle."""
    def bicycle_share(config: t2sda.T2sdaConfig) -> float:
        batches = first_batches(t2sda.source_loader(_rare_thing_context(tmp_path), config), 40)
        return float(torch.cat([(batch["label"] == 18).flatten(1).any(dim=1) for batch in batches]).float().mean())

    rcs = bicycle_share(config_from_dict(t2sda.T2sdaConfig, {"batch_size": 4}))
    uniform = bicycle_share(config_from_dict(t2sda.T2sdaConfig, {"batch_size": 4, "rare_class_sampling": False}))
    assert uniform == pytest.approx(1 / 8, abs=0.01)
    assert rcs > 0.6                                                              # P(bicycle) ~ 0.9 at T = 0.01
    assert (tmp_path / "cache" / "source_class_pixels").is_dir()                  # counted once, then cached


def first_batches(loader, count: int) -> list[dict]:
    """The first ``count`` batches of an endless pass over ``loader``."""
    from raysel.methods.training import infinite_batches

    batches = infinite_batches(loader)
    return [next(batches) for _ in range(count)]


def test_thing_class_mask_keeps_patches_mostly_of_one_thing_class():
    labels = torch.full((1, 8, 8), 2)
    labels[0, :4, :4] = 13                        # a whole patch of car
    labels[0, :4, 4:7] = 13                       # 12 of 16 pixels car: exactly the 0.75 ratio
    labels[0, 4:, :4] = 255                       # ignore patch
    labels[0, 4:, 4:6] = 11                       # half a patch of person
    mask = daformer.thing_class_mask(labels, (2, 2), num_classes=19)
    assert mask.tolist() == [[[True, True], [False, False]]]
    assert daformer.thing_class_mask(labels, (2, 2), 19, min_ratio=0.8).tolist() == [[[True, False], [False, False]]]


def test_feature_distance_is_zero_for_the_reference_weights_and_trains_only_the_encoder():
    from raysel.models import build_model

    torch.manual_seed(0)
    segmenter = build_model("small_segnet", "segmentation", 19).freeze_batchnorm(True).train()
    reference = daformer.frozen_reference(segmenter)
    images, labels = torch.randn(2, 3, 32, 64), torch.full((2, 32, 64), 13)

    def distance() -> torch.Tensor:
        with daformer.captured_output(daformer.bottleneck_module(segmenter)) as bottleneck:
            segmenter(images)
        return daformer.thing_feature_distance(bottleneck[0], reference, images, labels, 19)

    assert float(distance().detach()) == 0.0                                     # identical weights, identical features
    optimizer = torch.optim.SGD([p for p in segmenter.parameters() if p.requires_grad], lr=0.1)
    torch.nn.functional.cross_entropy(segmenter(images), labels).backward()    # one step of the source loss
    optimizer.step()
    segmenter.zero_grad(set_to_none=True)

    moved = distance()
    assert float(moved.detach()) > 1e-6
    moved.backward()
    encoder = {id(p) for p in segmenter.backbone_parameters()}
    trainable = [(name, p) for name, p in segmenter.named_parameters() if p.requires_grad]
    assert all((p.grad is not None) == (id(p) in encoder) for _, p in trainable)
    assert any(float(p.grad.abs().sum()) > 0 for _, p in trainable if id(p) in encoder)
    assert all(p.grad is None and not p.requires_grad for p in reference.parameters())


def test_feature_distance_without_thing_pixels_is_zero_and_keeps_the_graph():
    features = torch.randn(1, 4, 2, 2, requires_grad=True)
    loss = daformer.feature_distance_loss(features, torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))
    loss.backward()
    assert float(loss.detach()) == 0.0 and features.grad is not None


def test_daformer_strategies_are_on_by_default_with_daformer_values():
    config = config_from_dict(t2sda.T2sdaConfig, {})
    assert config.rare_class_sampling and config.feature_distance
    assert (config.rcs_temperature, config.lambda_fd, config.fd_min_label_ratio) == (0.01, 0.005, 0.75)
    assert config.rcs_min_pixels_fraction == pytest.approx(3000 / (1914 * 1052))


def test_end_to_end_feature_distance_enters_the_loss(tmp_path, rare_thing_family):
    config = config_from_dict(t2sda.T2sdaConfig, {"iterations": 3, "report_interval": 3, "source_iterations": 1,
                                                  "n": 8, "m": 16, "warmup_iterations": 0})
    ctx = _rare_thing_context(tmp_path)
    t2sda.train(config, ctx)
    report = ctx.session.reports[-1]
    assert math.isfinite(report["loss"]) and report["loss_fd"] > 0              # the student left the reference
    off = dataclasses.replace(config, feature_distance=False)
    ctx = _rare_thing_context(tmp_path, "without_fd")
    t2sda.train(off, ctx)
    assert ctx.session.reports[-1]["loss_fd"] == 0.0


def test_rcs_crop_retry_keeps_the_sampled_class_far_more_often():
    """DAFormer's crop retry: a small object of the drawn class survives the U(0.75, 1) crop almost always with it,
    while a plain crop cuts it out a sizeable share of the time."""
    from raysel.methods.augment import weak_augment

    height, width, count = 96, 192, 200
    position = torch.Generator().manual_seed(1)
    labels = torch.zeros(count, height, width, dtype=torch.long)
    for index in range(count):
        top = int(torch.randint(0, height - 6, (), generator=position))
        left = int(torch.randint(0, width - 6, (), generator=position))
        labels[index, top:top + 6, left:left + 6] = 18                            # a 36-pixel bicycle
    images = torch.randn(count, 3, height, width)
    fraction = daformer.DAFORMER_RCS_MIN_CROP_RATIO * daformer.DAFORMER_RCS_MIN_PIXELS_FRACTION
    needed = fraction * height * width

    def kept(keep_classes) -> float:
        _, cropped = weak_augment(images, labels, torch.Generator().manual_seed(0), keep_classes=keep_classes,
                                  keep_fraction=fraction)
        return float(((cropped == 18).flatten(1).sum(dim=1) > needed).float().mean())

    plain, retried = kept(None), kept(torch.full((count,), 18))
    assert plain < 0.9                                                            # a plain crop loses it (~15 %)
    assert retried > 0.99
    # without keep_classes, the random stream and the result are the plain view's
    assert torch.equal(weak_augment(images[:4], labels[:4], torch.Generator().manual_seed(3))[1],
                       weak_augment(images[:4], labels[:4], torch.Generator().manual_seed(3),
                                    keep_classes=torch.full((4,), -1), keep_fraction=fraction)[1])


def test_rcs_source_batches_carry_the_drawn_class(tmp_path, rare_thing_family):
    config = config_from_dict(t2sda.T2sdaConfig, {"batch_size": 4})
    batch = first_batches(t2sda.source_loader(_rare_thing_context(tmp_path), config), 1)[0]
    assert batch["rcs_class"].shape == (4,)
    for label, cls in zip(batch["label"], batch["rcs_class"].tolist()):
        assert bool((label == cls).any())                                         # the image holds its drawn class


def test_feature_distance_reference_is_imagenet_when_the_weights_load(tmp_path, monkeypatch):
    """The reference follows the real loader: ImageNet encoder when its cached weights load, else the source copy."""
    from torchvision.models import Weights, WeightsEnum

    from raysel.models.base import SegmentationModel
    from raysel.models.pretrained import imagenet_checkpoint_path, load_imagenet_weights

    class TinyWeights(WeightsEnum):
        IMAGENET1K_V1 = Weights(url="https://example.invalid/tiny_imagenet.pth", transforms=lambda: None, meta={})

    class TinySegmenter(SegmentationModel):
        def __init__(self, pretrained: bool) -> None:
            super().__init__()
            self.num_classes, self.feature_dim = 19, 4
            self.backbone = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.classifier = torch.nn.Conv2d(4, 19, 1)
            if pretrained:
                self.imagenet_pretrained = load_imagenet_weights(self.backbone, TinyWeights.IMAGENET1K_V1, "tiny")

        def forward_features(self, x):
            return self.backbone(x)

        def head(self, features):
            return self.classifier(features)

        def backbone_modules(self):
            return [self.backbone]

        def head_modules(self):
            return [self.classifier]

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))               # where the loader looks
    source = TinySegmenter(pretrained=False)
    reference, kind = daformer.feature_distance_reference(lambda: TinySegmenter(pretrained=True), source)
    assert kind == daformer.SOURCE_MODEL_REFERENCE                          # no cached weights: the source copy
    assert torch.equal(reference.backbone.weight, source.backbone.weight) and reference is not source

    imagenet = torch.nn.Conv2d(3, 4, 3, padding=1)
    path = imagenet_checkpoint_path(TinyWeights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), path)
    reference, kind = daformer.feature_distance_reference(lambda: TinySegmenter(pretrained=True), source)
    assert kind == daformer.IMAGENET_REFERENCE                                # cached weights: ImageNet encoder
    assert torch.equal(reference.backbone.weight, imagenet.weight)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())


def test_trial_reports_the_feature_distance_reference_and_loss_share(tmp_path, rare_thing_family):
    config = config_from_dict(t2sda.T2sdaConfig, {"iterations": 2, "report_interval": 2, "source_iterations": 1,
                                                  "n": 8, "m": 16, "warmup_iterations": 0})
    ctx = _rare_thing_context(tmp_path)
    t2sda.train(config, ctx)
    report = ctx.session.reports[-1]
    assert report["fd_imagenet_reference"] == 0.0                               # small_segnet has no ImageNet weights
    assert 0.0 <= report["fd_loss_share"] < 0.05
