"""A whole sweep: validate, connect, build shared stages, tune, select, and return what it produced."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from raysel import data as data_module
from raysel.errors import ConfigError
from raysel.execution import (ProgressPrinter, SearchSettings, SweepSettings, build_tuner, cluster_cpus, connect,
                              save_settings)
from raysel.execution.timing import TimedRunContext
from raysel.hyperparameters import config_from_dict
from raysel.methods.base import LocalSession, RunSpec
from raysel.progress import PROGRESS_FILE, heartbeat, read_status_file
from raysel.registry import Method, get_method
from raysel.selection.decision import select_sweep
from raysel.store import ResultStore
from raysel.store_compaction import compact_sweep


PREPARED_DIR = "_prepared"  # in the stage cache: one marker per finished preparation (see preparation_marker)


@dataclass
class SweepOutcome:
    """What a finished sweep produced: the store location, the trials table and the selection decisions."""

    sweep_id: str
    results: str
    trials: Any  # pandas.DataFrame
    decisions: list[dict[str, Any]]


def run_sweep(settings: SweepSettings, search: SearchSettings, space: Any, *, resume: bool, address: str | None,
              progress_interval_s: float = 30.0, stream: Any = None, mlflow_uri: str | None = None) -> SweepOutcome:
    """Run (or resume) a sweep end to end and return its trials and selection decisions (tracked in MLflow when
    ``mlflow_uri`` is given: one run per trial under one parent run per sweep)."""
    stream = stream or sys.stdout
    # Trials run in their own working directory (Tune's trial dir): every path they use must be absolute.
    settings.results = str(Path(settings.results).expanduser().resolve())
    store = ResultStore(Path(settings.results))
    store.check_writable()
    tracker = _start_tracking(mlflow_uri, settings, search)  # an unusable URI fails here, before any trial
    family = data_module.get_family(settings.run["dataset"])
    root = Path(settings.run["data_root"]) if settings.run.get("data_root") else data_module.default_data_root()
    root = root.expanduser().resolve()
    started_here = connect(address)
    try:
        data_module.prepare(family, root)
        settings.run["data_root"] = str(root)
        if not resume:
            save_settings(settings, search, space.to_dict() if hasattr(space, "to_dict") else {})
        prepare_shared_stages(settings, space, local=started_here, stream=stream)
        if search.max_concurrent is None and started_here:
            search.max_concurrent = max(1, int(cluster_cpus() // max(settings.resources.trial_cpus(), 1e-6)))
        param_space = {"hp": space.to_tune(search.search), "target": _target_space(settings.targets, search.search)}
        total = expected_trials(space, search, len(settings.targets))
        printer = ProgressPrinter(total, interval_s=progress_interval_s)
        print(_sweep_line(settings, search, total), file=stream, flush=True)
        tuner = build_tuner(settings, search, param_space, resume,
                            [printer.callback] + ([tracker.callback()] if tracker else []))
        tuner.fit()
    finally:
        if started_here:
            ray.shutdown()

    decisions = select_sweep(store, settings.sweep_id, settings.method, settings.selectors, stream, record_all=True)
    compact_sweep(store, settings.sweep_id)  # one file per sweep: queries over many sweeps stay fast (issue 17)
    trials = store.load_sweep(settings.sweep_id)
    if tracker is not None:
        tracker.finish(trials, decisions)
    return SweepOutcome(settings.sweep_id, settings.results, trials, decisions)


def _start_tracking(uri: str | None, settings: SweepSettings, search: SearchSettings) -> Any:
    """The sweep's MLflow tracker (``--mlflow``), or None."""
    if not uri:
        return None
    from raysel.tracking import SweepTracker  # not a cycle: mlflow is heavy and optional, imported only with --mlflow

    params = {"method": settings.method, "targets": settings.targets, "search": search.search,
              "scheduler": search.scheduler, "num_samples": search.num_samples, "seed": search.seed,
              "selectors": list(settings.selectors), **{f"run.{k}": v for k, v in settings.run.items()}}
    return SweepTracker.start(uri, settings.sweep_id, params)


def _sweep_line(settings: SweepSettings, search: SearchSettings, total: int | None) -> str:
    """The one line announcing a sweep: method, trials, search, concurrency and per-trial resources."""
    resources = settings.resources
    return (f"sweep {settings.sweep_id}: method {settings.method}, {total or '?'} trials, "
            f"{search.search} search, {search.scheduler} scheduler, "
            f"{f'up to {search.max_concurrent} at once' if search.max_concurrent else 'concurrency set by Ray'}, "
            f"{resources.workers} worker(s) x {resources.cpus_per_worker} CPU"
            f"{f' + {resources.gpus_per_worker} GPU' if resources.gpus_per_worker else ''} per trial")


