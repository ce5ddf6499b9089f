"""The Tune trial driver: run one configuration directly in the trial or on Ray Train workers, and store its row."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ray.train
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from raysel.execution.connection import one_line
from raysel.execution.devices import direct_device, process_group_backend
from raysel.execution.rows import write_row
from raysel.execution.sessions import TrainWorkerSession, TuneTrialSession, reportable
from raysel.execution.timing import PhaseClock, timed_context
from raysel.execution.trial import ATTEMPTS_FILE, FINAL_FILE, read_int, train_and_finish
from raysel.methods.reports import EPOCH, FINAL_SCORES
from raysel.request import HYPERPARAMETERS_KEY, SweepRequest
from raysel.store import ResultStore
from raysel.store.schema import SCORE_PREFIX

RESUMED_EPOCH = 1_000_000  # the epoch a finished trial reports, past any ASHA rung


def trial_driver(config: dict[str, Any], request: SweepRequest) -> None:
    """Tune function trainable: run one configuration (direct or via TorchTrainer) and store its row; under ASHA a
    trial-scored objective is computed at every report (``request.search.report_score``)."""
    started, entered = time.time(), time.perf_counter()
    trial_id = tune.get_context().get_trial_id()
    store = ResultStore(Path(request.results))
    previous = store.read_trial(request.sweep_id, trial_id)
    if previous is not None and previous.get("status") == "finished":
        tune.report({"status": "finished", EPOCH: RESUMED_EPOCH, "skipped_on_resume": True})
        return

    output_dir = request.trial_dir(trial_id)
    run = dict(request.run_fields(), target=config["target"], output_dir=str(output_dir),
               num_threads=max(1, int(round(request.resources.cpus_per_worker))))
    loop_config = {"method": request.method, "hyperparameters": dict(config[HYPERPARAMETERS_KEY]), "run": run,
                   "report_score": request.search.report_score}
    try:
        if request.resources.uses_train:
            final = fit_with_train(loop_config, request, trial_id)
        else:
            device = direct_device(request.resources)
            clock = PhaseClock()
            final = train_and_finish(loop_config, TuneTrialSession(device), timed_context(clock)).final
            final.update(trial_phase_columns(clock, time.perf_counter() - entered))
    except Exception as error:  # recorded, then re-raised so Tune's FailureConfig can retry the trial
        write_row(store, request, trial_id, config, started, {"status": "failed", "error": one_line(error),
                                                               "retries": read_int(output_dir / ATTEMPTS_FILE) - 1})
        raise
    write_row(store, request, trial_id, config, started, final)
    scores = {f"{SCORE_PREFIX}{name}": value for name, value in (final.get(FINAL_SCORES) or {}).items()}
    tune.report(reportable({**final, **scores, EPOCH: RESUMED_EPOCH}))  # score_<name>: an Optuna objective


def trial_phase_columns(clock: PhaseClock, trial_s: float) -> dict[str, float]:
    """The ``time_<phase>_s`` columns of a trial; ``setup`` is the rest of ``trial_s`` (store check, run context)."""
    return {**clock.columns(), "time_setup_s": max(0.0, trial_s - sum(clock.seconds.values()))}


def fit_with_train(loop_config: dict[str, Any], request: SweepRequest, trial_id: str) -> dict[str, Any]:
    """Run the loop on ``workers`` Ray Train workers; restarts from the last checkpoint on worker failure."""
    resources = request.resources
    use_gpu = resources.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=process_group_backend(use_gpu)),
        scaling_config=ray.train.ScalingConfig(num_workers=resources.workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",  # deterministic: a resumed sweep finds this run's checkpoints again
            storage_path=str((request.sweep_dir / "train").resolve()),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=request.max_failures),
        ),
    )
    result = trainer.fit()
    final = getattr(result, "return_value", None)
    if not final:
        final_path = request.trial_dir(trial_id) / FINAL_FILE
        final = json.loads(final_path.read_text()) if final_path.exists() else None
    if not final:
        raise RuntimeError(f"Ray Train run train-{trial_id} finished without final metrics")
    return final


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point: every worker runs the method loop through a TrainWorkerSession (rank 0 timed)."""
    clock, entered = PhaseClock(), time.perf_counter()
    final = train_and_finish(loop_config, TrainWorkerSession(), timed_context(clock)).final
    return {**final, **trial_phase_columns(clock, time.perf_counter() - entered)} if final else final
