"""Candidate prediction as Ray tasks: (re)compute finished trials' prediction caches on the cluster, in parallel.

Selection reads each candidate's ``predictions.npz`` (see :mod:`raysel.selection.predictions`). When those files are
missing (deleted, never written by an older raysel, a results folder copied without them) or must be recomputed
(``python -m raysel.select SWEEP --repredict``), every candidate predicts again in its own Ray task that asks for the
trial's own resources: one worker's CPUs and, when the sweep used GPUs, ``--gpus-per-worker`` GPUs (fractions
allowed). Selecting among 40 candidates on a GPU cluster therefore runs 40 GPU tasks side by side, and the autoscaler
adds GPU nodes for them as it does for trials.

Each task rebuilds the trial's model from what the trial saved (``checkpoint_path``, ``model.pt``, and its rebuild
recipe: :func:`raysel.methods.result.rebuild_model`; the run's network builder plus the state dict, or the whole
module for HDRQ's quantized merged model) and calls
:func:`~raysel.execution.prediction_cache.cache_candidate_predictions`, the same function the trial used, on the same
seeded subset of target *training* images (the sweep's ``selection_size`` / ``selection_seed``). No label is read.
The same task recomputes the trial-scored label-free scores that need the model (``consistency``, and ``mixval``
for classification or ``classmix_consistency`` for segmentation: :mod:`raysel.selection.model_scores`), writes them next to the predictions (``trial_scores.json``), and
:func:`repredict_sweep` stores them in the trial rows as ``score_<name>``.

Paths: a sweep records absolute paths under its results folder. When that folder was copied or moved, paths under
the recorded folder are taken relative to the store being used, so a copy re-predicts into itself and never
touches the original. Trial and prediction files are written where the task runs: on a cluster the results folder
must be shared storage, exactly as for the trials themselves.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayTaskError

from raysel.errors import DataError, UserError
from raysel.execution.connection import connect
from raysel.execution.prediction_cache import cache_candidate_predictions, candidate_predictions
from raysel.execution.trial import PREDICTIONS_FILE
from raysel.methods.base import LocalSession, RunContext, RunSpec
from raysel.methods.result import rebuild_model
from raysel.progress import heartbeat, progress
from raysel.request import SETTINGS_FILE, SweepRequest, load_request
from raysel.selection.model_scores import run_trial_selection_scores
from raysel.store.schema import relocated_path

TRIAL_SCORES_FILE = "trial_scores.json"


@dataclass(frozen=True)
class PredictionJob:
    """One candidate to predict: its trial, the RunSpec fields it trained with, its checkpoint, its resources."""

    sweep_id: str
    trial_id: str
    run: dict[str, Any]
    checkpoint_path: str
    predictions_path: str
    num_cpus: float
    num_gpus: float


def sweep_request(store: Any, sweep_id: str) -> SweepRequest | None:
    """The sweep's saved request (``sweeps/<id>/sweep.json`` under the store), or None when it has none."""
    if not (Path(store.root) / "sweeps" / sweep_id / SETTINGS_FILE).is_file():
        return None
    return load_request(store.root, sweep_id)


def prediction_jobs(store: Any, sweep_id: str, *, only_missing: bool = True) -> list[PredictionJob]:
    """The finished candidates of ``sweep_id`` to predict: all of them, or (``only_missing``) those lacking a file.

    Raises UserError for an unknown sweep, and DataError naming the trial when a candidate must be predicted but
    its checkpoint or the sweep's settings (needed to rebuild its model and data) are missing.
    """
    trials = store.load_sweep(sweep_id)
    if trials.empty:
        raise UserError(f"sweep {sweep_id!r} has no trials in the result store {store.root}")
    finished = trials[trials["status"] == "finished"].sort_values("trial_id")
    request = sweep_request(store, sweep_id)
    recorded_root = request.results if request is not None else None
    jobs: list[PredictionJob] = []
    for row in finished.to_dict("records"):
        trial_id = str(row["trial_id"])
        checkpoint = (relocated_path(row["checkpoint_path"], recorded_root, store.root)
                      if isinstance(row.get("checkpoint_path"), str) else None)
        if isinstance(row.get("predictions_path"), str):
            predictions = relocated_path(row["predictions_path"], recorded_root, store.root)
        elif checkpoint is not None:
            predictions = checkpoint.parent / PREDICTIONS_FILE
        else:
            predictions = None
        if only_missing and predictions is not None and predictions.is_file():
            continue
        where = f"trial {trial_id} of sweep {sweep_id!r}"
        if checkpoint is None or not checkpoint.is_file():
            raise DataError(f"{where} has no predictions file and no model checkpoint"
                            f"{f' at {checkpoint}' if checkpoint is not None else ''}; it cannot be predicted again "
                            "(run the trial again, or remove its row to select without it)")
        if request is None:
            raise DataError(f"{where} needs predicting but the sweep's settings file "
                            f"{Path(store.root) / 'sweeps' / sweep_id / 'sweep.json'} is missing (it says which "
                            "data and model the trial used)")
        resources = request.resources
        run = dict(request.run_fields(), target=row["target"], output_dir=str(checkpoint.parent),
                   num_threads=max(1, int(round(resources.cpus_per_worker))))
        jobs.append(PredictionJob(sweep_id=sweep_id, trial_id=trial_id, run=run, checkpoint_path=str(checkpoint),
                                  predictions_path=str(predictions), num_cpus=float(resources.cpus_per_worker),
                                  num_gpus=float(resources.gpus_per_worker)))
    return jobs


