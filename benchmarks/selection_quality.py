"""Benchmark: how well do raysel's label-free selectors pick hyperparameters? HIAST Table 8's protocol, measured.

HIAST (Zhu et al., TPAMI 2025, §5.4, Table 8) sweeps one hyperparameter at a time (the rest at their defaults),
selects by F-mIoU and shows the selected value is optimal or nearly so. This script runs the same protocol as real
raysel sweeps (in-process through raysel's API, on one local Ray owned by this script) on the embedded
street_scenes benchmark, for every target domain (``day_city``, ``dusk_city``; raysel sweeps and selects each
target separately) and every seed:

* HIAST one-at-a-time sweeps, 5 values each, every other swept hyperparameter fixed at its ``HiastConfig`` default
  (``--set``): alpha 0.1 0.3 0.5 0.7 0.9; gamma 1 4 8 16 32; lambda_i 0.1 0.5 1 5 10; lambda_cst 0.1 0.5 1 5 10
  (Table 8's values); k 10 12 14 16 18. Table 8 tries k = 12 14 16 of 19 classes around the paper's 14; the embedded
  data has the same 19 Cityscapes trainIds (18 occur) and the same default k = 14, so the grid keeps Table 8's three
  values and adds one step either side.
* one joint random sweep (``--search random``, ``--random-samples`` configurations, default 12) drawing all five
  from the same values;
* for ``t2sda`` and ``sfda`` (issue 7: they go through the same selection and store): one sweep per seed over
  their own ``search_spaces/*.yaml``;
* one default-configuration run per method, seed and target where no sweep contains it (t2sda, sfda).

Afterwards every finished sweep is re-scored offline exactly as ``python -m raysel.select`` does
(:func:`raysel.selection.decision.select_sweep` on the cached predictions, every label-free selector of
:func:`raysel.selection.selectors.selector_names` that applies), and each decision is compared with the trials'
held-out mIoU from the result store (``heldout_miou``; evaluation only, never an input of a selector): regret,
gap closed, Kendall tau, Spearman rho and top-3 regret (:mod:`raysel.selection.evaluate`). Two baselines:
``default configuration`` (the held-out mIoU of the trial with every swept hyperparameter at its default: the
sweep's own such trial, else the same method/seed/target's default trial from the other sweeps, so its regret
against a sweep's best may be negative) and ``random pick (expected)`` (the mean candidate).

Budgets (``--budget``): ``full`` keeps every method's defaults (HIAST 2 rounds x 120 iterations, ~85 s per trial
on one core); ``reduced`` (default) runs HIAST for 1 round of 120 iterations (each of the five hyperparameters acts
within a round: IAS thresholds restart every round and HPLA's hard classes come from them) and shortens t2sda/sfda
to 80/100 iterations, ~40 s per trial; ``quick`` is a smoke test of the whole script (tiny budgets, 3 values per
hyperparameter, 4 random configurations, one seed, one target, no BENCHMARKS.md). The source model and the
adversarial warm-up are cached stages (``<data root>/_raysel_cache``, keyed by data, model, stage settings and
seed), built by the first sweep of each seed and target and reused by every later sweep.

Resumable and time-boxed: the sweeps run as one raysel study (:mod:`raysel.orchestration.studies`) named
``selection_quality-BUDGET`` in ``--workdir`` (default ``results/selection_quality``, kept between runs), each sweep
named by budget, method, seed and kind. Rerunning the same command reuses finished sweeps and resumes an interrupted
one (finished trials are not run again). ``--max-minutes N`` stops between trials (running ones finish), prints what
is left and the command that continues, and still writes the section from the finished sweeps, headed
``**partial: k of n sweeps**`` until every sweep has finished (exit status 3 while work is left). Every writing run exports the
finished sweeps' rows to ``benchmarks/results/selection_quality.parquet`` (commit it with the section); ``--rows``
(default: that file when it exists) makes a new machine import those sweeps instead of running them, and the tables
are rebuilt from their stored decisions (no prediction cache travels with the rows).

    python -m benchmarks.selection_quality                  # full protocol (~200 trials), writes BENCHMARKS.md
    python -m benchmarks.selection_quality --max-minutes 60 # an hour of it; rerun the same command to go on
    python -m benchmarks.selection_quality --quick          # smoke run, prints only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from benchmarks._common import (BUDGETS, DEFAULT_KIND, HIAST_PARAMS, REPO, SweepCase, SweepPlan, add_campaign_arguments,
                                campaign_study, check_rows_argument, command_line, config_defaults, default_heldouts,
                                default_rows, evaluate_plans, export_campaign, finished_plans, fmt, format_section,
                                partial_note, regret_of, row_by_name, rows_path, run_campaign, selector_cell, set_texts,
                                space_swept_names, trial_facts, worse_cell, worse_text, write_section, yaml_value)
from raysel.orchestration.studies import EXIT_STOPPED
from raysel.selection import (DEFAULT_BASELINE, POINTS, RANDOM_BASELINE, SelectorSummary, best_selector,
                              summarize_selectors)

SECTION = "selection_quality"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("benchmarks/_common.py", "search_spaces", "raysel/methods/hiast.py", "raysel/methods/t2sda.py",
            "raysel/methods/sfda.py", "raysel/methods/daformer_strategies.py", "raysel/methods/base.py",
            "raysel/methods/stages.py", "raysel/methods/training.py", "raysel/methods/optim.py",
            "raysel/methods/augment.py", "raysel/methods/losses.py", "raysel/methods/networks.py",
            "raysel/methods/acceleration.py", "raysel/models", "raysel/sweep.py", "raysel/orchestration",
            "raysel/request.py", "raysel/request_build.py", "raysel/execution", "raysel/search_space.py",
            "raysel/hyperparameters.py", "raysel/store", "raysel/selection",
            "raysel/data/street_scenes.py", "raysel/data/digits.py", "raysel/data/generation.py",
            "raysel/data/common.py", "raysel/data/family.py", "raysel/heldout.py", "raysel/metrics.py")
METHODS = ("hiast", "t2sda", "sfda")
TARGETS = ("day_city", "dusk_city")
TABLE8_VALUES: dict[str, tuple[Any, ...]] = {
    "alpha": (0.1, 0.3, 0.5, 0.7, 0.9),
    "gamma": (1.0, 4.0, 8.0, 16.0, 32.0),
    "k": (10, 12, 14, 16, 18),
    "lambda_i": (0.1, 0.5, 1.0, 5.0, 10.0),
    "lambda_cst": (0.1, 0.5, 1.0, 5.0, 10.0),
}
QUICK_SELECTION_SIZE = 12
QUICK_RANDOM_SAMPLES = 4
RANDOM_KIND = "random"
SPACE_KIND = "space"


# --------------------------------------------------------------------------------------------------------------
# The plan: which sweeps to run
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """What every sweep of the benchmark shares."""

    results: Path
    data_root: Path
    targets: tuple[str, ...]
    seeds: tuple[int, ...]
    method_seeds: tuple[int, ...]  # seeds of the t2sda/sfda rows
    methods: tuple[str, ...]
    budget: str
    selection_size: int | None
    random_samples: int
    values: dict[str, tuple[Any, ...]]


def one_at_a_time_entries(param: str, values: Sequence[Any], defaults: dict[str, Any]) -> dict[str, str]:
    """``param`` on a grid of ``values``; every other HIAST Table 8 hyperparameter fixed at its default."""
    entries = {name: yaml_value(defaults[name]) for name in HIAST_PARAMS if name != param}
    entries[param] = f"{{grid: {yaml_value(list(values))}}}"
    return entries


def joint_random_entries(values: dict[str, Sequence[Any]]) -> dict[str, str]:
    """Every Table 8 hyperparameter drawn from its values (one draw per sample)."""
    return {name: f"{{choice: {yaml_value(list(values[name]))}}}" for name in HIAST_PARAMS}


def default_entries(method: str, names: Iterable[str]) -> dict[str, str]:
    """Every hyperparameter in ``names`` fixed at the method's default (a one-configuration sweep)."""
    defaults = config_defaults(method)
    return {name: yaml_value(defaults[name]) for name in names}


