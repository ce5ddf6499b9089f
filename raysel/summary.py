"""The table printed at the end of a sweep: one row per trial, the selected row marked, where results went."""

from __future__ import annotations

import math
import sys
from typing import Any

from raysel.store_schema import HYPERPARAMETER_PREFIX, heldout_column_with_values


def swept_columns(trials: Any) -> list[str]:
    """Hyperparameter columns whose value differs between trials (the swept ones), in column order."""
    columns = [c for c in trials.columns if c.startswith(HYPERPARAMETER_PREFIX)]
    return [c for c in columns if trials[c].astype(str).nunique(dropna=False) > 1]


def format_trials_table(trials: Any, decisions: list[dict[str, Any]], primary_selector: str) -> str:
    """An aligned text table of the sweep's trials; '*' marks the trial the primary selector chose (per target)."""
    selected = {(d["target"], d["selected_trial_id"]) for d in decisions if d["selector"] == primary_selector}
    score_column = f"score_{primary_selector}"
    heldout_column = heldout_column_with_values(trials)
    hyperparameters = swept_columns(trials)
    header = ["sel", "trial", "target", *[c[len(HYPERPARAMETER_PREFIX):] for c in hyperparameters], primary_selector]
    if heldout_column:
        header.append(heldout_column.replace("_", "-"))
    header += ["wall s", "status"]
    rows = []
    for _, trial in trials.sort_values(["target", "trial_id"]).iterrows():
        row = ["*" if (trial["target"], trial["trial_id"]) in selected else "", str(trial["trial_id"]), str(trial["target"])]
        row += [_cell(trial[c]) for c in hyperparameters]
        row.append(_percent(trial.get(score_column)))
        if heldout_column:
            row.append(_percent(trial.get(heldout_column)))
        row += [_cell(trial.get("wall_time_s"), digits=0), str(trial["status"])]
        rows.append(row)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_sweep_summary(outcome: Any, stream: Any = None) -> None:
    """Print the trials table, each selection decision, and where the results are stored."""
    stream = stream or sys.stdout
    trials, decisions = outcome.trials, outcome.decisions
    primary = decisions[0]["selector"] if decisions else "fmiou"
    print("", file=stream)
    print(format_trials_table(trials, decisions, primary), file=stream)
    print("", file=stream)
    for decision in decisions:
        line = (f"selected by {decision['selector']} for target {decision['target']}: trial "
                f"{decision['selected_trial_id']} (score {100 * decision['score']:.2f} over "
                f"{decision['num_candidates']} candidates)")
        if decision.get("heldout_regret") is not None:
            line += (f"; held-out check (oracle, not used to select): {100 * decision['heldout_selected']:.1f} vs best "
                     f"{100 * decision['heldout_best']:.1f}, regret {decision['heldout_regret']:.2f} points")
        print(line, file=stream)
    failed = trials[trials["status"] != "finished"]
    for _, trial in failed.iterrows():
        print(f"trial {trial['trial_id']} {trial['status']}: {trial.get('error')}", file=stream)
    print(f"\nresults: {outcome.results} (sweep {outcome.sweep_id}); query them with\n"
          f"  python -m raysel.query \"SELECT * FROM trials WHERE sweep_id = '{outcome.sweep_id}'\" "
          f"--results {outcome.results}", file=stream)


def _percent(value: Any) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def _cell(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.0f}" if digits == 0 else f"{value:.{digits}g}"
    return "-" if value is None else str(value)
