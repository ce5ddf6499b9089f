"""A whole sweep: validate, connect, build shared stages, tune, select, and return what it produced."""

from __future__ import annotations

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
from raysel.hyperparameters import config_from_dict
from raysel.methods.base import LocalSession, RunContext, RunSpec
from raysel.progress import PROGRESS_FILE, heartbeat, read_status_file
from raysel.registry import get_method
from raysel.selection.decision import select_sweep
from raysel.store import ResultStore
from raysel.store_compaction import compact_sweep


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


def prepare_shared_stages(settings: SweepSettings, space: Any, *, local: bool, stream: Any) -> None:
    """Build the method's hyperparameter-independent stages once per target, as one Ray task, before any trial.

    Without this, the first trials would build them on one CPU each while the rest wait on the stage lock. On a
    local Ray the task takes every CPU; on a cluster it asks for one trial's resources.
    """
    method = get_method(settings.method)
    if method.prepare_shared is None:
        return
    resources = settings.resources
    cpus = max(1, int(cluster_cpus())) if local else max(1, int(round(resources.workers * resources.cpus_per_worker)))
    gpus = resources.gpus_per_worker if resources.gpus_per_worker > 0 else 0
    task = ray.remote(_prepare_shared_task).options(num_cpus=cpus, num_gpus=gpus)
    fixed = space.fixed_values() if hasattr(space, "fixed_values") else {}
    for target in settings.targets:
        started = time.perf_counter()
        print(f"building shared stages of {method.name} for target {target} once (source model / warm-up; cached) ...",
              file=stream, flush=True)
        status = settings.sweep_dir / "shared" / target / PROGRESS_FILE  # the task's latest progress line
        with heartbeat(f"  shared stages ({target})", stream=stream, detail=lambda: read_status_file(status)):
            ray.get(task.remote(settings.method, fixed, dict(settings.run, target=target, output_dir=str(status.parent)),
                                cpus, gpus > 0))
        print(f"  ready in {time.perf_counter() - started:.0f} s", file=stream, flush=True)


def _prepare_shared_task(method_name: str, fixed: dict[str, Any], run: dict[str, Any], threads: int,
                         use_gpu: bool) -> None:
    """Ray task body: run ``Method.prepare_shared`` in a LocalSession with ``threads`` torch threads."""
    method = get_method(method_name)
    config = config_from_dict(method.config_class, fixed)
    with tempfile.TemporaryDirectory(prefix="raysel-prepare-") as scratch:
        spec = RunSpec.from_dict({"output_dir": scratch, **run, "num_threads": threads})
        device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
        method.prepare_shared(config, RunContext(spec, LocalSession(checkpoint_root=scratch, device=device)))


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