def sweep_id(options: RunOptions, method: str, seed: int, kind: str) -> str:
    """Deterministic sweep id, so a rerun of the same command finds (and reuses or resumes) its sweeps."""
    return f"sq-{options.budget}-{method}-s{seed}-{kind.replace('_', '')}"


def base_options(options: RunOptions, method: str, seed: int, entries: dict[str, str] | None = None,
                 **more: Any) -> dict[str, Any]:
    """Sweep options every sweep shares (data, targets, seed, budget), ``entries`` as further ``--set`` texts after
    the budget's, and ``more`` options."""
    sweep: dict[str, Any] = {"method": method, "data_root": str(options.data_root), "seed": seed,
                             "target": list(options.targets), "progress_interval": 120}
    if options.selection_size is not None:
        sweep["selection_size"] = options.selection_size
    budget = {key: yaml_value(value) for key, value in BUDGETS[options.budget][method].items()}
    return {**sweep, "overrides": set_texts({**budget, **(entries or {})}), **more}


def grid_points(method: str, entries: dict[str, str]) -> int:
    """Grid points of the method's YAML after ``entries`` are applied (trials per target and sample)."""
    from raysel.registry import get_method
    from raysel.search_space import load_search_space

    registered = get_method(method)
    space = load_search_space(registered.search_space_path, registered)
    return space.apply_overrides([f"{name}={text}" for name, text in entries.items()]).num_grid_points()


