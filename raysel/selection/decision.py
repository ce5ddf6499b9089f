"""Select among a finished sweep's candidates without target labels, and record the decision in the store.

The decision reads only the candidates' cached predictions on the target *training* subset. After deciding, the
decision is evaluated against the held-out scores already stored in the trial rows (``heldout_*`` columns), so users
see the regret of every label-free choice; the held-out values never influence which candidate is chosen.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterable

import numpy as np

from raysel.errors import UserError
from raysel.selection.evaluate import evaluate_selector
from raysel.selection.predictions import load_predictions
from raysel.selection.selectors import TrialScoreSelector, get_selector
from raysel.store_schema import heldout_column_with_values
from raysel.progress import progress


def select_sweep(store: Any, sweep_id: str, method: str | None = None, selectors: Iterable[str] = ("fmiou",),
                 stream: Any = None) -> list[dict[str, Any]]:
    """Score every finished candidate of ``sweep_id`` with each selector, per target; write scores and decisions.

    Returns one decision dict per (target, selector). Targets with fewer than two finished candidates are reported
    and skipped (F-mIoU is undefined for a single candidate).
    """
    stream = stream or sys.stdout
    trials = store.load_sweep(sweep_id)
    if trials.empty:
        raise UserError(f"sweep {sweep_id!r} has no trials in the result store {store.root}")
    selector_objects = [get_selector(name) for name in selectors]
    needs_predictions = any(not isinstance(s, TrialScoreSelector) for s in selector_objects)
    finished = trials[trials["status"] == "finished"]
    if needs_predictions:
        finished = finished[finished["predictions_path"].notna()]
    decisions: list[dict[str, Any]] = []
    for target, group in finished.groupby("target", sort=True):
        group = group.sort_values("trial_id")
        if len(group) < 2:
            print(f"target {target}: only {len(group)} finished candidate(s); selection needs at least two, skipped",
                  file=stream)
            continue
        needs_probabilities = any(s.needs_probabilities for s in selector_objects)
        candidates = [load_predictions(path, with_probabilities=needs_probabilities)
                      for path in progress(len(group), f"loading candidates of {target}", unit="candidate",
                                           iterable=group["predictions_path"])] if needs_predictions else []
        trial_ids = list(group["trial_id"])
        for selector in progress(len(selector_objects), f"scoring {target}", unit="selector",
                                 iterable=selector_objects):
            if isinstance(selector, TrialScoreSelector):  # scored inside each trial (hdrq: merge_quality)
                scores = selector.score_trials(group)
            else:
                scores = np.asarray(selector.score(candidates), dtype=np.float64)
                for trial_id, score in zip(trial_ids, scores):
                    store.update_trial_scores(sweep_id, trial_id, {selector.name: float(score)})
            decision = _decision_row(sweep_id, method or str(group["method"].iloc[0]), str(target), selector.name,
                                     trial_ids, scores, group)
            store.write_selection(decision)
            decisions.append(decision)
    return decisions


def _decision_row(sweep_id: str, method: str, target: str, selector: str, trial_ids: list[str], scores: np.ndarray,
                  group: Any) -> dict[str, Any]:
    """The selection row: the chosen trial, plus its held-out evaluation when held-out scores exist."""
    best = int(np.nanargmax(scores))
    row: dict[str, Any] = {
        "sweep_id": sweep_id, "method": method, "target": target, "selector": selector,
        "selected_trial_id": trial_ids[best], "score": float(scores[best]), "num_candidates": len(trial_ids),
    }
    heldout_column = heldout_column_with_values(group, every_row=True)
    if heldout_column is not None:
        heldout = group[heldout_column].to_numpy(dtype=np.float64)
        evaluation = evaluate_selector(scores, heldout)
        row.update({f"heldout_{key}": _finite_or_none(value) for key, value in evaluation.items()})
        row["heldout_selected"] = float(heldout[best])
        row["heldout_best"] = float(np.max(heldout))
    return row


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
