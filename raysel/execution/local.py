"""Running one configuration in-process, without Ray Tune: the same path a trial takes, through a LocalSession."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from raysel.execution.trial import WorkerRun, train_and_finish
from raysel.methods.base import LocalSession, RunContext, RunSpec, Session
from raysel.methods.result import TrainResult


@dataclass
class LocalRun:
    """An in-process run: the trial's final metrics, the method's result (model included) and every report."""

    final: dict[str, Any]
    result: TrainResult | None
    reports: list[dict[str, Any]]


def run_local(method: str, hyperparameters: dict[str, Any], run_spec: RunSpec, *,
              device: torch.device | None = None, checkpoint_root: str | Path | None = None,
              context_class: Callable[[RunSpec, Session], RunContext] = RunContext) -> LocalRun:
    """Run one configuration of ``method`` in this process as a trial would (:func:`raysel.execution.trial
    .run_worker` through a :class:`LocalSession`): train, save the model, cache predictions, score held-out.

    For tests, benchmarks and debugging a configuration without a cluster; ``run_spec.output_dir`` receives the
    trial's files. ``context_class`` replaces :class:`RunContext` (benchmarks' oracle contexts).
    """
    run_spec = dataclasses.replace(run_spec, method=method)
    session = LocalSession(checkpoint_root=str(checkpoint_root) if checkpoint_root is not None else None,
                           device=device or torch.device("cpu"))
    loop_config = {"method": method, "hyperparameters": dict(hyperparameters), "run": run_spec.to_dict()}
    worker: WorkerRun = train_and_finish(loop_config, session, context_class)
    return LocalRun(final=worker.final, result=worker.result, reports=[dict(r) for r in session.reports])
