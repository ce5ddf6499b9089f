"""Benchmark: label-free selection on *wide* sweeps, where some configurations break training (issue 13 item 3).

Table 8's protocol (:mod:`benchmarks.selection_quality`) sweeps hyperparameters that barely matter; here, per seed:

* a **wide** sweep per method (hiast, t2sda, sfda on street_scenes; gsda and source_only on digits): a seeded random
  sample of N configurations (``--search random``; the same N configurations for every target of a seed: each
  (seed, target) is its own sweep and Tune's sampler is re-seeded with the seed before each) drawing
  - the learning rate from the default x 0.1, 0.316, 1, 3.16, 10 (two decades, log-spaced),
  - the training length (``iterations``, HIAST ``iterations_per_round``) from 0.5x, 1x, 2x the budget's,
  - the method's main loss weights from :data:`METHOD_SWEEPS` (up to values that break training);
* an **entropy-weight** sweep, one at a time over values up to breaking ones, for the hyperparameters that scale an
  entropy-like loss, where entropy/IM-style selectors are known to be biased: HIAST ``lambda_i`` (Eq. 12), SFDA
  ``maxsquare_weight`` (the weight of Eq. 2's MaxSquare loss in Eq. 16), GSDA ``alpha`` (Eq. 5);
* one **source-only reference** per family, seed and target: a ``source_only`` trial at the settings of the shared
  source stage every adapting method starts from (``source_learning_rate``/``source_iterations`` under the
  budget). That stage is cached per data, model, settings and seed, so this trial *is* the source model the
  adaptation started from, scored on the same held-out split by :mod:`raysel.heldout`; on digits it is also the
  ``source_only`` method's default configuration. A pick whose held-out score is below it is a *collapsed pick*.
* t2sda's default configuration (the others have theirs in the entropy sweep or as the reference).

Every finished sweep is re-scored offline with every applicable label-free selector exactly as ``raysel.select``
does (:func:`benchmarks._common.evaluate_plans`), against three baselines (default configuration, random
pick expected, oracle), next to the sweep's own headline and guarded decisions (:mod:`raysel.selection.guarded`).
Held-out scores (mIoU, accuracy on digits; points) are used only to evaluate, and the development and test targets
are reported apart. Flat sweeps and collapsed picks: :mod:`raysel.selection.evaluate`. The recommended selector per
family is the pre-registered rule of :mod:`raysel.selection.recommendation` applied to the development sweeps only
(it refuses test sweeps); the test tables then confirm or refute it.

Where the ranges come from: the paper defaults and the papers' own ranges (HIAST Table 8, SFDA Tables 5-6, GSDA §3.1,
T2S-DA §4) extended by a decade or more past them, so that the extreme values break training; no test-target label
chose anything here. Checked by single in-process trials on the development target photo_digits only (seed 0,
default budget): source-only 37.8 % accuracy, gsda default 37.8 %, learning rate 0.1 (x10) 25.6 %, entropy alpha 5
13.3 % (both below source-only), beta 100 diverged (NaN at iteration 60: a failed trial, which no selector can pick;
the report counts failed trials); source_only learning rate 0.01 40.0 %, weight decay 0.05 38.9 % (not broken: its
sweep may stay narrow; 300 iterations untried). Street ranges: unconfirmed by single trials (machine load 15-30);
check them on the benchmark's day_city rows (spread, candidates below source-only), never foggy_city's.

Budgets:
- ``quick``: a smoke test with tiny trainings, 1 seed, 3 configurations and 3 entropy values.
- ``short`` (the default): the test targets foggy_city, stroke_digits and warped_digits at seeds 0, 1 and 2 (the
  trial counts below predate warped_digits, which adds the digits test sweeps once more), and the development
  targets day_city and photo_digits at seed 0 only (``--dev-seeds``). The goals are judged on the test targets, and
  the development targets only serve design. It has 5 configurations per wide sweep, 4 entropy values and 100
  selection images, street trials as in selection_quality's short budget, GSDA digits trials of 100 iterations and
  source-only digits trials of 300: 160 trials in 44 sweeps, sized for the 90 minutes issue 13 asks for (the
  measured wall time is in BENCHMARKS.md).
- ``standard``: the same sweeps with 6 configurations, 5 entropy values, 150 selection images and the digits
  methods' default lengths: 192 trials. Measured on 2 quiet cores, 2 trials at a time: about 35 s of wall time per
  trial plus 2–7 min per seed for the stage builds, about 2.5–3 hours in all.
- ``decision``: short's sweeps, settings and selection images on every development target (street: day_city,
  dusk_city; digits: photo, noisy and inverted digits) and every test target, at seeds 0, 1 and 2 (issue 29 item 2).
  Every development sweep runs before any test sweep, so the pre-registered rule's input is complete (and its
  recommendation printed in the partial section) before a test label is read: 285 development trials in 78 sweeps,
  then the test sweeps; about 3.5 hours in all, run as chunks of ``--max-minutes``.
- ``guard``: the guarded decision measured where the default configuration is a candidate of every wide sweep (issue
  29 item 5). ``decision``'s seeds, targets, order, training settings, 5 configurations and 100 selection images, but
  only the source-only references and the wide sweeps, each with ``include_default: true``: the method's default
  configuration (its defaults for every swept hyperparameter, the training length included, so longer than the
  budget's 1x length: 2x for hiast, t2sda and source_only, 2.5x sfda, 1.5x gsda) runs first, 6 trials per wide sweep,
  and is what the guard keeps when it is not confident. No entropy-weight or t2sda default sweep. 81 sweeps and 366
  trials: development 51 sweeps and 231 trials (street 24 / 114, digits 27 / 117), then test 30 and 135 (street
  12 / 57, digits 18 / 78); per seed and target one reference of 1 trial and one wide sweep of 6 per method. Time
  (not measured): at decision's mean trial times with 2 trials at a time (source_only 13 s, hiast 28 s, t2sda 44 s,
  sfda 36 s, gsda 38 s; the default trial scaled by its length) and 15-20 s per sweep, about 2.1-2.2 hours, where the
  same count gives decision 2.6-2.7 hours against its estimated 3.5; so about 2.5-3 hours in all, run as chunks of
  ``--max-minutes``. The pre-registered rule runs on its development wide sweeps only; the shipped recommendation
  stays ``decision``'s.
- ``full``: every development and test target at every seed, 12 configurations, selection_quality's reduced street
  budget.

Resumable and time-boxed: the sweeps run as one raysel study (:mod:`raysel.orchestration.studies`) named after the
section, in ``--workdir`` (default ``results/selection_wide_BUDGET``, kept between runs; sweeps named by budget,
method, seed, target and kind). Rerunning the same command reuses finished sweeps and resumes an interrupted one
(finished trials are not run again). ``--max-minutes N`` stops between trials (running ones finish), prints what is
left and the command that continues, and still writes the section from the finished sweeps, headed
``**partial: k of n sweeps**`` until every sweep has finished (exit status 3 while work is left). Every writing run exports the
finished sweeps' rows to ``benchmarks/results/<section>.parquet`` (commit it with the section); ``--rows`` (default:
that file when it exists) makes a new machine import those sweeps instead of running them, and the tables are rebuilt
from their stored decisions (no prediction cache travels with the rows).

    python -m benchmarks.selection_wide --budget short     # writes the "## selection_wide" section of BENCHMARKS.md
    python -m benchmarks.selection_wide --budget standard  # writes "## selection_wide.standard"
    python -m benchmarks.selection_wide --budget guard     # writes "## selection_wide.guard" (issue 29 item 5)
    python -m benchmarks.selection_wide --max-minutes 45   # 45 minutes of it; rerun the same command to go on
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks._common import (BUDGETS, DEFAULT_KIND, REPO, SweepCase, SweepPlan, add_campaign_arguments,
                                campaign_study, check_rows_argument, command_line, config_defaults, default_heldouts,
                                default_rows, evaluate_plans, export_campaign, finished_plans, fmt, format_section,
                                partial_note, regret_of, row_by_name, rows_path, run_campaign, selector_cell, set_texts,
                                space_swept_names, trial_facts, worse_cell, write_section, yaml_value)
from raysel.orchestration.studies import EXIT_STOPPED
from raysel.selection import (BASELINES, DEFAULT_BASELINE, FLAT_SPREAD_POINTS, GUARD_COMPANIONS, GUARD_PANEL_SIZE,
                              GUARDED_DECISION, HEADLINE_DECISION, ORACLE_BASELINE, POINTS, RULE, RULE_FIXED_ON,
                              REGRESSION_FEATURES, EstimateCalibration, Recommendation, ScoreRegression,
                              SelectorSummary, SweepEvidence, best_selector, calibrated_estimate_accuracy,
                              collapse_indicators, count_collapsed, decision_evaluations, estimate_measures,
                              fit_estimate_calibration, fit_score_regression, heldout_spread, is_flat_sweep,
                              oracle_evaluation, recommend_selector, regressed_estimate_accuracy, strictly_better,
                              summarize_selectors, wide_sweep_goals)

SECTION = "selection_wide"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("benchmarks/_common.py", "search_spaces", "raysel/methods", "raysel/models", "raysel/sweep.py",
            "raysel/orchestration", "raysel/request.py", "raysel/request_build.py", "raysel/execution",
            "raysel/search_space.py", "raysel/hyperparameters.py", "raysel/store", "raysel/selection",
            "raysel/data/street_scenes.py", "raysel/data/digits.py", "raysel/data/generation.py",
            "raysel/data/common.py", "raysel/data/family.py", "raysel/heldout.py", "raysel/metrics.py")
FAMILY_OF = {"hiast": "street_scenes", "t2sda": "street_scenes", "sfda": "street_scenes", "gsda": "digits",
             "source_only": "digits"}
METHODS = tuple(FAMILY_OF)
REFERENCE_METHOD = "source_only"
WIDE_KIND = "wide"
LR_FACTORS = (0.1, 0.316, 1.0, 3.16, 10.0)
LENGTH_FACTORS = (0.5, 1.0, 2.0)
LENGTH_FIELD = {"hiast": "iterations_per_round"}  # every other method: "iterations"
METRIC = {"street_scenes": "mIoU", "digits": "accuracy"}


@dataclass(frozen=True)
class MethodSweeps:
    """What one method's sweeps vary beyond learning rate and length: main loss weights, and the entropy weight."""

    loss_weights: dict[str, tuple[float, ...]]
    entropy_weight: str | None = None
    entropy_values: tuple[float, ...] = ()  # the default included; ordered from weak to breaking


