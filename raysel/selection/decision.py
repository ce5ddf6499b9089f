"""Select among a finished sweep's candidates without target labels, and record the decisions in the store.

Every selector the stored outputs allow is scored and recorded (``score_<name>`` columns, one selection row per
selector and target); the first applicable one of the requested order is the *headline* decision (the method's
``default_selectors`` unless asked otherwise). A selector that cannot run is skipped with one line saying why
(:mod:`raysel.selection.applicability`), and nothing already stored for it is touched.

Next to the headline decision, every target gets a *guarded decision* (:mod:`raysel.selection.guarded`): confident
when a panel of selectors agrees and the pick is clearly ahead of the default configuration, else "no confident
winner" keeping the default configuration, with a short-list; it is stored in the ``guard_*`` columns of every
selection row of the target. A target with nothing to choose among (every trial failed or stopped, or one finished
candidate) gets one line saying so and no decision; what the store holds is left as it is.

The decision reads only the candidates' cached predictions on the target *training* subset (or the label-free
scores the trials stored). After deciding, the decision is evaluated against the held-out scores already stored in
the trial rows (``heldout_*`` columns), so users see the regret of every label-free choice; the held-out values never
influence which candidate is chosen.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from raysel.errors import DataError, UserError
from raysel.registry import get_method
from raysel.selection.applicability import (FINISHED, applicable_selectors, cached_candidates, recorded_selectors,
                                            selector_candidates)
from raysel.selection.estimate import record_estimates
from raysel.selection.evaluate import evaluate_selector
from raysel.selection.guarded import VETOED, guard_decision
from raysel.selection.guards import collapsed_labels
from raysel.selection.predictions import CandidatePredictions, load_predictions
from raysel.selection.selectors import TrialScoreSelector, get_selector
from raysel.progress import progress
from raysel.store.schema import heldout_column_with_values


def decision_order(method: str, selectors: Iterable[str] | None, record_all: bool) -> tuple[str, ...]:
    """Selectors in decision order: ``selectors`` (default: the method's ``default_selectors``), then with
    ``record_all`` every other registered one; the first applicable one makes the headline decision."""
    preferred = tuple(selectors) if selectors else get_method(method).default_selectors
    return recorded_selectors(preferred) if record_all else tuple(dict.fromkeys(preferred))


def select_sweep(store: Any, sweep_id: str, method: str | None = None, selectors: Iterable[str] | None = None,
                 stream: Any = None, *, record_all: bool = False,
                 default_trials: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Score ``sweep_id``'s finished candidates per target with each selector; write scores and decisions.

    A sweep calls it with the request's selectors, which :func:`raysel.request_build.build_request` checked before
    the sweep started; an unknown name here (a direct call) is a ConfigError naming the valid selectors.

    Args:
        store: the :class:`~raysel.store.ResultStore` holding the sweep's trial rows.
        sweep_id: the sweep to select in.
        method: the sweep's method (default: the one its rows name); it gives the default selectors.
        selectors: the decision order (default: the method's ``default_selectors``).
        stream: where skipped selectors are reported (default: stdout).
        record_all: also score and record every other registered selector, after ``selectors``.
        default_trials: target -> the default configuration's candidate, for the guarded decision (the sweep finds
            them with :func:`raysel.selection.guarded.default_trial_ids` from its method's defaults); None: those
            recorded by an earlier selection of this sweep (:func:`recorded_default_trials`), so that re-scoring
            needs no method module.

    Returns:
        One decision dict per (target, selector) that could run, in that order (the chosen trial, its score, the
        number of candidates, the target's guarded decision and, when held-out scores are stored, its regret); the
        first per target carries ``headline=True``. Selectors that cannot run are reported and skipped.

    Example:
        >>> import io, tempfile
        >>> from raysel.store import ResultStore
        >>> store = ResultStore(tempfile.mkdtemp())
        >>> for trial, score in (("t0", 0.4), ("t1", 0.7)):
        ...     _ = store.write_trial({"sweep_id": "demo", "trial_id": trial, "method": "source_only",
        ...                            "target": "day_city", "status": "finished", "scores": {"consistency": score}})
        >>> [(d["selector"], d["selected_trial_id"], d["headline"])
        ...  for d in select_sweep(store, "demo", selectors=["consistency"], stream=io.StringIO())]
        [('consistency', 't1', True)]
    """
    stream = stream or sys.stdout
    trials = store.load_sweep(sweep_id)
    if trials.empty:
        raise UserError(f"sweep {sweep_id!r} has no trials in the result store {store.root}")
    method = method or str(trials["method"].iloc[0])
    names = decision_order(method, selectors, record_all)
    defaults = recorded_default_trials(store, sweep_id) if default_trials is None else default_trials
    decisions: list[dict[str, Any]] = []
    for target, group in trials.groupby("target", sort=True):
        decisions += select_target(store, sweep_id, method, str(target), group, names, stream,
                                   defaults.get(str(target)))
    return decisions


def recorded_default_trials(store: Any, sweep_id: str) -> dict[str, str]:
    """target -> the default configuration's candidate as the sweep's latest selection rows recorded it."""
    selections = store.load("selections", sweep_id=sweep_id)
    if selections.empty or "default_trial_id" not in selections:
        return {}
    recorded = selections[selections["default_trial_id"].notna()].sort_values("created_at")
    return {str(target): str(trial_id) for target, trial_id in zip(recorded["target"], recorded["default_trial_id"])}


def no_decision_reason(trials: Any) -> str | None:
    """Why one target's trials leave nothing to choose among (every trial failed or stopped, or a single finished
    candidate), or None."""
    finished = trials[trials["status"] == FINISHED]
    others = len(trials) - len(finished)
    if finished.empty:
        return f"every trial failed or stopped ({len(trials)} trial(s)), so there is no candidate"
    if len(finished) == 1:
        besides = f"; {others} other trial(s) failed or stopped" if others else ""
        return (f"a single finished candidate (trial {finished['trial_id'].iloc[0]}{besides}), so there is nothing to "
                "choose among")
    return None


def collapsed_trials(trials: Any, loaded: dict[tuple[str, bool], CandidatePredictions]) -> list[str]:
    """Finished trials whose cached hard labels are collapsed (:func:`raysel.selection.guards.collapsed_labels`);
    candidates without a readable cache are not counted. Caches are loaded once, into ``loaded``, for the selectors."""
    readable: list[tuple[str, CandidatePredictions]] = []
    rows = cached_candidates(trials)
    for trial_id, path in zip(rows["trial_id"], rows["predictions_path"]):
        key = (path, False)
        try:
            if key not in loaded:
                loaded[key] = load_predictions(path, with_probabilities=False)
        except DataError:  # an unreadable cache: the selectors that need it say so
            continue
        readable.append((str(trial_id), loaded[key]))
    mask = collapsed_labels([candidate for _, candidate in readable]) if readable else []
    return [trial_id for (trial_id, _), collapsed in zip(readable, mask) if collapsed]


def select_target(store: Any, sweep_id: str, method: str, target: str, trials: Any, names: Sequence[str],
                  stream: Any, default_trial_id: str | None = None) -> list[dict[str, Any]]:
    """Decisions of every applicable selector in ``names`` on one target's trials, each carrying the target's guarded
    decision; skipped selectors get one line, and a target with nothing to choose among one line and no decision."""
    reason = no_decision_reason(trials)
    if reason is not None:
        print(f"target {target}: no decision: {reason}; the stored rows are kept as they are", file=stream)
        return []
    decisions: list[dict[str, Any]] = []
    skipped: dict[str, list[str]] = {}
    loaded: dict[tuple[str, bool], CandidatePredictions] = {}
    collapsed = collapsed_trials(trials, loaded)
    table: dict[str, pd.Series] = {}
    applicability = applicable_selectors(trials, names)
    for name, reason in progress(len(applicability), f"scoring target {target}", unit="selector",
                                 iterable=applicability):
        if reason is None:
            selector = get_selector(name)
            rows = selector_candidates(trials, selector)
            try:
                scores = _scores(selector, rows, loaded)
            except DataError as error:
                reason = str(error)
        if reason is not None:
            skipped.setdefault(reason, []).append(name)
            continue
        if not isinstance(selector, TrialScoreSelector):
            for trial_id, score in zip(rows["trial_id"], scores):
                store.update_trial_scores(sweep_id, trial_id, {name: float(score)})
        decision = _decision_row(sweep_id, method, target, name, list(rows["trial_id"]), scores, rows)
        decision["headline"] = not decisions
        decisions.append(decision)
        table[name] = pd.Series(np.where(np.isnan(scores), VETOED, scores), index=list(rows["trial_id"]))
    if decisions:
        candidates = sorted(map(str, trials.loc[trials["status"] == FINISHED, "trial_id"]))
        guard = guard_decision(pd.DataFrame(table).reindex(candidates),
                               {d["selector"]: d["selected_trial_id"] for d in decisions}, decisions[0]["selector"],
                               default_trial_id, collapsed)
        for decision in decisions:
            decision.update(guard.columns())
            store.write_selection(decision)
    for reason, skipped_names in skipped.items():
        print(f"target {target}: selector{'s' if len(skipped_names) > 1 else ''} {', '.join(skipped_names)} "
              f"skipped: {reason}", file=stream)
    record_estimates(store, sweep_id, target, trials, stream, loaded)  # estimate_* columns, label-free
    return decisions


def _scores(selector: Any, rows: Any, loaded: dict[tuple[str, bool], CandidatePredictions]) -> np.ndarray:
    """One score per row: the stored trial score, or the selector on the rows' cached predictions (loaded once)."""
    if isinstance(selector, TrialScoreSelector):
        scores = selector.score_trials(rows)
    else:
        candidates = []
        for path in rows["predictions_path"]:
            key = (path, selector.needs_probabilities)
            if key not in loaded:
                loaded[key] = load_predictions(path, with_probabilities=selector.needs_probabilities)
            candidates.append(loaded[key])
        scores = np.asarray(selector.score(candidates), dtype=np.float64)
    if not np.isfinite(scores).any():
        raise DataError("no candidate has a finite score")
    return scores


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
