"""Studies: many named sweeps run as one resumable, time-boxed unit (``raysel study FILE``).

A study file names the study, its results folder, ``defaults`` shared by every sweep and a list of ``sweeps``, each a
sweep id (``name``) with :class:`~raysel.request.SweepOptions` fields. :func:`load_study` checks every entry with
:func:`~raysel.request_build.build_request` before anything runs; :func:`run_study` then refuses a sweep whose stored
request differs from its entry, imports the finished sweeps of a rows file (:mod:`raysel.orchestration.study_rows`), writes the
plan (:mod:`raysel.study_state`) and runs each sweep not finished yet on one Ray: a new one from the start, an
interrupted one resumed (finished trials are kept), a finished one reused. ``max_minutes`` stops the study between
trials: no trial starts after the deadline, running ones finish, and the study says what is left and how to go on.

Example:
    >>> study = study_from_mapping({
    ...     "name": "lr-study", "results": "/tmp/raysel-doc-study",
    ...     "defaults": {"method": "source_only", "data": "digits", "overrides": ["iterations=20"]},
    ...     "sweeps": [{"name": "lr-seed0", "seed": 0, "space": {"learning_rate": {"grid": [0.001, 0.002]}}},
    ...                {"name": "lr-seed1", "seed": 1, "space": {"learning_rate": {"grid": [0.001, 0.002]}}}]})
    >>> [(sweep.name, sweep.request.search.seed, sweep.request.expected_trials()) for sweep in study.sweeps]
    [('lr-seed0', 0, 2), ('lr-seed1', 1, 2)]
    >>> study_from_mapping({"name": "bad", "sweeps": [{"name": "a", "method": "source_only", "num_sample": 2}]})
    Traceback (most recent call last):
    raysel.errors.ConfigError: study bad: sweep 'a': unknown sweep option 'num_sample'; did you mean 'num_samples'? ...
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import ray
import yaml
from ray import tune

from raysel.conventions import default_results_root
from raysel.errors import ConfigError, UserError, unknown_name_error
from raysel.execution import connect
from raysel.request import (RUN_ONLY_FIELDS, SETTINGS_FILE, TUNE_FOLDER, SweepOptions, SweepRequest, load_request,
                            request_differences)
from raysel.progress import heartbeat
from raysel.request_build import build_request
from raysel.orchestration.study_rows import ExportSummary, export_plan_rows, import_plan_rows
from raysel.study_state import (PlannedSweep, StudyPlan, StudyState, format_duration, save_plan, study_state,
                                study_status)
from raysel.reporting.summary import decision_lines
from raysel.orchestration.pipeline import run_connected_sweep

__all__ = ["STUDY_KEYS", "EXIT_STOPPED", "StudySweep", "Study", "StudyOutcome", "study_from_mapping", "load_study",
           "check_stored_requests", "run_study", "study_status", "export_study_rows", "import_study_rows"]

STUDY_KEYS = ("name", "results", "rows", "defaults", "sweeps")  # a study file's top-level keys
EXIT_STOPPED = 3  # raysel study's exit status when --max-minutes stopped it with work left
HEARTBEAT_S = 30.0  # the study's progress line, at least this often


@dataclass(frozen=True)
class StudySweep:
    """One sweep of a study: its id, its options (the defaults merged with its entry) and its checked request."""

    name: str
    options: Mapping[str, Any]
    request: SweepRequest


@dataclass(frozen=True)
class Study:
    """A checked study: name, absolute results folder, its sweeps in file order, the file and rows file it names,
    and the file's entries as written (kept in the stored plan)."""

    name: str
    results: str
    sweeps: tuple[StudySweep, ...]
    file: str | None = None
    rows: str | None = None
    entries: Mapping[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """How messages name the study: ``study FILE`` or ``study NAME``."""
        return f"study {self.file or self.name}"

    def plan(self) -> StudyPlan:
        """The plan :func:`run_study` stores as ``<results>/studies/<name>/study.json``."""
        sweeps = tuple(PlannedSweep(sweep.name, sweep.request.method, sweep.request.expected_trials(),
                                    sweep.request.to_dict()) for sweep in self.sweeps)
        return StudyPlan(self.name, self.results, sweeps, self.file, self.rows, self.entries)


# --------------------------------------------------------------------------------------------------------------
# Reading and checking a study
# --------------------------------------------------------------------------------------------------------------


def load_study(path: str | Path, *, rows: str | Path | None = None) -> Study:
    """Read and check a study file: every sweep goes through ``build_request`` before anything runs.

    Args:
        path: the study YAML; relative paths inside it (``results``, ``rows``, ``space``, ``data_root``) are relative
            to the current directory, as on the command line.
        rows: a rows file (:func:`export_study_rows`) whose finished sweeps the study imports instead of running;
            overrides the file's ``rows:``.

    Returns:
        The checked :class:`Study`.

    Raises:
        ConfigError: one line naming the file, the sweep and the option at fault.
    """
    try:
        mapping = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"study file {path} not found") from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"study file {path}: cannot read it: {' '.join(str(error).split())}") from None
    if rows is not None:
        mapping = {**(mapping if isinstance(mapping, dict) else {}), "rows": str(rows)}
    return study_from_mapping(mapping, file=str(path))


