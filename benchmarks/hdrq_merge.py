"""HDRQ's claims checked on the embedded benchmarks: merge-friendly PTQ for multi-target DA (paper Tables 1-3).

Per dataset family and seed, with the ``hdrq`` method's own pipeline pieces (:mod:`raysel.methods.hdrq`:
``build_specialists`` / ``merge_specialists``) on the default small models:

* **settings**: segmentation ``street_scenes`` (source ``game`` -> ``day_city``, ``dusk_city``, like the paper's
  GTA -> Cityscapes, IDD) and classification ``digits`` (``clean_digits`` -> ``photo_digits``, ``noisy_digits``,
  ``inverted_blur_digits``, like one Office-Home source -> three targets). Each target is adapted once by the
  method's default adaptation (short HIAST / GSDA; cached), from one shared source model.
* **Tables 1-2**: for FP (no quantization, float merge with moment-matched BN) and BRECQ, QDrop, HDRQ at W6A6 and
  W4A4: every target's quantized specialist scored on its own target's held-out split (Table 1a; Table 2's
  parentheses), and the merged model scored on every target with their harmonic mean H (Table 1b; Table 2).
  Quantized models merge with HDRQ's noise-sampling rounding (the paper's default; one merge seed per run).
* **Table 3 ablation** at W4A4: QDrop (baseline) -> + noise-based quantization (HDRQ with lambda 0) -> + distance
  regularization (HDRQ, lambda 5e-2); for two targets also the merge rounding (noise sampling vs float rounding;
  three targets have no rounding ties, so it changes nothing there).
* **Selector regret**: over every quantized merge of a family and seed (the benchmark's sweep: bits x PTQ method x
  rounding, plus the ablation), the label-free ``merge_quality`` score picks one; regret = best held-out H minus
  the pick's H (points), with Kendall tau, next to the expected regret of a random pick.
* **Speed**: block-reconstruction iterations per second of each PTQ method (optimisation loop only, summed over
  targets, bit-widths and seeds) and HDRQ's per-iteration cost relative to QDrop (the issue asks for <= 1.3x).

Held-out labels are read only here, through :func:`raysel.heldout.heldout_scores` and
:func:`raysel.execution.trial.multi_target_heldout` (evaluation code; the method and its selector never read them).

    python -m benchmarks.hdrq_merge                       # both families, seeds 0 1; writes BENCHMARKS.md
    python -m benchmarks.hdrq_merge --parallel 2          # (family, seed) jobs in 2 spawned processes
    python -m benchmarks.hdrq_merge --quick               # smoke run on tiny generated data; prints only

Writes the ``## hdrq_merge`` section of BENCHMARKS.md unless ``--quick`` or ``--no-write``. Every run uses a fresh
stage cache (under ``--workdir``, default a temporary folder), so the timings are real.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from benchmarks._common import (BENCHMARKS_PATH, command_line, default_device, heldout_score_key,
                                write_section)
from benchmarks._common import prepare_benchmark_data, run_in_processes, working_directory

from raysel import data
from raysel.heldout import heldout_scores
from raysel.methods import hdrq
from raysel.methods.base import LocalSession, RunContext, RunSpec
from raysel.selection.evaluate import evaluate_selector
from raysel.execution.trial import multi_target_heldout

SECTION = "hdrq_merge"
FAMILIES = ("street_scenes", "digits")
BITS = ("W6A6", "W4A4")
PTQ_ROWS = (("BRECQ", "brecq"), ("QDrop", "qdrop"), ("HDRQ", "hdrq"))
ABLATION_BITS = "W4A4"
PAPER_LAMBDA = 5e-2
# --quick: tiny generated data, tiny adaptations and reconstructions (a smoke test of the whole script).
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


@dataclass
class ConfigResult:
    """One configuration's specialists and merge, scored on held-out labels (fractions)."""

    label: str  # FP, BRECQ, QDrop, HDRQ, "+ noise", ...
    bits: str
    rounding: str  # noise | float | fp
    specialists: dict[str, float]  # each specialist on its own target
    merged: dict[str, float]  # the merged model on every target
    harmonic: float
    merge_quality: float
    error_barrier: float
    ptq_method: str
    ptq_iterations: int = 0
    ptq_loop_seconds: float = 0.0
    seconds: float = 0.0


