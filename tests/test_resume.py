"""Fault tolerance for real: the sweep driver SIGKILLed mid-sweep, then `--resume` finishes the rest.

No finished trial is re-run (its Parquet file is untouched) and no row is duplicated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def sweep_command(results: Path, data_root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "raysel.sweep", "source_only", "--results", str(results), "--name", "killed",
            "--data-root", str(data_root), "--set", "learning_rate={grid: [0.001, 0.0015, 0.002]}",
            "--set", "iterations=20", "--selection-size", "12", "--max-concurrent", "1", "--progress-interval", "5",
            *extra]


def finished_files(results: Path) -> list[Path]:
    return sorted((results / "trials").glob("method=source_only/killed__*.parquet"))


def finish_times(results: Path) -> dict[str, object]:
    """trial_id -> finished_at of every stored trial (a re-run would write a new finished_at)."""
    from raysel import store

    trials = store.load(results, sweep_id="killed")
    return dict(zip(trials["trial_id"], trials["finished_at"]))


@pytest.mark.integration
def test_killed_sweep_resumes_without_rerunning_or_duplicating(embedded_data_root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(sweep_command(results, embedded_data_root), cwd=REPO, env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and len(finished_files(results)) < 1 and first.poll() is None:
            time.sleep(0.2)  # the kill must land while the second trial runs: look often
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert len(finished_files(results)) >= 1, "the first trial should finish before the kill"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started: a machine-crash stand-in
        first.wait(timeout=60)
        log.close()
    before = finish_times(results)
    assert 1 <= len(before) < 3

    resumed = subprocess.run(sweep_command(results, embedded_data_root, "--resume"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = finish_times(results)
    assert len(after) == 3
    for trial_id, finished_at in before.items():
        assert after[trial_id] == finished_at, f"trial {trial_id} ran again after --resume"

    from raysel import store

    trials = store.load(results, sweep_id="killed")
    assert len(trials) == 3 and trials["trial_id"].is_unique and set(trials["status"]) == {"finished"}
    assert sorted(trials["hp_learning_rate"]) == [0.001, 0.0015, 0.002]
    assert "selected by fmiou" in resumed.stdout
