"""benchmarks/selection_quality.py: the plan, the per-selector aggregation of its cases and its tables, on synthetic
sweeps (the baselines and the evaluation itself are tested in test_selection_evaluate.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import selection_quality as sq
from benchmarks._common import SweepCase, config_defaults
from raysel.selection.evaluate import BASELINES, DEFAULT_BASELINE, RANDOM_BASELINE


def evaluation(regret: float, gap: float = 0.5, tau: float = 0.0, trial: str | None = None) -> dict:
    return {"regret": regret, "gap_closed": gap, "kendall_tau": tau, "spearman_rho": tau, "top3_regret": 0.0,
            "selected_trial_id": trial}


def case(heldout: list[float], evaluations: dict, default: float | None, kind: str = "alpha",
         values: list | None = None) -> SweepCase:
    trial_ids = [f"t{i}" for i in range(len(heldout))]
    return SweepCase("hiast", 0, "day_city", kind, "sweep", trial_ids, heldout, evaluations, values or [],
                        default_heldout=default, default_in_sweep=default is not None)


def test_summary_means_worst_and_worse_than_default():
    cases = [
        case([0.3, 0.4], {"fmiou": evaluation(2.0, gap=0.8, tau=1.0), "im": evaluation(0.0, gap=1.0, tau=0.5)},
             default=0.38),  # default regret 2.0
        case([0.2, 0.3], {"fmiou": evaluation(4.0, gap=0.6, tau=0.0), "im": evaluation(6.0, gap=0.4, tau=-0.5)},
             default=0.29),  # default regret 1.0
    ]
    rows = {row.name: row for row in sq.summarize(cases, ["fmiou", "im"])}
    assert rows["fmiou"].mean_regret == pytest.approx(3.0) and rows["fmiou"].worst_regret == pytest.approx(4.0)
    assert rows["fmiou"].mean_gap_closed == pytest.approx(0.7) and rows["fmiou"].mean_kendall_tau == pytest.approx(0.5)
    assert rows["fmiou"].worse_than_default == 1 and rows["fmiou"].compared_with_default == 2  # 4.0 > 1.0
    assert rows["im"].worse_than_default == 1  # 6.0 > 1.0; 0.0 < 2.0
    assert rows[DEFAULT_BASELINE].mean_regret == pytest.approx(1.5)
    assert rows[DEFAULT_BASELINE].worse_than_default is None
    assert rows[RANDOM_BASELINE].mean_regret == pytest.approx(5.0)


def test_best_selector_is_the_lowest_mean_regret_and_never_a_baseline():
    cases = [case([0.3, 0.4], {"fmiou": evaluation(2.0), "im": evaluation(1.0), "snd": evaluation(1.0, gap=0.9)},
                  default=0.4)]  # the default has regret 0 but is a baseline
    rows = sq.summarize(cases, ["fmiou", "im", "snd"])
    assert sq.best_selector(rows) == "snd"  # tie on regret: higher gap closed wins
    assert sq.best_selector([row for row in rows if row.name in BASELINES]) is None


def test_nan_tau_is_skipped_in_the_mean():
    cases = [case([0.3, 0.4], {"fmiou": evaluation(1.0, tau=math.nan)}, default=None),
             case([0.3, 0.4], {"fmiou": evaluation(1.0, tau=0.4)}, default=None)]
    (fmiou, *_) = sq.summarize(cases, ["fmiou"])
    assert fmiou.mean_kendall_tau == pytest.approx(0.4) and fmiou.compared_with_default == 0


def test_picks_show_chosen_and_best_values():
    one = case([0.3, 0.5, 0.4], {"fmiou": evaluation(1.0, trial="t2")}, default=0.5, values=[0.1, 0.5, 0.9])
    assert sq.picks([one], "fmiou") == "0.9→0.5"


def test_one_at_a_time_entries_fix_the_others_at_defaults():
    defaults = {"alpha": 0.5, "gamma": 8.0, "k": 14, "lambda_i": 1.0, "lambda_cst": 0.5}
    entries = sq.one_at_a_time_entries("k", (10, 14, 18), defaults)
    assert entries == {"alpha": "0.5", "gamma": "8.0", "lambda_i": "1.0", "lambda_cst": "0.5",
                       "k": "{grid: [10, 14, 18]}"}


def test_plan_covers_table_8_for_every_seed_and_target(tmp_path):
    options = sq.RunOptions(results=tmp_path, data_root=tmp_path, targets=("day_city", "dusk_city"), seeds=(0, 1),
                            method_seeds=(0, 1), methods=("hiast",), budget="reduced", selection_size=None,
                            random_samples=12,
                            values=dict(sq.TABLE8_VALUES))
    plans = sq.build_plans(options)
    assert [plan.kind for plan in plans] == [*sq.HIAST_PARAMS, "random"] * 2
    assert sum(plan.expected_trials for plan in plans) == 2 * (5 * 5 + 12) * 2
    assert (plans[5].options["search"], plans[5].options["num_samples"]) == ("random", 12)
    assert len({plan.sweep_id for plan in plans}) == len(plans)
    defaults = config_defaults("hiast")
    assert all(defaults[name] in sq.TABLE8_VALUES[name] for name in sq.HIAST_PARAMS)


def test_other_methods_get_a_default_run_and_their_own_space(tmp_path):
    options = sq.RunOptions(results=tmp_path, data_root=tmp_path, targets=("day_city", "dusk_city"), seeds=(0,),
                            method_seeds=(0,), methods=("t2sda", "sfda"), budget="reduced", selection_size=None, random_samples=12,
                            values=dict(sq.TABLE8_VALUES))
    plans = sq.build_plans(options)
    assert [(plan.method, plan.kind) for plan in plans] == [("t2sda", "default"), ("t2sda", "space"),
                                                            ("sfda", "default"), ("sfda", "space")]
    default, space = plans[2], plans[3]
    assert default.expected_trials == 2 and space.expected_trials == 2 * 6  # sfda.yaml: a 2 x 3 grid
    fixed = {text.split("=")[0] for text in default.options["overrides"]}
    assert set(default.swept) <= fixed and "iterations" in fixed


def test_body_has_a_table_per_selector_and_the_goals(tmp_path):
    options = sq.RunOptions(results=tmp_path, data_root=tmp_path, targets=("day_city",), seeds=(0,),
                            method_seeds=(0,), methods=("hiast",), budget="quick", selection_size=12, random_samples=4,
                            values=dict(sq.TABLE8_VALUES))
    cases = [case([0.3, 0.4], {"fmiou": evaluation(0.5, trial="t0"), "im": evaluation(0.2, trial="t1")},
                  default=0.35, values=[0.1, 0.5]),
             case([0.3, 0.4], {"fmiou": evaluation(1.5), "im": evaluation(0.2)}, default=0.35, kind="random")]
    facts = sq.RunFacts(options, 2, 60.0, 4, 4, 0, {"hiast": 12.0}, 0.0, 1.0, 1.0)
    body = sq.format_body(cases, ["fmiou", "im"], facts)
    assert "| **im** | 0.20 |" in body and "| fmiou | 1.00 |" in body
    assert "F-mIoU mean regret 1.00 points (goal ≤ 1.0: met)" in body
    assert "### hiast: per swept hyperparameter" in body and "joint random" in body
    assert not any(line.startswith("## ") for line in body.splitlines())
    assert np.isfinite(facts.wall_seconds)
