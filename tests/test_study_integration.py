"""A real study: two source_only sweeps on the embedded digits data, stopped by --max-minutes part-way, then rerun.

The first run's deadline passes while Ray starts, so the first sweep runs exactly one trial (every run starts at
least one) and stops between trials: that trial finishes, no other starts, the second sweep is not reached, and the
study exits 3 with what is left and the command that continues it. The rerun resumes the first sweep without running
its finished trial again, runs the second, and completes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def write_study(path: Path, results: Path, data_root: Path) -> Path:
    path.write_text(f"""
name: lr-study
results: {results}
defaults:
  method: source_only
  data: digits
  data_root: {data_root}
  overrides: ["iterations=20"]
  selection_size: 12
  progress_interval: 5
sweeps:
  - {{name: lr-a, space: {{learning_rate: {{grid: [0.001, 0.0015, 0.002]}}}}}}
  - {{name: lr-b, seed: 1, space: {{learning_rate: {{grid: [0.001, 0.002]}}}}}}
""")
    return path


def study_command(*arguments: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "raysel.study", *arguments], cwd=REPO, capture_output=True, text=True,
                          env={**environment, "RAY_USAGE_STATS_ENABLED": "0"}, timeout=900)


def finish_times(results: Path, sweep_id: str) -> dict[str, object]:
    """trial_id -> finished_at of every stored trial of a sweep (a re-run would write a new finished_at)."""
    from raysel import store

    trials = store.load(results, sweep_id=sweep_id)
    assert set(trials["status"]) <= {"finished"}, trials[["trial_id", "status", "error"]]
    return dict(zip(trials["trial_id"], trials["finished_at"]))


@pytest.mark.integration
def test_a_study_stopped_by_max_minutes_continues_without_repeating_trials(embedded_data_root: Path,
                                                                           tmp_path: Path) -> None:
    results = tmp_path / "results"
    study = write_study(tmp_path / "study.yaml", results, embedded_data_root)

    stopped = study_command(str(study), "--max-minutes", "0.01")
    printed = stopped.stdout + stopped.stderr
    assert stopped.returncode == 3, printed[-4000:]
    assert "study lr-study stopped by --max-minutes" in printed
    assert "left: lr-a (interrupted, 2 of 3 trials left); lr-b (not started, 2 of 2 trials left)" in printed
    assert f"continue with: raysel study {study} --max-minutes 0.01" in printed
    before = finish_times(results, "lr-a")
    assert len(before) == 1 and finish_times(results, "lr-b") == {}  # one trial ran to its end, nothing else started

    from raysel.status import main as status_main

    assert status_main(["lr-study", "--results", str(results)]) == 0  # from another terminal, no Ray needed

    resumed = study_command(str(study))
    printed = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, printed[-4000:]
    assert "sweep 1/2 lr-a: resuming" in printed and "sweep 2/2 lr-b: starting" in printed
    assert "study lr-study finished: 2 sweeps, 5 trials stored (0 failed)" in printed
    after = finish_times(results, "lr-a")
    assert len(after) == 3 and len(finish_times(results, "lr-b")) == 2
    for trial_id, finished_at in before.items():
        assert after[trial_id] == finished_at, f"trial {trial_id} ran again"
    assert "selected by fmiou for target photo_digits" in printed

    again = study_command(str(study))  # everything finished: reused, no Ray, exit 0
    assert again.returncode == 0 and "2 finished" in again.stdout and "0 left" in again.stdout
