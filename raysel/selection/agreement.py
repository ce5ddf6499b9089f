"""Each selector's pick side by side: which trial every recorded selector chose per target, and whether they agree.

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