def hiast_plans(options: RunOptions, seed: int) -> list[SweepPlan]:
    """Five one-at-a-time sweeps and one joint random sweep of HIAST for one seed."""
    defaults = config_defaults("hiast")
    plans = []
    targets = len(options.targets)
    for param in HIAST_PARAMS:
        name = sweep_id(options, "hiast", seed, param)
        entries = one_at_a_time_entries(param, options.values[param], defaults)
        plans.append(SweepPlan("hiast", seed, param, name, base_options(options, "hiast", seed, entries),
                               len(options.values[param]) * targets, HIAST_PARAMS, options.targets))
    name = sweep_id(options, "hiast", seed, RANDOM_KIND)
    sweep = base_options(options, "hiast", seed, joint_random_entries(options.values), search="random",
                         num_samples=options.random_samples)
    plans.append(SweepPlan("hiast", seed, RANDOM_KIND, name, sweep, options.random_samples * targets,
                           HIAST_PARAMS, options.targets, options.random_samples))
    return plans


def method_plans(options: RunOptions, method: str, seed: int) -> list[SweepPlan]:
    """A non-HIAST method: its default configuration once, then a sweep over its own search-space YAML."""
    swept = space_swept_names(method)
    targets = len(options.targets)
    default_name = sweep_id(options, method, seed, DEFAULT_KIND)
    default_sweep = base_options(options, method, seed, default_entries(method, swept))
    space_name = sweep_id(options, method, seed, SPACE_KIND)
    points = grid_points(method, {key: yaml_value(value) for key, value in BUDGETS[options.budget][method].items()})
    return [SweepPlan(method, seed, DEFAULT_KIND, default_name, default_sweep, targets, swept, options.targets),
            SweepPlan(method, seed, SPACE_KIND, space_name, base_options(options, method, seed), points * targets,
                      swept, options.targets)]


def build_plans(options: RunOptions) -> list[SweepPlan]:
    """Every sweep of the benchmark, seed by seed (the first sweep of a seed builds its cached stages)."""
    plans: list[SweepPlan] = []
    for seed in options.seeds:
        for method in options.methods:
            if method != "hiast" and seed not in options.method_seeds:
                continue
            plans += hiast_plans(options, seed) if method == "hiast" else method_plans(options, method, seed)
    return plans


# --------------------------------------------------------------------------------------------------------------
# Evaluation: every sweep re-scored offline (benchmarks._common.evaluate_plans), compared with held-out mIoU
# --------------------------------------------------------------------------------------------------------------


