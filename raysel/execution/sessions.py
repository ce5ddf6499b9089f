"""Sessions a method's loop reports through under Ray: inside a Tune trial (one worker) or on a Ray Train worker."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import ray.train
import ray.train.torch
import torch
from ray import tune

from raysel.execution.devices import cpu_if_fake_gpu


class TuneTrialSession:
    """The per-worker loop runs inside the Tune trial itself (one worker): report via ``ray.tune.report``."""

    world_rank = 0
    world_size = 1

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Report scalar metrics (and a checkpoint directory) to Tune."""
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(reportable(metrics), checkpoint=checkpoint)

    @contextlib.contextmanager
    def checkpoint(self) -> Iterator[str | None]:
        """The directory of the trial's last checkpoint (after a restore), or None."""
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            yield None
        else:
            with checkpoint.as_directory() as directory:
                yield directory


class TrainWorkerSession:
    """A Ray Train worker: rank and world size from Train's context, report via ``ray.train.report``."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = cpu_if_fake_gpu(ray.train.torch.get_device())

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Report scalar metrics (and a checkpoint directory) to Ray Train."""
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(reportable(metrics), checkpoint=checkpoint)

    @contextlib.contextmanager
    def checkpoint(self) -> Iterator[str | None]:
        """The directory of the run's last checkpoint (after a worker restart), or None."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
        else:
            with checkpoint.as_directory() as directory:
                yield directory


def reportable(metrics: dict[str, Any]) -> dict[str, Any]:
    """Keep scalar metrics only (Tune's result table and schedulers need numbers and strings)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
