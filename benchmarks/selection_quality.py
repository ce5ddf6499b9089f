"""Benchmark: how well do raysel's label-free selectors pick hyperparameters? HIAST Table 8's protocol, measured.

HIAST (Zhu et al., TPAMI 2025, §5.4, Table 8) sweeps one hyperparameter at a time (the rest at their defaults),
selects by F-mIoU and shows the selected value is optimal or nearly so. This script runs the same protocol as real
raysel sweeps (``raysel.sweep.main`` in-process, on one local Ray owned by this script) on the embedded
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
seed), built by the first sweep of each seed and target and reused by every later sweep. Sweeps are named by
budget, method, seed and kind inside ``--workdir``: rerunning the same command reuses finished sweeps and resumes a
killed one.

    python -m benchmarks.selection_quality                  # full protocol (~200 trials), writes BENCHMARKS.md
    python -m benchmarks.selection_quality --quick          # smoke run, prints only
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from benchmarks._common import REPO, command_line, write_section
from raysel.selection.applicability import recorded_selectors
from raysel.selection.evaluate import (BASELINES, DEFAULT_BASELINE, POINTS, RANDOM_BASELINE, SelectorSummary,
                                       baseline_evaluations, best_selector, matches_defaults, stored_evaluation,
                                       summarize_selectors)

SECTION = "selection_quality"
METHODS = ("hiast", "t2sda", "sfda")
TARGETS = ("day_city", "dusk_city")
HIAST_PARAMS = ("alpha", "gamma", "k", "lambda_i", "lambda_cst")
TABLE8_VALUES: dict[str, tuple[Any, ...]] = {
    "alpha": (0.1, 0.3, 0.5, 0.7, 0.9),
    "gamma": (1.0, 4.0, 8.0, 16.0, 32.0),
    "k": (10, 12, 14, 16, 18),
    "lambda_i": (0.1, 0.5, 1.0, 5.0, 10.0),
    "lambda_cst": (0.1, 0.5, 1.0, 5.0, 10.0),
}
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {"hiast": {}, "t2sda": {}, "sfda": {}},
    "reduced": {"hiast": {"rounds": 1, "iterations_per_round": 120, "reports_per_round": 1},
                "t2sda": {"iterations": 80}, "sfda": {"iterations": 100}},
    # "short": what fits a 2-core machine in under an hour (148 HIAST trials); hyperparameters still act within it.
    "short": {"hiast": {"rounds": 1, "iterations_per_round": 60, "reports_per_round": 1},
              "t2sda": {"iterations": 60}, "sfda": {"iterations": 60}},
    "quick": {"hiast": {"rounds": 1, "iterations_per_round": 4, "reports_per_round": 1, "warmup_iterations": 4,
                        "source_iterations": 8},
              "t2sda": {"iterations": 4, "report_interval": 2, "warmup_iterations": 1, "source_iterations": 8},
              "sfda": {"iterations": 4, "reports": 1, "source_iterations": 8}},
}
QUICK_SELECTION_SIZE = 12
QUICK_RANDOM_SAMPLES = 4
RANDOM_KIND = "random"
SPACE_KIND = "space"
DEFAULT_KIND = "default"


# --------------------------------------------------------------------------------------------------------------
# The plan: which sweeps to run
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """One ``raysel.sweep`` run: its id, its argument list and how many trials it should produce."""

    method: str
    seed: int
    kind: str  # a HIAST hyperparameter (one-at-a-time), "random", "space" (the method's YAML) or "default"
    sweep_id: str
    argv: tuple[str, ...]
    expected_trials: int
    swept: tuple[str, ...]  # the hyperparameters that define "the default configuration" for this method
    targets: tuple[str, ...]
    num_samples: int = 1
    # budget settings that replace the method's defaults in "the default configuration" (e.g. a shorter training)
    default_overrides: tuple[tuple[str, Any], ...] = ()


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


def method_defaults(method: str) -> dict[str, Any]:
    """The registered method's config-dataclass defaults (the configuration the paper/raysel ships)."""
    from raysel.registry import get_method

    return dataclasses.asdict(get_method(method).config_class())