METHOD_SWEEPS: dict[str, MethodSweeps] = {
    # HIAST Table 8 tries lambda_cst 0.1-10 and lambda_i 0.1-10 (lambda_c is fixed at 0.1 in the paper).
    "hiast": MethodSweeps({"lambda_c": (0.01, 0.1, 1.0, 10.0), "lambda_cst": (0.1, 0.5, 5.0, 50.0)},
                          "lambda_i", (0.1, 1.0, 10.0, 30.0, 100.0)),
    # T2S-DA's pull-loss weight lambda (paper 0.1, Tab. 12 0.01-1).
    "t2sda": MethodSweeps({"lambda_": (0.01, 0.1, 1.0, 10.0)}),
    # SFDA Table 5 alpha 0.1-2, Table 6 beta 0.01-1; gamma fixed at 0.01 in the paper.
    "sfda": MethodSweeps({"alpha": (0.1, 1.0, 10.0), "beta": (0.05, 0.5, 5.0), "gamma": (0.01, 0.1, 1.0)},
                         "maxsquare_weight", (0.1, 1.0, 3.0, 10.0, 30.0)),
    # GSDA §3.1: alpha 0.02/0.2, beta 1/10.
    "gsda": MethodSweeps({"alpha": (0.02, 0.2, 2.0), "beta": (0.1, 1.0, 10.0, 100.0)},
                         "alpha", (0.0, 0.02, 0.2, 1.0, 5.0)),
    # Source-only: only the optimiser; weight decay up to values that shrink the network to chance.
    "source_only": MethodSweeps({"weight_decay": (5e-5, 5e-4, 5e-3, 5e-2)}),
}
DIGITS_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {"gsda": {}, "source_only": {}}, "standard": {"gsda": {}, "source_only": {}},
    # short: two thirds of GSDA's length and half of source-only's (its wide sweep still spans 150-600 iterations).
    "short": {"gsda": {"iterations": 100}, "source_only": {"iterations": 300}},
    "decision": {"gsda": {"iterations": 100}, "source_only": {"iterations": 300}},  # = short's
    "guard": {"gsda": {"iterations": 100}, "source_only": {"iterations": 300}},  # = decision's
    "quick": {"gsda": {"iterations": 4, "num_reports": 1, "source_iterations": 8}, "source_only": {"iterations": 8}},
}
# selection_quality's budgets
STREET_BUDGET = {"full": "reduced", "standard": "short", "short": "short", "decision": "short", "guard": "short",
                 "quick": "quick"}


@dataclass(frozen=True)
class Shape:
    """How big a budget's benchmark is."""

    seeds: tuple[int, ...]
    configurations: int
    entropy_values: int
    selection_size: int | None
    all_targets: bool  # every development and test target; else the first development target and the test targets
    development_seeds: tuple[int, ...] | None = None  # None: development targets at every seed
    development_first: bool = False  # every development sweep before any test sweep (the rule's input comes first)
    entropy_sweeps: bool = True  # the entropy-weight sweeps (False: wide sweeps and references only)
    include_default: bool = False  # each wide sweep runs the method's default configuration first (one trial more)


SHAPES = {"quick": Shape((0,), 3, 3, 12, False), "short": Shape((0, 1, 2), 5, 4, 100, False, (0,)),
          # short's sweeps on every development and test target at every seed, development first (issue 29 item 2)
          "decision": Shape((0, 1, 2), 5, 4, 100, True, None, development_first=True),
          "standard": Shape((0, 1, 2), 6, 5, 150, False, (0,)), "full": Shape((0, 1, 2), 12, 5, None, True)}
# decision's wide sweeps with the default configuration as a candidate of each, and nothing else (issue 29 item 5)
SHAPES["guard"] = replace(SHAPES["decision"], entropy_sweeps=False, include_default=True)


@dataclass(frozen=True)
class WideOptions:
    """What every sweep of the benchmark shares."""

    results: Path
    data_root: Path
    budget: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    configurations: int
    entropy_values: int
    selection_size: int | None
    targets: dict[str, tuple[str, ...]]  # family -> targets (development first)
    development_seeds: tuple[int, ...] | None = None  # seeds that also run the development targets (None: every seed)
    development_first: bool = False  # every development sweep before any test sweep
    entropy_sweeps: bool = True  # the entropy-weight sweeps run (Shape.entropy_sweeps)
    include_default: bool = False  # the default configuration is each wide sweep's first candidate (Shape)


