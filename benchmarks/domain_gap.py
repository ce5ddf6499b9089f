"""The domain gap of the embedded benchmarks is real: source-only vs. a target-supervised reference (oracle).

For every dataset family (``street_scenes`` segmentation, ``digits`` classification) and seed, on the default
small model:

* **source-only**: the registered ``source_only`` method at its defaults, trained in-process (``LocalSession``)
  on the labelled source domain. It does not depend on the target, so it is trained once per seed and scored on
  every target's held-out split.
* **oracle** (target-supervised reference): the *same* network and training recipe (``source_only``'s code and
  defaults) trained on the target's **train split with labels**, via :class:`OracleRunContext`, whose
  ``source_dataset()`` returns that split. One per target and seed. This is evaluation code: it reads target
  labels by design, which no method or selector may do.
* **chance**, from the held-out label histogram: predicting the most frequent class everywhere, and uniform
  random prediction (expected confusion matrix), both scored with the same metric (raysel.metrics mIoU, absent
  classes skipped; or accuracy, i.e. 10% uniform for digits).

Scores are held-out mIoU (segmentation) or accuracy (classification), in points. Requirements checked:
source-only at least 10 points below the oracle on every target (mean over seeds, and each seed is listed), and
every seed's source-only score at least 5 points above the better chance baseline ("clearly better than chance").

    python -m benchmarks.domain_gap                          # both families, seeds 0 1; writes BENCHMARKS.md
    python -m benchmarks.domain_gap --quick --families digits   # smoke run (few iterations), prints only

Writes the ``## domain_gap`` section of BENCHMARKS.md (replacing an existing one) unless ``--quick`` or
``--no-write``. Every run uses a fresh stage cache, so the runtimes are real training times.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks._common import (BENCHMARKS_PATH, ScoredRun, command_line, config_defaults, data_identity,
                                run_method_and_score_heldout, write_section)
from benchmarks._common import run_in_processes

from raysel import data
from raysel.conventions import IGNORE_INDEX
from raysel.data import DatasetFamily
from raysel.heldout import HELDOUT_SPLIT
from raysel.methods.base import RunContext
from raysel.models import default_model_name
from raysel.metrics import miou

SECTION = "domain_gap"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("benchmarks/_common.py", "raysel/methods/source_only.py", "raysel/methods/base.py",
            "raysel/methods/stages.py", "raysel/methods/training.py", "raysel/methods/optim.py",
            "raysel/methods/augment.py", "raysel/methods/losses.py", "raysel/methods/networks.py",
            "raysel/methods/acceleration.py", "raysel/models", "raysel/data/street_scenes.py",
            "raysel/data/digits.py", "raysel/data/generation.py", "raysel/data/common.py", "raysel/data/family.py",
            "raysel/heldout.py", "raysel/metrics.py", "raysel/execution/local.py", "raysel/execution/trial.py")
METHOD = "source_only"
FAMILIES = ("street_scenes", "digits")
REQUIRED_GAP_POINTS = 10.0
CHANCE_MARGIN_POINTS = 5.0
QUICK_ITERATIONS = 40


# --------------------------------------------------------------------------------------------------------------
# Oracle: source_only's training code on the labelled target train split
# --------------------------------------------------------------------------------------------------------------


class OracleRunContext(RunContext):
    """Run context of the target-supervised reference: the "source" data is the target's labelled train split.

    Everything else (model, loader, augmentation, optimiser, schedule) is source_only's, so the oracle differs from
    the source-only model only in the data it sees. Build it with ``RunSpec(source=target, target=target)`` so
    the stage cache key and the run's bookkeeping name the data actually used.
    """

    def source_dataset(self, split: str = "train") -> Dataset:
        """The target domain's train split WITH labels (oracle supervision)."""
        return self.family.load(self.data_root, self.target, "train", with_labels=True,
                                image_size=self.spec.image_size)


def oracle_run(family: DatasetFamily, target: str, seed: int, workdir: Path, root: Path,
               overrides: dict[str, Any], threads: int | None) -> ScoredRun:
    """Train source_only's recipe on the labelled target train split and score it on that target's held-out split."""
    return run_method_and_score_heldout(
        METHOD, family.name, [target], seed, workdir, config_overrides=overrides, data_root=root, source=target,
        spec_target=target, num_threads=threads, context_class=OracleRunContext, prepare_data=False)


def source_only_run(family: DatasetFamily, seed: int, workdir: Path, root: Path, overrides: dict[str, Any],
                    threads: int | None) -> ScoredRun:
    """Train the registered source_only method once and score it on every target's held-out split."""
    return run_method_and_score_heldout(
        METHOD, family.name, list(family.default_targets), seed, workdir, config_overrides=overrides,
        data_root=root, num_threads=threads, prepare_data=False)


