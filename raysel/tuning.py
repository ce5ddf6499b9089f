"""Everything Ray Tune / Ray Train: sessions, the per-trial driver, resources, search algorithms, failures, progress.

Execution model (Ray 2.60, Train V2):

* Each Tune trial runs :func:`trial_driver`, a function trainable.
* With ``--workers N > 1`` (or ``--executor train``) the driver builds a ``TorchTrainer`` whose workers run the
  method's per-worker loop with DDP (gloo on CPU, NCCL on GPU); checkpoints and metrics go through Ray Train, and
  ``ray.train.FailureConfig`` restarts killed workers from the last checkpoint.
* With one worker (``--executor auto``, the default) the same per-worker loop runs directly inside the Tune trial,
  reporting through ``ray.tune.report``. Ray Train's worker-group start-up costs 10–30 s per run on these machines
  (``../shared/reference/ray.md``), which dominated small single-worker trials; running the loop in the trial is
  the supported Tune function-trainable pattern and keeps checkpoints, resume and resources.
* Every finished or failed trial writes its own row to the Parquet store from inside the trial, so a killed sweep
  driver never loses a finished trial; ``--resume`` restores the Tune experiment and skips trials whose row is
  already ``finished``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from raysel.errors import ConfigError, UserError
from raysel.methods.base import NonFiniteLossError, RunContext, RunSpec, config_from_dict
from raysel.registry import get_method

DRIVER_CPU = 0.1  # the Tune trial's own share when it only drives a TorchTrainer (ray.md: 0 is rejected)
ATTEMPTS_FILE = "attempts"
FINAL_FILE = "final.json"
# A method's returned model may carry this attribute (a dict) for what finish_run cannot know by itself:
#   "evaluation_targets": [target, ...]  held-out evaluation on each (multi-target methods such as hdrq):
#                                        heldout_<metric>_<target> per target, heldout_<metric> their harmonic mean;
#   "scores": {name: value}              label-free scores the trial computed itself, stored as score_<name>;
#   "metrics": {name: scalar}            further columns of the trial's row.
TRIAL_EXTRAS = "trial_extras"
# Set to 1 on the nodes (not the client) only for Ray's fake multi-node provider, whose GPU nodes have no CUDA:
# GPU-requesting trials then compute on CPU instead of failing (benchmarks/_fake_cluster.py sets it on the head).
FAKE_GPUS_ENV = "RAYSEL_FAKE_GPUS"
PER_TARGET_HELDOUT_PREFIXES = ("heldout_miou_", "heldout_accuracy_", "heldout_iou_")


# --------------------------------------------------------------------------------------------------------------
# Settings of one sweep (everything the command line decides)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Resources:
    """Per-trial resources: ``workers`` data-parallel workers with this many CPUs/GPUs each (fractions allowed)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    executor: str = "auto"  # auto | train | direct

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"--cpus-per-worker must be positive, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker must be 0 or positive, got {self.gpus_per_worker}")
        if self.executor not in ("auto", "train", "direct"):
            raise ConfigError(f"--executor must be auto, train or direct, got {self.executor!r}")
        if self.executor == "direct" and self.workers > 1:
            raise ConfigError("--executor direct runs one worker; use --executor train (or auto) with --workers > 1")

    @property
    def uses_train(self) -> bool:
        return self.executor == "train" or (self.executor == "auto" and self.workers > 1)

    def trial_cpus(self) -> float:
        """CPUs one trial occupies: driver share plus workers (Train) or the worker itself (direct)."""
        if self.uses_train:
            return DRIVER_CPU + self.workers * self.cpus_per_worker
        return self.cpus_per_worker


@dataclass
class SweepSettings:
    """A whole sweep: which method, which data, how to search, where results go."""

    method: str
    sweep_id: str
    results: str
    run: dict[str, Any]  # RunSpec fields shared by every trial (dataset, data_root, source, model, seed, ...)
    targets: list[str]
    resources: Resources = field(default_factory=Resources)
    max_failures: int = 1
    selectors: tuple[str, ...] = ("fmiou",)
    space_path: str | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def sweep_dir(self) -> Path:
        return Path(self.results) / "sweeps" / self.sweep_id

    def trial_dir(self, trial_id: str) -> Path:
        return self.sweep_dir / "trials" / trial_id