# --------------------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------------------


def budget_settings(method: str, budget: str) -> dict[str, Any]:
    """The fixed training settings of ``method`` under ``budget`` (street: selection_quality's budgets)."""
    if FAMILY_OF[method] == "digits":
        return dict(DIGITS_BUDGETS[budget][method])
    return dict(BUDGETS[STREET_BUDGET[budget]][method])


def budget_defaults(method: str, budget: str) -> dict[str, Any]:
    """The method's default configuration under ``budget`` (config defaults, budget settings replacing some)."""
    return {**config_defaults(method), **budget_settings(method, budget)}


def round_value(value: float) -> float:
    """Three significant digits, so the YAML and the table show 6.32e-05, not 6.324555320336759e-05."""
    return float(f"{value:.3g}")


def wide_values(method: str, budget: str) -> dict[str, tuple[Any, ...]]:
    """The wide sweep's choices: learning rate over two decades, 0.5-2x training length, the main loss weights."""
    defaults = budget_defaults(method, budget)
    length = LENGTH_FIELD.get(method, "iterations")
    return {"learning_rate": tuple(round_value(defaults["learning_rate"] * f) for f in LR_FACTORS),
            length: tuple(dict.fromkeys(max(1, int(round(defaults[length] * f))) for f in LENGTH_FACTORS)),
            **METHOD_SWEEPS[method].loss_weights}


def swept_names(method: str, budget: str) -> tuple[str, ...]:
    """Every hyperparameter any sweep of ``method`` varies (they define its default configuration)."""
    entropy = METHOD_SWEEPS[method].entropy_weight
    return tuple(dict.fromkeys([*wide_values(method, budget), *([entropy] if entropy else [])]))


def fixed_entries(method: str, budget: str) -> dict[str, str]:
    """``--set`` entries fixing the budget, the YAML's swept names and every swept name at their defaults."""
    defaults = budget_defaults(method, budget)
    names = [*space_swept_names(method), *swept_names(method, budget)]
    fixed = {key: yaml_value(value) for key, value in budget_settings(method, budget).items()}
    return {**fixed, **{name: yaml_value(defaults[name]) for name in dict.fromkeys(names)}}


def entropy_values(method: str, count: int) -> tuple[float, ...]:
    """``count`` entropy-weight values from weak to breaking: the lowest, the default and the highest first."""
    values = METHOD_SWEEPS[method].entropy_values
    default = config_defaults(method)[METHOD_SWEEPS[method].entropy_weight]
    chosen = list(dict.fromkeys([values[0], default, values[-1], *values]))[:count]
    return tuple(sorted(chosen))


def sweep_name(options: WideOptions, method: str, seed: int, target: str, kind: str) -> str:
    """Deterministic sweep id (one target per sweep), so a rerun reuses or resumes it."""
    return f"sw-{options.budget}-{method}-s{seed}-{target}-{kind.replace('_', '')}"


def make_plan(options: WideOptions, method: str, seed: int, target: str, kind: str, entries: dict[str, str],
              trials: int, family: str | None = None) -> SweepPlan:
    """One single-target ``raysel.sweep`` run (``trials`` random samples for the wide kind, else a grid)."""
    name = sweep_name(options, method, seed, target, kind)
    sweep: dict[str, Any] = {"method": method, "data": family or FAMILY_OF[method],
                             "data_root": str(options.data_root), "seed": seed, "target": [target],
                             "progress_interval": 120}
    if options.selection_size is not None:
        sweep["selection_size"] = options.selection_size
    sweep["overrides"] = set_texts(entries)
    samples = trials if kind == WIDE_KIND else 1
    if kind == WIDE_KIND:
        sweep.update(search="random", num_samples=trials)
    overrides = tuple(budget_settings(method, options.budget).items())
    return SweepPlan(method, seed, kind, name, sweep, trials, swept_names(method, options.budget), (target,),
                     samples, overrides)


def reference_plan(options: WideOptions, family: str, seed: int, target: str) -> SweepPlan:
    """The source-only trial at the shared source stage's settings: the collapse reference of ``target``."""
    adapting = next(method for method, of in FAMILY_OF.items() if of == family and method != REFERENCE_METHOD)
    stage = budget_defaults(adapting, options.budget)
    settings = {"learning_rate": stage["source_learning_rate"], "iterations": stage["source_iterations"]}
    entries = {**fixed_entries(REFERENCE_METHOD, options.budget),
               **{name: yaml_value(value) for name, value in settings.items()}}
    plan = make_plan(options, REFERENCE_METHOD, seed, target, DEFAULT_KIND, entries, 1, family)
    return SweepPlan(plan.method, seed, plan.kind, plan.sweep_id, plan.options, 1, tuple(settings), plan.targets, 1,
                     tuple(settings.items()))


def with_default_candidate(plan: SweepPlan, method: str, budget: str) -> SweepPlan:
    """A wide plan whose sweep runs the method's default configuration first (``include_default``): one trial more,
    and that trial is the plan's default configuration, as raysel's guard recognises it (the method's defaults for
    every swept hyperparameter, training length included; the budget's fixed settings stay)."""
    swept = wide_values(method, budget)
    return replace(plan, options={**plan.options, "include_default": True}, expected_trials=plan.expected_trials + 1,
                   default_overrides=tuple((name, value) for name, value in plan.default_overrides
                                           if name not in swept))


def method_plans(options: WideOptions, method: str, seed: int, target: str) -> list[SweepPlan]:
    """The wide sweep, the entropy-weight sweep (if any, unless the budget has none) and t2sda's default
    configuration (unless the wide sweep has it) of one target."""
    fixed = fixed_entries(method, options.budget)
    choices = {name: f"{{choice: {yaml_value(list(values))}}}"
               for name, values in wide_values(method, options.budget).items()}
    wide = make_plan(options, method, seed, target, WIDE_KIND, {**fixed, **choices}, options.configurations)
    plans = [with_default_candidate(wide, method, options.budget) if options.include_default else wide]
    weight = METHOD_SWEEPS[method].entropy_weight
    if weight and options.entropy_sweeps:
        values = entropy_values(method, options.entropy_values)
        grid = {weight: f"{{grid: {yaml_value(list(values))}}}"}
        plans.append(make_plan(options, method, seed, target, weight, {**fixed, **grid}, len(values)))
    if not weight and method != REFERENCE_METHOD and not options.include_default:
        plans.append(make_plan(options, method, seed, target, DEFAULT_KIND, fixed, 1))
    return plans


def runs_target(options: WideOptions, family: str, target: str, seed: int) -> bool:
    """Test targets run at every seed; development targets (design only) at ``development_seeds`` when given."""
    if options.development_seeds is None or target_role(family, target) == "test":
        return True
    return seed in options.development_seeds


