"""The pre-registered rule that recommends a default selector (issue 29 item 3): development sweeps only, mean regret
subject to a worst-regret bound and no collapsed pick, ties by Kendall τ; stated verbatim in the README."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from raysel.selection.evaluate import DEFAULT_BASELINE, GUARDED_DECISION
from raysel.selection.recommendation import (RULE, RULE_FIXED_ON, WORST_REGRET_BOUND, SweepEvidence,
                                             recommend_selector)

REPO = Path(__file__).resolve().parent.parent


def evaluation(regret: float, tau: float = 0.5) -> dict[str, float]:
    """One selector's evaluation on one sweep (regret in points)."""
    return {"regret": regret, "gap_closed": 0.9, "kendall_tau": tau, "spearman_rho": tau, "top3_regret": 0.0}


def sweep(regrets: dict[str, float], taus: dict[str, float] | None = None, collapsed: tuple[str, ...] = (),
          role: str = "development") -> SweepEvidence:
    """A sweep's evidence: each selector's regret (and τ), which picks collapsed, and the default's regret."""
    taus = taus or {}
    evaluations = {name: evaluation(regret, taus.get(name, 0.5)) for name, regret in regrets.items()}
    evaluations[DEFAULT_BASELINE] = evaluation(0.0, math.nan)
    collapses = {name: float(name in collapsed) for name in regrets}
    return SweepEvidence(role, evaluations, collapses)


def test_lowest_mean_regret_among_the_eligible_wins() -> None:
    """`low_mean` has the lowest mean but one bad sweep (worst above the bound); `collapser` a collapsed pick;
    `steady` the lowest mean of the eligible ones; the guarded decision row is never a candidate."""
    evidence = [sweep({"low_mean": 0.0, "collapser": 0.0, "steady": 1.2, "slow": 1.5, GUARDED_DECISION: 0.0}),
                sweep({"low_mean": 0.0, "collapser": 0.1, "steady": 1.2, "slow": 1.5, GUARDED_DECISION: 0.0},
                      collapsed=("collapser",)),
                sweep({"low_mean": 3.5, "collapser": 0.0, "steady": 1.3, "slow": 1.5, GUARDED_DECISION: 0.0})]
    names = ["low_mean", "collapser", "steady", "slow", GUARDED_DECISION, DEFAULT_BASELINE]
    recommendation = recommend_selector(evidence, names)
    assert recommendation.selector == "steady" and recommendation.eligible == ("steady", "slow")
    assert recommendation.excluded == {"low_mean": f"worst regret 3.50 > {WORST_REGRET_BOUND:g} points",
                                       "collapser": "1 pick(s) below the source-only model"}
    assert recommendation.sweeps == 3 and "lowest mean regret (1.23 points" in recommendation.reason


def test_ties_at_the_tables_precision_go_to_the_higher_kendall_tau() -> None:
    evidence = [sweep({"a": 1.001, "b": 1.0}, taus={"a": 0.9, "b": 0.2}), sweep({"a": 1.0, "b": 1.0})]
    assert recommend_selector(evidence, ["a", "b"]).selector == "a"  # 1.0005 vs 1.0: tied at 0.01, τ decides
    apart = [sweep({"a": 1.2, "b": 1.0}, taus={"a": 0.9, "b": 0.2})]
    assert recommend_selector(apart, ["a", "b"]).selector == "b"


def test_a_selector_that_skipped_a_development_sweep_is_not_eligible() -> None:
    evidence = [sweep({"a": 0.0, "b": 0.4}), sweep({"b": 0.4})]
    recommendation = recommend_selector(evidence, ["a", "b"])
    assert recommendation.selector == "b" and recommendation.excluded == {"a": "scored 1 of 2 development sweeps"}


def test_no_eligible_selector_means_no_recommendation() -> None:
    recommendation = recommend_selector([sweep({"a": 5.0, "b": 4.0})], ["a", "b"])
    assert recommendation.selector is None and recommendation.eligible == ()
    assert recommendation.reason == "no selector is eligible over 1 development sweep(s)"
    assert recommend_selector([], ["a"]).selector is None


@pytest.mark.parametrize("role", ["test", "Test", "held-out"])
def test_the_rule_refuses_any_sweep_that_is_not_a_development_sweep(role: str) -> None:
    evidence = [sweep({"a": 0.0}), sweep({"a": 0.0}, role=role)]
    with pytest.raises(ValueError, match=f"development sweeps only; got {role} sweep"):
        recommend_selector(evidence, ["a"])


def test_the_readme_states_the_rule_verbatim_with_its_date() -> None:
    readme = re.sub(r"\s+", " ", (REPO / "README.md").read_text())
    section = readme[readme.index("How the default selector is chosen"):]
    assert RULE in section[:2000] and RULE_FIXED_ON in section[:2000]
