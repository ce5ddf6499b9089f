"""The settings of one sweep (everything the command line decides), their validation, and their save/load for --resume."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysel.errors import ConfigError, UserError
from raysel.selection.model_scores import TRIAL_SCORE_NAMES
from raysel.selection.selectors import SELECTORS, TRIAL_SCORE_SELECTORS
from raysel.store_schema import SCORE_PREFIX

DRIVER_CPU = 0.1  # the Tune trial's own share when it only drives a TorchTrainer (ray.md: 0 is rejected)
SETTINGS_FILE = "sweep.json"
SEARCH_ALGORITHMS = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")
CONFIDENCE_OBJECTIVE = "target_confidence"  # reported by every method while it trains


@dataclass
class Resources:
    """Per-trial resources: ``workers`` data-parallel workers with this many CPUs/GPUs each (fractions allowed)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    executor: str = "auto"  # auto | train | direct

    def validate(self) -> None:
        """Raise ConfigError naming the command-line option that is out of range."""
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
        """Whether trials run their loop on Ray Train workers (else directly inside the Tune trial)."""
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
    objective: str = CONFIDENCE_OBJECTIVE  # what Optuna maximises: the confidence or a trial-scored selector
    startup_trials: int = 10  # Optuna TPE's random trials before it models the objective (Optuna's default)

    @property
    def objective_metric(self) -> str:
        """The reported metric behind ``objective``: ``target_confidence`` or ``score_<trial-scored selector>``."""
        return self.objective if self.objective == CONFIDENCE_OBJECTIVE else f"{SCORE_PREFIX}{self.objective}"

    @property
    def report_score(self) -> str | None:
        """The trial-scored selector every report must carry (ASHA compares trials on it at its rungs), or None."""
        return self.objective if self.scheduler == "asha" and self.objective in TRIAL_SCORE_NAMES else None

    @property
    def scheduler_metric(self) -> str:
        """The metric ASHA reads: the trial-scored objective when every report carries it, else ``asha_metric``."""
        return self.objective_metric if self.report_score else self.asha_metric

    def validate(self) -> None:
        """Raise ConfigError naming ``--search``, ``--scheduler`` or ``--objective`` when raysel cannot use it."""
        if self.search not in SEARCH_ALGORITHMS:
            raise ConfigError(f"--search must be grid, random or optuna, got {self.search!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler must be fifo or asha, got {self.scheduler!r}")
        if self.startup_trials < 1:
            raise ConfigError(f"--startup-trials must be at least 1, got {self.startup_trials}")
        objectives = (CONFIDENCE_OBJECTIVE, *TRIAL_SCORE_SELECTORS)
        if self.objective in SELECTORS:
            raise ConfigError(f"--objective {self.objective} is a sweep-level selector (it compares the candidates "
                              f"after the sweep), not a score one trial can report: use one of {', '.join(objectives)}")
        if self.objective not in objectives:
            raise ConfigError(f"--objective must be one of {', '.join(objectives)} (label-free scores a trial "
                              f"reports), got {self.objective!r}")
        if self.scheduler == "asha" and self.objective not in (CONFIDENCE_OBJECTIVE, *TRIAL_SCORE_NAMES):
            # merge_quality comes out of HDRQ's merge, once per trial: there is nothing to compare at ASHA's rungs.
            raise ConfigError(f"--scheduler asha compares trials at every report, and {self.objective!r} exists "
                              f"only once a trial has ended: use --scheduler fifo, or asha with --objective one of "
                              f"{', '.join((CONFIDENCE_OBJECTIVE, *TRIAL_SCORE_NAMES))}")


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
