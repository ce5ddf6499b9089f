"""SFDA (raysel.methods.sfda): each loss on small tensors with known answers, config errors, source-freeness,
and a tiny end-to-end LocalSession run on an in-test synthetic dataset that reports and resumes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import raysel.data
from raysel.data.family import DatasetFamily
from raysel.errors import ConfigError
from raysel.hyperparameters import config_from_dict
from raysel.methods import sfda
from raysel.methods.base import LocalSession, RunContext, RunSpec, StopRun
from raysel.models.discriminators import PatchDiscriminator
from raysel.models.generator import NoiseToImageGenerator
from raysel.registry import get_method

NUM_CLASSES = 4
IMAGE_SIZE = (32, 64)

# ----------------------------------------------------------------------------------------------------------------
# A tiny synthetic two-domain segmentation family (horizontal bands; the target is colour-shifted)
# ----------------------------------------------------------------------------------------------------------------

CLASS_COLOURS = torch.tensor([[0.5, 0.7, 1.0], [0.6, 0.3, 0.2], [0.2, 0.7, 0.2], [0.3, 0.3, 0.3]])
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class BandsDataset(Dataset):
    """Images of 4 horizontal class bands with random boundaries; labels only when asked."""

    def __init__(self, domain: str, split: str, with_labels: bool, count: int = 8) -> None:
        self.domain, self.with_labels, self.count = domain, with_labels, count
        self.seed = {"source": 0, "target": 1000}[domain] + (500 if split == "heldout" else 0)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed + index)
        height, width = IMAGE_SIZE
        bounds = torch.sort(torch.randint(4, height - 4, (3,), generator=g)).values
        rows = torch.arange(height)
        label_rows = (rows[:, None] >= bounds[None, :]).sum(1)
        label = label_rows[:, None].expand(height, width).clone()
        pixels = CLASS_COLOURS[label].permute(2, 0, 1)
        if self.domain == "target":
            pixels = (pixels * 0.6 + 0.1).flip(0)  # darker, channels swapped: a domain shift
        pixels = (pixels + 0.05 * torch.randn(pixels.shape, generator=g)).clamp(0, 1)
        sample = {"image": (pixels - MEAN) / STD, "index": index, "name": f"{self.domain}_{index}"}
        if self.with_labels:
            sample["label"] = label.long()
        return sample


def make_family(source_available: bool = True) -> DatasetFamily:
    """A segmentation family 'bands' whose source domain can be made unreadable (raises on load)."""

    def loader(root: Path, domain: str, split: str, with_labels: bool, image_size) -> Dataset:
        if domain == "source" and not source_available:
            raise AssertionError("source data was read during source-free adaptation")
        return BandsDataset(domain, split, with_labels)

    return DatasetFamily(name="bands", task="segmentation", num_classes=NUM_CLASSES,
                         class_names=("sky", "building", "vegetation", "road"), domains=("source", "target"),
                         default_source="source", default_targets=("target",), embedded=True,
                         loader=loader, preparer=lambda root: root)


@pytest.fixture
def make_context(monkeypatch, tmp_path):
    """Build RunContexts on the synthetic family (RunContext looks families up via raysel.data.get_family)."""

    def build(source_available: bool = True, session: LocalSession | None = None, seed: int = 0) -> RunContext:
        family = make_family(source_available)
        monkeypatch.setattr(raysel.data, "get_family", lambda name: family, raising=False)
        spec = RunSpec(method="sfda", dataset="bands", data_root=str(tmp_path / "data"),
                       cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path), seed=seed)
        return RunContext(spec, session or LocalSession(checkpoint_root=str(tmp_path / "checkpoints")))

    return build


def tiny_config(**overrides) -> sfda.SfdaConfig:
    values = dict(iterations=4, reports=2, batch_size=2, k_patches=2, source_iterations=3, generator_width=4,
                  discriminator_width=4, latent_dim=8, embedding_dim=8)
    values.update(overrides)
    return config_from_dict(sfda.SfdaConfig, values)


def tiny_source_checkpoint(path: Path, num_classes: int = NUM_CLASSES) -> Path:
    from raysel.models import build_model

    torch.manual_seed(0)
    model = build_model("small_segnet", "segmentation", num_classes)
    torch.save({"model": model.state_dict()}, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------


def test_bns_loss_zero_when_statistics_match_and_positive_otherwise():
    means, variances = [torch.tensor([0.5, -1.0]), torch.tensor([2.0])], [torch.tensor([1.0, 4.0]), torch.tensor([0.3])]
    assert sfda.batchnorm_statistics_loss(means, variances, means, variances).item() == 0.0
    shifted = [m + 1.0 for m in means]
    # squared norm: (1^2 + 1^2) + 1^2 = 3; unsquared: sqrt(2) + 1
    assert sfda.batchnorm_statistics_loss(shifted, variances, means, variances).item() == pytest.approx(3.0)
    assert sfda.batchnorm_statistics_loss(shifted, variances, means, variances, norm="l2").item() == \
        pytest.approx(math.sqrt(2) + 1)


def test_bns_hook_matches_batchnorm_statistics_of_its_input():
    layer = torch.nn.BatchNorm2d(3).eval()
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    layer.running_mean.copy_(x.mean((0, 2, 3)))
    layer.running_var.copy_(x.var((0, 2, 3), unbiased=False))
    model = torch.nn.Sequential(layer)
    with sfda.BatchNormStatistics(model) as statistics:
        model(x)
    assert len(statistics.batch_means) == 1
    assert statistics.loss().item() == pytest.approx(0.0, abs=1e-9)
    with sfda.BatchNormStatistics(model) as statistics:
        model(x + 1.0)
    assert statistics.loss().item() == pytest.approx(3.0, rel=1e-5)  # mean off by 1 in 3 channels
    assert not layer._forward_hooks  # hooks removed on exit


def test_mae_discrepancy_zero_for_identical_outputs_and_mean_abs_otherwise():
    logits = torch.randn(2, 5, 4, 4)
    assert sfda.output_discrepancy(logits, logits.clone()).item() == 0.0
    assert sfda.output_discrepancy(logits + 0.5, logits).item() == pytest.approx(0.5)
    assert sfda.output_discrepancy(logits + 3.0, logits, space="probabilities").item() == pytest.approx(0.0, abs=1e-6)


def test_attention_maps_shapes_and_row_normalisation():
    features = torch.randn(2, 6, 3, 4)
    spatial, channel = sfda.spatial_attention(features), sfda.channel_attention(features)
    assert spatial.shape == (2, 12, 12) and channel.shape == (2, 6, 6)
    assert torch.allclose(spatial.sum(-1), torch.ones(2, 12)) and torch.allclose(channel.sum(-1), torch.ones(2, 6))
    assert (spatial >= 0).all() and (channel >= 0).all()
    dual = sfda.dual_attention_map(features)
    assert dual.shape == (2, 12, 12)  # [B, 2C, N]
    # Eq. 8: s_ji measures position i's impact on j -> with one-hot features a position attends to itself
    one_hot = torch.eye(3).mul(30.0).view(1, 3, 3, 1)  # 3 channels, 3 positions, orthogonal features
    assert torch.allclose(sfda.spatial_attention(one_hot)[0], torch.eye(3), atol=1e-6)
    assert torch.allclose(sfda.dual_attention_map(one_hot)[0, :3], one_hot.flatten(2)[0], atol=1e-4)


def test_attention_distillation_zero_for_identical_features_positive_otherwise():
    features = torch.randn(2, 4, 3, 3)
    assert sfda.attention_distillation_loss(features, features.clone()).item() == 0.0
    assert sfda.attention_distillation_loss(features, features + 1.0).item() > 0.0
    assert sfda.attention_kl_loss(features, features.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # target features at another size are pooled to the source size (paper 4.1.2)
    larger = torch.nn.functional.interpolate(features, scale_factor=2, mode="nearest")
    assert sfda.attention_kl_loss(features, larger).item() == pytest.approx(0.0, abs=1e-5)
    assert sfda.attention_kl_loss(features, torch.randn(2, 4, 3, 3)).item() > 0.0


def test_patch_split_entropy_and_ranking_on_hand_made_maps():
    # 4 images, 2x2 patches of 2x2 pixels, 2 classes; image b's top-left patch has confidence conf[b]
    conf = torch.tensor([0.9, 0.5, 0.99, 0.7])
    probabilities = torch.full((4, 2, 4, 4), 0.5)
    probabilities[:, 0, :2, :2] = conf.view(4, 1, 1)
    probabilities[:, 1, :2, :2] = 1 - conf.view(4, 1, 1)
    patches = sfda.split_into_patches(probabilities, 2)
    assert patches.shape == (4, 4, 2, 2, 2)  # [K*K, B, C, H/K, W/K]
    assert torch.equal(patches[0, :, 0, 0, 0], conf)  # position 0 = top-left
    entropy = sfda.patch_entropy(patches)
    expected = -(conf * conf.log() + (1 - conf) * (1 - conf).log())
    assert torch.allclose(entropy[0], expected)
    assert torch.allclose(entropy[1:], torch.full((3, 4), math.log(2)))
    easy, hard = sfda.rank_patches(entropy)
    assert easy[0].tolist() == [2, 0] and hard[0].tolist() == [3, 1]  # lowest entropy = most confident
    easy_patches, hard_patches, positions = sfda.easy_and_hard_patches(probabilities, 2)
    assert easy_patches.shape == hard_patches.shape == (8, 2, 2, 2)
    assert positions.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert easy_patches[0, 0, 0, 0].item() == pytest.approx(0.99)


def test_maxsquare_on_one_hot_and_uniform():
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 5, (2, 3, 3)), 5).permute(0, 3, 1, 2).float()
    assert sfda.maxsquare_loss(one_hot).item() == pytest.approx(-1.0)
    assert sfda.maxsquare_loss(torch.full((2, 5, 3, 3), 0.2)).item() == pytest.approx(-0.2)


def test_patch_discriminator_losses_shapes_and_values():
    discriminator = PatchDiscriminator(3, num_positions=4, ndf=4, num_layers=2, embedding_dim=8)
    easy, hard = torch.rand(6, 3, 4, 8).softmax(1), torch.rand(6, 3, 4, 8).softmax(1)
    positions = torch.tensor([0, 0, 1, 2, 3, 3])
    easy_logits, hard_logits = discriminator(easy, positions), discriminator(hard, positions)
    assert easy_logits.shape == hard_logits.shape == (6,)
    zeros = torch.zeros(6)
    assert sfda.patch_discriminator_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert sfda.patch_adversarial_loss(zeros).item() == pytest.approx(math.log(2))
    confident = torch.full((6,), 20.0)
    assert sfda.patch_discriminator_loss(-confident, confident).item() < 1e-6  # D right: easy 0, hard 1
    assert sfda.patch_adversarial_loss(-confident).item() < 1e-6  # T fooled D: hard looks easy


def test_generator_output_shape_and_normalisation():
    generator = NoiseToImageGenerator((24, 40), latent_dim=8, width=4)
    images = generator(generator.sample_noise(3, torch.Generator().manual_seed(0)))
    assert images.shape == (3, 3, 24, 40)
    pixels = images * STD + MEAN
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_discriminator_depth_follows_patch_size():
    assert sfda.discriminator_layers((24, 48), 4, (96, 192)) == 4
    assert sfda.discriminator_layers((8, 16), 4, (32, 64)) == 3
    with pytest.raises(ConfigError, match="k_patches=8"):
        sfda.discriminator_layers((2, 4), 8, (16, 32))


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


def test_default_config_has_paper_values_and_is_registered():
    config = sfda.SfdaConfig()
    config.validate()
    assert (config.alpha, config.beta, config.gamma, config.k_patches) == (1.0, 0.5, 0.01, 3)
    assert (config.learning_rate, config.momentum, config.weight_decay, config.latent_dim) == (2.5e-4, 0.9, 1e-4, 256)
    method = get_method("sfda")
    assert method.tasks == ("segmentation",) and method.config_class is sfda.SfdaConfig


@pytest.mark.parametrize("key, value, message", [
    ("alpha", -1.0, "alpha"), ("beta", float("nan"), "beta"), ("gamma", -0.1, "gamma"),
    ("k_patches", 0, "k_patches"), ("batch_size", 3, "even"), ("batch_size", 1, "batch_size"),
    ("fake_scale", 0.0, "fake_scale"), ("mae_space", "l2", "mae_space"), ("bns_norm", "l1", "bns_norm"),
    ("attention_scaling", "x", "attention_scaling"), ("reports", 0, "reports"), ("momentum", 1.0, "momentum"),
])
def test_invalid_hyperparameters_raise_config_error(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(sfda.SfdaConfig, {key: value})


def test_odd_batch_allowed_without_ipsm():
    config_from_dict(sfda.SfdaConfig, {"batch_size": 3, "k_patches": 1})


def test_missing_source_checkpoint_is_a_config_error(make_context, tmp_path):
    ctx = make_context()
    config = tiny_config(source_checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match="nope.pt: no such file"):
        sfda.train_sfda(config, ctx)


def test_source_checkpoint_with_other_classes_is_a_config_error(make_context, tmp_path):
    ctx = make_context()
    path = tiny_source_checkpoint(tmp_path / "source19.pt", num_classes=19)
    with pytest.raises(ConfigError, match=f"predicts 19 classes but dataset 'bands' has {NUM_CLASSES}"):
        sfda.train_sfda(tiny_config(source_checkpoint=str(path)), ctx)


def test_unreadable_source_checkpoint_is_a_config_error(make_context, tmp_path):
    ctx = make_context()
    path = tmp_path / "broken.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="broken.pt: not a readable torch checkpoint"):
        sfda.train_sfda(tiny_config(source_checkpoint=str(path)), ctx)


def test_patches_too_small_for_the_image_is_a_config_error(make_context, tmp_path):
    ctx = make_context()
    path = tiny_source_checkpoint(tmp_path / "source.pt")
    with pytest.raises(ConfigError, match="k_patches=16"):
        sfda.train_sfda(tiny_config(source_checkpoint=str(path), k_patches=16), ctx)


# ----------------------------------------------------------------------------------------------------------------
# Source-free proof and end-to-end runs
# ----------------------------------------------------------------------------------------------------------------


def _forbid(*args, **kwargs):
    raise AssertionError("source data was read during source-free adaptation")


def test_adaptation_runs_without_any_source_data_given_a_checkpoint(make_context, tmp_path):
    path = tiny_source_checkpoint(tmp_path / "source.pt")
    ctx = make_context(source_available=False)  # the family itself refuses to load the source domain
    ctx.source_dataset = _forbid  # type: ignore[method-assign]
    ctx.cached_stage = _forbid  # type: ignore[method-assign]  # no source stage either
    model = sfda.train_sfda(tiny_config(source_checkpoint=str(path)), ctx).model
    assert not model.training
    assert model(torch.zeros(1, 3, *IMAGE_SIZE)).shape == (1, NUM_CLASSES, *IMAGE_SIZE)


def test_cached_source_stage_reads_source_but_adaptation_does_not(make_context):
    ctx = make_context()
    calls = []
    original_stage = ctx.cached_stage

    def stage_then_forbid(name, key, build, per_target=True):
        calls.append(name)
        result = original_stage(name, key, build, per_target)
        ctx.source_dataset = _forbid  # from here on (the adaptation phase) source data is off limits
        return result

    ctx.cached_stage = stage_then_forbid  # type: ignore[method-assign]
    sfda.train_sfda(tiny_config(), ctx)
    assert calls == ["source_only"]


def test_tiny_run_reports_and_resumes(make_context, tmp_path):
    config = tiny_config(source_checkpoint=str(tiny_source_checkpoint(tmp_path / "source.pt")))
    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"), stop_after_reports=1)
    with pytest.raises(StopRun):
        sfda.train_sfda(config, make_context(session=session))
    first = session.reports[0]
    assert first["epoch"] == 1 and first["iteration"] == 2
    assert 0.0 < first["target_confidence"] <= 1.0 and math.isfinite(first["loss"])
    for key in ("loss_bns", "loss_mae", "loss_dad_ss", "loss_dad_st", "loss_maxsquare", "loss_adversarial",
                "loss_discriminator", "loss_generator"):
        assert math.isfinite(first[key]), key
    # resume from the checkpoint: the run continues at iteration 2 and the epoch counter keeps increasing
    session.stop_after_reports = None
    restored_state = torch.load(Path(session._last_checkpoint) / "state.pt", weights_only=False)
    model = sfda.train_sfda(config, make_context(session=session)).model
    assert [r["epoch"] for r in session.reports] == [1, 2]
    assert session.reports[1]["iteration"] == 4
    assert not torch.equal(model.state_dict()["classifier.weight"], restored_state["model"]["classifier.weight"])


def test_adaptation_changes_the_model_and_keeps_the_source_model_fixed(make_context, tmp_path):
    path = tiny_source_checkpoint(tmp_path / "source.pt")
    source_state = torch.load(path)["model"]
    ctx = make_context()
    config = tiny_config(source_checkpoint=str(path), iterations=2, reports=1, learning_rate=0.01)
    model = sfda.adapt(config, ctx, {k: v.clone() for k, v in source_state.items()})
    changed = [k for k, v in model.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, source_state[k])]
    assert "classifier.weight" in changed
    assert torch.equal(torch.load(path)["model"]["classifier.weight"], source_state["classifier.weight"])


def test_ipsm_off_with_k_one_runs(make_context, tmp_path):
    path = tiny_source_checkpoint(tmp_path / "source.pt")
    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    sfda.train_sfda(tiny_config(source_checkpoint=str(path), k_patches=1, batch_size=3, iterations=2, reports=1),
                    make_context(session=session))
    assert session.reports[-1]["loss_adversarial"] == 0.0 and session.reports[-1]["loss_discriminator"] == 0.0


def test_search_space_file_names_real_hyperparameters():
    import yaml

    method = get_method("sfda")
    space = yaml.safe_load(method.search_space_path.read_text())
    assert {"alpha", "beta", "gamma", "k_patches"} <= set(space)
    assert set(space) <= set(method.hyperparameter_names())
    grid_points = 1
    for spec in space.values():
        if isinstance(spec, dict) and "grid" in spec:
            grid_points *= len(spec["grid"])
    assert 4 <= grid_points <= 8


def _batchnorm_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()
            if name.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_fake_stream_leaves_batchnorm_running_statistics_to_the_target_stream():
    from raysel.models import build_model

    torch.manual_seed(0)
    model = build_model("small_segnet", "segmentation", NUM_CLASSES).train()
    target_only = build_model("small_segnet", "segmentation", NUM_CLASSES).train()
    fake_only = build_model("small_segnet", "segmentation", NUM_CLASSES).train()
    target_only.load_state_dict(model.state_dict())
    fake_only.load_state_dict(model.state_dict())
    assert _batchnorm_buffers(model), "the model needs BatchNorm layers for this test"
    fake, target = 3.0 + 2.0 * torch.randn(2, 3, 16, 32), torch.randn(2, 3, *IMAGE_SIZE)

    _, fake_logits, _, target_logits = sfda.TwoStreamForward(model)(fake, target)
    expected_target_logits = target_only(target)

    after, expected = _batchnorm_buffers(model), _batchnorm_buffers(target_only)
    for name in expected:  # the running statistics are those of the target batch alone
        assert torch.equal(after[name], expected[name]), name
    torch.testing.assert_close(target_logits, expected_target_logits)
    # the fake stream is still normalised with its own batch statistics, as a training-mode forward does
    torch.testing.assert_close(fake_logits, fake_only(fake))
    assert all(m.track_running_stats for m in model.modules() if hasattr(m, "track_running_stats"))


def test_sfda_step_updates_batchnorm_running_statistics_from_target_batches_only(make_context):
    """A real ``sfda_step`` (G, T, D updates): T's BN buffers afterwards are those of a forward on the target batch
    alone, not on target and fake images, so the fake stream goes through the statistics-preserving forward."""
    import copy

    from raysel.models import build_model

    ctx = make_context()
    config = tiny_config()
    assert not config.freeze_batchnorm                                   # BN would be frozen otherwise
    torch.manual_seed(0)
    source_state = build_model("small_segnet", "segmentation", NUM_CLASSES).state_dict()
    nets = sfda._build_networks(config, ctx, source_state, IMAGE_SIZE, 2)
    target_images = torch.randn(2, 3, *IMAGE_SIZE)
    noise = nets.generator.sample_noise(2, torch.Generator().manual_seed(0), ctx.device)
    before = copy.deepcopy(nets.target).train()
    with torch.no_grad():
        fake = copy.deepcopy(nets.generator)(noise)                        # the fake batch sfda_step will draw

    sfda.sfda_step(config, ctx, nets, target_images, noise)

    target_only, both_streams = copy.deepcopy(before), copy.deepcopy(before)
    with torch.no_grad():
        target_only(target_images)
        both_streams(fake)
        both_streams(target_images)
    after, expected, mixed = (_batchnorm_buffers(m) for m in (nets.target, target_only, both_streams))
    assert expected
    for name in expected:
        torch.testing.assert_close(after[name], expected[name], msg=name)
    assert any(not torch.allclose(after[name], mixed[name]) for name in expected if "running" in name)
    assert any(not torch.equal(a, b) for a, b in zip(nets.target.parameters(), before.parameters()))  # T stepped
