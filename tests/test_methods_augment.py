"""Augmentation (raysel.methods.augment) on tiny normalised batches."""

from __future__ import annotations

import torch

from raysel.methods import augment


def test_weak_augment_flips_image_and_label_together() -> None:
    labels = torch.arange(8).repeat(2, 4, 1)  # [2, 4, 8]: column index as label
    images = labels[:, None].float().repeat(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(0)
    out_images, out_labels = augment.weak_augment(images, labels, generator, scale_range=(1.0, 1.0))
    assert out_images.shape == images.shape and out_labels.shape == labels.shape
    assert torch.equal(out_images[:, 0].long(), out_labels)  # still aligned
    flipped = [bool(torch.equal(out_labels[i], labels[i].flip(-1))) for i in range(2)]
    unchanged = [bool(torch.equal(out_labels[i], labels[i])) for i in range(2)]
    assert all(f or u for f, u in zip(flipped, unchanged))


def test_weak_augment_scaled_crop_keeps_size_and_label_values() -> None:
    labels = torch.randint(0, 4, (3, 12, 24))
    labels[0, :2] = 255
    images = torch.randn(3, 3, 12, 24)
    out_images, out_labels = augment.weak_augment(images, labels, torch.Generator().manual_seed(1),
                                                 scale_range=(0.5, 0.6))
    assert out_images.shape == images.shape and out_labels.dtype == labels.dtype
    assert set(out_labels.unique().tolist()) <= set(labels.unique().tolist())  # nearest: no new label values
    _, none_labels = augment.weak_augment(images, None, torch.Generator())
    assert none_labels is None


def test_strong_augment_is_photometric_deterministic_and_finite() -> None:
    images = augment.normalize(torch.rand(4, 3, 16, 32))
    first = augment.strong_augment(images, torch.Generator().manual_seed(3), num_ops=3)
    second = augment.strong_augment(images, torch.Generator().manual_seed(3), num_ops=3)
    assert first.shape == images.shape and torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert not torch.allclose(first, images)
    pixels = augment.denormalize(first)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert torch.equal(augment.strong_augment(images, torch.Generator(), num_ops=0), images)
    assert len(augment.PHOTOMETRIC_OPS) == 8


def test_normalize_roundtrip() -> None:
    pixels = torch.rand(2, 3, 4, 4)
    assert torch.allclose(augment.denormalize(augment.normalize(pixels)), pixels, atol=1e-6)
