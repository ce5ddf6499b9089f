"""Model helpers (raysel.methods.networks): mean teacher, EMA update (HIAST Eq. 13), BatchNorm freezing."""

from __future__ import annotations

import torch
from torch import nn

from raysel.methods import networks
from raysel.models import build_model


def small_segnet() -> nn.Module:
    return build_model("small_segnet", "segmentation", 19)


def test_ema_update_is_eq13_and_copies_buffers() -> None:
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    teacher = networks.make_ema_teacher(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(0.0)
        for p in student.parameters():
            p.fill_(1.0)
        student[1].running_mean.fill_(3.0)
    networks.ema_update(teacher, student, tau=0.9)
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.1))
    assert torch.equal(teacher[1].running_mean, torch.full((2,), 3.0))
    networks.ema_update(teacher, student, tau=0.9)  # 0.9 * 0.1 + 0.1 * 1 = 0.19
    assert torch.allclose(next(teacher.parameters()), torch.full((2, 2), 0.19))


def test_ema_teacher_is_frozen_copy() -> None:
    student = nn.Linear(3, 2)
    teacher = networks.make_ema_teacher(student)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.weight, student.weight) and teacher.weight is not student.weight
    networks.ema_update(teacher, student, tau=0.0)  # tau 0: the teacher becomes the student
    assert torch.equal(teacher.weight, student.weight)


def test_freeze_batchnorm_survives_train_mode() -> None:
    model = small_segnet()
    networks.freeze_batchnorm(model)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    before = norms[0].running_mean.clone()
    model(torch.randn(2, 3, 32, 64) * 5)
    assert torch.equal(norms[0].running_mean, before)

    plain = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))  # generic module: BN put in eval mode
    networks.freeze_batchnorm(plain)
    assert not plain[1].training and not plain[1].weight.requires_grad
