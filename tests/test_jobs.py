"""`ray job submit` against a real, token-authenticated Ray head owned by the test; unauthenticated is refused."""

from __future__ import annotations

import itertools
import json
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.ray_head import RayHead

REPO = Path(__file__).resolve().parent.parent
EXCLUDES = [".venv", "results", ".git", "**/__pycache__", ".pytest_cache", "*.egg-info", ".whl", ".gl"]
TINY = ["--set", "rounds=1", "--set", "iterations_per_round=6", "--set", "warmup_iterations=6",
        "--set", "source_iterations=10", "--set", "reports_per_round=1", "--set", "lambda_i=1.0",
        "--set", "alpha={grid: [0.3, 0.7]}", "--selection-size", "12"]


@pytest.fixture(scope="module")
def ray_head():
    with RayHead(num_cpus=2) as head:
        yield head


def test_job_definitions_parse() -> None:
    from raysel.submit import load_job

    jobs = sorted((REPO / "jobs").glob("*.yaml"))
    assert {job.stem for job in jobs} >= {"embedded_demo", "hiast_gta5_cityscapes", "hdrq_gta5_cityscapes_idd"}
    for job in jobs:
        definition = load_job(job)
        assert definition["entrypoint"].startswith("python -m raysel.")
        assert ".venv" in definition["runtime_env"]["excludes"]
        command = shlex.split(definition["entrypoint"])  # the job server runs the entrypoint through a shell
        if command[:3] == ["python", "-m", "raysel.sweep"]:
            check_sweep_entrypoint(command[3:])


def check_sweep_entrypoint(argv: list[str]) -> None:
    """Resolve a sweep entrypoint as `python -m raysel.sweep` would before starting Ray: its arguments, method, data
    family and domains, search space with the --set overrides, and the configuration of every grid point."""
    from raysel import data
    from raysel.hyperparameters import config_from_dict
    from raysel.models import model_names
    from raysel.registry import get_method
    from raysel.search_space import load_search_space
    from raysel.request_build import default_dataset
    from raysel.sweep import build_parser

    args = build_parser().parse_args(argv)
    method = get_method(args.method)
    family = data.get_family(args.data or default_dataset(method))
    assert family.task in method.tasks, (method.name, family.name)
    assert args.model is None or args.model in model_names(family.task), args.model
    for domain in [args.source or family.default_source, *(args.target or ())]:
        assert domain in family.domains, (domain, family.name)
    space = load_search_space(args.space or method.search_space_path, method).apply_overrides(args.overrides)
    gridded = {name: entry.values for name, entry in space.entries.items() if entry.kind == "grid"}
    sampled = {name: entry.values[0] for name, entry in space.entries.items() if entry.swept and name not in gridded}
    for point in itertools.product(*gridded.values()):
        config = config_from_dict(method.config_class, {**space.fixed_values(), **sampled, **dict(zip(gridded, point))})
        if method.name == "hdrq":  # its adaptation settings are resolved per task: check them here too
            from raysel.methods.hdrq import resolve_adaptation

            resolve_adaptation(config, family.task)


@pytest.mark.integration
def test_ray_job_submit_with_token_runs_a_sweep(ray_head: RayHead, embedded_data_root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"RAYSEL_DATA_ROOT": str(embedded_data_root)}}
    command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_head.dashboard_url,
               "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
               "python", "-m", "raysel.sweep", "hiast", "--results", str(results), "--name", "job-sweep", *TINY]
    submitted = subprocess.run(command, env=ray_head.env, capture_output=True, text=True, timeout=1200, cwd=REPO)
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output[-4000:]
    assert "succeeded" in output.lower(), output[-4000:]

    from raysel import store

    trials = store.load(results, sweep_id="job-sweep")
    assert len(trials) == 2 and set(trials["status"]) == {"finished"}
    selections = store.load(results, table="selections", sweep_id="job-sweep")
    assert list(selections.loc[selections["headline"].astype(bool), "selector"]) == ["fmiou"]  # hiast's default


@pytest.mark.integration
def test_unauthenticated_submission_is_refused(ray_head: RayHead, tmp_path: Path) -> None:
    request = urllib.request.Request(f"{ray_head.dashboard_url}/api/jobs/", method="POST",
                                     data=json.dumps({"entrypoint": "echo hi"}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401

    env = {k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_MODE"] = "disabled"  # a client that sends no token
    command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_head.dashboard_url,
               "--no-wait", "--", "echo", "should-not-run"]
    attempt = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert attempt.returncode != 0
    assert "401" in attempt.stdout + attempt.stderr or "auth" in (attempt.stdout + attempt.stderr).lower()
