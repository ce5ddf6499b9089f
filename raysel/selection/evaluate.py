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
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

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
