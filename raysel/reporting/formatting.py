"""What the sweep report, its plots and report.html share: the per-target report record, the columns it reads from
the store (selector scores, swept hyperparameters, the held-out headline) and the formatting of numbers and points.

Held-out columns appear here only to be shown as the oracle check they are; nothing here selects a candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from raysel.store.schema import HYPERPARAMETER_PREFIX, SCORE_PREFIX, heldout_column_with_values

if TYPE_CHECKING:  # pragma: no cover
    import pandas

HELDOUT_COLUMNS = {"heldout_miou": "held-out mIoU", "heldout_accuracy": "held-out accuracy"}  # column -> label
POINTS = 100.0  # held-out fractions are shown in mIoU (accuracy) points


@dataclass
class TargetReport:
    """What the report shows for one target domain: candidates, the chosen and best trials, evaluations, figures."""

    target: str
    candidates: "pandas.DataFrame"
    selected_trial: str | None
    best_trial: str | None
    evaluations: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    picks: dict[str, str | None] = field(default_factory=dict)  # every scored selector's pick (report.html)


def score_columns(trials: "pandas.DataFrame") -> list[str]:
    """``score_<selector>`` columns holding at least one value, sorted."""
    return sorted(column for column in trials.columns
                  if column.startswith(SCORE_PREFIX) and trials[column].notna().any())


def heldout_column(trials: "pandas.DataFrame") -> str | None:
    """``heldout_miou`` (segmentation) or ``heldout_accuracy`` (classification), whichever holds values; or None."""
    return heldout_column_with_values(trials)


def hashable_value(value: Any) -> Any:
    """A list-valued hyperparameter (``tuple[int, ...]``) as a string, so it can be counted and compared."""
    return str(list(value)) if isinstance(value, (list, tuple, np.ndarray)) else value


def hashable(series: "pandas.Series") -> "pandas.Series":
    """A column with list-valued hyperparameters as strings (:func:`hashable_value`)."""
    return series if series.dtype != object else series.map(hashable_value)


def swept_hyperparameters(trials: "pandas.DataFrame") -> list[str]:
    """``hp_*`` columns taking more than one value among ``trials`` (the hyperparameters the sweep varied)."""
    return [column for column in trials.columns
            if column.startswith(HYPERPARAMETER_PREFIX) and hashable(trials[column]).nunique(dropna=True) > 1]


def top_index(scores: np.ndarray) -> int:
    """Index of the highest score (NaN never chosen, ties to the first), as evaluate.py and decision.py pick."""
    return int(np.argmax(np.where(np.isnan(scores), -np.inf, scores)))


def points(fraction: Any) -> Any:
    """A held-out fraction in mIoU (accuracy) points; missing values unchanged."""
    return fraction * POINTS if isinstance(fraction, (float, np.floating)) else fraction


def format_number(value: Any, digits: int = 2) -> str:
    """A table cell: the number rounded, a list as ``[a, b]``, text as is, an en dash for missing / NaN."""
    value = hashable_value(value)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    try:
        if value != value:  # pandas NA / NaN
            return "–"
    except TypeError:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value)
