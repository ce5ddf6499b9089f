"""Evaluation of selectors against held-out scores: regret, gap closed, Kendall τ, Spearman ρ, top-3 regret, and the
default-configuration and random-pick baselines."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from raysel.selection import evaluate
from raysel.selection.evaluate import evaluate_selector, evaluate_selectors, summarize_sweeps


def test_hand_computed_sweep():
    heldout = [0.40, 0.55, 0.50, 0.30]
    scores = [0.9, 0.7, 0.8, 0.1]  # selects candidate 0 (0.40); ranking by score: 0, 2, 1, 3
    result = evaluate_selector(scores, heldout)
    assert result["selected_index"] == 0
    assert result["regret"] == pytest.approx(15.0)  # (0.55 - 0.40) * 100 points
    assert result["gap_closed"] == pytest.approx((0.40 - 0.30) / (0.55 - 0.30))
    assert result["top3_regret"] == pytest.approx(0.0)  # the best (0.55) is among the top-3 scored
    # Pairs: (0,1) (0,2) (1,2) discordant, (0,3) (1,3) (2,3) concordant -> tau = (3 - 3) / 6
    assert result["kendall_tau"] == pytest.approx(0.0)
    # ranks score: [4,2,3,1], held-out: [2,4,3,1] -> d^2 = 4+4+0+0 = 8 -> rho = 1 - 6*8/(4*15)
    assert result["spearman_rho"] == pytest.approx(1 - 48 / 60)
    assert result["num_candidates"] == 4


def test_perfect_and_inverted_selectors():
    heldout = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    perfect = evaluate_selector(heldout * 7, heldout)
    assert perfect["regret"] == 0.0 and perfect["gap_closed"] == 1.0
    assert perfect["kendall_tau"] == pytest.approx(1.0) and perfect["spearman_rho"] == pytest.approx(1.0)
    inverted = evaluate_selector(-heldout, heldout)
    assert inverted["regret"] == pytest.approx(40.0) and inverted["gap_closed"] == 0.0
    assert inverted["kendall_tau"] == pytest.approx(-1.0)
    assert inverted["top3_regret"] == pytest.approx(20.0)  # top-3 scored are 0.1, 0.2, 0.3


def test_ties_nan_scores_and_constant_heldout():
    # NaN scores are never selected and rank last; ties go to the first candidate.
    result = evaluate_selector([np.nan, 0.5, 0.5], [0.9, 0.2, 0.4])
    assert result["selected_index"] == 1
    assert result["regret"] == pytest.approx(70.0)
    constant = evaluate_selector([0.1, 0.3], [0.5, 0.5])
    assert constant["gap_closed"] == 1.0 and constant["regret"] == 0.0  # every choice is optimal
    assert math.isnan(constant["kendall_tau"]) and math.isnan(constant["spearman_rho"])
    single = evaluate_selector([0.3], [0.6])
    assert single["regret"] == 0.0 and math.isnan(single["kendall_tau"])


def test_bad_input():
    with pytest.raises(ValueError, match="one score per candidate"):
        evaluate_selector([0.1, 0.2], [0.3])
    with pytest.raises(ValueError, match="finite"):
        evaluate_selector([0.1, 0.2], [0.3, np.nan])


def test_several_selectors_and_summary():
    heldout = [0.2, 0.6, 0.4]
    results = evaluate_selectors({"good": [1, 3, 2], "bad": [3, 1, 2]}, heldout)
    assert results["good"]["regret"] == 0.0 and results["bad"]["regret"] == pytest.approx(40.0)
    summary = summarize_sweeps([results["good"], results["bad"]])
    assert summary["regret"] == pytest.approx(20.0) and summary["num_sweeps"] == 2


# ---------------------------------------------------------------------------------------- baselines over sweeps


def test_default_configuration_regret_and_gap_closed():
    rows = evaluate.baseline_evaluations([0.30, 0.40, 0.35], default_heldout=0.35)
    assert rows[evaluate.DEFAULT_BASELINE]["regret"] == pytest.approx(5.0)
    assert rows[evaluate.DEFAULT_BASELINE]["gap_closed"] == pytest.approx(0.5)
    assert rows[evaluate.RANDOM_BASELINE]["regret"] == pytest.approx(5.0)  # mean 0.35
    assert math.isnan(rows[evaluate.RANDOM_BASELINE]["kendall_tau"])


def test_default_from_other_sweeps_may_beat_the_sweep_best():
    rows = evaluate.baseline_evaluations([0.30, 0.32], default_heldout=0.34)
    assert rows[evaluate.DEFAULT_BASELINE]["regret"] == pytest.approx(-2.0)
    assert rows[evaluate.DEFAULT_BASELINE]["gap_closed"] == pytest.approx(2.0)


def test_no_default_known_gives_no_default_row():
    assert evaluate.DEFAULT_BASELINE not in evaluate.baseline_evaluations([0.3, 0.4], default_heldout=None)


def test_equal_candidates_close_the_whole_gap():
    rows = evaluate.baseline_evaluations([0.3, 0.3], default_heldout=0.3)
    assert rows[evaluate.DEFAULT_BASELINE]["gap_closed"] == 1.0 and rows[evaluate.RANDOM_BASELINE]["regret"] == 0.0


def test_matches_defaults_compares_numbers_with_tolerance():
    frame = pd.DataFrame({"hp_alpha": [0.5, 0.5 + 1e-15, 0.7], "hp_k": pd.array([14, 12, 14], dtype="Int64")})
    mask = evaluate.matches_defaults(frame, {"alpha": 0.5, "k": 14}, ["alpha", "k"])
    assert mask.tolist() == [True, False, False]


def test_stored_evaluation_reads_a_selection_row_with_nan_for_undefined() -> None:
    row = {"selected_trial_id": "t1", "heldout_regret": 1.5, "heldout_gap_closed": 0.5, "heldout_kendall_tau": None}
    stored = evaluate.stored_evaluation(row)
    assert stored["regret"] == 1.5 and stored["selected_trial_id"] == "t1"
    assert math.isnan(stored["kendall_tau"]) and math.isnan(stored["top3_regret"])


def test_summarize_selectors_over_sweeps_and_the_best_one() -> None:
    def sweep(heldout, default, **regrets):
        rows = {name: {"regret": r, "gap_closed": 0.5, "kendall_tau": 0.1, "spearman_rho": 0.1, "top3_regret": 0.0}
                for name, r in regrets.items()}
        return {**rows, **evaluate.baseline_evaluations(heldout, default)}

    rows = evaluate.summarize_selectors([sweep([0.3, 0.4], 0.38, fmiou=2.0, im=0.0),
                                         sweep([0.2, 0.3], 0.29, fmiou=4.0, im=6.0)], ["fmiou", "im"])
    by_name = {row.name: row for row in rows}
    assert by_name["fmiou"].mean_regret == pytest.approx(3.0) and by_name["im"].worst_regret == pytest.approx(6.0)
    assert by_name["fmiou"].worse_than_default == 1 and by_name[evaluate.DEFAULT_BASELINE].worse_than_default is None
    # the most behind the default configuration on one sweep: fmiou 4.0 - 1.0; im 6.0 - 1.0 (and -2.0 on the other)
    assert by_name["fmiou"].most_behind_default == pytest.approx(3.0)
    assert by_name["im"].most_behind_default == pytest.approx(5.0)
    assert math.isnan(by_name[evaluate.DEFAULT_BASELINE].most_behind_default)
    assert evaluate.best_selector(rows) == "fmiou" and evaluate.best_selector(rows[2:]) is None


# ------------------------------------------------------------------------ wide sweeps: flat sweeps, collapsed picks


def test_spread_in_points_and_the_flat_flag() -> None:
    assert evaluate.heldout_spread([0.30, 0.355, 0.32]) == pytest.approx(5.5)
    assert evaluate.heldout_spread([0.4]) == 0.0
    assert evaluate.is_flat_sweep([0.300, 0.309])  # 0.9 points < 1
    assert not evaluate.is_flat_sweep([0.300, 0.310])  # exactly 1 point is not flat
    assert evaluate.is_flat_sweep([0.30, 0.33], min_spread=5.0)
    with pytest.raises(ValueError, match="at least one candidate"):
        evaluate.heldout_spread([])


def test_collapse_indicators_per_selector_and_baselines() -> None:
    heldout = [0.20, 0.45, 0.38, 0.41]  # source-only 0.40: candidates 0 and 2 collapsed
    rows = evaluate.collapse_indicators(heldout, {"im": 0, "fmiou": 1, "snd": None}, source_only=0.40,
                                        default_heldout=0.41)
    assert rows["im"] == 1.0 and rows["fmiou"] == 0.0 and "snd" not in rows
    assert rows[evaluate.RANDOM_BASELINE] == pytest.approx(0.5)
    assert rows[evaluate.ORACLE_BASELINE] == 0.0 and rows[evaluate.DEFAULT_BASELINE] == 0.0
    equal = evaluate.collapse_indicators([0.40, 0.5], {"im": 0}, source_only=0.40)  # equal to source-only: kept
    assert equal["im"] == 0.0 and evaluate.DEFAULT_BASELINE not in equal


def test_every_candidate_below_source_only_collapses_even_the_oracle() -> None:
    rows = evaluate.collapse_indicators([0.1, 0.2], {"im": 1}, source_only=0.3, default_heldout=0.25)
    assert rows == {"im": 1.0, evaluate.RANDOM_BASELINE: 1.0, evaluate.ORACLE_BASELINE: 1.0,
                    evaluate.DEFAULT_BASELINE: 1.0}


def test_unknown_source_only_gives_no_collapse_rows() -> None:
    assert evaluate.collapse_indicators([0.1, 0.2], {"im": 1}, source_only=None) == {}
    assert evaluate.collapse_indicators([0.1, 0.2], {"im": 1}, source_only=math.nan) == {}


def test_count_collapsed_over_sweeps() -> None:
    sweeps = [{"im": 1.0, evaluate.RANDOM_BASELINE: 0.25}, {"im": 0.0, evaluate.RANDOM_BASELINE: 0.5}, {}]
    assert evaluate.count_collapsed(sweeps, "im") == (1.0, 2)
    assert evaluate.count_collapsed(sweeps, evaluate.RANDOM_BASELINE) == (pytest.approx(0.75), 2)
    assert evaluate.count_collapsed(sweeps, "snd") == (0.0, 0)


def test_oracle_row_has_no_regret_and_is_a_baseline() -> None:
    row = evaluate.oracle_evaluation([0.2, 0.5])
    assert row["regret"] == 0.0 and row["gap_closed"] == 1.0
    summary = evaluate.summarize_selectors([{"im": {**row, "regret": 2.0}, evaluate.ORACLE_BASELINE: row}], ["im"])
    assert [r.name for r in summary] == ["im", evaluate.ORACLE_BASELINE]
    assert evaluate.best_selector(summary) == "im"  # never a baseline


def _summary(name: str, mean: float, worst: float, gap: float = 0.9, tau: float = 0.7) -> evaluate.SelectorSummary:
    return evaluate.SelectorSummary(name, mean, worst, gap, tau, tau, 0.0, 3, None, 0)


def test_wide_sweep_goals_need_strictly_better_mean_and_worst_than_fmiou_and_the_default() -> None:
    rows = [_summary("im", 1.0, 2.5), _summary("fmiou", 1.2, 2.5), _summary(evaluate.DEFAULT_BASELINE, 2.0, 4.0)]
    goals = dict(evaluate.wide_sweep_goals(rows[0], rows, collapsed=0))
    assert goals["mean regret ≤ 1.5"] and goals["worst regret ≤ 3.0"] and goals["no collapsed pick"]
    assert goals["better than the default configuration"]
    assert not goals["better than F-mIoU"]  # equal worst regret is not better
    assert dict(evaluate.wide_sweep_goals(rows[1], rows, collapsed=1)) == {
        "mean regret ≤ 1.5": True, "worst regret ≤ 3.0": True, "mean gap closed ≥ 0.85": True,
        "mean Kendall τ ≥ 0.6": True, "no collapsed pick": False, "better than F-mIoU": True,
        "better than the default configuration": True}
