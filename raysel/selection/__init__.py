"""Label-free model selection (SPEC §5) and the benchmark-only evaluation of selectors.

* :mod:`raysel.selection.predictions` — fixed seeded subset of target *training* images, one prediction pass per
  candidate (no labels), compact ``.npz`` cache.
* :mod:`raysel.selection.voting` — fused majority vote (ties → lowest class id) and F-mIoU (HIAST §4.5, Alg. 3).
* :mod:`raysel.selection.selectors` — the selector registry: ``fmiou``, ``confident_fmiou``, ``soft_vote``,
  ``entropy``, ``im``, ``snd``, ``rank_mean``, ``cluster_ami``, ``robust`` (``get_selector(name).score(candidates)``,
  higher is better) and the trial-scored ``merge_quality``, ``consistency``, ``mixval`` (classification) and
  ``classmix_consistency`` (segmentation).
* :mod:`raysel.selection.guards` — the checks every prediction-based selector runs first: matching inputs,
  non-finite and collapsed candidates left out, ``SelectionSkipped``.
* :mod:`raysel.selection.model_scores` — consistency, and MixVal (Hu et al. 2023, classification only) or
  classmix_consistency (raysel's ClassMix-consistency validator, segmentation), computed from the model inside each
  trial.
* :mod:`raysel.selection.combination` — ClassAMI clustering and the ensemble guard behind ``robust``.
* :mod:`raysel.selection.evaluate` — regret, gap closed, Kendall τ / Spearman ρ against held-out scores, the
  default-configuration and random-pick baselines, per-selector summaries over sweeps (benchmarks and the oracle
  check of a decision; held-out scores are an input, never read here); :mod:`raysel.selection.evaluate_estimate` —
  how far the label-free score estimate is from the held-out score, and the fits that correct it on development
  targets.
* :mod:`raysel.selection.applicability` — which selectors a sweep's stored outputs allow, and why not the others.
* :mod:`raysel.selection.decision` — scores a finished sweep with every applicable selector and records the
  decisions in the store; the method's default selector makes the headline decision.
* :mod:`raysel.selection.agreement` — each selector's pick side by side and whether they agree.
* :mod:`raysel.selection.guarded` — the guarded decision: is the pick confident (a panel of selectors agrees and it is
  clearly ahead of the default configuration)? If not, keep the default configuration and show a short-list.
* :mod:`raysel.selection.recommendation` — the pre-registered rule that recommends a default selector from
  development sweeps only.
* :mod:`raysel.selection.estimate` — a label-free estimate of each candidate's target score with a 90 % interval
  (ATC on a source-validation calibration cache, else agreement with the fused vote; ``estimate_*`` columns);
  :mod:`raysel.selection.calibration` — that calibration cache's format.
* :mod:`raysel.selection.estimate_calibration` — the estimate's split-conformal correction in logit space, fitted on
  development targets (pre-registered; fitting is
  :func:`raysel.selection.evaluate_estimate.fit_estimate_calibration`), and the score regression, logit(held-out) on
  at most two label-free scores with an interval from left-out development targets (pre-registered; fitting is
  :func:`raysel.selection.evaluate_estimate.fit_score_regression`).

Submodules are imported on use (``from raysel.selection.selectors import get_selector``) so that importing the
package stays cheap for workers that only need one part. The names in ``__all__`` are the public API, importable
from the package itself (``from raysel.selection import evaluate_selector``): each is looked up in its submodule on
first use (PEP 562), so the package still imports nothing until a name is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

# The public API: submodule -> the names the package re-exports from it.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "predictions": ("CandidatePredictions", "save_predictions", "load_predictions"),
    "voting": ("FusedVoteAccumulator", "plurality_vote", "pixel_runs", "fused_vote", "fused_vote_accumulator",
               "fmiou_scores", "fused_agreement_scores"),
    "guards": ("SelectionSkipped", "finite_candidates", "collapsed_candidates", "collapsed_labels",
               "effective_classes", "COLLAPSE_EFFECTIVE_CLASSES"),
    "selectors": ("Selector", "BaseSelector", "TrialScoreSelector", "register_selector", "selector_names",
                  "get_selector", "select_best"),
    "model_scores": ("TASK_TRIAL_SCORES", "TRIAL_SCORE_NAMES"),
    "applicability": ("recorded_selectors", "applicable_selectors", "why_not_applicable"),
    "decision": ("select_sweep", "select_target"),
    "evaluate": ("POINTS", "DEFAULT_BASELINE", "RANDOM_BASELINE", "ORACLE_BASELINE", "BASELINES", "EVALUATION_KEYS",
                 "HEADLINE_DECISION", "GUARDED_DECISION", "DECISIONS", "FLAT_SPREAD_POINTS", "SelectorSummary",
                 "evaluate_selector", "evaluate_selectors", "summarize_sweeps", "baseline_evaluations",
                 "oracle_evaluation", "decision_picks", "decision_evaluations", "stored_evaluation",
                 "summarize_selectors", "best_selector", "heldout_spread", "is_flat_sweep", "collapse_indicators",
                 "count_collapsed", "strictly_better", "wide_sweep_goals"),
    "evaluate_estimate": ("estimate_accuracy", "estimate_measures", "ESTIMATE_HELDOUT_COLUMNS",
                          "fit_estimate_calibration", "calibrated_estimate_accuracy", "REGRESSION_FEATURES",
                          "fit_score_regression", "regressed_estimate_accuracy"),
    "guarded": ("GUARD_COMPANIONS", "GUARD_PANEL_SIZE", "CLEAR_MARGIN_STANDARD_ERRORS", "GuardedDecision",
                "guard_decision", "default_trial_ids", "matches_defaults"),
    "recommendation": ("RULE", "RULE_FIXED_ON", "WORST_REGRET_BOUND", "SweepEvidence", "Recommendation",
                       "recommend_selector"),
    "calibration": ("SourceCalibration", "load_calibration", "save_calibration", "calibration_path"),
    "estimate": ("Estimate", "estimate_candidates", "estimate_trials", "record_estimates", "format_estimate",
                 "format_interval"),
    "estimate_calibration": ("EstimateCalibration", "calibrate_estimate", "ScoreRegression", "regress_estimate"),
}
_SUBMODULE_OF = {name: submodule for submodule, names in _EXPORTS.items() for name in names}

__all__ = list(_SUBMODULE_OF)


def __getattr__(name: str) -> Any:
    """``raysel.selection.<name>`` for an exported name: imported from its submodule on first use, then cached."""
    if name not in _SUBMODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SUBMODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's attributes plus the lazily exported names (for completion and ``dir()``)."""
    return sorted({*globals(), *__all__})
