"""Benchmark: does HIAST beat source-only on the embedded street scenes, which parts matter, and how fast is it?

Runs in-process (LocalSession, no Ray), for every target domain and seed:

* ``source_only``: the source-only baseline (the cached source stage);
* ``warm_up``: the adversarial warm-up model G_0 (HIAST phase a, the cached warm-up stage);
* ``hiast``: full HIAST with the default hyperparameters (paper values, iteration budget scaled);
* Table-7-style switch-off ablations: ``no_ias`` (constant threshold), ``no_ias_ema`` (beta = 0), ``no_hpla``,
  ``no_r_i``, ``no_r_c``, ``no_r_cst``.

Held-out target mIoU comes from :func:`raysel.heldout.heldout_scores` (evaluation code; methods never see it).
Speed of the default HIAST runs: seconds per training iteration, images/s, and the share of wall time outside the
train loop (pseudo-label generation, label-free progress evaluation, data preparation, held-out evaluation).

    python -m benchmarks.hiast_gain                 # full benchmark (20-40 min on 2 busy cores), writes BENCHMARKS.md
    python -m benchmarks.hiast_gain --quick          # smoke run with tiny budgets (no BENCHMARKS.md unless --write)
    python -m benchmarks.hiast_gain --max-minutes 10 # in chunks: rerun the same command until exit status 0

**Chunks.** Every run (variant, target, seed) is a unit. Each finished unit is saved at once as JSON under the
workdir (``--workdir``, default ``results/hiast_gain`` under the repo root, git-ignored, kept with its stage cache)
and in ``benchmarks/results/hiast_gain.json`` (``--evidence``; commit it with the section), keyed by everything
that determines it (variant, target, seed, every resolved HIAST setting incl. the ablation's and --quick's, the
generated data's version). A rerun with the same arguments loads finished units instead of recomputing them, also
on a new machine from the committed file (the cached source model and warm-up a pending run starts from are then
rebuilt first, untimed, so its speed figures stay one configuration's). ``--max-minutes N`` starts no run after N
minutes (a started run finishes): the section is written from the finished runs under a ``**partial: k of n
runs**`` line (pending runs listed, their cells "-"), the run prints what is left and the command that continues
(the same one) and exits with status 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks._common import (BENCHMARKS_PATH, Deadline, UnitStore, UnitTask, add_chunk_arguments, command_line,
                                data_version, finish_chunked_run, pending_lines, prepare_benchmark_data,
                                resolve_chunk_arguments, run_unit_phases, unit_key, working_directory)

from raysel import data
from raysel.errors import ConfigError, exits_cleanly_on_user_error

SECTION = "hiast_gain"
FAMILY = "street_scenes"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("benchmarks/_common.py", "raysel/methods/hiast.py", "raysel/methods/source_only.py",
            "raysel/methods/base.py", "raysel/methods/stages.py", "raysel/methods/training.py",
            "raysel/methods/optim.py", "raysel/methods/augment.py", "raysel/methods/losses.py",
            "raysel/methods/networks.py", "raysel/methods/acceleration.py", "raysel/models",
            "raysel/data/street_scenes.py", "raysel/data/digits.py", "raysel/data/generation.py",
            "raysel/data/common.py", "raysel/data/family.py", "raysel/heldout.py", "raysel/metrics.py")
ABLATIONS: dict[str, dict[str, Any]] = {
    "hiast": {},
    "no_ias": {"selector": "constant"},
    "no_ias_ema": {"beta": 0.0},
    "no_hpla": {"use_hpla": False},
    "no_r_i": {"lambda_i": 0.0},
    "no_r_c": {"lambda_c": 0.0},
    "no_r_cst": {"lambda_cst": 0.0},
}
ORDER = ["source_only", "warm_up", *ABLATIONS]
QUICK = {"rounds": 1, "iterations_per_round": 4, "reports_per_round": 1, "warmup_iterations": 3,
         "source_iterations": 5}


@dataclasses.dataclass(frozen=True)
class Job:
    """One run: a variant on one target with one seed."""

    variant: str
    target: str
    seed: int
    data_root: str
    cache_dir: str
    threads: int
    overrides: tuple[tuple[str, Any], ...] = ()


def run_job(job: Job) -> dict[str, Any]:
    """Train (or fetch the cached stage of) one variant and score it on the held-out target split."""
    import torch

    torch.set_num_threads(job.threads)
    from raysel.heldout import heldout_scores
    from raysel.methods import hiast, source_only, stages
    from raysel.methods.base import LocalSession, RunContext, RunSpec

    started = time.perf_counter()
    overrides = dict(job.overrides)
    spec = RunSpec(method="hiast" if job.variant in ABLATIONS else job.variant, dataset=FAMILY,
                   data_root=job.data_root, target=job.target, seed=job.seed, cache_dir=job.cache_dir)
    session = LocalSession()
    ctx = RunContext(spec, session)
    defaults = hiast.HiastConfig(**overrides)
    info: dict[str, Any] = {}
    if job.variant == "source_only":
        config = source_only.SourceOnlyConfig(iterations=defaults.source_iterations,
                                              learning_rate=defaults.source_learning_rate)
        model = source_only.train_source_only(config, ctx).model
        info["stage_seconds"] = session.reports[-1].get("seconds_train_loop")
    elif job.variant == "warm_up":
        stage = stages.adversarial_warmup_stage(ctx, defaults.source_settings(), defaults.warmup_settings())
        model = ctx.build_model(pretrained=False)
        model.load_state_dict(stage["model"])
        info["stage_seconds"] = stage.get("seconds")
    else:
        config = dataclasses.replace(defaults, **ABLATIONS[job.variant])
        model = hiast.train_hiast(config, ctx).model
        last = session.reports[-1]
        iterations = config.rounds * config.iterations_per_round
        info.update(
            iterations=iterations, batch_size=config.batch_size,
            train_loop_seconds=last.get("seconds_train_loop", float("nan")),
            pseudo_label_seconds=last.get("seconds_pseudo_labels", 0.0),
            progress_eval_seconds=last.get("seconds_evaluation", 0.0),
            warmup_fetch_seconds=last.get("seconds_warmup", 0.0),
            pseudo_label_ratio=last.get("pseudo_label_ratio"), hard_classes=last.get("hard_classes"))
    train_seconds = time.perf_counter() - started
    evaluation_started = time.perf_counter()
    scores = heldout_scores(model, ctx)
    evaluation_seconds = time.perf_counter() - evaluation_started
    return {"variant": job.variant, "target": job.target, "seed": job.seed, "miou": float(scores["heldout_miou"]),
            "iou": [float(value) for value in scores["heldout_iou"]], "run_seconds": train_seconds,
            "heldout_eval_seconds": evaluation_seconds, "wall_seconds": time.perf_counter() - started, **info}


# --------------------------------------------------------------------------------------------------------------
# Phases and units: every run is one, saved when finished and never repeated
# --------------------------------------------------------------------------------------------------------------

# Printed as each phase starts; the second (source-only on the other targets) continues the first.
PHASE_TITLES = ("phase 1: source-only", None, "phase 2: adversarial warm-up", "phase 3: HIAST and ablations")


def phase_jobs(variants: Sequence[str], targets: Sequence[str], seeds: Sequence[int],
               make: Callable[[str, str, int], Job]) -> list[list[Job]]:
    """The runs in phases, so no two parallel runs build one cached stage: source-only on the first target (builds
    the source model of each seed, shared by the targets), then on the others; the warm-ups; HIAST and ablations."""
    def jobs(chosen: Sequence[str]) -> list[Job]:
        return [make(v, t, s) for v in chosen if v in variants for s in seeds for t in targets]

    source = jobs(["source_only"])
    return [[j for j in source if j.target == targets[0]], [j for j in source if j.target != targets[0]],
            jobs(["warm_up"]), jobs(list(ABLATIONS))]


def resolved_config(job: Job) -> dict[str, Any]:
    """Every HIAST setting of a run (defaults, --quick budgets, the ablation's switch): what source-only (its source
    settings), the warm-up and each HIAST variant are trained with."""
    from raysel.methods.hiast import HiastConfig

    config = HiastConfig(**dict(job.overrides))
    return dataclasses.asdict(dataclasses.replace(config, **ABLATIONS.get(job.variant, {})))


def job_fields(job: Job, data_key: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines a run's result (its unit key): variant, target, seed, the resolved settings and
    the generated data's version (threads, cache and workdir do not)."""
    return {"benchmark": SECTION, "variant": job.variant, "target": job.target, "seed": job.seed,
            "overrides": dict(job.overrides), "config": resolved_config(job), "data": data_key}


