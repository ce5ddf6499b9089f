"""One training run: the per-worker function (the same in direct, Ray Train and in-process runs) and its ending.

:func:`run_worker` trains one configuration through a session, then (rank 0) saves the model with its rebuild
recipe, caches its predictions on the label-free selection subset and scores it on held-out labels
(:func:`finish_run`). A NaN loss ends the run as ``failed`` instead of raising, so Ray does not retry a
deterministic failure.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from raysel.execution.prediction_cache import cache_candidate_predictions, candidate_predictions
from raysel.execution.timing import phase
from raysel.heldout import heldout_scores
from raysel.hyperparameters import config_from_dict
from raysel.methods.base import NonFiniteLossError, RunContext, RunSpec, Session
from raysel.methods.reports import FINAL_METRICS, FINAL_SCORES
from raysel.methods.result import TrainResult, save_model, unwrapped
from raysel.metrics import harmonic_mean
from raysel.registry import get_method
from raysel.selection.model_scores import run_trial_selection_scores
from raysel.store.schema import primary_heldout_column

__all__ = [
    "ATTEMPTS_FILE", "FINAL_FILE", "MODEL_FILE", "PREDICTIONS_FILE", "WorkerRun", "run_worker", "train_and_finish",
    "finish_run", "score_at_report", "multi_target_heldout", "read_int",
]

ATTEMPTS_FILE = "attempts"
FINAL_FILE = "final.json"
MODEL_FILE = "model.pt"
PREDICTIONS_FILE = "predictions.npz"


@dataclass
class WorkerRun:
    """What one worker's run produced: its final metrics (``{}`` off rank 0) and the method's result (None on a
    NaN-loss failure or off rank 0)."""

    final: dict[str, Any]
    result: TrainResult | None


def run_worker(loop_config: dict[str, Any], session: Session) -> dict[str, Any]:
    """Train one configuration on this worker, then (rank 0) write predictions and held-out scores.

    Returns the final metrics (rank 0) or ``{}`` (other ranks). A NaN loss ends the run with
    ``{"status": "failed", "error": ...}`` instead of an exception, so Ray does not retry a deterministic failure.
    """
    return train_and_finish(loop_config, session).final


def train_and_finish(loop_config: dict[str, Any], session: Session,
                     context_class: Callable[[RunSpec, Session], RunContext] = RunContext) -> WorkerRun:
    """:func:`run_worker` keeping the method's :class:`TrainResult` (in-process runs read its model);
    ``context_class`` replaces :class:`RunContext` (benchmarks' oracle contexts)."""
    method = get_method(loop_config["method"])
    config = config_from_dict(method.config_class, loop_config["hyperparameters"])
    spec = RunSpec.from_dict(loop_config["run"])
    ctx = context_class(spec, session)
    method.check_task(ctx.task, ctx.family.name)  # before anything trains: direct Python callers skip the CLI's check
    if loop_config.get("report_score"):
        ctx.report_scores = functools.partial(score_at_report, ctx=ctx, name=loop_config["report_score"])
    output_dir = Path(spec.output_dir)
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        attempts = read_int(output_dir / ATTEMPTS_FILE) + 1
        (output_dir / ATTEMPTS_FILE).write_text(str(attempts))
    train_started = time.perf_counter()
    try:
        with phase(ctx, "train"):
            result = method.train(config, ctx)
    except NonFiniteLossError as error:
        return WorkerRun({"status": "failed", "error": str(error)} if ctx.is_main else {}, None)
    train_seconds = time.perf_counter() - train_started
    if not ctx.is_main:
        return WorkerRun({}, None)
    final = finish_run(result, ctx)
    final["train_time_s"] = train_seconds
    final["retries"] = read_int(output_dir / ATTEMPTS_FILE) - 1
    final["status"] = "finished"
    (output_dir / FINAL_FILE).write_text(json.dumps(final, default=_json_default))
    return WorkerRun(final, result)


def finish_run(result: TrainResult, ctx: RunContext) -> dict[str, Any]:
    """Save the final model, cache predictions on the label-free selection subset, score on held-out labels."""
    model = unwrapped(result.model)
    model.eval()
    output_dir = Path(ctx.spec.output_dir)
    with phase(ctx, "save_model"):
        checkpoint_path = save_model(result, output_dir / MODEL_FILE)
    with phase(ctx, "predictions"):
        predictions = candidate_predictions(model, ctx)
        predictions_path = cache_candidate_predictions(model, ctx, output_dir / PREDICTIONS_FILE, predictions)

    final: dict[str, Any] = {"checkpoint_path": str(checkpoint_path), "predictions_path": str(predictions_path)}
    with phase(ctx, "heldout"):
        if result.evaluation_targets:
            final.update(multi_target_heldout(model, ctx, list(result.evaluation_targets)))
        else:
            final.update(heldout_scores(model, ctx.family, ctx.data_root, ctx.target, ctx.device,
                                        image_size=ctx.spec.image_size))
    # Label-free scores that need the model (consistency; mixval or classmix_consistency); the method's own scores win on a name clash.
    with phase(ctx, "selection_scores"):
        final[FINAL_SCORES] = {**run_trial_selection_scores(model, ctx, predictions), **result.scores}
    if result.metrics:
        final[FINAL_METRICS] = dict(result.metrics)
    return final


def score_at_report(model: torch.nn.Module, ctx: RunContext, name: str) -> dict[str, float]:
    """``{name: value}`` of the model at a report point (reported as ``score_<name>``), so ASHA can compare trials
    on a trial-scored selector at its rungs; training's random streams are left as they were."""
    with torch.random.fork_rng(devices=[]):  # the scoring DataLoader draws a base seed from the global RNG
        scores = run_trial_selection_scores(unwrapped(model), ctx)
    return {name: scores[name]} if name in scores else {}


def multi_target_heldout(model: torch.nn.Module, ctx: RunContext, targets: list[str]) -> dict[str, Any]:
    """Held-out scores of one model on several targets: ``heldout_<metric>_<target>`` (and per-class IoU) per
    target, and ``heldout_<metric>`` = their harmonic mean (HDRQ's H, 2ab/(a+b) for two targets)."""
    key = primary_heldout_column(ctx.task)
    final: dict[str, Any] = {}
    for target in targets:
        scores = heldout_scores(model, ctx.family, ctx.data_root, target, ctx.device, image_size=ctx.spec.image_size)
        final[f"{key}_{target}"] = scores[key]
        if "heldout_iou" in scores:
            final[f"heldout_iou_{target}"] = scores["heldout_iou"]
    final[key] = harmonic_mean(final[f"{key}_{target}"] for target in targets)
    return final


def read_int(path: Path) -> int:
    """The integer stored in a small text file (0 when it is missing or unreadable)."""
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