# --------------------------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------------------------


class TuneTrialSession:
    """The per-worker loop runs inside the Tune trial itself (one worker): report via ``ray.tune.report``."""

    world_rank = 0
    world_size = 1

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(_reportable(metrics), checkpoint=checkpoint)

    @contextlib.contextmanager
    def checkpoint(self) -> Iterator[str | None]:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            yield None
        else:
            with checkpoint.as_directory() as directory:
                yield directory


class TrainWorkerSession:
    """A Ray Train worker: rank and world size from Train's context, report via ``ray.train.report``."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = _cpu_if_fake_gpu(ray.train.torch.get_device())

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(_reportable(metrics), checkpoint=checkpoint)

    @contextlib.contextmanager
    def checkpoint(self) -> Iterator[str | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
        else:
            with checkpoint.as_directory() as directory:
                yield directory


def _reportable(metrics: dict[str, Any]) -> dict[str, Any]:
    """Keep scalar metrics only (Tune's result table and schedulers need numbers and strings)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


# --------------------------------------------------------------------------------------------------------------
# One training run: the per-worker function (the same in direct and Train mode)
# --------------------------------------------------------------------------------------------------------------


def run_worker(loop_config: dict[str, Any], session: Any) -> dict[str, Any]:
    """Train one configuration on this worker, then (rank 0) write predictions and held-out scores.

    Returns the final metrics (rank 0) or ``{}`` (other ranks). A NaN loss ends the run with
    ``{"status": "failed", "error": ...}`` instead of an exception, so Ray does not retry a deterministic failure.
    """
    method = get_method(loop_config["method"])
    config = config_from_dict(method.config_class, loop_config["hyperparameters"])
    spec = RunSpec.from_dict(loop_config["run"])
    ctx = RunContext(spec, session)
    output_dir = Path(spec.output_dir)
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        attempts = _read_int(output_dir / ATTEMPTS_FILE) + 1
        (output_dir / ATTEMPTS_FILE).write_text(str(attempts))
    train_started = time.perf_counter()
    try:
        model = method.train(config, ctx)
    except NonFiniteLossError as error:
        return {"status": "failed", "error": str(error)} if ctx.is_main else {}
    train_seconds = time.perf_counter() - train_started
    if not ctx.is_main:
        return {}
    final = finish_run(model, ctx)
    final["train_time_s"] = train_seconds
    final["retries"] = _read_int(output_dir / ATTEMPTS_FILE) - 1
    final["status"] = "finished"
    (output_dir / FINAL_FILE).write_text(json.dumps(final, default=_json_default))
    return final


def finish_run(model: torch.nn.Module, ctx: RunContext) -> dict[str, Any]:
    """Save the final model, cache predictions on the label-free selection subset, score on held-out labels."""
    from raysel.heldout import heldout_scores
    from raysel.selection.model_scores import run_trial_selection_scores
    from raysel.selection.predictions import cache_candidate_predictions

    extras = getattr(model, TRIAL_EXTRAS, None) or {}
    model = getattr(model, "module", model)
    model.eval()
    output_dir = Path(ctx.spec.output_dir)
    checkpoint_path = output_dir / "model.pt"
    torch.save(model.state_dict(), checkpoint_path)
    predictions_path = cache_candidate_predictions(model, ctx, output_dir / "predictions.npz")

    final: dict[str, Any] = {"checkpoint_path": str(checkpoint_path), "predictions_path": str(predictions_path)}
    if extras.get("evaluation_targets"):
        final.update(multi_target_heldout(model, ctx, list(extras["evaluation_targets"])))
    else:
        final.update(heldout_scores(model, ctx.family, ctx.data_root, ctx.target, ctx.device,
                                    image_size=ctx.spec.image_size))
    for key in ("scores", "metrics"):
        if extras.get(key):
            final[key] = dict(extras[key])
    final["scores"] = {**run_trial_selection_scores(model, ctx), **final.get("scores", {})}  # consistency, mixval
    return final


def multi_target_heldout(model: torch.nn.Module, ctx: RunContext, targets: list[str]) -> dict[str, Any]:
    """Held-out scores of one model on several targets: ``heldout_<metric>_<target>`` (and per-class IoU) per
    target, and ``heldout_<metric>`` = their harmonic mean (HDRQ's H, 2ab/(a+b) for two targets)."""
    from raysel.heldout import heldout_scores
    from raysel.metrics import harmonic_mean

    key = "heldout_accuracy" if ctx.task == "classification" else "heldout_miou"
    final: dict[str, Any] = {}
    for target in targets:
        scores = heldout_scores(model, ctx.family, ctx.data_root, target, ctx.device, image_size=ctx.spec.image_size)
        final[f"{key}_{target}"] = scores[key]
        if "heldout_iou" in scores:
            final[f"heldout_iou_{target}"] = scores["heldout_iou"]
    final[key] = harmonic_mean(final[f"{key}_{target}"] for target in targets)
    return final


def _train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point: every worker runs the method loop through a TrainWorkerSession."""
    return run_worker(loop_config, TrainWorkerSession())


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------------------------------------------
# The Tune trial driver
# --------------------------------------------------------------------------------------------------------------


def trial_driver(config: dict[str, Any], settings: SweepSettings) -> None:
    """Tune function trainable: run one configuration (direct or via TorchTrainer) and store its row."""
    from ray import tune

    from raysel.store import ResultStore

    trial_id = tune.get_context().get_trial_id()
    store = ResultStore(Path(settings.results))
    previous = store.read_trial(settings.sweep_id, trial_id)
    if previous is not None and previous.get("status") == "finished":
        tune.report({"status": "finished", "epoch": 1_000_000, "skipped_on_resume": True})
        return

    output_dir = settings.trial_dir(trial_id)
    run = dict(settings.run, target=config["target"], output_dir=str(output_dir))
    loop_config = {"method": settings.method, "hyperparameters": dict(config["hp"]), "run": run}
    started = time.time()
    try:
        if settings.resources.uses_train:
            final = _fit_with_train(loop_config, settings, trial_id)
        else:
            device = _direct_device(settings.resources)
            run["num_threads"] = max(1, int(round(settings.resources.cpus_per_worker)))
            final = run_worker(loop_config, TuneTrialSession(device))
    except Exception as error:  # recorded, then re-raised so Tune's FailureConfig can retry the trial
        _write_row(store, settings, trial_id, config, started, {"status": "failed", "error": _one_line(error),
                                                                  "retries": _read_int(output_dir / ATTEMPTS_FILE) - 1})
        raise
    _write_row(store, settings, trial_id, config, started, final)
    tune.report(_reportable({**final, "epoch": 1_000_000}))


def _fit_with_train(loop_config: dict[str, Any], settings: SweepSettings, trial_id: str) -> dict[str, Any]:
    """Run the loop on ``workers`` Ray Train workers; restarts from the last checkpoint on worker failure."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resources = settings.resources
    use_gpu = resources.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    loop_config["run"]["num_threads"] = max(1, int(round(resources.cpus_per_worker)))
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=process_group_backend(use_gpu)),
        scaling_config=ray.train.ScalingConfig(num_workers=resources.workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",  # deterministic: a resumed sweep finds this run's checkpoints again
            storage_path=str((settings.sweep_dir / "train").resolve()),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
        ),
    )
    result = trainer.fit()
    final = getattr(result, "return_value", None)
    if not final:
        final_path = settings.trial_dir(trial_id) / FINAL_FILE
        final = json.loads(final_path.read_text()) if final_path.exists() else None
    if not final:
        raise RuntimeError(f"Ray Train run train-{trial_id} finished without final metrics")
    return final