@dataclass
class JobResult:
    """Everything one (family, seed) job measured."""

    family: str
    seed: int
    targets: tuple[str, ...]
    configs: list[ConfigResult] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def find(self, label: str, bits: str, rounding: str = "noise") -> ConfigResult | None:
        return next((c for c in self.configs if (c.label, c.bits, c.rounding) == (label, bits, rounding)), None)


def base_settings(job: Job) -> dict[str, Any]:
    """HdrqConfig values shared by every configuration of the job (method defaults unless --quick)."""
    settings: dict[str, Any] = dict(QUICK_SETTINGS, adaptation_settings=QUICK_ADAPTATION[job.family]) if job.quick else {}
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
                        watch: Any, roundings: Sequence[str]) -> list[ConfigResult]:
    """Build the specialists once, score each on its own target, then merge with each rounding and score that."""
    started = time.perf_counter()
    specialists = hdrq.build_specialists(config, ctx, targets, watch)
    key = heldout_score_key(ctx.task)
    own = {target: float(heldout_scores(model, ctx.family, ctx.data_root, target, ctx.device,
                                        image_size=ctx.spec.image_size)[key])
           for target, model in specialists.models.items()}
    stages = specialists.ptq_stages.values()
    iterations = sum(stage["iterations"] for stage in stages)
    loop_seconds = sum(stage["loop_seconds"] for stage in stages)
    results = []
    for rounding in roundings:
        variant = dataclasses.replace(config, noise_sampling=rounding != "float")
        merge = hdrq.merge_specialists(variant, ctx, specialists, watch)
        scores = multi_target_heldout(merge.model, ctx, list(targets))
        results.append(ConfigResult(
            label=label, bits="FP" if config.ptq_method == hdrq.FULL_PRECISION else config.bits,
            rounding="fp" if config.ptq_method == hdrq.FULL_PRECISION else rounding, specialists=own,
            merged={t: float(scores[f"{key}_{t}"]) for t in targets}, harmonic=float(scores[key]),
            merge_quality=float(merge.quality.score), error_barrier=float(merge.metrics.get("error_barrier", np.nan)),
            ptq_method=config.ptq_method, ptq_iterations=iterations, ptq_loop_seconds=loop_seconds,
            seconds=time.perf_counter() - started))
    return results


def run_job(job: Job) -> JobResult:
    """Every configuration of one family and seed (in this process or a spawned worker)."""
    from raysel.methods import training

    torch.set_num_threads(job.threads)
    started = time.perf_counter()
    ctx = job_context(job)
    settings = base_settings(job)
    targets = hdrq.merge_targets(hdrq.HdrqConfig(**settings), ctx)
    result = JobResult(job.family, job.seed, targets)
    watch = training.Stopwatch()
    two_targets = len(targets) == 2

    def run(label: str, roundings: Sequence[str], **values: Any) -> None:
        config = hdrq.HdrqConfig(**settings, **values)
        for entry in score_configuration(ctx, config, targets, label, watch, roundings):
            result.configs.append(entry)
            print(progress_line(job, entry), flush=True)

    run("FP", ["noise"], ptq_method=hdrq.FULL_PRECISION)
    for bits in job.bits:
        for label, method in PTQ_ROWS:
            run(label, ["noise", "float"] if two_targets else ["noise"], bits=bits, ptq_method=method,
                lambda_distance=PAPER_LAMBDA)
    run("+ noise (HDRQ, lambda 0)", ["noise", "float"] if two_targets else ["noise"], bits=ABLATION_BITS,
        ptq_method="hdrq", lambda_distance=0.0)
    result.seconds = time.perf_counter() - started
    result.stage_seconds = dict(watch.seconds)
    return result


def progress_line(job: Job, entry: ConfigResult) -> str:
    return (f"[{job.family} seed {job.seed}] {entry.label:<26} {entry.bits:<5} {entry.rounding:<5} "
            f"specialists {' / '.join(f'{100 * v:.1f}' for v in entry.specialists.values())}  merged H "
            f"{100 * entry.harmonic:.2f}  merge_quality {entry.merge_quality:.3f}  ({entry.seconds:.0f} s)")


def execute(jobs: Sequence[Job], parallel: int) -> Iterator[JobResult]:
    """Yield finished jobs: in order in this process, or as they complete in ``parallel`` spawned workers."""
    return run_in_processes(run_job, jobs, parallel)


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------


