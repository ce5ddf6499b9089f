"""Augmentation on ImageNet-normalised batches: the joint geometric weak view, the RandAugment-style strong view
(HIAST's photometric pool) and the source-training view built from both."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from raysel.conventions import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD


def _stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return mean, std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised ``[B, 3, H, W]`` -> pixels in [0, 1] (clamped)."""
    mean, std = _stats(images)
    return (images * std + mean).clamp(0.0, 1.0)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> ImageNet-normalised."""
    mean, std = _stats(pixels)
    return (pixels - mean) / std


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def weak_augment(images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
                 flip: bool = True, scale_range: tuple[float, float] = (0.75, 1.0),
                 keep_classes: torch.Tensor | None = None, keep_fraction: float = 0.0,
                 crop_retries: int = 10) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Joint geometric 'weak' view: random horizontal flip and a random scaled crop resized back (HIAST 'MS').

    ``scale_range`` bounds the crop's side as a fraction of the image's (aspect kept); HIAST passes its §5.1 range
    (``hiast.WEAK_CROP_SCALE``, 0.33-0.98), the source and warm-up stages keep the milder default.

    The same geometry is applied to image and label (labels resized with nearest neighbour), so pseudo-labels stay
    aligned; the strong view is then built from this output with photometric ops only (shared geometry).

    ``keep_classes`` (``[B]`` class per image, negative = none; needs ``labels``) is DAFormer's rare-class crop
    retry (``uda_dataset.py``, ``rcs_min_crop_ratio``): while the crop window holds no more than ``keep_fraction``
    of the image's labelled pixels of the image's class, the crop is redrawn, at most ``crop_retries`` times (the
    last draw is kept). Without ``keep_classes`` the random stream is exactly the plain one.
    """
    batch, _, height, width = images.shape
    out_images = images.clone()
    out_labels = labels.clone() if labels is not None else None
    for index in range(batch):
        image = images[index]
        label = labels[index] if labels is not None else None
        if flip and float(torch.rand((), generator=generator)) < 0.5:
            image = image.flip(-1)
            label = label.flip(-1) if label is not None else None
        window = _crop_window(generator, height, width, scale_range)
        kept = -1 if keep_classes is None or label is None else int(keep_classes[index])
        if kept >= 0:
            needed = keep_fraction * float((label != IGNORE_INDEX).sum())
            for _ in range(crop_retries):
                if _class_pixels(label, window, kept) > needed:
                    break
                window = _crop_window(generator, height, width, scale_range)
        if window is not None:
            top, left, crop_h, crop_w = window
            image = F.interpolate(image[None, :, top:top + crop_h, left:left + crop_w], size=(height, width),
                                  mode="bilinear", align_corners=False)[0]
            if label is not None:
                label = F.interpolate(label[None, None, top:top + crop_h, left:left + crop_w].float(),
                                      size=(height, width), mode="nearest")[0, 0].to(labels.dtype)
        out_images[index] = image
        if out_labels is not None:
            out_labels[index] = label
    return out_images, out_labels


def _crop_window(generator: torch.Generator, height: int, width: int,
                 scale_range: tuple[float, float]) -> tuple[int, int, int, int] | None:
    """A random (top, left, height, width) crop of side scale U(scale_range); None when the scale is 1 (no crop)."""
    scale = _uniform(generator, *scale_range)
    if scale >= 1.0:
        return None
    crop_h, crop_w = max(1, round(height * scale)), max(1, round(width * scale))
    top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
    left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
    return top, left, crop_h, crop_w


def _class_pixels(label: torch.Tensor, window: tuple[int, int, int, int] | None, cls: int) -> int:
    """Pixels of ``cls`` inside the crop window of ``label`` (the whole label when there is no crop)."""
    if window is not None:
        top, left, crop_h, crop_w = window
        label = label[top:top + crop_h, left:left + crop_w]
    return int((label == cls).sum())


def _to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels * 255.0).round().clamp(0, 255).to(torch.uint8)


