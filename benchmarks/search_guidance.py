"""Benchmark: does Optuna TPE guided by a trial-scored label-free selector ship a better configuration than random
search with the same number of trials? (issue 13, item 5)

Per seed, two real ``raysel.sweep`` runs (in-process, on one local Ray owned by this script) over the same *wide*
search space, the same number of trials N and the same training seed, on one development target:

* ``optuna``: ``--search optuna --objective GUIDE --startup-trials S`` (TPE; the first S trials are random);
* ``random``: ``--search random`` (Ray Tune's default random sampler, seeded by ``--seed``).

Each run *ships* the trial with the highest ``score_<GUIDE>``: for Optuna that is the objective's own pick, for random
search the same selector's pick among its trials. The benchmark reports, per seed and as a mean, the held-out score
of the shipped trial, the best held-out score any trial of the run reached, and the paired difference Optuna −
random of both. Held-out labels are read only here, from the result store (``heldout_miou`` /
``heldout_accuracy``), after the sweeps: they never steer a search or a pick. It also reports, over each run's
trials, Kendall's τ between each trial-scored selector and the held-out score (evidence for the choice of GUIDE).

**Which selector guides Optuna: ``consistency``** (perturbation consistency, raysel.selection.model_scores), chosen
on development evidence only, and thin evidence: the only stored sweeps that hold both trial-scored scores with
held-out labels are ``benchmarks.sweep_overhead``'s (HIAST, ``day_city``, 4 configurations, run twice with identical
results, 2026-12-03), where consistency ranks the 4 candidates by held-out mIoU with Kendall τ 0.67 and the
segmentation probe (then stored as ``mixval``, now named ``classmix_consistency``) with 0.33; and a random-search
run of this benchmark's wide GSDA space on ``noisy_digits`` (``--budget short-digits --target noisy_digits --arms
random --seeds 0``, stopped after 4 of 8 trials; accuracy 48.9–86.7), where consistency has τ +0.55 and MixVal
−0.55. No test target (``foggy_city``, ``stroke_digits``) was looked at. Every run of this
benchmark reports the τ of both trial-scored selectors of its task (:data:`raysel.selection.TASK_TRIAL_SCORES`:
consistency and ``classmix_consistency`` on street_scenes, consistency and MixVal on digits) over its own trials
(random-search runs included), which adds development evidence for the choice; ``--guide classmix_consistency``
(street_scenes budgets) or ``--guide mixval`` (digits budgets) runs the comparison with the other one.

The wide space (:func:`wide_space`) is built from the method's search-space YAML and config defaults: the learning
rate log-uniform over two decades (default/10 .. default×10), the training length drawn from ½×, 1× and 2× of the
budget's iterations, and every loss weight the YAML sweeps log-uniform over two decades around its default (up to
values that break training); the YAML's other entries stay at their defaults. Trials whose loss turns NaN are stored
as failed and cannot be shipped (raysel never selects a failed trial).

Budgets (``--budget``): ``short`` — SFDA on street_scenes ``day_city``, base 60 iterations, N = 8 trials per run
(S = 3), 3 seeds, selection subset 150, 2 trials at a time in both arms (so TPE proposes each trial from every
result but the running one's); 48 trials, an estimated 20–25 min on 2 quiet cores with the source models cached
(add ~2–3 min per seed to build one). ``short-digits`` — the same with GSDA on ``photo_digits``. ``quick`` — a
smoke test (GSDA from scratch on photo_digits, 2 trials of 1–4 iterations per run, 1 seed; numbers mean nothing, prints
only).

Resumable and time-boxed: the sweeps run as one raysel study (:mod:`raysel.orchestration.studies`) named
``search_guidance-BUDGET`` in ``--workdir`` (default ``results/search_guidance``, kept between runs; sweeps named by
budget, method, target, arm and seed). Rerunning the same command reuses finished sweeps and resumes an interrupted
one (finished trials are not run again). ``--max-minutes N`` stops between trials (running ones finish), prints what
is left and the command that continues, and still writes the section from the finished sweeps, headed
``**partial: k of n sweeps**`` until every sweep has finished (exit status 3 while work is left). Every writing run exports the
finished sweeps' rows to ``benchmarks/results/search_guidance.parquet`` (commit it with the section); ``--rows``
(default: that file when it exists) makes a new machine import those sweeps instead of running them.

    python -m benchmarks.search_guidance --budget short --data-root /tmp/fresh_data    # writes BENCHMARKS.md
    python -m benchmarks.search_guidance --budget quick                                # smoke run, prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import kendalltau

from benchmarks._common import (REPO, SweepPlan, add_campaign_arguments, campaign_study, check_rows_argument,
                                command_line, config_defaults, default_rows, export_campaign, finished_plans,
                                format_section, needs_ray, partial_note, prepare_benchmark_data, rows_path,
                                run_campaign, set_texts, space_swept_names, write_section, yaml_value)
from raysel.data import default_data_root, get_family
from raysel.orchestration.studies import EXIT_STOPPED
from raysel.selection import TASK_TRIAL_SCORES, TRIAL_SCORE_NAMES
from raysel.store import ResultStore
from raysel.store.schema import PRIMARY_HELDOUT_COLUMNS

SECTION = "search_guidance"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("benchmarks/_common.py", "search_spaces/sfda.yaml", "raysel/methods/sfda.py", "raysel/methods/base.py",
            "raysel/methods/stages.py", "raysel/methods/training.py", "raysel/methods/optim.py",
            "raysel/methods/augment.py", "raysel/methods/losses.py", "raysel/methods/networks.py",
            "raysel/methods/acceleration.py", "raysel/models", "raysel/sweep.py", "raysel/orchestration",
            "raysel/request.py", "raysel/request_build.py", "raysel/execution", "raysel/search_space.py",
            "raysel/hyperparameters.py", "raysel/store", "raysel/selection",
            "raysel/data/street_scenes.py", "raysel/data/digits.py", "raysel/data/generation.py",
            "raysel/data/common.py", "raysel/data/family.py", "raysel/heldout.py", "raysel/metrics.py")
GUIDE = "consistency"
# Every trial-scored selector computed from the model; a run has those of its task (trial_scored).
TRIAL_SCORED = TRIAL_SCORE_NAMES
ARMS = ("optuna", "random")
LOSS_WEIGHT_DECADES = 10.0  # loss weights and the learning rate span default/10 .. default*10


@dataclass(frozen=True)
class Budget:
    """One benchmark size: the method and target, trials per run, seeds, per-trial training and the TPE start."""

    family: str
    method: str
    target: str
    iterations: int  # the base training length; the space draws 1/2x, 1x and 2x of it
    trials: int
    seeds: tuple[int, ...]
    startup_trials: int
    selection_size: int
    fixed: tuple[tuple[str, Any], ...] = ()  # further --set entries (tiny budgets)


BUDGETS: dict[str, Budget] = {
    "short": Budget("street_scenes", "sfda", "day_city", 60, 8, (0, 1, 2), 3, 150),
    "short-digits": Budget("digits", "gsda", "photo_digits", 150, 8, (0, 1, 2), 3, 150),
    "quick": Budget("digits", "gsda", "photo_digits", 2, 2, (0,), 1, 8,
                    (("init_from_source", False), ("num_reports", 1), ("batch_size", 8))),
}


# --------------------------------------------------------------------------------------------------------------
# The plan: one Optuna and one random sweep per seed over the same wide space
# --------------------------------------------------------------------------------------------------------------


def wide_space(method: str, iterations: int) -> dict[str, str]:
    """``--set`` entries of the wide space: learning rate and the YAML's loss weights over two decades around their
    defaults, training length ½×/1×/2× of ``iterations``; nothing on a grid (Optuna cannot take one)."""
    defaults = config_defaults(method)
    entries = {"learning_rate": log_span(defaults["learning_rate"]),
               "iterations": f"{{choice: {yaml_value([max(1, iterations // 2), iterations, 2 * iterations])}}}"}
    for name in space_swept_names(method):
        value = defaults[name]
        if isinstance(value, float) and value > 0:  # a loss weight (alpha, beta, ...)
            entries[name] = log_span(value)
        else:  # a structural choice (groups, k_patches): the default
            entries[name] = yaml_value(value)
    return entries


def log_span(default: float) -> str:
    """A log-uniform entry from default/10 to default*10."""
    return f"{{loguniform: [{default / LOSS_WEIGHT_DECADES:.6g}, {default * LOSS_WEIGHT_DECADES:.6g}]}}"


def sweep_name(budget_name: str, budget: Budget, arm: str, seed: int) -> str:
    """Deterministic sweep id, so a rerun of the same command reuses or resumes its sweeps."""
    return f"sg-{budget_name}-{budget.method}-{budget.target.replace('_', '')}-{arm}-s{seed}"


def trial_scored(family: str) -> tuple[str, ...]:
    """The trial-scored selectors whose scores the trials of ``family``'s task store (``score_<name>``)."""
    return TASK_TRIAL_SCORES[get_family(family).task]