def plan_defaults(plan: SweepPlan) -> dict[str, Any]:
    """The default configuration of a plan: the method's defaults with the plan's budget overrides."""
    return {**method_defaults(plan.method), **dict(plan.default_overrides)}


def space_swept_names(method: str) -> tuple[str, ...]:
    """The hyperparameters the method's default search-space YAML varies."""
    from raysel.registry import get_method
    from raysel.search_space import load_search_space

    registered = get_method(method)
    return tuple(load_search_space(registered.search_space_path, registered).swept_names())


def yaml_value(value: Any) -> str:
    """A Python scalar or list as the YAML text ``--set`` parses (JSON is valid YAML)."""
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def set_arguments(entries: dict[str, str]) -> list[str]:
    """``--set key=value`` pairs in order."""
    arguments: list[str] = []
    for name, text in entries.items():
        arguments += ["--set", f"{name}={text}"]
    return arguments


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
    defaults = method_defaults(method)
    return {name: yaml_value(defaults[name]) for name in names}


def sweep_id(options: RunOptions, method: str, seed: int, kind: str) -> str:
    """Deterministic sweep id, so a rerun of the same command finds (and reuses or resumes) its sweeps."""
    return f"sq-{options.budget}-{method}-s{seed}-{kind.replace('_', '')}"


def base_argv(options: RunOptions, method: str, seed: int, name: str) -> list[str]:
    """Arguments every sweep shares: data, targets, seed, store, budget."""
    argv = [method, "--data-root", str(options.data_root), "--results", str(options.results), "--name", name,
            "--seed", str(seed), "--target", *options.targets, "--progress-interval", "120"]
    if options.selection_size is not None:
        argv += ["--selection-size", str(options.selection_size)]
    budget = {key: yaml_value(value) for key, value in BUDGETS[options.budget][method].items()}
    return argv + set_arguments(budget)


def grid_points(method: str, entries: dict[str, str]) -> int:
    """Grid points of the method's YAML after ``entries`` are applied (trials per target and sample)."""
    from raysel.registry import get_method
    from raysel.search_space import load_search_space

    registered = get_method(method)
    space = load_search_space(registered.search_space_path, registered)
    return space.apply_overrides([f"{name}={text}" for name, text in entries.items()]).num_grid_points()


def hiast_plans(options: RunOptions, seed: int) -> list[SweepPlan]:
    """Five one-at-a-time sweeps and one joint random sweep of HIAST for one seed."""
    defaults = method_defaults("hiast")
    plans = []
    targets = len(options.targets)
    for param in HIAST_PARAMS:
        name = sweep_id(options, "hiast", seed, param)
        entries = one_at_a_time_entries(param, options.values[param], defaults)
        argv = base_argv(options, "hiast", seed, name) + set_arguments(entries)
        plans.append(SweepPlan("hiast", seed, param, name, tuple(argv), len(options.values[param]) * targets,
                               HIAST_PARAMS, options.targets))
    name = sweep_id(options, "hiast", seed, RANDOM_KIND)
    argv = (base_argv(options, "hiast", seed, name) + set_arguments(joint_random_entries(options.values))
            + ["--search", "random", "--num-samples", str(options.random_samples)])
    plans.append(SweepPlan("hiast", seed, RANDOM_KIND, name, tuple(argv), options.random_samples * targets,
                           HIAST_PARAMS, options.targets, options.random_samples))
    return plans


def method_plans(options: RunOptions, method: str, seed: int) -> list[SweepPlan]:
    """A non-HIAST method: its default configuration once, then a sweep over its own search-space YAML."""
    swept = space_swept_names(method)
    targets = len(options.targets)
    default_name = sweep_id(options, method, seed, DEFAULT_KIND)
    default_argv = base_argv(options, method, seed, default_name) + set_arguments(default_entries(method, swept))
    space_name = sweep_id(options, method, seed, SPACE_KIND)
    space_argv = base_argv(options, method, seed, space_name)
    points = grid_points(method, {key: yaml_value(value) for key, value in BUDGETS[options.budget][method].items()})
    return [SweepPlan(method, seed, DEFAULT_KIND, default_name, tuple(default_argv), targets, swept, options.targets),
            SweepPlan(method, seed, SPACE_KIND, space_name, tuple(space_argv), points * targets, swept,
                      options.targets)]


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
# Running the sweeps (real raysel sweeps on the Ray this script started)
# --------------------------------------------------------------------------------------------------------------


