"""DAFormer's two training strategies in T2S-DA's baseline: rare-class sampling and the thing-class feature distance.

T2S-DA §4: "we adopt DACS (Tranheden et al., 2021) with two extra strategies in (Hoyer et al., 2022a) as the
baseline". Those are DAFormer's (Hoyer et al., CVPR 2022, §3.3-3.4; code ``mmseg/datasets/uda_dataset.py`` and
``mmseg/models/uda/dacs.py``):

* **Rare-class sampling (RCS, DAFormer Eq. 6-7).** f_c is class c's share of all labelled source pixels (Eq. 6);
  each source draw picks a class with P(c) = exp((1 - f_c)/T) / sum_c' exp((1 - f_c')/T) (Eq. 7, T = 0.01), then a
  source image uniformly among those holding more than ``min_pixels`` pixels of c. DAFormer's ``rcs_min_pixels``
  is 3000 pixels of a 1914x1052 GTA5 label (0.15 %); here it is a fraction of the image's labelled pixels so that it
  scales with the embedded 96x192 images. Classes absent from the source, or without an image over the threshold,
  get P = 0 (DAFormer only lists classes present in its statistics). DAFormer also re-crops a drawn image up to 10
  times until the crop holds more than ``rcs_min_crop_ratio`` (0.5) x ``rcs_min_pixels`` pixels of c; so does raysel
  (``T2sdaConfig.rcs_min_crop_ratio``, 0 = off): the sampler hands the drawn class along with the index
  (:class:`RareClassDataset` puts it in the sample as ``rcs_class``) and the weak view's crop
  (:func:`raysel.methods.augment.weak_augment`, ``keep_classes``) is redrawn while it holds no more than half the
  threshold of c. Without the retry, the side-scale U(0.75, 1) crop cuts a small object out of many crops
  (measured: 15 % of 36-pixel objects placed uniformly in 96x192 labels, 17 % of 16-pixel ones, more for objects
  near the border; ``tests/test_methods_t2sda.py``); with it, none of 200. Per-image class pixel counts are computed once
  per source dataset (cached as a shared stage).
* **Thing-class ImageNet feature distance (FD, DAFormer Eq. 8-10).** d = ||F_ImageNet(x_s) - F_theta(x_s)||_2 per
  pixel of the encoder's bottleneck features (Eq. 8), averaged over pixels whose downscaled source label is a thing
  class (Eq. 9-10; a feature pixel takes its patch's majority label when that label covers >= 75 % of the patch,
  DAFormer's ``downscale_label_ratio``), weighted by lambda_FD = 0.005 in the total loss. Thing classes are DAFormer's
  ``imnet_feature_dist_classes`` (Cityscapes trainIds 6, 7, 11-18).
  Reference (:func:`feature_distance_reference`): as in the paper, a frozen ImageNet encoder of the same
  architecture when the network's ImageNet weights load (``deeplabv2_resnet101`` with the torchvision cache filled:
  the model's ``imagenet_pretrained`` flag); otherwise (the embedded ``small_segnet`` has no ImageNet weights, and
  ResNet-101 without a cache) a frozen copy of the encoder the adaptation starts from, i.e. the cached source-only
  model. That stand-in keeps what FD is for (the adapted encoder cannot drift from a representation learned before
  self-training on noisy target pseudo-labels), but its representation has seen only source images rather than
  ImageNet. Which one is used is logged and reported per trial as ``fd_imagenet_reference`` (1 ImageNet, 0 source
  model). Scale: the trial reports ``fd_loss_share`` = lambda_FD * L_FD / total loss. At the embedded defaults
  (street_scenes game -> day_city, small_segnet, 60 iterations) L_FD grows from 0 to about 0.6, so the share is
  about 0.003 (0.3 %) of a total loss near 1.1: FD is a weak regulariser there (DAFormer's lambda_FD was set for
  MiT-B5 features with larger norms). The share is of the loss, not of the encoder's gradient; the gradient share
  is not measured per step because it needs a second backward pass.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from raysel.conventions import IGNORE_INDEX

logger = logging.getLogger(__name__)

# DAFormer's ``imnet_feature_dist_classes``: traffic light, traffic sign, person, rider, car, truck, bus, train,
# motorcycle, bicycle (Cityscapes trainIds; every raysel segmentation family predicts these 19 ids).
THING_CLASSES: tuple[int, ...] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
DAFORMER_RCS_MIN_PIXELS_FRACTION = 3000 / (1914 * 1052)  # rcs_min_pixels = 3000 on a GTA5 label (~0.15 %)
DAFORMER_RCS_MIN_CROP_RATIO = 0.5  # rcs_min_crop_ratio: a crop must keep more than half the threshold of the class
DAFORMER_RCS_CROP_RETRIES = 10  # DAFormer re-crops at most 10 times


# --------------------------------------------------------------------------------------------------------------
# Rare-class sampling (DAFormer Eq. 6-7)
# --------------------------------------------------------------------------------------------------------------


def source_class_pixel_counts(dataset: Dataset, num_classes: int, batch_size: int = 16,
                              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labelled pixels per source image and class ``[N, C]`` (int64), one vectorised bincount per batch of labels."""
    rows = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        labels = batch["label"].long().flatten(1)
        image_rows = torch.arange(labels.shape[0]).unsqueeze(1).expand_as(labels)
        valid = labels != ignore_index
        flat = image_rows[valid] * num_classes + labels[valid]
        rows.append(torch.bincount(flat, minlength=labels.shape[0] * num_classes).view(-1, num_classes))
    return torch.cat(rows)


