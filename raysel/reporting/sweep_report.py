"""The report of one finished sweep and its selection: PNG plots, ``report.md`` and ``report.html``.

:func:`write_report` is what ``python -m raysel.report SWEEP`` (:mod:`raysel.report`) runs. Written into ``--output``
(default ``<results>/reports/<SWEEP>/``), per target domain of the sweep:

* ``score_vs_heldout_<target>.png`` — every selector that has scores (``score_<name>`` columns) against the
  held-out mIoU (accuracy for classification) of the same candidates, when held-out scores exist;
* ``hyperparameters_<target>.png`` — each swept hyperparameter (``hp_*`` columns that vary) against the selection
  score of the report's selector;
* ``class_iou_<target>.png`` — held-out per-class IoU (``heldout_iou``) of the selected candidate next to the best
  held-out candidate (segmentation);
* ``report.md`` — embeds the plots and lists every recorded selector's pick side by side (headline marked, with
  whether they agree), the evaluation of every selector
  (:func:`raysel.selection.evaluate.evaluate_selector`: regret, top-3 regret, gap closed, Kendall τ, Spearman ρ)
  and the candidates, with each one's label-free score estimate and 90 % interval
  (:mod:`raysel.selection.estimate`) and how close the estimates came to the held-out scores.

Held-out labels enter only through the ``heldout_*`` columns the trials stored; they appear in plots and tables
marked *held-out (oracle)*, evaluate the label-free choices, and never change which candidate is selected.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from raysel.errors import UserError
from raysel.registry import get_method
from raysel.reporting.formatting import (HELDOUT_COLUMNS, TargetReport, format_number, heldout_column, points,
                                         score_columns, swept_hyperparameters, top_index)
from raysel.reporting.html import write_html_report
from raysel.reporting.plots import plot_class_iou, plot_hyperparameters, plot_scores_against_heldout
from raysel.request import load_request
from raysel.selection.agreement import agreement_lines, guard_line, headline_selectors
from raysel.selection.estimate import format_estimate, format_interval
from raysel.selection.evaluate import evaluate_selector
from raysel.selection.evaluate_estimate import estimate_accuracy
from raysel.store.schema import HYPERPARAMETER_PREFIX, SCORE_PREFIX

if TYPE_CHECKING:  # pragma: no cover
    import pandas


# --------------------------------------------------------------------------------------------------------------
# Reading the store
# --------------------------------------------------------------------------------------------------------------


def load_sweep_tables(store: Any, sweep_id: str) -> tuple["pandas.DataFrame", "pandas.DataFrame"]:
    """The sweep's trials and selection decisions; UserError when the store is empty or lacks the sweep."""
    trials = store.load_sweep(sweep_id)
    if trials.empty:
        known = store.sweeps()
        if not known:
            raise UserError(f"the result store {store.root} is empty: no sweep has stored a trial yet "
                            f"(run `python -m raysel.sweep METHOD --results {store.root}` first)")
        raise UserError(f"sweep {sweep_id!r} is not in the result store {store.root}; sweeps there: "
                        f"{', '.join(known)}")
    return trials, store.load("selections", sweep_id=sweep_id)


def choose_selector(trials: "pandas.DataFrame", selections: "pandas.DataFrame", requested: str | None,
                    decision_order: Sequence[str] | None = None) -> str | None:
    """The selector whose choice the report follows: ``requested``, else the latest headline decision, else the first
    scored one of the sweep's ``decision_order`` (its request's selectors; without one, the method's
    ``default_selectors`` from the registry), else the first decided or scored selector."""
    scored = [column[len(SCORE_PREFIX):] for column in score_columns(trials)]
    if requested is not None:
        if requested not in scored:
            raise UserError(f"selector {requested!r} has no scores in this sweep (scored: "
                            f"{', '.join(scored) or 'none'}); score it first with "
                            f"`python -m raysel.select SWEEP --selector {requested}`")
        return requested
    if "headline" in selections and selections["headline"].fillna(False).astype(bool).any():
        latest = selections[selections["headline"].fillna(False).astype(bool)].sort_values("created_at")
        if latest["selector"].iloc[-1] in scored:
            return str(latest["selector"].iloc[-1])
    if decision_order:
        defaults = tuple(decision_order)
    else:  # looking the method up imports its training code (torch): only for sweeps without a saved request
        defaults = get_method(str(trials["method"].iloc[0])).default_selectors if len(trials) else ()
    decided = [name for name in selections.get("selector", []) if name in scored]
    return next((name for name in [*defaults, *decided, *scored] if name in scored), None)


