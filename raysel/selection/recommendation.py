"""The pre-registered rule that recommends a default selector from development sweeps (issue 29 item 3).

The rule was written down, here and in the README ("How the default selector is chosen"), on :data:`RULE_FIXED_ON`,
before the 3-seed development tables were computed; :func:`recommend_selector` is its only implementation, and the
benchmark (``benchmarks/selection_wide.py``) applies it to development sweeps and reports the test tables as its
confirmation or refutation. Held-out scores enter only as the regrets the benchmark measured on *development*
targets: :func:`recommend_selector` refuses evidence of any other role, so a test target can never choose.

Why this statistic. Mean regret is what a user loses on average by trusting the selector. Alone it would accept a
selector that is excellent on most sweeps and picks a broken model on one, and wide sweeps exist to expose exactly
that failure (confidence-type selectors reward collapsed models); a collapsed pick is a useless model, worse than any
small gain in the mean. So two constraints come first: worst regret at most :data:`WORST_REGRET_BOUND` points and no
pick below the source-only model. A tail statistic (the CVaR of regret) says the same less plainly: with 5
development sweeps per family at one seed, CVaR at 20 % *is* the worst sweep. Ties in mean regret are common (several
selectors pick the same candidates), so they are compared at the tables' precision, :data:`REGRET_PRECISION`, and
broken by mean Kendall τ, which says which selector ranks the whole sweep better (what a short-list relies on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from raysel.selection.evaluate import BASELINES, DECISIONS, SelectorSummary, count_collapsed, summarize_selectors

DEVELOPMENT_ROLE = "development"  # the only role the rule reads (benchmarks label sweeps development or test)
RULE_FIXED_ON = "2026-12-06"  # before the 3-seed development tables were computed
# Issue 13's goal for a recommended selector's worst regret on wide sweeps (points of mIoU or accuracy); it is also
# the low end of the seed-to-seed spreads of 2-6 mIoU reported for UDA segmentation (selection.md).
WORST_REGRET_BOUND = 3.0
MAX_COLLAPSED_PICKS = 0  # a pick below the source-only model is a broken model: none is allowed
REGRET_PRECISION = 0.01  # mean regrets closer than the tables print (two decimals) count as tied

RULE = ("On a family's development sweeps only, a label-free selector is eligible when it scored every one of them, "
        "none of its picks scored below the source-only model, and its worst regret is at most 3.0 points; the "
        "recommended selector is the eligible one with the lowest mean regret (compared at 0.01 points), ties broken "
        "by the higher mean Kendall τ, then the lower worst regret, then the name. When no selector is eligible "
        "there is no recommendation, and the default selector stays.")


@dataclass(frozen=True)
class SweepEvidence:
    """What one benchmark sweep says about the selectors: its role, every selector's (and baseline's) evaluation
    (:func:`raysel.selection.evaluate.evaluate_selector` keys) and, per name, whether its pick collapsed (1.0 or 0.0,
    :func:`raysel.selection.evaluate.collapse_indicators`; empty without a source-only reference)."""

    role: str
    evaluations: Mapping[str, Mapping[str, Any]]
    collapses: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Recommendation:
    """The rule's answer for one family: the recommended selector (None: none is eligible), why, the eligible ones
    in the rule's order, why each other one is not, and how many development sweeps it read."""

    selector: str | None
    reason: str
    eligible: tuple[str, ...]
    excluded: Mapping[str, str]
    sweeps: int


def _exclusion(row: SelectorSummary | None, collapsed: float, sweeps: int) -> str | None:
    """Why a selector is not eligible under :data:`RULE`, or None when it is."""
    if row is None or row.sweeps < sweeps:
        return f"scored {0 if row is None else row.sweeps} of {sweeps} development sweeps"
    if not math.isfinite(row.mean_regret):
        return "no finite regret"
    if collapsed > MAX_COLLAPSED_PICKS:
        return f"{collapsed:g} pick(s) below the source-only model"
    if row.worst_regret > WORST_REGRET_BOUND:
        return f"worst regret {row.worst_regret:.2f} > {WORST_REGRET_BOUND:g} points"
    return None


def _rule_order(row: SelectorSummary) -> tuple[float, float, float, str]:
    """Sort key of an eligible selector: mean regret at the tables' precision, then higher τ, lower worst, name."""
    tau = row.mean_kendall_tau if math.isfinite(row.mean_kendall_tau) else -math.inf
    return round(row.mean_regret / REGRET_PRECISION), -tau, row.worst_regret, row.name


def recommend_selector(evidence: Sequence[SweepEvidence], names: Sequence[str]) -> Recommendation:
    """Apply :data:`RULE` to one family's development sweeps; ``names`` are the label-free selectors to consider
    (baselines and decision rows are never candidates). Evidence of any other role is refused (ValueError): the rule
    must not see a test target."""
    roles = sorted({item.role for item in evidence if item.role != DEVELOPMENT_ROLE})
    if roles:
        raise ValueError(f"recommend_selector reads development sweeps only; got {', '.join(roles)} sweep(s): "
                         "test targets confirm or refute a recommendation, they never make one")
    if not evidence:
        return Recommendation(None, "no development sweep to apply the rule to", (), {}, 0)
    selectors = [name for name in dict.fromkeys(names) if name not in (*BASELINES, *DECISIONS)]
    rows = {row.name: row for row in summarize_selectors([item.evaluations for item in evidence], selectors)}
    collapses = [item.collapses for item in evidence]
    excluded: dict[str, str] = {}
    for name in selectors:
        why = _exclusion(rows.get(name), count_collapsed(collapses, name)[0], len(evidence))
        if why is not None:
            excluded[name] = why
    eligible = tuple(sorted((rows[name] for name in selectors if name not in excluded), key=_rule_order))
    if not eligible:
        return Recommendation(None, f"no selector is eligible over {len(evidence)} development sweep(s)", (),
                              excluded, len(evidence))
    best = eligible[0]
    reason = (f"lowest mean regret ({best.mean_regret:.2f} points; worst {best.worst_regret:.2f}) of "
              f"{len(eligible)} eligible selector(s) over {len(evidence)} development sweep(s)")
    return Recommendation(best.name, reason, tuple(row.name for row in eligible), excluded, len(evidence))


__all__ = ["DEVELOPMENT_ROLE", "RULE_FIXED_ON", "WORST_REGRET_BOUND", "MAX_COLLAPSED_PICKS", "REGRET_PRECISION",
           "RULE", "SweepEvidence", "Recommendation", "recommend_selector"]
