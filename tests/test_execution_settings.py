"""raysel.execution.tuner on a checked request: resources arithmetic, concurrency, seeded search, objectives (fast)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from raysel.execution.tuner import HYPERPARAMETERS_KEY, search_and_scheduler, trial_concurrency
from raysel.registry import get_method
from raysel.request import DRIVER_CPU, Resources, SearchPlan, SweepRequest
from raysel.request_build import build_request, default_point


def test_single_worker_runs_inside_the_trial_and_several_use_train() -> None:
    assert not Resources(workers=1).uses_train
    assert Resources(workers=2).uses_train
    assert Resources(workers=1, executor="train").uses_train
    assert Resources(workers=2, cpus_per_worker=0.45).trial_cpus() == pytest.approx(DRIVER_CPU + 0.9)
    assert Resources(workers=1, cpus_per_worker=2).trial_cpus() == 2


def test_concurrency_is_the_asked_limit_else_what_local_cpus_fit_else_rays() -> None:
    request = build_request(method="source_only", cpus_per_worker=2.0, results="/tmp/raysel-unused")
    assert trial_concurrency(request, local_cpus=8.0) == 4
    assert trial_concurrency(request, local_cpus=1.0) == 1
    assert trial_concurrency(request, local_cpus=None) is None  # on a cluster Tune decides
    limited = dataclasses.replace(request, search=dataclasses.replace(request.search, max_concurrent=3))
    assert trial_concurrency(limited, local_cpus=8.0) == trial_concurrency(limited, local_cpus=None) == 3


def test_seed_fixes_the_sampled_configurations() -> None:
    from ray import tune
    from ray.tune.experiment import Experiment

    def draw(seed: int) -> list[dict]:
        search_alg, _ = search_and_scheduler(SearchPlan(algorithm="random", seed=seed))
        space = {"alpha": tune.uniform(0, 1), "k": tune.choice([10, 12, 14, 16, 18])}
        search_alg.add_configurations([Experiment("draw", run=lambda config: None, config=space, num_samples=6)])
        configs = []
        while (trial := search_alg.next_trial()) is not None:
            configs.append(trial.config)
        return configs

    assert len(draw(3)) == 6 and draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_optuna_objective_can_be_a_trial_scored_selector() -> None:
    search = build_request(method="source_only", search="optuna", objective="consistency",
                           results="/tmp/raysel-unused").search
    search_alg, scheduler = search_and_scheduler(search, max_concurrent=2)
    assert search.objective_metric == "score_consistency" and search_alg.searcher.metric == "score_consistency"
    assert search.report_score is None  # without ASHA the score is computed once, at the trial's end
    assert search_alg.searcher._sampler._n_startup_trials == 10  # Optuna's default unless --startup-trials says so
    assert search_and_scheduler(SearchPlan(algorithm="optuna", startup_trials=3))[0]._sampler._n_startup_trials == 3
    assert SearchPlan(algorithm="optuna").objective_metric == "target_confidence"


@pytest.mark.parametrize("objective, data", [("consistency", "street_scenes"),
                                             ("classmix_consistency", "street_scenes"), ("consistency", "digits"),
                                             ("mixval", "digits")])
def test_asha_compares_trials_on_a_trial_scored_objective_computed_at_every_report(objective: str, data: str) -> None:
    search = build_request(method="source_only", data=data, search="optuna", scheduler="asha", objective=objective,
                           results="/tmp/raysel-unused").search
    search_alg, scheduler = search_and_scheduler(search)
    assert search.report_score == objective and search.scheduler_metric == f"score_{objective}"
    assert scheduler.metric == f"score_{objective}" and search_alg.metric == f"score_{objective}"
    confidence = build_request(method="source_only", scheduler="asha", results="/tmp/raysel-unused").search
    assert confidence.report_score is None and search_and_scheduler(confidence)[1].metric == "target_confidence"


# --------------------------------------------------------------------------------------------------------------
# --include-default: the default configuration as Tune's points_to_evaluate
# --------------------------------------------------------------------------------------------------------------

HIAST_OUTSIDE_GRID = ["alpha={grid: [0.3, 0.7]}", "gamma={choice: [4.0, 16.0]}", "k=14", "lambda_i=1.0",
                      "lambda_cst=0.5"]  # alpha's and gamma's defaults (0.5, 8.0) are not among the values
HIAST_INSIDE = ["alpha={grid: [0.3, 0.5]}", "gamma={choice: [8.0, 16.0]}", "k=14", "lambda_i=1.0", "lambda_cst=0.5"]


def searcher_of(search_alg: Any) -> Any:
    """The Optuna searcher inside Tune's wrappers (deadline generator, concurrency limiter)."""
    while hasattr(search_alg, "searcher"):
        search_alg = search_alg.searcher
    return search_alg


