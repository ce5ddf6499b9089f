"""Shared training pieces (raysel.methods.common) on tiny tensors with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from raysel.errors import ConfigError
from raysel.methods import common
from raysel.methods.base import NonFiniteLossError


class OneWorker:
    """The collective part of RunContext for a single worker (identity reductions)."""

    rank, world_size = 0, 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def small_segnet() -> nn.Module:
    from raysel.models import build_model

    return build_model("small_segnet", "segmentation", 19)


# ---------------------------------------------------------------------------------------------------- EMA teacher


def test_ema_update_is_eq13_and_copies_buffers() -> None:
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    teacher = common.make_ema_teacher(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(0.0)
        for p in student.parameters():
            p.fill_(1.0)
        student[1].running_mean.fill_(3.0)
    common.ema_update(teacher, student, tau=0.9)
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.1))
    assert torch.equal(teacher[1].running_mean, torch.full((2,), 3.0))
    common.ema_update(teacher, student, tau=0.9)  # 0.9 * 0.1 + 0.1 * 1 = 0.19
    assert torch.allclose(next(teacher.parameters()), torch.full((2, 2), 0.19))


def test_ema_teacher_is_frozen_copy() -> None:
    student = nn.Linear(3, 2)
    teacher = common.make_ema_teacher(student)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.weight, student.weight) and teacher.weight is not student.weight
    common.ema_update(teacher, student, tau=0.0)  # tau 0: the teacher becomes the student
    assert torch.equal(teacher.weight, student.weight)


# ---------------------------------------------------------------------------------------------------- optimiser


def test_cosine_schedule_runs_from_lr_to_lr_times_eta_min() -> None:
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = common.build_scheduler(optimizer, total_iterations=10, schedule="cosine", eta_min_ratio=1e-3)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(1.0)
    assert rates[5] == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert rates[-1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_poly_and_unknown_schedule() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = common.build_scheduler(optimizer, 4, "poly", power=1.0)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="cosine, poly, constant"):
        common.build_scheduler(optimizer, 4, "step")


def test_parameter_groups_split_backbone_and_head_and_skip_frozen() -> None:
    model = small_segnet()
    common.freeze_batchnorm(model)
    groups = {g["name"]: g for g in common.parameter_groups(model, 1.0, backbone_lr_ratio=0.1)}
    assert groups["backbone"]["lr"] == pytest.approx(0.1) and groups["head"]["lr"] == pytest.approx(1.0)
    grouped = [p for g in groups.values() for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    assert len(trainable) < len(list(model.parameters()))  # BN affine parameters left out
    optimizer = common.build_optimizer(model, 1e-3, optimizer="sgd")
    assert isinstance(optimizer, torch.optim.SGD)
    with pytest.raises(ConfigError, match="adam, sgd"):
        common.build_optimizer(model, 1e-3, optimizer="rmsprop")


def test_freeze_batchnorm_survives_train_mode() -> None:
    model = small_segnet()
    common.freeze_batchnorm(model)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    before = norms[0].running_mean.clone()
    model(torch.randn(2, 3, 32, 64) * 5)
    assert torch.equal(norms[0].running_mean, before)

    plain = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))  # generic module: BN put in eval mode
    common.freeze_batchnorm(plain)
    assert not plain[1].training and not plain[1].weight.requires_grad


# ---------------------------------------------------------------------------------------------------- augmentation


def test_weak_augment_flips_image_and_label_together() -> None:
    labels = torch.arange(8).repeat(2, 4, 1)  # [2, 4, 8]: column index as label
    images = labels[:, None].float().repeat(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(0)
    out_images, out_labels = common.weak_augment(images, labels, generator, scale_range=(1.0, 1.0))
    assert out_images.shape == images.shape and out_labels.shape == labels.shape
    assert torch.equal(out_images[:, 0].long(), out_labels)  # still aligned
    flipped = [bool(torch.equal(out_labels[i], labels[i].flip(-1))) for i in range(2)]
    unchanged = [bool(torch.equal(out_labels[i], labels[i])) for i in range(2)]
    assert all(f or u for f, u in zip(flipped, unchanged))


def test_weak_augment_scaled_crop_keeps_size_and_label_values() -> None:
    labels = torch.randint(0, 4, (3, 12, 24))
    labels[0, :2] = 255
    images = torch.randn(3, 3, 12, 24)
    out_images, out_labels = common.weak_augment(images, labels, torch.Generator().manual_seed(1),
                                                 scale_range=(0.5, 0.6))
    assert out_images.shape == images.shape and out_labels.dtype == labels.dtype
    assert set(out_labels.unique().tolist()) <= set(labels.unique().tolist())  # nearest: no new label values
    _, none_labels = common.weak_augment(images, None, torch.Generator())
    assert none_labels is None


def test_strong_augment_is_photometric_deterministic_and_finite() -> None:
    images = common.normalize(torch.rand(4, 3, 16, 32))
    first = common.strong_augment(images, torch.Generator().manual_seed(3), num_ops=3)
    second = common.strong_augment(images, torch.Generator().manual_seed(3), num_ops=3)
    assert first.shape == images.shape and torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert not torch.allclose(first, images)
    pixels = common.denormalize(first)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert torch.equal(common.strong_augment(images, torch.Generator(), num_ops=0), images)
    assert len(common.PHOTOMETRIC_OPS) == 8


def test_normalize_roundtrip() -> None:
    pixels = torch.rand(2, 3, 4, 4)
    assert torch.allclose(common.denormalize(common.normalize(pixels)), pixels, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- losses & loops


def test_cross_entropy_ignores_255_and_survives_all_ignored() -> None:
    logits = torch.zeros(1, 4, 2, 2, requires_grad=True)
    labels = torch.tensor([[[0, 255], [255, 255]]])
    assert common.cross_entropy(logits, labels).item() == pytest.approx(math.log(4))
    empty = common.cross_entropy(logits, torch.full((1, 2, 2), 255))
    assert empty.item() == 0.0
    empty.backward()  # has a graph
    assert logits.grad is not None


def test_lsgan_losses_at_their_optima() -> None:
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert common.lsgan_discriminator_loss(ones, zeros).item() == 0.0  # perfect discriminator
    assert common.lsgan_discriminator_loss(zeros, ones).item() == pytest.approx(1.0)
    assert common.lsgan_generator_loss(ones).item() == 0.0  # target fooled into "source"
    assert common.lsgan_generator_loss(zeros).item() == pytest.approx(1.0)


def test_infinite_batches_cycles_and_running_mean() -> None:
    loader = DataLoader(TensorDataset(torch.arange(3)), batch_size=2, drop_last=True)
    batches = common.infinite_batches(loader)
    assert [next(batches)[0].tolist() for _ in range(3)] == [[0, 1]] * 3
    empty = common.infinite_batches(DataLoader(TensorDataset(torch.arange(1)), batch_size=2, drop_last=True))
    with pytest.raises(ConfigError, match="smaller than one batch"):
        next(empty)
    running = common.RunningMean()
    running.add(loss=1.0, other=4.0)
    running.add(loss=3.0)
    assert running.means(OneWorker()) == {"loss": 2.0, "other": 4.0}
    running.add(loss=float("nan"))
    assert math.isnan(running.means()["loss"])


def test_memoized_dataset_decodes_once_and_respects_the_size_cap() -> None:
    class Counting(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.calls = 0

        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int) -> dict:
            self.calls += 1
            return {"image": torch.full((2,), float(index)), "index": index}

    inner = Counting()
    cached = common.MemoizedDataset(inner)
    assert [cached[i]["index"] for i in (0, 1, 1, 2, 2)] == [0, 1, 1, 2, 2] and len(cached) == 3
    assert inner.calls == 3
    uncached = common.MemoizedDataset(Counting(), max_bytes=8)  # 3 samples x 8 bytes do not fit
    uncached[1], uncached[1]
    assert not uncached.enabled and uncached.dataset.calls == 3


def test_stop_if_not_finite() -> None:
    common.stop_if_not_finite(OneWorker(), torch.tensor(1.0), "step 1")
    with pytest.raises(NonFiniteLossError, match="step 2"):
        common.stop_if_not_finite(OneWorker(), torch.tensor(float("nan")), "step 2")


def test_stage_settings_validate() -> None:
    common.SourceStageSettings().validate()
    common.AdversarialWarmupSettings().validate()
    with pytest.raises(ConfigError, match="lambda_at"):
        common.AdversarialWarmupSettings(lambda_at=-1).validate()
    with pytest.raises(ConfigError, match="source iterations"):
        common.SourceStageSettings(iterations=0).validate()


def test_source_batch_size_defaults_per_task_and_never_exceed_the_data() -> None:
    settings = common.SourceStageSettings()
    assert settings.batch_size_for("segmentation", 500) == 8
    assert settings.batch_size_for("classification", 360) == 32
    assert settings.batch_size_for("classification", 12) == 12  # tiny data: one batch of everything
    assert common.SourceStageSettings(batch_size=64).batch_size_for("classification", 12) == 64  # explicit wins
