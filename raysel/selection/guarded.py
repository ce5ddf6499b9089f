"""The guarded decision: next to a target's pick, whether it is confident, and what to keep when it is not (issue 29
item 5).

A selector always names a candidate, even when the evidence for it is thin. The reference notes (selection.md,
"Deciding, not only ranking") give the remedy: when label-free selectors disagree, keep the default configuration and
show a short-list. Per target, after every selector has scored (:func:`guard_decision`):

* **Panel.** The headline selector, then the first ``GUARD_PANEL_SIZE - 1`` selectors of :data:`GUARD_COMPANIONS`
  that scored the target. The companions read other evidence than the headline's ensemble agreement (F-mIoU): the
  model's stability under perturbation (``consistency``), the candidate's own output statistics (``im``), the
  geometry of its features (``cluster_ami``); the ensemble-agreement ones close the list for sweeps where those cannot
  run. Their order follows those kinds of evidence, not measured regret: the guard must not be tuned on test targets.
* **Agreement.** Confident only when every panel selector picks the same trial (a lone selector is never confident:
  nothing corroborates it), and that trial is not collapsed.
* **A clear margin over the default configuration** (the candidate whose swept hyperparameters equal the method's
  defaults, :func:`default_trial_ids`). Scores of different selectors have different units, so each panel selector's
  scores are standardised over the candidates it scored (:func:`standardized`: median and MAD, clipped at
  ``Z_CLIP``) and averaged into a consensus score. How noisy is that consensus, without labels? The panel measures
  one thing (candidate quality) with several instruments, so a two-way model *score = candidate + residual* fits the
  table; the residual spread (:func:`residual_noise`, the interaction mean square of a two-way ANOVA without
  replication, on every candidate every panel selector scored) is how much the selectors' standardised scores move
  around a candidate's shared quality. The consensus margin of the pick over the default has standard error
  ``noise * sqrt(2 / k)`` for ``k`` panel selectors; the pick is *clearly* better when its margin exceeds
  ``CLEAR_MARGIN_STANDARD_ERRORS`` of them. The noise uses all candidates, not just the two compared, so it rests on
  ``(n - 1)(k - 1)`` degrees of freedom. A default that a panel selector left out (no finite score: non-finite outputs,
  an ensemble veto) is beaten by definition; one a panel selector did not score at all (no cache, no stored score)
  cannot be compared, and the decision is not confident.
* **Otherwise** "no confident winner": keep the default configuration's candidate when the sweep has one and the guard
  accepts it (no panel selector left it out, not collapsed), else the accepted candidate with the highest consensus
  score, else (nothing accepted) the default or the headline's pick; the short-list is the panel's distinct picks,
  the headline's first. Nothing here reads a label or a held-out column.

The score table :func:`guard_decision` reads has one row per finished candidate (index: trial id) and one column per
selector that scored the target: a finite score, ``-inf`` where the selector's own guards left the candidate out
(NaN score: non-finite outputs, collapsed under entropy/snd) and NaN where it did not score the candidate at all.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from raysel.selection.guards import COLLAPSE_EFFECTIVE_CLASSES
from raysel.store.schema import HYPERPARAMETER_PREFIX, SELECTION_GUARD_COLUMNS

# Companions of the headline selector on the panel, one kind of evidence each (see the module docstring), in order.
GUARD_COMPANIONS = ("consistency", "im", "cluster_ami", "soft_vote", "fmiou")
# Headline plus two companions: the smallest panel where one dissenting selector is visible against a majority.
GUARD_PANEL_SIZE = 3
# A margin of two standard errors: a one-sided normal bound at about 97.7 %, so that the selectors' own disagreement
# alone makes a "clearly better" pick in about one sweep in 40.
CLEAR_MARGIN_STANDARD_ERRORS = 2.0
# Standardised scores are clipped here: beyond 3 robust standard deviations a candidate is an outlier of that
# selector (a broken model), and how far beyond says nothing about the order of the others.
Z_CLIP = 3.0
MAD_TO_SD = 1.4826  # the MAD of a normal sample times this estimates its standard deviation
VETOED = -math.inf  # the score table's mark of a candidate a selector's guards left out


@dataclass(frozen=True)
class GuardedDecision:
    """One target's guarded decision: whether the pick is confident, why, the trial kept, and the short-list."""

    confident: bool
    trial_id: str
    reason: str
    shortlist: tuple[str, ...]
    panel: tuple[str, ...]
    default_trial_id: str | None = None

    def columns(self) -> dict[str, Any]:
        """The selection-row columns (``SELECTION_GUARD_COLUMNS`` of :mod:`raysel.store.schema`)."""
        values = {"guard_confident": self.confident, "guard_reason": self.reason, "guarded_trial_id": self.trial_id,
                  "default_trial_id": self.default_trial_id, "shortlist": list(self.shortlist),
                  "guard_selectors": list(self.panel)}
        return {name: values[name] for name in SELECTION_GUARD_COLUMNS}


