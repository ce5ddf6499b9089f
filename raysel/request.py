"""What one sweep is: the checked, frozen :class:`SweepRequest`, its ``sweep.json`` form, and the user's options.

Every way of starting a sweep (``python -m raysel.sweep``, :func:`raysel.orchestration.run_sweep` from Python, a study
file) fills a :class:`SweepOptions` and hands it to :func:`raysel.request_build.build_request`, the one function that
validates the options and fills every default, before Ray starts and before anything is written. Nothing changes a
request afterwards: trials, ``--resume``, ``raysel status`` and the report all read the same object, and
``sweeps/<SWEEP>/sweep.json`` is its serialisation (:func:`save_request`, :func:`load_request`).

Importing this module costs neither torch nor Ray, so commands that only read a sweep answer at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from raysel.acceleration_switches import AccelerationSwitches
from raysel.errors import UserError, unknown_name_error
from raysel.methods.reports import TARGET_CONFIDENCE
from raysel.search_space import SEARCH_ALGORITHMS, CheckedSpace
from raysel.store.schema import SCORE_PREFIX

__all__ = [
    "SETTINGS_FILE", "TUNE_FOLDER", "REQUEST_FORMAT", "SEARCH_ALGORITHMS", "SCHEDULERS", "EXECUTORS",
    "CONFIDENCE_OBJECTIVE", "DRIVER_CPU", "HYPERPARAMETERS_KEY",
    "SweepOptions", "Resources", "DataChoice", "SearchPlan", "SweepRequest",
    "save_request", "load_request", "read_request_file", "latest_sweep_id", "RUN_ONLY_FIELDS", "request_differences",
    "DEADLINE_FILE", "FINISHED_FILE", "write_deadline", "read_deadline", "clear_deadline", "mark_finished",
    "read_finished",
]

SETTINGS_FILE = "sweep.json"  # the request, under sweeps/<SWEEP>/
HYPERPARAMETERS_KEY = "hp"  # a trial's config entry holding its swept hyperparameters (the Tune param_space's key)
TUNE_FOLDER = "tune"  # the Tune experiment's folder under the sweep folder (read by raysel status)
DEADLINE_FILE = "deadline.json"  # under sweeps/<SWEEP>/ while a run must start no trial after a time (--max-minutes)
FINISHED_FILE = "finished.json"  # under sweeps/<SWEEP>/ once a run ended with every trial run, selected, compacted
REQUEST_FORMAT = 2  # format 1: the {"settings", "search", "space"} files of raysel before the request
SCHEDULERS = ("fifo", "asha")  # the --scheduler choices, declared once
EXECUTORS = ("auto", "train", "direct")  # the --executor choices, declared once
CONFIDENCE_OBJECTIVE = TARGET_CONFIDENCE  # reported by every method while it trains
DRIVER_CPU = 0.1  # the Tune trial's own share when it only drives a TorchTrainer (ray.md: 0 is rejected)


@dataclass(frozen=True)
class SweepOptions:
    """A sweep as the user asked for it (the command line's options, a study file's entry, keyword arguments), with
    the defaults every entry point shares. Field names are the command line's option names (``--set`` is
    ``overrides``, ``--selector`` is ``selectors``); :func:`raysel.request_build.build_request` checks them."""

    method: str
    space: str | Path | Mapping[str, Any] | None = None  # a YAML file or a mapping in its format; None: the method's
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, in order
    num_samples: int = 1
    search: str = "grid"
    scheduler: str = "fifo"
    objective: str = CONFIDENCE_OBJECTIVE
    startup_trials: int = 10  # Optuna TPE's random trials before it models the objective (Optuna's default)
    seed: int = 0
    data: str | None = None  # dataset family; None: the embedded one of the method's task
    data_root: str | Path | None = None  # None: $RAYSEL_DATA_ROOT or ~/.cache/raysel/data
    source: str | None = None  # None: the family's default source
    target: tuple[str, ...] | None = None  # None: the family's first development target
    model: str | None = None  # None: the small CPU model of the task
    image_size: tuple[int, int] | None = None
    selection_size: int = 500
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent: int | None = None  # None: as many as the local CPUs fit (local Ray); Tune decides on a cluster
    executor: str = "auto"
    max_failures: int = 1
    amp: str = AccelerationSwitches.amp
    channels_last: str = AccelerationSwitches.channels_last
    pin_memory: str = AccelerationSwitches.pin_memory
    persistent_workers: str = AccelerationSwitches.persistent_workers
    cudnn_benchmark: str = AccelerationSwitches.cudnn_benchmark
    loader_workers: int | None = AccelerationSwitches.loader_workers
    results: str | Path | None = None  # None: $RAYSEL_RESULTS, else ./results (raysel.conventions)
    name: str | None = None  # the sweep id; None: METHOD-YYYYmmdd-HHMMSS
    selectors: tuple[str, ...] | None = None  # None: the method's default selectors
    progress_interval: float = 30.0
    mlflow: str | None = None
    include_default: bool = False  # run the method's default configuration as the first candidate (SearchPlan)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "SweepOptions":
        """Options from a plain mapping (keyword arguments, a study file's entry); an unknown key is a ConfigError
        suggesting the near miss, and lists become tuples."""
        names = [field.name for field in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise unknown_name_error("sweep option", key, names, "valid options")
        return cls(**{key: _as_tuple(value) if key != "space" else value for key, value in values.items()})


def _as_tuple(value: Any) -> Any:
    """Lists (at any depth) as tuples: a frozen record holds no list."""
    return tuple(_as_tuple(item) for item in value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class Resources:
    """Per-trial resources: ``workers`` data-parallel workers with this many CPUs/GPUs each (fractions allowed)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    executor: str = "auto"  # auto | train | direct (EXECUTORS)

    @property
    def uses_train(self) -> bool:
        """Whether trials run their loop on Ray Train workers (else directly inside the Tune trial)."""
        return self.executor == "train" or (self.executor == "auto" and self.workers > 1)

    def trial_cpus(self) -> float:
        """CPUs one trial occupies: driver share plus workers (Train) or the worker itself (direct)."""
        if self.uses_train:
            return DRIVER_CPU + self.workers * self.cpus_per_worker
        return self.cpus_per_worker


@dataclass(frozen=True)
class DataChoice:
    """The data every trial trains on: dataset family, its absolute root, the source, the targets (each swept and
    selected separately), the network and the label-free selection subset's size."""

    family: str
    root: str
    source: str
    targets: tuple[str, ...]
    model: str | None = None  # None: the small CPU model of the task
    image_size: tuple[int, int] | None = None  # None: the dataset's native size
    selection_size: int = 500


@dataclass(frozen=True)
class SearchPlan:
    """How configurations are proposed and stopped: the search algorithm and its budget, the scheduler, and the
    label-free objective both read.

    ``include_default`` runs the method's *default configuration* (its defaults for every swept hyperparameter, the
    space's fixed values unchanged; :func:`raysel.request_build.default_point`) as the first trial of each target,
    through Tune's ``points_to_evaluate``, so that the guarded decision has it to fall back to. It is one trial per
    target on top of the budget: Ray 2.60 counts a point to evaluate as one of ``num_samples`` (and a point that sets
    the grid's hyperparameters as one trial, not one per grid point), so raysel asks Tune for one sample more
    (:attr:`tune_num_samples`) and the sweep runs (grid points x ``num_samples`` + 1) x targets trials under grid or
    random search, ``num_samples`` + 1 under Optuna (where TPE counts it among its ``startup_trials``). When the
    defaults are already a point of a space that samples nothing else (source_only's shipped grid), that
    configuration runs twice, with the same seed; the guard's default candidate is the first of them by trial id. Under
    ASHA the default trial can be stopped early like any other, and a stopped trial is no candidate.
    """

    algorithm: str = "grid"  # grid | random | optuna (SEARCH_ALGORITHMS)
    num_samples: int = 1  # samples per grid point (grid/random) or total trials (optuna)
    seed: int = 0  # seeds training, data order and the search
    startup_trials: int = 10
    max_concurrent: int | None = None  # as asked; None: as many as the local CPUs fit, or Tune decides on a cluster
    scheduler: str = "fifo"  # fifo | asha (SCHEDULERS)
    objective: str = CONFIDENCE_OBJECTIVE  # what Optuna maximises and ASHA compares
    report_score: str | None = None  # the trial-scored objective computed at every report (ASHA), else None
    asha_grace_epochs: int = 1
    include_default: bool = False  # the default configuration first, one extra trial per target (see above)

    @property
    def tune_num_samples(self) -> int:
        """Tune's ``num_samples``: ``num_samples``, plus the sample the default configuration's point takes."""
        return self.num_samples + 1 if self.include_default else self.num_samples

    @property
    def objective_metric(self) -> str:
        """The reported metric behind ``objective``: ``target_confidence`` or ``score_<trial-scored selector>``."""
        return self.objective if self.objective == CONFIDENCE_OBJECTIVE else f"{SCORE_PREFIX}{self.objective}"

    @property
    def scheduler_metric(self) -> str:
        """The metric ASHA reads: the trial-scored objective when every report carries it, else the confidence."""
        return self.objective_metric if self.report_score else CONFIDENCE_OBJECTIVE


@dataclass(frozen=True)
class SweepRequest:
    """One sweep, checked and complete: which method over which space, on which data, how to search, with which
    resources, where results go and how it is selected. Built only by :func:`raysel.request_build.build_request` (or
    read back from ``sweep.json``); never changed afterwards.

    Args:
        method: the registered method's name.
        sweep_id: the sweep's id (the folder under ``<results>/sweeps`` and every stored row's ``sweep_id``).
        results: the result store folder, absolute (trials run in other working directories).
        space: the checked search space: entries, the YAML file and the ``--set`` texts they came from.
        data: dataset family, absolute data root, source, targets, model, image size, selection subset size.
        search: algorithm, budget, seed, concurrency, scheduler and the label-free objective.
        resources: per-trial workers, CPUs, GPUs and executor.
        acceleration: the GPU switches every trial's run uses.
        selectors: label-free selectors recorded after the sweep, in decision order (the first decides).
        max_failures: retries of a failed trial (Tune) and of killed workers (Train).
        mlflow_uri: the MLflow tracking URI the sweep mirrors to, or None.
        progress_interval_s: seconds between progress lines.

    Example:
        >>> from raysel.request_build import build_request
        >>> request = build_request(method="source_only", data="digits", results="/tmp/raysel-doc", name="doc")
        >>> request.data.targets, request.selectors[0], request.sweep_dir.as_posix()
        (('photo_digits',), 'fmiou', '/tmp/raysel-doc/sweeps/doc')
        >>> SweepRequest.from_dict(request.to_dict()) == request
        True
    """

    method: str
    sweep_id: str
    results: str
    space: CheckedSpace
    data: DataChoice
    search: SearchPlan
    resources: Resources
    acceleration: AccelerationSwitches
    selectors: tuple[str, ...]
    max_failures: int = 1
    mlflow_uri: str | None = None
    progress_interval_s: float = 30.0

    @property
    def sweep_dir(self) -> Path:
        """``<results>/sweeps/<sweep_id>``: the request, Tune's experiment, shared stages and trial folders."""
        return Path(self.results) / "sweeps" / self.sweep_id

    def trial_dir(self, trial_id: str) -> Path:
        """A trial's own folder (model, predictions, progress)."""
        return self.sweep_dir / "trials" / trial_id

    def expected_trials(self) -> int:
        """How many trials the sweep runs: grid points (not under Optuna) x samples x targets, and one more per
        target for the default configuration (``include_default``)."""
        grid_points = self.space.num_grid_points() if self.search.algorithm != "optuna" else 1
        default_trials = 1 if self.search.include_default else 0
        return (grid_points * self.search.num_samples + default_trials) * len(self.data.targets)

    def run_fields(self) -> dict[str, Any]:
        """The :class:`raysel.methods.base.RunSpec` fields every trial shares (a trial adds its target and folder)."""
        return {"method": self.method, "dataset": self.data.family, "data_root": self.data.root,
                "source": self.data.source, "model": self.data.model, "image_size": self.data.image_size,
                "seed": self.search.seed, "selection_size": self.data.selection_size,
                "acceleration": self.acceleration.to_dict()}

    def command_arguments(self, results: str | None = None) -> list[str]:
        """The ``python -m raysel.sweep`` arguments that build this request again: its id, and its results folder
        (or ``results``, e.g. where a copy of the store lies)."""
        data, search, resources = self.data, self.search, self.resources
        words = [self.method, "--name", self.sweep_id, "--results", results or self.results]
        flags = {"--data": data.family, "--data-root": data.root, "--source": data.source, "--model": data.model,
                 "--seed": search.seed, "--selection-size": data.selection_size, "--search": search.algorithm,
                 "--scheduler": search.scheduler, "--num-samples": search.num_samples,
                 "--max-concurrent": search.max_concurrent, "--workers": resources.workers,
                 "--cpus-per-worker": resources.cpus_per_worker, "--gpus-per-worker": resources.gpus_per_worker,
                 "--executor": resources.executor, "--max-failures": self.max_failures, "--space": self.space.path,
                 "--objective": search.objective, "--startup-trials": search.startup_trials}
        words += [f"{item:g}" if isinstance(item, float) else str(item)
                  for flag, value in flags.items() if value is not None for item in (flag, value)]
        words += ["--target", *data.targets]
        if data.image_size:
            words += ["--image-size", *map(str, data.image_size)]
        for override in self.space.overrides:
            words += ["--set", override]
        for selector in self.selectors:
            words += ["--selector", selector]
        for name, value in self.acceleration.to_dict().items():
            if value not in ("auto", None):
                words += [f"--{name.replace('_', '-')}", str(value)]
        if search.include_default:
            words.append("--include-default")
        return words

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form ``sweep.json`` holds; :meth:`from_dict` reads it back to an equal request."""
        return {"format": REQUEST_FORMAT, "method": self.method, "sweep_id": self.sweep_id, "results": self.results,
                "space": {"path": self.space.path, "overrides": list(self.space.overrides),
                          "entries": self.space.to_dict()},
                "data": dataclasses.asdict(self.data), "search": dataclasses.asdict(self.search),
                "resources": dataclasses.asdict(self.resources), "acceleration": self.acceleration.to_dict(),
                "selectors": list(self.selectors), "max_failures": self.max_failures, "mlflow_uri": self.mlflow_uri,
                "progress_interval_s": self.progress_interval_s}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "SweepRequest":
        """The request :meth:`to_dict` wrote (or a format-1 settings file of an older raysel); KeyError, TypeError or
        ValueError when a part is missing or unknown, or a newer raysel wrote it."""
        if "settings" in payload and "format" not in payload:
            return _from_format_1(payload)
        if payload.get("format") != REQUEST_FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, this raysel reads format {REQUEST_FORMAT}")
        space, data = payload["space"], payload["data"]
        return cls(method=payload["method"], sweep_id=payload["sweep_id"], results=payload["results"],
                   space=CheckedSpace.from_dict(space["entries"], space["path"], space["overrides"]),
                   data=DataChoice(**{**data, "targets": tuple(data["targets"]),
                                      "image_size": _as_tuple(data["image_size"])}),
                   # a sweep.json written before include_default existed lacks it: SearchPlan's False
                   search=SearchPlan(**payload["search"]), resources=Resources(**payload["resources"]),
                   acceleration=AccelerationSwitches(**payload["acceleration"]),
                   selectors=tuple(payload["selectors"]), max_failures=payload["max_failures"],
                   mlflow_uri=payload["mlflow_uri"], progress_interval_s=payload["progress_interval_s"])


def _from_format_1(payload: Mapping[str, Any]) -> SweepRequest:
    """A sweep saved before the request existed (``{"settings", "search", "space"}``), as a request."""
    settings, search = payload["settings"], payload["search"]
    run = settings["run"]
    scheduler, objective = search.get("scheduler", "fifo"), search.get("objective", CONFIDENCE_OBJECTIVE)
    return SweepRequest(
        method=settings["method"], sweep_id=settings["sweep_id"], results=settings["results"],
        space=CheckedSpace.from_dict(payload.get("space") or {}, settings.get("space_path"),
                                     settings.get("overrides") or ()),
        data=DataChoice(family=run["dataset"], root=run.get("data_root"), source=run.get("source"),
                        targets=tuple(settings["targets"]), model=run.get("model"),
                        image_size=_as_tuple(run.get("image_size")), selection_size=run.get("selection_size", 500)),
        search=SearchPlan(algorithm=search.get("search", "grid"), num_samples=search.get("num_samples", 1),
                          seed=search.get("seed", 0), startup_trials=search.get("startup_trials", 10),
                          max_concurrent=search.get("max_concurrent"), scheduler=scheduler, objective=objective,
                          # format 1 computed it: a trial-scored objective under ASHA (merge_quality was refused)
                          report_score=objective if scheduler == "asha" and objective != CONFIDENCE_OBJECTIVE else None,
                          asha_grace_epochs=search.get("asha_grace_epochs", 1)),
        resources=Resources(**settings.get("resources", {})),
        acceleration=AccelerationSwitches(**(run.get("acceleration") or {})),
        selectors=tuple(settings.get("selectors") or ("fmiou",)), max_failures=settings.get("max_failures", 1))


def save_request(request: SweepRequest) -> Path:
    """Write ``sweep.json`` atomically (a killed sweep leaves the old file or the new one, never half of one)."""
    request.sweep_dir.mkdir(parents=True, exist_ok=True)
    path = request.sweep_dir / SETTINGS_FILE
    temporary = path.with_name(f".{SETTINGS_FILE}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(request.to_dict(), indent=2))
    os.replace(temporary, path)
    return path


def read_request_file(path: Path) -> SweepRequest:
    """The request in a ``sweep.json`` file; a UserError naming the file when it cannot be read."""
    try:
        return SweepRequest.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot read the sweep request {path}: {type(error).__name__}: {error}") from None


def load_request(results: str | Path, sweep_id: str) -> SweepRequest:
    """The request of sweep ``sweep_id`` under ``results``; a UserError naming the known sweeps when there is none."""
    sweeps = Path(results) / "sweeps"
    try:
        return read_request_file(sweeps / sweep_id / SETTINGS_FILE)
    except FileNotFoundError:
        known = sorted(path.parent.name for path in sweeps.glob(f"*/{SETTINGS_FILE}"))
        raise UserError(f"no sweep {sweep_id!r} under {sweeps}; sweeps there: {', '.join(known) or 'none'}") from None


def latest_sweep_id(results: str | Path, method: str | None = None) -> str | None:
    """The most recently started sweep under ``results`` (of ``method`` when given), or None when there is none."""
    root = Path(results) / "sweeps"
    pattern = f"{method}-*/{SETTINGS_FILE}" if method else f"*/{SETTINGS_FILE}"
    found = list(root.glob(pattern)) if root.is_dir() else []
    return max(found, key=lambda path: path.stat().st_mtime).parent.name if found else None


# --------------------------------------------------------------------------------------------------------------
# Comparing requests
# --------------------------------------------------------------------------------------------------------------

# Where and how one run reports, not what the sweep is: the store's folder (a copied store), the data root (another
# machine's), the progress interval, the MLflow mirror, and the file and --set texts a space came from (the space's
# entries, what the trials sweep, are compared).
RUN_ONLY_FIELDS = ("results", "data.root", "progress_interval_s", "mlflow_uri", "space.path", "space.overrides")


def request_differences(stored: SweepRequest, wanted: SweepRequest,
                        ignored: tuple[str, ...] = RUN_ONLY_FIELDS) -> list[str]:
    """The fields in which two requests of one sweep differ, field by field, as ``search.num_samples (stored 2, now
    3)``; a space entry as ``space.<name>``. Fields in ``ignored`` (dotted names) are not compared.

    Example:
        >>> from raysel.request_build import build_request
        >>> first = build_request(method="source_only", data="digits", results="/tmp/a", name="s")
        >>> again = build_request(method="source_only", data="digits", results="/tmp/b", name="s", num_samples=2,
        ...                       overrides=["iterations=5"])
        >>> request_differences(first, again)
        ["space.iterations (stored {'grid': [300, 600]}, now 5)", 'search.num_samples (stored 1, now 2)']
    """
    differences: list[str] = []
    _compare_fields("", stored, wanted, ignored, differences)
    return differences


def _compare_fields(prefix: str, stored: Any, wanted: Any, ignored: tuple[str, ...], out: list[str]) -> None:
    """Append ``prefix.field (stored A, now B)`` for each differing field of two records of one dataclass type."""
    for item in dataclasses.fields(stored):
        name = f"{prefix}{item.name}"
        old, new = getattr(stored, item.name), getattr(wanted, item.name)
        if name in ignored:
            continue
        if isinstance(old, CheckedSpace):
            _compare_space(name, old, new, ignored, out)
        elif dataclasses.is_dataclass(old) and type(old) is type(new):
            _compare_fields(f"{name}.", old, new, ignored, out)
        elif old != new:
            out.append(f"{name} (stored {_short(old)}, now {_short(new)})")


def _compare_space(name: str, stored: CheckedSpace, wanted: CheckedSpace, ignored: tuple[str, ...],
                   out: list[str]) -> None:
    """The space's entries by hyperparameter (``space.<name>``), then its provenance fields unless ignored."""
    old, new = stored.to_dict(), wanted.to_dict()
    for key in dict.fromkeys([*old, *new]):
        if old.get(key, _ABSENT) != new.get(key, _ABSENT):
            out.append(f"{name}.{key} (stored {_short(old.get(key, _ABSENT))}, now {_short(new.get(key, _ABSENT))})")
    for field_name in ("path", "overrides"):
        dotted = f"{name}.{field_name}"
        if dotted not in ignored and getattr(stored, field_name) != getattr(wanted, field_name):
            out.append(f"{dotted} (stored {_short(getattr(stored, field_name))}, now "
                       f"{_short(getattr(wanted, field_name))})")


class _Absent:
    """A space entry one of two requests does not have."""

    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


def _short(value: Any, limit: int = 60) -> str:
    """A value for a one-line message: its repr (strings without quotes), cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------------
# The sweep folder's markers: a deadline for new trials, and the end of a run
# --------------------------------------------------------------------------------------------------------------


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as JSON atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(temporary, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing or unreadable (a marker, never an error)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def write_deadline(sweep_dir: Path, at: float, why: str = "") -> Path:
    """Ask the sweep's Tune search to start no new trial after ``at`` (epoch seconds); running trials finish."""
    path = Path(sweep_dir) / DEADLINE_FILE
    _write_json(path, {"stop_new_trials_at": float(at), "why": why})
    return path


def read_deadline(path: Path | str) -> float | None:
    """The time in a deadline file (:func:`write_deadline`), or None when there is none."""
    value = (_read_json(Path(path)) or {}).get("stop_new_trials_at")
    return float(value) if isinstance(value, (int, float)) else None


def clear_deadline(sweep_dir: Path) -> None:
    """Remove the sweep's deadline: a later run starts trials until its own deadline, if any."""
    try:
        (Path(sweep_dir) / DEADLINE_FILE).unlink()
    except FileNotFoundError:
        pass


def mark_finished(sweep_dir: Path, details: Mapping[str, Any]) -> Path:
    """Record that a run of the sweep ended with every trial run (none left for a resume), selected and compacted."""
    path = Path(sweep_dir) / FINISHED_FILE
    _write_json(path, dict(details))
    return path


def read_finished(sweep_dir: Path) -> dict[str, Any] | None:
    """What :func:`mark_finished` recorded, or None when no run of the sweep has finished."""
    return _read_json(Path(sweep_dir) / FINISHED_FILE)