def build_plans(options: WideOptions) -> list[SweepPlan]:
    """Every sweep, seed by seed and target by target; each target's source-only reference first. With
    ``development_first`` every development sweep comes before any test sweep (each group seed by seed)."""
    plans: list[SweepPlan] = []
    for roles in ((("development",), ("test",)) if options.development_first else (("development", "test"),)):
        for seed in options.seeds:
            for family, targets in options.targets.items():
                methods = [method for method in options.methods if FAMILY_OF[method] == family]
                for target in targets if methods else ():
                    if target_role(family, target) not in roles or not runs_target(options, family, target, seed):
                        continue
                    plans.append(reference_plan(options, family, seed, target))
                    for method in methods:
                        plans += method_plans(options, method, seed, target)
    return plans


# --------------------------------------------------------------------------------------------------------------
# Evaluation: selection_quality's re-scoring, plus roles, the source-only reference and collapses
# --------------------------------------------------------------------------------------------------------------


@dataclass
class WideCase:
    """One sweep on one target (:class:`benchmarks._common.SweepCase`) with what this benchmark adds."""

    case: SweepCase
    family: str
    role: str  # "development" or "test" (the target's role in its family)
    source_only: float | None  # held-out score of the source-only reference on this target and seed

    def evaluations(self) -> dict[str, dict[str, Any]]:
        """Every selector's evaluation, the sweep's headline and guarded decisions, and the three baselines."""
        decisions = decision_evaluations(self.case.heldout, self.case.trial_ids, self.case.decision_picks)
        return {**self.case.all_evaluations(), **decisions, ORACLE_BASELINE: oracle_evaluation(self.case.heldout)}

    def collapses(self) -> dict[str, float]:
        """Per selector, decision and baseline: 1 when its pick is below source-only (random: the expected
        fraction)."""
        ids = self.case.trial_ids
        selected = {name: ids.index(evaluation["selected_trial_id"])
                    for name, evaluation in self.evaluations().items()
                    if name not in BASELINES and evaluation.get("selected_trial_id") in ids}
        return collapse_indicators(self.case.heldout, selected, self.source_only, self.case.default_heldout)

    def evidence(self) -> SweepEvidence:
        """What the recommendation rule reads of this sweep (it refuses a test target's)."""
        return SweepEvidence(self.role, self.evaluations(), self.collapses())

    @property
    def spread(self) -> float:
        """Held-out best minus worst, in points."""
        return heldout_spread(self.case.heldout)


def target_role(family: str, target: str) -> str:
    """``test`` for a family's held-back test targets, else ``development``."""
    from raysel.data import get_family

    return "test" if target in get_family(family).test_targets else "development"


def wide_cases(plans: Sequence[SweepPlan], results: Path) -> tuple[list[WideCase], list[str], dict[str, Any]]:
    """Re-score every sweep (every applicable selector) and attach role and source-only reference to each case."""
    cases, names, frames = evaluate_plans(plans, results)
    references = default_heldouts(frames, [plan for plan in plans
                                           if plan.method == REFERENCE_METHOD and plan.kind == DEFAULT_KIND])
    family_of_sweep = {plan.sweep_id: plan.options["data"] for plan in plans}
    wide = []
    for case in cases:
        family = family_of_sweep[case.sweep_id]
        reference = references.get((REFERENCE_METHOD, case.seed, case.target))
        wide.append(WideCase(case, family, target_role(family, case.target),
                             float(np.mean(reference)) if reference else None))
    return wide, names, frames


# --------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------


def collapsed_text(cases: Sequence[WideCase], name: str) -> str:
    """``k/n`` collapsed picks over the sweeps with a source-only reference (the random pick's k is expected)."""
    total, counted = count_collapsed([case.collapses() for case in cases], name)
    if not counted:
        return "—"
    return f"{total:.1f}/{counted}" if name in BASELINES and not float(total).is_integer() else f"{total:.0f}/{counted}"


def selector_table(cases: Sequence[WideCase], names: Sequence[str]) -> str:
    """A row per selector and baseline: regrets, gap closed, τ, top-3 regret, collapsed picks; best in bold."""
    rows: list[SelectorSummary] = summarize_selectors([case.evaluations() for case in cases], names)
    best = best_selector(rows)
    lines = ["| selector | mean regret | worst regret | mean gap closed | mean Kendall τ | mean top-3 regret | "
             "collapsed picks | worse than default | most behind default | sweeps |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {selector_cell(row, best)} | {fmt(row.mean_regret)} | {fmt(row.worst_regret)} | "
                     f"{fmt(row.mean_gap_closed)} | {fmt(row.mean_kendall_tau)} | "
                     f"{fmt(row.mean_top3_regret)} | {collapsed_text(cases, row.name)} | {worse_cell(row)} | "
                     f"{signed(row.most_behind_default)} | {row.sweeps} |")
    return "\n".join(lines)


def spread_line(cases: Sequence[WideCase]) -> str:
    """How much the sweeps spread: mean and range of spreads, flat sweeps, sweeps with a collapsed candidate."""
    spreads = [case.spread for case in cases]
    flat = sum(is_flat_sweep(case.case.heldout) for case in cases)
    below = sum(bool(case.source_only is not None and min(case.case.heldout) < case.source_only) for case in cases)
    return (f"Held-out spread per sweep: mean {np.mean(spreads):.1f}, {min(spreads):.1f}–{max(spreads):.1f} points; "
            f"{sum(s >= 5.0 for s in spreads)}/{len(cases)} sweeps spread ≥ 5 points, {flat} flat "
            f"(< {FLAT_SPREAD_POINTS:g}); {below} have a candidate below source-only.")


def role_sections(cases: Sequence[WideCase], names: Sequence[str], options: WideOptions, role: str) -> list[str]:
    """The tables of one role (development or test): per family, wide and entropy-weight sweeps apart."""
    parts: list[str] = []
    for family in options.targets:
        group = [case for case in cases if case.role == role and case.family == family]
        if not group:
            continue
        targets = ", ".join(dict.fromkeys(case.case.target for case in group))
        for kind in ("wide sweeps", "entropy-weight sweeps"):
            chosen = [case for case in group if (case.case.kind == WIDE_KIND) == (kind == "wide sweeps")]
            if chosen:
                parts += ["", f"### {role} targets — {family} ({targets}): {kind}, {METRIC[family]} points", "",
                          spread_line(chosen), "", selector_table(chosen, names)]
    return parts


def current_default(family: str) -> str:
    """The default selector of the family's methods (their sweeps' headline; F-mIoU if they differed), which a
    recommendation must beat on the test targets."""
    from raysel.registry import get_method

    defaults = {get_method(method).default_selectors[0] for method, of in FAMILY_OF.items() if of == family}
    return defaults.pop() if len(defaults) == 1 else "fmiou"


def family_recommendation(cases: Sequence[WideCase], names: Sequence[str], family: str) -> Recommendation:
    """The pre-registered rule (raysel.selection.recommendation.RULE) on the family's development sweeps only."""
    return recommend_selector([c.evidence() for c in cases if c.family == family and c.role == "development"], names)


def verdict_cell(row: SelectorSummary, rows: Sequence[SelectorSummary], default: str) -> str:
    """Whether the test wide sweeps confirm a recommendation: lower mean and worst regret than the default selector."""
    if row.name == default:
        return f"— (it is the default, {default})"
    return "confirmed" if strictly_better(row, row_by_name(rows, default)) else f"refuted (not better than {default})"