def stored_trial_count(results: Path, name: str) -> int:
    """Trials of sweep ``name`` with a row in the store (finished or failed)."""
    from raysel.store import ResultStore

    return len(ResultStore(results).trial_ids(name)) if (results / "trials").exists() else 0


def check_same_sweep(results: Path, plan: SweepPlan) -> None:
    """Refuse to reuse a stored sweep of the same id that was started with other arguments."""
    from raysel.execution.settings import load_settings

    settings, search, _ = load_settings(str(results), plan.sweep_id)
    overrides = [plan.argv[i + 1] for i, item in enumerate(plan.argv) if item == "--set"]
    same = (list(settings.overrides) == overrides and settings.run.get("seed") == plan.seed
            and list(settings.targets) == list(plan.targets) and search.num_samples == plan.num_samples)
    if not same:
        raise SystemExit(f"sweep {plan.sweep_id} in {results} was run with other settings; use another --workdir")


def sweep_state(results: Path, plan: SweepPlan) -> str:
    """``new``, ``partial`` (killed part-way: resume it) or ``complete`` (reuse it)."""
    if not (results / "sweeps" / plan.sweep_id / "sweep.json").exists():
        return "new"
    check_same_sweep(results, plan)
    return "complete" if stored_trial_count(results, plan.sweep_id) >= plan.expected_trials else "partial"


def run_sweep_main(argv: Sequence[str], log_path: Path) -> int:
    """``raysel.sweep.main(argv)`` with its output in ``log_path``; returns its exit code."""
    from raysel.sweep import main as sweep_main

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"$ python -m raysel.sweep {' '.join(argv)}", flush=True)
        try:
            return int(sweep_main(list(argv)))
        except SystemExit as exit_:  # a user error exits 2 after printing one line
            return int(exit_.code or 0)


def run_plan(plan: SweepPlan, results: Path) -> tuple[str, float]:
    """Run, resume or reuse one sweep; returns what happened and the wall seconds spent."""
    state = sweep_state(results, plan)
    if state == "complete":
        return "reused", 0.0
    argv = plan.argv if state == "new" else (plan.method, "--resume", "--name", plan.sweep_id, "--results",
                                             str(results), "--progress-interval", "120")
    # raysel leaves Tune's sampler unseeded (random search, and the choice/loguniform entries of a grid sweep);
    # Tune then draws from NumPy's global generator, seeded here so each seed's draws are reproducible.
    np.random.seed(plan.seed)
    started = time.perf_counter()
    code = run_sweep_main(argv, results / "logs" / f"{plan.sweep_id}.log")
    seconds = time.perf_counter() - started
    stored = stored_trial_count(results, plan.sweep_id)
    log = results / "logs" / f"{plan.sweep_id}.log"
    if stored < plan.expected_trials:  # Ctrl-C (Tune stops the sweep and returns) or a crash: stop here
        raise SystemExit(f"sweep {plan.sweep_id} stopped with {stored}/{plan.expected_trials} trials stored (see "
                         f"{log}); rerun the same command to resume it, or delete "
                         f"{results / 'sweeps' / plan.sweep_id} to start it afresh")
    # A one-configuration sweep has nothing to select between: raysel.sweep exits 1 there, by design.
    if code not in (0, 1) or (code == 1 and plan.kind != DEFAULT_KIND):
        print(f"  warning: sweep {plan.sweep_id} exited {code}; see {log}", flush=True)
    return ("resumed" if state == "partial" else "ran"), seconds