def points(values: Sequence[float]) -> str:
    return " / ".join("-" if not np.isfinite(v) else f"{100 * v:.2f}" for v in values)


def mean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def family_tables(runs: list[JobResult], seeds: Sequence[int], bits: Sequence[str]) -> list[str]:
    """Tables 1-2 (specialists and merged H), Table 3 (ablation, rounding) for one family, means over seeds."""
    targets = runs[0].targets
    metric = "mIoU" if runs[0].family == "street_scenes" else "accuracy"
    lines = [f"### {runs[0].family}: {len(targets)} targets ({', '.join(targets)}), held-out {metric} in points",
             "", "Specialist = each target's own (quantized) model on its target (Table 1a / Table 2 parentheses); "
             "merged = the one merged model on every target, H = their harmonic mean (Table 1b / Table 2). Means "
             f"over seeds {', '.join(map(str, seeds))}; H per seed in brackets.", "",
             f"| method | bits | specialists: {' / '.join(targets)} | merged: {' / '.join(targets)} | merged H "
             "[per seed] | merge quality | error barrier |",
             "|---|---|---|---|---|---:|---:|"]
    rows = [("FP", "FP")] + [(label, b) for b in bits for label, _ in PTQ_ROWS]
    for label, b in rows:
        entries = [e for e in (run.find(label, b, "fp" if b == "FP" else "noise") for run in runs) if e]
        if not entries:
            continue
        specialists = [mean([e.specialists[t] for e in entries]) for t in targets]
        merged = [mean([e.merged[t] for e in entries]) for t in targets]
        harmonic = mean([e.harmonic for e in entries])
        lines.append(f"| {label} | {b if b != 'FP' else '32/32'} | {points(specialists)} | {points(merged)} | "
                     f"**{100 * harmonic:.2f}** [{points([e.harmonic for e in entries])}] | "
                     f"{mean([e.merge_quality for e in entries]):.3f} | {mean([e.error_barrier for e in entries]):.3f} |")
    lines += ["", f"Ablation at {ABLATION_BITS} (Table 3: QDrop, then + noise-based quantization, then + distance "
              "regularization), merged H in points:", "", "| variant | merged H (mean) | per seed | Δ vs row above |",
              "|---|---:|---|---:|"]
    previous = None
    for label, name in (("QDrop", "baseline: QDrop"), ("+ noise (HDRQ, lambda 0)", "+ noise-based quantization"),
                        ("HDRQ", f"+ distance regularization (lambda {PAPER_LAMBDA:g}) = HDRQ")):
        values = [e.harmonic for e in (run.find(label, ABLATION_BITS) for run in runs) if e]
        value = mean(values)
        delta = "" if previous is None else f"{100 * (value - previous):+.2f}"
        lines.append(f"| {name} | {100 * value:.2f} | {points(values)} | {delta} |")
        previous = value
    if len(targets) == 2:
        lines += ["", "Merge rounding of the same quantized specialists (§4.3): noise sampling with cosine rejection "
                  "(eq. 12) vs plain float rounding (eq. 11), merged H in points (mean over seeds):", "",
                  "| PTQ | bits | noise sampling | float rounding | Δ |", "|---|---|---:|---:|---:|"]
        for label in ("BRECQ", "QDrop", "HDRQ", "+ noise (HDRQ, lambda 0)"):
            for b in bits:
                noise = [e.harmonic for e in (run.find(label, b, "noise") for run in runs) if e]
                flat = [e.harmonic for e in (run.find(label, b, "float") for run in runs) if e]
                if noise and flat:
                    lines.append(f"| {label} | {b} | {100 * mean(noise):.2f} | {100 * mean(flat):.2f} | "
                                 f"{100 * (mean(noise) - mean(flat)):+.2f} |")
    return lines


def verdict(runs: list[JobResult]) -> str:
    """Whether HDRQ's merged model beats QDrop's at W4A4 (seed means), as the paper reports."""
    hdrq_h = mean([e.harmonic for e in (run.find("HDRQ", "W4A4") for run in runs) if e])
    qdrop_h = mean([e.harmonic for e in (run.find("QDrop", "W4A4") for run in runs) if e])
    if not (np.isfinite(hdrq_h) and np.isfinite(qdrop_h)):
        return f"{runs[0].family}: W4A4 not run"
    outcome = "yes" if hdrq_h > qdrop_h else "NO"
    return (f"{runs[0].family}: {outcome} (HDRQ {100 * hdrq_h:.2f} vs QDrop {100 * qdrop_h:.2f}, "
            f"{100 * (hdrq_h - qdrop_h):+.2f} points; paper at W4A4: +4.21 mIoU for GTA -> Cityscapes, IDD, "
            "Table 1b, and +0.15 to +1.54 accuracy on three Office-Home settings, Table 2)")


