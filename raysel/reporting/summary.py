"""The table printed at the end of a sweep: one row per trial, each selector's pick side by side, where results went."""

from __future__ import annotations

import math
import sys
from typing import Any

from raysel.selection.agreement import agreement_line, guard_line, headline_selectors, picks_by_target
from raysel.selection.estimate import format_estimate, format_interval
from raysel.store.schema import HYPERPARAMETER_PREFIX, heldout_column_with_values

__all__ = ["swept_columns", "has_estimates", "format_trials_table", "decision_lines", "print_sweep_summary"]


def swept_columns(trials: Any) -> list[str]:
    """Hyperparameter columns whose value differs between trials (the swept ones), in column order."""
    columns = [c for c in trials.columns if c.startswith(HYPERPARAMETER_PREFIX)]
    return [c for c in columns if trials[c].astype(str).nunique(dropna=False) > 1]


def format_trials_table(trials: Any, decisions: list[dict[str, Any]], primary_selector: str | None = None) -> str:
    """An aligned text table of the sweep's trials: one column per recorded selector with '*' on its pick, the
    'sel' column marking the headline decision (``primary_selector``'s, else each target's headline) per target, and
    the label-free estimate of each trial's target score in points with its 90 % interval, when estimated."""
    picks = picks_by_target(decisions)
    headline = headline_selectors(decisions)
    if primary_selector is not None:
        headline = {target: primary_selector for target in headline}
    selectors = list(dict.fromkeys(str(d["selector"]) for d in decisions))
    heldout_column = heldout_column_with_values(trials)
    hyperparameters = swept_columns(trials)
    estimated = has_estimates(trials)
    header = ["sel", "trial", "target", *[c[len(HYPERPARAMETER_PREFIX):] for c in hyperparameters], *selectors]
    if estimated:
        header += ["estimate", "estimate_90"]
    if heldout_column:
        header.append(heldout_column.replace("_", "-"))
    header += ["wall s", "status"]
    rows = []
    for _, trial in trials.sort_values(["target", "trial_id"]).iterrows():
        target, trial_id = str(trial["target"]), str(trial["trial_id"])
        chosen = picks.get(target, {})
        row = ["*" if chosen.get(headline.get(target, "")) == trial_id else "", trial_id, target]
        row += [_cell(trial[c]) for c in hyperparameters]
        row += [_score(trial.get(f"score_{name}")) + ("*" if chosen.get(name) == trial_id else "")
                for name in selectors]
        if estimated:
            row += [format_estimate(trial.get("estimate_score")),
                    format_interval(trial.get("estimate_low"), trial.get("estimate_high"))]
        if heldout_column:
            row.append(_percent(trial.get(heldout_column)))
        row += [_cell(trial.get("wall_time_s"), digits=0), str(trial["status"])]
        rows.append(row)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def has_estimates(trials: Any) -> bool:
    """Whether any trial has a label-free score estimate (``estimate_score``) to show."""
    return "estimate_score" in trials and bool(trials["estimate_score"].notna().any())


def decision_lines(decisions: list[dict[str, Any]]) -> list[str]:
    """Per target: the headline decision, whether the selectors agree, the guarded decision (confident, or no
    confident winner with what is kept and the short-list) and each selector's held-out regret (oracle)."""
    headline = headline_selectors(decisions)
    lines = []
    for target in sorted(headline):
        rows = [d for d in decisions if str(d["target"]) == target]
        first = next(d for d in rows if d["selector"] == headline[target])
        line = (f"selected by {first['selector']} for target {target}: trial {first['selected_trial_id']} "
                f"(score {_score(first['score'])} over {first['num_candidates']} candidates)")
        if first.get("heldout_regret") is not None:
            line += (f"; held-out check (oracle, not used to select): {100 * first['heldout_selected']:.1f} vs best "
                     f"{100 * first['heldout_best']:.1f}, regret {first['heldout_regret']:.2f} points")
        lines += [line, agreement_line(target, picks_by_target(rows)[target])]
        guarded = guard_line(first)
        lines += [guarded] if guarded else []
        regrets = [f"{d['selector']} {d['heldout_regret']:.2f}" for d in rows if d.get("heldout_regret") is not None]
        if len(regrets) > 1:
            lines.append(f"held-out regret per selector (oracle, points): {', '.join(regrets)}")
    return lines


def print_sweep_summary(outcome: Any, stream: Any = None) -> None:
    """Print the trials table, each target's decision and selector agreement, and where the results are stored."""
    stream = stream or sys.stdout
    trials, decisions = outcome.trials, outcome.decisions
    print("", file=stream)
    print(format_trials_table(trials, decisions), file=stream)
    print("", file=stream)
    for line in decision_lines(decisions):
        print(line, file=stream)
    failed = trials[trials["status"] != "finished"]
    for _, trial in failed.iterrows():
        print(f"trial {trial['trial_id']} {trial['status']}: {trial.get('error')}", file=stream)
    print(f"\nresults: {outcome.results} (sweep {outcome.sweep_id}); query them with\n"
          f"  python -m raysel.query \"SELECT * FROM trials WHERE sweep_id = '{outcome.sweep_id}'\" "
          f"--results {outcome.results}", file=stream)


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or not a number."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _score(value: Any) -> str:
    """A label-free score with four significant digits (scales differ: agreement in [0, 1], IM in nats, ranks)."""
    number = _finite(value)
    return "-" if number is None else f"{number:.4g}"


def _percent(value: Any) -> str:
    number = _finite(value)
    return "-" if number is None else f"{100 * number:.2f}"


def _cell(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.0f}" if digits == 0 else f"{value:.{digits}g}"
    return "-" if value is None else str(value)
