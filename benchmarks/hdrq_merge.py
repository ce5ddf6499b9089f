"""HDRQ's claims checked on the embedded benchmarks: merge-friendly PTQ for multi-target DA (paper Tables 1-3).

Per dataset family and seed, with the ``hdrq`` method's own pipeline pieces (:mod:`raysel.methods.hdrq`:
``build_specialists`` / ``merge_specialists``) on the default small models:

* **settings**: segmentation ``street_scenes`` (source ``game`` -> ``day_city``, ``dusk_city``, like the paper's
  GTA -> Cityscapes, IDD) and classification ``digits`` (``clean_digits`` -> ``photo_digits``, ``noisy_digits``,
  ``inverted_blur_digits``, like one Office-Home source -> three targets); ``--with-test-targets`` adds each
  family's test target (``foggy_city``; ``stroke_digits``), for the final comparison only. Each target is adapted
  once by the method's default adaptation (short HIAST / GSDA, longer with ``--street-adaptation`` /
  ``--digits-adaptation``; cached), from one shared source model.
* **Tables 1-2**: for FP (no quantization, float merge with moment-matched BN) and BRECQ, QDrop, QDrop+noise,
  HDRQ at each ``--bits``: every target's quantized specialist scored on its own target's held-out split (Table 1a;
  Table 2's parentheses), and the merged model scored on every target with their harmonic mean H (Table 1b;
  Table 2). Quantized models merge with HDRQ's noise-sampling rounding (the paper's default), averaged over
  ``--merge-draws`` merges (paper 30; one merge where draws cannot differ: an odd target count has no ties).
* **Table 3 ablation**: QDrop (baseline) -> + noise-based quantization (QDrop+noise = HDRQ with lambda 0) ->
  + distance regularization (HDRQ, lambda 5e-2); for an even target count also the merge rounding (noise sampling
  vs float rounding).
* **HDRQ - QDrop paired by seed**: per bit-width the FP - QDrop gap (the regime where quantization clearly damages
  merging has it >= 3 points) and the per-seed paired difference of merged H with its 95 % t-interval over seeds.
* **Selector regret**: over every quantized configuration of a family and seed (bits x PTQ method x rounding), the
  label-free ``merge_quality`` score (its mean over the merge draws) picks one; regret = best held-out H (mean over
  draws) minus the pick's (points), with Kendall tau, next to the expected regret of a random pick.
* **Speed**: block-reconstruction iterations per second of each PTQ method (optimisation loop only, summed over
  targets, bit-widths and seeds) and HDRQ's per-iteration cost relative to QDrop (the issue asks for <= 1.3x).
* **Weight movement**: per seed and PTQ row, how far reconstruction moved the specialists from their calibrated
  round-to-nearest start (:mod:`raysel.quant.movement`: integer codes changed, weight and activation steps moved,
  float and dequantized weights moved), so "HDRQ does not beat QDrop" can be told apart from "HDRQ's regularisers
  did not act". Units finished before it was recorded show "—".

Held-out labels are read only here, through :func:`raysel.heldout.heldout_scores` and
:func:`raysel.execution.trial.multi_target_heldout` (evaluation code; the method and its selector never read them).

    python -m benchmarks.hdrq_merge                       # both families, seeds 0 1; writes BENCHMARKS.md
    python -m benchmarks.hdrq_merge --parallel 2          # (family, seed) jobs in 2 spawned processes
    python -m benchmarks.hdrq_merge --quick               # smoke run on tiny generated data; prints only
    python -m benchmarks.hdrq_merge --bits W2A4 --seeds 0 1 2 --iterations 2000 --merge-draws 30 \
        --rows FP BRECQ QDrop QDrop+noise HDRQ \
        --section hdrq_merge.regime --max-minutes 55      # issue 30's regime run, in chunks: rerun until exit 0

**Chunks.** The unit of work is one configuration of one family and seed (its specialists, merged with each
rounding: the ``[family seed N] ...`` rows printed). Each finished unit is saved at once as JSON under the workdir
(``--workdir``, default ``results/<section>`` under the repo root, git-ignored, kept with its stage caches) and in
``benchmarks/results/<section>.json`` (``--evidence``; commit it with the section), keyed by everything that
determines it (family, seed, row, bits, PTQ method, lambda, roundings, targets, reconstruction iterations,
adaptation and --quick settings, merge draws, the generated data's version). A rerun with the same arguments loads
finished units instead of recomputing them, also on a new machine from the committed file; other settings give
other keys. ``--max-minutes N`` starts no unit after N minutes: the run then writes the section from the finished
units under a ``**partial: k of n units**`` line (pending units listed, the paired interval "pending" until it has
two seeds), prints what is left and the command that continues (the same one) and exits with status 3.

Writes the ``## hdrq_merge`` section of BENCHMARKS.md (``--section`` another name) unless ``--quick`` or
``--no-write``. Stage caches are reused between runs (the runtime table shows each unit's own time, measured when
it ran; a unit whose cached source or adaptation stage another unit built shows less for that stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from benchmarks._common import (BENCHMARKS_PATH, Deadline, UnitStore, add_chunk_arguments, command_line, data_version,
                                default_device, finish_chunked_run, heldout_score_key, resolve_chunk_arguments,
                                unit_key)
from benchmarks._common import prepare_benchmark_data, run_in_processes, working_directory

from raysel import data
from raysel.heldout import heldout_scores
from raysel.methods import hdrq
from raysel.methods.base import LocalSession, RunContext, RunSpec
from raysel.quant import has_rounding_ties
from raysel.execution.trial import multi_target_heldout

from benchmarks._hdrq_merge_tables import (PAPER_LAMBDA, PAPER_MERGE_DRAWS, PTQ_ROWS, REGIME_GAP, ROW_LABELS,
                                           ConfigResult, JobResult, family_tables, movement_summary, movement_table,
                                           paired_table, selector_table, speed_table)

SECTION = "hdrq_merge"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("benchmarks/_hdrq_merge_tables.py", "benchmarks/_common.py", "raysel/methods/hdrq.py",
            "raysel/methods/hiast.py", "raysel/methods/gsda.py", "raysel/methods/source_only.py",
            "raysel/methods/base.py", "raysel/methods/stages.py", "raysel/methods/training.py",
            "raysel/methods/optim.py", "raysel/methods/augment.py", "raysel/methods/losses.py",
            "raysel/methods/networks.py", "raysel/methods/acceleration.py", "raysel/models", "raysel/quant",
            "raysel/data/street_scenes.py", "raysel/data/digits.py", "raysel/data/generation.py",
            "raysel/data/common.py", "raysel/data/family.py", "raysel/heldout.py", "raysel/metrics.py",
            "raysel/execution/trial.py")
FAMILIES = ("street_scenes", "digits")
BITS = ("W6A6", "W4A4")
QUICK_ADAPTATION = {
    "street_scenes": "source_iterations=3, warmup_iterations=2, rounds=1, iterations_per_round=2, "
                     "reports_per_round=1, batch_size=2, pseudo_label_batch_size=2",
    "digits": "source_iterations=3, iterations=3, batch_size=8",
}
QUICK_SETTINGS = dict(reconstruction_iterations=3, calibration_images=2, merge_samples=4, barrier_points=3)
QUICK_IMAGE_SIZE = {"street_scenes": (32, 64), "digits": None}


# --------------------------------------------------------------------------------------------------------------
# One (family, seed) job: every configuration of the tables
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One family and seed, with the settings shared by all its configurations."""

    family: str
    seed: int
    data_root: str
    workdir: str
    threads: int
    quick: bool
    bits: tuple[str, ...]
    reconstruction_iterations: int | None
    targets: tuple[str, ...] = ()  # () = the family's development targets
    adaptation_settings: str = ""  # on top of the short adaptation preset ("longer adaptation")
    merge_draws: int = 1  # noise-sampling merges averaged per configuration (paper 30)
    rows: tuple[str, ...] = ROW_LABELS
    roundings: tuple[str, ...] = ("noise", "float")