# --------------------------------------------------------------------------------------------------------------
# Chance baselines from the held-out label histogram
# --------------------------------------------------------------------------------------------------------------


def heldout_label_counts(family: DatasetFamily, root: Path, target: str) -> np.ndarray:
    """Labelled pixels (or images) per class in the target's held-out split (255 ignored)."""
    dataset = family.load(root, target, HELDOUT_SPLIT, with_labels=True)
    counts = np.zeros(family.num_classes, dtype=np.int64)
    for batch in DataLoader(dataset, batch_size=32, shuffle=False, num_workers=0):
        labels = batch["label"].reshape(-1).numpy()
        counts += np.bincount(labels[labels != IGNORE_INDEX], minlength=family.num_classes)[: family.num_classes]
    return counts


def heldout_chance_scores(family: DatasetFamily, root: Path, target: str) -> dict[str, float]:
    """Score (fraction) of two label-blind predictors on the held-out split, with the benchmark's own metric.

    ``majority``: every pixel/image predicted as the most frequent held-out class (confusion matrix: all counts in
    that column). ``uniform``: each prediction uniformly random over the classes (expected confusion matrix
    ``counts[i] / K`` in every column). Segmentation uses raysel.metrics.miou (classes absent from both label
    and prediction skipped); classification uses accuracy.
    """
    counts = heldout_label_counts(family, root, target).astype(np.float64)
    classes = family.num_classes
    majority = np.zeros((classes, classes))
    majority[:, int(counts.argmax())] = counts
    uniform = np.repeat(counts[:, None] / classes, classes, axis=1)
    if family.task == "segmentation":
        return {"majority": miou(majority), "uniform": miou(uniform)}
    return {"majority": float(counts.max() / counts.sum()), "uniform": 1.0 / classes}


# --------------------------------------------------------------------------------------------------------------
# Collecting results and writing the table
# --------------------------------------------------------------------------------------------------------------


@dataclass
class FamilyResult:
    """Everything measured for one family: per-target chance, source-only and oracle scores per seed, runs."""

    family: DatasetFamily
    chance: dict[str, dict[str, float]] = field(default_factory=dict)
    source_only: dict[int, dict[str, float]] = field(default_factory=dict)  # seed -> target -> score
    oracle: dict[int, dict[str, float]] = field(default_factory=dict)  # seed -> target -> score
    runs: list[tuple[str, str, int, ScoredRun]] = field(default_factory=list)  # (kind, trained on, seed, run)
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)  # domain -> split -> images
    folder: Path | None = None  # the prepared data folder
    data_identity: str = ""  # generator version and generation time when the benchmark started

    def target_verdict(self, target: str) -> dict[str, Any]:
        """Means over seeds (points), the gap, and whether both requirements hold for this target."""
        source = [100 * self.source_only[seed][target] for seed in sorted(self.source_only)]
        oracle = [100 * self.oracle[seed][target] for seed in sorted(self.oracle) if target in self.oracle[seed]]
        best_chance = 100 * max(self.chance[target].values())
        gap = float(np.mean(oracle) - np.mean(source)) if oracle else float("nan")
        return {
            "source": source, "oracle": oracle, "source_mean": float(np.mean(source)),
            "oracle_mean": float(np.mean(oracle)) if oracle else float("nan"), "gap": gap,
            "gap_ok": bool(gap >= REQUIRED_GAP_POINTS),
            "above_chance": bool(min(source) >= best_chance + CHANCE_MARGIN_POINTS),
            "best_chance": best_chance,
        }


def metric_name(family: DatasetFamily) -> str:
    return "mIoU" if family.task == "segmentation" else "accuracy"


def points(values: Sequence[float]) -> str:
    return " / ".join(f"{value:.1f}" for value in values)


def progress_line(family: DatasetFamily, kind: str, trained_on: str, seed: int, run: ScoredRun) -> str:
    """One row printed as soon as a run finishes."""
    scores = ", ".join(f"{target} {100 * score:.1f}" for target, score in run.scores.items())
    return (f"[{family.name}] {kind:<11} trained on {trained_on:<20} seed {seed}: held-out {metric_name(family)} "
            f"{scores}  (train {run.train_seconds:.0f} s, eval {run.eval_seconds:.1f} s)")


