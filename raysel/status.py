"""`raysel status [SWEEP | STUDY]`: a running or finished sweep, or a whole study, at a glance, from another terminal.

Reads only files: the sweep's request (``<results>/sweeps/<SWEEP>/sweep.json``: expected trials), the trial
rows in the result store (finished / failed, label-free scores), Tune's per-trial folders (trials started but
without a row yet are running; their ``result.json`` holds the label-free target confidence reported so far) and
each running trial's latest progress line. No Ray connection, so it works while the sweep runs and after it ended;
and it imports neither torch nor Ray (the request is read by :mod:`raysel.request`), so it answers at once.

A name with a study plan (``<results>/studies/<NAME>/study.json``, :mod:`raysel.study_state`) shows the study: its
sweeps finished, interrupted and not started, trials stored and left, the time left at the mean trial time so far,
each sweep's line, and the trials running in its interrupted sweeps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysel.conventions import RESULTS_ENV, default_results_root
from raysel.errors import UserError, exits_cleanly_on_user_error
from raysel.methods.reports import TARGET_CONFIDENCE
from raysel.progress import PROGRESS_FILE, read_status_file
from raysel.request import DEADLINE_FILE, SETTINGS_FILE, TUNE_FOLDER, latest_sweep_id, load_request, read_deadline
from raysel.store import ResultStore
from raysel.study_state import STUDY_FILE, StudyState, study_dir, study_names, study_status

CONFIDENCE_METRIC = TARGET_CONFIDENCE  # label-free, reported by every method while it trains


@dataclass
class SweepStatus:
    """Counts, best label-free score and timing of one sweep, as read from its files."""
    sweep_id: str
    method: str
    expected: int | None
    finished: int
    failed: int
    running: list[str]
    best_score: tuple[str, float, str] | None  # (what, value, trial)
    elapsed_s: float
    remaining_s: float | None
    done: bool
    progress_lines: dict[str, str] = field(default_factory=dict)


def latest_sweep(results: Path) -> str:
    """The most recently started sweep under ``results`` (its request file is the newest)."""
    sweep_id = latest_sweep_id(results)
    if sweep_id is None:
        raise UserError(f"no sweep under {results / 'sweeps'}: start one with `raysel sweep METHOD --results "
                        f"{results}`")
    return sweep_id


def _last_confidence(trial_dir: Path) -> float | None:
    """The last label-free target confidence a trial reported to Tune (its ``result.json``), if any."""
    try:
        lines = (trial_dir / "result.json").read_text().strip().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            value = json.loads(line).get(CONFIDENCE_METRIC)
        except ValueError:
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def _best_score(rows: Any, tune_dirs: list[Path], selectors: tuple[str, ...]) -> tuple[str, float, str] | None:
    """The best recorded selector score (after selection), else the best reported target confidence so far."""
    for selector in selectors:
        column = f"score_{selector}"
        if column in rows and rows[column].notna().any():
            best = rows.loc[rows[column].idxmax()]
            return f"{selector} (label-free)", float(best[column]), str(best["trial_id"])
    reported = [(value, path.name) for path in tune_dirs if (value := _last_confidence(path)) is not None]
    if not reported:
        return None
    value, trial = max(reported)
    return "target confidence (label-free)", value, trial


def sweep_status(results: Path | str, sweep_id: str, now: float | None = None) -> SweepStatus:
    """Read a sweep's status from its request, the store and Tune's trial folders."""
    results = Path(results)
    request = load_request(results, sweep_id)
    sweep_dir = results / "sweeps" / sweep_id
    rows = ResultStore(results).load_sweep(sweep_id)
    stored = set(rows["trial_id"]) if not rows.empty else set()
    tune_dirs = sorted(path for path in (sweep_dir / TUNE_FOLDER).glob("*") if (path / "params.json").exists())
    running = [path.name for path in tune_dirs if path.name not in stored]
    finished = int((rows["status"] == "finished").sum()) if not rows.empty else 0
    failed = len(stored) - finished
    expected = request.expected_trials()
    now = time.time() if now is None else now
    started = (sweep_dir / SETTINGS_FILE).stat().st_mtime
    if not rows.empty and "started_at" in rows:
        started = min(started, _seconds(rows["started_at"].min()))
    done = not running and len(stored) >= expected
    end = _seconds(rows["finished_at"].max()) if done and "finished_at" in rows else now
    elapsed = max(0.0, end - started)
    remaining = None
    if not done and len(stored):
        remaining = elapsed / len(stored) * max(0, expected - len(stored))
    lines = {trial: line for trial in running
             if (line := read_status_file(sweep_dir / "trials" / trial / PROGRESS_FILE))}
    return SweepStatus(sweep_id, request.method, expected, finished, failed, running,
                       _best_score(rows, tune_dirs, request.selectors), elapsed, remaining, done, lines)


def _seconds(moment: Any) -> float:
    """Epoch seconds of a stored timestamp (the store keeps ``started_at``/``finished_at`` as timestamps)."""
    return float(moment.timestamp()) if hasattr(moment, "timestamp") else float(moment)


def format_study_status(state: StudyState, results: Path) -> str:
    """The lines `raysel status STUDY` prints: totals, the time left, then one line per sweep (with the trials
    running in a started sweep and the deadline a study run set for it)."""
    lines = [f"study {state.name}: {'finished' if state.complete else 'in progress or stopped'}",
             f"  {state.summary()}" + (f" (mean trial {_duration(mean)})" if (mean := state.mean_trial_s()) else "")]
    width = max(len(sweep.sweep_id) for sweep in state.sweeps)
    for sweep in state.sweeps:
        line = f"  {sweep.sweep_id:<{width}}  {sweep.label:<11}  {sweep.stored}/{sweep.expected} trials stored"
        line += f", {sweep.failed} failed" if sweep.failed else ""
        if sweep.started and not sweep.finished:
            running = sweep_status(results, sweep.sweep_id).running
            line += f", {len(running)} running" if running else ""
            deadline = read_deadline(results / "sweeps" / sweep.sweep_id / DEADLINE_FILE)
            line += f", no new trial after {time.strftime('%H:%M:%S', time.localtime(deadline))}" if deadline else ""
        lines.append(line)
    if not state.complete and state.file:
        lines.append(f"continue with: raysel study {state.file}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """``1h02m03s`` / ``2m05s`` / ``7s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def format_status(status: SweepStatus) -> str:
    """The lines `raysel status` prints."""
    expected = status.expected if status.expected is not None else "?"
    state = "finished" if status.done else "running or interrupted" if status.running else "in progress"
    lines = [f"sweep {status.sweep_id} ({status.method}): {state}",
             f"  trials: {status.finished} finished, {len(status.running)} running, {status.failed} failed, "
             f"{expected} expected"]
    if status.best_score is not None:
        what, value, trial = status.best_score
        lines.append(f"  best so far: {what} {value:.4f} (trial {trial})")
    else:
        lines.append("  best so far: no label-free score reported yet")
    timing = f"  elapsed {_duration(status.elapsed_s)}"
    if status.remaining_s is not None:
        timing += f", about {_duration(status.remaining_s)} left (expected total " \
                  f"{_duration(status.elapsed_s + status.remaining_s)})"
    lines.append(timing)
    lines += [f"  {trial}: {line}" for trial, line in status.progress_lines.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m raysel.status`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m raysel.status",
        description="Show a running or finished sweep from another terminal: trials finished / running / failed out "
        "of those expected, the best label-free score so far (the selector's score after selection, else the target "
        "confidence the trials reported), elapsed and expected time. Given a study's name (raysel study), show the "
        "study: each sweep's state and trials, the totals and the time left. Reads only the result folder; no Ray "
        "needed.",
        epilog="examples:\n  raysel status                       # the latest sweep under ./results\n"
        "  raysel status hiast-20261123-120000 --results /shared/results\n"
        "  raysel status lr-study                # a study: its sweeps, trials done and left, time left",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", nargs="?", default=None,
                        help="sweep id or study name (default: the latest sweep started)")
    parser.add_argument("--results", type=Path, default=default_results_root(),
                        help=f"result store folder (default ${RESULTS_ENV}, else ./results)")
    return parser


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m raysel.status`` and ``raysel status``."""
    args = build_parser().parse_args(argv)
    is_study = args.sweep is not None and (study_dir(args.results, args.sweep) / STUDY_FILE).is_file()
    is_sweep = args.sweep is not None and (args.results / "sweeps" / args.sweep / SETTINGS_FILE).is_file()
    if is_study:
        print(format_study_status(study_status(args.results, args.sweep), args.results))
    if is_sweep or not is_study:  # a name that is both shows both
        sweep_id = args.sweep or latest_sweep(args.results)
        try:
            status = sweep_status(args.results, sweep_id)
        except UserError as error:
            studies = ", ".join(study_names(args.results)) or "none"
            raise UserError(f"{error}; studies there: {studies}") from None
        print(format_status(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
