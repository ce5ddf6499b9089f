"""Label-free merge-quality score and error barrier for merged (quantized) multi-target models (HDRQ setting).

**Merge quality.** For every target domain, the merged model's predictions on that target's unlabeled selection
subset are compared with the predictions of the target's own (quantized) specialist, the model it was merged from:
``agreement="miou"`` (default) is the mIoU of the merged predictions against the specialist's predictions used as
labels, with intersections and unions accumulated over the subset (:mod:`raysel.metrics`, absent classes skipped);
``"pixel"`` is the fraction of pixels (images, for classification) with the same class. The score is the harmonic
mean over targets (:func:`raysel.metrics.harmonic_mean`), like the paper's harmonic mean of per-target mIoU: a merge
that forgets any one target's behaviour scores low. No target labels are read. The specialists' predictions do not
depend on the merge: :func:`specialist_references` computes them once for every merge of the same specialists.

**Error barrier** (Frankle et al. 2020; HDRQ eq. 2), label-free: along ``theta(t) = (1 - t) theta_a + t theta_b``
the loss is the cross-entropy against the endpoints' own predictions, each on its own target's images,
``L(theta) = 1/2 [CE(theta(x_a), argmax theta_a(x_a)) + CE(theta(x_b), argmax theta_b(x_b))]``, and
``barrier = max_t L(theta(t)) - 1/2 (L(theta_a) + L(theta_b))`` (eq. 2: the baseline is the *mean* of the two
endpoint losses) over an even grid of ``t`` including both ends, so it is >= ``|L(theta_a) - L(theta_b)| / 2``,
the paper's lower bound for unequal endpoint losses (§3.3), and 0 for identical models.
Interpolation is :func:`raysel.quant.merge.interpolate_models` (moment-matched BatchNorm statistics). Quantized
endpoints are first snapped to their deployed grid weights ``clamp(round(W/s)) s``, so a model stored on the grid
(BRECQ/QDrop) and one stored off it (HDRQ's float weights, rounded at inference) give the same path when they deploy
the same integers; the path between the two deployed weight vectors is then evaluated without re-rounding the
weights (activations stay quantized with interpolated steps). Re-rounding would make the mid-point a tie-breaking
question (round-half-to-even of exact ties for on-grid weights only), which is the merge rule's business (§4.3).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from raysel.errors import ConfigError
from raysel.metrics import confusion_matrix, harmonic_mean, miou, pixel_accuracy
from raysel.quant.merge import interpolate_models
from raysel.quant.wrap import QuantizedModel

AGREEMENTS = ("miou", "pixel")
Images = torch.Tensor | Iterable[torch.Tensor]


@dataclass
class MergeQuality:
    """Harmonic-mean agreement ``score`` in [0, 1] and the per-target agreements it combines."""

    score: float
    per_target: dict[str, float]
    agreement: str


@dataclass
class ErrorBarrier:
    """``barrier`` (eq. 2) and the path it was read from: ``t``, ``losses`` L(theta(t)) and ``baseline``, the mean
    of the endpoint losses."""

    barrier: float
    t: list[float]
    losses: list[float]
    baseline: float


@torch.no_grad()
def predict_labels(model: nn.Module, images: Images, batch_size: int = 8) -> torch.Tensor:
    """Arg-max class predictions of ``model`` (eval mode) for a ``[N, ...]`` tensor or an iterable of batches."""
    return torch.cat([logits.argmax(dim=1).cpu() for logits in _logits(model, images, batch_size)])


def agreement_score(predictions: torch.Tensor, reference: torch.Tensor, num_classes: int, agreement: str = "miou") -> float:
    """Agreement of ``predictions`` with ``reference`` predictions: mIoU against them or the matching fraction."""
    if agreement not in AGREEMENTS:
        raise ConfigError(f"unknown agreement {agreement!r}; valid: {', '.join(AGREEMENTS)}")
    matrix = confusion_matrix(predictions, reference, num_classes, ignore_index=-1)
    return miou(matrix) if agreement == "miou" else pixel_accuracy(matrix)


def specialist_references(specialists: Mapping[str, nn.Module], target_images: Mapping[str, Images],
                          batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Each target's specialist's arg-max labels on that target's images, the references :func:`merge_quality`
    compares a merge with: computed once, they serve every merge of the same specialists (e.g. repeated merge draws).

    Args:
        specialists: target name -> that target's (quantized) specialist.
        target_images: target name -> its unlabeled images (a ``[N, ...]`` tensor or an iterable of batches).
        batch_size: images per forward pass.
    """
    _check_targets(specialists, target_images)
    return {target: predict_labels(specialist, target_images[target], batch_size)
            for target, specialist in specialists.items()}


