"""Building the Tune experiment: the trainable with its resources, the search algorithm and the scheduler."""

from __future__ import annotations

import os
from typing import Any

from optuna.samplers import TPESampler
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from raysel.errors import UserError
from raysel.execution.driver import trial_driver
from raysel.methods.reports import EPOCH
from raysel.request import CONFIDENCE_OBJECTIVE, DRIVER_CPU, TUNE_FOLDER, SearchPlan, SweepRequest

__all__ = ["TUNE_FOLDER", "trial_concurrency", "build_tuner", "FinalScoreOptunaSearch", "search_and_scheduler"]


def trial_concurrency(request: SweepRequest, local_cpus: float | None) -> int | None:
    """Trials at once: ``--max-concurrent`` when given, else as many as a local Ray's ``local_cpus`` fit, else None
    (on a cluster Tune decides from the resources each trial asks for)."""
    if request.search.max_concurrent is not None:
        return request.search.max_concurrent
    if local_cpus is None:
        return None
    return max(1, int(local_cpus // max(request.resources.trial_cpus(), 1e-6)))


def build_tuner(request: SweepRequest, param_space: dict[str, Any], resume: bool, callbacks: list[Any], *,
                max_concurrent: int | None = None) -> tune.Tuner:
    """A ``tune.Tuner`` (or a restored one) for this sweep, running at most ``max_concurrent`` trials at once."""
    trainable = tune.with_parameters(trial_driver, request=request)
    resources = request.resources
    if resources.uses_train:
        trainable = tune.with_resources(trainable, {"cpu": DRIVER_CPU})
    else:
        per_trial = {"cpu": resources.cpus_per_worker}
        if resources.gpus_per_worker:
            per_trial["gpu"] = resources.gpus_per_worker
        trainable = tune.with_resources(trainable, per_trial)
    tune_dir = request.sweep_dir
    if resume:
        path = str((tune_dir / TUNE_FOLDER).resolve())
        if not tune.Tuner.can_restore(path):
            raise UserError(f"--resume: sweep {request.sweep_id!r} has no restorable Tune state at {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)

    search = request.search
    search_alg, scheduler = search_and_scheduler(search, max_concurrent)
    if search.objective != CONFIDENCE_OBJECTIVE and search.report_score is None:
        # Without ASHA a trial-scored objective arrives only with a trial's final report; Tune's strict check would
        # reject the intermediate reports that do not carry it (ray/tune/execution/tune_controller.py).
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    tune_config = tune.TuneConfig(
        num_samples=search.num_samples,
        max_concurrent_trials=None,  # the search algorithm limits concurrency (see search_and_scheduler)
        search_alg=search_alg,
        scheduler=scheduler,
        trial_dirname_creator=lambda trial: trial.trial_id,
        reuse_actors=True,  # a finished trial's process runs the next one: no new worker process, no repeated imports
    )
    run_config = tune.RunConfig(
        name=TUNE_FOLDER,
        storage_path=str(tune_dir.resolve()),
        failure_config=tune.FailureConfig(max_failures=request.max_failures),
        verbose=0,
        callbacks=callbacks,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


class FinalScoreOptunaSearch(OptunaSearch):
    """Optuna TPE whose objective may first appear in a trial's final report (a trial-scored selector).

    Ray's OptunaSearch reads the metric from every intermediate result; raysel does not prune with Optuna, so
    intermediate results without it are passed over and the final one, which always carries it, completes the trial.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


def search_and_scheduler(search: SearchPlan, max_concurrent: int | None = None) -> tuple[Any, Any]:
    """Tune's search algorithm (seeded, at most ``max_concurrent`` trials at once) and trial scheduler for a checked
    search plan."""
    if search.algorithm == "optuna":
        # TPE needs an objective: the label-free confidence each method reports, or a trial-scored label-free
        # selector (never held-out labels).
        search_alg: Any = FinalScoreOptunaSearch(metric=search.objective_metric, mode="max",
                                                 sampler=TPESampler(seed=search.seed,
                                                                    n_startup_trials=search.startup_trials))
        if max_concurrent:
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=max_concurrent)
    else:
        # Seeded, so --seed fixes the sampled configurations (Tune's default generator draws unseeded).
        search_alg = BasicVariantGenerator(max_concurrent=max_concurrent or 0, random_state=search.seed)
    if search.scheduler == "asha":
        # A trial-scored objective is computed at every report under ASHA (SearchPlan.report_score).
        scheduler: Any = ASHAScheduler(time_attr=EPOCH, metric=search.scheduler_metric, mode="max",
                                       grace_period=search.asha_grace_epochs)
    else:
        scheduler = FIFOScheduler()
    return search_alg, scheduler