def selector_table(results: list[JobResult]) -> list[str]:
    """Regret of the label-free merge_quality pick over every quantized merge of a family and seed."""
    lines = ["| family | seed | candidates | merge_quality picks | its H | best H (config) | regret (points) | "
             "random pick: expected regret | Kendall τ |", "|---|---:|---:|---|---:|---|---:|---:|---:|"]
    for run in results:
        pool = [c for c in run.configs if c.rounding != "fp"]
        if len(pool) < 2:
            continue
        scores = np.array([c.merge_quality for c in pool])
        truth = np.array([c.harmonic for c in pool])
        evaluation = evaluate_selector(scores, truth)
        picked, best = pool[evaluation["selected_index"]], pool[int(np.argmax(truth))]
        lines.append(f"| {run.family} | {run.seed} | {len(pool)} | {describe(picked)} | {100 * picked.harmonic:.2f} | "
                     f"{100 * best.harmonic:.2f} ({describe(best)}) | {evaluation['regret']:.2f} | "
                     f"{100 * float(np.mean(truth.max() - truth)):.2f} | {evaluation['kendall_tau']:.2f} |")
    return lines


def describe(entry: ConfigResult) -> str:
    return f"{entry.label} {entry.bits}{'' if entry.rounding == 'noise' else ' float-rounded'}"