def merge_quality(merged: nn.Module, specialists: Mapping[str, nn.Module], target_images: Mapping[str, Images],
                  agreement: str = "miou", batch_size: int = 8,
                  references: Mapping[str, torch.Tensor] | None = None) -> MergeQuality:
    """Harmonic mean over targets of the merged model's agreement with each target's specialist on its images.

    Args:
        merged: the merged model to score.
        specialists: target name -> that target's (quantized) specialist, the model merged from.
        target_images: target name -> its unlabeled images (a ``[N, ...]`` tensor or an iterable of batches).
        agreement: ``"miou"`` or ``"pixel"`` (module docstring).
        batch_size: images per forward pass.
        references: the specialists' labels on their targets' images, as :func:`specialist_references` returns
            them (same targets as ``specialists``); None: predicted here. Given, the specialists are not re-run,
            which saves half the forward passes when the same specialists are merged several times.
    """
    if agreement not in AGREEMENTS:
        raise ConfigError(f"unknown agreement {agreement!r}; valid: {', '.join(AGREEMENTS)}")
    _check_targets(specialists, target_images)
    if references is not None and set(references) != set(specialists):
        raise ConfigError(f"references are for target(s) {', '.join(sorted(references)) or 'none'}, the specialists "
                          f"for {', '.join(sorted(specialists))}: pass specialist_references of these specialists")
    per_target = {}
    for target, specialist in specialists.items():
        merged_logits = torch.cat([logits.cpu() for logits in _logits(merged, target_images[target], batch_size)])
        if references is None:
            reference = predict_labels(specialist, target_images[target], batch_size)
        else:
            reference = references[target]
        if merged_logits.shape[0] == 0:
            raise ConfigError(f"target {target!r} has no unlabeled images for the merge-quality score")
        predictions = merged_logits.argmax(dim=1)
        if reference.shape != predictions.shape:
            raise ConfigError(f"reference labels of target {target!r} have shape {tuple(reference.shape)}, the "
                              f"merged model's predictions {tuple(predictions.shape)}: the references must be the "
                              "specialist's labels on the same images")
        per_target[target] = agreement_score(predictions, reference, merged_logits.shape[1], agreement)
    return MergeQuality(harmonic_mean(per_target.values()), per_target, agreement)


@torch.no_grad()
def error_barrier(model_a: nn.Module, model_b: nn.Module, images_a: Images, images_b: Images | None = None,
                  num_points: int = 11, batch_size: int = 8) -> ErrorBarrier:
    """Label-free error barrier (eq. 2) between two models on the linear path (see module docstring)."""
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
        raise ConfigError(f"num_points must be an integer >= 2, got {num_points!r}")
    images_a = _materialise(images_a)
    images_b = images_a if images_b is None else _materialise(images_b)
    pseudo_a = predict_labels(model_a, images_a, batch_size)
    pseudo_b = predict_labels(model_b, images_b, batch_size)
    endpoint_a, endpoint_b = deployed_weights(model_a), deployed_weights(model_b)
    ts = np.linspace(0.0, 1.0, num_points).tolist()
    losses = []
    for t in ts:
        model = path_point(endpoint_a, endpoint_b, t)
        losses.append(0.5 * (_cross_entropy(model, images_a, pseudo_a, batch_size)
                             + _cross_entropy(model, images_b, pseudo_b, batch_size)))
    baseline = 0.5 * (losses[0] + losses[-1])
    return ErrorBarrier(barrier_of_path(losses), ts, losses, baseline)


def barrier_of_path(losses: Sequence[float]) -> float:
    """Eq. 2 on a sampled path ``L(theta(t_0 = 0)), ..., L(theta(t_n = 1))``: the highest loss minus the mean of
    the two endpoint losses (for a linear loss that is ``|L_a - L_b| / 2``, for equal endpoints the bump height)."""
    if len(losses) < 2:
        raise ConfigError(f"an error barrier needs the losses of at least the two endpoints, got {len(losses)}")
    return float(max(losses) - 0.5 * (losses[0] + losses[-1]))


def deployed_weights(model: nn.Module) -> nn.Module:
    """A quantized model with its weights replaced by the grid weights it deploys, ``clamp(round(W/s)) s``,
    and weight quantization off (a no-op on those weights); other models unchanged. Why: see module docstring."""
    if not isinstance(model, QuantizedModel):
        return model
    snapped = copy.deepcopy(model)
    for layer in snapped.quantized_layers().values():
        quantizer = layer.weight_quantizer
        layer.weight.data.copy_(quantizer.integer_weight(layer.weight) * quantizer.scale.detach())
        quantizer.alpha = None
        quantizer.set_mode("float")
    return snapped


def path_point(model_a: nn.Module, model_b: nn.Module, t: float) -> nn.Module:
    """``theta(t) = (1 - t) theta_a + t theta_b`` (the endpoints themselves at t = 0 and 1)."""
    if t == 0.0:
        return model_a
    if t == 1.0:
        return model_b
    return interpolate_models([model_a, model_b], [1.0 - t, t])


def _check_targets(specialists: Mapping[str, nn.Module], target_images: Mapping[str, Images]) -> None:
    """At least one specialist, and images for each specialist's target (ConfigError otherwise)."""
    if not specialists:
        raise ConfigError("merge_quality needs at least one target specialist")
    missing = sorted(set(specialists) - set(target_images))
    if missing:
        raise ConfigError(f"no unlabeled images given for target(s) {', '.join(missing)}")


def _materialise(images: Images) -> list[torch.Tensor]:
    """A list of batches (so the same images can be read several times)."""
    if isinstance(images, torch.Tensor):
        return [images]
    return [batch if isinstance(batch, torch.Tensor) else torch.as_tensor(batch) for batch in images]


def _logits(model: nn.Module, images: Images, batch_size: int) -> Iterable[torch.Tensor]:
    model.eval()
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    with torch.no_grad():
        for batch in batches:
            batch = batch if isinstance(batch, torch.Tensor) else torch.as_tensor(batch)
            for chunk in batch.split(batch_size):
                yield model(chunk.to(device))


def _cross_entropy(model: nn.Module, images: list[torch.Tensor], pseudo_labels: torch.Tensor, batch_size: int) -> float:
    """Mean cross-entropy (per pixel / per image) of ``model`` against fixed pseudo-labels."""
    total, count, offset = 0.0, 0, 0
    for logits in _logits(model, images, batch_size):
        labels = pseudo_labels[offset:offset + logits.shape[0]].to(logits.device)
        offset += logits.shape[0]
        total += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        count += labels.numel()
    return total / max(count, 1)