def panel_selectors(headline: str, scored: Iterable[str], companions: Sequence[str] = GUARD_COMPANIONS,
                    size: int = GUARD_PANEL_SIZE) -> tuple[str, ...]:
    """The headline selector, then the first ``size - 1`` of ``companions`` among the ``scored`` selectors."""
    scored = set(scored)
    others = [name for name in companions if name in scored and name != headline]
    return (headline, *others[:max(size - 1, 0)])


def standardized(scores: pd.DataFrame) -> pd.DataFrame:
    """Per column, over its finite scores: (score - median) / (MAD x 1.4826), clipped to +-``Z_CLIP``; the standard
    deviation replaces a zero MAD, and a constant column is 0; NaN where the score is not finite."""
    values = scores.to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    masked = np.where(finite, values, np.nan)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a column without finite scores stays NaN
        median = np.nanmedian(masked, axis=0)
        scale = MAD_TO_SD * np.nanmedian(np.abs(masked - median), axis=0)
        scale = np.where(scale > 0, scale, np.nanstd(masked, axis=0))
        z = np.where(scale > 0, (masked - median) / np.where(scale > 0, scale, 1.0), 0.0)
    return pd.DataFrame(np.where(finite, np.clip(z, -Z_CLIP, Z_CLIP), np.nan), index=scores.index,
                        columns=scores.columns)


def residual_noise(z: pd.DataFrame) -> float:
    """Residual standard deviation of the two-way model z = candidate + selector + residual on the candidates every
    column scored; NaN with fewer than two candidates or two columns."""
    complete = z.dropna().to_numpy(dtype=np.float64)
    rows, columns = complete.shape
    if rows < 2 or columns < 2:
        return math.nan
    residuals = (complete - complete.mean(axis=1, keepdims=True) - complete.mean(axis=0, keepdims=True)
                 + complete.mean())
    return float(np.sqrt((residuals ** 2).sum() / ((rows - 1) * (columns - 1))))


def matches_defaults(trials: Any, defaults: Mapping[str, Any], names: Iterable[str]) -> np.ndarray:
    """Boolean mask of the trial rows whose ``hp_<name>`` equal ``defaults[name]`` for every name (numbers compared
    with a relative tolerance of 1e-9): the default configuration's trials."""
    mask = np.ones(len(trials), dtype=bool)
    for name in names:
        column = trials[f"{HYPERPARAMETER_PREFIX}{name}"]
        expected = defaults[name]
        if isinstance(expected, (int, float)) and not isinstance(expected, bool):
            numbers = column.to_numpy(dtype=np.float64, na_value=np.nan)
            mask &= np.isclose(numbers, float(expected), rtol=1e-9, atol=1e-12)
        else:
            mask &= np.array([_same_value(value, expected) for value in column], dtype=bool)
    return mask


def _same_value(value: Any, expected: Any) -> bool:
    """Whether a stored hyperparameter value equals ``expected``: sequences item by item (a list column holds arrays),
    anything else by ``==``; a missing value equals nothing."""
    if isinstance(expected, (list, tuple)):
        return isinstance(value, (list, tuple, np.ndarray)) and list(value) == list(expected)
    try:
        return bool(value == expected)
    except (TypeError, ValueError):  # pandas' NA, or an array against a scalar
        return False


def default_trial_ids(trials: pd.DataFrame, defaults: Mapping[str, Any] | Any,
                      names: Iterable[str]) -> dict[str, str]:
    """target -> the first finished candidate (by trial id) whose hyperparameters ``names`` (the swept ones) equal
    ``defaults`` (a mapping or the method's config dataclass): the default configuration's candidate per target.
    Targets without one, and sweeps that lack a swept hyperparameter's column, get none."""
    if dataclasses.is_dataclass(defaults) and not isinstance(defaults, type):
        defaults = dataclasses.asdict(defaults)
    names = list(names)
    if trials.empty or any(name not in defaults or f"{HYPERPARAMETER_PREFIX}{name}" not in trials
                           for name in names):
        return {}
    finished = trials[trials["status"] == "finished"].sort_values("trial_id")
    matching = finished[matches_defaults(finished, defaults, names)]
    return {str(target): str(group["trial_id"].iloc[0]) for target, group in matching.groupby("target", sort=True)}


def _disagreement(picks: Mapping[str, str]) -> str:
    """``fmiou → t1; consistency, im → t3``: the panel's picks grouped by trial."""
    by_trial: dict[str, list[str]] = {}
    for selector, trial_id in picks.items():
        by_trial.setdefault(trial_id, []).append(selector)
    return "; ".join(f"{', '.join(selectors)} → {trial_id}" for trial_id, selectors in by_trial.items())