def job_name(job: Job) -> str:
    """How a pending run is listed."""
    return f"{job.variant} on {job.target} seed {job.seed}"


def plan_tasks(phases: Sequence[Sequence[Job]], keys: dict[Job, str], fields: dict[Job, dict[str, Any]],
               finished: set[str], store: UnitStore, deadline: Deadline) -> list[list[UnitTask]]:
    """The tasks left: every unfinished run, plus the source-only (first target) and warm-up runs finished on another
    machine (in the evidence, not this workdir) whose cached stage a pending run of the same seed (and target, for
    the warm-up) starts from: run again, not saved, so that the pending run finds its stages cached and times one
    configuration. A run finished in this workdir left its stages in the workdir's cache: loaded, not rerun."""
    pending = [j for phase in phases for j in phase if keys[j] not in finished]

    def rebuild(job: Job) -> bool:
        if store.ran_here(keys[job]):
            return False
        if job.variant == "source_only":
            return any(j.seed == job.seed for j in pending)
        return job.variant == "warm_up" and any(j.variant in ABLATIONS and (j.target, j.seed) == (job.target, job.seed)
                                                for j in pending)

    return [[UnitTask(run_job, j, keys[j], fields[j], store, deadline, save=keys[j] not in finished)
             for j in jobs if keys[j] not in finished or (index != 1 and rebuild(j))]
            for index, jobs in enumerate(phases)]  # phase 1 (source-only on the other targets) only loads the cache


