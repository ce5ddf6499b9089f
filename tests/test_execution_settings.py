"""raysel.execution.settings and .tuner: resources arithmetic, validation, save/load, seeded search (fast)."""

from __future__ import annotations

import pytest

from raysel.errors import ConfigError, UserError
from raysel.execution.settings import (DRIVER_CPU, Resources, SearchSettings, SweepSettings, latest_sweep_id,
                                       load_settings, save_settings)
from raysel.execution.tuner import search_and_scheduler


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


@pytest.mark.parametrize("kwargs, fragment", [({"search": "bayes"}, "--search"), ({"scheduler": "pbt"}, "--scheduler")])
def test_bad_search_settings_are_config_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        SearchSettings(**kwargs).validate()
    with pytest.raises(ConfigError, match=fragment):
        search_and_scheduler(SearchSettings(**kwargs))


def test_settings_round_trip_through_the_sweep_folder(tmp_path) -> None:
    settings = SweepSettings(method="hiast", sweep_id="hiast-1", results=str(tmp_path), run={"dataset": "digits"},
                             targets=["a", "b"], resources=Resources(workers=2, cpus_per_worker=0.5),
                             selectors=("fmiou", "im"), overrides=["alpha=0.5"])
    search = SearchSettings(search="random", num_samples=3, seed=7)
    save_settings(settings, search, {"alpha": 0.5})
    assert load_settings(str(tmp_path), "hiast-1") == (settings, search, {"alpha": 0.5})
    assert latest_sweep_id(str(tmp_path), "hiast") == "hiast-1" and latest_sweep_id(str(tmp_path), "sfda") is None
    with pytest.raises(UserError, match="no previous sweep named 'other'"):
        load_settings(str(tmp_path), "other")


def test_seed_fixes_the_sampled_configurations() -> None:
    from ray import tune
    from ray.tune.experiment import Experiment

    def draw(seed: int) -> list[dict]:
        search_alg, _ = search_and_scheduler(SearchSettings(search="random", seed=seed))
        space = {"alpha": tune.uniform(0, 1), "k": tune.choice([10, 12, 14, 16, 18])}
        search_alg.add_configurations([Experiment("draw", run=lambda config: None, config=space, num_samples=6)])
        configs = []
        while (trial := search_alg.next_trial()) is not None:
            configs.append(trial.config)
        return configs

    assert len(draw(3)) == 6 and draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_optuna_objective_can_be_a_trial_scored_selector() -> None:
    search = SearchSettings(search="optuna", objective="consistency")
    search_alg, scheduler = search_and_scheduler(search)
    assert search.objective_metric == "score_consistency" and search_alg.metric == "score_consistency"
    assert search.report_score is None  # without ASHA the score is computed once, at the trial's end
    assert search_alg._sampler._n_startup_trials == 10  # Optuna's default unless --startup-trials says otherwise
    assert search_and_scheduler(SearchSettings(search="optuna", startup_trials=3))[0]._sampler._n_startup_trials == 3
    with pytest.raises(ConfigError, match="--startup-trials must be at least 1"):
        SearchSettings(search="optuna", startup_trials=0).validate()
    assert SearchSettings(search="optuna").objective_metric == "target_confidence"
    with pytest.raises(ConfigError, match="--objective must be one of target_confidence"):
        SearchSettings(objective="heldout_miou").validate()  # never a held-out score


@pytest.mark.parametrize("objective", ["consistency", "mixval"])
def test_asha_compares_trials_on_a_trial_scored_objective_computed_at_every_report(objective: str) -> None:
    search = SearchSettings(search="optuna", scheduler="asha", objective=objective)
    search_alg, scheduler = search_and_scheduler(search)
    assert search.report_score == objective and search.scheduler_metric == f"score_{objective}"
    assert scheduler.metric == f"score_{objective}" and search_alg.metric == f"score_{objective}"
    confidence = SearchSettings(scheduler="asha")
    assert confidence.report_score is None and search_and_scheduler(confidence)[1].metric == "target_confidence"


def test_objectives_that_cannot_work_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="fmiou is a sweep-level selector") as error:
        SearchSettings(search="optuna", objective="fmiou").validate()
    assert "\n" not in str(error.value) and "use one of target_confidence" in str(error.value)
    with pytest.raises(ConfigError, match="'merge_quality' exists only once a trial has ended") as error:
        SearchSettings(scheduler="asha", objective="merge_quality").validate()
    assert "\n" not in str(error.value) and "--scheduler fifo" in str(error.value)
    SearchSettings(scheduler="fifo", objective="merge_quality").validate()  # Optuna reads it from the final report
