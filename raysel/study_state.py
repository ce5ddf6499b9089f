"""A study's stored plan and its state, read from the result folder without torch or Ray.

``<results>/studies/<name>/study.json`` is the plan :func:`raysel.orchestration.studies.run_study` writes (atomically) before it
runs anything: the study file's entries as written and, per sweep, its id, method, expected trials and checked
request. The state is not kept apart from the sweeps: it is derived, whenever asked, from what they left in the
store: trial rows (stored, failed, wall times), ``sweeps/<SWEEP>/sweep.json`` (started) and ``finished.json``
(a run ended with every trial run, selected and compacted). ``raysel status STUDY`` reads it from another terminal.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from raysel.errors import UserError
from raysel.request import SETTINGS_FILE, read_finished
from raysel.store import ResultStore, is_compacted

__all__ = ["STUDIES_FOLDER", "STUDY_FILE", "PLAN_FORMAT", "PlannedSweep", "StudyPlan", "study_dir", "save_plan",
           "load_plan", "study_names", "SweepState", "sweep_state", "StudyState", "study_state", "study_status",
           "format_duration"]

STUDIES_FOLDER = "studies"  # under the results folder: one folder per study
STUDY_FILE = "study.json"
PLAN_FORMAT = 1


@dataclass(frozen=True)
class PlannedSweep:
    """One sweep of a study's plan: its id, method, expected trials and checked request (``SweepRequest.to_dict``)."""

    sweep_id: str
    method: str
    expected_trials: int
    request: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyPlan:
    """What a study runs, as stored in ``study.json``: its name, results folder, file, rows file, the file's entries
    as written (``{"defaults": ..., "sweeps": [...]}``) and the checked sweeps in order."""

    name: str
    results: str
    sweeps: tuple[PlannedSweep, ...]
    file: str | None = None
    rows: str | None = None
    entries: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``study.json`` holds; :meth:`from_dict` reads it back."""
        return {"format": PLAN_FORMAT, "name": self.name, "results": self.results, "file": self.file,
                "rows": self.rows, "entries": dict(self.entries),
                "sweeps": [{"sweep_id": sweep.sweep_id, "method": sweep.method,
                            "expected_trials": sweep.expected_trials, "request": dict(sweep.request)}
                           for sweep in self.sweeps]}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "StudyPlan":
        """The plan :meth:`to_dict` wrote; KeyError, TypeError or ValueError when it is not one."""
        if payload.get("format") != PLAN_FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, this raysel reads format {PLAN_FORMAT}")
        sweeps = tuple(PlannedSweep(item["sweep_id"], item["method"], int(item["expected_trials"]),
                                    item.get("request") or {}) for item in payload["sweeps"])
        return cls(name=payload["name"], results=payload["results"], sweeps=sweeps, file=payload.get("file"),
                   rows=payload.get("rows"), entries=payload.get("entries") or {})


def study_dir(results: Path | str, name: str) -> Path:
    """``<results>/studies/<name>``: the study's plan."""
    return Path(results) / STUDIES_FOLDER / name