def progress_line(task: UnitTask, result: dict[str, Any]) -> str:
    """One line printed as soon as a run finishes."""
    return (f"  {result['variant']:<12} {result['target']:<10} seed {result['seed']}: "
            f"mIoU {100 * result['miou']:.2f}  ({result['wall_seconds']:.0f} s)")


def signed(value: float) -> str:
    """A Δ cell: ``+1.23``, or "-" while a mean it needs is missing."""
    return "-" if np.isnan(value) else f"{value:+.2f}"


def summarise(results: list[dict[str, Any]], targets: list[str], seeds: list[int]) -> tuple[str, dict[str, Any]]:
    """Markdown tables: mIoU per variant and target (seed mean and per seed), the ablation deltas, and speed."""
    by_key = {(r["variant"], r["target"], r["seed"]): r for r in results}
    means: dict[tuple[str, str], float] = {}
    lines = ["| variant | " + " | ".join(f"{t} (mean; " + ", ".join(f"s{s}" for s in seeds) + ")" for t in targets)
             + " | mean over targets |", "|---" * (len(targets) + 2) + "|"]
    for variant in ORDER:
        cells, target_means = [], []
        for target in targets:
            values = [100 * by_key[(variant, target, s)]["miou"] for s in seeds if (variant, target, s) in by_key]
            if not values:
                cells.append("-")
                continue
            mean = float(np.mean(values))
            means[(variant, target)] = mean
            target_means.append(mean)
            cells.append(f"{mean:.2f} (" + ", ".join(f"{v:.2f}" for v in values) + ")")
        overall = f"{np.mean(target_means):.2f}" if len(target_means) == len(targets) else "-"
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {overall} |")
    checks = {t: means[("hiast", t)] > means[("source_only", t)]
              if ("hiast", t) in means and ("source_only", t) in means else None for t in targets}

    delta_lines = ["| switched off | " + " | ".join(f"Δ {t}" for t in targets) + " | Δ mean |",
                   "|---" * (len(targets) + 2) + "|"]
    for variant in list(ABLATIONS)[1:]:
        deltas = [means.get((variant, t), float("nan")) - means.get(("hiast", t), float("nan")) for t in targets]
        delta_lines.append(f"| {variant} | " + " | ".join(signed(d) for d in deltas)
                           + f" | {signed(np.mean(deltas))} |")

    speed = [r for r in results if r["variant"] == "hiast"]
    speed_text = ""
    if speed:
        per_iteration = [r["train_loop_seconds"] / r["iterations"] for r in speed]
        images_per_second = [r["iterations"] * r["batch_size"] / r["train_loop_seconds"] for r in speed]
        outside = [1.0 - r["train_loop_seconds"] / r["wall_seconds"] for r in speed]
        pseudo = [r["pseudo_label_seconds"] / r["wall_seconds"] for r in speed]
        heldout = [r["heldout_eval_seconds"] / r["wall_seconds"] for r in speed]
        progress = [r["progress_eval_seconds"] / r["wall_seconds"] for r in speed]
        wall = [r["wall_seconds"] for r in speed]
        speed_text = "\n".join([
            "| measure (default HIAST runs, warm-up cached) | mean | min | max |", "|---|---|---|---|",
            *(f"| {name} | {np.mean(v):{fmt}} | {np.min(v):{fmt}} | {np.max(v):{fmt}} |" for name, v, fmt in (
                ("seconds per training iteration", per_iteration, ".3f"),
                ("training images / s", images_per_second, ".1f"),
                ("wall time per run (s)", wall, ".1f"),
                ("share of wall time outside the train loop", outside, ".1%"),
                ("  of which pseudo-label generation", pseudo, ".1%"),
                ("  of which label-free progress evaluation", progress, ".1%"),
                ("  of which held-out evaluation", heldout, ".1%"),
            )),
        ])
    stages = [r for r in results if r["variant"] in ("source_only", "warm_up") and r.get("stage_seconds")]
    stage_text = "; ".join(f"{r['variant']} {r['target']} seed {r['seed']}: {r['stage_seconds']:.0f} s"
                           for r in sorted(stages, key=lambda r: (r["variant"], r["target"], r["seed"])))
    text = "\n".join(lines) + "\n\nAblation (switch-off, like Table 7; Δ = variant − full HIAST, seed means, mIoU points):\n\n" \
        + "\n".join(delta_lines) + "\n\nSpeed:\n\n" + speed_text \
        + ("\n\nShared stages (trained once, cached): " + stage_text if stage_text else "")
    return text, {"hiast_beats_source_only": checks, "means": means}


