"""A whole sweep: connect, build shared stages, tune, select, and return what it produced.

:func:`run_sweep` takes a :class:`~raysel.request.SweepRequest`, which :func:`raysel.request_build.build_request`
checked before anything started; nothing here validates options again or changes the request.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import ray
import torch
from ray import tune

from raysel import data as data_module
from raysel.execution import ProgressPrinter, build_tuner, cluster_cpus, connect, trial_concurrency
from raysel.execution.timing import TimedRunContext
from raysel.hyperparameters import config_from_dict
from raysel.methods.base import LocalSession, RunSpec
from raysel.progress import PROGRESS_FILE, heartbeat, read_status_file
from raysel.registry import Method, get_method
from raysel.request import (HYPERPARAMETERS_KEY, SweepRequest, clear_deadline, mark_finished, save_request,
                            write_deadline)
from raysel.search_space import CheckedSpace
from raysel.selection.decision import select_sweep
from raysel.selection.guarded import default_trial_ids
from raysel.store import ResultStore
from raysel.store.compaction import compact_sweep

__all__ = [
    "PREPARED_DIR", "SweepOutcome", "run_sweep", "run_connected_sweep", "conclude_while_stopping",
    "prepare_shared_stages", "preparation_marker", "stage_keying_names", "StageRecord",
]


T = TypeVar("T")
PREPARED_DIR = "_prepared"  # in the stage cache: one marker per finished preparation (see preparation_marker)


@dataclass
class SweepOutcome:
    """What a sweep run produced: the store location, the trials table and the selection decisions; ``stopped`` when
    the run's deadline came before every trial ran (nothing selected then: resume the sweep to finish it)."""

    sweep_id: str
    results: str
    trials: Any  # pandas.DataFrame
    decisions: list[dict[str, Any]]
    stopped: bool = False


def run_sweep(request: SweepRequest, *, resume: bool = False, address: str | None = None, dashboard: bool = False,
              stream: Any = None, stop_new_trials_at: float | None = None) -> SweepOutcome:
    """Run (or resume) a checked sweep end to end and return its trials and selection decisions.

    Joins the Ray cluster at ``address`` (or ``$RAY_ADDRESS``) or starts a local Ray for the sweep, prepares the data,
    saves the request as ``sweep.json`` (a new sweep), builds the method's shared stages once, runs the trials as a
    Tune experiment, records every applicable selector's decision and compacts the sweep's rows. With
    ``request.mlflow_uri`` the trials and decisions are mirrored to MLflow (one run per trial under one parent run).

    Args:
        request: the sweep, from :func:`raysel.request_build.build_request` (or, to resume, read back from its
            ``sweep.json`` by :func:`raysel.request_build.resume_request`).
        resume: continue the sweep's Tune experiment; finished trials are kept, not run again.
        address: the Ray cluster to join; None: ``$RAY_ADDRESS``, else a local Ray started (and stopped) here.
        dashboard: start Ray's dashboard with a local Ray (see :func:`raysel.execution.connect`).
        stream: where progress lines go (default: stdout).
        stop_new_trials_at: epoch seconds after which no new trial starts (running ones finish; at least one trial
            starts in every run); the sweep is then left to be resumed, unselected (``SweepOutcome.stopped``).

    Returns:
        The sweep's id and results folder, its trials as a pandas DataFrame and its selection decisions.

    Example:
        >>> from raysel.request_build import build_request
        >>> request = build_request(method="source_only", data="digits", overrides=["iterations=2"],
        ...                         results="/tmp/raysel-doc", name="doc")
        >>> request.expected_trials()
        3
        >>> outcome = run_sweep(request)  # doctest: +SKIP
        >>> outcome.decisions[0]["selector"]  # doctest: +SKIP
        'fmiou'
    """
    stream = stream or sys.stdout
    store, tracker = _writable_store(request), _start_tracking(request)  # an unusable URI fails here, before any trial
    started_here = connect(address, dashboard=dashboard, stream=stream)
    try:
        stopped = _tune(request, resume=resume, local=started_here, stream=stream, tracker=tracker,
                        stop_new_trials_at=stop_new_trials_at)
    except BaseException:
        if started_here:
            ray.shutdown()
        raise
    conclude = functools.partial(_conclude, request, store, tracker, stream, stopped)
    return conclude_while_stopping(conclude, ray.shutdown) if started_here else conclude()


