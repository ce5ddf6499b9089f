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
    python -m benchmarks.domain_gap --parallel 2 --max-minutes 10   # in chunks: rerun until exit status 0/1

**Chunks.** Every training run (source-only per family and seed, oracle per target and seed) is a unit. Each
finished unit is saved at once as JSON under the workdir (``--workdir``, default ``results/domain_gap`` under the
repo root, git-ignored) and in ``benchmarks/results/domain_gap.json`` (``--evidence``; commit it with the
section), keyed by everything that determines it (kind, family, training domain, scored targets, seed, the resolved
source_only settings incl. --quick's, the generated data's version). A rerun with the same arguments loads finished
units instead of recomputing them, also on a new machine from the committed file; the chance baselines are
recomputed (seconds). ``--max-minutes N`` starts no run after N minutes (a started run finishes): the section is
written from the finished runs under a ``**partial: k of n runs**`` line (pending runs listed, their cells "-"),
the run prints what is left and the command that continues (the same one).

Writes the ``## domain_gap`` section of BENCHMARKS.md (replacing an existing one) unless ``--quick`` or
``--no-write``. Every run starts from a fresh stage cache of its own (an interrupted attempt's folder is removed
first), so the runtimes are real training times. Exit status 1 when a requirement fails, 3 when stopped at the
deadline (partial), 4 when the data was regenerated during the run (nothing written), 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks._common import (BENCHMARKS_PATH, DATA_CHANGED_EXIT, Deadline, ScoredRun, UnitStore, UnitTask,
                                add_chunk_arguments, command_line, config_defaults, data_identity, data_version,
                                finish_chunked_run, pending_lines, resolve_chunk_arguments,
                                run_method_and_score_heldout, run_unit_phases, unit_key, working_directory)

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
        """Means over seeds (points), the gap, and whether both requirements hold for this target (None while the
        runs a requirement needs are pending)."""
        source = [100 * self.source_only[seed][target] for seed in sorted(self.source_only)]
        oracle = [100 * self.oracle[seed][target] for seed in sorted(self.oracle) if target in self.oracle[seed]]
        best_chance = 100 * max(self.chance[target].values())
        gap = float(np.mean(oracle) - np.mean(source)) if oracle and source else float("nan")
        return {
            "source": source, "oracle": oracle, "source_mean": float(np.mean(source)) if source else float("nan"),
            "oracle_mean": float(np.mean(oracle)) if oracle else float("nan"), "gap": gap,
            "gap_ok": bool(gap >= REQUIRED_GAP_POINTS) if oracle and source else None,
            "above_chance": bool(min(source) >= best_chance + CHANCE_MARGIN_POINTS) if source else None,
            "best_chance": best_chance,
        }


def metric_name(family: DatasetFamily) -> str:
    return "mIoU" if family.task == "segmentation" else "accuracy"


def points(values: Sequence[float]) -> str:
    return " / ".join(f"{value:.1f}" for value in values) or "-"


def bold(value: float) -> str:
    """A mean or gap cell in bold, "-" while pending."""
    return "-" if np.isnan(value) else f"**{value:.1f}**"


