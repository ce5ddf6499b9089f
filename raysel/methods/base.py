"""What every method's train loop receives: hyperparameter parsing, the run context, sessions, shared-stage cache.

A method never talks to Ray directly. It gets a :class:`RunContext` whose :class:`Session` is either a Ray Train
worker, a Ray Tune trial (single-worker runs skip Train's worker-group start-up), or :class:`LocalSession` for plain
in-process runs (tests, benchmarks). The same loop therefore runs everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from raysel import data as data_module
from raysel.errors import ConfigError
from raysel.models import build_model, default_model_name
from raysel.methods.acceleration import Acceleration, DeviceAcceleration
from raysel.methods.reports import EpochReport
from raysel.progress import PROGRESS_FILE

__all__ = [
    "CHECKPOINT_FILE", "require", "RunSpec", "Session", "LocalSession", "StopRun", "NonFiniteLossError", "RunContext",
]

CHECKPOINT_FILE = "state.pt"


# --------------------------------------------------------------------------------------------------------------
# Hyperparameters: plain dataclasses, built from dicts (YAML, Tune configs, --set overrides)
# --------------------------------------------------------------------------------------------------------------


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds; used by the hyperparameter dataclasses' validate()."""
    if not condition:
        raise ConfigError(message)


# --------------------------------------------------------------------------------------------------------------
# What a run trains on, apart from the method's hyperparameters
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """Data, model, budget and storage for one training run (one trial). Hyperparameters live elsewhere."""

    method: str
    dataset: str = "street_scenes"
    data_root: str | None = None
    source: str | None = None
    target: str | None = None
    model: str | None = None
    image_size: tuple[int, int] | None = None
    seed: int = 0
    output_dir: str = "."
    cache_dir: str | None = None
    selection_size: int = 500
    selection_seed: int = 0
    keep_probabilities: bool = True
    num_threads: int | None = None
    acceleration: dict[str, Any] = field(default_factory=dict)  # raysel.methods.acceleration.Acceleration fields

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def stage_cache_dir(self) -> Path:
        """Where shared stages are cached: ``cache_dir``, else ``_raysel_cache`` under the data root."""
        data_root = Path(self.data_root) if self.data_root else data_module.default_data_root()
        return Path(self.cache_dir) if self.cache_dir else data_root / "_raysel_cache"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunSpec":
        values = dict(values)
        if values.get("image_size") is not None:
            values["image_size"] = tuple(values["image_size"])
        return cls(**values)


# --------------------------------------------------------------------------------------------------------------
# Sessions: how a train loop reports metrics and checkpoints
# --------------------------------------------------------------------------------------------------------------


class Session(Protocol):
    """Where metrics and checkpoints go: Ray Train, Ray Tune, or nowhere but memory (LocalSession)."""

    world_rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def checkpoint(self) -> contextlib.AbstractContextManager[str | None]: ...


@dataclass
class LocalSession:
    """In-process session for tests, benchmarks and plain loops: keeps reports and the last checkpoint on disk."""

    checkpoint_root: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    world_rank: int = 0
    world_size: int = 1
    reports: list[dict[str, Any]] = field(default_factory=list)
    stop_after_reports: int | None = None
    _last_checkpoint: str | None = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            root = Path(self.checkpoint_root or tempfile.mkdtemp(prefix="raysel-ckpt-"))
            self.checkpoint_root = str(root)
            target = root / f"checkpoint_{len(self.reports):06d}"
            shutil.copytree(checkpoint_dir, target)
            self._last_checkpoint = str(target)
        if self.stop_after_reports is not None and len(self.reports) >= self.stop_after_reports:
            raise StopRun(f"stopped after {len(self.reports)} reports")

    @contextlib.contextmanager
    def checkpoint(self) -> Iterator[str | None]:
        yield self._last_checkpoint


