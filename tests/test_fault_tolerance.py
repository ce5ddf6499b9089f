"""A trial's Ray Train worker process SIGKILLed mid-run: Train restarts it from the last checkpoint, the trial finishes.

The sweep runs as a separate `python -m raysel.sweep --address ...` process against a token-authenticated Ray head
owned by this test (tests/ray_head.py), so the State API of that head names the trial's ``RayTrainWorker`` actor and
its pid, and the kill can only reach a process of this test's cluster. Inside Tune the trial itself never fails here:
Ray Train's controller sees the dead worker and restarts the worker group (``FailureConfig``), which is what the
store's ``retries`` column has to count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.ray_head import RayHead

REPO = Path(__file__).resolve().parent.parent
SWEEP_ID = "worker-kill"
ROUNDS = 3
# Two trials one after the other (selection needs two candidates), each one Train worker of one CPU (the head has 2),
# three HIAST rounds of 12 iterations: each round ends with a checkpoint, and rounds 2-3 leave seconds of training
# after the first checkpoint for the kill to land in. Only the first trial's worker is killed.
SWEEP_ARGUMENTS = ["--executor", "train", "--workers", "1", "--cpus-per-worker", "1", "--max-concurrent", "1",
                   "--max-failures", "1", "--selection-size", "12", "--progress-interval", "5",
                   "--set", "alpha={grid: [0.3, 0.7]}", "--set", "lambda_i=1.0", "--set", f"rounds={ROUNDS}",
                   "--set", "iterations_per_round=12", "--set", "reports_per_round=1",
                   "--set", "warmup_iterations=6", "--set", "source_iterations=10"]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, process: subprocess.Popen,
             log_path: Path) -> Any:
    """Poll ``condition`` until it returns something truthy; fail early with the sweep's log if the sweep exits."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"the sweep exited ({process.returncode}) while waiting for {what}:\n"
                        f"{log_path.read_text()[-4000:]}")
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{log_path.read_text()[-4000:]}")


def registered_checkpoint(results: Path) -> dict[str, Any] | None:
    """The Train run's checkpoint-manager snapshot once the controller has registered a checkpoint, else None.

    A checkpoint directory on disk is not enough: the controller registers it at its next poll, and a worker killed
    before that restarts from the previous one (../shared/reference/ray.md). The snapshot is written on registration.
    """
    for snapshot in (results / "sweeps" / SWEEP_ID / "train").glob("train-*/checkpoint_manager_snapshot.json"):
        try:
            state = json.loads(snapshot.read_text())
        except (OSError, ValueError):  # being replaced right now: look again at the next poll
            continue
        if state.get("latest_checkpoint_result"):
            return {"run_dir": snapshot.parent, **state}
    return None


def alive_train_worker_pids(head: RayHead) -> list[int]:
    """Pids of the head's live RayTrainWorker actors, from the State API (authenticated with the head's token)."""
    query = urllib.parse.urlencode([("limit", "100"), ("detail", "true"),
                                    ("filter_keys", "class_name"), ("filter_predicates", "="),
                                    ("filter_values", "RayTrainWorker"),
                                    ("filter_keys", "state"), ("filter_predicates", "="), ("filter_values", "ALIVE")])
    request = urllib.request.Request(f"{head.dashboard_url}/api/v0/actors?{query}",
                                     headers={"Authorization": f"Bearer {head.token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            actors = json.loads(response.read())["data"]["result"]["result"]
    except OSError:  # a busy dashboard on a loaded 2-core machine: the caller polls again
        return []
    return [int(actor["pid"]) for actor in actors if actor.get("pid")]


def is_train_worker_process(pid: int) -> bool:
    """Guard against pid reuse: Ray titles an actor's process ``ray::RayTrainWorker...``."""
    try:
        return b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def reported_rounds(results: Path, trial_id: str) -> list[int]:
    """The HIAST round of every report Tune received for the trial, in order (Train forwards them to Tune)."""
    result_file = results / "sweeps" / SWEEP_ID / "tune" / trial_id / "result.json"
    rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
    return [int(row["round"]) for row in rows if row.get("round") is not None]


@pytest.fixture
def ray_head() -> RayHead:
    """A 2-CPU token-authenticated head for this test alone (nothing else may schedule on it)."""
    with RayHead(num_cpus=2) as head:
        yield head


@pytest.mark.integration
def test_killed_train_worker_restarts_from_its_checkpoint(ray_head: RayHead, embedded_data_root: Path,
                                                          tmp_path: Path) -> None:
    results = tmp_path / "results"
    command = [sys.executable, "-m", "raysel.sweep", "hiast", "--address", ray_head.gcs_address,
               "--data-root", str(embedded_data_root), "--results", str(results), "--name", SWEEP_ID,
               *SWEEP_ARGUMENTS]
    log_path = tmp_path / "sweep.log"
    with open(log_path, "w") as log:
        sweep = subprocess.Popen(command, cwd=REPO, env=ray_head.env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            snapshot = wait_for(lambda: registered_checkpoint(results), 900, "the first registered checkpoint",
                                sweep, log_path)
            trial_id = snapshot["run_dir"].name.removeprefix("train-")
            victims = wait_for(lambda: [pid for pid in alive_train_worker_pids(ray_head)
                                        if is_train_worker_process(pid)], 60, "the Train worker's pid", sweep,
                               log_path)
            assert len(victims) == 1, f"one running trial with one worker has one RayTrainWorker, got {victims}"
            # The round of the newest checkpoint the controller holds right before the kill: the restart resumes
            # from it (or from a later one registered in the meantime), never from an earlier state.
            checkpointed_round = int(registered_checkpoint(results)["latest_checkpoint_result"]["metrics"]["round"])
            os.kill(victims[0], signal.SIGKILL)  # this test's cluster's worker only, found by its actor class

            # Train notices the death and starts a new worker group; the new worker is a different process.
            wait_for(lambda: [pid for pid in alive_train_worker_pids(ray_head) if pid != victims[0]]
                     or (results / "sweeps" / SWEEP_ID / "trials" / trial_id / "final.json").exists(),
                     300, "the restarted Train worker", sweep, log_path)
            returncode = sweep.wait(timeout=900)
        finally:
            if sweep.poll() is None:
                os.killpg(sweep.pid, signal.SIGKILL)  # only the sweep process group this test started
                sweep.wait(timeout=60)
    output = log_path.read_text()
    assert returncode == 0, output[-4000:]

    from raysel import store

    trials = store.load(results, sweep_id=SWEEP_ID)
    summary = trials[["trial_id", "status", "retries", "error"]].to_string()
    assert len(trials) == 2 and trials["trial_id"].is_unique, summary  # one row per trial, the killed one included
    assert set(trials["status"]) == {"finished"}, summary
    retries = dict(zip(trials["trial_id"], trials["retries"]))
    assert retries.pop(trial_id) >= 1, f"the worker restart should be counted in the retries column:\n{summary}"
    assert list(retries.values()) == [0], f"the trial that was not killed has no retry:\n{summary}"

    # The kill landed mid-run (training rounds were still to come), and the restart resumed from the checkpoint,
    # not from scratch: no round up to the checkpointed one ran twice, and every round was reported.
    assert checkpointed_round < ROUNDS, "the kill came after the last round; make the rounds longer"
    rounds = reported_rounds(results, trial_id)
    for repeated in range(1, checkpointed_round + 1):
        assert rounds.count(repeated) == 1, f"round {repeated} ran again after the restart: reports {rounds}"
    assert set(rounds) == set(range(1, ROUNDS + 1)), rounds
    assert "selected by fmiou" in output