def base_settings(job: Job) -> dict[str, Any]:
    """HdrqConfig values shared by every configuration of the job (method defaults unless --quick)."""
    settings: dict[str, Any] = dict(QUICK_SETTINGS, adaptation_settings=QUICK_ADAPTATION[job.family]) if job.quick else {}
    if job.adaptation_settings:
        settings["adaptation_settings"] = ", ".join(filter(None, [settings.get("adaptation_settings", ""),
                                                                   job.adaptation_settings]))
    if job.targets:
        settings["targets"] = tuple(job.targets)
    if job.reconstruction_iterations:
        settings["reconstruction_iterations"] = job.reconstruction_iterations
    return settings


def job_context(job: Job) -> RunContext:
    """The run context of a job: its family's first target, a fresh stage cache, the job's seed."""
    family = data.get_family(job.family)
    workdir = Path(job.workdir) / f"{job.family}-seed{job.seed}"
    spec = RunSpec(method="hdrq", dataset=family.name, data_root=job.data_root, target=family.default_targets[0],
                   image_size=QUICK_IMAGE_SIZE[job.family] if job.quick else None, seed=job.seed,
                   output_dir=str(workdir / "output"), cache_dir=str(workdir / "cache"), num_threads=job.threads,
                   selection_size=8 if job.quick else 500)
    return RunContext(spec, LocalSession(checkpoint_root=str(workdir / "checkpoints"), device=default_device()))


