"""Does every adaptation method beat source-only at its defaults, per target and per class, and how fast is one run?

In-process (``LocalSession``, no Ray), every method at its registered config-dataclass defaults, on every
embedded target domain and seed (default 0 1), on the default small models:

* **street_scenes** (segmentation, ``small_segnet``, source ``game`` -> ``day_city``, ``dusk_city``):
  ``source_only``, ``hiast``, ``t2sda``, ``sfda``;
* **digits** (classification, ``small_cnn``, ``clean_digits`` -> ``photo_digits``, ``noisy_digits``,
  ``inverted_blur_digits``): ``source_only``, ``gsda_global`` (GSDA's global-alignment-only ablation, the first row
  of GSDA Table 1: ``GsdaConfig(alignment="global")``) and ``gsda`` (full hierarchical GSDA).

Three phases share one stage cache (under ``--workdir``), as a sweep does:

1. ``source_only`` once per family and seed (it does not depend on the target; scored on every target). This
   builds the source model every other method starts from (all methods' source settings are the same defaults).
2. Each other method's hyperparameter-independent stages (``Method.prepare_shared``: the HIAST adversarial warm-up
   per target and seed; the others only load the cached source model), timed separately.
3. Every method on every target and seed. Its training wall time is then what one sweep configuration costs,
   which gives the GSDA / HIAST per-configuration time ratio (issue 8) measured in the same run.

Phases run one after the other, so no two jobs ever build the same cached stage at once (the stage cache is also
safe for concurrent builders: a file lock per stage, the second waits and loads). Held-out labels are read only
through :func:`raysel.heldout.heldout_scores` (evaluation code): mIoU and per-class IoU for segmentation, accuracy
and per-class accuracy (recall) for classification.

    python -m benchmarks.method_gains --parallel 2        # both families, seeds 0 1; writes BENCHMARKS.md
    python -m benchmarks.method_gains --families digits   # the classification rows only
    python -m benchmarks.method_gains --quick             # smoke run: tiny budgets on tiny generated data; prints only

    python -m benchmarks.method_gains --parallel 2 --max-minutes 55   # in chunks: rerun until exit status 0/1

**Chunks.** Every job above is a unit: a source model scored on every target, a method's shared stages, or one
(method, target, seed) run. Each finished unit is saved at once as JSON under the workdir (``--workdir``, default
``results/method_gains`` under the repo root, git-ignored, kept with its stage cache) and in
``benchmarks/results/method_gains.json`` (``--evidence``; commit it with the section), keyed by everything that
determines it (kind, method, ablation and --quick overrides, targets, seed, image size, the generated data's
version). A rerun with the same arguments loads finished units instead of recomputing them, also on a new machine
from the committed file (shared stages of a pending run are then rebuilt into the new cache, untimed). ``--max-minutes
N`` starts no job after N minutes: the section is written from the finished units under a ``**partial: k of n
units**`` line (pending units listed, their cells "-"), the run prints what is left and the command that continues
(the same one).

Writes the ``## method_gains`` section of BENCHMARKS.md unless ``--quick`` or ``--no-write``. Exit status 1 when a
required comparison fails (a method not above source-only on the mean over targets and seeds), 3 when stopped at the
deadline (partial), 4 when the data was regenerated during the run (nothing written), 0 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from benchmarks._common import (BENCHMARKS_PATH, DATA_CHANGED_EXIT, Deadline, ScoredRun, UnitStore, UnitTask,
                                add_chunk_arguments, build_shared_stages, command_line, config_defaults, data_identity,
                                data_version, finish_chunked_run, pending_lines, prepare_benchmark_data,
                                resolve_chunk_arguments, run_method_and_score_heldout, run_unit_phases, unit_key,
                                working_directory)

from raysel import data
from raysel.models import default_model_name

SECTION = "method_gains"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("benchmarks/_common.py", "raysel/methods", "raysel/models", "raysel/data/street_scenes.py",
            "raysel/data/digits.py", "raysel/data/generation.py", "raysel/data/common.py", "raysel/data/family.py",
            "raysel/heldout.py", "raysel/metrics.py", "raysel/execution/local.py", "raysel/execution/trial.py")
FAMILIES = ("street_scenes", "digits")
BASELINE = "source_only"


@dataclass(frozen=True)
class Variant:
    """One table row: a registered method, with hyperparameter overrides for an ablation, on one family."""

    name: str
    method: str
    family: str
    overrides: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    @property
    def title(self) -> str:
        """The row name shown in the tables."""
        return self.label or self.name


VARIANTS = (
    Variant(BASELINE, BASELINE, "street_scenes"),
    Variant("hiast", "hiast", "street_scenes"),
    Variant("t2sda", "t2sda", "street_scenes"),
    Variant("sfda", "sfda", "street_scenes"),
    Variant(BASELINE, BASELINE, "digits"),
    Variant("gsda_global", "gsda", "digits", (("alignment", "global"),), "gsda_global (global alignment only)"),
    Variant("gsda", "gsda", "digits"),
)
VARIANT_NAMES = tuple(dict.fromkeys(variant.name for variant in VARIANTS))

# --quick: tiny budgets (every source stage 3 iterations, so all methods still share one source model).
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {
    "source_only": {"iterations": 3},
    "hiast": {"source_iterations": 3, "warmup_iterations": 2, "rounds": 1, "iterations_per_round": 2,
              "reports_per_round": 1, "batch_size": 2, "pseudo_label_batch_size": 2},
    "t2sda": {"source_iterations": 3, "iterations": 2, "warmup_iterations": 1, "report_interval": 1,
              "batch_size": 2},
    "sfda": {"source_iterations": 3, "iterations": 2, "reports": 1, "batch_size": 2},
    "gsda": {"source_iterations": 3, "iterations": 3, "batch_size": 8, "num_reports": 1},
}
QUICK_IMAGE_SIZE: dict[str, tuple[int, int] | None] = {"street_scenes": (32, 64), "digits": None}


# --------------------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One unit of work. ``kind``: "source" (source_only once per family and seed, scored on every target),
    "shared" (a variant's cached stages for one target and seed) or "run" (a variant on one target and seed)."""

    kind: str
    variant: Variant
    targets: tuple[str, ...]
    seed: int
    data_root: str
    workdir: str
    threads: int
    quick: bool

    @property
    def cache_dir(self) -> Path:
        """The stage cache every job of the benchmark shares."""
        return Path(self.workdir) / "stage_cache"

    @property
    def run_dir(self) -> Path:
        """This job's own output and checkpoint folder (concurrent runs must not share one)."""
        targets = "all" if len(self.targets) > 1 else self.targets[0]
        return Path(self.workdir) / "runs" / f"{self.variant.family}-{self.variant.name}-{targets}-{self.seed}"

    def overrides(self) -> dict[str, Any]:
        """The variant's hyperparameter overrides (plus the tiny budgets of --quick)."""
        quick = QUICK_OVERRIDES.get(self.variant.method, {}) if self.quick else {}
        return {**quick, **dict(self.variant.overrides)}

    def image_size(self) -> tuple[int, int] | None:
        """The family's native size, or the tiny size of --quick."""
        return QUICK_IMAGE_SIZE[self.variant.family] if self.quick else None