def process_group_backend(use_gpu: bool) -> str:
    """NCCL for GPU workers, gloo on CPU and on fake GPU nodes.

    Decided from the request, not from ``torch.cuda.is_available()`` here: this runs in the Tune trial's driver
    process, which holds no GPU on a real cluster (CUDA hidden), while its Train workers do.
    """
    return "nccl" if use_gpu and os.environ.get(FAKE_GPUS_ENV) != "1" else "gloo"


def _direct_device(resources: Resources) -> torch.device:
    """The trial's device: CUDA when it asked for a GPU (CPU on opted-in fake GPU nodes), else CPU."""
    return _cpu_if_fake_gpu(torch.device("cuda")) if resources.gpus_per_worker > 0 else torch.device("cpu")


def _cpu_if_fake_gpu(device: torch.device) -> torch.device:
    """A CUDA device this node cannot back is an error, except under RAYSEL_FAKE_GPUS=1 (Ray's fake multi-node
    provider advertises GPUs a CPU-only machine lacks; used to exercise autoscaling), where the trial uses CPU."""
    if device.type != "cuda" or torch.cuda.is_available():
        return device
    if os.environ.get(FAKE_GPUS_ENV) != "1":
        raise RuntimeError("this trial asked for a GPU but CUDA is not available on its node")
    print(f"raysel: {FAKE_GPUS_ENV}=1 and no CUDA on this node: the GPU this trial holds is fake, computing on CPU",
          file=sys.stderr, flush=True)
    return torch.device("cpu")


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().replace("\n", " ")
    return text[:2000]


