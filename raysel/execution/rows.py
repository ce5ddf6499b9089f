"""The writer of a trial's row in the result store (columns and prefixes: :mod:`raysel.store_schema`)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import ray
import torch

from raysel import __version__
from raysel.data import get_family
from raysel.execution.settings import SweepSettings
from raysel.hyperparameters import config_from_dict
from raysel.registry import get_method
from raysel.store import ResultStore
from raysel.store_schema import FINAL_METRIC_COLUMNS, PER_TARGET_HELDOUT_PREFIXES, TRIAL_TIMING_COLUMNS


def write_row(store: ResultStore, settings: SweepSettings, trial_id: str, config: dict[str, Any], started: float,
              final: dict[str, Any]) -> None:
    """Write this trial's row (atomic; a rewrite of the same trial replaces it)."""
    method = get_method(settings.method)
    run = settings.run
    row: dict[str, Any] = {
        "sweep_id": settings.sweep_id,
        "trial_id": trial_id,
        "method": settings.method,
        "task": method.tasks[0] if len(method.tasks) == 1 else get_family(run["dataset"]).task,
        "dataset": run["dataset"],
        "source": run.get("source"),
        "target": config["target"],
        "model": run.get("model"),
        "seed": run.get("seed"),
        "status": final.get("status", "failed"),
        "error": final.get("error"),
        "retries": int(final.get("retries", 0) or 0),
        "wall_time_s": time.time() - started,
        "started_at": started,
        "finished_at": time.time(),
        "checkpoint_path": final.get("checkpoint_path"),
        "predictions_path": final.get("predictions_path"),
        "raysel_version": __version__,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
    }
    for key in (*FINAL_METRIC_COLUMNS, *TRIAL_TIMING_COLUMNS):
        if key in final:
            row[key] = final[key]
    row.update({key: value for key, value in final.items() if key.startswith(PER_TARGET_HELDOUT_PREFIXES)})
    row["scores"], row["metrics"] = final.get("scores"), final.get("metrics")  # from the TrainResult (finish_run)
    # Every hyperparameter, swept or default, becomes its own typed column.
    row["hyperparameters"] = dataclasses.asdict(config_from_dict(method.config_class, dict(config["hp"])))
    store.write_trial(row, hyperparameter_types=method.config_class)