def family_table(result: FamilyResult, seeds: Sequence[int]) -> list[str]:
    """The markdown score table of one family."""
    family = result.family
    seed_text = " / ".join(f"seed {seed}" for seed in seeds)
    source = family.default_source
    sizes = result.sizes
    lines = [
        f"### {family.name} ({family.task}, held-out {metric_name(family)} in points)",
        "",
        f"Data: {result.data_identity}. Source `{source}` ({sizes[source]['train']} labelled train images); "
        "per target: "
        + ", ".join(f"`{target}` {sizes[target]['train']} train / {sizes[target][HELDOUT_SPLIT]} held-out"
                    for target in family.default_targets) + ".",
        "",
        f"| target | chance: majority class / uniform | source-only ({seed_text}) | source-only mean "
        f"| oracle ({seed_text}) | oracle mean | gap (oracle − source-only) | gap ≥ {REQUIRED_GAP_POINTS:.0f} "
        f"| source-only ≥ chance + {CHANCE_MARGIN_POINTS:.0f} |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|:-:|",
    ]
    for target in family.default_targets:
        verdict = result.target_verdict(target)
        chance = result.chance[target]
        lines.append(
            f"| {target} | {100 * chance['majority']:.1f} / {100 * chance['uniform']:.1f} "
            f"| {points(verdict['source'])} | **{verdict['source_mean']:.1f}** | {points(verdict['oracle'])} "
            f"| **{verdict['oracle_mean']:.1f}** | **{verdict['gap']:.1f}** | {'yes' if verdict['gap_ok'] else 'NO'} "
            f"| {'yes' if verdict['above_chance'] else 'NO'} |")
    return lines


def runtime_table(results: Sequence[FamilyResult]) -> list[str]:
    """Per-run training and evaluation time."""
    lines = ["| family | run | trained on | seed | train s | held-out eval s | total s |",
             "|---|---|---|---:|---:|---:|---:|"]
    for result in results:
        for kind, trained_on, seed, run in result.runs:
            lines.append(f"| {result.family.name} | {kind} | {trained_on} | {seed} | {run.train_seconds:.0f} "
                         f"| {run.eval_seconds:.1f} | {run.seconds:.0f} |")
    return lines


def report(results: Sequence[FamilyResult], args: argparse.Namespace, overrides: dict[str, Any],
           wall_seconds: float, load: tuple[float, float]) -> tuple[str, bool]:
    """The markdown body (tables, runtimes, verdict) and whether every requirement holds."""
    recipe = {**config_defaults(METHOD), **overrides}
    recipe_text = ", ".join(f"{key}={value}" for key, value in recipe.items())
    models = ", ".join(f"{r.family.name}: `{default_model_name(r.family.task)}`" for r in results)
    lines = [
        f"Source-only = the registered `{METHOD}` method at its defaults ({recipe_text}); oracle = the same "
        "network and training code trained on the target's labelled train split (`OracleRunContext`), one per "
        "target and seed. Source-only is trained once per seed and scored on every target. Chance: predicting "
        "the most frequent held-out class everywhere / uniformly random predictions (expected confusion matrix), "
        f"scored with the same metric. Default small models ({models}), native image sizes, "
        f"{args.parallel} run(s) at a time with {args.threads} torch thread(s) each, CPU load average {load[0]:.1f} before / {load[1]:.1f} after (shared machine).",
        "",
    ]
    all_ok = True
    for result in results:
        lines += family_table(result, args.seeds) + [""]
        all_ok &= all(result.target_verdict(t)["gap_ok"] and result.target_verdict(t)["above_chance"]
                      for t in result.family.default_targets)
    runs = [run for result in results for *_, run in result.runs]
    lines += [
        "### Runtime",
        "",
        *runtime_table(results),
        "",
        f"{len(runs)} runs, {sum(run.train_seconds for run in runs):.0f} s training "
        f"(mean {np.mean([run.train_seconds for run in runs]):.0f} s per run), "
        f"total wall time {wall_seconds / 60:.1f} min including data preparation and chance baselines.",
        "",
        f"**Requirements ({'met' if all_ok else 'NOT met'})**: source-only at least {REQUIRED_GAP_POINTS:.0f} points "
        f"below the oracle on every target (seed means), and every seed's source-only score at least "
        f"{CHANCE_MARGIN_POINTS:.0f} points above the better chance baseline.",
    ]
    return "\n".join(lines), all_ok


def split_sizes(family: DatasetFamily, root: Path) -> dict[str, dict[str, int]]:
    """Number of images per domain and split (image lists only; no labels opened)."""
    return {domain: {split: len(family.load(root, domain, split, with_labels=False))
                     for split in family.splits(domain)} for domain in family.domains}


@dataclass(frozen=True)
class Job:
    """One training run: ``kind`` "source-only" (scored on every target) or "oracle" (trained and scored on
    ``trained_on``)."""

    kind: str
    family: str
    trained_on: str
    seed: int
    data_root: str
    workdir: str
    threads: int
    overrides: tuple[tuple[str, Any], ...] = ()