def goal_table(cases: Sequence[WideCase], names: Sequence[str], options: WideOptions) -> str:
    """Per family: the selector the pre-registered rule recommends from the development sweeps (no test label chose
    it), judged against the goals on the test targets' wide sweeps, and whether those confirm it."""
    lines = ["| family | recommended (rule on development) | test wide sweeps | mean regret | worst regret | "
             "goals met | goals missed | test verdict |", "|---|---|---:|---:|---:|---|---|---|"]
    for family in options.targets:
        test = [c for c in cases if c.family == family and c.role == "test" and c.case.kind == WIDE_KIND]
        recommendation = family_recommendation(cases, names, family)
        if not recommendation.sweeps or not test:
            continue
        recommended = recommendation.selector
        if recommended is None:
            lines.append(f"| {family} | none ({recommendation.reason}) | {len(test)} | — | — | — | — | "
                         f"the default stays ({current_default(family)}) |")
            continue
        rows = summarize_selectors([c.evaluations() for c in test], names)
        row = row_by_name(rows, recommended)
        if row is None or not row.sweeps:  # it scored no test sweep (e.g. no finite score): it cannot meet a goal
            lines.append(f"| {family} | {recommended} | {len(test)} | — | — | "
                         "none (it scored no test sweep) | all | refuted (no test sweep) |")
            continue
        collapsed, _ = count_collapsed([c.collapses() for c in test], recommended)
        checks = wide_sweep_goals(row, rows, collapsed)
        met = ", ".join(goal for goal, holds in checks if holds) or "none"
        missed = ", ".join(goal for goal, holds in checks if not holds) or "none"
        lines.append(f"| {family} | {recommended} | {len(test)} | {fmt(row.mean_regret)} | "
                     f"{fmt(row.worst_regret)} | {met} | {missed} | {verdict_cell(row, rows, current_default(family))} |")
    return "\n".join(lines)


def signed(value: float | None, digits: int = 2) -> str:
    """A number with its sign (``+2.48``, ``-0.50``), or an em dash for NaN/None."""
    return "—" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def regret_pair(row: SelectorSummary | None) -> str:
    """``mean / worst`` regret of a summary row, or an em dash without one."""
    return "—" if row is None else f"{fmt(row.mean_regret)} / {fmt(row.worst_regret)}"


GUARD_BEHIND_DEFAULT_POINTS = 0.5  # issue 29: the guarded decision never this far behind the default configuration


def guard_goal_table(cases: Sequence[WideCase], names: Sequence[str], options: WideOptions) -> str:
    """Per family and sweep kind on the test targets: the shipped decision (the default selector's pick, guarded)
    beside the unguarded pick and the default configuration, with issue 29's goals for it (mean regret ≤ 0.5, worst
    ≤ 1.5, no collapsed pick, never more than 0.5 points behind the default configuration on a sweep)."""
    lines = ["| family | test sweeps | guarded: mean / worst regret | unguarded: mean / worst | default configuration: "
             "mean / worst | guarded: collapsed picks | guarded: most behind default | goals met | goals missed |",
             "|---|---|---|---|---|---:|---:|---|---|"]
    for family in options.targets:
        for kind, label in ((WIDE_KIND, "wide"), (None, "entropy-weight")):
            test = [c for c in cases if c.family == family and c.role == "test"
                    and (c.case.kind == WIDE_KIND) == (kind == WIDE_KIND)]
            rows = {row.name: row for row in summarize_selectors([c.evaluations() for c in test], names)}
            guarded = rows.get(GUARDED_DECISION)
            if guarded is None or not guarded.sweeps:
                continue
            collapsed, counted = count_collapsed([c.collapses() for c in test], GUARDED_DECISION)
            checks = [("mean regret ≤ 0.5", guarded.mean_regret <= 0.5),
                      ("worst regret ≤ 1.5", guarded.worst_regret <= 1.5),
                      ("no collapsed pick", counted > 0 and collapsed == 0),
                      (f"never > {GUARD_BEHIND_DEFAULT_POINTS:g} behind the default configuration",
                       guarded.most_behind_default <= GUARD_BEHIND_DEFAULT_POINTS)]
            lines.append(f"| {family} | {len(test)} {label} | {regret_pair(guarded)} | "
                         f"{regret_pair(rows.get(HEADLINE_DECISION))} | {regret_pair(rows.get(DEFAULT_BASELINE))} | "
                         f"{collapsed_text(test, GUARDED_DECISION)} | "
                         f"{signed(guarded.most_behind_default)} | "
                         f"{', '.join(goal for goal, holds in checks if holds) or 'none'} | "
                         f"{', '.join(goal for goal, holds in checks if not holds) or 'none'} |")
    return "\n".join(lines)


def rule_text(cases: Sequence[WideCase], names: Sequence[str], options: WideOptions) -> str:
    """The rule verbatim, and per family why it recommends what it does (or nothing), from development sweeps."""
    items = [f"The rule (fixed on {RULE_FIXED_ON}, before the 3-seed development tables; "
             f"`raysel.selection.recommendation`): {RULE}", ""]
    if not options.entropy_sweeps:
        items += ["Its input here: this budget's development wide sweeps only (no entropy-weight sweep ran); the "
                  "shipped recommendation stays the `decision` budget's (`selection_wide.decision`).", ""]
    for family in options.targets:
        recommendation = family_recommendation(cases, names, family)
        if not recommendation.sweeps:
            continue
        excluded = "; ".join(f"{name}: {why}" for name, why in recommendation.excluded.items()) or "none"
        items.append(f"- {family}: {recommendation.selector or 'no recommendation'} ({recommendation.reason}); "
                     f"eligible in the rule's order: {', '.join(recommendation.eligible) or 'none'}; not eligible: "
                     f"{excluded}.")
    return "\n".join(items)


def sweep_table(cases: Sequence[WideCase]) -> str:
    """Every (sweep, target): role, held-out range and spread, the flat flag, the source-only reference."""
    lines = ["| role | method | seed | target | sweep | candidates | held-out min–max | spread | flat | source-only | "
             "below source-only | default regret |", "|---|---|---:|---|---|---:|---|---:|---|---:|---:|---:|"]
    for item in cases:
        case, heldout = item.case, item.case.heldout
        below = "—" if item.source_only is None else str(sum(v < item.source_only for v in heldout))
        source = "—" if item.source_only is None else f"{item.source_only * POINTS:.1f}"
        lines.append(f"| {item.role} | {case.method} | {case.seed} | {case.target} | {case.kind} | {len(heldout)} | "
                     f"{min(heldout) * POINTS:.1f}–{max(heldout) * POINTS:.1f} | {item.spread:.1f} | "
                     f"{'flat' if is_flat_sweep(heldout) else 'no'} | {source} | {below} | "
                     f"{fmt(regret_of(case, DEFAULT_BASELINE))} |")
    return "\n".join(lines)


def default_candidate(method: str, budget: str) -> dict[str, Any]:
    """The wide sweep's swept hyperparameters at the method's defaults: what ``include_default`` runs first."""
    defaults = config_defaults(method)
    return {name: defaults[name] for name in wide_values(method, budget)}


def ranges_text(options: WideOptions) -> str:
    """The swept values per method (wide choices; entropy-weight grid; the default configuration run first)."""
    items = []
    for method in options.methods:
        wide = json.dumps(wide_values(method, options.budget))
        weight = METHOD_SWEEPS[method].entropy_weight if options.entropy_sweeps else None
        entropy = f"; {weight} one at a time {list(entropy_values(method, options.entropy_values))}" if weight else ""
        default = (f"; first the default configuration {json.dumps(default_candidate(method, options.budget))}"
                   if options.include_default else "")
        items.append(f"- {method} ({FAMILY_OF[method]}): wide {wide}{entropy}{default}")
    return "\n".join(items)