def start_ray(cpus: int) -> str:
    """One local Ray for the whole benchmark (explicit CPUs, capped object store, our own temp dir)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    temp_dir = tempfile.mkdtemp(prefix="rs-sq-", dir="/tmp")
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=512 * 1024 * 1024, _temp_dir=temp_dir)
    return temp_dir


def stop_ray(temp_dir: str) -> None:
    """Shut down the Ray this script started (only that one) and remove its temp dir."""
    import ray

    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_plans(plans: Sequence[SweepPlan], results: Path, cpus: int) -> float:
    """Run every sweep in order on one Ray; print progress with a projection from the trials timed so far."""
    total = sum(plan.expected_trials for plan in plans)
    started = time.perf_counter()
    timed_trials, timed_seconds, done = 0, 0.0, 0
    temp_dir = start_ray(cpus)
    try:
        for number, plan in enumerate(plans, start=1):
            outcome, seconds = run_plan(plan, results)
            done += plan.expected_trials
            if outcome == "ran":
                timed_trials += plan.expected_trials
                timed_seconds += seconds
            projection = (f", about {(total - done) * timed_seconds / timed_trials / 60:.0f} min to go"
                          if timed_trials else "")
            print(f"[{time.perf_counter() - started:7.0f}s] sweep {number}/{len(plans)} {plan.sweep_id}: {outcome} "
                  f"({plan.expected_trials} trials, {seconds:.0f} s); {done}/{total} trials{projection}", flush=True)
    finally:
        stop_ray(temp_dir)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------------------------
# Evaluation: re-score every sweep offline, compare with held-out mIoU (evaluation only)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SweepCase:
    """One sweep on one target: candidates' held-out mIoU (evaluation only) and every selector's evaluation.

    ``evaluations[name]`` holds ``regret`` and ``top3_regret`` (mIoU points), ``gap_closed``, ``kendall_tau``,
    ``spearman_rho`` and ``selected_trial_id``. ``values`` is the swept hyperparameter's value per candidate (one-at-
    a-time sweeps only). ``default_heldout`` is the default configuration's held-out mIoU (this sweep's trial, else
    the reference from the method's other sweeps), None when unknown.
    """

    method: str
    seed: int
    target: str
    kind: str
    sweep_id: str
    trial_ids: list[str]
    heldout: list[float]
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    values: list[Any] = field(default_factory=list)
    default_heldout: float | None = None
    default_in_sweep: bool = False

    def all_evaluations(self) -> dict[str, dict[str, Any]]:
        """The selectors' evaluations plus the two baselines."""
        return {**self.evaluations, **baseline_evaluations(self.heldout, self.default_heldout)}

    def value_of(self, trial_id: str | None) -> Any:
        """The swept value of one candidate (None when unknown)."""
        if trial_id is None or not self.values or trial_id not in self.trial_ids:
            return None
        return self.values[self.trial_ids.index(trial_id)]

    def best_trial_id(self) -> str:
        """The candidate with the highest held-out mIoU (the oracle's pick)."""
        return self.trial_ids[int(np.argmax(self.heldout))]


def finished_trials(results: Path, name: str) -> Any:
    """The sweep's finished trials with a held-out score, copied into column ``heldout`` (mIoU, or accuracy for
    classification); a pandas DataFrame, possibly empty."""
    from raysel.store import ResultStore
    from raysel.store_schema import heldout_column_with_values

    trials = ResultStore(results).load_sweep(name)
    column = None if trials.empty else heldout_column_with_values(trials)
    if column is None:
        return trials.iloc[0:0]
    trials = trials.assign(heldout=trials[column])
    keep = (trials["status"] == "finished") & trials["heldout"].notna()
    return trials[keep].sort_values("trial_id")