def default_spread(heldouts: dict[tuple[str, int, str], list[float]]) -> float:
    """Largest max-min (points) of the default configuration's held-out mIoU over its repeats (run-to-run noise)."""
    spreads = [(max(values) - min(values)) * POINTS for values in heldouts.values() if len(values) > 1]
    return max(spreads) if spreads else math.nan


# --------------------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------------------


def _nanmean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(array)) if np.isfinite(array).any() else math.nan


def summarize(cases: Sequence[SweepCase], names: Sequence[str]) -> list[SelectorSummary]:
    """:func:`raysel.selection.evaluate.summarize_selectors` over the cases' evaluations (baselines included)."""
    return summarize_selectors([case.all_evaluations() for case in cases], names)


def cases_of(cases: Sequence[SweepCase], method: str | None = None, kind: str | None = None) -> list[SweepCase]:
    """The cases of one method and/or sweep kind."""
    return [case for case in cases if (method is None or case.method == method) and (kind is None or case.kind == kind)]


# --------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------


def fmt_value(value: Any) -> str:
    """A swept hyperparameter value, compactly (0.5, 8, 14)."""
    if value is None:
        return "?"
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def selector_table(rows: Sequence[SelectorSummary], best: str | None) -> str:
    """Markdown table: one row per selector and baseline; the best selector in bold."""
    lines = ["| selector | mean regret | worst regret | mean gap closed | mean Kendall τ | mean Spearman ρ | "
             "mean top-3 regret | worse than default (sweeps) | sweeps |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {selector_cell(row, best)} | {fmt(row.mean_regret)} | {fmt(row.worst_regret)} | {fmt(row.mean_gap_closed)} | "
                     f"{fmt(row.mean_kendall_tau)} | {fmt(row.mean_spearman_rho)} | {fmt(row.mean_top3_regret)} | "
                     f"{worse_cell(row)} | {row.sweeps} |")
    return "\n".join(lines)


def heldout_range(cases: Sequence[SweepCase]) -> str:
    """``min–max`` of the candidates' held-out mIoU (points) and the mean per-sweep spread."""
    if not cases:
        return "—"
    low = min(min(case.heldout) for case in cases) * POINTS
    high = max(max(case.heldout) for case in cases) * POINTS
    spread = np.mean([(max(case.heldout) - min(case.heldout)) * POINTS for case in cases])
    return f"{low:.1f}–{high:.1f} (spread {spread:.1f})"


def picks(cases: Sequence[SweepCase], name: str | None) -> str:
    """Per one-at-a-time case: the value ``name`` picked → the value with the best held-out mIoU."""
    items = []
    for case in cases:
        chosen = case.evaluations.get(name or "", {}).get("selected_trial_id")
        items.append(f"{fmt_value(case.value_of(chosen))}→{fmt_value(case.value_of(case.best_trial_id()))}")
    return ", ".join(items)


def kind_label(kind: str) -> str:
    """Readable sweep kind."""
    return {RANDOM_KIND: "joint random", SPACE_KIND: "search-space YAML"}.get(kind, kind)


def breakdown_table(cases: Sequence[SweepCase], best: str | None, values: dict[str, tuple[Any, ...]],
                    random_samples: int) -> str:
    """Table-8-style rows per swept hyperparameter: held-out range, F-mIoU / best / baseline regrets, picks."""
    lines = [f"| sweep | values | sweeps | held-out mIoU min–max (mean spread) | F-mIoU regret | {best} regret | "
             f"default regret | random regret | F-mIoU pick→best | {best} pick→best |",
             "|---|---|---:|---|---:|---:|---:|---:|---|---|"]
    for kind in [*HIAST_PARAMS, RANDOM_KIND]:
        group = cases_of(cases, "hiast", kind)
        if not group:
            continue
        shown = (", ".join(fmt_value(v) for v in values[kind]) if kind in values
                 else f"{random_samples} draws of all five")
        one_at_a_time = kind in HIAST_PARAMS
        lines.append(
            f"| {kind_label(kind)} | {shown} | {len(group)} | {heldout_range(group)} | "
            f"{fmt(_nanmean([regret_of(c, 'fmiou') for c in group]))} | "
            f"{fmt(_nanmean([regret_of(c, best) for c in group]))} | "
            f"{fmt(_nanmean([regret_of(c, DEFAULT_BASELINE) for c in group]))} | "
            f"{fmt(_nanmean([regret_of(c, RANDOM_BASELINE) for c in group]))} | "
            f"{picks(group, 'fmiou') if one_at_a_time else '—'} | {picks(group, best) if one_at_a_time else '—'} |")
    return "\n".join(lines)


