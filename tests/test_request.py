"""The one checked sweep request: built once (CLI, Python, a study entry), frozen, saved as sweep.json and read back
equal; bad input is one line and exit 2 before Ray starts and before anything is written."""

from __future__ import annotations

import dataclasses
import doctest
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from raysel.errors import ConfigError, UserError
from raysel.request import (SETTINGS_FILE, SweepOptions, SweepRequest, latest_sweep_id, load_request,
                            read_request_file, request_differences, save_request)
from raysel.request_build import build_request, resume_request
from raysel.sweep import build_parser, options_from_arguments
from raysel.sweep import main as sweep_main

REPO = Path(__file__).resolve().parent.parent


def full_request(tmp_path: Path, **changes: Any) -> SweepRequest:
    """A request setting every kind of option (tuple-valued hyperparameter, image size, switches, MLflow)."""
    options = dict(method="hdrq", target=["day_city"],
                   overrides=["targets=[day_city, dusk_city]", "bits={grid: [W8A8, W4A4]}"],
                   data_root=tmp_path / "data", results=tmp_path / "results", name="full", image_size=[32, 64],
                   selectors=["merge_quality", "im"], search="random", num_samples=2, seed=3, workers=2,
                   cpus_per_worker=0.5, max_concurrent=2, amp="bf16", loader_workers=2, mlflow="sqlite:///m.db",
                   progress_interval=5, include_default=True)
    return build_request({**options, **changes})


def test_build_save_load_gives_an_equal_request(tmp_path: Path) -> None:
    request = full_request(tmp_path)
    path = save_request(request)
    assert path == tmp_path / "results" / "sweeps" / "full" / SETTINGS_FILE
    assert load_request(tmp_path / "results", "full") == request
    assert SweepRequest.from_dict(json.loads(path.read_text())) == request
    assert request.space.fixed_values()["targets"] == ("day_city", "dusk_city")


def test_the_request_is_frozen_all_the_way_down_and_holds_no_list(tmp_path: Path) -> None:
    request = full_request(tmp_path)

    def walk(value: Any) -> None:
        assert not isinstance(value, (list, dict, set)), value
        if dataclasses.is_dataclass(value):
            assert type(value).__dataclass_params__.frozen, type(value)
            for field in dataclasses.fields(value):
                walk(getattr(value, field.name))
        elif isinstance(value, tuple):
            for item in value:
                walk(item)

    walk(request)
    hash(request)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.results = "/elsewhere"  # type: ignore[misc]