def _write_row(store: Any, settings: SweepSettings, trial_id: str, config: dict[str, Any], started: float,
               final: dict[str, Any]) -> None:
    """Write this trial's row (atomic; a rewrite of the same trial replaces it)."""
    import ray

    from raysel import __version__

    method = get_method(settings.method)
    run = settings.run
    row: dict[str, Any] = {
        "sweep_id": settings.sweep_id,
        "trial_id": trial_id,
        "method": settings.method,
        "task": method.tasks[0] if len(method.tasks) == 1 else _task_of(run["dataset"]),
        "dataset": run["dataset"],
        "source": run.get("source"),
        "target": config["target"],
        "model": run.get("model"),
        "seed": run.get("seed"),
        "status": final.get("status", "failed"),
        "error": final.get("error"),
        "retries": int(final.get("retries", 0) or 0),
        "wall_time_s": time.time() - started,
        "started_at": started,
        "finished_at": time.time(),
        "checkpoint_path": final.get("checkpoint_path"),
        "predictions_path": final.get("predictions_path"),
        "raysel_version": __version__,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
    }
    for key in ("heldout_miou", "heldout_accuracy", "heldout_iou", "train_time_s"):
        if key in final:
            row[key] = final[key]
    row.update({key: value for key, value in final.items() if key.startswith(PER_TARGET_HELDOUT_PREFIXES)})
    row["scores"], row["metrics"] = final.get("scores"), final.get("metrics")  # from TRIAL_EXTRAS (finish_run)
    # Every hyperparameter, swept or default, becomes its own typed column.
    row["hyperparameters"] = dataclasses.asdict(config_from_dict(method.config_class, dict(config["hp"])))
    store.write_trial(row, hyperparameter_types=_hyperparameter_types(method.config_class))


def _task_of(dataset: str) -> str:
    from raysel.data import get_family

    return get_family(dataset).task


def _hyperparameter_types(config_class: type) -> dict[str, type]:
    import typing

    hints = typing.get_type_hints(config_class)
    return {f.name: hints.get(f.name, float) for f in dataclasses.fields(config_class)}


# --------------------------------------------------------------------------------------------------------------
# Connecting to Ray
# --------------------------------------------------------------------------------------------------------------