def per_sweep_table(cases: Sequence[SweepCase], best: str | None) -> str:
    """Every (sweep, target): candidates, held-out range, and the regrets of F-mIoU, the best selector, default."""
    lines = [f"| method | seed | target | sweep | candidates | held-out mIoU min–max | F-mIoU regret | "
             f"{best} regret | default regret | default from |",
             "|---|---:|---|---|---:|---|---:|---:|---:|---|"]
    for case in cases:
        low, high = min(case.heldout) * POINTS, max(case.heldout) * POINTS
        source = "—" if case.default_heldout is None else ("this sweep" if case.default_in_sweep else "other sweeps")
        lines.append(f"| {case.method} | {case.seed} | {case.target} | {kind_label(case.kind)} | {len(case.heldout)} | "
                     f"{low:.1f}–{high:.1f} | {fmt(regret_of(case, 'fmiou'))} | {fmt(regret_of(case, best))} | "
                     f"{fmt(regret_of(case, DEFAULT_BASELINE))} | {source} |")
    return "\n".join(lines)


def regret_pair(row: SelectorSummary | None) -> str:
    """``mean / worst`` regret of a summary row (em dashes when absent)."""
    return "— / —" if row is None else f"{fmt(row.mean_regret)} / {fmt(row.worst_regret)}"


def methods_table(cases: Sequence[SweepCase], names: Sequence[str], methods: Sequence[str]) -> str:
    """A row per method: F-mIoU, that method's best selector, and the two baselines."""
    lines = ["| method | sweeps | held-out mIoU min–max (mean spread) | F-mIoU mean / worst regret | "
             "F-mIoU mean τ | best selector: mean / worst regret | default mean / worst regret | "
             "random mean / worst regret |",
             "|---|---:|---|---:|---:|---|---:|---:|"]
    for method in methods:
        group = cases_of(cases, method)
        if not group:
            continue
        rows = summarize(group, names)
        fmiou, best = row_by_name(rows, "fmiou"), row_by_name(rows, best_selector(rows))
        best_text = f"{best.name}: {regret_pair(best)}" if best else "—"
        lines.append(f"| {method} | {len(group)} | {heldout_range(group)} | {regret_pair(fmiou)} | "
                     f"{fmt(fmiou.mean_kendall_tau) if fmiou else '—'} | {best_text} | "
                     f"{regret_pair(row_by_name(rows, DEFAULT_BASELINE))} | "
                     f"{regret_pair(row_by_name(rows, RANDOM_BASELINE))} |")
    return "\n".join(lines)


def goal_lines(rows: Sequence[SelectorSummary], best: str | None) -> list[str]:
    """What the issue asked for, and what was measured (reported either way)."""
    fmiou, chosen, default = row_by_name(rows, "fmiou"), row_by_name(rows, best), row_by_name(rows, DEFAULT_BASELINE)
    lines = []
    if fmiou:
        met = "met" if fmiou.mean_regret <= 1.0 else "not met"
        lines.append(f"- F-mIoU mean regret {fmt(fmiou.mean_regret)} points (goal ≤ 1.0: {met}).")
    if chosen and fmiou:
        relation = "lower than" if chosen.mean_regret < fmiou.mean_regret else "not lower than"
        lines.append(f"- Best selector **{chosen.name}**: mean regret {fmt(chosen.mean_regret)}, {relation} "
                     f"F-mIoU's {fmt(fmiou.mean_regret)}.")
    if chosen and fmiou and default:
        lines.append(f"- Against the default configuration (mean regret {fmt(default.mean_regret)}): "
                     f"{chosen.name} is worse in {worse_text(chosen)} sweeps (goal: never), F-mIoU in "
                     f"{worse_text(fmiou)}.")
    return lines