def saved_decision_order(results: Path | str, sweep_id: str) -> tuple[str, ...] | None:
    """The selectors the sweep decides with, from its saved request (``sweep.json``); None when it is not kept."""
    try:
        return load_request(results, sweep_id).selectors
    except UserError:  # no sweeps/<SWEEP>/sweep.json (a store copied without it), or one raysel cannot read
        return None


def selected_trial(candidates: "pandas.DataFrame", selections: "pandas.DataFrame", target: str,
                   selector: str | None) -> str | None:
    """The trial the selector chose for ``target``: its recorded decision, else the highest score; None if unscored."""
    if selector is None:
        return None
    if not selections.empty:
        recorded = selections[(selections["target"] == target) & (selections["selector"] == selector)]
        recorded = recorded.sort_values("created_at")["selected_trial_id"]
        if len(recorded) and recorded.iloc[-1] in set(candidates["trial_id"]):
            return str(recorded.iloc[-1])
    scores = candidates[SCORE_PREFIX + selector].to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(scores).all():
        return None
    return str(candidates["trial_id"].iloc[top_index(scores)])


def evaluate_target(candidates: "pandas.DataFrame", heldout: str | None) -> dict[str, dict[str, Any] | None]:
    """Held-out evaluation of every scored selector on one target (None where a scored candidate lacks held-out)."""
    evaluations: dict[str, dict[str, Any] | None] = {}
    if heldout is None:
        return evaluations
    for column in score_columns(candidates):
        scored = candidates[candidates[column].notna()]
        truth = scored[heldout].to_numpy(dtype=np.float64, na_value=np.nan)
        if len(scored) < 2 or not np.isfinite(truth).all():
            evaluations[column[len(SCORE_PREFIX):]] = None
            continue
        result = evaluate_selector(scored[column].to_numpy(dtype=np.float64), truth)
        result["selected_trial_id"] = str(scored["trial_id"].iloc[result["selected_index"]])
        evaluations[column[len(SCORE_PREFIX):]] = result
    return evaluations


def class_names_of(candidates: "pandas.DataFrame", count: int) -> list[str]:
    """The ``count`` class names of the candidates' label space: the ``class_names`` their rows store, else the dataset
    family's (``class <i>`` when neither is known or the count differs)."""
    stored = [names for names in candidates.get("class_names", []) if names is not None and len(names) == count]
    names = list(stored[0]) if stored else _family_class_names(str(candidates["dataset"].iloc[0]))
    return [str(name) for name in names] if len(names) == count else [f"class {index}" for index in range(count)]


def _family_class_names(dataset: str) -> list[str]:
    """The class names of a registered dataset family; [] when raysel knows no family of that name."""
    # Imported on use, for rows written before trials stored their class names: the data package imports torch
    # (seconds), which a report of rows that carry their names never needs. Not a cycle: report sits above data.
    from raysel.data import get_family

    try:
        return list(get_family(dataset).class_names)
    except UserError:
        return []


# --------------------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------------------


def _file_stem(text: str) -> str:
    """A file-name-safe version of a target name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "target"


def report_target(candidates: "pandas.DataFrame", selections: "pandas.DataFrame", target: str, selector: str | None,
                  output: Path) -> TargetReport:
    """Evaluate and plot one target's candidates into ``output``."""
    heldout = heldout_column(candidates)
    truth = candidates[heldout].to_numpy(dtype=np.float64, na_value=np.nan) if heldout else None
    best = (str(candidates["trial_id"].iloc[int(np.nanargmax(truth))])
            if truth is not None and np.isfinite(truth).any() else None)
    report = TargetReport(target=target, candidates=candidates,
                          selected_trial=selected_trial(candidates, selections, target, selector), best_trial=best,
                          evaluations=evaluate_target(candidates, heldout))
    stem = _file_stem(target)
    selectors = [column[len(SCORE_PREFIX):] for column in score_columns(candidates)]
    report.picks = {name: selected_trial(candidates, selections, target, name) for name in selectors}
    if heldout is not None and selectors and best is not None:
        taus = {name: result["kendall_tau"] for name, result in report.evaluations.items() if result is not None}
        report.figures["scores"] = plot_scores_against_heldout(candidates, heldout, selectors, best,
                                                               output / f"score_vs_heldout_{stem}.png", taus)
    elif heldout is None:
        report.notes.append("No held-out scores were stored for these trials, so selectors cannot be compared "
                            "with the truth here.")
    else:
        report.notes.append("No selector scores yet: run `python -m raysel.select SWEEP --selector NAME`.")
    swept = swept_hyperparameters(candidates)
    if selector is not None and swept:
        report.figures["hyperparameters"] = plot_hyperparameters(candidates, swept, selector, report.selected_trial,
                                                                 output / f"hyperparameters_{stem}.png")
    elif not swept:
        report.notes.append("No hyperparameter varies among these candidates.")
    per_class = _class_iou_pair(candidates, report.selected_trial, best)
    if per_class is not None:
        names = class_names_of(candidates, per_class[0].size)
        report.figures["class_iou"] = plot_class_iou(names, per_class[0], per_class[1], str(selector),
                                                     report.selected_trial == best, output / f"class_iou_{stem}.png")
    elif "heldout_iou" not in candidates or candidates["heldout_iou"].isna().all():
        report.notes.append("No per-class held-out IoU is stored for these trials (classification trials store "
                            "accuracy only).")
    return report


