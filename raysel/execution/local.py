"""Running one configuration in-process, without Ray Tune: the same path a trial takes, through a LocalSession."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from raysel.errors import ConfigError
from raysel.execution.trial import WorkerRun, train_and_finish
from raysel.methods.base import LocalSession, RunContext, RunSpec, Session
from raysel.methods.result import TrainResult
from raysel.request import SweepRequest

__all__ = ["LocalRun", "run_local"]


@dataclass
class LocalRun:
    """An in-process run: the trial's final metrics, the method's result (model included) and every report."""

    final: dict[str, Any]
    result: TrainResult | None
    reports: list[dict[str, Any]]


def run_local(method: str | SweepRequest, hyperparameters: Mapping[str, Any] | None = None,
              run_spec: RunSpec | None = None, *, target: str | None = None, output_dir: str | Path | None = None,
              device: torch.device | None = None, checkpoint_root: str | Path | None = None,
              context_class: Callable[[RunSpec, Session], RunContext] = RunContext) -> LocalRun:
    """Run one configuration in this process as a trial would (:func:`raysel.execution.trial.run_worker` through a
    :class:`LocalSession`): train, save the model, cache predictions, score held-out. No Ray.

    For tests, benchmarks and debugging a configuration without a cluster.

    Args:
        method: a registered method's name (``run_spec`` then says what it trains on), or a checked
            :class:`~raysel.request.SweepRequest`: the run is one trial of that sweep (its method, data, seed and
            acceleration; its space's fixed values under ``hyperparameters``).
        hyperparameters: the configuration; with a request, the candidate's values on top of the fixed ones.
            Hyperparameters set nowhere keep the method's defaults.
        run_spec: data, model and storage of the run (needed with a method name; built from a request).
        target: with a request, the target domain (default: the request's first).
        output_dir: with a request, where the trial's files go (default: a new temporary folder).
        device: where to train (default CPU).
        checkpoint_root: where the session keeps checkpoints (default: a temporary folder when one is saved).
        context_class: replaces :class:`RunContext` (benchmarks' oracle contexts).

    Returns:
        The final metrics (status, checkpoint and predictions paths, held-out and label-free scores), the method's
        :class:`TrainResult` and every report the loop made.

    Example:
        >>> from raysel.request_build import build_request
        >>> request = build_request(method="source_only", data="digits", selection_size=8,
        ...                         overrides=["iterations=2", "batch_size=4"], results="/tmp/raysel-doc", name="doc")
        >>> run = run_local(request, {"learning_rate": 1e-3})  # doctest: +SKIP
        >>> run.final["status"]  # doctest: +SKIP
        'finished'
    """
    if isinstance(method, SweepRequest):
        hyperparameters = {**method.space.fixed_values(), **(hyperparameters or {})}
        run_spec = _request_run_spec(method, target, output_dir)
        method = method.method
    elif run_spec is None:
        raise ConfigError(f"run_local({method!r}, ...) needs a run_spec (or pass a SweepRequest instead of a name)")
    run_spec = dataclasses.replace(run_spec, method=method)
    session = LocalSession(checkpoint_root=str(checkpoint_root) if checkpoint_root is not None else None,
                           device=device or torch.device("cpu"))
    loop_config = {"method": method, "hyperparameters": dict(hyperparameters or {}), "run": run_spec.to_dict()}
    worker: WorkerRun = train_and_finish(loop_config, session, context_class)
    return LocalRun(final=worker.final, result=worker.result, reports=[dict(r) for r in session.reports])


def _request_run_spec(request: SweepRequest, target: str | None, output_dir: str | Path | None) -> RunSpec:
    """The RunSpec one trial of ``request`` on ``target`` gets (its CPUs as torch threads), writing to
    ``output_dir``."""
    if target is not None and target not in request.data.targets:
        raise ConfigError(f"target {target!r} is not one of the request's targets: {', '.join(request.data.targets)}")
    folder = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="raysel-local-"))
    return RunSpec.from_dict({**request.run_fields(), "target": target or request.data.targets[0],
                              "output_dir": str(folder),
                              "num_threads": max(1, int(round(request.resources.cpus_per_worker)))})