def connect(address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            object_store_mb: int = 1024) -> bool:
    """Join a running cluster (``--address`` or ``RAY_ADDRESS``, as set by ``ray job submit``) or start a local one.

    Returns True when this call started a local instance (so the caller shuts it down).
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # raysel prints its own progress; keep Tune's tables quiet
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise UserError(f"could not reach Ray at --address {address}: {_one_line(error)}") from None
        return False
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=True, log_to_driver=False,
             configure_logging=False, object_store_memory=object_store_mb * 1024 * 1024)
    return True


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast with one clear line when nothing listens at a ``host:port`` GCS address (ray.init would hang)."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address must look like HOST:PORT (the Ray head's GCS address), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise UserError(f"no Ray reachable at --address {address}: {error.strerror or error}; start the cluster "
                        f"(`ray start --head`) or fix the address") from None


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


# --------------------------------------------------------------------------------------------------------------
# Building and running the Tuner
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SearchSettings:
    """How configurations are proposed and stopped."""

    search: str = "grid"  # grid | random | optuna
    scheduler: str = "fifo"  # fifo | asha
    num_samples: int = 1
    max_concurrent: int | None = None
    seed: int = 0
    asha_metric: str = "target_confidence"
    asha_grace_epochs: int = 1


def build_tuner(settings: SweepSettings, search: SearchSettings, param_space: dict[str, Any], resume: bool,
                callbacks: list[Any]) -> Any:
    """A ``tune.Tuner`` (or a restored one) for this sweep."""
    from ray import tune

    trainable = tune.with_parameters(trial_driver, settings=settings)
    resources = settings.resources
    if resources.uses_train:
        trainable = tune.with_resources(trainable, {"cpu": DRIVER_CPU})
    else:
        request = {"cpu": resources.cpus_per_worker}
        if resources.gpus_per_worker:
            request["gpu"] = resources.gpus_per_worker
        trainable = tune.with_resources(trainable, request)
    tune_dir = settings.sweep_dir
    if resume:
        path = str((tune_dir / "tune").resolve())
        if not tune.Tuner.can_restore(path):
            raise UserError(f"--resume: sweep {settings.sweep_id!r} has no restorable Tune state at {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)

    search_alg, scheduler = _search_and_scheduler(search)
    tune_config = tune.TuneConfig(
        num_samples=search.num_samples,
        max_concurrent_trials=None,  # the search algorithm limits concurrency (see _search_and_scheduler)
        search_alg=search_alg,
        scheduler=scheduler,
        trial_dirname_creator=lambda trial: trial.trial_id,
    )
    run_config = tune.RunConfig(
        name="tune",
        storage_path=str(tune_dir.resolve()),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        verbose=0,
        callbacks=callbacks,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _search_and_scheduler(search: SearchSettings) -> tuple[Any, Any]:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    search_alg = None
    if search.search == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        # TPE needs an objective: the label-free confidence each method reports (never held-out labels).
        search_alg = OptunaSearch(metric=search.asha_metric, mode="max", sampler=TPESampler(seed=search.seed))
        if search.max_concurrent:
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=search.max_concurrent)
    elif search.search in ("grid", "random"):
        from ray.tune.search import BasicVariantGenerator

        # Seeded, so --seed fixes the sampled configurations (Tune's default generator draws unseeded).
        search_alg = BasicVariantGenerator(max_concurrent=search.max_concurrent or 0, random_state=search.seed)
    else:
        raise ConfigError(f"--search must be grid, random or optuna, got {search.search!r}")
    if search.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", metric=search.asha_metric, mode="max",
                                  grace_period=search.asha_grace_epochs)
    elif search.scheduler == "fifo":
        scheduler = FIFOScheduler()
    else:
        raise ConfigError(f"--scheduler must be fifo or asha, got {search.scheduler!r}")
    return search_alg, scheduler


class ProgressPrinter:
    """A Tune callback printing one line per finished trial and a status line at most every ``interval_s``."""

    def __init__(self, total: int | None, interval_s: float = 30.0) -> None:
        from ray.tune import Callback

        self.total = total
        self.interval_s = interval_s
        self.started = time.time()
        self.last_status = 0.0
        self.best: tuple[float, str] | None = None
        printer = self

        class _Callback(Callback):
            def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
                now = time.time()
                if now - printer.last_status >= printer.interval_s:
                    printer.last_status = now
                    printer.status_line(trials)

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                printer.trial_line(trial, trials, "finished")

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                printer.trial_line(trial, trials, "errored")

        self.callback = _Callback()

    def _counts(self, trials: list, just_ended: Any = None) -> str:
        # Tune calls the completion hooks before it updates the trial's status: count that trial as done.
        states = ["TERMINATED" if t is just_ended else t.status for t in trials]
        done = sum(s in ("TERMINATED", "ERROR") for s in states)
        running = states.count("RUNNING")
        pending = states.count("PENDING")
        total = self.total if self.total else len(states)
        return f"{done}/{total} done, {running} running, {pending} pending"

    def status_line(self, trials: list) -> None:
        elapsed = time.time() - self.started
        best = f", best held-out mIoU so far {100 * self.best[0]:.1f} ({self.best[1]}; oracle, not used to select)" if self.best else ""
        print(f"[{elapsed:6.0f}s] trials {self._counts(trials)}{best}", flush=True)

    def trial_line(self, trial: Any, trials: list, outcome: str) -> None:
        result = trial.last_result or {}
        score = result.get("heldout_miou", result.get("heldout_accuracy"))
        if isinstance(score, (int, float)) and math.isfinite(score) and (self.best is None or score > self.best[0]):
            self.best = (float(score), trial.trial_id)
        status = result.get("status", outcome)
        detail = f"held-out {100 * score:.1f}" if isinstance(score, (int, float)) and math.isfinite(score) else result.get("error", "")
        elapsed = time.time() - self.started
        # sys.stdout is looked up at print time: Tune pickles callbacks, and a stream object cannot be pickled.
        print(f"[{elapsed:6.0f}s] trial {trial.trial_id} {status}: {detail}  ({self._counts(trials, trial)})",
              flush=True)


__all__ = [
    "Resources", "SweepSettings", "SearchSettings", "TuneTrialSession", "TrainWorkerSession", "run_worker",
    "finish_run", "trial_driver", "connect", "build_tuner", "ProgressPrinter", "cluster_cpus",
]


# --------------------------------------------------------------------------------------------------------------
# A whole sweep: validate, connect, tune, select, summarise
# --------------------------------------------------------------------------------------------------------------

SETTINGS_FILE = "sweep.json"


@dataclass
class SweepOutcome:
    """What a finished sweep produced: the store location, the trials table and the selection decisions."""

    sweep_id: str
    results: str
    trials: Any  # pandas.DataFrame
    decisions: list[dict[str, Any]]


def save_settings(settings: SweepSettings, search: SearchSettings, space_entries: dict[str, Any]) -> None:
    """Persist the sweep's settings so ``--resume`` continues exactly the same sweep."""
    settings.sweep_dir.mkdir(parents=True, exist_ok=True)
    payload = {"settings": dataclasses.asdict(settings), "search": dataclasses.asdict(search), "space": space_entries}
    temporary = settings.sweep_dir / f".{SETTINGS_FILE}.tmp"
    temporary.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(temporary, settings.sweep_dir / SETTINGS_FILE)