@pytest.mark.parametrize("algorithm", ["grid", "random", "optuna"])
@pytest.mark.parametrize("deadline", [False, True])
def test_each_search_algorithm_gets_the_default_configuration_as_its_point(algorithm: str, deadline: bool,
                                                                           tmp_path: Path) -> None:
    overrides = HIAST_INSIDE if algorithm == "optuna" else HIAST_OUTSIDE_GRID
    request = build_request(method="hiast", search=algorithm, overrides=overrides, include_default=True,
                            results=tmp_path)
    point = default_point(get_method("hiast"), request.space, algorithm)
    assert point == {"alpha": 0.5, "gamma": 8.0}
    search_alg, _ = search_and_scheduler(request.search, max_concurrent=2, default_configuration=point,
                                         deadline_file=tmp_path / "deadline.json" if deadline else None)
    if algorithm == "optuna":  # a flat space: parameters named by their path in the param_space
        assert searcher_of(search_alg)._points_to_evaluate == [{"hp/alpha": 0.5, "hp/gamma": 8.0}]
    else:
        assert search_alg._points_to_evaluate == [{HYPERPARAMETERS_KEY: {"alpha": 0.5, "gamma": 8.0}}]
    plain = dataclasses.replace(request.search, include_default=False)
    assert searcher_of(search_and_scheduler(plain)[0])._points_to_evaluate == []
    with pytest.raises(ValueError, match="include_default is True, and the default configuration was not given"):
        search_and_scheduler(request.search)
    with pytest.raises(ValueError, match="include_default is False, and the default configuration was given"):
        search_and_scheduler(plain, default_configuration=point)


def proposed_configs(request: SweepRequest) -> list[dict]:
    """Every configuration Tune's search proposes for the request, in order, without starting Ray: the param_space
    the sweep builds, Tune's num_samples, each trial completed as soon as it is proposed."""
    from ray import tune
    from ray.tune.experiment import Experiment
    from ray.tune.search import SearchGenerator

    search = request.search
    targets = list(request.data.targets)
    param_space = {HYPERPARAMETERS_KEY: request.space.to_tune(search.algorithm),
                   "target": targets[0] if len(targets) == 1 else tune.grid_search(targets)}
    point = default_point(get_method(request.method), request.space, search.algorithm)
    search_alg, _ = search_and_scheduler(search, default_configuration=point)
    if search.algorithm == "optuna":
        search_alg = SearchGenerator(search_alg)  # as Tune wraps a Searcher
        search_alg.searcher.set_search_properties(search.objective_metric, "max", param_space)
    search_alg.add_configurations([Experiment("draw", run=lambda config: None, config=param_space,
                                              num_samples=search.tune_num_samples)])
    configs = []
    while len(configs) <= 100 and (trial := search_alg.next_trial()) is not None:
        configs.append(trial.config)
        if search.algorithm == "optuna":
            search_alg.on_trial_complete(trial.trial_id, {search.objective_metric: 0.5})
    return configs


@pytest.mark.parametrize("algorithm, targets, num_samples", [("grid", ["day_city"], 1),
                                                             ("grid", ["day_city", "dusk_city"], 1),
                                                             ("random", ["day_city", "dusk_city"], 2),
                                                             ("optuna", ["day_city"], 3)])
def test_the_default_configuration_is_one_extra_trial_first_as_the_request_counts(
        algorithm: str, targets: list[str], num_samples: int) -> None:
    """Ray 2.60 counts a point as one of num_samples (and, setting the grid's hyperparameters, as one trial per
    target): with one sample more the sweep runs its whole budget and the default configuration first, once per
    target, also where the defaults are outside a grid's values (grid and random search run them as given)."""
    overrides = HIAST_INSIDE if algorithm == "optuna" else HIAST_OUTSIDE_GRID
    request = build_request(method="hiast", search=algorithm, target=targets, num_samples=num_samples,
                            overrides=overrides, include_default=True, results="/tmp/raysel-unused")
    configs = proposed_configs(request)
    assert len(configs) == request.expected_trials()
    grid_points = 2 if algorithm != "optuna" else 1  # alpha's grid (a choice under Optuna)
    assert len(configs) == (grid_points * num_samples + 1) * len(targets)
    defaults = [config for config in configs if config[HYPERPARAMETERS_KEY]["alpha"] == 0.5
                and config[HYPERPARAMETERS_KEY]["gamma"] == 8.0]
    assert configs[:len(targets)] == defaults[:len(targets)]
    assert sorted(config["target"] for config in configs[:len(targets)]) == sorted(targets)
    assert all(config[HYPERPARAMETERS_KEY]["k"] == 14 for config in configs)  # fixed values stay
    if algorithm != "optuna":
        assert len(defaults) == len(targets)  # 0.5 is not a grid value: only the point runs it
