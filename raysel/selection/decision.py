"""Select among a finished sweep's candidates without target labels, and record the decisions in the store.

Every selector the stored outputs allow is scored and recorded (``score_<name>`` columns, one selection row per
selector and target); the first applicable one of the requested order is the *headline* decision (the method's
``default_selectors`` unless asked otherwise). A selector that cannot run is skipped with one line saying why
(:mod:`raysel.selection.applicability`), and nothing already stored for it is touched.

The decision reads only the candidates' cached predictions on the target *training* subset (or the label-free
scores the trials stored). After deciding, the decision is evaluated against the held-out scores already stored in
the trial rows (``heldout_*`` columns), so users see the regret of every label-free choice; the held-out values never
influence which candidate is chosen.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterable, Sequence

import numpy as np

from raysel.errors import DataError, UserError
from raysel.registry import get_method
from raysel.selection.applicability import applicable_selectors, recorded_selectors, selector_candidates
from raysel.selection.estimate import record_estimates
from raysel.selection.evaluate import evaluate_selector
from raysel.selection.predictions import CandidatePredictions, load_predictions
from raysel.selection.selectors import TrialScoreSelector, get_selector
from raysel.progress import progress
from raysel.store_schema import heldout_column_with_values


def decision_order(method: str, selectors: Iterable[str] | None, record_all: bool) -> tuple[str, ...]:
    """Selectors in decision order: ``selectors`` (default: the method's ``default_selectors``), then with
    ``record_all`` every other registered one; the first applicable one makes the headline decision."""
    preferred = tuple(selectors) if selectors else get_method(method).default_selectors
    return recorded_selectors(preferred) if record_all else tuple(dict.fromkeys(preferred))


def select_sweep(store: Any, sweep_id: str, method: str | None = None, selectors: Iterable[str] | None = None,
                 stream: Any = None, *, record_all: bool = False) -> list[dict[str, Any]]:
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

    Returns:
        One decision dict per (target, selector) that could run, in that order (the chosen trial, its score, the
        number of candidates and, when held-out scores are stored, its regret); the first per target carries
        ``headline=True``. Selectors that cannot run are reported and skipped.

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
    decisions: list[dict[str, Any]] = []
    for target, group in trials.groupby("target", sort=True):
        decisions += select_target(store, sweep_id, method, str(target), group, names, stream)
    return decisions


def select_target(store: Any, sweep_id: str, method: str, target: str, trials: Any, names: Sequence[str],
                  stream: Any) -> list[dict[str, Any]]:
    """Decisions of every applicable selector in ``names`` on one target's trials; skipped ones get one line."""
    decisions: list[dict[str, Any]] = []
    skipped: dict[str, list[str]] = {}
    loaded: dict[tuple[str, bool], CandidatePredictions] = {}
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
        store.write_selection(decision)
        decisions.append(decision)
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
