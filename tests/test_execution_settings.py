"""raysel.execution.tuner on a checked request: resources arithmetic, concurrency, seeded search, objectives (fast)."""

from __future__ import annotations

import dataclasses

import pytest

from raysel.execution.tuner import search_and_scheduler, trial_concurrency
from raysel.request import DRIVER_CPU, Resources, SearchPlan
from raysel.request_build import build_request


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