def score_configuration(ctx: RunContext, config: hdrq.HdrqConfig, targets: tuple[str, ...], label: str,
                        watch: Any, roundings: Sequence[str], draws: int) -> list[ConfigResult]:
    """Build the specialists once, score each on its own target, then merge with each rounding (``draws`` merges,
    averaged) and score that."""
    started = time.perf_counter()
    specialists = hdrq.build_specialists(config, ctx, targets, watch)
    key = heldout_score_key(ctx.task)
    own = {target: float(heldout_scores(model, ctx.family, ctx.data_root, target, ctx.device,
                                        image_size=ctx.spec.image_size)[key])
           for target, model in specialists.models.items()}
    stages = specialists.ptq_stages.values()
    iterations = sum(stage["iterations"] for stage in stages)
    loop_seconds = sum(stage["loop_seconds"] for stage in stages)
    # None for a PTQ stage cached before reconstruction recorded its movement (the table shows "—").
    movement = {target: stage.get("movement") for target, stage in specialists.ptq_stages.items()}
    results = []
    for rounding in roundings:
        variant = dataclasses.replace(config, noise_sampling=rounding != "float")
        merged, harmonic, quality, barrier, count = mean_over_draws(ctx, variant, specialists, targets, draws, watch)
        results.append(ConfigResult(
            label=label, bits="FP" if config.ptq_method == hdrq.FULL_PRECISION else config.bits,
            rounding="fp" if config.ptq_method == hdrq.FULL_PRECISION else rounding, specialists=own,
            merged=merged, harmonic=harmonic, merge_quality=quality, error_barrier=barrier,
            ptq_method=config.ptq_method, ptq_iterations=iterations, ptq_loop_seconds=loop_seconds,
            seconds=time.perf_counter() - started, draws=count, movement=movement))
    return results


def mean_over_draws(ctx: RunContext, config: hdrq.HdrqConfig, specialists: Any, targets: tuple[str, ...],
                    draws: int, watch: Any) -> tuple[dict[str, float], float, float, float, int]:
    """Held-out scores (per target, H) and merge_quality averaged over ``draws`` noise-sampling merges (merge seeds
    seed + 1000 k); one merge when draws cannot differ (float rounding, FP, or no rounding ties). The error barrier
    does not depend on the merge: measured once."""
    models = list(specialists.models.values())
    count = draws if config.noise_sampling and has_rounding_ties(models) else 1
    key = heldout_score_key(ctx.task)
    per_target: list[dict[str, float]] = []
    harmonics, qualities, barrier = [], [], float("nan")
    for draw in range(count):
        variant = config if draw == 0 else dataclasses.replace(config, barrier_points=0)
        merge = hdrq.merge_specialists(variant, ctx, specialists, watch, merge_seed=ctx.spec.seed + 1000 * draw)
        scores = multi_target_heldout(merge.model, ctx, list(targets))
        per_target.append({t: float(scores[f"{key}_{t}"]) for t in targets})
        harmonics.append(float(scores[key]))
        qualities.append(float(merge.quality.score))
        barrier = float(merge.metrics.get("error_barrier", barrier))
    merged = {t: float(np.mean([scores[t] for scores in per_target])) for t in targets}
    return merged, float(np.mean(harmonics)), float(np.mean(qualities)), barrier, count