def build_plans(budget_name: str, budget: Budget, arms: Sequence[str], guide: str, data_root: Path,
                max_concurrent: int = 2) -> list[SweepPlan]:
    """The sweeps to run, seeds outermost so that a partial run already holds whole pairs; at most
    ``max_concurrent`` trials at once in every arm (TPE then sees every result but the running ones')."""
    space = set_texts({**wide_space(budget.method, budget.iterations),
                       **{name: yaml_value(value) for name, value in budget.fixed}})
    plans = []
    for seed in budget.seeds:
        for arm in arms:
            name = sweep_name(budget_name, budget, arm, seed)
            search = ({"search": "optuna", "objective": guide, "startup_trials": budget.startup_trials}
                      if arm == "optuna" else {"search": "random"})
            options = {"method": budget.method, "data": budget.family, "data_root": str(data_root), "seed": seed,
                       "target": [budget.target], "progress_interval": 120, "selection_size": budget.selection_size,
                       "num_samples": budget.trials, "max_concurrent": max_concurrent, **search, "overrides": space}
            plans.append(SweepPlan(method=budget.method, seed=seed, kind=arm, sweep_id=name, options=options,
                                   expected_trials=budget.trials, swept=(), targets=(budget.target,),
                                   num_samples=budget.trials))
    return plans


