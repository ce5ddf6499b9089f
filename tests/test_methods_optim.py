"""Optimisers and schedules (raysel.methods.optim) with known learning rates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysel.errors import ConfigError
from raysel.methods import networks, optim
from raysel.models import build_model


def small_segnet() -> nn.Module:
    return build_model("small_segnet", "segmentation", 19)


def test_cosine_schedule_runs_from_lr_to_lr_times_eta_min() -> None:
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = optim.build_scheduler(optimizer, total_iterations=10, schedule="cosine", eta_min_ratio=1e-3)
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
    scheduler = optim.build_scheduler(optimizer, 4, "poly", power=1.0)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="cosine, poly, constant"):
        optim.build_scheduler(optimizer, 4, "step")


def test_parameter_groups_split_backbone_and_head_and_skip_frozen() -> None:
    model = small_segnet()
    networks.freeze_batchnorm(model)
    groups = {g["name"]: g for g in optim.parameter_groups(model, 1.0, backbone_lr_ratio=0.1)}
    assert groups["backbone"]["lr"] == pytest.approx(0.1) and groups["head"]["lr"] == pytest.approx(1.0)
    grouped = [p for g in groups.values() for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    assert len(trainable) < len(list(model.parameters()))  # BN affine parameters left out
    optimizer = optim.build_optimizer(model, 1e-3, optimizer="sgd")
    assert isinstance(optimizer, torch.optim.SGD)
    with pytest.raises(ConfigError, match="adam, sgd"):
        optim.build_optimizer(model, 1e-3, optimizer="rmsprop")