def save_plan(plan: StudyPlan) -> Path:
    """Write ``study.json`` atomically (a reader sees the previous plan or this one, never half of one)."""
    folder = study_dir(plan.results, plan.name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STUDY_FILE
    temporary = path.with_name(f".{STUDY_FILE}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({**plan.to_dict(), "written_at": _now()}, indent=2, default=str))
    os.replace(temporary, path)
    return path


def _now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def study_names(results: Path | str) -> list[str]:
    """The studies with a plan under ``results``, sorted."""
    return sorted(path.parent.name for path in (Path(results) / STUDIES_FOLDER).glob(f"*/{STUDY_FILE}"))


def load_plan(results: Path | str, name: str) -> StudyPlan:
    """The stored plan of study ``name``; a UserError naming the studies there when it has none or it is unreadable."""
    path = study_dir(results, name) / STUDY_FILE
    try:
        return StudyPlan.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        known = ", ".join(study_names(results)) or "none"
        raise UserError(f"no study {name!r} under {Path(results) / STUDIES_FOLDER}; studies there: {known}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot read the study plan {path}: {type(error).__name__}: {error}") from None


# --------------------------------------------------------------------------------------------------------------
# State, derived from the store
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepState:
    """Where one sweep of a study stands: trial rows stored (failed among them) of those expected, whether it has
    started (``sweep.json``) and finished, and the summed wall seconds of its stored trials."""

    sweep_id: str
    method: str
    expected: int
    stored: int = 0
    failed: int = 0
    started: bool = False
    finished: bool = False
    wall_seconds: float = 0.0

    @property
    def left(self) -> int:
        """Trials still to run: none once finished (an ASHA-stopped or lost trial leaves no row, yet is done)."""
        return 0 if self.finished else max(0, self.expected - self.stored)

    @property
    def label(self) -> str:
        """``finished``, ``interrupted`` (started, not finished: a run resumes it) or ``not started``."""
        return "finished" if self.finished else "interrupted" if self.started else "not started"


def sweep_state(results: Path | str, planned: PlannedSweep) -> SweepState:
    """A sweep's state from its rows and folder. Finished: a run of it marked it so (``finished.json``), or every
    expected trial has a row and no per-trial file awaits compaction (a sweep finished before the marker existed)."""
    results = Path(results)
    sweep_dir = results / "sweeps" / planned.sweep_id
    store = ResultStore(results)
    rows = store.load_sweep(planned.sweep_id) if (results / "trials").is_dir() else None
    stored = 0 if rows is None else len(rows)
    failed = 0 if rows is None or rows.empty else int((rows["status"] != "finished").sum())
    wall = 0.0 if rows is None or rows.empty else float(rows["wall_time_s"].dropna().sum())
    uncompacted = any(not is_compacted(path) for table in ("trials", "selections")
                      for path in store.files(table, sweep_id=planned.sweep_id))
    finished = read_finished(sweep_dir) is not None or (stored >= planned.expected_trials and not uncompacted)
    return SweepState(planned.sweep_id, planned.method, planned.expected_trials, stored, failed,
                      (sweep_dir / SETTINGS_FILE).is_file(), finished, wall)


@dataclass(frozen=True)
class StudyState:
    """Where a whole study stands: its sweeps' states in plan order, with totals and a time estimate."""

    name: str
    results: str
    sweeps: tuple[SweepState, ...]
    file: str | None = None

    @property
    def finished_sweeps(self) -> int:
        """How many sweeps have finished."""
        return sum(sweep.finished for sweep in self.sweeps)

    @property
    def complete(self) -> bool:
        """Whether every sweep has finished."""
        return self.finished_sweeps == len(self.sweeps)

    @property
    def stored(self) -> int:
        """Trial rows stored over all sweeps."""
        return sum(sweep.stored for sweep in self.sweeps)

    @property
    def failed(self) -> int:
        """Stored trials that did not finish (failed or stopped)."""
        return sum(sweep.failed for sweep in self.sweeps)

    @property
    def expected(self) -> int:
        """Trials the sweeps expect in all."""
        return sum(sweep.expected for sweep in self.sweeps)

    @property
    def left(self) -> int:
        """Trials still to run over the unfinished sweeps."""
        return sum(sweep.left for sweep in self.sweeps)

    def mean_trial_s(self) -> float | None:
        """The mean wall seconds of a stored trial (None before the first)."""
        return sum(sweep.wall_seconds for sweep in self.sweeps) / self.stored if self.stored else None

    def remaining_s(self, seconds_per_trial: float | None = None) -> float | None:
        """Expected seconds left: trials left x ``seconds_per_trial`` (default: the mean trial time, one at a time)."""
        pace = seconds_per_trial if seconds_per_trial is not None else self.mean_trial_s()
        return None if pace is None or not math.isfinite(pace) else self.left * pace

    def summary(self, seconds_per_trial: float | None = None) -> str:
        """``sweeps 1/3 finished, trials 4 stored (0 failed) of 9 expected, 5 left, about 2m00s left``."""
        remaining = self.remaining_s(seconds_per_trial)
        estimate = "" if remaining is None or not self.left else f", about {format_duration(remaining)} left"
        return (f"sweeps {self.finished_sweeps}/{len(self.sweeps)} finished, trials {self.stored} stored "
                f"({self.failed} failed) of {self.expected} expected, {self.left} left{estimate}")

    def unfinished(self) -> list[SweepState]:
        """The sweeps still to run or resume, in plan order."""
        return [sweep for sweep in self.sweeps if not sweep.finished]


def study_state(plan: StudyPlan) -> StudyState:
    """The state of every sweep of ``plan`` in its results folder."""
    return StudyState(plan.name, plan.results, tuple(sweep_state(plan.results, sweep) for sweep in plan.sweeps),
                      plan.file)


def study_status(results: Path | str, name: str) -> StudyState:
    """The state of study ``name`` under ``results`` from its stored plan (what ``raysel status STUDY`` shows); read
    in ``results`` even when the plan was written where the store was before a copy or move."""
    return study_state(dataclasses.replace(load_plan(results, name), results=str(results)))


def format_duration(seconds: float) -> str:
    """``1h02m03s`` / ``2m05s`` / ``7s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")