def rare_class_probabilities(class_pixels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 6-7: P(c) = softmax((1 - f_c) / T) over classes with pixels (0 elsewhere); ``class_pixels`` is ``[C]``."""
    present = class_pixels > 0
    frequency = class_pixels.double() / class_pixels.sum().clamp(min=1)
    logits = torch.where(present, (1.0 - frequency) / temperature, torch.full_like(frequency, -torch.inf))
    return logits.softmax(dim=0).float()


class RareClassSampler(Sampler[int]):
    """Source image indices drawn by RCS: a class by Eq. 7, then a uniform image holding enough of that class.

    ``image_class_pixels`` is ``[N, C]`` (:func:`source_class_pixel_counts`). An image holds class c when its c
    pixels exceed ``min_pixels_fraction`` of its labelled pixels (DAFormer: more than ``rcs_min_pixels``). One
    pass yields ``num_samples`` indices; every (seed, rank, epoch) gives its own stream, so ranks draw independently
    and ``set_epoch`` reshuffles like a DistributedSampler. Draws are vectorised: a class per draw, then an index
    into a per-class table of eligible images. ``with_classes`` yields ``(index, class)`` pairs instead, the keys
    of :class:`RareClassDataset`.
    """

    def __init__(self, image_class_pixels: torch.Tensor, temperature: float, num_samples: int, seed: int,
                 rank: int = 0, min_pixels_fraction: float = DAFORMER_RCS_MIN_PIXELS_FRACTION,
                 with_classes: bool = False) -> None:
        labelled = image_class_pixels.sum(dim=1, keepdim=True)
        eligible = (image_class_pixels > min_pixels_fraction * labelled).T  # [C, N]
        self.images_per_class = eligible.sum(dim=1)
        # Each row lists the eligible images first (ascending), so table[c, k] is class c's k-th eligible image.
        self.image_table = torch.argsort((~eligible).to(torch.uint8), dim=1, stable=True)
        # f_c counts every labelled pixel (Eq. 6); a class without an eligible image cannot be drawn.
        probabilities = rare_class_probabilities(image_class_pixels.sum(dim=0), temperature)
        probabilities = probabilities * (self.images_per_class > 0)
        if float(probabilities.sum()) <= 0:
            raise ValueError("rare-class sampling needs labelled source pixels; the source labels are all ignore")
        self.class_probabilities = probabilities / probabilities.sum()
        self.num_samples, self.seed, self.rank, self.epoch = num_samples, seed, rank, 0
        self.with_classes = with_classes  # iterate (index, class) pairs for RareClassDataset

    def set_epoch(self, epoch: int) -> None:
        """Use a fresh stream for the next pass (called by the training loop's endless iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_samples`` (image index, drawn class) pairs."""
        classes = torch.multinomial(self.class_probabilities, self.num_samples, replacement=True,
                                    generator=generator)
        position = (torch.rand(self.num_samples, generator=generator) * self.images_per_class[classes]).long()
        return self.image_table[classes, position], classes

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        state = np.random.SeedSequence([self.seed, self.rank, self.epoch]).generate_state(1)[0]
        images, classes = self.sample(torch.Generator().manual_seed(int(state)))
        if self.with_classes:
            return iter(zip(images.tolist(), classes.tolist()))
        return iter(images.tolist())


class RareClassDataset(Dataset):
    """A source dataset indexed by :class:`RareClassSampler` (``with_classes=True``) keys ``(index, class)``: the
    sample gets the drawn class as ``rcs_class`` so the crop can keep it (DAFormer's crop retry); a plain int index
    gives ``rcs_class = -1`` (no class to keep)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, cls = key if isinstance(key, tuple) else (key, -1)
        return {**self.dataset[index], "rcs_class": cls}


# --------------------------------------------------------------------------------------------------------------
# Thing-class feature distance (DAFormer Eq. 8-10)
# --------------------------------------------------------------------------------------------------------------


def thing_class_mask(labels: torch.Tensor, size: tuple[int, int], num_classes: int, min_ratio: float = 0.75,
                     thing_classes: tuple[int, ...] = THING_CLASSES, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Eq. 10: M_things ``[B, h, w]``, true where a feature pixel's patch is >= min_ratio one thing class.

    DAFormer's ``downscale_label_ratio``: one-hot labels (ignore as an extra class) are average-pooled to the
    feature grid; the majority class counts only where its share reaches ``min_ratio``. Adaptive pooling also
    covers feature maps whose size is not an exact divisor of the label's.
    """
    labels = labels.long()
    labels = torch.where(labels == ignore_index, torch.full_like(labels, num_classes), labels)
    one_hot = F.one_hot(labels, num_classes + 1).permute(0, 3, 1, 2).float()
    share, majority = F.adaptive_avg_pool2d(one_hot, size).max(dim=1)
    things = torch.isin(majority, torch.tensor(thing_classes, device=labels.device))
    return things & (share >= min_ratio)


def feature_distance_loss(features: torch.Tensor, reference_features: torch.Tensor,
                          mask: torch.Tensor) -> torch.Tensor:
    """Eq. 8-9: mean over masked pixels of ||F_ref - F||_2 over channels (0, still in the graph, if none masked)."""
    distance = torch.linalg.vector_norm(features - reference_features, dim=1)  # [B, h, w]
    if not bool(mask.any()):
        return features.sum() * 0.0
    return distance[mask].mean()


def bottleneck_module(segmenter: nn.Module) -> nn.Module:
    """The encoder's last module, whose output is the bottleneck feature map (ResNet layer4, SmallSegNet stride 8)."""
    return segmenter.backbone_modules()[-1]


@contextmanager
def captured_output(module: nn.Module | None) -> Iterator[list[torch.Tensor]]:
    """Collect ``module``'s outputs during the forward passes inside the block (nothing when ``module`` is None).

    A forward hook reads the bottleneck without a second forward and without changing the models' contract.
    """
    outputs: list[torch.Tensor] = []
    if module is None:
        yield outputs
        return
    handle = module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def frozen_reference(segmenter: nn.Module) -> nn.Module:
    """FD's stand-in for the frozen ImageNet encoder: an eval-mode copy of the starting segmenter without gradients."""
    return _frozen(copy.deepcopy(segmenter))


IMAGENET_REFERENCE = "imagenet"
SOURCE_MODEL_REFERENCE = "source_model"


def feature_distance_reference(build_pretrained: Callable[[], nn.Module],
                               segmenter: nn.Module) -> tuple[nn.Module, str]:
    """FD's frozen reference and its kind: ``build_pretrained()`` (a fresh network of the same architecture asked
    for ImageNet weights, e.g. ``lambda: ctx.build_model(pretrained=True)``) when its ``imagenet_pretrained`` flag
    says the weights loaded, as in DAFormer; else a frozen copy of ``segmenter`` (the starting source model).
    The choice is logged."""
    candidate = build_pretrained()
    if bool(getattr(candidate, "imagenet_pretrained", False)):
        logger.info("feature distance: frozen ImageNet encoder as the reference (DAFormer)")
        return _frozen(candidate), IMAGENET_REFERENCE
    del candidate
    logger.info("feature distance: no ImageNet weights for this network; frozen source-only model as the reference")
    return frozen_reference(segmenter), SOURCE_MODEL_REFERENCE


@torch.no_grad()
def reference_bottleneck(reference: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """F_ImageNet(x_s) of Eq. 8: the frozen reference's bottleneck features of the source images (float32)."""
    with captured_output(bottleneck_module(reference)) as outputs:
        reference.forward_features(images)
    return outputs[0].float()


def thing_feature_distance(student_bottleneck: torch.Tensor, reference: nn.Module, source_images: torch.Tensor,
                           source_labels: torch.Tensor, num_classes: int, min_ratio: float = 0.75) -> torch.Tensor:
    """L_FD of one source batch (Eq. 8-10): the student's bottleneck against the frozen reference's, on things."""
    reference_features = reference_bottleneck(reference, source_images)
    mask = thing_class_mask(source_labels, tuple(student_bottleneck.shape[-2:]), num_classes, min_ratio)
    return feature_distance_loss(student_bottleneck.float(), reference_features, mask)