def study_from_mapping(mapping: Any, *, file: str | None = None) -> Study:
    """A checked study from a mapping in the study file's format (see :func:`load_study`); ``file`` names it in
    messages. An entry's keys replace the defaults', except ``overrides``, which follow the defaults' ``--set``
    texts (a later text wins)."""
    where = f"study {file}" if file else f"study {mapping.get('name') if isinstance(mapping, dict) else '?'}"
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: the file must be a mapping with {', '.join(STUDY_KEYS)}")
    for key in mapping:
        if key not in STUDY_KEYS:
            raise ConfigError(f"{where}: {unknown_name_error('study key', key, STUDY_KEYS)}")
    name = _study_name(where, mapping.get("name"))
    defaults = _defaults(where, mapping.get("defaults"))
    results = str(Path(mapping.get("results") or default_results_root()).expanduser().resolve())
    rows = mapping.get("rows")
    sweeps = tuple(_checked_sweep(where, entry, defaults, results) for entry in _entries(where, mapping.get("sweeps")))
    return Study(name=name, results=results, sweeps=sweeps, file=file,
                 rows=str(Path(str(rows)).expanduser().resolve()) if rows else None,
                 entries={"defaults": dict(defaults), "sweeps": [dict(entry) for entry in mapping["sweeps"]]})


