"""Which label-free selectors can score a sweep, and why the others cannot (issue 13 item 4, "Bad input").

A sweep records every selector its stored outputs allow: prediction-based selectors need at least two finished
candidates with a readable prediction cache (and the arrays they use, e.g. ``probabilities``); trial-scored ones
need at least two finished candidates that stored ``score_<name>``. Everything else is skipped with one line saying
why, and the other selectors still decide. Nothing here reads a label or a held-out column.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from raysel.selection.selectors import TrialScoreSelector, get_selector, selector_names
from raysel.store.schema import relocated_path

if TYPE_CHECKING:  # pragma: no cover
    import pandas

MIN_CANDIDATES = 2  # choosing among one candidate is no choice (and F-mIoU is undefined for it)
FINISHED = "finished"


def recorded_selectors(preferred: Sequence[str] = ()) -> tuple[str, ...]:
    """Every registered selector, ``preferred`` first in their order (the first decides), the rest in registry order."""
    names = list(dict.fromkeys(preferred))
    return tuple(names + [name for name in selector_names() if name not in names])


def cached_arrays_needed(selector: Any) -> tuple[str, ...]:
    """Arrays a prediction-based selector reads from each candidate's cache beyond the hard labels."""
    needed = ("probabilities",) if getattr(selector, "needs_probabilities", False) else ()
    return needed + (("features",) if getattr(selector, "needs_features", False) else ())


def selector_candidates(trials: "pandas.DataFrame", selector: Any) -> "pandas.DataFrame":
    """The finished rows ``selector`` can score, by trial id: those with a prediction file, or with its stored score."""
    if isinstance(selector, TrialScoreSelector):  # its column, an older column of the same score, for its tasks
        finished = trials[trials["status"] == FINISHED].sort_values("trial_id")
        return finished[~np.isnan(selector.stored(finished))]
    return cached_candidates(trials)


def cached_candidates(trials: "pandas.DataFrame") -> "pandas.DataFrame":
    """The finished rows with a prediction cache on disk, by trial id (what every prediction-based selector scores)."""
    finished = trials[trials["status"] == FINISHED].sort_values("trial_id")
    if "predictions_path" not in finished:
        return finished.iloc[0:0]
    has_file = [isinstance(path, str) and Path(path).is_file() for path in finished["predictions_path"]]
    return finished[has_file]


def uncached_candidates(trials: "pandas.DataFrame", store_root: str | Path,
                        recorded_root: str | Path | None = None) -> list[str]:
    """Finished candidates (by trial id) without a prediction cache where re-prediction looks for one.

    That place is the row's ``predictions_path`` relocated from ``recorded_root`` (the results folder the sweep
    recorded, from its request) into the store at ``store_root`` (:func:`raysel.store.schema.relocated_path`),
    exactly as :func:`raysel.execution.repredict.prediction_jobs` reads it. When this is empty, re-prediction has
    nothing to do and ``raysel select`` scores without starting Ray or importing torch; otherwise it hands the sweep
    to re-prediction, which decides what to predict (a row without ``predictions_path`` counts as uncached here).
    """
    finished = trials[trials["status"] == FINISHED] if "status" in trials else trials.iloc[0:0]
    paths = finished["predictions_path"] if "predictions_path" in finished else [None] * len(finished)
    return [str(trial_id) for trial_id, path in zip(finished["trial_id"], paths)
            if not (isinstance(path, str) and relocated_path(path, recorded_root, store_root).is_file())]


def _cached_array_names(path: str, cache: dict[str, set[str]]) -> set[str]:
    """Names of the arrays inside one ``.npz`` prediction cache (its zip members), read once per path."""
    if path not in cache:
        try:
            with zipfile.ZipFile(path) as archive:
                cache[path] = {name.removesuffix(".npy") for name in archive.namelist()}
        except (OSError, zipfile.BadZipFile):
            cache[path] = set()
    return cache[path]


def _trial_list(trial_ids: Sequence[Any], limit: int = 3) -> str:
    """``t1, t2, t3 and 4 more``."""
    shown = ", ".join(str(trial_id) for trial_id in trial_ids[:limit])
    return shown + (f" and {len(trial_ids) - limit} more" if len(trial_ids) > limit else "")


def why_not_applicable(trials: "pandas.DataFrame", name: str, cache: dict[str, set[str]] | None = None) -> str | None:
    """Why selector ``name`` cannot score these trials (one target's rows, any status); None when it can."""
    selector = get_selector(name)
    finished = trials[trials["status"] == FINISHED]
    if finished.empty:
        return f"no finished candidate ({len(trials)} trial(s) failed or stopped)"
    usable = selector_candidates(trials, selector)
    if isinstance(selector, TrialScoreSelector):
        tasks = selector.tasks
        if usable.empty and tasks and "task" in finished and not finished["task"].isin(tasks).any():
            return (f"{name} ({selector.column}) exists for {' and '.join(tasks)} trials only; these are "
                    f"{', '.join(sorted(map(str, set(finished['task']))))}")
        if usable.empty:
            return (f"no trial stored {selector.column} (it is computed inside the trials of methods that score it, "
                    "e.g. hdrq for merge_quality)")
        if len(usable) < MIN_CANDIDATES:
            return f"only {len(usable)} finished candidate stored {selector.column}; selection needs at least two"
        return None
    if len(usable) < MIN_CANDIDATES:
        return (f"only {len(usable)} of {len(finished)} finished candidate(s) have a prediction cache; selection "
                "needs at least two (predict missing ones with `python -m raysel.select SWEEP`)")
    cache = {} if cache is None else cache
    for array in cached_arrays_needed(selector):
        lacking = [trial_id for trial_id, path in zip(usable["trial_id"], usable["predictions_path"])
                   if array not in _cached_array_names(path, cache)]
        if lacking:
            return (f"no {array} cached for trial(s) {_trial_list(lacking)} (predict them again with "
                    "`python -m raysel.select SWEEP --repredict`)")
    return None


def applicable_selectors(trials: "pandas.DataFrame", names: Sequence[str] | None = None
                         ) -> list[tuple[str, str | None]]:
    """(name, reason it cannot run or None) for each selector in ``names`` (default: all) on one target's trials."""
    cache: dict[str, set[str]] = {}
    return [(name, why_not_applicable(trials, name, cache)) for name in (names or recorded_selectors())]
