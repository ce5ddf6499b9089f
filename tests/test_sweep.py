"""`python -m raysel.sweep`: bad input gives one clear line and exit 2; a real sweep stores, selects and prints."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from raysel.sweep import main as sweep_main

REPO = Path(__file__).resolve().parent.parent


def run_sweep_in_process(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """``raysel.sweep.main`` in this process (the entry point `python -m raysel.sweep` runs), as a finished process.

    The error paths import the method registry (torch); a fresh interpreter per case cost 5-9 s each, and the subprocess
    path itself is covered by the integration sweep and by test_cli.
    """
    try:
        code = sweep_main(list(args))
    except SystemExit as exited:
        code = exited.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["raysel.sweep", *args], code, captured.out, captured.err)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_explains_every_option(capsys: pytest.CaptureFixture) -> None:
    result = run_sweep_in_process(capsys, "--help")
    assert result.returncode == 0
    for option in ("--space", "--data", "--data-root", "--source", "--target", "--num-samples", "--search",
                   "--scheduler", "--max-concurrent", "--workers", "--cpus-per-worker", "--gpus-per-worker",
                   "--results", "--name", "--resume", "--set", "--seed", "--address", "--dashboard",
                   "--include-default"):
        assert option in result.stdout


def test_the_dashboard_is_how_to_run_not_what_the_sweep_is() -> None:
    """``--dashboard`` (like ``--address``) never reaches the sweep's stored options, so a sweep run with it resumes
    and is reused without it."""
    from raysel.sweep import build_parser, options_from_arguments

    with_dashboard = build_parser().parse_args(["hiast", "--dashboard"])
    assert with_dashboard.dashboard and not build_parser().parse_args(["hiast"]).dashboard
    assert options_from_arguments(with_dashboard) == options_from_arguments(build_parser().parse_args(["hiast"]))


def test_unknown_method_lists_registered_ones(capsys: pytest.CaptureFixture) -> None:
    assert_one_line_error(run_sweep_in_process(capsys, "no_such_method"), "no_such_method", "hiast", "source_only")


def test_missing_space_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "absent.yaml"
    assert_one_line_error(run_sweep_in_process(capsys, "hiast", "--space", str(missing)), str(missing))


def test_malformed_yaml_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    space = tmp_path / "broken.yaml"
    space.write_text("alpha: {grid: [0.3, 0.5]}\ngamma: [unclosed\n")
    assert_one_line_error(run_sweep_in_process(capsys, "hiast", "--space", str(space)), str(space), "line")


def test_unknown_key_in_space_lists_valid_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("alpha: {grid: [0.3, 0.5]}\nalpah: 0.2\n")
    assert_one_line_error(run_sweep_in_process(capsys, "hiast", "--space", str(space)), "alpah", "lambda_cst")


def test_resume_without_previous_sweep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert_one_line_error(run_sweep_in_process(capsys, "hiast", "--resume", "--name", "never-ran", "--results", str(tmp_path)),
                          "never-ran")


def test_unwritable_results_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_one_line_error(run_sweep_in_process(capsys, "hiast", "--results", str(blocker / "results")), "not writable")


def test_unreachable_ray_address(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert_one_line_error(run_sweep_in_process(capsys, "hiast", "--address", f"127.0.0.1:{port}", "--results", str(tmp_path)),
                          "no Ray reachable", str(port))


@pytest.mark.integration
def test_sweep_runs_selects_and_stores(tiny_hiast_sweep: dict) -> None:
    """A real 3-trial HIAST sweep on local Ray: rows in Parquet, a selection decision, the table printed."""
    from raysel import store

    results, printed = tiny_hiast_sweep["results"], tiny_hiast_sweep["printed"]
    assert tiny_hiast_sweep["code"] == 0, printed
    trials = store.load(results, sweep_id="tiny")
    assert len(trials) == 3 and set(trials["status"]) == {"finished"}
    assert sorted(trials["hp_alpha"]) == [0.3, 0.5, 0.7] and str(trials["hp_k"].dtype) == "Int64"
    assert trials["score_fmiou"].between(0, 1).all() and trials["heldout_miou"].between(0, 1).all()
    selections = store.load(results, table="selections", sweep_id="tiny")
    from raysel.selection.selectors import selector_names

    assert set(selections["selector"]) == set(selector_names()) - {"merge_quality", "mixval"}  # every applicable one
    headline = selections[selections["headline"]]
    assert list(headline["selector"]) == ["fmiou"]  # hiast's default decides
    selected = headline["selected_trial_id"].iloc[0]
    assert selected == trials.loc[trials["score_fmiou"].idxmax(), "trial_id"]
    marked = [line for line in printed.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and selected in marked[0]
    assert "results:" in printed and ("selectors agree on day_city" in printed
                                      or "selectors disagree on day_city" in printed)
    assert "merge_quality skipped: no trial stored score_merge_quality" in printed

    query = subprocess.run([sys.executable, "-m", "raysel.query", "--results", str(results), "--format", "csv",
                            "SELECT trial_id, hp_alpha, score_fmiou FROM trials ORDER BY score_fmiou DESC"],
                           capture_output=True, text=True, timeout=120, cwd=REPO)
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines()[1].startswith(selected)


@pytest.mark.integration
def test_reused_trial_processes_give_the_results_of_a_fresh_run(tiny_hiast_sweep: dict, tmp_path: Path) -> None:
    """Tune reuses a finished trial's worker process (fewer processes than trials), and every trial's held-out and
    label-free scores equal an in-process run of its configuration; rows carry their phase timings, and the sweep
    printed one line per shared stage."""
    import json

    from raysel import store
    from raysel.execution import run_local
    from raysel.methods.base import RunSpec
    from raysel.request import TUNE_FOLDER, load_request
    from raysel.store.schema import TRIAL_TIMING_COLUMNS

    results = tiny_hiast_sweep["results"]
    trials = store.load(results, sweep_id="tiny")
    request = load_request(results, "tiny")
    tune_dir = request.sweep_dir / TUNE_FOLDER
    pids = {json.loads((tune_dir / trial_id / "result.json").read_text().splitlines()[-1])["pid"]
            for trial_id in trials["trial_id"]}
    assert len(pids) < len(trials) == 3  # 2 CPUs: the third trial ran in a process a finished trial left
    for row in trials.itertuples():
        params = json.loads((tune_dir / row.trial_id / "params.json").read_text())
        spec = RunSpec.from_dict({**request.run_fields(), "target": row.target, "num_threads": 1,
                                  "output_dir": str(tmp_path / row.trial_id)})
        fresh = run_local("hiast", params["hp"], spec, checkpoint_root=tmp_path / f"{row.trial_id}-ckpt").final
        assert fresh["heldout_miou"] == row.heldout_miou
        assert {"consistency", "classmix_consistency"} <= set(fresh["scores"])
        for name, value in fresh["scores"].items():
            assert getattr(row, f"score_{name}") == value, name
    assert trials[list(TRIAL_TIMING_COLUMNS)].notna().all().all()
    assert (trials[list(TRIAL_TIMING_COLUMNS)].sum(axis=1) <= trials["wall_time_s"] + 1e-6).all()
    assert "  stage adversarial_warmup (target day_city, seed 0): " in tiny_hiast_sweep["printed"]


@pytest.mark.integration
def test_include_default_gives_the_guard_the_default_configuration(ray_local, embedded_data_root: Path,
                                                                   tmp_path: Path) -> None:
    """A tiny source_only sweep over two learning rates that are not the default, with --include-default: the default
    configuration runs as a third trial, and every selection row names it as the guard's default candidate."""
    from raysel import store
    from raysel.registry import get_method
    from tests.sweep_runner import run_sweep_in

    code, printed = run_sweep_in(tmp_path, [
        "source_only", "--data", "digits", "--data-root", str(embedded_data_root), "--results", "results",
        "--name", "with-default", "--set", "learning_rate={grid: [0.0005, 0.002]}", "--set", "iterations=10",
        "--include-default", "--selection-size", "12", "--progress-interval", "5"])
    assert code == 0, printed
    assert "3 trials (the default configuration first)" in printed
    defaults = get_method("source_only").default_config()
    rows = store.sql("SELECT s.target, s.selector, s.default_trial_id, t.hp_learning_rate, t.hp_iterations "
                     "FROM selections s LEFT JOIN trials t "
                     "ON t.sweep_id = s.sweep_id AND t.trial_id = s.default_trial_id "
                     "WHERE s.sweep_id = 'with-default'", tmp_path / "results")
    assert len(rows) >= 1 and rows["default_trial_id"].notna().all(), rows
    assert rows["default_trial_id"].nunique() == 1  # one target, one default candidate for every selector
    assert (rows["hp_learning_rate"] == defaults.learning_rate).all()  # the swept hyperparameter at its default
    assert (rows["hp_iterations"] == 10).all()  # the fixed one as the space fixed it
    trials = store.load(tmp_path / "results", sweep_id="with-default")
    assert sorted(trials["hp_learning_rate"]) == sorted([0.0005, defaults.learning_rate, 0.002])