def run_job(job: Job) -> tuple[Job, ScoredRun]:
    """Execute one job (in this process or a spawned worker)."""
    torch.set_num_threads(job.threads)
    family = data.get_family(job.family)
    workdir = Path(job.workdir) / f"{job.family}-{job.kind}-{job.trained_on}-{job.seed}"
    overrides = dict(job.overrides)
    if job.kind == "oracle":
        run = oracle_run(family, job.trained_on, job.seed, workdir, Path(job.data_root), overrides, job.threads)
    else:
        run = source_only_run(family, job.seed, workdir, Path(job.data_root), overrides, job.threads)
    return job, run


def family_jobs(family: DatasetFamily, args: argparse.Namespace, root: Path, overrides: dict[str, Any],
                workdir: Path) -> list[Job]:
    """Per seed: one source-only job, then one oracle job per target."""
    common = dict(family=family.name, data_root=str(root), workdir=str(workdir), threads=args.threads,
                  overrides=tuple(overrides.items()))
    jobs = []
    for seed in args.seeds:
        jobs.append(Job("source-only", trained_on=family.default_source, seed=seed, **common))
        jobs += [Job("oracle", trained_on=target, seed=seed, **common) for target in family.default_targets]
    return jobs


def execute(jobs: Sequence[Job], parallel: int) -> Iterator[tuple[Job, ScoredRun]]:
    """Yield finished jobs: in order in this process, or as they complete in ``parallel`` spawned workers."""
    return run_in_processes(run_job, jobs, parallel)


def run_benchmark(args: argparse.Namespace, overrides: dict[str, Any], workdir: Path) -> list[FamilyResult]:
    """Prepare data and chance baselines per family, run every job (printing as each finishes), collect results."""
    root = Path(args.data_root) if args.data_root else data.default_data_root()
    results: dict[str, FamilyResult] = {}
    jobs: list[Job] = []
    for name in args.families:
        family = data.get_family(name)
        folder = data.prepare(family, root)
        result = results[name] = FamilyResult(family=family, sizes=split_sizes(family, root), folder=folder,
                                              data_identity=data_identity(folder))
        print(f"[{family.name}] data: {result.data_identity}", flush=True)
        for target in family.default_targets:
            result.chance[target] = heldout_chance_scores(family, root, target)
            print(f"[{family.name}] chance on {target}: majority {100 * result.chance[target]['majority']:.1f}, "
                  f"uniform {100 * result.chance[target]['uniform']:.1f}", flush=True)
        jobs += family_jobs(family, args, root, overrides, workdir)
    for job, run in execute(jobs, args.parallel):
        result = results[job.family]
        if job.kind == "oracle":
            result.oracle.setdefault(job.seed, {})[job.trained_on] = run.scores[job.trained_on]
        else:
            result.source_only[job.seed] = run.scores
        result.runs.append((job.kind, job.trained_on, job.seed, run))
        print(progress_line(result.family, job.kind, job.trained_on, job.seed, run), flush=True)
    for result in results.values():  # runs in a stable order for the runtime table
        order = {job: index for index, job in enumerate(
            (kind, on, seed) for seed in args.seeds for kind, on in
            [("source-only", result.family.default_source)] + [("oracle", t) for t in result.family.default_targets])}
        result.runs.sort(key=lambda entry: order[entry[:3]])
        print("\n".join(family_table(result, args.seeds)) + "\n", flush=True)
    return list(results.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), help=f"subset of {', '.join(FAMILIES)}")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_ITERATIONS} iterations per model; prints only (no BENCHMARKS.md)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1: oversubscribed threads are several times slower on a "
                             "shared machine)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once, in spawned processes (default 1)")
    parser.add_argument("--data-root", default=None, help="data root (default: raysel's default data root)")
    parser.add_argument("--output", type=Path, default=BENCHMARKS_PATH, help="the BENCHMARKS.md to update")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {', '.join(unknown)}; valid: {', '.join(FAMILIES)}")
    if args.threads < 1 or args.parallel < 1:
        parser.error("--threads and --parallel must be >= 1")
    args.seeds = list(dict.fromkeys(args.seeds))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("domain_gap.py", argv)
    overrides = {"iterations": QUICK_ITERATIONS} if args.quick else {}
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raysel-domain-gap-") as directory:
        results = run_benchmark(args, overrides, Path(directory))
    body, all_ok = report(results, args, overrides, time.perf_counter() - started, (load_before, os.getloadavg()[0]))
    print("\n" + body, flush=True)
    changed = [r.family.name for r in results if data_identity(r.folder) != r.data_identity]
    if changed:
        print(f"error: the data of {', '.join(changed)} was regenerated during the benchmark; results mix two "
              "versions and are not written", file=sys.stderr)
        return 3
    if not (args.quick or args.no_write):
        write_section(SECTION, command, body, path=args.output)
        print(f"wrote the '## {SECTION}' section of {args.output}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