def _study_name(where: str, name: Any) -> str:
    """The study's name: a folder name under ``<results>/studies``."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"{where}: `name:` must name the study (a folder name: no '/' or '\\', not starting with "
                          f"'.'), got {name!r}")
    return name


def _defaults(where: str, defaults: Any) -> Mapping[str, Any]:
    """The ``defaults`` mapping: sweep options every entry shares (not ``name`` or ``results``)."""
    if defaults is None:
        return {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{where}: `defaults:` must be a mapping of sweep options, got {defaults!r}")
    if "name" in defaults:
        raise ConfigError(f"{where}: defaults: `name` is each sweep's own id; give it in the sweep's entry")
    if "results" in defaults:
        raise ConfigError(f"{where}: defaults: `results` is the study's; set it at the top of the file")
    return defaults


def _entries(where: str, sweeps: Any) -> list[dict[str, Any]]:
    """The ``sweeps`` list: mappings, each with a unique ``name`` and without ``results``."""
    if not isinstance(sweeps, list) or not sweeps:
        raise ConfigError(f"{where}: `sweeps:` must be a non-empty list of sweeps, each a `name:` and sweep options")
    seen: dict[str, int] = {}
    for index, entry in enumerate(sweeps):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ConfigError(f"{where}: sweeps[{index}] must be a mapping with a `name:` (the sweep id) and sweep "
                              f"options, got {entry!r}")
        if entry["name"] in seen:
            raise ConfigError(f"{where}: sweep {entry['name']!r} is listed twice (sweeps[{seen[entry['name']]}] and "
                              f"sweeps[{index}]): sweep names must be unique")
        if "results" in entry:
            raise ConfigError(f"{where}: sweep {entry['name']!r}: `results` is the study's; set it at the top of the "
                              "file")
        seen[entry["name"]] = index
    return sweeps


def _checked_sweep(where: str, entry: Mapping[str, Any], defaults: Mapping[str, Any], results: str) -> StudySweep:
    """One entry merged with the defaults and checked by ``build_request``; its error names the sweep."""
    options = {**defaults, **entry, "results": results}
    if "overrides" in defaults and "overrides" in entry:
        options["overrides"] = [*_texts(defaults["overrides"]), *_texts(entry["overrides"])]
    try:
        request = build_request(SweepOptions.from_mapping(options))
    except UserError as error:
        raise ConfigError(f"{where}: sweep {entry['name']!r}: {error}") from None
    return StudySweep(entry["name"], options, request)


def _texts(value: Any) -> list[Any]:
    """``--set`` texts given as one text or a list."""
    return [value] if isinstance(value, str) else list(value or ())


def check_stored_requests(study: Study) -> None:
    """Refuse, in one line, a study whose sweeps were stored with other requests than their entries make now.

    Requests are compared field by field (:func:`raysel.request.request_differences`); what belongs to one run and
    not to the sweep (:data:`raysel.request.RUN_ONLY_FIELDS`: results folder, data root, progress interval, MLflow
    URI, the space's file and ``--set`` texts, whose entries are compared) is not.
    """
    differing = []
    for sweep in study.sweeps:
        if (Path(study.results) / "sweeps" / sweep.name / SETTINGS_FILE).is_file():
            try:
                stored = load_request(study.results, sweep.name)
            except UserError as error:
                raise UserError(f"{study.where}: sweep {sweep.name!r}: {error}") from None
            differences = request_differences(stored, sweep.request)
            if differences:
                differing.append(f"{sweep.name}: {', '.join(differences)}")
    if differing:
        raise UserError(f"{study.where}: {len(differing)} sweep(s) differ from the request stored under "
                        f"{Path(study.results) / 'sweeps'}: {'; '.join(differing)}. Change the entry back, give the "
                        "sweep another name, or delete its folder to run it afresh (not compared: "
                        f"{', '.join(RUN_ONLY_FIELDS)})")


def export_study_rows(study: Study, path: str | Path) -> ExportSummary:
    """Write the trial and selection rows of the study's finished sweeps to one Parquet file (no checkpoint or
    prediction paths), after checking the store holds the sweeps the file describes; see :mod:`raysel.orchestration.study_rows`."""
    check_stored_requests(study)
    return export_plan_rows(study.plan(), path)


def import_study_rows(study: Study, path: str | Path) -> tuple[str, ...]:
    """Import into the study's results folder the finished sweeps a rows file holds and the store lacks; returns
    their ids. A sweep whose exported request differs from its entry is refused, as a stored one would be."""
    return import_plan_rows(study.plan(), path, where=study.where)


# --------------------------------------------------------------------------------------------------------------
# Running a study
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyOutcome:
    """What a study run left: the state of every sweep afterwards, what was done to each (``reused``, ``imported``,
    ``ran``, ``resumed``, ``stopped``, ``not reached``), and the command that continues it when work is left."""

    name: str
    results: str
    state: StudyState
    actions: tuple[tuple[str, str], ...]
    elapsed_s: float
    continue_command: str | None = None

    @property
    def complete(self) -> bool:
        """Whether every sweep of the study has finished."""
        return self.state.complete

    @property
    def exit_code(self) -> int:
        """``raysel study``'s exit status: 0 when complete, :data:`EXIT_STOPPED` when work is left."""
        return 0 if self.complete else EXIT_STOPPED

    def lines(self) -> list[str]:
        """The closing lines: the study's totals, and what is left with the command that continues it."""
        state = self.state
        if self.complete:
            return [f"study {self.name} finished: {len(state.sweeps)} sweeps, {state.stored} trials stored "
                    f"({state.failed} failed) in {self.results}; `raysel status {self.name} --results "
                    f"{self.results}` shows it"]
        left = "; ".join(f"{sweep.sweep_id} ({sweep.label}, {sweep.left} of {sweep.expected} trials left)"
                         for sweep in state.unfinished())
        return [f"study {self.name} stopped by --max-minutes after {format_duration(self.elapsed_s)}: "
                f"{state.finished_sweeps} of {len(state.sweeps)} sweeps finished, {state.left} of {state.expected} "
                "trials left", f"  left: {left}",
                f"continue with: {self.continue_command or 'run_study(load_study(FILE)) again'}"]