def rescore(results: Path, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Re-score a finished sweep with every selector that applies, as ``python -m raysel.select`` does; decisions by
    (target, selector). Selectors that cannot run are skipped with the reason printed."""
    from raysel.selection.decision import select_sweep
    from raysel.store import ResultStore

    printed = io.StringIO()
    decisions = select_sweep(ResultStore(results), name, selectors=recorded_selectors(), stream=printed)
    for line in printed.getvalue().splitlines():
        print(f"  {name}: {line}", flush=True)
    return {(decision["target"], decision["selector"]): decision for decision in decisions}


def default_heldouts(frames: dict[str, Any], plans: Sequence[SweepPlan]) -> dict[tuple[str, int, str], list[float]]:
    """Held-out mIoU of every default-configuration trial, per (method, seed, target), over all sweeps."""
    collected: dict[tuple[str, int, str], list[float]] = {}
    for plan in plans:
        frame = frames.get(plan.sweep_id)
        if frame is None or frame.empty:
            continue
        chosen = frame[matches_defaults(frame, plan_defaults(plan), plan.swept)]
        for target, heldout in zip(chosen["target"], chosen["heldout"]):
            collected.setdefault((plan.method, plan.seed, str(target)), []).append(float(heldout))
    return collected


def default_spread(heldouts: dict[tuple[str, int, str], list[float]]) -> float:
    """Largest max-min (points) of the default configuration's held-out mIoU over its repeats (run-to-run noise)."""
    spreads = [(max(values) - min(values)) * POINTS for values in heldouts.values() if len(values) > 1]
    return max(spreads) if spreads else math.nan


def build_cases(plan: SweepPlan, frame: Any, decisions: dict[tuple[str, str], dict[str, Any]],
                references: dict[tuple[str, int, str], float]) -> list[SweepCase]:
    """One case per target of a sweep, with every selector's evaluation and the default configuration's score."""
    cases = []
    defaults = plan_defaults(plan)
    for target, group in frame.groupby("target", sort=True):
        if len(group) < 2:
            continue
        case = SweepCase(plan.method, plan.seed, str(target), plan.kind, plan.sweep_id, list(group["trial_id"]),
                         [float(v) for v in group["heldout"]])
        if plan.kind in HIAST_PARAMS:
            case.values = list(group[f"hp_{plan.kind}"])
        own = group[matches_defaults(group, defaults, plan.swept)]
        case.default_in_sweep = not own.empty
        case.default_heldout = (float(own["heldout"].mean()) if not own.empty
                                else references.get((plan.method, plan.seed, str(target))))
        for (decision_target, selector), decision in decisions.items():
            if decision_target == target and decision.get("heldout_regret") is not None:
                case.evaluations[selector] = stored_evaluation(decision)
        cases.append(case)
    return cases


def evaluate_plans(plans: Sequence[SweepPlan], results: Path) -> tuple[list[SweepCase], list[str], dict[str, Any]]:
    """Re-score every sweep with every applicable selector; returns the cases, the selectors and the trial frames."""
    frames = {plan.sweep_id: finished_trials(results, plan.sweep_id) for plan in plans
              if (results / "sweeps" / plan.sweep_id).exists()}
    references = {key: float(np.mean(values)) for key, values in default_heldouts(frames, plans).items()}
    cases: list[SweepCase] = []
    used: list[str] = []
    for plan in plans:
        frame = frames.get(plan.sweep_id)
        if plan.kind == DEFAULT_KIND or frame is None or frame.empty:
            continue
        decisions = rescore(results, plan.sweep_id)
        used += [selector for _, selector in decisions if selector not in used]
        cases += build_cases(plan, frame, decisions, references)
    return cases, used, frames


# --------------------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------------------


def _nanmean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(array)) if np.isfinite(array).any() else math.nan


def summarize(cases: Sequence[SweepCase], names: Sequence[str]) -> list[SelectorSummary]:
    """:func:`raysel.selection.evaluate.summarize_selectors` over the cases' evaluations (baselines included)."""
    return summarize_selectors([case.all_evaluations() for case in cases], names)


def row_by_name(rows: Sequence[SelectorSummary], name: str | None) -> SelectorSummary | None:
    """The summary row of ``name`` (None when absent)."""
    return next((row for row in rows if row.name == name), None)


def cases_of(cases: Sequence[SweepCase], method: str | None = None, kind: str | None = None) -> list[SweepCase]:
    """The cases of one method and/or sweep kind."""
    return [case for case in cases if (method is None or case.method == method) and (kind is None or case.kind == kind)]


def regret_of(case: SweepCase, name: str | None) -> float:
    """One case's regret for a selector or baseline (NaN when absent)."""
    evaluation = case.all_evaluations().get(name or "")
    return math.nan if evaluation is None else float(evaluation["regret"])


# --------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    """A number with ``digits`` decimals, or an em dash for NaN/None."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}"


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