def yes_no(value: bool | None) -> str:
    """A requirement cell: yes / NO, "-" while pending."""
    return "-" if value is None else ("yes" if value else "NO")


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
            f"| {points(verdict['source'])} | {bold(verdict['source_mean'])} | {points(verdict['oracle'])} "
            f"| {bold(verdict['oracle_mean'])} | {bold(verdict['gap'])} | {yes_no(verdict['gap_ok'])} "
            f"| {yes_no(verdict['above_chance'])} |")
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
           wall_seconds: float, load: tuple[float, float], pending: Sequence[str] = (),
           loaded: int = 0) -> tuple[str, bool]:
    """The markdown body (tables, runtimes, verdict) and whether every requirement holds, from the finished runs;
    ``pending`` lists the unfinished ones (their cells read "-"), ``loaded`` counts those from earlier runs."""
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
    lines += pending_lines(pending, "run")
    all_ok = True
    for result in results:
        lines += family_table(result, args.seeds) + [""]
        all_ok &= all(result.target_verdict(t)["gap_ok"] and result.target_verdict(t)["above_chance"]
                      for t in result.family.default_targets)
    runs = [run for result in results for *_, run in result.runs]
    mean = f"{np.mean([run.train_seconds for run in runs]):.0f}" if runs else "-"
    loaded_text = (f" in this run; {loaded} finished run(s) loaded from earlier runs (their times as measured then)"
                   if loaded else "")
    state = "pending" if pending else ("met" if all_ok else "NOT met")
    lines += [
        "### Runtime",
        "",
        *runtime_table(results),
        "",
        f"{len(runs)} runs, {sum(run.train_seconds for run in runs):.0f} s training "
        f"(mean {mean} s per run), "
        f"total wall time {wall_seconds / 60:.1f} min including data preparation and chance baselines{loaded_text}.",
        "",
        f"**Requirements ({state})**: source-only at least {REQUIRED_GAP_POINTS:.0f} points "
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

    @property
    def run_dir(self) -> Path:
        """This run's own folder: output, checkpoints and a fresh stage cache (concurrent runs never share one)."""
        return Path(self.workdir) / "runs" / f"{self.family}-{self.kind}-{self.trained_on}-{self.seed}"

    def scored_targets(self) -> list[str]:
        """The targets the run is scored on: every one for source-only, its own for an oracle."""
        return list(data.get_family(self.family).default_targets) if self.kind == "source-only" else [self.trained_on]


def run_job(job: Job) -> dict[str, Any]:
    """Execute one job (in this process or a spawned worker); its unit result: held-out scores and seconds."""
    torch.set_num_threads(job.threads)
    family = data.get_family(job.family)
    shutil.rmtree(job.run_dir, ignore_errors=True)  # an interrupted attempt's stage cache would make the time unreal
    overrides = dict(job.overrides)
    if job.kind == "oracle":
        run = oracle_run(family, job.trained_on, job.seed, job.run_dir, Path(job.data_root), overrides, job.threads)
    else:
        run = source_only_run(family, job.seed, job.run_dir, Path(job.data_root), overrides, job.threads)
    return {"scores": run.scores, "train_seconds": run.train_seconds, "eval_seconds": run.eval_seconds}


def saved_run(job: Job, saved: dict[str, Any]) -> ScoredRun:
    """A saved unit back as the run the tables read (scores and seconds; no per-class details or reports)."""
    return ScoredRun(method=METHOD, dataset=job.family, seed=job.seed, scores=saved["scores"], details={},
                     train_seconds=saved["train_seconds"], eval_seconds=saved["eval_seconds"], reports=[])


def job_fields(job: Job, data_key: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines a run's result (its unit key): kind, family, training domain, scored targets,
    seed, the resolved source_only settings and the generated data's version (threads and workdir do not)."""
    return {"benchmark": SECTION, "kind": job.kind, "family": job.family, "trained_on": job.trained_on,
            "targets": job.scored_targets(), "seed": job.seed, "overrides": dict(job.overrides),
            "config": {**config_defaults(METHOD), **dict(job.overrides)}, "data": data_key}


def job_name(job: Job) -> str:
    """How a pending run is listed."""
    return f"{job.family} {job.kind} trained on {job.trained_on} seed {job.seed}"


def family_jobs(family: DatasetFamily, args: argparse.Namespace, root: Path, overrides: dict[str, Any],
                workdir: Path) -> list[Job]:
    """Per seed: one source-only job, then one oracle job per target (the runtime table's order)."""
    common = dict(family=family.name, data_root=str(root), workdir=str(workdir), threads=args.threads,
                  overrides=tuple(overrides.items()))
    jobs = []
    for seed in args.seeds:
        jobs.append(Job("source-only", trained_on=family.default_source, seed=seed, **common))
        jobs += [Job("oracle", trained_on=target, seed=seed, **common) for target in family.default_targets]
    return jobs


def prepare_family(name: str, root: Path) -> FamilyResult:
    """Prepare one family's data, count its splits and compute its chance baselines (printed)."""
    family = data.get_family(name)
    folder = data.prepare(family, root)
    result = FamilyResult(family=family, sizes=split_sizes(family, root), folder=folder,
                          data_identity=data_identity(folder))
    print(f"[{family.name}] data: {result.data_identity}", flush=True)
    for target in family.default_targets:
        result.chance[target] = heldout_chance_scores(family, root, target)
        print(f"[{family.name}] chance on {target}: majority {100 * result.chance[target]['majority']:.1f}, "
              f"uniform {100 * result.chance[target]['uniform']:.1f}", flush=True)
    return result


def collect(results: dict[str, FamilyResult], jobs: Sequence[Job], finished: dict[str, dict[str, Any]],
            keys: dict[Job, str]) -> None:
    """Put the finished runs' scores and times into their family results, in job order (the runtime table's)."""
    for job in (j for j in jobs if keys[j] in finished):
        result, run = results[job.family], saved_run(job, finished[keys[job]])
        if job.kind == "oracle":
            result.oracle.setdefault(job.seed, {})[job.trained_on] = run.scores[job.trained_on]
        else:
            result.source_only[job.seed] = run.scores
        result.runs.append((job.kind, job.trained_on, job.seed, run))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details,
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
    add_chunk_arguments(parser, SECTION, "run", "run folders")
    parser.add_argument("--output", type=Path, default=BENCHMARKS_PATH, help="the BENCHMARKS.md to update")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {', '.join(unknown)}; valid: {', '.join(FAMILIES)}")
    if args.threads < 1 or args.parallel < 1:
        parser.error("--threads and --parallel must be >= 1")
    resolve_chunk_arguments(parser, args, SECTION, writes=not (args.quick or args.no_write))
    args.seeds = list(dict.fromkeys(args.seeds))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run what is left of the benchmark, print the tables, write the BENCHMARKS.md section; 1 when a requirement
    fails, 3 when stopped at the --max-minutes deadline (partial section written), 4 when the data changed mid-run."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("domain_gap.py", argv)
    overrides = {"iterations": QUICK_ITERATIONS} if args.quick else {}
    deadline = Deadline.after_minutes(args.max_minutes)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with working_directory(args.workdir, "raysel-domain-gap-") as directory:
        workdir = Path(directory)
        store = UnitStore(workdir / "units", args.evidence)
        root = Path(args.data_root) if args.data_root else data.default_data_root()
        results = {name: prepare_family(name, root) for name in args.families}
        jobs = [job for result in results.values()
                for job in family_jobs(result.family, args, root, overrides, workdir)]
        fields = {job: job_fields(job, data_version(results[job.family].folder)) for job in jobs}
        keys = {job: unit_key(fields[job]) for job in jobs}
        done_before = store.load(list(keys.values()))
        print(f"{len(jobs)} run(s): {len(done_before)} finished earlier (loaded, not rerun), "
              f"{len(jobs) - len(done_before)} to run; workdir {workdir}", flush=True)
        tasks = [UnitTask(run_job, job, keys[job], fields[job], store, deadline) for job in jobs
                 if keys[job] not in done_before]
        ran = run_unit_phases([tasks], args.parallel, lambda task, saved: progress_line(
            results[task.job.family].family, task.job.kind, task.job.trained_on, task.job.seed,
            saved_run(task.job, saved)))
        finished = store.load(list(keys.values()))
    collect(results, jobs, finished, keys)
    for result in results.values():
        print("\n".join(family_table(result, args.seeds)) + "\n", flush=True)
    pending = [job_name(job) for job in jobs if keys[job] not in finished]
    body, all_ok = report(list(results.values()), args, overrides, time.perf_counter() - started,
                          (load_before, os.getloadavg()[0]), pending=pending, loaded=len(done_before))
    print("\n" + body, flush=True)
    changed = [r.family.name for r in results.values() if data_identity(r.folder) != r.data_identity]
    if changed:
        print(f"error: the data of {', '.join(changed)} was regenerated during the benchmark; results mix two "
              "versions and are not written", file=sys.stderr)
        return DATA_CHANGED_EXIT
    return finish_chunked_run(SECTION, command, body, done=len(finished), total=len(jobs), pending=pending, ran=ran,
                              loaded=len(done_before), store=store, what="runs",
                              output=None if args.quick or args.no_write else args.output,
                              complete_status=0 if all_ok else 1)


if __name__ == "__main__":
    sys.exit(main())