def run_study(study: Study, *, max_minutes: float | None = None, resume: bool = True, address: str | None = None,
              dashboard: bool = False, stream: Any = None, continue_command: str | None = None) -> StudyOutcome:
    """Run every sweep of a study not finished yet, on one Ray, in file order.

    Args:
        study: from :func:`load_study` or :func:`study_from_mapping` (every entry checked already).
        max_minutes: stop between trials after this many minutes: no trial starts later (the first sweep this run
            works on starts at least one), running trials finish, and the study reports what is left.
        resume: continue interrupted sweeps (finished trials are kept); False refuses them instead.
        address: the Ray cluster to join; None: ``$RAY_ADDRESS``, else a local Ray started (and stopped) here.
        dashboard: start Ray's dashboard with a local Ray (see :func:`raysel.execution.connect`).
        stream: where progress goes (default: stdout); a study line at least every 30 s.
        continue_command: what the closing lines say continues the study when work is left (default: ``raysel
            study FILE [--max-minutes N]``; a program running its own study, a benchmark, names its own command).

    Returns:
        The :class:`StudyOutcome`: every sweep's state, what was done, and how to continue when work is left.

    Raises:
        UserError: a sweep stored with another request, an interrupted sweep with ``resume=False``, a bad rows file;
            nothing has run or been written then.
    """
    stream = stream or sys.stdout
    started = time.time()
    if max_minutes is not None and not max_minutes > 0:
        raise ConfigError(f"--max-minutes must be positive, got {max_minutes!r}")
    deadline = started + 60.0 * max_minutes if max_minutes is not None else None
    check_stored_requests(study)
    plan = study.plan()
    _refuse_interrupted(study, study_state(plan), resume)
    imported = set(import_study_rows(study, study.rows)) if study.rows else set()  # the first write
    before = study_state(plan)
    save_plan(plan)
    print(_opening_line(study, before, imported), file=stream, flush=True)
    actions = {sweep.sweep_id: ("imported" if sweep.sweep_id in imported else "reused") for sweep in before.sweeps
               if sweep.finished}
    todo = [sweep for sweep in study.sweeps if sweep.name not in actions]
    if todo:
        actions.update(_run_sweeps(study, plan, todo, deadline, address, dashboard, stream,
                                   _Pace(before.stored, started)))
    command = continue_command or _continue_command(study, max_minutes)
    outcome = StudyOutcome(study.name, study.results, study_state(plan),
                           tuple((sweep.name, actions[sweep.name]) for sweep in study.sweeps),
                           time.time() - started, command)
    for line in outcome.lines():
        print(line, file=stream, flush=True)
    return outcome


def _refuse_interrupted(study: Study, state: StudyState, resume: bool) -> None:
    """With ``resume=False``, refuse a study that would continue interrupted sweeps."""
    interrupted = [sweep for sweep in state.sweeps if sweep.started and not sweep.finished]
    if interrupted and not resume:
        names = ", ".join(f"{sweep.sweep_id} ({sweep.stored} of {sweep.expected} trials stored)"
                          for sweep in interrupted)
        raise UserError(f"{study.where}: interrupted sweep(s) {names}: resume them (resume=True), or delete their "
                        f"folders under {Path(study.results) / 'sweeps'} to run them afresh")


def _opening_line(study: Study, state: StudyState, imported: set[str]) -> str:
    """The study's first line: its sweeps by state, the trials expected and left, and the results folder."""
    labels = [sweep.label for sweep in state.sweeps]
    counts = ", ".join(f"{labels.count(label)} {label}" for label in ("finished", "interrupted", "not started")
                       if label in labels)
    rows = f", {len(imported)} imported from {study.rows}" if imported else ""
    return (f"study {study.name}: {len(state.sweeps)} sweeps ({counts}{rows}), {state.expected} trials expected, "
            f"{state.left} left; results {study.results}")