def selector_cell(row: SelectorSummary, best: str | None) -> str:
    """A table row's name: the best selector in bold, baselines in italics."""
    return f"**{row.name}**" if row.name == best else (f"*{row.name}*" if row.name in BASELINES else row.name)


def worse_cell(row: SelectorSummary) -> str:
    """``n/m`` sweeps worse than the default configuration, or ``—`` for baselines that are not compared."""
    return "—" if row.worse_than_default is None else worse_text(row)


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


def worse_text(row: SelectorSummary) -> str:
    """``n/m`` sweeps in which a selector did worse than the default configuration."""
    return f"{row.worse_than_default}/{row.compared_with_default}"


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
                        help="result store of the benchmark's sweeps (default results/selection_quality; --quick: a "
                        "fresh temp dir)")
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
    parser.add_argument("--no-write", action="store_true", help="print the section without touching BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.no_write = True
    if args.workdir is None:
        args.workdir = Path(tempfile.mkdtemp(prefix="rs-sq-")) if args.quick else REPO / "results" / SECTION
    args.seeds = args.seeds or ([0] if args.quick else [0, 1])
    args.targets = args.targets or (list(TARGETS[:1]) if args.quick else list(TARGETS))
    args.budget = args.budget or ("quick" if args.quick else "reduced")
    args.random_samples = args.random_samples or (QUICK_RANDOM_SAMPLES if args.quick else 12)
    args.selection_size = args.selection_size or (QUICK_SELECTION_SIZE if args.quick else None)
    return args


def build_options(args: argparse.Namespace) -> RunOptions:
    """Resolve the data root and the swept values."""
    from raysel import data

    defaults = method_defaults("hiast")
    values = ({name: quick_values(TABLE8_VALUES[name], defaults[name]) for name in HIAST_PARAMS} if args.quick
              else dict(TABLE8_VALUES))
    return RunOptions(results=args.workdir.resolve(), data_root=(args.data_root or data.default_data_root()).resolve(),
                      targets=tuple(args.targets), seeds=tuple(args.seeds),
                      method_seeds=tuple(args.method_seeds or args.seeds), methods=tuple(args.methods),
                      budget=args.budget, selection_size=args.selection_size, random_samples=args.random_samples,
                      values=values)


def trial_facts(frames: dict[str, Any], plans: Sequence[SweepPlan], results: Path) -> tuple[int, int, dict[str, float]]:
    """Finished and failed trial counts, and the mean wall seconds of a finished trial per method."""
    from raysel.store import ResultStore

    store = ResultStore(results)
    finished, failed, seconds = 0, 0, {}
    for method in dict.fromkeys(plan.method for plan in plans):
        times = []
        for plan in (p for p in plans if p.method == method and (results / "sweeps" / p.sweep_id).exists()):
            trials = store.load_sweep(plan.sweep_id)
            finished += int((trials["status"] == "finished").sum()) if not trials.empty else 0
            failed += int((trials["status"] != "finished").sum()) if not trials.empty else 0
            if not trials.empty:
                times += list(trials.loc[trials["status"] == "finished", "wall_time_s"].dropna())
        if times:
            seconds[method] = float(np.mean(times))
    return finished, failed, seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = build_options(args)
    plans = build_plans(options)
    planned = sum(plan.expected_trials for plan in plans)
    print(f"selection_quality: {len(plans)} sweeps, {planned} trials planned ({args.budget} budget, "
          f"{args.cpus} CPUs, seeds {list(options.seeds)}, targets {list(options.targets)}); store {options.results}",
          flush=True)
    load_before = os.getloadavg()[0]
    wall = run_plans(plans, options.results, args.cpus)
    cases, names, frames = evaluate_plans(plans, options.results)
    finished, failed, seconds = trial_facts(frames, plans, options.results)
    facts = RunFacts(options, args.cpus, wall, planned, finished, failed, seconds,
                     default_spread(default_heldouts(frames, plans)), load_before, os.getloadavg()[0])
    body = format_body(cases, names, facts)
    print(body)
    if not args.no_write:
        write_section(SECTION, command_line("selection_quality.py", argv), body)
    return 0 if cases else 1


if __name__ == "__main__":
    sys.exit(main())
