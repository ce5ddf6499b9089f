"""A run's predictions on its seeded label-free selection subset: written by every trial and by re-prediction."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from raysel.methods.base import RunContext
from raysel.data.common import selection_subset
from raysel.selection.inference import predict_subset
from raysel.selection.predictions import save_predictions


def cache_candidate_predictions(model: torch.nn.Module, ctx: RunContext, path: str | os.PathLike) -> Path:
    """Predict the run's seeded selection subset of target *training* images and save the cache at ``path``.

    The one implementation behind a trial's own predictions (:func:`raysel.execution.trial.finish_run`) and their
    re-computation as Ray tasks (:mod:`raysel.execution.repredict`), so both give the same images, subset and file
    format. The subset follows ``ctx.spec.selection_size`` / ``selection_seed``; probabilities are kept when
    ``keep_probabilities``.
    """
    target_images = ctx.target_dataset()
    indices = selection_subset(len(target_images), size=ctx.spec.selection_size, seed=ctx.spec.selection_seed)
    predictions = predict_subset(model, target_images, indices, ctx.device,
                                 keep_probabilities=ctx.spec.keep_probabilities,
                                 keep_features=ctx.spec.keep_probabilities)
    return save_predictions(path, predictions)