def _photometric_ops() -> list[tuple[str, Any]]:
    """The candidate pool of HIAST's 'CCA' strong augmentation, as functions ``(pixels [3,H,W] in [0,1], gen)``."""
    def color_jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # albumentations' ColorJitter defaults (HIAST's pool): factors in [0.8, 1.2]
        x = TF.adjust_brightness(x, _uniform(g, 0.8, 1.2))
        x = TF.adjust_contrast(x, _uniform(g, 0.8, 1.2))
        return TF.adjust_saturation(x, _uniform(g, 0.8, 1.2))

    def gaussian_blur(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # HIAST draws kernels 3..41 at 1024 px width; scale the kernel with the image width.
        largest = max(3, (x.shape[-1] // 25) | 1)
        kernel = 3 + 2 * int(torch.randint(0, (largest - 3) // 2 + 1, (), generator=g))
        return TF.gaussian_blur(x, [kernel, kernel], [_uniform(g, 0.1, 2.0)] * 2)

    def contrast(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return TF.adjust_contrast(x, _uniform(g, 0.3, 2.0))

    def brightness(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return TF.adjust_brightness(x, _uniform(g, 0.5, 1.5))

    def posterize(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return TF.posterize(_to_uint8(x), 4).float() / 255.0

    def equalize(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return TF.equalize(_to_uint8(x)).float() / 255.0

    def solarize(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return TF.solarize(x, _uniform(g, 0.5, 1.0))

    def to_gray(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return TF.rgb_to_grayscale(x, num_output_channels=3)

    return [("color_jitter", color_jitter), ("gaussian_blur", gaussian_blur), ("contrast", contrast),
            ("brightness", brightness), ("posterize", posterize), ("equalize", equalize), ("solarize", solarize),
            ("to_gray", to_gray)]


PHOTOMETRIC_OPS = tuple(name for name, _ in _photometric_ops())


def strong_augment(images: torch.Tensor, generator: torch.Generator, num_ops: int = 3,
                   op_probability: float = 1.0) -> torch.Tensor:
    """RandAugment-style strong view: per image, ``num_ops`` photometric ops drawn without replacement.

    The paper: "RandAugment ... randomly selects 3 style transformations" (every chosen op applied,
    ``op_probability=1``); HIAST's code additionally fires each chosen op with p=0.5 (``op_probability=0.5``).
    Geometry is untouched, so the strong view stays aligned with the weak view and its pseudo-label.
    """
    if num_ops <= 0:
        return images.clone()
    ops = _photometric_ops()
    pixels = denormalize(images)
    out = torch.empty_like(pixels)
    for index in range(pixels.shape[0]):
        image = pixels[index]
        chosen = torch.randperm(len(ops), generator=generator)[:num_ops].tolist()
        for op_index in chosen:
            if op_probability >= 1.0 or float(torch.rand((), generator=generator)) < op_probability:
                image = ops[op_index][1](image, generator).clamp(0.0, 1.0)
        out[index] = image
    return normalize(out)


def training_flips(segmentation: bool) -> bool:
    """Whether training flips images horizontally: a label map flips with its image, a class label need not survive
    a mirror (a mirrored digit can be another digit), so classification trains without flips. Label-free selection
    (``raysel.selection.model_scores``) reads the same switch to perturb only in label-preserving ways."""
    return segmentation


def source_augment(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, segmentation: bool,
                   photometric_ops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source-training view: geometric (flip + scaled crop; classification gets no flip, see :func:`training_flips`,
    and labels stay per image), then ``photometric_ops`` ops of the strong pool each firing with p=0.5 (0 = geometry
    only)."""
    flip = training_flips(segmentation)
    if segmentation:
        images, labels = weak_augment(images, labels, generator, flip=flip)
    else:
        images, _ = weak_augment(images, None, generator, flip=flip, scale_range=(0.8, 1.0))
    if photometric_ops > 0:
        images = strong_augment(images, generator, num_ops=photometric_ops, op_probability=0.5)
    return images, labels
