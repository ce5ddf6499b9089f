"""A run's predictions on its seeded label-free selection subset, written by every trial and by re-prediction, and
the source-validation calibration cache that the label-free score estimate (ATC) fits its threshold on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from raysel.conventions import IGNORE_INDEX
from raysel.data.common import selection_subset
from raysel.heldout import HELDOUT_SPLIT
from raysel.methods.base import RunContext
from raysel.selection.calibration import SourceCalibration, calibration_path, save_calibration
from raysel.selection.inference import predict_subset
from raysel.selection.predictions import CandidatePredictions, probability_grid, save_predictions

__all__ = ["candidate_predictions", "cache_candidate_predictions", "cache_source_calibration",
           "source_validation_dataset", "source_calibration"]


def candidate_predictions(model: torch.nn.Module, ctx: RunContext) -> CandidatePredictions:
    """The model's predictions on the run's seeded selection subset of target *training* images (no labels): the
    subset follows ``ctx.spec.selection_size`` / ``selection_seed``; probabilities are kept when
    ``keep_probabilities``."""
    target_images = ctx.target_dataset()
    indices = selection_subset(len(target_images), size=ctx.spec.selection_size, seed=ctx.spec.selection_seed)
    return predict_subset(model, target_images, indices, ctx.device, keep_probabilities=ctx.spec.keep_probabilities,
                          keep_features=ctx.spec.keep_probabilities)


def cache_candidate_predictions(model: torch.nn.Module, ctx: RunContext, path: str | os.PathLike,
                                predictions: CandidatePredictions | None = None) -> Path:
    """Save the run's :func:`candidate_predictions` (``predictions`` when the caller already has them) as the cache at
    ``path``; also write the source-validation calibration cache next to it where the source has a validation split.

    The one implementation behind a trial's own predictions (:func:`raysel.execution.trial.finish_run`) and their
    re-computation as Ray tasks (:mod:`raysel.execution.repredict`), so both give the same images, subset and file
    format. Both hand the same predictions to the trial-scored selectors, which then skip their unperturbed pass.
    """
    if predictions is None:
        predictions = candidate_predictions(model, ctx)
    saved = save_predictions(path, predictions)
    if ctx.spec.keep_probabilities:
        cache_source_calibration(model, ctx, calibration_path(saved))
    return saved


def source_validation_dataset(ctx: RunContext) -> Dataset | None:
    """The labelled source images the model did not train on (the source's held-out split), or None when the source
    has none: no held-out split (GTA5, street_scenes' ``game``), one that is its training set (Office), or a source
    that is the target itself (its held-out split is the target's evaluation split, which the estimate never reads)."""
    if ctx.source == ctx.target or HELDOUT_SPLIT not in ctx.family.splits(ctx.source):
        return None
    validation = ctx.source_dataset(HELDOUT_SPLIT)
    items = getattr(validation, "items", None)
    if items is not None and list(items) == list(getattr(ctx.source_dataset(), "items", [])):
        return None
    return validation


def cache_source_calibration(model: torch.nn.Module, ctx: RunContext, path: str | os.PathLike) -> Path | None:
    """Predict a seeded subset (``selection_size``) of the source validation images and save the calibration cache
    at ``path``; None (nothing written, an older file removed) when the source has no validation split."""
    path = Path(path)
    validation = source_validation_dataset(ctx)
    if validation is None or len(validation) == 0:
        path.unlink(missing_ok=True)
        return None
    indices = selection_subset(len(validation), size=ctx.spec.selection_size, seed=ctx.spec.selection_seed)
    calibration = source_calibration(model, validation, indices, ctx.device, source=ctx.source)
    return save_calibration(path, calibration)


@torch.inference_mode()
def source_calibration(model: torch.nn.Module, dataset: Dataset, indices: np.ndarray, device: torch.device | str,
                       source: str = "", batch_size: int = 8) -> SourceCalibration:
    """The model's softmax outputs on labelled source images ``indices`` (segmentation: on the probability grid of
    each label map, ignored pixels left out), their argmax and whether it matches the source label."""
    loader = DataLoader(Subset(dataset, [int(index) for index in indices]), batch_size=batch_size, shuffle=False,
                        num_workers=0)
    was_training = model.training
    model.eval()
    probabilities, predicted, correct, image_of, source_labels = [], [], [], [], []
    task, seen = "classification", 0
    try:
        for batch in loader:
            logits = model(batch["image"].to(device)).float()
            labels = batch["label"].to(logits.device)
            images = torch.arange(seen, seen + logits.shape[0], device=logits.device)
            seen += logits.shape[0]
            if logits.dim() == 4:
                task = "segmentation"
                if logits.shape[-2:] != labels.shape[-2:]:
                    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
                rows, cols = (torch.from_numpy(axis).to(logits.device)
                              for axis in probability_grid(*labels.shape[-2:]))
                logits = logits[:, :, rows][:, :, :, cols].permute(0, 2, 3, 1)  # [B, gh, gw, C]
                labels = labels[:, rows][:, :, cols]
                images = images[:, None, None].expand(labels.shape)
                keep = labels != IGNORE_INDEX
                logits, labels, images = logits[keep], labels[keep], images[keep]
            softmax = torch.softmax(logits, dim=-1)
            argmax = logits.argmax(dim=-1)
            probabilities.append(softmax.to(torch.float16).cpu().numpy())
            predicted.append(argmax.to(torch.uint8).cpu().numpy())
            correct.append((argmax == labels).cpu().numpy())
            image_of.append(images.cpu().numpy())
            source_labels.append(labels.to(torch.uint8).cpu().numpy())
    finally:
        model.train(was_training)
    return SourceCalibration(probabilities=np.concatenate(probabilities), predicted=np.concatenate(predicted),
                             correct=np.concatenate(correct), image_of=np.concatenate(image_of).astype(np.int64),
                             num_images=seen, task=task, source=source,
                             labels=np.concatenate(source_labels).reshape(-1))