def _class_iou_pair(candidates: "pandas.DataFrame", selected: str | None, best: str | None
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """Held-out per-class IoU arrays of the selected and the best candidate, when both are stored with one length."""
    if selected is None or best is None or "heldout_iou" not in candidates:
        return None
    by_trial = candidates.set_index("trial_id")["heldout_iou"]
    pair = [by_trial.get(trial) for trial in (selected, best)]
    if any(value is None or (np.ndim(value) == 0) for value in pair):
        return None
    selected_iou, best_iou = (np.asarray(value, dtype=np.float64) for value in pair)
    return (selected_iou, best_iou) if selected_iou.shape == best_iou.shape and selected_iou.size else None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _decision_lines(selections: "pandas.DataFrame", sweep_id: str) -> list[str]:
    """The recorded selection decisions as a table (held-out columns marked as the oracle check they are)."""
    lines = ["## Selection decisions", ""]
    if selections.empty:
        return lines + [f"No decision is recorded yet: run `python -m raysel.select {sweep_id}`.", ""]
    latest = selections.sort_values("created_at").drop_duplicates(["target", "selector"], keep="last")
    latest = latest.to_dict("records")
    headline = headline_selectors(latest)
    rows = [[str(row["target"]),
             str(row["selector"]) + (" (headline)" if headline[str(row["target"])] == row["selector"] else ""),
             f"`{row['selected_trial_id']}`",
             format_number(row["score"], 4), format_number(row["num_candidates"]), format_number(points(row.get("heldout_selected"))),
             format_number(points(row.get("heldout_best"))), format_number(row.get("heldout_regret"))]
            for row in sorted(latest, key=lambda row: str(row["target"]))]
    guards = [guard_line(row) for row in latest if headline[str(row["target"])] == row["selector"]]
    notes = [*agreement_lines(latest), *filter(None, guards)]
    return lines + _table(["target", "selector", "selected trial", "score", "candidates",
                           "held-out of selected (points, oracle)", "held-out best (points, oracle)",
                           "regret (points, oracle)"], rows) + [f"{line}." for line in notes] + [""]


def _evaluation_lines(report: TargetReport) -> list[str]:
    """Per-selector evaluation against held-out labels (regret, gap closed, τ, ρ, top-3 regret)."""
    if not report.evaluations:
        return []
    rows = []
    for selector, result in sorted(report.evaluations.items()):
        if result is None:
            rows.append([selector, "–", "not every scored candidate has a held-out score", "", "", "", "", ""])
            continue
        rows.append([selector, f"`{result['selected_trial_id']}`", format_number(result["regret"]),
                     format_number(result["top3_regret"]), format_number(result["gap_closed"]), format_number(result["kendall_tau"]),
                     format_number(result["spearman_rho"]), format_number(result["num_candidates"])])
    return (["### Selectors against held-out labels (oracle evaluation, never used to select)", ""]
            + _table(["selector", "selected trial", "regret (points)", "top-3 regret (points)", "gap closed",
                      "Kendall τ", "Spearman ρ", "candidates"], rows))


def _has_estimates(candidates: "pandas.DataFrame") -> bool:
    """Whether any candidate has a label-free score estimate (``estimate_score``)."""
    return "estimate_score" in candidates and bool(candidates["estimate_score"].notna().any())


def _estimate_lines(report: TargetReport) -> list[str]:
    """How close the label-free estimates came to the held-out scores on this target (oracle check)."""
    candidates = report.candidates
    if not _has_estimates(candidates) or heldout_column(candidates) is None:
        return []
    error, coverage = estimate_accuracy(candidates)
    if not np.isfinite(error):
        return []
    counted = int(candidates["estimate_score"].notna().sum())
    return [f"Label-free score estimates against held-out scores (oracle check, never used to estimate): mean "
            f"absolute error {error:.1f} points; the 90 % interval covers the held-out score for "
            f"{100 * coverage:.0f} % of {counted} estimated candidates.", ""]


def _candidate_lines(report: TargetReport) -> list[str]:
    """One row per candidate: swept hyperparameters, selector scores, label-free estimate, held-out score."""
    candidates = report.candidates
    swept = swept_hyperparameters(candidates)
    scores = score_columns(candidates)
    heldout = heldout_column(candidates)
    estimated = _has_estimates(candidates)
    header = (["trial"] + [column[len(HYPERPARAMETER_PREFIX):] for column in swept] + scores
              + (["estimate (points, label-free)", "90 % interval", "estimator"] if estimated else [])
              + ([f"{HELDOUT_COLUMNS[heldout]} (points, oracle)"] if heldout else []))
    rows = []
    for row in candidates.to_dict("records"):
        marks = ("selected " if row["trial_id"] == report.selected_trial else "") + (
            "best" if row["trial_id"] == report.best_trial else "")
        cells = [f"`{row['trial_id']}`" + (f" ({marks.strip()})" if marks else "")]
        cells += [format_number(row[column], 4) for column in swept]
        cells += [format_number(row[column], 4) for column in scores]
        if estimated:
            cells += [format_estimate(row.get("estimate_score")),
                      format_interval(row.get("estimate_low"), row.get("estimate_high")),
                      row["estimate_method"] if isinstance(row.get("estimate_method"), str) else "–"]
        cells += [format_number(points(row[heldout]))] if heldout else []
        rows.append(cells)
    return ["### Candidates", ""] + _table(header, rows) + _estimate_lines(report)


def render_markdown(sweep_id: str, trials: "pandas.DataFrame", selections: "pandas.DataFrame",
                    reports: Sequence[TargetReport], selector: str | None) -> str:
    """The Markdown summary: sweep facts, decisions, and per target the evaluation, plots and candidates."""
    finished = int((trials["status"] == "finished").sum())
    methods = ", ".join(sorted(set(trials["method"].astype(str))))
    first = trials.iloc[0]
    lines = [f"# Selection report: sweep `{sweep_id}`", "",
             f"Method {methods} on {first['dataset']} (source {first['source']}); {len(trials)} trial(s), "
             f"{finished} finished; targets: {', '.join(r.target for r in reports)}. The plots follow selector "
             f"`{selector or 'none'}`.", "",
             f"Written by `python -m raysel.report` at {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
             "UTC. Held-out labels enter only through the columns and plots marked *held-out* or *oracle*: they "
             "evaluate the label-free choices and never influenced them.", ""]
    lines += _decision_lines(selections, sweep_id)
    captions = {"scores": "Selector scores against held-out scores",
                "hyperparameters": "Swept hyperparameters against the selection score",
                "class_iou": "Held-out per-class IoU of the selected and the best candidate"}
    for report in reports:
        lines += [f"## Target `{report.target}`", ""]
        if report.selected_trial is not None:
            lines += [f"Selected by `{selector}`: `{report.selected_trial}`; best held-out candidate (oracle): "
                      f"`{report.best_trial or 'unknown'}`.", ""]
        lines += _evaluation_lines(report)
        for key, name in report.figures.items():
            lines += [f"### {captions[key]}", "", f"![{captions[key]}]({name})", ""]
        lines += [f"*{note}*" for note in report.notes] + ([""] if report.notes else [])
        lines += _candidate_lines(report)
    return "\n".join(lines)


def write_report(store: Any, sweep_id: str, output: Path | str | None = None, selector: str | None = None) -> Path:
    """Write the sweep's PNG plots and ``report.md`` into ``output`` (default ``<store>/reports/<sweep>``)."""
    trials, selections = load_sweep_tables(store, sweep_id)
    finished = trials[trials["status"] == "finished"].sort_values("trial_id")
    if finished.empty:
        raise UserError(f"sweep {sweep_id!r} has no finished trial ({len(trials)} failed or stopped); nothing to "
                        "report")
    chosen = choose_selector(finished, selections, selector, saved_decision_order(store.root, sweep_id))
    output = Path(output) if output is not None else Path(store.root) / "reports" / sweep_id
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the report folder {output}: {error.strerror or error}") from None
    reports = [report_target(group.reset_index(drop=True), selections, str(target), chosen, output)
               for target, group in finished.groupby("target", sort=True)]
    path = output / "report.md"
    try:
        path.write_text(render_markdown(sweep_id, trials, selections, reports, chosen) + "\n")
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    write_html_report(store.root, sweep_id, trials, reports, chosen, output)
    return path