def speed_table(results: list[JobResult]) -> list[str]:
    """Reconstruction iterations per second per PTQ method and family, and the cost per iteration vs QDrop."""
    lines = ["| family | PTQ method | specialists | iterations | loop s | iterations / s | s per iteration vs QDrop |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for family in dict.fromkeys(r.family for r in results):
        totals: dict[str, list[float]] = {}
        for run in (r for r in results if r.family == family):
            seen = set()
            for entry in run.configs:
                key = (entry.label, entry.bits)
                if entry.label not in dict(PTQ_ROWS) or key in seen:
                    continue  # the main rows only; a configuration's specialists are built once per rounding set
                seen.add(key)
                total = totals.setdefault(entry.ptq_method, [0, 0.0, 0.0])
                total[0] += len(entry.specialists)
                total[1] += entry.ptq_iterations
                total[2] += entry.ptq_loop_seconds
        qdrop = totals.get("qdrop")
        qdrop_cost = qdrop[2] / qdrop[1] if qdrop and qdrop[1] else float("nan")
        for method, (count, iterations, seconds) in totals.items():
            rate = iterations / seconds if seconds else float("nan")
            relative = (seconds / iterations) / qdrop_cost if iterations else float("nan")
            lines.append(f"| {family} | {method} | {count} | {iterations:.0f} | {seconds:.1f} | {rate:.1f} | "
                         f"{relative:.2f}x |")
    return lines


def report(results: list[JobResult], args: argparse.Namespace, wall_seconds: float, loads: tuple[float, float]) -> str:
    """The BENCHMARKS.md section body."""
    config = hdrq.HdrqConfig(**base_settings(_job(args, results[0].family, results[0].seed, "", "")))
    presets = "; ".join(f"{name} " + ", ".join(f"{k}={v}" for k, v in values.items())
                        for name, values in hdrq.SHORT_ADAPTATION.items())
    lines = [
        f"Settings: hdrq defaults unless --quick: adaptation `{config.adaptation}` (hiast for street_scenes, gsda "
        f"for digits; short presets {presets}{'; ' + config.adaptation_settings if config.adaptation_settings else ''}), "
        f"{config.reconstruction_iterations} reconstruction iterations per block (paper 20000), "
        f"{config.calibration_images} calibration images per target, lambda {PAPER_LAMBDA:g}, quantization noise "
        f"`{config.quantization_noise}`, {config.merge_samples} merge draws, one merge seed per run (paper: mean "
        f"of 30 merges). Seeds {', '.join(map(str, args.seeds))}; {args.parallel} job(s) at a time with "
        f"{args.threads} torch thread(s); CPU load average {loads[0]:.1f} before / {loads[1]:.1f} after (shared "
        f"machine: times are noisy).{' QUICK SMOKE RUN on tiny generated data: the numbers mean nothing.' if args.quick else ''}",
        "",
    ]
    for family in dict.fromkeys(r.family for r in results):
        runs = sorted((r for r in results if r.family == family), key=lambda r: r.seed)
        lines += family_tables(runs, args.seeds, args.bits) + [""]
    lines += ["### merge-quality selector regret", "",
              "Candidates: every quantized merge of the family and seed (bits x PTQ method x merge rounding, plus "
              "the ablation). The label-free score picks; held-out H judges (oracle).", ""]
    lines += selector_table(results) + ["", "### reconstruction speed", ""]
    lines += speed_table(results) + ["", "### runtime", "", "| family | seed | wall s | source s | adaptation s | "
                                     "PTQ s | merge + scoring s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for run in results:
        stages = run.stage_seconds
        merge = sum(stages.get(k, 0.0) for k in ("merge", "merge_quality", "error_barrier"))
        lines.append(f"| {run.family} | {run.seed} | {run.seconds:.0f} | {stages.get('source_stage', 0):.0f} | "
                     f"{stages.get('adaptation_stage', 0):.0f} | {stages.get('ptq_stage', 0):.0f} | {merge:.0f} |")
    lines += ["", f"Total wall time {wall_seconds / 60:.1f} min.", "",
              "**Does HDRQ's merged model beat QDrop's at W4A4, as in the paper?**", ""]
    lines += [f"- {verdict(sorted((r for r in results if r.family == f), key=lambda r: r.seed))}"
              for f in dict.fromkeys(r.family for r in results)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def _job(args: argparse.Namespace, family: str, seed: int, root: str, workdir: str) -> Job:
    return Job(family=family, seed=seed, data_root=root, workdir=workdir, threads=args.threads, quick=args.quick,
               bits=tuple(args.bits), reconstruction_iterations=args.iterations)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1; --quick: 0)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), help=f"subset of {', '.join(FAMILIES)}")
    parser.add_argument("--bits", nargs="+", default=list(BITS), help=f"bit-widths (default {' '.join(BITS)})")
    parser.add_argument("--iterations", type=int, default=None,
                        help="reconstruction iterations per block (default: the hdrq method's 300)")
    parser.add_argument("--quick", action="store_true", help="smoke run on tiny data; prints only (no BENCHMARKS.md)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job (default 1)")
    parser.add_argument("--parallel", type=int, default=1, help="(family, seed) jobs at once, in spawned processes")
    parser.add_argument("--data-root", default=None, help="data root (default: raysel's default data root)")
    parser.add_argument("--workdir", type=Path, default=None, help="stage caches (default: a temporary folder)")
    parser.add_argument("--output", type=Path, default=BENCHMARKS_PATH, help="the BENCHMARKS.md to update")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {', '.join(unknown)}; valid: {', '.join(FAMILIES)}")
    for bits in args.bits:
        if not hdrq.BITS_PATTERN.match(bits):
            parser.error(f"--bits {bits!r}: expected W<weight bits>A<activation bits>, e.g. W4A4")
    if args.threads < 1 or args.parallel < 1 or (args.iterations is not None and args.iterations < 1):
        parser.error("--threads, --parallel and --iterations must be >= 1")
    args.seeds = list(dict.fromkeys(args.seeds or ([0] if args.quick else [0, 1])))
    if ABLATION_BITS not in args.bits:
        args.bits.append(ABLATION_BITS)  # the ablation and the verdict compare at W4A4
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("hdrq_merge.py", argv)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with working_directory(args.workdir, "raysel-hdrq-merge-") as directory:
        workdir = Path(directory)
        root = prepare_benchmark_data(args.families, args.data_root, tiny_into=workdir / "data" if args.quick else None)
        jobs = [_job(args, family, seed, str(root), str(workdir)) for family in args.families for seed in args.seeds]
        results = list(execute(jobs, args.parallel))
    order = {(job.family, job.seed): index for index, job in enumerate(jobs)}
    results.sort(key=lambda r: order[(r.family, r.seed)])
    body = report(results, args, time.perf_counter() - started, (load_before, os.getloadavg()[0]))
    print("\n" + body, flush=True)
    if not (args.quick or args.no_write):
        write_section(SECTION, command, body, path=args.output)
        print(f"wrote the '## {SECTION}' section of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