def sweeps_text(options: WideOptions) -> str:
    """What the budget sweeps, for the section's first sentence."""
    if not options.entropy_sweeps:
        return "Wide sweeps with the default configuration as a candidate" if options.include_default else "Wide sweeps"
    return "Wide and entropy-weight sweeps"


def guard_purpose_text(options: WideOptions) -> str:
    """Why a budget whose wide sweeps include the default configuration exists, what its default configuration is and
    what its recommendation is worth (issue 29 item 5)."""
    return ("What this budget is for (issue 29 item 5): the guarded decision measured where the default configuration "
            "is a candidate of every wide sweep. In the `decision` budget it was not, so a guard that was not "
            "confident could not keep it (the default configuration rows there come from other sweeps). Here every "
            "wide sweep sets `include_default: true` (`raysel.request.SearchPlan.include_default`): the method's "
            f"default configuration runs first, {options.configurations + 1} candidates per sweep, the other "
            "settings are the `decision` budget's. *Default configuration* means what that trial runs and raysel's "
            "guard recognises: the method's defaults for every swept hyperparameter, the training length included "
            "(longer than the budget's 1x length; values under *Swept values*), the budget's fixed settings kept. "
            "The *default configuration* rows here are that trial, so for the adapting methods they are not the "
            "`decision` budget's, which trained the default configuration for the budget's length. No entropy-weight "
            "sweep and no separate default-configuration sweep run, so there are no entropy-weight tables (what the "
            "pre-registered rule reads here is said with the rule below).")


ESTIMATE_GOALS = (3.0, 0.85)  # issue 29: mean absolute error <= 3 points, the 90 % interval covering >= 85 %
# The held-out column each family's rows carry for raysel.selection's estimate evaluation (ESTIMATE_HELDOUT_COLUMNS).
HELDOUT_COLUMN = {"street_scenes": "heldout_miou", "digits": "heldout_accuracy"}
RAW_ESTIMATE, CALIBRATED_ESTIMATE, REGRESSED_ESTIMATE = "raw", "dev-calibrated", "dev-regressed"
NO_FIT_YET = "none yet (fewer than 10 development candidates)"


def _fraction(value: Any) -> float:
    """A stored number as a float, NaN when it is missing."""
    return float("nan") if value is None else float(value)


def estimate_rows(frames: dict[str, Any], plans: Sequence[SweepPlan]) -> list[dict[str, Any]]:
    """Every finished candidate of the finished sweeps with its label-free estimate and interval (``estimate_*``
    columns, fractions) and the scores the score regression may read (``REGRESSION_FEATURES``) beside its held-out
    score (under the family's ``HELDOUT_COLUMN``), with family, role, target and sweep: the rows raysel.selection's
    estimate measures read."""
    rows = []
    for plan in plans:
        frame = frames.get(plan.sweep_id)
        if frame is None or frame.empty or "estimate_score" not in frame:
            continue
        family, target = plan.options["data"], plan.targets[0]
        for trial in frame.itertuples():
            estimate, low, high = (_fraction(getattr(trial, name, None)) for name in ("estimate_score", "estimate_low",
                                                                                     "estimate_high"))
            heldout = float(trial.heldout)
            if not np.isfinite(estimate) or not np.isfinite(heldout):
                continue
            scores = {name: _fraction(getattr(trial, name, None)) for name in REGRESSION_FEATURES[1:]}
            rows.append({"family": family, "role": target_role(family, target), "target": target,
                         "sweep_id": plan.sweep_id, **scores,
                         "estimate_score": estimate, "estimate_low": low, "estimate_high": high,
                         "estimate_method": getattr(trial, "estimate_method", None), HELDOUT_COLUMN[family]: heldout})
    return rows


def estimate_line(family: str, role: str, kind: str, count: int, scores: tuple[float, float, float, float],
                  goals: str | None = None) -> str:
    """One row of the estimate table; ``scores``: mean absolute error, median error, coverage, mean width (points,
    share; NaN shows ``—``); ``goals`` defaults to met / missed on test targets."""
    error, median, coverage, width = scores
    if goals is None:
        goals = ("met" if error <= ESTIMATE_GOALS[0] and coverage >= ESTIMATE_GOALS[1] else "missed"
                 ) if role == "test" else "— (development)"
    cells = [f"{value:.2f}" if np.isfinite(value) else "—" for value in (error, median)]
    cells.append(f"{100 * coverage:.0f} %" if np.isfinite(coverage) else "—")
    cells.append(f"{width:.1f}" if np.isfinite(width) else "—")
    return f"| {family} | {role} | {kind} | {count} | {' | '.join(cells)} | {goals} |"


# A fitted estimate's measure: (fit rows, judged rows) -> (MAE points, coverage, mean width points, candidates judged).
EstimateMeasure = Callable[[Sequence[dict[str, Any]], Sequence[dict[str, Any]]], tuple[float, float, float, int]]


def calibrated_measure(fit_rows: Sequence[dict[str, Any]],
                       eval_rows: Sequence[dict[str, Any]]) -> tuple[float, float, float, int]:
    """The dev-calibrated estimate fitted on ``fit_rows`` and judged on ``eval_rows``: (MAE points, coverage, mean
    width points, candidates judged), as :func:`raysel.selection.evaluate_estimate.regressed_estimate_accuracy`
    gives them."""
    error, coverage, width = calibrated_estimate_accuracy(fit_rows, eval_rows)
    return error, coverage, width, len(eval_rows) if np.isfinite(error) else 0


def leave_one_target_out(development: Sequence[dict[str, Any]],
                         measure: EstimateMeasure = calibrated_measure) -> tuple[int, tuple[float, float, float]]:
    """A fitted estimate on development targets: each target judged by a ``measure`` fitted on the family's other
    development targets; (candidates judged, (MAE points, coverage, mean width points) pooled over them)."""
    judged = []
    for target in dict.fromkeys(row["target"] for row in development):
        held = [row for row in development if row["target"] == target]
        *scores, count = measure([row for row in development if row["target"] != target], held)
        if count:
            judged.append((count, scores))
    count = sum(size for size, _ in judged)
    if not count:
        return 0, (float("nan"),) * 3
    pooled = tuple(sum(size * scores[index] for size, scores in judged) / count for index in range(3))
    return count, (pooled[0], pooled[1], pooled[2])


def fitted_lines(family: str, kind: str, measure: EstimateMeasure, development: Sequence[dict[str, Any]],
                 test: Sequence[dict[str, Any]]) -> list[str]:
    """The rows of one fitted estimate (``kind``, fitted and judged by ``measure``) for one family: development
    targets left out in turn, then the test targets judged by the fit on every development candidate (test rows
    never feed a fit)."""
    count, scores = leave_one_target_out(development, measure)
    lines = [estimate_line(family, "development", kind, count, (scores[0], float("nan"), *scores[1:]),
                           "— (development, each target left out in turn)" if count else
                           "— (needs two development targets and 10 candidates outside each)")]
    if not test:
        return lines + [estimate_line(family, "test", kind, 0, (float("nan"),) * 4, "no test candidate yet")]
    error, coverage, width, count = measure(development, test)
    goals = None if np.isfinite(error) else "— (fewer than 10 development candidates to fit on)"
    return lines + [estimate_line(family, "test", kind, count, (error, float("nan"), coverage, width), goals)]