def load_settings(results: str, sweep_id: str) -> tuple[SweepSettings, SearchSettings, dict[str, Any]]:
    """Read back a sweep's settings for ``--resume``; a missing sweep is a UserError naming where it looked."""
    path = Path(results) / "sweeps" / sweep_id / SETTINGS_FILE
    if not path.exists():
        raise UserError(f"--resume: no previous sweep named {sweep_id!r} under {Path(results) / 'sweeps'}")
    payload = json.loads(path.read_text())
    raw = payload["settings"]
    raw["resources"] = Resources(**raw["resources"])
    raw["selectors"] = tuple(raw["selectors"])
    return SweepSettings(**raw), SearchSettings(**payload["search"]), payload["space"]


def latest_sweep_id(results: str, method: str) -> str | None:
    """The most recently started sweep of ``method`` under ``results`` (used by ``--resume`` without ``--name``)."""
    root = Path(results) / "sweeps"
    candidates = [p for p in root.glob(f"{method}-*") if (p / SETTINGS_FILE).exists()] if root.exists() else []
    return max(candidates, key=lambda p: p.stat().st_mtime).name if candidates else None


def run_sweep(settings: SweepSettings, search: SearchSettings, space: Any, *, resume: bool, address: str | None,
              progress_interval_s: float = 30.0, stream: Any = None) -> SweepOutcome:
    """Run (or resume) a sweep end to end and return its trials and selection decisions."""
    from raysel import data as data_module
    from raysel.selection.decision import select_sweep
    from raysel.store import ResultStore

    stream = stream or sys.stdout
    # Trials run in their own working directory (Tune's trial dir): every path they use must be absolute.
    settings.results = str(Path(settings.results).expanduser().resolve())
    store = ResultStore(Path(settings.results))
    store.check_writable()
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
        total = _expected_trials(space, search, len(settings.targets))
        printer = ProgressPrinter(total, interval_s=progress_interval_s)
        print(f"sweep {settings.sweep_id}: method {settings.method}, {total or '?'} trials, "
              f"{search.search} search, {search.scheduler} scheduler, "
              f"{f'up to {search.max_concurrent} at once' if search.max_concurrent else 'concurrency set by Ray'}, "
              f"{settings.resources.workers} worker(s) x {settings.resources.cpus_per_worker} CPU"
              f"{f' + {settings.resources.gpus_per_worker} GPU' if settings.resources.gpus_per_worker else ''} per trial",
              file=stream, flush=True)
        tuner = build_tuner(settings, search, param_space, resume, [printer.callback])
        tuner.fit()
    finally:
        if started_here:
            import ray

            ray.shutdown()

    decisions = select_sweep(store, settings.sweep_id, settings.method, selectors=settings.selectors, stream=stream)
    trials = store.load_sweep(settings.sweep_id)
    return SweepOutcome(settings.sweep_id, settings.results, trials, decisions)