# --------------------------------------------------------------------------------------------------------------
# Evaluation: what each run ships, and the best it reached (held-out labels read here only)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """One sweep's result: the shipped trial's held-out score, the best held-out score, selector τ and timing."""

    arm: str
    seed: int
    finished: int
    failed: int
    shipped: float
    best: float
    shipped_trial: str
    taus: dict[str, float]
    mean_trial_s: float


def evaluate_run(results: Path, plan: SweepPlan, guide: str) -> RunOutcome:
    """Ship the finished trial with the highest ``score_<guide>``; compare with the best held-out score."""
    trials = ResultStore(results).load_sweep(plan.sweep_id)
    heldout_column = PRIMARY_HELDOUT_COLUMNS[str(trials["task"].iloc[0])]
    finished = trials[(trials["status"] == "finished") & trials[heldout_column].notna()]
    scored = finished[finished[f"score_{guide}"].notna()]
    shipped = scored.loc[scored[f"score_{guide}"].idxmax()] if not scored.empty else None
    taus = {name: selector_tau(finished[f"score_{name}"], finished[heldout_column])
            for name in TASK_TRIAL_SCORES[str(trials["task"].iloc[0])] if f"score_{name}" in finished}
    return RunOutcome(arm=plan.kind, seed=plan.seed, finished=len(finished), failed=len(trials) - len(finished),
                      shipped=100.0 * float(shipped[heldout_column]) if shipped is not None else math.nan,
                      best=100.0 * float(finished[heldout_column].max()) if not finished.empty else math.nan,
                      shipped_trial=str(shipped["trial_id"]) if shipped is not None else "—",
                      taus=taus, mean_trial_s=float(finished["wall_time_s"].mean()) if not finished.empty else math.nan)