def _margin_verdict(z: pd.DataFrame, pick: str, default: str) -> tuple[bool, str]:
    """Whether ``pick`` is clearly ahead of ``default`` by the panel's consensus, and the numbers saying so."""
    margin = float(z.loc[pick].mean() - z.loc[default].mean())
    error = residual_noise(z) * math.sqrt(2.0 / z.shape[1])
    bound = CLEAR_MARGIN_STANDARD_ERRORS * error
    clear = margin > bound if math.isfinite(bound) else False
    relation = ">" if clear else "≤"
    return clear, (f"consensus margin over the default configuration {default} {margin:.2f} {relation} "
                   f"{CLEAR_MARGIN_STANDARD_ERRORS:g} × standard error {error:.2f}")


def guard_decision(scores: pd.DataFrame, picks: Mapping[str, str], headline: str, default_trial_id: str | None = None,
                   collapsed: Iterable[str] = (), *, companions: Sequence[str] = GUARD_COMPANIONS,
                   size: int = GUARD_PANEL_SIZE) -> GuardedDecision:
    """The guarded decision of one target (see the module docstring).

    Args:
        scores: one row per finished candidate (index: trial id), one column per selector that scored the target:
            a finite score, ``-inf`` where its guards left the candidate out, NaN where it did not score it.
        picks: selector -> the trial it picked, for every selector that decided on the target.
        headline: the selector of the headline decision.
        default_trial_id: the default configuration's candidate (:func:`default_trial_ids`), None when the sweep
            has none.
        collapsed: trial ids whose predictions are collapsed (:func:`raysel.selection.guards.collapsed_labels`).
        companions, size: the panel (:func:`panel_selectors`).
    """
    panel = panel_selectors(headline, picks, companions, size)
    panel_picks = {name: picks[name] for name in panel}
    pick = panel_picks[headline]
    shortlist = tuple(dict.fromkeys(panel_picks.values()))
    table = scores.reindex(columns=list(panel))
    collapsed = set(collapsed) & set(table.index)
    default = default_trial_id if default_trial_id in table.index else None
    z = standardized(table)
    vetoed = (table.to_numpy() == VETOED).any(axis=1)
    accepted = pd.Series(~vetoed, index=table.index) & ~table.index.isin(list(collapsed))

    reason, confident = _verdict(table, z, panel_picks, pick, default, collapsed, vetoed)
    if confident:
        kept = pick
    elif default is not None and accepted.get(default, False):
        kept = default
    elif accepted.any():
        consensus = z[accepted.to_numpy()].mean(axis=1)
        kept = str(consensus.idxmax()) if consensus.notna().any() else str(consensus.index[0])
    else:
        kept = default or pick
    return GuardedDecision(confident, kept, reason, shortlist, panel, default)


def _verdict(table: pd.DataFrame, z: pd.DataFrame, panel_picks: Mapping[str, str], pick: str, default: str | None,
             collapsed: set[str], vetoed: np.ndarray) -> tuple[str, bool]:
    """(reason, confident) of one target: the first check that fails, or what made the pick confident."""
    panel = list(panel_picks)
    if collapsed and len(collapsed) == len(table.index):
        return (f"all {len(collapsed)} candidates are collapsed (each predicts fewer than "
                f"{COLLAPSE_EFFECTIVE_CLASSES:g} effective classes)"), False
    if len(panel) < 2:
        return f"only {panel[0]} scored this target: nothing corroborates its pick", False
    if len(set(panel_picks.values())) > 1:
        return f"selectors disagree: {_disagreement(panel_picks)}", False
    if pick in collapsed:
        return f"the pick {pick} is collapsed", False
    agree = f"{', '.join(panel)} agree"
    if default is None:
        return f"{agree}; the sweep has no default configuration to compare with", True
    if default == pick:
        return f"{agree} on the default configuration", True
    if vetoed[table.index.get_loc(default)]:
        left_out = [name for name in panel if table.at[default, name] == VETOED]
        return f"{agree}; {', '.join(left_out)} left the default configuration {default} out", True
    unscored = [name for name in panel if math.isnan(table.at[default, name])]
    if unscored:
        return (f"the default configuration {default} has no score from {', '.join(unscored)}, so the margin "
                "cannot be checked"), False
    clear, numbers = _margin_verdict(z, pick, default)
    return (f"{agree}; {numbers}" if clear else f"{pick} is not clearly better: {numbers}"), clear


__all__ = ["GUARD_COMPANIONS", "GUARD_PANEL_SIZE", "CLEAR_MARGIN_STANDARD_ERRORS", "Z_CLIP", "VETOED",
           "GuardedDecision", "panel_selectors", "standardized", "residual_noise", "matches_defaults",
           "default_trial_ids",
           "guard_decision"]