def calibration_text(calibrations: Sequence[EstimateCalibration]) -> str:
    """The paragraph under the estimate table: how the dev-calibrated rows are made, and each family's fit."""
    fits = "; ".join(f"{item.key}: {item.candidates} development candidates of {', '.join(item.fitted_on)} "
                     f"(estimates {item.estimate_method or 'unrecorded'}), logit offsets median "
                     f"{item.median_offset:+.2f}, interval [{item.low_offset:+.2f}, {item.high_offset:+.2f}]"
                     for item in calibrations)
    return ("*dev-calibrated*: the stored estimate corrected by a split-conformal calibration in logit space "
            "(`raysel.selection.evaluate_estimate.fit_estimate_calibration`, "
            "`raysel.selection.estimate_calibration.calibrate_estimate`): "
            "the residual logit(held-out) − logit(estimate) over a family's development candidates, estimate methods "
            "pooled; the point moves by the residuals' median and the 90 % interval spans their conformal quantiles. "
            "It is fitted on development candidates only, and its form (logit space, rather than differences or "
            "ratios) was chosen before any test target was judged; test targets never feed the fit. Development "
            "rows: each development target judged by the calibration fitted on the family's other development "
            "targets, pooled (median error not computed: `—`). Test rows: the calibration fitted on every "
            f"development candidate of the family. Fits used for the test rows: "
            f"{fits or NO_FIT_YET}.")


REGRESSION_REGISTERED_AT = "a2dd0fa"  # the commit that fixed the procedure, before any test target judged it


def regression_text(regressions: Sequence[ScoreRegression]) -> str:
    """The paragraph under the estimate table on the dev-regressed rows: how they are made, and each family's fit."""
    def fit(item: ScoreRegression) -> str:
        terms = " ".join(f"{coefficient:+.2f}·{name.removeprefix('score_')}"
                         for name, coefficient in zip(item.features, item.coefficients))
        return (f"{item.key}: logit = {item.intercept:+.2f} {terms}, interval [{item.low_offset:+.2f}, "
                f"{item.high_offset:+.2f}], left-out error {item.left_out_error:.2f} points (by {item.left_out_by}), "
                f"{item.candidates} development candidates of {', '.join(item.fitted_on)}")
    return ("*dev-regressed*: logit(held-out) regressed on at most two of a candidate's label-free scores (the stored "
            "estimate and every selector score that is a magnitude, not a rank; "
            "`raysel.selection.evaluate_estimate.fit_score_regression`, "
            "`raysel.selection.estimate_calibration.regress_estimate`), the scores chosen forward by how well a fit "
            "on the other development targets predicts a left-out one, "
            "the 90 % interval the conformal quantiles of those left-out residuals. The procedure was fixed on "
            f"development targets at commit {REGRESSION_REGISTERED_AT}, before any test target judged it; test targets "
            "never feed the fit. Development rows: each development target judged by the regression fitted on the "
            "family's other development targets (with one target left, its scores are chosen and its interval set "
            "by leaving out sweeps instead). Test rows: fitted on every development candidate of the family. Fits "
            f"used for the test rows: {'; '.join(map(fit, regressions)) or NO_FIT_YET}.")


def estimate_table(frames: dict[str, Any], plans: Sequence[SweepPlan]) -> str:
    """Per family and role: how far the label-free estimate is from the held-out score over every candidate, how often
    its 90 % interval covers it and how wide it is, raw, dev-calibrated and dev-regressed, then the paragraphs on the
    calibration and the regression (issue 29 item 6; the goals are judged on the test targets)."""
    rows = estimate_rows(frames, plans)
    if not rows:
        return "No finished candidate has an estimate yet."
    lines = ["| family | role | estimate | candidates with an estimate | mean absolute error (points) | median | "
             "90 % interval covers the held-out score | mean interval width (points) | "
             "goals (MAE ≤ 3, coverage ≥ 85 %) |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    calibrations, regressions = [], []
    for family in dict.fromkeys(row["family"] for row in rows):
        by_role = {role: [row for row in rows if row["family"] == family and row["role"] == role]
                   for role in ("development", "test")}
        for role, group in by_role.items():
            if group:
                lines.append(estimate_line(family, role, RAW_ESTIMATE, len(group), estimate_measures(group)))
        lines += fitted_lines(family, CALIBRATED_ESTIMATE, calibrated_measure, by_role["development"], by_role["test"])
        lines += fitted_lines(family, REGRESSED_ESTIMATE, regressed_estimate_accuracy, by_role["development"],
                              by_role["test"])
        calibration = fit_estimate_calibration(by_role["development"], key=family)
        calibrations += [calibration] if calibration is not None else []
        regression = fit_score_regression(by_role["development"], key=family)
        regressions += [regression] if regression is not None else []
    return "\n".join(lines) + "\n\n" + calibration_text(calibrations) + "\n\n" + regression_text(regressions)


def format_body(cases: Sequence[WideCase], names: Sequence[str], options: WideOptions, facts: str,
                estimates: str | None = None) -> str:
    """The BENCHMARKS.md section body: protocol, dev and test tables apart, the estimate's accuracy (``estimates``,
    :func:`estimate_table`), every sweep."""
    roles = "; ".join(f"{family}: development {[t for t in targets if target_role(family, t) == 'development']}, "
                      f"test {[t for t in targets if target_role(family, t) == 'test']}"
                      for family, targets in options.targets.items() if family in map(FAMILY_OF.get, options.methods))
    parts = [
        f"{sweeps_text(options)} (issue 13 item 3), budget `{options.budget}`, seeds "
        f"{', '.join(map(str, options.seeds))}, {options.configurations} random configurations per wide sweep (the "
        f"same for every target of a seed), one sweep per (method, seed, target). Targets — {roles}. Every sweep "
        "re-scored offline with each applicable label-free selector (`raysel.selection.decision.select_sweep`); "
        "held-out scores are used only to evaluate. Regret in points of the family's metric; *collapsed picks*: "
        "picks below the source-only model on that target and seed (`k/n`, n sweeps with a reference; the random "
        f"pick's k is its expectation); a sweep is *flat* when its held-out spread is under "
        f"{FLAT_SPREAD_POINTS:g} point. Rows *headline decision* (the headline selector's pick, unguarded) and "
        "*guarded decision* (`raysel.selection.guarded`: confident only when the headline and "
        f"{GUARD_PANEL_SIZE - 1} companions, the first that scored of {', '.join(GUARD_COMPANIONS)}, agree and the "
        "pick is clearly ahead of the default configuration; otherwise it keeps the default configuration, or the "
        "best candidate every panel selector accepts) stand next to the *default configuration*; *most behind "
        "default*: the largest amount (points) by which a row's regret exceeded the default configuration's on one "
        "sweep (negative: better on every sweep).",
        *(["", guard_purpose_text(options)] if options.include_default else []),
        "", "Swept values (ranges chosen on development targets only; see the script's docstring):", "",
        ranges_text(options), "", facts]
    for role in ("development", "test"):
        parts += role_sections(cases, names, options, role)
    if any(case.role == "test" for case in cases):
        parts += ["", "### goals on the test targets (issue 13; the recommendation is chosen on development sweeps)",
                  "", rule_text(cases, names, options), "", goal_table(cases, names, options), "",
                  "The shipped decision on the test targets (issue 29 item 5): the default selector's pick, guarded, "
                  "beside the unguarded pick and the default configuration; *most behind default*: the largest "
                  "amount (points) by which its regret exceeded the default configuration's on one sweep.", "",
                  guard_goal_table(cases, names, options)]
    else:  # the development budget: the rule's recommendation, which the short budget's test tables confirm or not
        parts += ["", "### the recommendation: the pre-registered rule on these development sweeps", "",
                  rule_text(cases, names, options)]
    if estimates is not None:
        parts += ["", "### the label-free estimate of each candidate's score (issue 29 item 6)", "",
                  "`estimate_score` with its 90 % interval (`estimate_low`–`estimate_high`; ATC fitted on source "
                  "validation data and agreement with the ensemble's fused labels, `raysel.selection.estimate`) "
                  "against the held-out score, over every finished candidate of every finished sweep, raw and "
                  "calibrated on development targets:", "",
                  estimates]
    parts += ["", "### every sweep", "", sweep_table(cases)]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=tuple(SHAPES), default="short",
                        help="quick (smoke test), short (default; < 90 min on 2 cores), decision (short's sweeps on "
                             "every development and test target at seeds 0-2, every development sweep first: the "
                             "evidence for the selector rule and its test; about 3.5 h, run in chunks), guard "
                             "(decision's wide sweeps, each with the default configuration as a candidate, and the "
                             "references only: the guarded decision where it can keep the default; about 2.5-3 h), "
                             "standard "
                             "(more candidates and selection images, about 2.5 h) or full (every target)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="result store, kept between runs so that rerunning the same command continues "
                        "(default results/selection_wide_BUDGET)")
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default: raysel's default)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the budget's)")
    parser.add_argument("--dev-seeds", nargs="+", type=int, default=None,
                        help="run the development targets only at these seeds (default: the budget's; test targets "
                             "always run at every seed, since the goals are judged on them)")
    parser.add_argument("--configurations", type=int, default=None,
                        help="random configurations per wide sweep (default: the budget's)")
    parser.add_argument("--entropy-values", type=int, default=None,
                        help="values per entropy-weight sweep, at least 2 (default: the budget's)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section without touching BENCHMARKS.md or the committed rows file")
    add_campaign_arguments(parser, f"{SECTION}[.BUDGET]")
    args = parser.parse_args(argv)
    check_rows_argument(args.rows)
    if min(args.configurations or 2, args.entropy_values or 2) < 2:
        parser.error("--configurations and --entropy-values must be at least 2 (selection needs two candidates)")
    if args.budget == "quick":
        args.no_write = True
    if args.workdir is None:
        args.workdir = REPO / "results" / f"{SECTION}_{args.budget}"
    return args