def test_defaults_are_filled_once_paths_are_absolute_and_domains_canonical(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYSEL_DATA_ROOT", str(tmp_path / "data"))
    request = build_request(method="hiast", source="GAME")
    assert request.results == str(tmp_path / "results") and request.data.root == str(tmp_path / "data")
    assert (request.data.family, request.data.source, request.data.targets) == ("street_scenes", "game", ("day_city",))
    assert request.selectors == ("fmiou",) and request.sweep_id.startswith("hiast-")
    assert request.search.max_concurrent is None and request.space.path.endswith("search_spaces/hiast.yaml")
    assert build_request(method="gsda").data.family == "digits"
    assert build_request(method="hdrq").selectors == ("merge_quality", "fmiou")
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()  # building writes nothing


def test_raysel_results_is_the_default_store_of_the_sweep_and_of_every_command(tmp_path: Path, monkeypatch) -> None:
    """$RAYSEL_RESULTS, else ./results, wherever no results folder is given: the sweep (command line, Python, study
    file) writes where `raysel query|select|report|status` read (it used to write to ./results regardless)."""
    from raysel import report, select, status
    from raysel.orchestration.studies import study_from_mapping

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYSEL_RESULTS", str(tmp_path / "elsewhere"))
    expected = str(tmp_path / "elsewhere")
    assert build_request(method="hiast").results == expected
    assert build_request(options_from_arguments(build_parser().parse_args(["hiast"]))).results == expected
    study = study_from_mapping({"name": "s", "sweeps": [{"name": "a", "method": "source_only"}]})
    assert study.results == expected
    for module in (select, report, status):
        assert module.build_parser().parse_args(["x"] if module is not status else []).results == Path(expected)
    monkeypatch.delenv("RAYSEL_RESULTS")
    assert build_request(method="hiast").results == str(tmp_path / "results")


def test_a_python_caller_and_a_study_entry_build_what_the_command_line_builds(tmp_path: Path) -> None:
    argv = ["source_only", "--set", "iterations=2", "--target", "day_city", "dusk_city", "--results",
            str(tmp_path), "--name", "same", "--selector", "im"]
    from_cli = build_request(options_from_arguments(build_parser().parse_args(argv)))
    from_python = build_request(method="source_only", overrides=["iterations=2"], target=["day_city", "dusk_city"],
                                results=tmp_path, name="same", selectors=["im"])
    from_entry = build_request({"method": "source_only", "overrides": ["iterations=2"], "name": "same",
                                "target": ["day_city", "dusk_city"], "results": str(tmp_path), "selectors": "im"})
    assert from_cli == from_python == from_entry
    again = build_request(options_from_arguments(build_parser().parse_args(from_cli.command_arguments())))
    assert again == from_cli  # the reproduce command of the report builds the same request


def test_a_space_given_as_a_mapping_is_checked_like_a_file() -> None:
    request = build_request(method="source_only", space={"learning_rate": {"grid": [1e-3, 2e-3]}},
                            results="/tmp/raysel-unused")
    assert request.expected_trials() == 2 and request.space.path is None
    with pytest.raises(ConfigError, match=r"^space: hyperparameter 'learning_rate': value -1"):
        build_request(method="source_only", space={"learning_rate": -1})


def test_an_unknown_python_option_suggests_the_near_miss() -> None:
    with pytest.raises(ConfigError, match=r"unknown sweep option 'num_sample'; did you mean 'num_samples'"):
        build_request(method="source_only", num_sample=3)
    with pytest.raises(ConfigError, match=r"--num-samples must be an integer >= 1, got '3'"):
        build_request(SweepOptions(method="source_only", num_samples="3"))  # type: ignore[arg-type]


def test_a_candidate_the_methods_own_validate_refuses_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build_request(method="hdrq", overrides=["barrier_points={grid: [0, 2]}"], results=tmp_path)
    message = str(caught.value)
    assert "with --set barrier_points={grid: [0, 2]}" in message and "barrier_points=2 (the rest fixed)" in message
    assert "barrier_points must be 0 (not measured) or >= 3" in message and "\n" not in message


def test_every_shipped_space_builds() -> None:
    from raysel.registry import method_names

    for name in method_names():
        assert build_request(method=name, results="/tmp/raysel-unused").expected_trials() >= 1


# --------------------------------------------------------------------------------------------------------------
# --include-default: the method's default configuration as the first candidate
# --------------------------------------------------------------------------------------------------------------


def test_include_default_is_one_extra_trial_per_target_and_reads_back(tmp_path: Path) -> None:
    request = build_request(method="hiast", target=["day_city", "dusk_city"], num_samples=2, include_default=True,
                            results=tmp_path, name="with-default")
    plain = dataclasses.replace(request, search=dataclasses.replace(request.search, include_default=False))
    grid_points = request.space.num_grid_points()  # the shipped hiast space: 3 x 2
    assert plain.expected_trials() == grid_points * 2 * 2
    assert request.expected_trials() == (grid_points * 2 + 1) * 2
    assert (request.search.tune_num_samples, plain.search.tune_num_samples) == (3, 2)
    optuna = build_request(method="hiast", search="optuna", num_samples=5, include_default=True, results=tmp_path)
    assert optuna.expected_trials() == 6 and optuna.search.tune_num_samples == 6
    saved = request.to_dict()
    assert saved["search"]["include_default"] is True and SweepRequest.from_dict(saved) == request
    # a sweep.json written before the option existed has no such key: the sweep ran without the default
    del saved["search"]["include_default"]
    assert SweepRequest.from_dict(saved) == plain
    assert request_differences(plain, request) == ["search.include_default (stored False, now True)"]
    assert request.command_arguments()[-1] == "--include-default"
    assert "--include-default" not in plain.command_arguments()


def test_the_command_line_python_and_a_study_entry_set_include_default_alike(tmp_path: Path) -> None:
    argv = ["gsda", "--include-default", "--results", str(tmp_path), "--name", "same"]
    from_cli = build_request(options_from_arguments(build_parser().parse_args(argv)))
    from_python = build_request(method="gsda", include_default=True, results=tmp_path, name="same")
    from_entry = build_request({"method": "gsda", "include_default": True, "results": str(tmp_path), "name": "same"})
    assert from_cli == from_python == from_entry and from_cli.search.include_default
    assert not build_request(options_from_arguments(build_parser().parse_args(argv[:1]))).search.include_default
    with pytest.raises(ConfigError, match=r"^--include-default is on or off \(true or false\), got 'yes'$"):
        build_request(method="gsda", include_default="yes")


def test_the_default_point_is_the_methods_defaults_that_the_guard_recognises() -> None:
    """default_point reads the defaults the guarded decision compares trials with (Method.default_config()): a trial
    run at the point is the guard's default candidate."""
    import pandas as pd

    from raysel.registry import get_method
    from raysel.request_build import default_point
    from raysel.selection.guarded import default_trial_ids

    hiast = get_method("hiast")
    space = build_request(method="hiast", overrides=["alpha={grid: [0.3, 0.7]}", "gamma={choice: [4.0, 16.0]}",
                                                     "k=12", "lambda_i=0.5", "lambda_cst=0.1"]).space
    defaults = hiast.default_config()
    point = default_point(hiast, space)
    assert point == {"alpha": defaults.alpha, "gamma": defaults.gamma} == {"alpha": 0.5, "gamma": 8.0}
    trials = pd.DataFrame({"trial_id": ["t0", "t1", "t2"], "target": "day_city", "status": "finished",
                           "hp_alpha": [0.3, point["alpha"], 0.7], "hp_gamma": [4.0, point["gamma"], 16.0]})
    assert default_trial_ids(trials, defaults, space.swept_names()) == {"day_city": "t1"}

    gsda = get_method("gsda")  # its shipped space: alpha and beta gridded, groups drawn
    gsda_space = build_request(method="gsda").space
    assert default_point(gsda, gsda_space) == {name: getattr(gsda.default_config(), name)
                                               for name in ("alpha", "beta", "groups")}
    assert default_point(gsda, build_request(method="gsda", overrides=["alpha=0.1", "beta=1.0", "groups=3"]).space) \
        == {}  # nothing swept: an empty point, and the space's one configuration runs once more


def test_grid_and_random_search_run_a_default_outside_the_space_and_optuna_refuses_it() -> None:
    from raysel.registry import get_method
    from raysel.request_build import default_point

    outside = ["alpha={grid: [0.3, 0.7]}", "gamma={uniform: [10.0, 16.0]}"]
    for search in ("grid", "random"):  # Tune's BasicVariantGenerator evaluates the point as given
        request = build_request(method="hiast", search=search, overrides=outside, include_default=True)
        assert {"alpha": 0.5, "gamma": 8.0}.items() <= default_point(get_method("hiast"), request.space).items()
    with pytest.raises(ConfigError) as refused:
        build_request(method="hiast", search="optuna", overrides=["alpha={grid: [0.3, 0.5]}", *outside[1:]],
                      include_default=True)
    message = str(refused.value)
    assert message.startswith("--include-default: hyperparameter 'gamma' has the default 8.0, which is not inside "
                              "its space (uniform [10.0, 16.0])") and "\n" not in message
    assert "--search optuna evaluates only values inside the space" in message
    build_request(method="hiast", search="optuna", overrides=outside)  # without --include-default: nothing to check
    inside = build_request(method="hiast", search="optuna", include_default=True,
                           overrides=["alpha={grid: [0.3, 0.5]}", "gamma={uniform: [4.0, 8.0]}",
                                      "k={randint: [12, 14]}"])  # range bounds are inclusive, as Optuna's
    assert {"alpha": 0.5, "gamma": 8.0, "k": 14}.items() <= default_point(get_method("hiast"), inside.space).items()


def test_resume_reads_the_saved_request_back_with_this_runs_progress_and_mlflow(tmp_path: Path) -> None:
    saved = full_request(tmp_path, name="hdrq-1")  # without --name, --resume takes the latest METHOD-* sweep
    save_request(saved)
    resumed = resume_request(method="hdrq", results=tmp_path / "results", progress_interval=120)
    assert resumed == dataclasses.replace(saved, progress_interval_s=120.0, mlflow_uri=None)
    assert latest_sweep_id(tmp_path / "results", "hdrq") == "hdrq-1" and latest_sweep_id(tmp_path, "sfda") is None
    with pytest.raises(ConfigError, match="--resume: sweep 'hdrq-1' is a hdrq sweep, not hiast"):
        resume_request(method="hiast", name="hdrq-1", results=tmp_path / "results")
    with pytest.raises(UserError, match="--resume: no previous sfda sweep under"):
        resume_request(method="sfda", results=tmp_path / "results")


def test_a_sweep_json_of_an_older_raysel_reads_as_a_request(tmp_path: Path) -> None:
    path = tmp_path / SETTINGS_FILE
    path.write_text(json.dumps({
        "settings": {"method": "hiast", "sweep_id": "old", "results": "/r", "targets": ["day_city", "dusk_city"],
                     "run": {"method": "hiast", "dataset": "street_scenes", "data_root": "/d", "source": "game",
                             "model": None, "image_size": [32, 64], "seed": 1, "selection_size": 12,
                             "acceleration": {"amp": "off"}},
                     "resources": {"workers": 1, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0, "executor": "auto"},
                     "max_failures": 1, "selectors": ["fmiou"], "space_path": "/s.yaml", "overrides": ["rounds=1"]},
        "search": {"search": "grid", "scheduler": "asha", "num_samples": 2, "max_concurrent": None, "seed": 1,
                   "asha_metric": "target_confidence", "asha_grace_epochs": 1, "objective": "consistency",
                   "startup_trials": 10},
        "space": {"alpha": {"grid": [0.3, 0.5]}, "rounds": 1}}))
    request = read_request_file(path)
    assert request.expected_trials() == 2 * 2 * 2 and request.data.image_size == (32, 64)
    assert request.search.report_score == "consistency" and request.acceleration.amp == "off"
    assert request.space.overrides == ("rounds=1",) and request.run_fields()["seed"] == 1
    path.write_text("{\"format\": 2}")
    with pytest.raises(UserError, match=f"cannot read the sweep request {path}: KeyError"):
        read_request_file(path)


def test_reading_a_request_and_raysel_status_import_neither_torch_nor_ray() -> None:
    script = ("import sys\nimport raysel.request, raysel.status, raysel.sweep\n"
              "loaded = sorted(name for name in ('torch', 'ray') if name in sys.modules)\n"
              "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_docstring_examples_run() -> None:
    """The runnable examples of SweepRequest, build_request, run_sweep, run_local and select_sweep."""
    import raysel.execution.local
    import raysel.request
    import raysel.request_build
    import raysel.orchestration.pipeline
    import raysel.selection.decision

    for module in (raysel.request, raysel.request_build, raysel.orchestration.pipeline, raysel.execution.local,
                   raysel.selection.decision):
        results = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert results.failed == 0, module.__name__
        assert results.attempted >= 2, module.__name__


def test_run_local_runs_one_candidate_of_a_request(tiny_roots: dict[str, Path], tmp_path: Path) -> None:
    from raysel.execution.local import run_local

    request = build_request(method="source_only", data="digits", data_root=tiny_roots["digits"],
                            overrides=["iterations=2", "batch_size=4"], selection_size=4, results=tmp_path)
    run = run_local(request, {"learning_rate": 2e-3}, output_dir=tmp_path / "run")
    assert run.final["status"] == "finished" and Path(run.final["checkpoint_path"]).parent == tmp_path / "run"
    assert run.reports and 0.0 <= run.final["heldout_accuracy"] <= 1.0


# --------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, before Ray starts, nothing written
# --------------------------------------------------------------------------------------------------------------

BAD_INPUT = [
    pytest.param(["source_only", "--selector", "fmiuo"], ["--selector", "did you mean 'fmiou'", "valid choices:",
                                                           "consistency"], id="unknown-selector"),
    pytest.param(["source_only", "--objective", "target_confidense"],
                 ["--objective", "did you mean 'target_confidence'", "consistency, classmix_consistency"],
                 id="unknown-objective"),
    pytest.param(["source_only", "--objective", "mixval"],
                 ["--objective", "segmentation trials do not compute 'mixval'", "classification only",
                  "did you mean 'classmix_consistency'",
                  "valid choices for segmentation: target_confidence, merge_quality, consistency, "
                  "classmix_consistency"],
                 id="classification-score-as-segmentation-objective"),
    pytest.param(["gsda", "--data", "digits", "--objective", "classmix_consistency"],
                 ["--objective", "classification trials do not compute 'classmix_consistency'", "segmentation only",
                  "did you mean 'mixval'",
                  "valid choices for classification: target_confidence, merge_quality, consistency, mixval"],
                 id="segmentation-score-as-classification-objective"),
    pytest.param(["source_only", "--objective", "fmiou"],
                 ["--objective fmiou is a sweep-level selector", "use one of target_confidence"],
                 id="sweep-level-selector-as-objective"),
    pytest.param(["hdrq", "--scheduler", "asha", "--objective", "merge_quality"],
                 ["--scheduler asha", "'merge_quality' exists only once a trial has ended", "--scheduler fifo",
                  "target_confidence, consistency, classmix_consistency"], id="asha-with-merge-quality"),
    pytest.param(["source_only", "--search", "optuna", "--target", "day_city", "dusk_city"],
                 ["--search optuna tunes one target at a time", "--target lists 2 (day_city, dusk_city)",
                  "--search grid or random"], id="optuna-with-several-targets"),
    pytest.param(["source_only", "--set", "alpha=0.5"],
                 ["--set alpha=0.5: 'alpha' is a hyperparameter of", "hiast", "not of source_only",
                  "valid keys for source_only:", "learning_rate"], id="set-key-of-another-method"),
    pytest.param(["source_only", "--set", "learnig_rate=0.1"],
                 ["--set learnig_rate=0.1", "did you mean 'learning_rate'", "valid keys for source_only"],
                 id="set-key-near-miss"),
    pytest.param(["source_only", "--set", "learning_rate=-1"],
                 ["--set learning_rate=-1", "'learning_rate'", "must be > 0"], id="set-value-out-of-range"),
    pytest.param(["source_only", "--target", "day_ctiy"], ["--target", "did you mean 'day_city'", "foggy_city"],
                 id="unknown-target"),
    pytest.param(["hiast", "--search", "optuna", "--include-default", "--set", "alpha={grid: [0.3, 0.7]}"],
                 ["--include-default: hyperparameter 'alpha' has the default 0.5", "grid [0.3, 0.7]",
                  "--search optuna evaluates only values inside the space", "add 0.5 to the space",
                  "--search grid or random"], id="include-default-outside-an-optuna-grid"),
    pytest.param(["gsda", "--search", "optuna", "--include-default", "--set", "alpha={loguniform: [0.05, 0.5]}"],
                 ["--include-default: hyperparameter 'alpha' has the default 0.02", "loguniform [0.05, 0.5]",
                  "--search optuna"], id="include-default-outside-an-optuna-range"),
    pytest.param(["source_only", "--include-default", "--set", "batch_size={grid: [8, 16]}"],
                 ["--include-default: source_only has no default for the swept hyperparameter 'batch_size'",
                  "its default is None", "--set batch_size=VALUE", "without --include-default"],
                 id="include-default-without-a-default"),
]


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and mtime (empty when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


@pytest.fixture
def ray_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any ``ray.init`` (starting or joining Ray) fails the test; Ray is not initialized before or after."""
    import ray

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray was started before the request was checked")

    assert not ray.is_initialized()
    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert not ray.is_initialized()


@pytest.mark.parametrize("argv, fragments", BAD_INPUT)
def test_bad_input_is_one_line_exit_2_before_ray_and_nothing_written(argv: list[str], fragments: list[str],
                                                                     tmp_path: Path, capsys, ray_refused) -> None:
    results, data_root = tmp_path / "results", tmp_path / "data"
    (results / "sweeps" / "earlier").mkdir(parents=True)
    (results / "sweeps" / "earlier" / SETTINGS_FILE).write_text("{}")
    before = tree(results)
    with pytest.raises(SystemExit) as exited:
        sweep_main([*argv, "--results", str(results), "--data-root", str(data_root)])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and not captured.out, captured
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert tree(results) == before and not data_root.exists()


def test_a_missing_results_folder_stays_missing_after_bad_input(tmp_path: Path, capsys, ray_refused) -> None:
    with pytest.raises(SystemExit):
        sweep_main(["source_only", "--selector", "fmiuo", "--results", str(tmp_path / "results")])
    assert "--selector" in capsys.readouterr().err and not (tmp_path / "results").exists()


def test_argument_errors_and_help_import_neither_torch_nor_ray() -> None:
    script = ("import sys\nfrom raysel.sweep import main\n"
              "for argv in (['--help'], ['hiast', '--search', 'bayes']):\n"
              "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
              "loaded = sorted(name for name in ('torch', 'ray') if name in sys.modules)\n"
              "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "invalid choice: 'bayes' (choose from grid, random, optuna)" in result.stderr.replace("'grid', 'random', "
                                                                                               "'optuna'",
                                                                                               "grid, random, optuna")


def test_the_reproduce_command_of_a_request_is_a_valid_command_line(tmp_path: Path) -> None:
    request = full_request(tmp_path)
    words = request.command_arguments()
    assert words[:5] == ["hdrq", "--name", "full", "--results", str(tmp_path / "results")]
    assert build_request(options_from_arguments(build_parser().parse_args(shlex.split(shlex.join(words))))) \
        == dataclasses.replace(request, mlflow_uri=None, progress_interval_s=30.0)