def predict_candidate(job: PredictionJob) -> str:
    """Rebuild one candidate's model from its checkpoint and write its predictions file (the Ray task's body)."""
    if job.num_gpus > 0 and not torch.cuda.is_available():
        raise UserError(f"re-predicting trial {job.trial_id} asked for a GPU but CUDA is not available on its node")
    device = torch.device("cuda" if job.num_gpus > 0 else "cpu")
    ctx = RunContext(RunSpec.from_dict(job.run), LocalSession(device=device))
    try:
        model = rebuild_model(job.checkpoint_path, ctx)
    except DataError as error:
        raise DataError(f"trial {job.trial_id}: {error}") from None
    predictions = candidate_predictions(model, ctx)
    written = cache_candidate_predictions(model, ctx, job.predictions_path, predictions)
    written.with_name(TRIAL_SCORES_FILE).write_text(json.dumps(run_trial_selection_scores(model, ctx, predictions)))
    return str(written)


def run_prediction_tasks(jobs: list[PredictionJob], address: str | None = None) -> list[str]:
    """Run one Ray task per job (the trial's CPUs and GPUs), wait for all, and return the written paths in order.

    Joins the running Ray (``address`` / ``RAY_ADDRESS``, or the one this process already started) or starts a
    local one for the call. Every task runs to the end before failures are raised together as one UserError, so a
    bad candidate never discards the others' predictions.
    """
    if not jobs:
        return []
    started_here = connect(address)
    try:
        remote_function = ray.remote(predict_candidate)
        references = [remote_function.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus,
                                              name=f"raysel-predict-{job.trial_id}").remote(job) for job in jobs]
        written: list[str] = []
        failures: list[str] = []
        bar = progress(len(jobs), "re-predicting candidates", unit="candidate")
        with heartbeat("re-predicting candidates", detail=lambda: f"{bar.n}/{len(jobs)} done"):
            for job, reference in zip(jobs, references):
                try:
                    written.append(ray.get(reference))
                except RayTaskError as error:
                    cause = getattr(error, "cause", None) or error
                    message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
                    failures.append(f"trial {job.trial_id}: {message}")
                bar.update(1)
        bar.close()
        if failures:
            raise UserError(f"re-predicting {len(failures)} of {len(jobs)} candidate(s) failed: " + "; ".join(failures))
        return written
    finally:
        if started_here:
            ray.shutdown()


def repredict_sweep(store: Any, sweep_id: str, *, only_missing: bool = True, address: str | None = None,
                    stream: Any = None) -> list[PredictionJob]:
    """(Re)compute the prediction files of a finished sweep's candidates as Ray tasks and point their rows at them.

    ``only_missing`` (the default used before every selection) predicts only candidates whose file is missing;
    ``False`` recomputes every finished candidate (``--repredict``). Returns the jobs that ran.
    """
    stream = stream or sys.stdout
    jobs = prediction_jobs(store, sweep_id, only_missing=only_missing)
    if not jobs:
        return []
    gpus = f" + {jobs[0].num_gpus:g} GPU" if jobs[0].num_gpus else ""
    print(f"predicting {len(jobs)} candidate(s) of sweep {sweep_id} on the target selection subset as Ray tasks "
          f"({jobs[0].num_cpus:g} CPU{gpus} each) ...", file=stream, flush=True)
    written = run_prediction_tasks(jobs, address=address)
    stored = store.load_sweep(sweep_id).set_index("trial_id")["predictions_path"]
    for job, path in zip(jobs, written):
        if stored.get(job.trial_id) != path:
            store.update_trial_columns(sweep_id, job.trial_id, {"predictions_path": path})
        scores_file = Path(path).with_name(TRIAL_SCORES_FILE)
        if scores_file.is_file():
            store.update_trial_scores(sweep_id, job.trial_id, json.loads(scores_file.read_text()))
    return jobs