def body_text(results: list[dict[str, Any]], args: argparse.Namespace, targets: list[str], wall_seconds: float,
              pending: Sequence[str] = (), loaded: int = 0) -> str:
    """The section body from the finished runs (``results``); ``pending`` lists the unfinished ones (their cells
    read "-"), ``loaded`` counts those from earlier runs."""
    from raysel.methods.hiast import HiastConfig

    table, verdict = summarise(results, targets, args.seeds)
    defaults = HiastConfig(**dict(QUICK if args.quick else {}))
    total = f"Total wall time {wall_seconds / 60:.1f} min"
    if loaded:
        total += f" in this run; {loaded} finished run(s) loaded from earlier runs (their times as measured then)"
    lines = [
        f"{args.parallel} runs in parallel with {args.threads} torch thread(s) each. {total}.  ",
        f"Data: embedded street_scenes (source game -> {', '.join(targets)}), 96x192, held-out split; "
        f"seeds {args.seeds}. Model small_segnet.  ",
        f"HIAST defaults: alpha {defaults.alpha}, beta {defaults.beta}, gamma {defaults.gamma}, k {defaults.k}, "
        f"lambda_i {defaults.lambda_i}, lambda_c {defaults.lambda_c}, lambda_cst {defaults.lambda_cst}, "
        f"tau {defaults.tau}, lambda_at {defaults.lambda_at}; {defaults.rounds} rounds x "
        f"{defaults.iterations_per_round} iterations, batch {defaults.batch_size}, Adam lr {defaults.learning_rate}; "
        f"warm-up {defaults.warmup_iterations} iterations after {defaults.source_iterations} source iterations.",
        "",
    ]
    lines += pending_lines(pending, "run") + [
        "Held-out target mIoU (%, absent classes skipped):",
        "",
        table,
        "",
        "HIAST beats source-only (seed mean): " + ", ".join(f"{t}: {verdict_word(ok)}"
                                                            for t, ok in verdict["hiast_beats_source_only"].items()),
    ]
    return "\n".join(lines)