def conclude_while_stopping(conclude: Callable[[], T], stop: Callable[[], None]) -> T:
    """``conclude()`` in a thread while ``stop()`` runs here; returns what conclude returned, or raises its error
    once ``stop`` has finished. A sweep selects (which reads only the store) while its local Ray stops: each takes
    1-3 s on 2 cores, and stopping Ray is mostly waiting for its processes to exit."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="raysel-conclude") as pool:
        concluded = pool.submit(conclude)
        stop()
        return concluded.result()


def run_connected_sweep(request: SweepRequest, *, local: bool, resume: bool = False, stream: Any = None,
                        stop_new_trials_at: float | None = None) -> SweepOutcome:
    """:func:`run_sweep` on the Ray this process is connected to already (a study runs its sweeps on one Ray);
    ``local``: whether that Ray is a local one this process started (trials then fill its CPUs)."""
    stream = stream or sys.stdout
    store, tracker = _writable_store(request), _start_tracking(request)
    stopped = _tune(request, resume=resume, local=local, stream=stream, tracker=tracker,
                    stop_new_trials_at=stop_new_trials_at)
    return _conclude(request, store, tracker, stream, stopped)


def _writable_store(request: SweepRequest) -> ResultStore:
    """The sweep's result store, checked writable before anything runs."""
    store = ResultStore(Path(request.results))
    store.check_writable()
    return store


def _tune(request: SweepRequest, *, resume: bool, local: bool, stream: Any, tracker: Any,
          stop_new_trials_at: float | None) -> bool:
    """Prepare data and shared stages and run the Tune experiment; True when the deadline stopped it early."""
    data_module.prepare(data_module.get_family(request.data.family), Path(request.data.root))
    if not resume:
        save_request(request)
    prepare_shared_stages(request, local=local, stream=stream)
    max_concurrent = trial_concurrency(request, cluster_cpus() if local else None)
    param_space = {HYPERPARAMETERS_KEY: request.space.to_tune(request.search.algorithm),
                   "target": _target_space(request.data.targets)}
    total = request.expected_trials()
    printer = ProgressPrinter(total, interval_s=request.progress_interval_s)
    print(_sweep_line(request, total, max_concurrent), file=stream, flush=True)
    callbacks = [printer.callback] + ([tracker.callback()] if tracker else [])
    tuner = build_tuner(request, param_space, resume, callbacks, max_concurrent=max_concurrent)
    if stop_new_trials_at is None:
        clear_deadline(request.sweep_dir)
    else:
        write_deadline(request.sweep_dir, stop_new_trials_at, why="raysel study --max-minutes")
    try:
        tuner.fit()
    finally:
        clear_deadline(request.sweep_dir)
    # Trials left without a row mean the deadline cut the search short (an ASHA-stopped trial leaves none either:
    # such a sweep is resumed once more, proposes nothing new, and is then selected).
    stored = len(ResultStore(Path(request.results)).trial_ids(request.sweep_id))
    return stop_new_trials_at is not None and time.time() >= stop_new_trials_at and stored < total


def _conclude(request: SweepRequest, store: ResultStore, tracker: Any, stream: Any, stopped: bool) -> SweepOutcome:
    """Select and compact a sweep whose trials all ran, and mark it finished; a stopped one is left as it is."""
    if stopped:
        trials = store.load_sweep(request.sweep_id)
        print(f"sweep {request.sweep_id} stopped at its deadline with {len(trials)} of {request.expected_trials()} "
              "trials stored: not selected yet; resuming it runs the rest", file=stream, flush=True)
        if tracker is not None:
            tracker.finish(trials, [])
        return SweepOutcome(request.sweep_id, request.results, trials, [], stopped=True)
    decisions = select_sweep(store, request.sweep_id, request.method, request.selectors, stream, record_all=True,
                             default_trials=default_candidates(store, request))
    compact_sweep(store, request.sweep_id)  # one file per sweep: queries over many sweeps stay fast (issue 17)
    trials = store.load_sweep(request.sweep_id)
    if tracker is not None:
        tracker.finish(trials, decisions)
    mark_finished(request.sweep_dir, {"trials_stored": len(trials), "expected_trials": request.expected_trials(),
                                      "decisions": len(decisions), "finished_at": time.time()})
    return SweepOutcome(request.sweep_id, request.results, trials, decisions)


def _start_tracking(request: SweepRequest) -> Any:
    """The sweep's MLflow tracker (``--mlflow``), or None."""
    if not request.mlflow_uri:
        return None
    from raysel.tracking import SweepTracker  # not a cycle: mlflow is heavy and optional, imported only with --mlflow

    search = request.search
    params = {"method": request.method, "targets": list(request.data.targets), "search": search.algorithm,
              "scheduler": search.scheduler, "num_samples": search.num_samples, "seed": search.seed,
              "include_default": search.include_default,
              "selectors": list(request.selectors), **{f"run.{k}": v for k, v in request.run_fields().items()}}
    return SweepTracker.start(request.mlflow_uri, request.sweep_id, params)


