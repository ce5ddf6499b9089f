"""The writer of a trial's row in the result store (columns and prefixes: :mod:`raysel.store.schema`)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import ray
import torch

from raysel import __version__
from raysel.data import get_family
from raysel.hyperparameters import config_from_dict
from raysel.methods.reports import FINAL_METRICS, FINAL_SCORES
from raysel.registry import get_method
from raysel.request import HYPERPARAMETERS_KEY, SweepRequest
from raysel.store import ResultStore
from raysel.store.schema import FINAL_METRIC_COLUMNS, PER_TARGET_HELDOUT_PREFIXES, TRIAL_TIMING_COLUMNS


def write_row(store: ResultStore, request: SweepRequest, trial_id: str, config: dict[str, Any], started: float,
              final: dict[str, Any]) -> None:
    """Write this trial's row (atomic; a rewrite of the same trial replaces it)."""
    method = get_method(request.method)
    data = request.data
    row: dict[str, Any] = {
        "sweep_id": request.sweep_id,
        "trial_id": trial_id,
        "method": request.method,
        "task": method.tasks[0] if len(method.tasks) == 1 else get_family(data.family).task,
        "dataset": data.family,
        "source": data.source,
        "target": config["target"],
        "model": data.model,
        "seed": request.search.seed,
        "status": final.get("status", "failed"),
        "error": final.get("error"),
        "retries": int(final.get("retries", 0) or 0),
        "wall_time_s": time.time() - started,
        "started_at": started,
        "finished_at": time.time(),
        "checkpoint_path": final.get("checkpoint_path"),
        "predictions_path": final.get("predictions_path"),
        "class_names": list(get_family(data.family).class_names),  # names heldout_iou's entries (store.schema)
        "raysel_version": __version__,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
    }
    for key in (*FINAL_METRIC_COLUMNS, *TRIAL_TIMING_COLUMNS):
        if key in final:
            row[key] = final[key]
    row.update({key: value for key, value in final.items() if key.startswith(PER_TARGET_HELDOUT_PREFIXES)})
    row["scores"], row["metrics"] = final.get(FINAL_SCORES), final.get(FINAL_METRICS)  # the TrainResult's (finish_run)
    # Every hyperparameter, swept or default, becomes its own typed column.
    config_values = dict(config[HYPERPARAMETERS_KEY])
    row["hyperparameters"] = dataclasses.asdict(config_from_dict(method.config_class, config_values))
    store.write_trial(row, hyperparameter_types=method.config_class)