def _run_sweeps(study: Study, plan: StudyPlan, todo: Sequence[StudySweep], deadline: float | None,
                address: str | None, dashboard: bool, stream: Any, pace: "_Pace") -> dict[str, str]:
    """Run or resume ``todo`` on one Ray connection, stopping between sweeps at the deadline; returns each one's
    action. A line for the whole study every 30 s at least, with the time left at this run's pace."""
    actions: dict[str, str] = {}
    local = connect(address, dashboard=dashboard, stream=stream)
    try:
        with heartbeat(f"study {study.name}", interval_s=HEARTBEAT_S, stream=stream,
                       detail=lambda: pace.summary_of(plan)):
            for number, sweep in enumerate(todo, start=1):
                if actions and deadline is not None and time.time() >= deadline:
                    break
                actions[sweep.name] = _run_one(study, sweep, number, len(todo), local, deadline, stream)
                state = study_state(plan)
                print(f"[{time.time() - pace.started:7.0f}s] study {study.name}: sweep {sweep.name} "
                      f"{actions[sweep.name]}; {pace.summary(state)}", file=stream, flush=True)
                if actions[sweep.name] == "stopped":
                    break
    finally:
        if local:
            ray.shutdown()
    return {sweep.name: actions.get(sweep.name, "not reached") for sweep in todo}


def _run_one(study: Study, sweep: StudySweep, number: int, total: int, local: bool, deadline: float | None,
             stream: Any) -> str:
    """Run or resume one sweep (its decisions printed); returns ``ran``, ``resumed`` or ``stopped``."""
    request = sweep.request
    started = (request.sweep_dir / SETTINGS_FILE).is_file()
    resume = started and tune.Tuner.can_restore(str((request.sweep_dir / TUNE_FOLDER).resolve()))
    if started and not resume:
        print(f"study {study.name}: sweep {sweep.name} has no restorable Tune state (stopped before its first "
              "trial): starting it again", file=stream, flush=True)
    print(f"study {study.name}: sweep {number}/{total} {sweep.name}: {'resuming' if resume else 'starting'}",
          file=stream, flush=True)
    try:
        outcome = run_connected_sweep(request, local=local, resume=resume, stream=stream,
                                      stop_new_trials_at=deadline)
    except UserError as error:
        raise UserError(f"{study.where}: sweep {sweep.name!r}: {error}") from None
    for line in decision_lines(outcome.decisions):
        print(f"  {sweep.name}: {line}", file=stream, flush=True)
    return "stopped" if outcome.stopped else "resumed" if resume else "ran"


class _Pace:
    """This run's pace: wall seconds per trial stored since it started (concurrency included), for time estimates;
    before the first trial of the run, the stored trials' mean time."""

    def __init__(self, stored_at_start: int, started: float) -> None:
        self.stored_at_start, self.started = stored_at_start, started

    def seconds_per_trial(self, state: StudyState) -> float | None:
        """Seconds per trial at this run's pace, or None before it stored a trial."""
        done = state.stored - self.stored_at_start
        return (time.time() - self.started) / done if done > 0 else None

    def summary(self, state: StudyState) -> str:
        """The study's totals and the time left at this pace (:meth:`StudyState.summary`)."""
        return state.summary(self.seconds_per_trial(state))

    def summary_of(self, plan: StudyPlan) -> str:
        """:meth:`summary` of the plan's state now, for the heartbeat thread: a store read that races a compaction
        (a file listed, then merged away) says so instead of ending the thread; the next beat reads again."""
        try:
            return self.summary(study_state(plan))
        except Exception as error:  # noqa: BLE001 - progress display must never end the study's progress lines
            return f"state not readable this time ({type(error).__name__})"


def _continue_command(study: Study, max_minutes: float | None) -> str | None:
    """``raysel study FILE [--max-minutes N]``: what continues this study (None for a study without a file)."""
    if study.file is None:
        return None
    words = ["raysel", "study", study.file]
    if max_minutes is not None:
        words += ["--max-minutes", f"{max_minutes:g}"]
    return shlex.join(words)