def _sweep_line(request: SweepRequest, total: int | None, max_concurrent: int | None) -> str:
    """The one line announcing a sweep: method, trials, search, concurrency and per-trial resources."""
    resources, search = request.resources, request.search
    default = " (the default configuration first)" if search.include_default else ""
    return (f"sweep {request.sweep_id}: method {request.method}, {total or '?'} trials{default}, "
            f"{search.algorithm} search, {search.scheduler} scheduler, "
            f"{f'up to {max_concurrent} at once' if max_concurrent else 'concurrency set by Ray'}, "
            f"{resources.workers} worker(s) x {resources.cpus_per_worker} CPU"
            f"{f' + {resources.gpus_per_worker} GPU' if resources.gpus_per_worker else ''} per trial")


def default_candidates(store: ResultStore, request: SweepRequest) -> dict[str, str]:
    """target -> the candidate of the method's default configuration (its swept hyperparameters at the method's
    defaults), which the guarded decision keeps when it is not confident; recorded with the decisions, so that
    `raysel select` needs no method module."""
    return default_trial_ids(store.load_sweep(request.sweep_id), get_method(request.method).default_config(),
                             request.space.swept_names())


def prepare_shared_stages(request: SweepRequest, *, local: bool, stream: Any) -> list[StageRecord]:
    """Build the method's hyperparameter-independent stages before any trial: one Ray task per target, in parallel.

    Targets do not depend on each other, so their tasks run at once when the CPUs allow (on a local Ray the CPUs
    are split between them, at least one each; on a cluster each asks for one trial's resources). A stage shared by
    every target (the source-only model, cached with ``per_target=False``) is built once by the first task to take
    its lock; the others wait and load it. One line per stage: name, target/seed, seconds, built or cached.
    Nothing is prepared when the sweep varies a hyperparameter the stages are keyed by (:func:`stage_keying_names`),
    and no task starts for a target whose preparation an earlier sweep finished (:func:`preparation_marker`).
    """
    method = get_method(request.method)
    if method.prepare_shared is None:
        return []
    varying = stage_keying_names(method, request.space)
    if varying:
        print(f"not building shared stages of {method.name} before the trials: the sweep varies "
              f"{', '.join(varying)}, which the source / warm-up stages depend on; each trial builds (and caches) the "
              "stage for its own values", file=stream, flush=True)
        return []
    fixed = request.space.fixed_values()
    seed = request.search.seed
    markers = {target: preparation_marker(request, fixed, target) for target in request.data.targets}
    earlier = {target: _prepared_earlier(marker, target, seed) for target, marker in markers.items()}
    records = [record for found in earlier.values() if found is not None for record in found]
    for record in records:
        print(f"  {record.line()} (prepared by an earlier sweep)", file=stream, flush=True)
    missing = {target: marker for target, marker in markers.items() if earlier[target] is None}
    if missing:
        records += _run_preparation_tasks(request, fixed, missing, local=local, stream=stream)
    return records


