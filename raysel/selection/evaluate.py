"""How good was a label-free choice? Compare selector scores with held-out scores of the same candidates.

Benchmarks only (SPEC §5): the held-out scores are an *input* here (computed by :mod:`raysel.heldout` and stored
with each trial); this module never opens a label file, and nothing in selection calls it before deciding.

Per sweep, with ``heldout`` as fractions in [0, 1] (mIoU or accuracy) and ``scores`` higher-is-better:

* ``regret`` = (best held-out − held-out of the top-scored candidate) × 100, in mIoU (accuracy) points;
* ``gap_closed`` = (selected − worst) / (best − worst): 1 picks the best, 0 the worst; defined as 1 when every
  candidate scores the same on held-out data (any choice is optimal, there is no gap to close);
* ``kendall_tau`` / ``spearman_rho`` between score and held-out (scipy.stats; NaN when either is constant);
* ``top3_regret`` = (best − max held-out among the three top-scored candidates) × 100.

The selected candidate is the highest score; NaN scores are never selected and count as the lowest score
(they rank last for τ/ρ); ties go to the first candidate.

Across sweeps (the selection benchmark): two baselines, keeping the *default configuration* (:func:`matches_defaults`
finds its trials) and the *expected random pick*; the sweep's own decisions next to them, the headline selector's pick
and the *guarded decision* (:func:`decision_evaluations`); :func:`summarize_selectors` aggregates per selector (mean
and worst regret, how often worse than the default) and :func:`best_selector` names a table's lowest mean regret.

Wide sweeps (issue 13 item 3): a sweep is *flat* when its held-out spread (best − worst) is under
:data:`FLAT_SPREAD_POINTS`; a *collapsed pick* is a chosen candidate whose held-out score is below the source-only
model's on the same target and seed (:func:`collapse_indicators`, :func:`count_collapsed`).

Score estimates (issue 29 item 6) are judged in :mod:`raysel.selection.evaluate_estimate`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

# matches_defaults reads no held-out value: it lives with the guard that also uses it, and is re-exported here.
from raysel.selection.guarded import matches_defaults  # noqa: F401
from raysel.selection.selectors import FMIoUSelector

POINTS = 100.0  # fractions -> mIoU points


def _ranked_order(scores: np.ndarray) -> np.ndarray:
    """Candidate indices from the highest score to the lowest (stable: ties keep input order; NaN last)."""
    keys = np.where(np.isnan(scores), -np.inf, scores)
    return np.argsort(-keys, kind="stable")


def _correlation(function, scores: np.ndarray, heldout: np.ndarray) -> float:
    """τ or ρ with NaN scores ranked lowest; NaN when fewer than two candidates or a constant input."""
    if scores.size < 2:
        return float("nan")
    keys = np.where(np.isnan(scores), -np.inf, scores)
    if np.all(keys == keys[0]) or np.all(heldout == heldout[0]):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(function(keys, heldout).statistic)


def evaluate_selector(scores: Sequence[float] | np.ndarray,
                      heldout: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Regret, gap closed, Kendall τ, Spearman ρ and top-3 regret of one selector on one sweep (see module doc)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    heldout = np.asarray(heldout, dtype=np.float64).reshape(-1)
    if scores.size == 0 or scores.size != heldout.size:
        raise ValueError(f"need one score per candidate with a held-out value; got {scores.size} scores and "
                         f"{heldout.size} held-out values")
    if not np.isfinite(heldout).all():
        raise ValueError("held-out values must be finite (evaluate only candidates with a held-out score)")
    order = _ranked_order(scores)
    selected = int(order[0])
    best, worst = float(heldout.max()), float(heldout.min())
    chosen = float(heldout[selected])
    gap_closed = 1.0 if best == worst else (chosen - worst) / (best - worst)
    return {
        "selected_index": selected,
        "regret": (best - chosen) * POINTS,
        "gap_closed": gap_closed,
        "kendall_tau": _correlation(stats.kendalltau, scores, heldout),
        "spearman_rho": _correlation(stats.spearmanr, scores, heldout),
        "top3_regret": (best - float(heldout[order[:3]].max())) * POINTS,
        "num_candidates": int(scores.size),
    }


def evaluate_selectors(scores_by_selector: Mapping[str, Sequence[float] | np.ndarray],
                       heldout: Sequence[float] | np.ndarray) -> dict[str, dict[str, float]]:
    """:func:`evaluate_selector` for several selectors of the same sweep."""
    return {name: evaluate_selector(scores, heldout) for name, scores in scores_by_selector.items()}


def summarize_sweeps(evaluations: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over sweeps (NaN-skipping; a metric NaN in every sweep stays NaN)."""
    keys = [key for key in ("regret", "gap_closed", "kendall_tau", "spearman_rho", "top3_regret")
            if any(key in evaluation for evaluation in evaluations)]
    summary = {}
    for key in keys:
        values = np.array([evaluation.get(key, np.nan) for evaluation in evaluations], dtype=np.float64)
        summary[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    summary["num_sweeps"] = float(len(evaluations))
    return summary


# --------------------------------------------------------------------------------------------------------------
# Baselines and aggregation over sweeps (the selection benchmark's tables)
# --------------------------------------------------------------------------------------------------------------

DEFAULT_BASELINE = "default configuration"
RANDOM_BASELINE = "random pick (expected)"
ORACLE_BASELINE = "oracle (held-out best)"
BASELINES = (DEFAULT_BASELINE, RANDOM_BASELINE, ORACLE_BASELINE)
# What a sweep decides per target besides each selector's pick: the headline selector's pick as it stands (unguarded)
# and the guarded decision (raysel.selection.guarded), evaluated side by side with the default configuration.
HEADLINE_DECISION = "headline decision"
GUARDED_DECISION = "guarded decision"
DECISIONS = (HEADLINE_DECISION, GUARDED_DECISION)
EVALUATION_KEYS = ("regret", "gap_closed", "kendall_tau", "spearman_rho", "top3_regret")


def baseline_evaluations(heldout: Sequence[float] | np.ndarray,
                         default_heldout: float | None) -> dict[str, dict[str, Any]]:
    """Regret and gap closed of keeping the default configuration (its held-out score ``default_heldout``, which may
    come from another sweep and so beat this sweep's best: negative regret) and of the expected random pick."""
    values = np.asarray(heldout, dtype=np.float64)
    best, worst = float(values.max()), float(values.min())

    def row(chosen: float) -> dict[str, Any]:
        gap = 1.0 if best == worst else (chosen - worst) / (best - worst)
        return {"regret": (best - chosen) * POINTS, "gap_closed": gap, "kendall_tau": math.nan,
                "spearman_rho": math.nan, "top3_regret": math.nan, "selected_trial_id": None}

    rows = {RANDOM_BASELINE: row(float(values.mean()))}
    if default_heldout is not None:
        rows[DEFAULT_BASELINE] = row(float(default_heldout))
    return rows


def oracle_evaluation(heldout: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """The oracle's row (it picks the held-out best: regret 0, whole gap closed); the benchmarks' upper bound."""
    del heldout  # the oracle's regret is zero by definition, whatever the candidates score
    return {"regret": 0.0, "gap_closed": 1.0, "kendall_tau": 1.0, "spearman_rho": 1.0, "top3_regret": 0.0,
            "selected_trial_id": None}


def decision_picks(decision: Mapping[str, Any]) -> dict[str, str]:
    """The trials a target's headline selection row decided: its pick (:data:`HEADLINE_DECISION`) and, when the row
    carries the guard's columns, the guarded decision's trial (:data:`GUARDED_DECISION`)."""
    picks = {HEADLINE_DECISION: decision.get("selected_trial_id"), GUARDED_DECISION: decision.get("guarded_trial_id")}
    return {name: str(trial_id) for name, trial_id in picks.items() if isinstance(trial_id, str) and trial_id}


def decision_evaluations(heldout: Sequence[float] | np.ndarray, trial_ids: Sequence[str],
                         picks: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Regret and gap closed of each decided trial in ``picks`` (name -> trial id, :func:`decision_picks`) among one
    sweep's candidates (``heldout`` in ``trial_ids`` order); a trial that is not a candidate with a held-out score
    gets no row. Rank statistics are NaN: a decision is one trial, not a ranking."""
    values = np.asarray(heldout, dtype=np.float64)
    best, worst = float(values.max()), float(values.min())
    rows = {}
    for name, trial_id in picks.items():
        if trial_id not in trial_ids:
            continue
        chosen = float(values[list(trial_ids).index(trial_id)])
        rows[name] = {"regret": (best - chosen) * POINTS,
                      "gap_closed": 1.0 if best == worst else (chosen - worst) / (best - worst),
                      "kendall_tau": math.nan, "spearman_rho": math.nan, "top3_regret": math.nan,
                      "selected_trial_id": trial_id}
    return rows


def stored_evaluation(decision: Mapping[str, Any]) -> dict[str, Any]:
    """The held-out evaluation a selection row carries (``heldout_<metric>``), NaN where undefined."""
    evaluation: dict[str, Any] = {key: math.nan if decision.get(f"heldout_{key}") is None
                                  else float(decision[f"heldout_{key}"]) for key in EVALUATION_KEYS}
    evaluation["selected_trial_id"] = decision.get("selected_trial_id")
    return evaluation


@dataclass(frozen=True)
class SelectorSummary:
    """One selector (or baseline) over a set of sweeps: regrets in points, means skip NaN."""

    name: str
    mean_regret: float
    worst_regret: float
    mean_gap_closed: float
    mean_kendall_tau: float
    mean_spearman_rho: float
    mean_top3_regret: float
    sweeps: int
    worse_than_default: int | None  # sweeps where its regret exceeds the default configuration's (None: a baseline)
    compared_with_default: int
    # The most its regret exceeded the default configuration's on one sweep, in points (negative: always better; NaN
    # for a baseline or with no sweep to compare): issue 29's "never worse than the default by more than 0.5".
    most_behind_default: float = math.nan


def _nanmean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(array)) if np.isfinite(array).any() else math.nan


def summarize_selectors(sweeps: Sequence[Mapping[str, Mapping[str, Any]]],
                        names: Sequence[str]) -> list[SelectorSummary]:
    """Per selector in ``names``, per decision (:data:`DECISIONS`) and per baseline present: mean/worst regret, mean
    gap closed, τ, ρ and top-3 regret over ``sweeps`` (each: name -> evaluation, baselines included), and how often
    it did worse than the default configuration."""
    rows = []
    for name in dict.fromkeys([*names, *DECISIONS, *BASELINES]):
        evaluations = [sweep for sweep in sweeps if name in sweep]
        if not evaluations:
            continue
        regrets = [sweep[name]["regret"] for sweep in evaluations]
        against = [(sweep[name]["regret"], sweep[DEFAULT_BASELINE]["regret"]) for sweep in evaluations
                   if DEFAULT_BASELINE in sweep]
        worse = None if name in BASELINES else sum(mine > default + 1e-9 for mine, default in against)
        behind = [mine - default for mine, default in against if math.isfinite(mine - default)]
        most_behind = math.nan if name in BASELINES or not behind else float(max(behind))
        rows.append(SelectorSummary(
            name=name, mean_regret=_nanmean(regrets), worst_regret=float(np.nanmax(regrets)),
            mean_gap_closed=_nanmean([sweep[name]["gap_closed"] for sweep in evaluations]),
            mean_kendall_tau=_nanmean([sweep[name]["kendall_tau"] for sweep in evaluations]),
            mean_spearman_rho=_nanmean([sweep[name]["spearman_rho"] for sweep in evaluations]),
            mean_top3_regret=_nanmean([sweep[name]["top3_regret"] for sweep in evaluations]),
            sweeps=len(evaluations), worse_than_default=worse, compared_with_default=len(against),
            most_behind_default=most_behind))
    return rows


def best_selector(rows: Sequence[SelectorSummary]) -> str | None:
    """The label-free selector with the lowest mean regret (ties: higher mean gap closed, then name); never a
    baseline or a decision row. Describes a table; the recommendation is :mod:`raysel.selection.recommendation`'s."""
    candidates = [row for row in rows if row.name not in (*BASELINES, *DECISIONS) and math.isfinite(row.mean_regret)]
    if not candidates:
        return None
    return min(candidates, key=lambda row: (row.mean_regret, -row.mean_gap_closed, row.name)).name


# --------------------------------------------------------------------------------------------------------------
# Wide sweeps: flat sweeps and collapsed picks (issue 13 item 3)
# --------------------------------------------------------------------------------------------------------------

FLAT_SPREAD_POINTS = 1.0  # a sweep whose held-out best and worst differ by less is "flat": selection cannot matter


def heldout_spread(heldout: Sequence[float] | np.ndarray) -> float:
    """Best minus worst held-out score of a sweep's candidates, in points (0 for one candidate)."""
    values = np.asarray(heldout, dtype=np.float64)
    if values.size == 0:
        raise ValueError("a sweep needs at least one candidate with a held-out score to have a spread")
    return float(values.max() - values.min()) * POINTS


def is_flat_sweep(heldout: Sequence[float] | np.ndarray, min_spread: float = FLAT_SPREAD_POINTS) -> bool:
    """True when the held-out spread is under ``min_spread`` points: no selector can gain or lose much there."""
    return heldout_spread(heldout) < min_spread


def collapse_indicators(heldout: Sequence[float] | np.ndarray, selected: Mapping[str, int | None],
                        source_only: float | None, default_heldout: float | None = None) -> dict[str, float]:
    """Per selector (index of its pick in ``heldout``, None when it did not pick) 1.0 when the pick scores below the
    source-only model ``source_only`` on held-out data, else 0.0; plus the baselines: the default configuration,
    the random pick (the expected value: the fraction of candidates below source-only) and the oracle (1.0 only when
    every candidate is below). Empty when the source-only score is unknown."""
    if source_only is None or not math.isfinite(source_only):
        return {}
    values = np.asarray(heldout, dtype=np.float64)
    below = values < source_only
    rows = {name: float(below[index]) for name, index in selected.items() if index is not None}
    rows[RANDOM_BASELINE] = float(below.mean())
    rows[ORACLE_BASELINE] = float(values.max() < source_only)
    if default_heldout is not None:
        rows[DEFAULT_BASELINE] = float(default_heldout < source_only)
    return rows


def count_collapsed(sweeps: Sequence[Mapping[str, float]], name: str) -> tuple[float, int]:
    """Collapsed picks of selector (or baseline) ``name`` summed over sweeps, and the number of sweeps that could
    tell (those with a source-only reference and a pick by ``name``); the random pick's sum is an expectation."""
    counted = [sweep[name] for sweep in sweeps if name in sweep]
    return float(sum(counted)), len(counted)


# --------------------------------------------------------------------------------------------------------------
# Goals for a recommended selector (issue 13)
# --------------------------------------------------------------------------------------------------------------

def strictly_better(row: SelectorSummary, other: SelectorSummary | None) -> bool:
    """Lower mean *and* lower worst regret than ``other`` (the issue's bar for changing a default)."""
    return other is not None and row.mean_regret < other.mean_regret and row.worst_regret < other.worst_regret


def wide_sweep_goals(row: SelectorSummary, rows: Sequence[SelectorSummary], collapsed: float) -> list[tuple[str, bool]]:
    """Issue 13's goals for a recommended selector on wide sweeps (regret in points), each with whether it holds."""
    by_name = {item.name: item for item in rows}
    return [("mean regret ≤ 1.5", row.mean_regret <= 1.5), ("worst regret ≤ 3.0", row.worst_regret <= 3.0),
            ("mean gap closed ≥ 0.85", row.mean_gap_closed >= 0.85),
            ("mean Kendall τ ≥ 0.6", row.mean_kendall_tau >= 0.6), ("no collapsed pick", collapsed == 0),
            ("better than F-mIoU",
             row.name == FMIoUSelector.name or strictly_better(row, by_name.get(FMIoUSelector.name))),
            ("better than the default configuration", strictly_better(row, by_name.get(DEFAULT_BASELINE)))]