@dataclass(frozen=True)
class RunFacts:
    """What the report says about how the run went (not results)."""

    options: RunOptions
    cpus: int
    wall_seconds: float
    trials_planned: int
    trials_finished: int
    trials_failed: int
    trial_seconds: dict[str, float]  # method -> mean wall seconds of one finished trial
    default_spread: float
    load_before: float
    load_after: float


def format_body(cases: Sequence[SweepCase], names: Sequence[str], facts: RunFacts) -> str:
    """The BENCHMARKS.md section body: protocol, goals, tables."""
    options = facts.options
    hiast_cases = cases_of(cases, "hiast")
    rows = summarize(hiast_cases, names)
    best = best_selector(rows)
    budget = {method: BUDGETS[options.budget][method] for method in options.methods}
    timing = ", ".join(f"{method} {seconds:.0f} s" for method, seconds in facts.trial_seconds.items())
    parts = [
        f"HIAST Table 8 protocol on the embedded street_scenes benchmark (game → {', '.join(options.targets)}; each "
        f"target swept and selected separately), seeds {', '.join(map(str, options.seeds))}, budget "
        f"`{options.budget}` ({json.dumps(budget)}), selection subset "
        f"{options.selection_size or 'default (500, i.e. all 300 target training images)'}. Per seed: five HIAST "
        "one-at-a-time sweeps (the other four at their defaults) and one joint random sweep of "
        f"{options.random_samples} configurations; t2sda and sfda one sweep each over their search-space YAML. "
        "Every sweep re-scored offline with each label-free selector (`raysel.selection.decision.select_sweep`); "
        "held-out mIoU of the target's labelled split is used only to evaluate. Regret in mIoU points.",
        "",
        f"Trials: {facts.trials_finished} finished, {facts.trials_failed} failed of {facts.trials_planned} planned; "
        f"mean trial wall time {timing} (concurrent trials on one local Ray with {facts.cpus} CPUs). "
        f"Total wall time {facts.wall_seconds / 60:.1f} min (sweeps reused from an earlier run count 0); load "
        f"average {facts.load_before:.1f} before / {facts.load_after:.1f} after. The default configuration, repeated "
        f"in the five one-at-a-time sweeps, varied by at most {fmt(facts.default_spread)} points between repeats "
        "(run-to-run noise).",
        "",
        *goal_lines(rows, best),
        "",
        f"### hiast: selectors over {len(hiast_cases)} sweeps (one-at-a-time and joint random)",
        "",
        selector_table(rows, best),
        "",
        "### hiast: per swept hyperparameter (as Table 8)",
        "",
        "Picks per sweep in case order (seed, target): value chosen → value with the best held-out mIoU.",
        "",
        breakdown_table(hiast_cases, best, options.values, options.random_samples),
        "",
        "### methods: a row per method",
        "",
        methods_table(cases, names, options.methods),
    ]
    for method in options.methods:
        group = cases_of(cases, method)
        if method == "hiast" or not group:
            continue
        method_rows = summarize(group, names)
        parts += ["", f"### {method}: selectors over {len(group)} sweep{'s' if len(group) != 1 else ''}", "",
                  selector_table(method_rows, best_selector(method_rows))]
    parts += ["", "### every sweep", "", per_sweep_table(cases, best)]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def quick_values(values: tuple[Any, ...], default: Any) -> tuple[Any, ...]:
    """Three values for the smoke run: the lowest, the default and the highest."""
    return tuple(dict.fromkeys((values[0], default, values[-1])))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="result store of the benchmark's sweeps, kept between runs so that rerunning the same "
                        "command continues (default results/selection_quality; --quick: results/selection_quality_quick)")
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default: raysel's default)")
    parser.add_argument("--targets", nargs="+", default=None,
                        help="target domains (default: day_city dusk_city; --quick: day_city)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default 0 1; --quick: 0)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--method-seeds", nargs="+", type=int, default=None,
                        help="seeds of the t2sda/sfda sweeps (default: --seeds)")
    parser.add_argument("--budget", choices=tuple(BUDGETS), default=None,
                        help="training budget per trial (default reduced; --quick: quick)")
    parser.add_argument("--random-samples", type=int, default=None, help="joint random sweep size (default 12)")
    parser.add_argument("--selection-size", type=int, default=None,
                        help="label-free selection subset (default: raysel's 500; --quick: 12)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets, 3 values, 1 seed: a smoke test; prints only")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section without touching BENCHMARKS.md or the committed rows file")
    add_campaign_arguments(parser, SECTION)
    args = parser.parse_args(argv)
    check_rows_argument(args.rows)
    if args.quick:
        args.no_write = True
    if args.workdir is None:
        args.workdir = REPO / "results" / (f"{SECTION}_quick" if args.quick else SECTION)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1])
    args.targets = args.targets or (list(TARGETS[:1]) if args.quick else list(TARGETS))
    args.budget = args.budget or ("quick" if args.quick else "reduced")
    args.random_samples = args.random_samples or (QUICK_RANDOM_SAMPLES if args.quick else 12)
    args.selection_size = args.selection_size or (QUICK_SELECTION_SIZE if args.quick else None)
    return args


