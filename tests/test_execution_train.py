"""raysel.execution.driver: trials running as 2-worker Ray Train TorchTrainer jobs (real Ray, real models), and the
runner's one task check every trial goes through."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import pytest

from raysel.errors import ConfigError
from raysel.execution import trial
from raysel.execution.local import run_local
from raysel.methods.base import RunSpec
from raysel.registry import get_method


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


def test_the_runner_refuses_a_method_on_data_of_another_task_before_training(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every trial goes through ``train_and_finish``: hiast (segmentation) on digits (classification) stops there
    with one ConfigError naming the method, the data's task and the supported tasks; nothing trains or is written."""
    def must_not_train(config: object, ctx: object) -> None:
        raise AssertionError("the method trained on data of a task it does not support")

    hiast = dataclasses.replace(get_method("hiast"), train=must_not_train)
    monkeypatch.setattr(trial, "get_method", lambda name: hiast)
    output = tmp_path / "out"
    spec = RunSpec(method="hiast", dataset="digits", data_root=str(tmp_path / "data"), output_dir=str(output))
    with pytest.raises(ConfigError) as error:
        run_local("hiast", {}, spec)
    assert str(error.value) == ("method hiast does not support classification data (digits); "
                                "it supports segmentation")
    assert not (output / trial.ATTEMPTS_FILE).exists()
