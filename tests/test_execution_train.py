"""raysel.execution.driver: trials running as 2-worker Ray Train TorchTrainer jobs (real Ray, real models)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest


@pytest.mark.integration
def test_two_worker_trials_run_as_ray_train_jobs(ray_local, embedded_data_root: Path, tmp_path: Path) -> None:
    from raysel import store
    from raysel.sweep import main

    results = tmp_path / "results"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["hiast", "--data-root", str(embedded_data_root), "--results", str(results), "--name", "ddp",
                     "--workers", "2", "--cpus-per-worker", "0.45", "--selection-size", "12",
                     "--set", "rounds=1", "--set", "iterations_per_round=4", "--set", "warmup_iterations=6",
                     "--set", "source_iterations=10", "--set", "reports_per_round=1", "--set", "lambda_i=1.0",
                     "--set", "alpha={grid: [0.4, 0.6]}"])
    assert code == 0, printed.getvalue()[-3000:]
    trials = store.load(results, sweep_id="ddp")
    assert len(trials) == 2 and set(trials["status"]) == {"finished"}
    for trial_id in trials["trial_id"]:  # Ray Train kept this run's checkpoints under its deterministic name
        run_dir = results / "sweeps" / "ddp" / "train" / f"train-{trial_id}"
        assert any(run_dir.rglob("state.pt")), f"no Ray Train checkpoint for {trial_id}"