@dataclass
class RunResult:
    """One trained variant scored on one target: held-out score and per-class scores (fractions), seconds."""

    family: str
    variant: str
    target: str
    seed: int
    score: float
    per_class: list[float]
    train_seconds: float
    eval_seconds: float


@dataclass
class JobOutcome:
    """What a job produced: scored runs ("source", "run") or the seconds its shared stages took ("shared")."""

    job: Job
    runs: list[RunResult] = field(default_factory=list)
    shared_seconds: float | None = None


def per_class_scores(details: dict[str, Any]) -> list[float]:
    """Per-class IoU (segmentation) or per-class accuracy (classification) from ``heldout_scores``; NaN = absent."""
    values = details.get("heldout_iou", details.get("heldout_class_accuracy", []))
    return [float(value) for value in values]


def run_results(job: Job, run: ScoredRun) -> list[RunResult]:
    """One RunResult per scored target of a finished run."""
    return [RunResult(family=job.variant.family, variant=job.variant.name, target=target, seed=job.seed,
                      score=run.scores[target], per_class=per_class_scores(run.details[target]),
                      train_seconds=run.train_seconds, eval_seconds=run.eval_seconds)
            for target in job.targets]


def run_job(job: Job) -> JobOutcome:
    """Execute one job (in this process or a spawned worker) with ``job.threads`` torch threads."""
    torch.set_num_threads(job.threads)
    settings = dict(data_root=job.data_root, image_size=job.image_size(), num_threads=job.threads,
                    config_overrides=job.overrides())
    if job.kind == "shared":
        seconds = build_shared_stages(job.variant.method, job.variant.family, job.targets[0], job.seed,
                                      job.cache_dir, **settings)
        return JobOutcome(job, shared_seconds=seconds)
    shutil.rmtree(job.run_dir, ignore_errors=True)  # a killed earlier attempt's checkpoints: start afresh
    run = run_method_and_score_heldout(job.variant.method, job.variant.family, list(job.targets), job.seed,
                                       job.run_dir, prepare_data=False, cache_dir=job.cache_dir, **settings)
    return JobOutcome(job, runs=run_results(job, run))