def build_options(args: argparse.Namespace) -> RunOptions:
    """Resolve the data root and the swept values."""
    from raysel import data

    defaults = config_defaults("hiast")
    values = ({name: quick_values(TABLE8_VALUES[name], defaults[name]) for name in HIAST_PARAMS} if args.quick
              else dict(TABLE8_VALUES))
    return RunOptions(results=args.workdir.resolve(), data_root=(args.data_root or data.default_data_root()).resolve(),
                      targets=tuple(args.targets), seeds=tuple(args.seeds),
                      method_seeds=tuple(args.method_seeds or args.seeds), methods=tuple(args.methods),
                      budget=args.budget, selection_size=args.selection_size, random_samples=args.random_samples,
                      values=values)


def main(argv: list[str] | None = None) -> int:
    """Run what is left of the campaign (one study), then write the section from its finished sweeps."""
    args = parse_args(argv)
    options = build_options(args)
    plans = build_plans(options)
    planned = sum(plan.expected_trials for plan in plans)
    command = command_line("selection_quality.py", argv)
    rows = args.rows if args.quick else default_rows(SECTION, args.rows)
    study = campaign_study(f"{SECTION}-{args.budget}", options.results, plans, rows)
    print(f"selection_quality: {len(plans)} sweeps, {planned} trials planned ({args.budget} budget, "
          f"{args.cpus} CPUs, seeds {list(options.seeds)}, targets {list(options.targets)}); store {options.results}",
          flush=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    outcome = run_campaign(study, args.cpus, max_minutes=args.max_minutes, command=command)
    wall = time.perf_counter() - started
    done = finished_plans(plans, outcome)
    cases, names, frames = evaluate_plans(done, options.results)
    finished, failed, seconds = trial_facts(frames, done, options.results)
    facts = RunFacts(options, args.cpus, wall, planned, finished, failed, seconds,
                     default_spread(default_heldouts(frames, done)), load_before, os.getloadavg()[0])
    body = format_body(cases, names, facts)
    note = partial_note(len(done), len(plans))
    print(format_section(SECTION, command, body, note=note), flush=True)
    if not args.no_write:
        exported = export_campaign(study, rows_path(SECTION))
        if exported:
            print(exported, flush=True)
        write_section(SECTION, command, body, note=note)
    if not outcome.complete:
        return EXIT_STOPPED
    return 0 if cases else 1


if __name__ == "__main__":
    sys.exit(main())
