"""``report.html``: one self-contained page for a finished sweep, written next to ``report.md``
by :mod:`raysel.reporting.sweep_report`.

Everything is inside the file: the plots it drew are embedded as base64 PNG data URIs and the
style is inline, so the page opens offline, from an e-mail attachment or a CI artefact. Per target it shows the
decision and every selector's pick side by side with their agreement, the plots (score against held-out, marked
*oracle*; hyperparameters; per-class IoU of the selected and best candidates), the candidates; then the failed
trials with their error line, and the exact commands that reproduce the sweep, its selection and this report (from
the sweep's saved settings, ``sweeps/<SWEEP>/sweep.json``).
"""

from __future__ import annotations

import base64
import html
import os
import shlex
from pathlib import Path
from typing import Any, Sequence

from raysel.errors import UserError
from raysel.reporting.formatting import (HELDOUT_COLUMNS, TargetReport, format_number, heldout_column, points,
                                         score_columns, swept_hyperparameters)
from raysel.request import SETTINGS_FILE, SweepRequest, read_request_file
from raysel.selection.estimate import format_estimate, format_interval
from raysel.store.schema import HYPERPARAMETER_PREFIX, SCORE_PREFIX

CAPTIONS = {"scores": "Label-free scores against held-out scores (oracle check, never used to select)",
            "hyperparameters": "Swept hyperparameters against the selection score",
            "class_iou": "Held-out per-class IoU of the selected and the best candidate (oracle)"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
tr.decision td { font-weight: bold; background: #fff6e0; }
td.agree { color: #17672b; } td.disagree { color: #a11; }
.oracle { color: #7a4b00; font-style: italic; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.4em 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
.note { color: #555; font-style: italic; }
"""


def _cell(value: Any, digits: int = 4) -> str:
    """An escaped table cell: a number rounded to ``digits``, text as is, an en dash for missing or NaN."""
    return html.escape(format_number(value, digits))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    body = "".join(f"<tr class=\"{(row_classes or [''] * len(rows))[index]}\">" + "".join(f"<td>{c}</td>" for c in row)
                   + "</tr>" for index, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def embedded_image(path: Path, caption: str) -> str:
    """An ``<img>`` whose source is the PNG itself as a base64 data URI (no file or network needed)."""
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as error:
        raise UserError(f"cannot read the report plot {path}: {error.strerror or error}") from None
    return (f"<figure><img alt=\"{html.escape(caption)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def selector_picks(report: TargetReport, decision_selector: str | None) -> str:
    """Every scored selector's pick for one target (``report.picks``) next to the decision, with their agreement."""
    candidates = report.candidates
    heldout = heldout_column(candidates)
    selectors = list(report.picks)
    if not selectors:
        return "<p class=\"note\">No selector has scored these candidates yet.</p>"
    decided = report.selected_trial
    by_trial = candidates.set_index("trial_id")
    ordered = sorted(selectors, key=lambda name: (name != decision_selector, name))
    rows, classes = [], []
    for selector in ordered:
        pick = report.picks[selector]
        agrees = pick is not None and pick == decided
        truth = by_trial[heldout].get(pick) if heldout and pick is not None else None
        rows.append([html.escape(selector) + (" (decision)" if selector == decision_selector else ""),
                     f"<code>{html.escape(str(pick))}</code>", _cell(by_trial[SCORE_PREFIX + selector].get(pick)),
                     _cell(points(truth), 2),
                     f"<span class=\"{'agree' if agrees else 'disagree'}\">{'agrees' if agrees else 'differs'}</span>"])
        classes.append("decision" if selector == decision_selector else "")
    agreeing = sum(row[-1].endswith("agrees</span>") for row in rows)
    header = ["selector", "picked trial", "its score", f"{HELDOUT_COLUMNS.get(heldout, 'held-out')} of pick "
              "(points, oracle)", "vs decision"]
    return (f"<p>{agreeing} of {len(rows)} selectors pick the decided trial <code>{html.escape(str(decided))}</code>"
            f"; best held-out candidate <span class=\"oracle\">(oracle)</span>: "
            f"<code>{html.escape(str(report.best_trial))}</code>.</p>" + _table(header, rows, classes))


def candidate_table(report: TargetReport) -> str:
    """One row per candidate: swept hyperparameters, selector scores, label-free estimate, held-out score (oracle)."""
    candidates = report.candidates
    swept, scores = swept_hyperparameters(candidates), score_columns(candidates)
    heldout = heldout_column(candidates)
    estimated = "estimate_score" in candidates and bool(candidates["estimate_score"].notna().any())
    header = (["trial"] + [c[len(HYPERPARAMETER_PREFIX):] for c in swept] + scores
              + (["estimate (points, label-free)", "90 % interval"] if estimated else [])
              + ([f"{HELDOUT_COLUMNS[heldout]} (points, oracle)"] if heldout else []))
    rows = []
    for row in candidates.to_dict("records"):
        marks = [mark for mark, trial in (("selected", report.selected_trial), ("best", report.best_trial))
                 if row["trial_id"] == trial]
        cells = [f"<code>{html.escape(str(row['trial_id']))}</code>" + (f" ({', '.join(marks)})" if marks else "")]
        cells += [_cell(row[column]) for column in swept]
        cells += [_cell(row[column]) for column in scores]
        if estimated:
            cells += [format_estimate(row.get("estimate_score")),
                      format_interval(row.get("estimate_low"), row.get("estimate_high"))]
        cells += [_cell(points(row[heldout]), 2)] if heldout else []
        rows.append(cells)
    return _table(header, rows)


def target_section(report: TargetReport, decision_selector: str | None, output: Path) -> str:
    """One target: picks and agreement, embedded plots, notes and candidates."""
    parts = [f"<h2>Target <code>{html.escape(report.target)}</code></h2>", "<h3>Decision and every selector's pick</h3>",
             selector_picks(report, decision_selector)]
    for key, name in report.figures.items():
        parts += [f"<h3>{html.escape(CAPTIONS[key])}</h3>", embedded_image(output / name, CAPTIONS[key])]
    parts += [f"<p class=\"note\">{html.escape(note)}</p>" for note in report.notes]
    parts += ["<h3>Candidates</h3>", candidate_table(report)]
    return "\n".join(parts)


def failed_trials_section(trials: Any) -> str:
    """Trials that did not finish, each with its stored error line."""
    failed = trials[trials["status"] != "finished"].sort_values("trial_id")
    if failed.empty:
        return "<h2>Failed trials</h2><p>None: every trial finished.</p>"
    rows = [[f"<code>{html.escape(str(row['trial_id']))}</code>", html.escape(str(row.get("target"))),
             html.escape(str(row["status"])), _cell(row.get("retries")),
             html.escape(str(row.get("error") or "no error line stored"))] for row in failed.to_dict("records")]
    return "<h2>Failed trials</h2>" + _table(["trial", "target", "status", "retries", "error"], rows)


def read_saved_settings(results: Path, sweep_id: str) -> SweepRequest | None:
    """The sweep's saved request (``sweeps/<SWEEP>/sweep.json``), or None when the folder was not kept."""
    try:
        return read_request_file(results / "sweeps" / sweep_id / SETTINGS_FILE)
    except (OSError, UserError):
        return None


def reproduce_commands(request: SweepRequest | None, sweep_id: str, results: Path) -> list[str]:
    """The commands that re-run this sweep with the same settings, record its selection and write this report."""
    store = shlex.quote(str(results))
    if request is None:
        return [f"# the sweep's settings (sweeps/{sweep_id}/{SETTINGS_FILE}) are not in {results}: only the report "
                "can be rebuilt", f"python -m raysel.report {shlex.quote(sweep_id)} --results {store}"]
    words = ["python", "-m", "raysel.sweep", *request.command_arguments(results=str(results))]
    selectors = " ".join(f"--selector {shlex.quote(name)}" for name in request.selectors)
    return [shlex.join(words), f"python -m raysel.select {shlex.quote(sweep_id)} --results {store} {selectors}".strip(),
            f"python -m raysel.report {shlex.quote(sweep_id)} --results {store}"]


def render_html(sweep_id: str, trials: Any, reports: Sequence[TargetReport], selector: str | None, output: Path,
                commands: Sequence[str]) -> str:
    """The whole page: sweep facts, one section per target, failed trials, commands to reproduce."""
    first = trials.iloc[0]
    finished = int((trials["status"] == "finished").sum())
    methods = ", ".join(sorted(set(trials["method"].astype(str))))
    intro = (f"<p>Method {html.escape(methods)} on {html.escape(str(first['dataset']))} (source "
             f"{html.escape(str(first['source']))}); {len(trials)} trial(s), {finished} finished. The decision follows "
             f"selector <code>{html.escape(str(selector))}</code>. Held-out labels appear only in what is marked "
             f"<span class=\"oracle\">oracle</span>: they evaluate the label-free choices and never influenced them."
             "</p>")
    sections = [target_section(report, selector, output) for report in reports]
    reproduce = ("<h2>Reproduce</h2><pre>" + html.escape("\n".join(commands)) + "</pre>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>raysel report: {html.escape(sweep_id)}</title><style>{STYLE}</style></head><body>"
            f"<h1>Selection report: sweep <code>{html.escape(sweep_id)}</code></h1>{intro}"
            + "\n".join(sections) + failed_trials_section(trials) + reproduce + "</body></html>\n")


def write_html_report(results: Path | str, sweep_id: str, trials: Any, reports: Sequence[TargetReport],
                      selector: str | None, output: Path) -> Path:
    """Write ``output/report.html`` atomically (a temp file renamed into place: never a half-written page)."""
    results = Path(results)
    commands = reproduce_commands(read_saved_settings(results, sweep_id), sweep_id, results)
    page = render_html(sweep_id, trials, reports, selector, output, commands)
    path = output / "report.html"
    temporary = output / ".report.html.tmp"
    try:
        temporary.write_text(page, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    return path