def prepare_shared_stages(settings: SweepSettings, space: Any, *, local: bool, stream: Any) -> None:
    """Build the method's hyperparameter-independent stages once per target, as one Ray task, before any trial.

    Without this, the first trials would build them on one CPU each while the rest wait on the stage lock. On a
    local Ray the task takes every CPU; on a cluster it asks for one trial's resources.
    """
    import ray

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
        ray.get(task.remote(settings.method, fixed, dict(settings.run, target=target), cpus, gpus > 0))
        print(f"  ready in {time.perf_counter() - started:.0f} s", file=stream, flush=True)


def _prepare_shared_task(method_name: str, fixed: dict[str, Any], run: dict[str, Any], threads: int,
                         use_gpu: bool) -> None:
    """Ray task body: run ``Method.prepare_shared`` in a LocalSession with ``threads`` torch threads."""
    import tempfile as _tempfile

    from raysel.methods.base import LocalSession

    method = get_method(method_name)
    config = config_from_dict(method.config_class, fixed)
    with _tempfile.TemporaryDirectory(prefix="raysel-prepare-") as scratch:
        spec = RunSpec.from_dict({**run, "output_dir": scratch, "num_threads": threads})
        device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
        method.prepare_shared(config, RunContext(spec, LocalSession(checkpoint_root=scratch, device=device)))


def _target_space(targets: list[str], search: str) -> Any:
    from ray import tune

    if len(targets) == 1:
        return targets[0]
    if search == "optuna":
        raise ConfigError("--search optuna tunes one target at a time; pass a single --target")
    return tune.grid_search(list(targets))


def _expected_trials(space: Any, search: SearchSettings, num_targets: int) -> int | None:
    grid_points = space.num_grid_points() if search.search != "optuna" else 1
    return grid_points * search.num_samples * num_targets