def budget_targets(shape: Shape) -> dict[str, tuple[str, ...]]:
    """Per family: every development target (full, decision) or the first, then every test target."""
    from raysel.data import get_family

    targets = {}
    for family in dict.fromkeys(FAMILY_OF.values()):
        described = get_family(family)
        development = described.development_targets if shape.all_targets else described.development_targets[:1]
        targets[family] = (*development, *described.test_targets)
    return targets


def build_options(args: argparse.Namespace) -> WideOptions:
    """Resolve the budget's shape, the data root and the targets."""
    from raysel import data

    shape = SHAPES[args.budget]
    return WideOptions(results=args.workdir.resolve(),
                       data_root=(args.data_root or data.default_data_root()).resolve(), budget=args.budget,
                       methods=tuple(args.methods), seeds=tuple(args.seeds or shape.seeds),
                       configurations=args.configurations or shape.configurations,
                       entropy_values=args.entropy_values or shape.entropy_values,
                       selection_size=shape.selection_size,
                       targets=budget_targets(shape),
                       development_seeds=tuple(args.dev_seeds) if args.dev_seeds else shape.development_seeds,
                       development_first=shape.development_first, entropy_sweeps=shape.entropy_sweeps,
                       include_default=shape.include_default)


def section_name(budget: str) -> str:
    """BENCHMARKS.md section of a budget: ``selection_wide`` for the default budget, ``selection_wide.BUDGET`` else."""
    return SECTION if budget == "short" else f"{SECTION}.{budget}"


def run_facts(frames: dict[str, Any], plans: Sequence[SweepPlan], options: WideOptions, wall: float,
              loads: tuple[float, float], done: Sequence[SweepPlan] | None = None) -> str:
    """One paragraph on how the run went: trials, mean trial time per method, wall time, load (``done``: the
    finished sweeps the tables hold, default every plan)."""
    done = plans if done is None else done
    finished, failed, seconds = trial_facts(frames, done, options.results)
    planned = sum(plan.expected_trials for plan in plans)
    timing = ", ".join(f"{method} {value:.0f} s" for method, value in seconds.items())
    return (f"Trials: {finished} finished, {failed} failed of {planned} planned in {len(plans)} sweeps; mean trial "
            f"wall time {timing} (source_only: the cached reference and the digits sweeps together; concurrent trials "
            f"on one local Ray with {os.cpu_count()} visible cores). Total wall time {wall / 60:.1f} min (sweeps "
            f"reused from an earlier run count 0); load average {loads[0]:.1f} before / {loads[1]:.1f} after.")


def section_text(options: WideOptions, plans: Sequence[SweepPlan], done: Sequence[SweepPlan], wall: float,
                 loads: tuple[float, float]) -> tuple[str, str | None, bool]:
    """The section body from the finished sweeps ``done`` (read from the store: run here or imported from a rows
    file), its ``partial`` note (None once every sweep has finished), and whether it holds any case."""
    cases, names, frames = wide_cases(done, options.results)
    body = format_body(cases, names, options, run_facts(frames, plans, options, wall, loads, done),
                       estimate_table(frames, done))
    return body, partial_note(len(done), len(plans)), bool(cases)


def main(argv: list[str] | None = None) -> int:
    """Run what is left of the campaign (one study), then write the section from its finished sweeps."""
    args = parse_args(argv)
    options = build_options(args)
    plans = build_plans(options)
    section = section_name(options.budget)
    command = command_line("selection_wide.py", argv)
    rows = args.rows if options.budget == "quick" else default_rows(section, args.rows)
    study = campaign_study(section, options.results, plans, rows)
    print(f"selection_wide: {len(plans)} sweeps, {sum(p.expected_trials for p in plans)} trials planned "
          f"({options.budget} budget, {args.cpus} CPUs, seeds {list(options.seeds)}, targets {options.targets}); "
          f"store {options.results}", flush=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    outcome = run_campaign(study, args.cpus, max_minutes=args.max_minutes, command=command)
    done = finished_plans(plans, outcome)
    body, note, any_case = section_text(options, plans, done, time.perf_counter() - started,
                                        (load_before, os.getloadavg()[0]))
    print(format_section(section, command, body, note=note), flush=True)
    if not args.no_write:
        exported = export_campaign(study, rows_path(section))
        if exported:
            print(exported, flush=True)
        write_section(section, command, body, note=note)
    if not outcome.complete:
        return EXIT_STOPPED
    return 0 if any_case else 1


if __name__ == "__main__":
    sys.exit(main())