class StopRun(Exception):
    """Raised by LocalSession to simulate a run stopped part-way (used to test restore-from-checkpoint)."""


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN/inf: the trial stops with this reason; earlier checkpoints are kept."""


# --------------------------------------------------------------------------------------------------------------
# The run context handed to Method.train
# --------------------------------------------------------------------------------------------------------------


class RunContext:
    """Everything a per-worker train loop needs: data, models, device, rank, reporting, restoring, shared stages."""

    # Label-free scores (by selector name) of the model a report passes, set by the execution layer (e.g. an ASHA
    # objective); a class default so that test contexts which skip __init__ still report.
    report_scores: Callable[[nn.Module], dict[str, float]] | None = None

    def __init__(self, spec: RunSpec, session: Session) -> None:
        self.spec = spec
        self.session = session
        self.family = data_module.get_family(spec.dataset)
        self.data_root = Path(spec.data_root) if spec.data_root else data_module.default_data_root()
        self.source = spec.source or self.family.default_source
        self.target = spec.target or self.family.default_targets[0]
        for domain in (self.source, self.target):
            if domain not in self.family.domains:
                raise ConfigError(
                    f"unknown domain {domain!r} for dataset {self.family.name!r}; valid: {', '.join(self.family.domains)}"
                )
        self.task = self.family.task
        self.num_classes = self.family.num_classes
        self.output_dir = Path(spec.output_dir)
        self.cache_dir = spec.stage_cache_dir()
        if spec.num_threads:
            torch.set_num_threads(spec.num_threads)
        self.acceleration.apply_backend_settings()

    # -- distributed facts --------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.session.world_rank

    @property
    def world_size(self) -> int:
        return self.session.world_size

    @property
    def is_main(self) -> bool:
        return self.session.world_rank == 0

    @property
    def progress_file(self) -> Path:
        """Where this run's progress counters keep their latest line (read by the sweep driver and `raysel status`)."""
        return self.output_dir / PROGRESS_FILE

    @property
    def device(self) -> torch.device:
        return self.session.device

    @property
    def acceleration(self) -> DeviceAcceleration:
        """The spec's GPU switches resolved for this device (all off on CPU), made once per context."""
        if getattr(self, "_acceleration", None) is None:
            self._acceleration = Acceleration.from_dict(self.spec.acceleration).resolve(self.device)
        return self._acceleration

    def barrier(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average a tensor over workers (identity for one worker)."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            tensor = tensor.clone()
            torch.distributed.all_reduce(tensor)
            tensor /= self.world_size
        return tensor

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over workers (identity for one worker)."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            tensor = tensor.clone()
            torch.distributed.all_reduce(tensor)
        return tensor

    def any_rank_not_finite(self, value: float | None) -> bool:
        """Whether any worker's ``value`` is NaN/inf (None counts as finite), decided together: one rank stopping
        alone would leave the others blocked in the next collective (every rank must call this)."""
        locally_finite = value is None or math.isfinite(value)
        return bool(self.all_reduce_sum(torch.tensor(0.0 if locally_finite else 1.0)).item() > 0.0)

    def all_gather_objects(self, value: Any) -> list[Any]:
        """Gather one picklable object from every worker (a one-element list for one worker)."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, value)
            return gathered
        return [value]

    # -- data ---------------------------------------------------------------------------------------------------
    def source_dataset(self, split: str = "train") -> Dataset:
        """Labelled source images."""
        return self.family.load(self.data_root, self.source, split, with_labels=True, image_size=self.spec.image_size)

    def target_dataset(self) -> Dataset:
        """Unlabelled target training images: the only target data a method may read."""
        return self.family.load(self.data_root, self.target, "train", with_labels=False, image_size=self.spec.image_size)

    def loader(self, dataset: Dataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
               seed_offset: int = 0) -> DataLoader:
        """A DataLoader sharded across workers (DistributedSampler) with a deterministic shuffle seed."""
        sampler = DistributedSampler(
            dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle,
            seed=self.spec.seed + seed_offset, drop_last=drop_last,
        )
        per_worker = max(1, batch_size // self.world_size)
        return DataLoader(dataset, batch_size=per_worker, sampler=sampler, drop_last=drop_last,
                          **self.acceleration.loader_options())

    # -- models -------------------------------------------------------------------------------------------------
    def build_model(self, pretrained: bool = True) -> nn.Module:
        name = self.spec.model or default_model_name(self.task)
        model = build_model(name, self.task, self.num_classes, pretrained=pretrained).to(self.device)
        return self.acceleration.prepare_model(model)

    def distributed(self, model: nn.Module) -> nn.Module:
        """Wrap in DistributedDataParallel when running on several workers; unchanged for one."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return model

    # -- reporting and checkpoints -------------------------------------------------------------------------------
    def report(self, report: EpochReport, checkpoint_state: dict[str, Any] | None = None,
               model: nn.Module | None = None) -> None:
        """Report from every worker; the checkpoint (if given) is written by rank 0 only.

        Every rank must call this at the same steps (Ray Train requirement). A non-finite ``loss`` raises
        NonFiniteLossError after the report, so the trial stops with that reason and earlier checkpoints survive.
        ``model`` is the model the run would ship if it stopped here: rank 0 adds ``report_scores(model)``.
        """
        if model is not None and self.report_scores is not None and self.is_main:
            report = report.with_scores(self.report_scores(model))
        finite = not self.any_rank_not_finite(report.loss)
        metrics = report.to_metrics()
        if checkpoint_state is not None and self.is_main and finite:
            with tempfile.TemporaryDirectory(prefix="raysel-ckpt-") as directory:
                torch.save(checkpoint_state, Path(directory) / CHECKPOINT_FILE)
                self.session.report(metrics, directory)
        else:
            self.session.report(metrics, None)
        if not finite:
            raise NonFiniteLossError(f"training loss became {report.loss} at {report.step_text()}; stopping this trial")

    def restore(self) -> dict[str, Any] | None:
        """The state of the last reported checkpoint of this run (after a restart), or None on a fresh start."""
        with self.session.checkpoint() as directory:
            if directory is None:
                return None
            path = Path(directory) / CHECKPOINT_FILE
            return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None

    # -- shared stages -------------------------------------------------------------------------------------------
    def stage_key(self, name: str, key: dict[str, Any], per_target: bool = True) -> dict[str, Any]:
        """Everything a cached stage is keyed by: ``key`` plus the data and model identity (target if per-target)."""
        full_key = {"stage": name, "dataset": self.spec.dataset, "source": self.source,
                    "target": self.target if per_target else None,
                    "model": self.spec.model, "image_size": self.spec.image_size, **key}
        if self.acceleration.amp != "off":  # mixed precision trains a different stage; fp32 keys stay as they were
            full_key["amp"] = self.acceleration.amp
        return full_key

    def stage_directory(self, name: str, key: dict[str, Any], per_target: bool = True) -> Path:
        """The cache folder of a stage: ``<cache_dir>/<name>/<hash of its full key>``."""
        full_key = self.stage_key(name, key, per_target)
        digest = hashlib.sha256(json.dumps(full_key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.cache_dir / name / digest

    def cached_stage(self, name: str, key: dict[str, Any], build: Callable[[], dict[str, Any]],
                     per_target: bool = True) -> dict[str, Any]:
        """Compute a stage that does not depend on swept hyperparameters once, and reuse it across trials.

        The cache entry is keyed by a hash of ``key`` plus the data and model identity (the target domain too,
        unless ``per_target=False``: a stage trained on source data only, such as the source-only model, is then
        shared by every target of the same source). Rank 0 holds a file lock
        while it checks and (if missing) saves, so concurrent trials build a stage once; under several workers
        every rank takes part in ``build`` (it may train with DDP) and rank 0 writes the result atomically.
        """
        full_key = self.stage_key(name, key, per_target)
        directory = self.stage_directory(name, key, per_target)
        path = directory / CHECKPOINT_FILE
        lock_handle = None
        if self.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            lock_handle = open(directory / ".lock", "w")
            fcntl.flock(lock_handle, fcntl.LOCK_EX)
        try:
            exists = self.all_gather_objects(path.exists())[0]
            if not exists:
                state = build()
                if self.is_main:
                    temporary = directory / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
                    torch.save(state, temporary)
                    os.replace(temporary, path)
                    (directory / "key.json").write_text(json.dumps(full_key, indent=2, sort_keys=True, default=str))
            self.barrier()
            return torch.load(path, map_location="cpu", weights_only=False)
        finally:
            if lock_handle is not None:
                fcntl.flock(lock_handle, fcntl.LOCK_UN)
                lock_handle.close()