def _run_preparation_tasks(request: SweepRequest, fixed: dict[str, Any], markers: dict[str, Path], *, local: bool,
                           stream: Any) -> list[StageRecord]:
    """One preparation Ray task per target in ``markers``, at once; each finished one leaves its marker."""
    resources = request.resources
    if local:
        cpus = max(1, int(cluster_cpus()) // len(markers))
    else:
        cpus = max(1, int(round(resources.workers * resources.cpus_per_worker)))
    gpus = resources.gpus_per_worker if resources.gpus_per_worker > 0 else 0
    task = ray.remote(_prepare_shared_task).options(num_cpus=cpus, num_gpus=gpus)
    print(f"building shared stages of {request.method} once (source model / warm-up; cached) for "
          f"{len(markers)} target(s), seed {request.search.seed}: {len(markers)} Ray task(s) of {cpus} "
          "CPU(s) ...", file=stream, flush=True)
    started = time.perf_counter()
    status = {target: request.sweep_dir / "shared" / target / PROGRESS_FILE for target in markers}
    pending = {task.remote(request.method, fixed, dict(request.run_fields(), target=target,
                                                       output_dir=str(path.parent)),
                           cpus, gpus > 0): target for target, path in status.items()}
    records: list[StageRecord] = []
    with heartbeat("  shared stages", stream=stream, detail=lambda: _stage_status(status)):
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            target_records = ray.get(done)
            _write_marker(markers[pending.pop(done)], target_records)
            for record in target_records:
                records.append(record)
                print(f"  {record.line()}", file=stream, flush=True)
    print(f"  shared stages ready in {time.perf_counter() - started:.0f} s", file=stream, flush=True)
    return records


def preparation_marker(request: SweepRequest, fixed: dict[str, Any], target: str) -> Path:
    """Where a finished preparation of (method, fixed values, run, target) lists the stage files it left.

    A later sweep with the same inputs (the next sweep of a benchmark, a resumed sweep) finds every file listed and
    skips its Ray task, which would only load them (5-20 s a sweep). Skipping is always safe: a trial builds, under
    the stage's lock, any stage that is missing.
    """
    run = request.run_fields()
    identity = {"method": request.method, "fixed": fixed, "run": run, "target": target}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache_dir = RunSpec.from_dict({**run, "method": request.method, "target": target}).stage_cache_dir()
    return cache_dir / PREPARED_DIR / f"{digest}.json"


def _prepared_earlier(marker: Path, target: str, seed: int) -> list[StageRecord] | None:
    """The stages an earlier preparation left for ``target``, as records; None when there was none or a file is gone."""
    try:
        stages = json.loads(marker.read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return None
    if not all(Path(stage["path"]).is_file() for stage in stages):
        return None
    now = time.time()
    return [StageRecord(stage["name"], target, seed, 0.0, False, "", os.getpid(), now, now, stage["path"])
            for stage in stages]


def _write_marker(marker: Path, records: list[StageRecord]) -> None:
    """Record a finished preparation's stage files (atomically: a killed sweep leaves no half-written marker)."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    temporary = marker.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"stages": [{"name": r.name, "path": r.path} for r in records if r.path]}))
    os.replace(temporary, marker)


def stage_keying_names(method: Method, space: CheckedSpace) -> list[str]:
    """The swept hyperparameters whose candidate values change the method's shared stages.

    Preparation builds the stages from the sweep's fixed values (a swept name takes its default there), so it is
    only useful when every trial would load the same stage. Each swept name is tried at each of its candidates
    (grid/choice values, range ends) with the others fixed, the configurations the request was checked with
    (:func:`raysel.request_build.check_candidates`).
    """
    fixed = space.fixed_values()
    base = method.shared_stage_key(config_from_dict(method.config_class, fixed))
    varying: list[str] = []
    for name, value in space.candidate_values():
        if name not in varying and method.shared_stage_key(config_from_dict(method.config_class,
                                                                            {**fixed, name: value})) != base:
            varying.append(name)
    return varying


@dataclass
class StageRecord:
    """One shared stage as a preparation task met it: name, target, seed, seconds, built or cached, and which
    Ray task and process ran it, with that task's start and end (epoch seconds)."""

    name: str
    target: str
    seed: int
    seconds: float
    built: bool
    task_id: str
    pid: int
    task_started: float
    task_finished: float
    path: str = ""  # the stage's cached file

    def line(self) -> str:
        """The progress line: ``stage <name> (target T, seed S): built in X s`` (or ``cached, loaded in``)."""
        how = "built in" if self.built else "cached, loaded in"
        return f"stage {self.name} (target {self.target}, seed {self.seed}): {how} {self.seconds:.1f} s"


def _stage_status(status: dict[str, Path]) -> str:
    """The latest progress line of every preparation task that wrote one (for the heartbeat)."""
    lines = [f"{target}: {line}" for target, path in status.items() if (line := read_status_file(path))]
    return "; ".join(lines)


def _prepare_shared_task(method_name: str, fixed: dict[str, Any], run: dict[str, Any], threads: int,
                         use_gpu: bool) -> list[StageRecord]:
    """Ray task body: run ``Method.prepare_shared`` in a LocalSession with ``threads`` torch threads; return the
    stages it met, timed."""
    task_started = time.time()
    method = get_method(method_name)
    config = config_from_dict(method.config_class, fixed)
    with tempfile.TemporaryDirectory(prefix="raysel-prepare-") as scratch:
        spec = RunSpec.from_dict({"output_dir": scratch, **run, "num_threads": threads})
        device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
        ctx = TimedRunContext(spec, LocalSession(checkpoint_root=scratch, device=device))
        method.prepare_shared(config, ctx)
    task_id, finished = ray.get_runtime_context().get_task_id() or "", time.time()
    return [StageRecord(stage.name, ctx.target, spec.seed, stage.seconds, stage.built, task_id, os.getpid(),
                        task_started, finished, stage.path) for stage in ctx.stages]


def _target_space(targets: tuple[str, ...]) -> Any:
    """The trial's target: fixed for one target, a grid over several (the request refused several under Optuna)."""
    return targets[0] if len(targets) == 1 else tune.grid_search(list(targets))
