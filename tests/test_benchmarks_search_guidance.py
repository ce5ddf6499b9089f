"""benchmarks/search_guidance.py: the wide space and the paired table (fast), and `--budget quick` end to end on a real
local Ray (integration smoke test: Optuna guided by consistency vs random search, held-out read after the sweeps)."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import pytest

from benchmarks import search_guidance as sg


def test_wide_space_spans_two_decades_and_three_training_lengths() -> None:
    space = sg.wide_space("sfda", 60)
    assert space["learning_rate"] == "{loguniform: [2.5e-05, 0.0025]}"
    assert space["iterations"] == "{choice: [30, 60, 120]}"
    assert space["alpha"] == "{loguniform: [0.1, 10]}" and space["beta"] == "{loguniform: [0.05, 5]}"
    assert space["k_patches"] == "3" and "grid" not in "".join(space.values())  # Optuna takes no grid


def outcome(arm: str, seed: int, shipped: float, best: float) -> sg.RunOutcome:
    return sg.RunOutcome(arm, seed, 3, 0, shipped, best, "t0", {"consistency": 0.5}, 10.0)


def test_paired_table_differences_and_means() -> None:
    outcomes = [outcome("optuna", 0, 30.0, 35.0), outcome("random", 0, 28.0, 36.0),
                outcome("optuna", 1, 20.0, 25.0), outcome("random", 1, 24.0, 25.0)]
    table, means = sg.paired_table(outcomes, (0, 1))
    assert means["ds"] == pytest.approx(-1.0) and means["db"] == pytest.approx(-0.5)
    assert "| 0 | 30.00 | 28.00 | +2.00 | 35.00 | 36.00 | -1.00 |" in table
    assert "**-1.00**" in table


def test_each_task_reports_its_own_trial_scores_and_the_guide_must_be_one(capsys) -> None:
    """Street scenes store classmix_consistency (the segmentation probe), digits MixVal: never score_mixval on
    segmentation."""
    assert sg.trial_scored("street_scenes") == ("consistency", "classmix_consistency")
    assert sg.trial_scored("digits") == ("consistency", "mixval")
    table = sg.runs_table([outcome("optuna", 0, 30.0, 35.0)], sg.trial_scored("street_scenes"))
    assert "| τ consistency | τ classmix_consistency |" in table and "mixval |" not in table
    assert sg.main(["--budget", "short", "--guide", "mixval", "--no-write"]) == 2
    assert "--guide mixval: street_scenes trials do not compute it" in capsys.readouterr().err


@pytest.mark.integration
def test_quick_budget_runs_both_arms_and_reports_them(ray_local, embedded_data_root: Path, tmp_path: Path) -> None:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = sg.main(["--budget", "quick", "--workdir", str(tmp_path / "work"), "--data-root",
                        str(embedded_data_root)])
    text = printed.getvalue()
    assert code == 0, text[-4000:]
    assert "sweep 2/2" in text and "## search_guidance" in text and "Targets: digits `photo_digits`" in text
    outcomes = {plan.kind: sg.evaluate_run((tmp_path / "work").resolve(), plan, sg.GUIDE)
                for plan in sg.build_plans("quick", sg.BUDGETS["quick"], sg.ARMS, sg.GUIDE, embedded_data_root)}
    for arm, result in outcomes.items():
        assert result.finished == 2, (arm, result)
        assert 0.0 <= result.shipped <= result.best <= 100.0 and not math.isnan(result.shipped)