def verdict_word(beats: bool | None) -> str:
    """yes / NO, or "pending" while either mean is missing."""
    return "pending" if beats is None else ("yes" if beats else "NO")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="data root (default: raysel's default data root)")
    parser.add_argument("--targets", nargs="*", default=None, help="target domains (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--variants", nargs="*", default=ORDER, choices=ORDER)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (spawned processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    add_chunk_arguments(parser, SECTION, "run", "stage cache")
    parser.add_argument("--cache-dir", default=None, help="stage cache (default: <workdir>/stage_cache)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of the script")
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md even with --quick")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--output", type=Path, default=BENCHMARKS_PATH, help="the BENCHMARKS.md to update")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.parallel < 1:
        parser.error("--threads and --parallel must be >= 1")
    # A --quick run writes its section only with --write, and never into the committed evidence.
    resolve_chunk_arguments(parser, args, SECTION, writes=not (args.quick or args.no_write))
    args.seeds = list(dict.fromkeys(args.seeds))
    return args


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Run what is left of the benchmark, print the tables, write the BENCHMARKS.md section (partial while runs are
    pending: exit status 3)."""
    args = parse_args(argv)
    family = data.get_family(FAMILY)
    targets = args.targets or list(family.default_targets)
    for target in targets:
        if target not in family.default_targets:
            raise ConfigError(f"unknown target {target!r}; valid: {', '.join(family.default_targets)}")
    command = command_line("hiast_gain.py", argv)
    overrides = tuple(QUICK.items()) if args.quick else ()
    deadline = Deadline.after_minutes(args.max_minutes)
    started = time.perf_counter()
    with working_directory(args.workdir, "raysel-hiast-gain-") as directory:
        workdir = Path(directory)
        store = UnitStore(workdir / "units", args.evidence)
        root = prepare_benchmark_data([FAMILY], args.data_root)
        version = data_version(root / family.name)
        cache_dir = args.cache_dir or str(workdir / "stage_cache")
        phases = phase_jobs(args.variants, targets, args.seeds,
                            lambda v, t, s: Job(v, t, s, str(root), cache_dir, args.threads, overrides))
        jobs = [job for phase in phases for job in phase]
        fields = {job: job_fields(job, version) for job in jobs}
        keys = {job: unit_key(fields[job]) for job in jobs}
        done_before = store.load(list(keys.values()))
        print(f"{len(jobs)} run(s): {len(done_before)} finished earlier (loaded, not rerun), "
              f"{len(jobs) - len(done_before)} to run; workdir {workdir}", flush=True)
        ran = run_unit_phases(plan_tasks(phases, keys, fields, set(done_before), store, deadline), args.parallel,
                              progress_line, lambda index, tasks: PHASE_TITLES[index])
        finished = store.load(list(keys.values()))
    results = [finished[keys[job]] for job in jobs if keys[job] in finished]
    pending = [job_name(job) for job in jobs if keys[job] not in finished]
    body = body_text(results, args, targets, time.perf_counter() - started, pending, len(done_before))
    print("\n" + body)
    return finish_chunked_run(SECTION, command, body, done=len(finished), total=len(jobs), pending=pending, ran=ran,
                              loaded=len(done_before), store=store, what="runs",
                              output=args.output if (args.write or not args.quick) and not args.no_write else None)


if __name__ == "__main__":
    sys.exit(main())