def prepare_shared_stages(settings: SweepSettings, space: Any, *, local: bool, stream: Any) -> list[StageRecord]:
    """Build the method's hyperparameter-independent stages before any trial: one Ray task per target, in parallel.

    Targets do not depend on each other, so their tasks run at once when the CPUs allow (on a local Ray the CPUs
    are split between them, at least one each; on a cluster each asks for one trial's resources). A stage shared by
    every target (the source-only model, cached with ``per_target=False``) is built once by the first task to take
    its lock; the others wait and load it. One line per stage: name, target/seed, seconds, built or cached.
    Nothing is prepared when the sweep varies a hyperparameter the stages are keyed by (:func:`stage_keying_names`),
    and no task starts for a target whose preparation an earlier sweep finished (:func:`preparation_marker`).
    """
    method = get_method(settings.method)
    if method.prepare_shared is None:
        return []
    varying = stage_keying_names(method, space)
    if varying:
        print(f"not building shared stages of {method.name} before the trials: the sweep varies "
              f"{', '.join(varying)}, which the source / warm-up stages depend on; each trial builds (and caches) the "
              "stage for its own values", file=stream, flush=True)
        return []
    fixed = space.fixed_values() if hasattr(space, "fixed_values") else {}
    seed = settings.run.get("seed", 0)
    markers = {target: preparation_marker(settings, fixed, target) for target in settings.targets}
    earlier = {target: _prepared_earlier(marker, target, seed) for target, marker in markers.items()}
    records = [record for found in earlier.values() if found is not None for record in found]
    for record in records:
        print(f"  {record.line()} (prepared by an earlier sweep)", file=stream, flush=True)
    missing = {target: marker for target, marker in markers.items() if earlier[target] is None}
    if missing:
        records += _run_preparation_tasks(settings, fixed, missing, local=local, stream=stream)
    return records


def _run_preparation_tasks(settings: SweepSettings, fixed: dict[str, Any], markers: dict[str, Path], *, local: bool,
                           stream: Any) -> list[StageRecord]:
    """One preparation Ray task per target in ``markers``, at once; each finished one leaves its marker."""
    resources = settings.resources
    if local:
        cpus = max(1, int(cluster_cpus()) // len(markers))
    else:
        cpus = max(1, int(round(resources.workers * resources.cpus_per_worker)))
    gpus = resources.gpus_per_worker if resources.gpus_per_worker > 0 else 0
    task = ray.remote(_prepare_shared_task).options(num_cpus=cpus, num_gpus=gpus)
    print(f"building shared stages of {settings.method} once (source model / warm-up; cached) for "
          f"{len(markers)} target(s), seed {settings.run.get('seed', 0)}: {len(markers)} Ray task(s) of {cpus} "
          "CPU(s) ...", file=stream, flush=True)
    started = time.perf_counter()
    status = {target: settings.sweep_dir / "shared" / target / PROGRESS_FILE for target in markers}
    pending = {task.remote(settings.method, fixed, dict(settings.run, target=target, output_dir=str(path.parent)),
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


def preparation_marker(settings: SweepSettings, fixed: dict[str, Any], target: str) -> Path:
    """Where a finished preparation of (method, fixed values, run, target) lists the stage files it left.

    A later sweep with the same inputs (the next sweep of a benchmark, a resumed sweep) finds every file listed and
    skips its Ray task, which would only load them (5-20 s a sweep). Skipping is always safe: a trial builds, under
    the stage's lock, any stage that is missing.
    """
    run = {key: value for key, value in settings.run.items() if key != "output_dir"}
    identity = {"method": settings.method, "fixed": fixed, "run": run, "target": target}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache_dir = RunSpec.from_dict({**run, "method": settings.method, "target": target}).stage_cache_dir()
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


def stage_keying_names(method: Method, space: Any) -> list[str]:
    """The swept hyperparameters whose candidate values change the method's shared stages.

    Preparation builds the stages from the sweep's fixed values (a swept name takes its default there), so it is
    only useful when every trial would load the same stage. Each swept name is tried at each of its candidates
    (grid/choice values, range ends) with the others fixed; an invalid combination is left for its trial to report.
    """
    fixed = space.fixed_values() if hasattr(space, "fixed_values") else {}
    swept = space.swept_names() if hasattr(space, "swept_names") else []
    base = method.shared_stage_key(config_from_dict(method.config_class, fixed))
    varying = []
    for name in swept:
        for value in space.entries[name].values:
            try:
                config = config_from_dict(method.config_class, {**fixed, name: value})
            except ConfigError:
                continue
            if method.shared_stage_key(config) != base:
                varying.append(name)
                break
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


def _target_space(targets: list[str], search: str) -> Any:
    """The trial's target: fixed for one target, a grid over several (Optuna tunes one target at a time)."""
    if len(targets) == 1:
        return targets[0]
    if search == "optuna":
        raise ConfigError("--search optuna tunes one target at a time; pass a single --target")
    return tune.grid_search(list(targets))


def expected_trials(space: Any, search: SearchSettings, num_targets: int) -> int | None:
    """How many trials the sweep will run (grid points x samples x targets)."""
    grid_points = space.num_grid_points() if search.search != "optuna" else 1
    return grid_points * search.num_samples * num_targets