@dataclass(frozen=True)
class Unit:
    """One configuration of a (family, seed) job: its specialists built once, merged with each rounding (one
    ``ConfigResult`` per rounding). The unit a run saves when finished and never repeats."""

    label: str  # a ROW_LABELS entry
    bits: str  # "FP" for the float row
    ptq_method: str
    lambda_distance: float | None
    roundings: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.label} {self.bits}"


def job_targets(job: Job) -> tuple[str, ...]:
    """The merged targets (as :func:`hdrq.merge_targets` resolves them: the job's, else the family's defaults)."""
    return tuple(job.targets) or tuple(data.get_family(job.family).default_targets)


def job_units(job: Job) -> list[Unit]:
    """The job's configurations in run order: FP, then each bit-width's PTQ rows."""
    roundings = tuple(job.roundings) if len(job_targets(job)) % 2 == 0 else ("noise",)  # odd counts have no ties
    units = [Unit("FP", "FP", hdrq.FULL_PRECISION, None, ("noise",))] if "FP" in job.rows else []
    for bits in job.bits:
        units += [Unit(label, bits, method, lambda_distance, roundings)
                  for label, method, lambda_distance in PTQ_ROWS if label in job.rows]
    return units


def unit_fields(job: Job, unit: Unit, data_key: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines a unit's result (its key): family, seed, the configuration, every HdrqConfig
    setting the job passes (adaptation, targets, iterations, --quick budgets), merge draws, image size and the
    generated data's version."""
    return {"benchmark": "hdrq_merge", "family": job.family, "seed": job.seed, "label": unit.label, "bits": unit.bits,
            "ptq_method": unit.ptq_method, "lambda_distance": unit.lambda_distance, "roundings": list(unit.roundings),
            "targets": list(job_targets(job)), "settings": base_settings(job), "merge_draws": job.merge_draws,
            "quick": job.quick, "image_size": QUICK_IMAGE_SIZE[job.family] if job.quick else None, "data": data_key}


@dataclass(frozen=True)
class JobPlan:
    """A job's pending units (key, unit), where to save them and when to stop starting new ones."""

    job: Job
    pending: tuple[tuple[str, Unit, dict[str, Any]], ...]
    store: UnitStore
    deadline: Deadline


def unit_result(configs: list[ConfigResult], stage_seconds: dict[str, float], seconds: float) -> dict[str, Any]:
    return {"configs": [dataclasses.asdict(c) for c in configs], "stage_seconds": stage_seconds, "seconds": seconds}


def run_job(plan: JobPlan) -> int:
    """The job's pending configurations (in this process or a spawned worker), each saved when finished; stops
    before a configuration once the deadline has passed. Returns how many it ran."""
    from raysel.methods import training

    job = plan.job
    if plan.deadline.passed():
        return 0
    torch.set_num_threads(job.threads)
    ctx = job_context(job)
    settings = base_settings(job)
    targets = hdrq.merge_targets(hdrq.HdrqConfig(**settings), ctx)
    assert targets == job_targets(job), (targets, job_targets(job))
    watch = training.Stopwatch()
    ran = 0
    for key, unit, fields in plan.pending:
        if plan.deadline.passed():
            break
        if plan.store.get(key) is not None:  # finished meanwhile (another run sharing the workdir)
            continue
        started, before = time.perf_counter(), dict(watch.seconds)
        values: dict[str, Any] = dict(ptq_method=unit.ptq_method)
        if unit.bits != "FP":
            values.update(bits=unit.bits, lambda_distance=unit.lambda_distance)
        config = hdrq.HdrqConfig(**settings, **values)
        configs = score_configuration(ctx, config, targets, unit.label, watch, unit.roundings, job.merge_draws)
        for entry in configs:
            print(progress_line(job, entry), flush=True)
        stages = {k: v - before.get(k, 0.0) for k, v in watch.seconds.items() if v - before.get(k, 0.0) > 0}
        plan.store.save(key, fields, unit_result(configs, stages, time.perf_counter() - started))
        ran += 1
    return ran


def job_result(job: Job, units: Sequence[tuple[Unit, dict[str, Any]]]) -> JobResult:
    """A job's finished units (saved results, in run order) as one JobResult: seconds and stage seconds summed."""
    result = JobResult(job.family, job.seed, job_targets(job))
    for _, saved in units:
        result.configs += [ConfigResult(**entry) for entry in saved["configs"]]
        result.seconds += float(saved["seconds"])
        for stage, seconds in saved["stage_seconds"].items():
            result.stage_seconds[stage] = result.stage_seconds.get(stage, 0.0) + float(seconds)
    return result


def progress_line(job: Job, entry: ConfigResult) -> str:
    return (f"[{job.family} seed {job.seed}] {entry.label:<26} {entry.bits:<5} {entry.rounding:<5} "
            f"specialists {' / '.join(f'{100 * v:.1f}' for v in entry.specialists.values())}  merged H "
            f"{100 * entry.harmonic:.2f}  merge_quality {entry.merge_quality:.3f}  draws {entry.draws}  "
            f"({entry.seconds:.0f} s)")


def execute(plans: Sequence[JobPlan], parallel: int) -> Iterator[int]:
    """Run the jobs' pending units: in order in this process, or in ``parallel`` spawned workers (as they
    finish); yields how many units each job ran."""
    return run_in_processes(run_job, plans, parallel)


def report(results: list[JobResult], args: argparse.Namespace, wall_seconds: float, loads: tuple[float, float],
           pending: Sequence[str] = (), loaded: int = 0) -> str:
    """The BENCHMARKS.md section body, from the finished units (``results``); ``pending`` names the units not
    finished yet (listed, and the paired interval says "pending" until it has 2 seeds), ``loaded`` how many
    finished units came from earlier runs."""
    config = hdrq.HdrqConfig(**base_settings(_job(args, args.families[0], args.seeds[0], "", "")))
    presets = "; ".join(f"{name} " + ", ".join(f"{k}={v}" for k, v in values.items())
                        for name, values in hdrq.SHORT_ADAPTATION.items())
    lines = [
        f"Settings: hdrq defaults unless --quick: adaptation `{config.adaptation}` (hiast for street_scenes, gsda "
        f"for digits; short presets {presets}{'; ' + config.adaptation_settings if config.adaptation_settings else ''}), "
        f"{config.reconstruction_iterations} reconstruction iterations per block (paper 20000), "
        f"HDRQ weight lr {config.weight_lr:g} `{config.weight_lr_schedule}` (used: "
        f"{config.ptq_config(0).effective_weight_lr:.2g}), "
        f"{config.calibration_images} calibration images per target, lambda {PAPER_LAMBDA:g}, quantization noise "
        f"`{config.quantization_noise}`, {config.merge_samples} noise samples per merge, each configuration the "
        f"mean of {args.merge_draws} merge draw(s) (paper: 30). Seeds {', '.join(map(str, args.seeds))}; {args.parallel} job(s) at a time with "
        f"{args.threads} torch thread(s); CPU load average {loads[0]:.1f} before / {loads[1]:.1f} after (shared "
        f"machine: times are noisy).{' QUICK SMOKE RUN on tiny generated data: the numbers mean nothing.' if args.quick else ''}",
        "",
    ]
    if pending:
        lines += [f"Pending ({len(pending)} configuration(s), rerun the command above to continue): "
                  + "; ".join(pending) + ".", ""]
    for family in dict.fromkeys(r.family for r in results):
        runs = sorted((r for r in results if r.family == family), key=lambda r: r.seed)
        lines += family_tables(runs, args.seeds, args.bits) + [""]
    lines += ["### HDRQ − QDrop, paired by seed", "", "Merged H in points (means over merge draws); the regime "
              f"where quantization clearly damages merging has FP − QDrop ≥ {100 * REGIME_GAP:.0f} points. Paper "
              "at W4A4: +4.21 mIoU (GTA -> Cityscapes, IDD, Table 1b), +0.15 to +1.54 accuracy (Office-Home, "
              "Table 2).", ""]
    for family in dict.fromkeys(r.family for r in results):
        table = paired_table(sorted((r for r in results if r.family == family), key=lambda r: r.seed), args.bits,
                             partial=bool(pending))
        lines += table if not lines[-1].startswith("|") else table[2:]
    lines += ["", "### merge-quality selector regret", "",
              "Candidates: every quantized configuration of the family and seed (bits x PTQ method, incl. "
              "QDrop+noise, x merge rounding); each candidate's merge_quality and held-out H are its means over the "
              "merge draws. The label-free score picks; held-out H judges (oracle).", ""]
    lines += selector_table(results) + ["", "### reconstruction speed", ""]
    lines += speed_table(results) + ["", "### runtime", "", "| family | seed | wall s | source s | adaptation s | "
                                     "PTQ s | merge + scoring s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for run in results:
        stages = run.stage_seconds
        merge = sum(stages.get(k, 0.0) for k in ("merge", "merge_quality", "error_barrier"))
        lines.append(f"| {run.family} | {run.seed} | {run.seconds:.0f} | {stages.get('source_stage', 0):.0f} | "
                     f"{stages.get('adaptation_stage', 0):.0f} | {stages.get('ptq_stage', 0):.0f} | {merge:.0f} |")
    total = f"Total wall time {wall_seconds / 60:.1f} min"
    if loaded:
        units_seconds = sum(run.seconds for run in results)
        total += (f" in this run; {loaded} finished configuration(s) loaded from earlier runs (the configurations' "
                  f"own times sum to {units_seconds / 60:.1f} min)")
    lines += ["", total + ".", "", "### weight movement", "",
              "How far reconstruction moved each quantized specialist from its MSE-calibrated round-to-nearest start "
              "(raysel.quant.movement), to tell whether HDRQ's regularisers (noise-based quantization, distance "
              "term) changed the solution relative to QDrop: the mean over layers, averaged over the specialists, "
              "largest single layer in brackets; BRECQ/QDrop learn only the rounding (AdaRound: codes changed are "
              "rounding decisions flipped, weight steps fixed) and no float weights (—), HDRQ learns float weights "
              "and their steps; — also where a unit finished before movement was recorded. "
              + movement_summary(results, args.bits), ""]
    lines += movement_table(results, args.bits)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def _job(args: argparse.Namespace, family: str, seed: int, root: str, workdir: str) -> Job:
    spec = data.get_family(family)
    targets = (*spec.default_targets, *spec.test_targets) if args.with_test_targets else ()
    return Job(family=family, seed=seed, data_root=root, workdir=workdir, threads=args.threads, quick=args.quick,
               bits=tuple(args.bits), reconstruction_iterations=args.iterations, targets=targets,
               adaptation_settings=args.adaptation[family] or "", merge_draws=args.merge_draws,
               rows=tuple(args.rows), roundings=tuple(args.roundings))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1; --quick: 0)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), help=f"subset of {', '.join(FAMILIES)}")
    parser.add_argument("--bits", nargs="+", default=list(BITS), help=f"bit-widths (default {' '.join(BITS)})")
    parser.add_argument("--iterations", type=int, default=None,
                        help="reconstruction iterations per block (default: the hdrq method's 300)")
    parser.add_argument("--merge-draws", type=int, default=1,
                        help=f"noise-sampling merges averaged per configuration (paper {PAPER_MERGE_DRAWS})")
    parser.add_argument("--rows", nargs="+", default=list(ROW_LABELS), choices=ROW_LABELS, help="table rows to run")
    parser.add_argument("--roundings", nargs="+", default=["noise", "float"], choices=["noise", "float"],
                        help="merge roundings of quantized rows (float only with an even target count)")
    parser.add_argument("--with-test-targets", action="store_true",
                        help="merge the development targets plus the family's test target (final comparison only)")
    for family, preset in (("street", "hiast"), ("digits", "gsda")):
        parser.add_argument(f"--{family}-adaptation", default="", metavar="SETTINGS",
                            help=f"{preset} settings over its short preset, e.g. longer adaptation")
    parser.add_argument("--quick", action="store_true", help="smoke run on tiny data; prints only (no BENCHMARKS.md)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job (default 1)")
    parser.add_argument("--parallel", type=int, default=1, help="(family, seed) jobs at once, in spawned processes")
    parser.add_argument("--data-root", default=None, help="data root (default: raysel's default data root)")
    parser.add_argument("--section", default=SECTION,
                        help=f"BENCHMARKS.md section to write (default {SECTION}; e.g. {SECTION}.regime)")
    add_chunk_arguments(parser, "<section>", "configuration", "stage caches")
    parser.add_argument("--output", type=Path, default=BENCHMARKS_PATH, help="the BENCHMARKS.md to update")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {', '.join(unknown)}; valid: {', '.join(FAMILIES)}")
    for bits in args.bits:
        if not hdrq.BITS_PATTERN.match(bits):
            parser.error(f"--bits {bits!r}: expected W<weight bits>A<activation bits>, e.g. W4A4")
    if min(args.threads, args.parallel, args.merge_draws, args.iterations or 1) < 1:
        parser.error("--threads, --parallel, --merge-draws and --iterations must be >= 1")
    resolve_chunk_arguments(parser, args, args.section, writes=not (args.quick or args.no_write))
    args.seeds = list(dict.fromkeys(args.seeds or ([0] if args.quick else [0, 1])))
    args.adaptation = {"street_scenes": args.street_adaptation, "digits": args.digits_adaptation}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("hdrq_merge.py", argv)
    deadline = Deadline.after_minutes(args.max_minutes)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with working_directory(args.workdir, "raysel-hdrq-merge-") as directory:
        workdir = Path(directory)
        store = UnitStore(workdir / "units", args.evidence)
        root = prepare_benchmark_data(args.families, args.data_root, tiny_into=workdir / "data" if args.quick else None)
        versions = {family: data_version(root / data.get_family(family).name) for family in args.families}
        jobs = [_job(args, family, seed, str(root), str(workdir)) for family in args.families for seed in args.seeds]
        planned = [(job, [(unit_key(fields), unit, fields) for unit in job_units(job)
                          for fields in [unit_fields(job, unit, versions[job.family])]]) for job in jobs]
        done_before = store.load([key for _, units in planned for key, _, _ in units])
        plans = [JobPlan(job, tuple(u for u in units if u[0] not in done_before), store, deadline)
                 for job, units in planned]
        total = sum(len(units) for _, units in planned)
        print(f"{total} configuration(s): {len(done_before)} finished earlier (loaded, not rerun), "
              f"{total - len(done_before)} to run; workdir {workdir}", flush=True)
        ran = sum(execute([plan for plan in plans if plan.pending], args.parallel))
        finished = store.load([key for _, units in planned for key, _, _ in units])
    results, pending = [], []
    for job, units in planned:
        done = [(unit, finished[key]) for key, unit, _ in units if key in finished]
        pending += [f"{job.family} seed {job.seed} {unit.name}" for key, unit, _ in units if key not in finished]
        if done:
            results.append(job_result(job, done))
    body = report(results, args, time.perf_counter() - started, (load_before, os.getloadavg()[0]),
                  pending=pending, loaded=len(done_before))
    print("\n" + body, flush=True)
    return finish_chunked_run(args.section, command, body, done=len(finished), total=total, pending=pending, ran=ran,
                              loaded=len(done_before), store=store,
                              output=None if args.quick or args.no_write else args.output)


if __name__ == "__main__":
    sys.exit(main())