JobMaker = Callable[[str, Variant, tuple[str, ...], int], Job]


def phase_jobs(variants: Sequence[Variant], seeds: Sequence[int], make: JobMaker) -> list[list[Job]]:
    """The three phases' jobs: source runs, shared stages of the other variants, then their runs. Segmentation
    first and seeds interleaved, so two parallel workers stay busy with jobs of similar length."""
    baselines = [v for v in variants if v.name == BASELINE]
    adapted = [v for v in variants if v.name != BASELINE]
    targets = {v.family: data.get_family(v.family).default_targets for v in variants}
    source = [make("source", v, tuple(targets[v.family]), seed) for v in baselines for seed in seeds]
    shared = [make("shared", v, (t,), seed) for v in adapted for t in targets[v.family] for seed in seeds]
    runs = [make("run", v, (t,), seed) for v in adapted for t in targets[v.family] for seed in seeds]
    return [source, shared, runs]


# --------------------------------------------------------------------------------------------------------------
# Units: every job is one, saved when finished and never repeated
# --------------------------------------------------------------------------------------------------------------


def job_fields(job: Job, data_key: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines a job's result (its unit key): kind, variant and method, its hyperparameter
    overrides (ablation, --quick budgets), targets, seed, image size and the generated data's version."""
    return {"benchmark": "method_gains", "kind": job.kind, "variant": job.variant.name, "method": job.variant.method,
            "family": job.variant.family, "overrides": job.overrides(), "targets": list(job.targets),
            "seed": job.seed, "quick": job.quick, "image_size": job.image_size(), "data": data_key}


def job_name(job: Job) -> str:
    """How a pending job is listed."""
    kind = {"source": "source model", "shared": "shared stages", "run": "run"}[job.kind]
    targets = "all targets" if len(job.targets) > 1 else job.targets[0]
    return f"{job.variant.family} {job.variant.name} {kind} on {targets} seed {job.seed}"


def outcome_result(outcome: JobOutcome) -> dict[str, Any]:
    """A finished job as JSON (the unit's saved result)."""
    return {"runs": [dataclasses.asdict(run) for run in outcome.runs], "shared_seconds": outcome.shared_seconds}


def saved_outcome(job: Job, saved: dict[str, Any]) -> JobOutcome:
    """A saved unit back as the job's outcome."""
    return JobOutcome(job, runs=[RunResult(**run) for run in saved["runs"]], shared_seconds=saved["shared_seconds"])


def run_unit(job: Job) -> dict[str, Any]:
    """Execute one job (in this process or a spawned worker); its unit result (:func:`outcome_result`)."""
    return outcome_result(run_job(job))


def progress_line(outcome: JobOutcome) -> str:
    """One line printed as soon as a job finishes."""
    job = outcome.job
    where = f"[{job.variant.family}] {job.variant.name:<12} seed {job.seed}"
    if outcome.shared_seconds is not None:
        return f"{where} shared stages for {job.targets[0]}: {outcome.shared_seconds:.0f} s"
    scores = ", ".join(f"{r.target} {100 * r.score:.1f}" for r in outcome.runs)
    first = outcome.runs[0]
    return f"{where}: held-out {scores}  (train {first.train_seconds:.0f} s, eval {first.eval_seconds:.1f} s)"


def execute(phases: Sequence[Sequence[UnitTask]], parallel: int) -> int:
    """Run the phases' tasks one phase after another (each in ``parallel`` spawned processes), printing as jobs
    finish; tasks after the deadline do nothing. Returns how many units were run and saved."""
    return run_unit_phases(phases, parallel, lambda task, saved: "  " + progress_line(saved_outcome(task.job, saved)),
                           lambda index, tasks: f"phase {index + 1}: {len(tasks)} {tasks[0].job.kind} job(s)")


def plan_tasks(phases: Sequence[Sequence[Job]], keys: dict[Job, str], fields: dict[Job, dict[str, Any]],
               finished: set[str], store: UnitStore, deadline: Deadline) -> list[list[UnitTask]]:
    """The tasks left: every unfinished job, plus the shared stages of a finished shared job whose run is pending
    (rebuilt into this workdir's cache, not timed again: the run must find them cached)."""
    pending_runs = {(j.variant, j.targets, j.seed) for phase in phases for j in phase
                    if j.kind == "run" and keys[j] not in finished}
    tasks = []
    for jobs in phases:
        tasks.append([UnitTask(run_unit, j, keys[j], fields[j], store, deadline, save=keys[j] not in finished)
                      for j in jobs
                      if keys[j] not in finished
                      or (j.kind == "shared" and (j.variant, j.targets, j.seed) in pending_runs)])
    return tasks


# --------------------------------------------------------------------------------------------------------------
# Tables (pure functions of the results, unit-tested)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class VariantSummary:
    """A variant's scores in points: per target and seed, the mean over targets and seeds (NaN when a run is
    missing), its difference to source-only, and timing."""

    name: str
    per_target: dict[str, dict[int, float]]
    mean: float
    delta: float
    targets_beaten: int | None
    run_seconds: float
    shared_seconds: float

    @property
    def beats_baseline(self) -> bool | None:
        """Whether the mean is above source-only's (None for source-only itself or when a mean is missing)."""
        if self.name == BASELINE or math.isnan(self.delta):
            return None
        return self.delta > 0


def seed_scores(results: Iterable[RunResult], variant: str, target: str) -> dict[int, float]:
    """Seed -> held-out score in points of one variant on one target."""
    return {r.seed: 100 * r.score for r in results if r.variant == variant and r.target == target}


def complete_mean(per_target: dict[str, dict[int, float]], targets: Sequence[str], seeds: Sequence[int]) -> float:
    """Mean over every (target, seed); NaN unless all of them were measured (no mean over a partial grid)."""
    values = [per_target.get(t, {}).get(s) for t in targets for s in seeds]
    return float(np.mean(values)) if values and all(v is not None for v in values) else float("nan")


def mean_or_nan(values: Sequence[float]) -> float:
    """Mean of the values, NaN for none."""
    return float(np.mean(values)) if len(values) else float("nan")


def summarise(results: Sequence[RunResult], shared: dict[str, list[float]], variants: Sequence[str],
              targets: Sequence[str], seeds: Sequence[int]) -> list[VariantSummary]:
    """One summary per variant (in ``variants`` order), differences against the source-only row."""
    per_variant = {v: {t: seed_scores(results, v, t) for t in targets} for v in variants}
    baseline = per_variant.get(BASELINE, {})
    baseline_mean = complete_mean(baseline, targets, seeds)
    summaries = []
    for name in variants:
        per_target = per_variant[name]
        mean = complete_mean(per_target, targets, seeds)
        beaten = None
        if name != BASELINE and baseline:
            beaten = sum(mean_or_nan(list(per_target[t].values())) > mean_or_nan(list(baseline[t].values()))
                         for t in targets)
        seconds = {(r.target, r.seed): r.train_seconds for r in results if r.variant == name}
        summaries.append(VariantSummary(
            name=name, per_target=per_target, mean=mean, delta=mean - baseline_mean, targets_beaten=beaten,
            run_seconds=mean_or_nan(list(seconds.values())), shared_seconds=mean_or_nan(shared.get(name, []))))
    return summaries


def number(value: float, fmt: str = ".1f", signed: bool = False) -> str:
    """A table cell: the formatted value, or "-" for NaN."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+{fmt}}" if signed else f"{value:{fmt}}"


def yes_no(value: bool | None) -> str:
    """"yes" / "**NO**" / "-" (not applicable)."""
    return "-" if value is None else ("yes" if value else "**NO**")


def target_cell(scores: dict[int, float], seeds: Sequence[int]) -> str:
    """``mean (seed values)`` for one target, "-" when nothing was measured."""
    values = [scores[s] for s in seeds if s in scores]
    if not values:
        return "-"
    return f"{np.mean(values):.1f} (" + " / ".join(f"{v:.1f}" for v in values) + ")"


def score_table(summaries: Sequence[VariantSummary], titles: dict[str, str], targets: Sequence[str],
                seeds: Sequence[int], metric: str) -> list[str]:
    """Rows = variants; per-target seed means (seed values in parentheses), the mean over targets and seeds, Δ vs
    source-only, whether it beats source-only, targets beaten, seconds per run and for the shared stages."""
    seed_text = " / ".join(f"s{s}" for s in seeds)
    lines = [
        "| method | " + " | ".join(f"{t} ({seed_text})" for t in targets)
        + f" | mean {metric} | Δ vs source-only | beats source-only | targets beaten "
          "| s per run | shared stages s |",
        "|---|" + "---:|" * len(targets) + "---:|---:|:-:|:-:|---:|---:|",
    ]
    for summary in summaries:
        beaten = "-" if summary.targets_beaten is None else f"{summary.targets_beaten} of {len(targets)}"
        delta = "-" if summary.name == BASELINE else number(summary.delta, signed=True)
        lines.append(
            f"| {titles.get(summary.name, summary.name)} | "
            + " | ".join(target_cell(summary.per_target[t], seeds) for t in targets)
            + f" | **{number(summary.mean)}** | {delta} | {yes_no(summary.beats_baseline)} | {beaten} "
              f"| {number(summary.run_seconds, '.0f')} | {number(summary.shared_seconds, '.0f')} |")
    return lines


def per_class_means(results: Sequence[RunResult], variant: str, num_classes: int) -> np.ndarray:
    """Per-class score in points of one variant, averaged over targets and seeds (NaN where a class is absent)."""
    rows = [r.per_class for r in results if r.variant == variant and len(r.per_class) == num_classes]
    if not rows:
        return np.full(num_classes, np.nan)
    values = 100 * np.asarray(rows, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent everywhere stays NaN ("mean of empty slice")
        return np.nanmean(values, axis=0)


def per_class_table(results: Sequence[RunResult], variants: Sequence[str], titles: dict[str, str],
                    class_names: Sequence[str]) -> list[str]:
    """Rows = classes (absent from every held-out split: left out), columns = variants."""
    means = {v: per_class_means(results, v, len(class_names)) for v in variants}
    lines = ["| class | " + " | ".join(titles.get(v, v) for v in variants) + " |",
             "|---|" + "---:|" * len(variants)]
    for index, name in enumerate(class_names):
        cells = [means[v][index] for v in variants]
        if all(math.isnan(c) for c in cells):
            continue
        lines.append(f"| {name} | " + " | ".join(number(c) for c in cells) + " |")
    return lines


def time_ratio(numerator: VariantSummary | None, denominator: VariantSummary | None) -> float:
    """Seconds per run of one variant over another's (NaN when either was not measured)."""
    if numerator is None or denominator is None or not denominator.run_seconds:
        return float("nan")
    return numerator.run_seconds / denominator.run_seconds


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


@dataclass
class FamilyReport:
    """The markdown lines of one family and whether its required comparisons hold."""

    family: str
    lines: list[str]
    summaries: list[VariantSummary]
    requirements_met: bool


def required_variants(family: str) -> list[str]:
    """The rows the issues require to beat source-only: every full method (the GSDA ablation is reported only)."""
    return [v.name for v in VARIANTS if v.family == family and v.name != BASELINE and not v.overrides]


def verdict_line(summaries: Sequence[VariantSummary], titles: dict[str, str], family: str) -> tuple[str, bool]:
    """Whether every required method beats source-only on the mean (the line, and all of them do); ablations are
    listed with their Δ but not required."""
    required = [s for s in summaries if s.name in required_variants(family)]
    ablations = [s for s in summaries if s.name not in required_variants(family) and s.name != BASELINE]
    verdict = ", ".join(f"{s.name} {yes_no(s.beats_baseline)} ({number(s.delta, signed=True)})" for s in required)
    line = f"**Beats source-only on the mean over targets and seeds (required)**: {verdict or '-'}."
    if ablations:
        line += " Ablation (reported, not required): " + ", ".join(
            f"{titles[s.name]} Δ {number(s.delta, signed=True)} vs source-only" for s in ablations) + "."
    return line, all(s.beats_baseline for s in required)


def family_report(family_name: str, variants: Sequence[Variant], results: Sequence[RunResult],
                  shared: dict[str, list[float]], seeds: Sequence[int], identity: str) -> FamilyReport:
    """Score table, verdict and per-class table of one family."""
    family = data.get_family(family_name)
    names = [v.name for v in variants]
    titles = {v.name: v.title for v in variants}
    targets = list(family.default_targets)
    segmentation = family.task == "segmentation"
    metric, per_class = ("mIoU", "IoU") if segmentation else ("accuracy", "accuracy (recall)")
    omitted = "absent from every held-out split" + (" and never predicted" if segmentation else "")
    summaries = summarise(results, shared, names, targets, seeds)
    verdict, met = verdict_line(summaries, titles, family_name)
    lines = [
        f"### {family_name} ({family.task}, `{default_model_name(family.task)}`, held-out {metric} in points)",
        "",
        f"Data: {identity}. Source `{family.default_source}` -> {', '.join(f'`{t}`' for t in targets)}; "
        f"seeds {' '.join(map(str, seeds))}.",
        "",
        *score_table(summaries, titles, targets, seeds, metric),
        "",
        verdict,
        "",
        f"Per-class held-out {per_class} (points, mean over the targets and seeds where the class is scored; "
        f"classes {omitted} left out):",
        "",
        *per_class_table(results, names, titles, family.class_names),
    ]
    return FamilyReport(family_name, lines, summaries, met)


def shared_seconds_by_variant(outcomes: Sequence[JobOutcome]) -> dict[str, list[float]]:
    """Variant name -> seconds of its shared-stage jobs."""
    shared: dict[str, list[float]] = {}
    for outcome in outcomes:
        if outcome.shared_seconds is not None:
            shared.setdefault(outcome.job.variant.name, []).append(outcome.shared_seconds)
    return shared


def ratio_line(reports: Sequence[FamilyReport]) -> str:
    """The measured GSDA / HIAST seconds-per-run ratio (issue 8: a GSDA configuration as fast as HIAST's)."""
    by_name = {s.name: s for report in reports for s in report.summaries}
    ratio = time_ratio(by_name.get("gsda"), by_name.get("hiast"))
    if math.isnan(ratio):
        return "GSDA / HIAST time per run: not measured (needs both `gsda` and `hiast` in this run)."
    gsda, hiast = by_name["gsda"], by_name["hiast"]
    sources = ", ".join(f"{report.family} {number(s.run_seconds, '.0f')} s" for report in reports
                        for s in report.summaries if s.name == BASELINE)
    return (f"**GSDA / HIAST time per run (one configuration, shared stages cached)**: {ratio:.2f} "
            f"({gsda.run_seconds:.1f} s / {hiast.run_seconds:.1f} s; "
            f"{'as fast or faster' if ratio <= 1 else 'SLOWER'}). One-off shared stages, not per configuration: "
            f"source model ({sources or '-'}) per seed, HIAST warm-up {number(hiast.shared_seconds, '.0f')} s per "
            "target and seed.")


def configuration_lines(variants: Sequence[Variant], quick: bool) -> list[str]:
    """Every method's hyperparameters as run (registered defaults, plus ablation and --quick overrides)."""
    lines = []
    for variant in variants:
        overrides = {**(QUICK_OVERRIDES.get(variant.method, {}) if quick else {}), **dict(variant.overrides)}
        values = {**config_defaults(variant.method), **overrides}
        changed = f" (overrides: {', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else ""
        lines.append(f"- `{variant.family}` / `{variant.title}`{changed}: "
                     + ", ".join(f"{k}={v}" for k, v in values.items()))
    return lines


def report(variants: Sequence[Variant], outcomes: Sequence[JobOutcome], args: argparse.Namespace,
           identities: dict[str, str], wall_seconds: float, load: tuple[float, float],
           pending: Sequence[str] = (), loaded: int = 0) -> tuple[str, bool]:
    """The markdown body and whether every required comparison holds, from the finished units (``outcomes``);
    ``pending`` lists the unfinished ones (their cells read "-"), ``loaded`` counts those from earlier runs."""
    results = [run for outcome in outcomes for run in outcome.runs]
    shared = shared_seconds_by_variant(outcomes)
    families = list(dict.fromkeys(v.family for v in variants))
    reports = [family_report(f, [v for v in variants if v.family == f], [r for r in results if r.family == f],
                             shared, args.seeds, identities[f]) for f in families]
    lines = [
        "Every method at its registered config-dataclass defaults (listed below), trained in-process "
        "(`LocalSession`, no Ray) and scored on the target's held-out split (`raysel.heldout.heldout_scores`). "
        "Cells: mean over seeds (seed values). `source_only` is trained once per seed and scored on every "
        "target; every other method starts from that cached source model. **s per run**: training wall time of one "
        "run with the shared stages already cached (one sweep configuration; held-out evaluation excluded; for "
        "source_only the source model's training); **shared stages s**: the method's one-off stages per target "
        f"and seed (HIAST's adversarial warm-up; loading the cached source model for the others). {args.parallel} "
        f"run(s) at a time with {args.threads} torch thread(s) each; CPU load average {load[0]:.1f} before / "
        f"{load[1]:.1f} after. Total wall time {wall_seconds / 60:.1f} min"
        + (f" in this run; {loaded} finished unit(s) loaded from earlier runs (their times as measured then)"
           if loaded else "") + "."
        + (" **QUICK SMOKE RUN on tiny generated data: the numbers mean nothing.**" if args.quick else ""),
        "",
    ]
    lines += pending_lines(pending, "unit")
    for family_lines in reports:
        lines += family_lines.lines + [""]
    lines += [ratio_line(reports), "", "Configurations:", "", *configuration_lines(variants, args.quick)]
    return "\n".join(lines), all(r.requirements_met for r in reports)


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def selected_variants(families: Sequence[str], methods: Sequence[str]) -> list[Variant]:
    """The chosen rows of the chosen families, with source-only added to every family that has a row (every Δ is
    against it)."""
    chosen = [v for v in VARIANTS if v.family in families and v.name in methods]
    used = {v.family for v in chosen}
    return [v for v in VARIANTS if v in chosen or (v.name == BASELINE and v.family in used)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1; --quick: 0)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), help=f"subset of {', '.join(FAMILIES)}")
    parser.add_argument("--methods", nargs="+", default=list(VARIANT_NAMES),
                        help=f"rows to run, subset of {', '.join(VARIANT_NAMES)} (source_only is always added: "
                             "every Δ is against it)")
    parser.add_argument("--parallel", type=int, default=1, help="jobs at once, in spawned processes (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job (default 1)")
    parser.add_argument("--data-root", default=None, help="data root (default: raysel's default data root)")
    add_chunk_arguments(parser, SECTION, "unit", "stage cache, run folders")
    parser.add_argument("--output", type=Path, default=BENCHMARKS_PATH, help="the BENCHMARKS.md to update")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny budgets on tiny generated data in the workdir; prints only")
    args = parser.parse_args(argv)
    for option, values, valid in (("--families", args.families, FAMILIES), ("--methods", args.methods, VARIANT_NAMES)):
        unknown = sorted(set(values) - set(valid))
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    if args.threads < 1 or args.parallel < 1:
        parser.error("--threads and --parallel must be >= 1")
    resolve_chunk_arguments(parser, args, SECTION, writes=not (args.quick or args.no_write))
    args.seeds = list(dict.fromkeys(args.seeds or ([0] if args.quick else [0, 1])))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the BENCHMARKS.md section; 1 when a requirement fails,
    3 when stopped at the --max-minutes deadline (partial section written), 4 when the data changed mid-run."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("method_gains.py", argv)
    variants = selected_variants(args.families, args.methods)
    deadline = Deadline.after_minutes(args.max_minutes)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with working_directory(args.workdir, "raysel-method-gains-") as directory:
        workdir = Path(directory)
        store = UnitStore(workdir / "units", args.evidence)
        families = list(dict.fromkeys(v.family for v in variants))
        root = prepare_benchmark_data(families, args.data_root, tiny_into=workdir / "data" if args.quick else None)
        identities = {f: data_identity(root / data.get_family(f).name) for f in families}
        versions = {f: data_version(root / data.get_family(f).name) for f in families}

        def make(kind: str, variant: Variant, targets: tuple[str, ...], seed: int) -> Job:
            return Job(kind, variant, targets, seed, str(root), str(workdir), args.threads, args.quick)

        phases = phase_jobs(variants, args.seeds, make)
        jobs = [job for phase in phases for job in phase]
        fields = {job: job_fields(job, versions[job.variant.family]) for job in jobs}
        keys = {job: unit_key(fields[job]) for job in jobs}
        done_before = store.load(list(keys.values()))
        print(f"{len(jobs)} unit(s): {len(done_before)} finished earlier (loaded, not rerun), "
              f"{len(jobs) - len(done_before)} to run; workdir {workdir}", flush=True)
        ran = execute(plan_tasks(phases, keys, fields, set(done_before), store, deadline), args.parallel)
        finished = store.load(list(keys.values()))
        changed = [f for f in families if data_identity(root / data.get_family(f).name) != identities[f]]
    outcomes = [saved_outcome(job, finished[keys[job]]) for job in jobs if keys[job] in finished]
    pending = [job_name(job) for job in jobs if keys[job] not in finished]
    body, all_met = report(variants, outcomes, args, identities, time.perf_counter() - started,
                           (load_before, os.getloadavg()[0]), pending=pending, loaded=len(done_before))
    print("\n" + body, flush=True)
    if changed:
        print(f"error: the data of {', '.join(changed)} was regenerated during the benchmark; results mix two "
              "versions and are not written", file=sys.stderr)
        return DATA_CHANGED_EXIT
    return finish_chunked_run(SECTION, command, body, done=len(finished), total=len(jobs), pending=pending, ran=ran,
                              loaded=len(done_before), store=store,
                              output=None if args.quick or args.no_write else args.output,
                              complete_status=0 if (all_met or args.quick) else 1)


if __name__ == "__main__":
    sys.exit(main())
