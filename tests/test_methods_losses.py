"""Shared losses (raysel.methods.losses) at values with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from raysel.methods import losses


def test_cross_entropy_ignores_255_and_survives_all_ignored() -> None:
    logits = torch.zeros(1, 4, 2, 2, requires_grad=True)
    labels = torch.tensor([[[0, 255], [255, 255]]])
    assert losses.cross_entropy(logits, labels).item() == pytest.approx(math.log(4))
    empty = losses.cross_entropy(logits, torch.full((1, 2, 2), 255))
    assert empty.item() == 0.0
    empty.backward()  # has a graph
    assert logits.grad is not None


def test_lsgan_losses_at_their_optima() -> None:
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert losses.lsgan_discriminator_loss(ones, zeros).item() == 0.0  # perfect discriminator
    assert losses.lsgan_discriminator_loss(zeros, ones).item() == pytest.approx(1.0)
    assert losses.lsgan_generator_loss(ones).item() == 0.0  # target fooled into "source"
    assert losses.lsgan_generator_loss(zeros).item() == pytest.approx(1.0)