def selector_tau(scores: Any, heldout: Any) -> float:
    """Kendall's τ between a selector's scores and the held-out scores over one run's trials (NaN when undefined)."""
    keep = scores.notna() & heldout.notna()
    if keep.sum() < 3:
        return math.nan
    return float(kendalltau(scores[keep], heldout[keep]).statistic)


def fmt(value: float, sign: bool = False) -> str:
    """Two decimals (``+`` for differences); an em dash for NaN."""
    return "—" if value is None or math.isnan(value) else (f"{value:+.2f}" if sign else f"{value:.2f}")


def paired_table(outcomes: Sequence[RunOutcome], seeds: Sequence[int]) -> tuple[str, dict[str, float]]:
    """Per seed and mean: shipped and best held-out score of each arm and the paired differences Optuna − random."""
    by_key = {(outcome.arm, outcome.seed): outcome for outcome in outcomes}
    lines = ["| seed | Optuna ships | random ships | Δ shipped (Optuna − random) | Optuna best | random best | "
             "Δ best (Optuna − random) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    columns: dict[str, list[float]] = {key: [] for key in ("os", "rs", "ds", "ob", "rb", "db")}
    for seed in seeds:
        optuna, random = by_key.get(("optuna", seed)), by_key.get(("random", seed))
        if optuna is None or random is None:
            continue
        row = {"os": optuna.shipped, "rs": random.shipped, "ds": optuna.shipped - random.shipped,
               "ob": optuna.best, "rb": random.best, "db": optuna.best - random.best}
        for key, value in row.items():
            columns[key].append(value)
        lines.append(f"| {seed} | {fmt(row['os'])} | {fmt(row['rs'])} | {fmt(row['ds'], True)} | {fmt(row['ob'])} | "
                     f"{fmt(row['rb'])} | {fmt(row['db'], True)} |")
    means = {key: float(np.nanmean(values)) if values else math.nan for key, values in columns.items()}
    lines.append(f"| **mean** | {fmt(means['os'])} | {fmt(means['rs'])} | **{fmt(means['ds'], True)}** | "
                 f"{fmt(means['ob'])} | {fmt(means['rb'])} | **{fmt(means['db'], True)}** |")
    return "\n".join(lines), means


def runs_table(outcomes: Sequence[RunOutcome], names: Sequence[str]) -> str:
    """Every run: trials, shipped trial, and the Kendall τ against held-out of each trial-scored selector in
    ``names`` (those of the runs' task)."""
    lines = ["| arm | seed | finished | failed | shipped trial | mean trial s | "
             + " | ".join(f"τ {name}" for name in names) + " |",
             "|---|---:|---:|---:|---|---:|" + "---:|" * len(names)]
    for outcome in sorted(outcomes, key=lambda item: (item.seed, item.arm)):
        taus = " | ".join(fmt(outcome.taus.get(name, math.nan)) for name in names)
        lines.append(f"| {outcome.arm} | {outcome.seed} | {outcome.finished} | {outcome.failed} | "
                     f"{outcome.shipped_trial} | {outcome.mean_trial_s:.0f} | {taus} |")
    return "\n".join(lines)


def report_body(budget_name: str, budget: Budget, guide: str, outcomes: Sequence[RunOutcome], wall_s: float) -> str:
    """The BENCHMARKS.md section body."""
    score = "mIoU" if budget.family == "street_scenes" else "accuracy"
    space = ", ".join(f"{name} {text}" for name, text in wide_space(budget.method, budget.iterations).items())
    table, means = paired_table(outcomes, budget.seeds)
    verdict = ("Optuna shipped the better configuration" if means["ds"] > 0 else
               "Optuna did not ship a better configuration than random search")
    return "\n".join([
        f"Targets: {budget.family} `{budget.target}` (development target; no test target is used). Method "
        f"{budget.method}, budget `{budget_name}`; {budget.trials} trials per run, seeds "
        f"{', '.join(map(str, budget.seeds))}; Optuna TPE guided by `{guide}` ({budget.startup_trials} random "
        f"start-up trials) vs random search; selection subset {budget.selection_size}. Total wall time "
        f"{wall_s / 60:.1f} min.",
        "",
        f"Wide space: {space}.",
        "",
        f"Held-out {score} (%) of the trial each run ships (highest `score_{guide}`) and of its best trial:",
        "",
        table,
        "",
        f"**{verdict}**: mean paired difference {fmt(means['ds'], True)} points shipped, "
        f"{fmt(means['db'], True)} points best reached.",
        "",
        "Every run, with Kendall's τ of each trial-scored selector against held-out over the run's finished trials:",
        "",
        runs_table(outcomes, trial_scored(budget.family)),
    ])


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="short",
                        help="short (SFDA on day_city, 3 seeds x 2 runs x 8 trials), short-digits, or quick")
    parser.add_argument("--target", default=None, help="another development target (evidence runs)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the budget's)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--guide", choices=TRIAL_SCORED, default=GUIDE,
                        help=f"Optuna's objective, one the budget's task computes (default {GUIDE})")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="result store of the sweeps, kept between runs so that rerunning the same command "
                        "continues (default results/search_guidance; quick: results/search_guidance_quick)")
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default: raysel's default)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section without touching BENCHMARKS.md or the committed rows file")
    add_campaign_arguments(parser, SECTION)
    args = parser.parse_args(argv)
    check_rows_argument(args.rows)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or reuse) the sweeps, evaluate them on held-out labels and print (and store) the markdown section."""
    args = parse_args(argv)
    budget = BUDGETS[args.budget]
    quick = args.budget == "quick"
    if args.target or args.seeds:
        budget = dataclasses.replace(budget, target=args.target or budget.target,
                                     seeds=tuple(args.seeds or budget.seeds))
    if budget.target in get_family(budget.family).test_targets:
        print(f"error: --target {budget.target} is a test target; use a development target", file=sys.stderr)
        return 2
    if args.guide not in trial_scored(budget.family):
        print(f"error: --guide {args.guide}: {budget.family} trials do not compute it; use one of "
              f"{', '.join(trial_scored(budget.family))}", file=sys.stderr)
        return 2
    workdir = (args.workdir or REPO / "results" / (f"{SECTION}_quick" if quick else SECTION)).resolve()
    data_root = (args.data_root or default_data_root()).resolve()
    plans = build_plans(args.budget, budget, args.arms, args.guide, data_root, args.cpus)
    command = command_line("search_guidance", argv)
    writes = not (quick or args.no_write or budget.target != BUDGETS[args.budget].target or len(args.arms) < len(ARMS))
    study = campaign_study(f"{SECTION}-{args.budget}", workdir, plans,
                           default_rows(SECTION, args.rows) if writes else args.rows)
    if needs_ray(study):  # something trains: the data must be there (an imported study reads the store only)
        prepare_benchmark_data([budget.family], data_root)
    print(f"search_guidance: {len(plans)} sweeps x {budget.trials} trials ({budget.method} on {budget.target}, "
          f"seeds {list(budget.seeds)}); store {workdir}", flush=True)
    started = time.perf_counter()
    outcome = run_campaign(study, args.cpus, max_minutes=args.max_minutes, command=command)
    done = finished_plans(plans, outcome)
    outcomes = [evaluate_run(workdir, plan, args.guide) for plan in done]
    body = report_body(args.budget, budget, args.guide, outcomes, time.perf_counter() - started)
    note = partial_note(len(done), len(plans))
    if writes:
        exported = export_campaign(study, rows_path(SECTION))
        if exported:
            print(exported, flush=True)
        print(write_section(SECTION, command, body, note=note), flush=True)
    else:
        print(format_section(SECTION, command, body, note=note), flush=True)
    return 0 if outcome.complete else EXIT_STOPPED


if __name__ == "__main__":
    raise SystemExit(main())
