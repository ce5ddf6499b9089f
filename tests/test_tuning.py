"""raysel.tuning: resources arithmetic (fast) and trials running as 2-worker Ray Train TorchTrainer jobs (real)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from raysel.errors import ConfigError
from raysel.tuning import DRIVER_CPU, Resources


def test_single_worker_runs_inside_the_trial_and_several_use_train() -> None:
    assert not Resources(workers=1).uses_train
    assert Resources(workers=2).uses_train
    assert Resources(workers=1, executor="train").uses_train
    assert Resources(workers=2, cpus_per_worker=0.45).trial_cpus() == pytest.approx(DRIVER_CPU + 0.9)
    assert Resources(workers=1, cpus_per_worker=2).trial_cpus() == 2


@pytest.mark.parametrize("kwargs, fragment", [
    ({"workers": 0}, "--workers"), ({"cpus_per_worker": 0}, "--cpus-per-worker"),
    ({"gpus_per_worker": -1}, "--gpus-per-worker"), ({"executor": "magic"}, "--executor"),
    ({"workers": 2, "executor": "direct"}, "--executor direct"),
])
def test_bad_resources_are_config_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Resources(**kwargs).validate()


def test_gpu_trials_use_nccl_from_the_request_and_gloo_on_cpu_or_fake_gpus(monkeypatch) -> None:
    from raysel.tuning import FAKE_GPUS_ENV, process_group_backend

    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    assert process_group_backend(use_gpu=True) == "nccl"  # even here, where this process sees no CUDA
    assert process_group_backend(use_gpu=False) == "gloo"
    monkeypatch.setenv(FAKE_GPUS_ENV, "1")
    assert process_group_backend(use_gpu=True) == "gloo"


def test_gpu_request_without_cuda_fails_unless_fake_gpus_are_declared(monkeypatch) -> None:
    import torch

    from raysel.tuning import FAKE_GPUS_ENV, _direct_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _direct_device(Resources(gpus_per_worker=1))
    monkeypatch.setenv(FAKE_GPUS_ENV, "1")
    assert _direct_device(Resources(gpus_per_worker=1)).type == "cpu"
    assert _direct_device(Resources()).type == "cpu"


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


def test_seed_fixes_the_sampled_configurations() -> None:
    from ray import tune
    from ray.tune.experiment import Experiment

    from raysel.tuning import SearchSettings, _search_and_scheduler

    def draw(seed: int) -> list[dict]:
        search_alg, _ = _search_and_scheduler(SearchSettings(search="random", seed=seed))
        space = {"alpha": tune.uniform(0, 1), "k": tune.choice([10, 12, 14, 16, 18])}
        search_alg.add_configurations([Experiment("draw", run=lambda config: None, config=space, num_samples=6)])
        configs = []
        while (trial := search_alg.next_trial()) is not None:
            configs.append(trial.config)
        return configs

    assert len(draw(3)) == 6 and draw(3) == draw(3)
    assert draw(3) != draw(4)
