"""Building the Tune experiment: the trainable with its resources, the search algorithm and the scheduler."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from optuna.samplers import TPESampler
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from raysel.errors import UserError
from raysel.execution.driver import trial_driver
from raysel.methods.reports import EPOCH
from raysel.registry import get_method
from raysel.request import (CONFIDENCE_OBJECTIVE, DEADLINE_FILE, DRIVER_CPU, HYPERPARAMETERS_KEY, TUNE_FOLDER,
                            SearchPlan, SweepRequest, read_deadline)
from raysel.request_build import default_point

__all__ = ["TUNE_FOLDER", "HYPERPARAMETERS_KEY", "trial_concurrency", "build_tuner", "FinalScoreOptunaSearch",
           "search_and_scheduler", "DeadlineVariantGenerator", "DeadlineSearchGenerator"]



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
    point = default_point(get_method(request.method), request.space, search.algorithm) \
        if search.include_default else None
    search_alg, scheduler = search_and_scheduler(search, max_concurrent,
                                                 deadline_file=(tune_dir / DEADLINE_FILE).resolve(),
                                                 default_configuration=point)
    if search.objective != CONFIDENCE_OBJECTIVE and search.report_score is None:
        # Without ASHA a trial-scored objective arrives only with a trial's final report; Tune's strict check would
        # reject the intermediate reports that do not carry it (ray/tune/execution/tune_controller.py).
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    tune_config = tune.TuneConfig(
        num_samples=search.tune_num_samples,  # one more with include_default: its point takes a sample of its own
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


def search_and_scheduler(search: SearchPlan, max_concurrent: int | None = None, *,
                         deadline_file: Path | None = None,
                         default_configuration: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """Tune's search algorithm and trial scheduler for a checked search plan.

    Args:
        search: the checked plan (algorithm, seed, scheduler, objective, ``include_default``).
        max_concurrent: at most this many trials at once (None or 0: no limit of the search's own).
        deadline_file: the search starts no new trial after the time written there
            (:class:`DeadlineVariantGenerator`, :class:`DeadlineSearchGenerator`).
        default_configuration: swept hyperparameter -> default (:func:`raysel.request_build.default_point`),
            evaluated first as Tune's ``points_to_evaluate``; required exactly when ``search.include_default``.
            Tune counts it as one of ``num_samples`` (:attr:`SearchPlan.tune_num_samples` asks for one more).

    Returns:
        ``(search algorithm, scheduler)`` for ``tune.TuneConfig``.
    """
    if search.include_default != (default_configuration is not None):
        raise ValueError(f"include_default is {search.include_default}, and the default configuration was "
                         f"{'not ' if default_configuration is None else ''}given")
    points = None
    if default_configuration is not None:
        # BasicVariantGenerator overwrites the param_space's nested entries with the point's (a grid entry becomes
        # the point's one value; an empty mapping would replace the whole entry, so nothing swept is no entry);
        # Optuna's space is flat, its parameters named by their path, and it checks that a point names every one of
        # them (ray/tune/utils/util.py validate_warmstart).
        if search.algorithm == "optuna":
            points = [{f"{HYPERPARAMETERS_KEY}/{name}": value for name, value in default_configuration.items()}]
        else:
            points = [{HYPERPARAMETERS_KEY: dict(default_configuration)} if default_configuration else {}]
    if search.algorithm == "optuna":
        # TPE needs an objective: the label-free confidence each method reports, or a trial-scored label-free
        # selector (never held-out labels).
        search_alg: Any = FinalScoreOptunaSearch(metric=search.objective_metric, mode="max",
                                                 sampler=TPESampler(seed=search.seed,
                                                                    n_startup_trials=search.startup_trials),
                                                 points_to_evaluate=points)
        if max_concurrent:
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=max_concurrent)
        if deadline_file is not None:
            search_alg = DeadlineSearchGenerator(search_alg, deadline_file=deadline_file)
    elif deadline_file is not None:
        search_alg = DeadlineVariantGenerator(max_concurrent=max_concurrent or 0, random_state=search.seed,
                                              deadline_file=deadline_file, points_to_evaluate=points)
    else:
        # Seeded, so --seed fixes the sampled configurations (Tune's default generator draws unseeded).
        search_alg = BasicVariantGenerator(max_concurrent=max_concurrent or 0, random_state=search.seed,
                                           points_to_evaluate=points)
    if search.scheduler == "asha":
        # A trial-scored objective is computed at every report under ASHA (SearchPlan.report_score).
        scheduler: Any = ASHAScheduler(time_attr=EPOCH, metric=search.scheduler_metric, mode="max",
                                       grace_period=search.asha_grace_epochs)
    else:
        scheduler = FIFOScheduler()
    return search_alg, scheduler


class _StopsAtDeadline:
    """Makes a Tune search algorithm start no new trial after a deadline, so that a sweep stops between trials.

    Ray Tune 2.60 has no "finish the running trials, start no new one" switch: a ``Stopper`` only sees results of
    running trials and ``stop_all`` ends them too, and a scheduler cannot hold back a trial Tune has queued. So the
    search itself stops proposing: past the deadline ``next_trial`` returns None and ``is_finished`` is True, Tune's
    loop ends once the running trials have, and the experiment state (saved by the unchanged base class, never marked
    finished) keeps the trials not yet proposed for ``Tuner.restore``. Trials are proposed only when they can start
    (raysel limits them to the trials the CPUs fit on a local Ray, and under ``--max-concurrent``); on a cluster
    without ``--max-concurrent`` Tune may queue some ahead, and those still run.

    The deadline is read from ``deadline_file`` (:func:`raysel.request.write_deadline`), not kept in the object: Tune
    pickles the search algorithm with the experiment, so a restored sweep gets the deadline its current run wrote.
    Each process proposes at least one trial, so every run makes progress and no experiment ends without a trial.
    """

    deadline_file: str | None
    _proposed_here: bool  # whether this process proposed a trial (not saved with the search's state)

    def _past_deadline(self) -> bool:
        """Whether this process proposed a trial already and the deadline in the file has passed."""
        if not self._proposed_here or not self.deadline_file:
            return False
        deadline = read_deadline(self.deadline_file)
        return deadline is not None and time.time() >= deadline

    def next_trial(self) -> Any:
        if self._past_deadline():
            return None
        trial = super().next_trial()  # type: ignore[misc]
        self._proposed_here = self._proposed_here or trial is not None
        return trial

    def is_finished(self) -> bool:
        return self._past_deadline() or super().is_finished()  # type: ignore[misc]


class DeadlineVariantGenerator(_StopsAtDeadline, BasicVariantGenerator):
    """Tune's grid/random generator, stopping at the deadline in ``deadline_file`` (see :class:`_StopsAtDeadline`)."""

    def __init__(self, *, deadline_file: Path | str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deadline_file = str(deadline_file) if deadline_file else None
        self._proposed_here = False

    def get_state(self) -> Any:
        state = super().get_state()
        if state:
            state.pop("_proposed_here", None)  # a restored search has proposed nothing in the new process
        return state


class DeadlineSearchGenerator(_StopsAtDeadline, SearchGenerator):
    """Tune's wrapper of a ``Searcher`` (Optuna), stopping at the deadline in ``deadline_file``."""

    def __init__(self, searcher: Any, *, deadline_file: Path | str | None) -> None:
        super().__init__(searcher)
        self.deadline_file = str(deadline_file) if deadline_file else None
        self._proposed_here = False
