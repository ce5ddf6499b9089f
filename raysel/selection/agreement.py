"""Each selector's pick side by side: which trial every recorded selector chose per target, whether they agree, and
the target's guarded decision in one line (:func:`guard_line`).

Shared by the end-of-sweep table (:mod:`raysel.reporting.summary`), ``python -m raysel.select`` and the report, so
all three say the same thing. Works on decision rows (dicts as :func:`raysel.selection.decision.select_sweep` returns
them, or records of the store's ``selections`` table); reads no label.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

ARROW = "→"


def picks_by_target(decisions: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """target -> {selector: selected trial id}, selectors in decision order (a later row for a pair replaces it)."""
    picks: dict[str, dict[str, str]] = {}
    for decision in decisions:
        picks.setdefault(str(decision["target"]), {})[str(decision["selector"])] = str(decision["selected_trial_id"])
    return picks


def headline_selectors(decisions: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """target -> the selector of its headline decision (the row marked ``headline``, else the target's first row)."""
    rows = list(decisions)
    chosen: dict[str, str] = {}
    for decision in rows:
        if _is_true(decision.get("headline")):
            chosen[str(decision["target"])] = str(decision["selector"])
    for decision in rows:
        chosen.setdefault(str(decision["target"]), str(decision["selector"]))
    return chosen


def _is_true(value: Any) -> bool:
    """True for a Python or NumPy ``True``; False for False, None, NaN or pandas' missing value."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def agreement_line(target: str, picks: Mapping[str, str]) -> str:
    """``selectors agree on T: all 3 pick t1`` or ``selectors disagree on T: fmiou, im → t1; snd → t3``."""
    by_trial: dict[str, list[str]] = {}
    for selector, trial_id in picks.items():
        by_trial.setdefault(trial_id, []).append(selector)
    if len(by_trial) <= 1:
        trial_id = next(iter(by_trial), "-")
        who = f"all {len(picks)} pick" if len(picks) > 1 else "the only one picks"
        return f"selectors agree on {target}: {who} {trial_id}"
    groups = "; ".join(f"{', '.join(selectors)} {ARROW} {trial_id}" for trial_id, selectors in by_trial.items())
    return f"selectors disagree on {target}: {groups}"


def agreement_lines(decisions: Iterable[Mapping[str, Any]]) -> list[str]:
    """One :func:`agreement_line` per target, targets sorted."""
    picks = picks_by_target(decisions)
    return [agreement_line(target, picks[target]) for target in sorted(picks)]


def _listed(value: Any) -> list[str]:
    """A stored list column (list, tuple or NumPy array; None when missing) as a list of strings."""
    return [] if value is None or isinstance(value, float) else [str(item) for item in value]


def guard_line(decision: Mapping[str, Any]) -> str | None:
    """The guarded decision of a target's selection row in one line: ``decision on T: confident: trial X (why)`` or
    ``decision on T: no confident winner (why): keeping the default configuration, trial X; short-list: a, b``;
    None for a row without the guard's columns (recorded before the guard existed)."""
    confident = decision.get("guard_confident")
    if not isinstance(confident, (bool, np.bool_)):
        return None
    target, kept, reason = decision["target"], decision.get("guarded_trial_id"), decision.get("guard_reason") or ""
    if confident:
        return f"decision on {target}: confident: trial {kept} ({reason})"
    if kept == decision.get("default_trial_id"):
        keeping = f"the default configuration, trial {kept}"
    elif kept == decision.get("selected_trial_id"):
        keeping = f"trial {kept}, the headline pick (no candidate passes every panel selector's guards)"
    else:
        keeping = f"trial {kept}, the best candidate the guard accepts"
    return (f"decision on {target}: no confident winner ({reason}): keeping {keeping}; "
            f"short-list: {', '.join(_listed(decision.get('shortlist')))}")
