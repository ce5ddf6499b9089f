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
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from raysel.errors import ConfigError, exits_cleanly_on_user_error

REPO = Path(__file__).resolve().parent.parent
from benchmarks._common import command_line, machine_description, replace_section

SECTION = "hiast_gain"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("raysel/methods/hiast.py", "raysel/methods/source_only.py", "raysel/methods/base.py",
            "raysel/methods/stages.py", "raysel/methods/training.py", "raysel/methods/optim.py",
            "raysel/methods/augment.py", "raysel/methods/losses.py", "raysel/methods/networks.py",
            "raysel/methods/acceleration.py", "raysel/models", "raysel/data/street_scenes.py",
            "raysel/data/digits.py", "raysel/data/generation.py", "raysel/data/common.py", "raysel/data/family.py",
            "raysel/heldout.py", "raysel/metrics.py")
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
    spec = RunSpec(method="hiast" if job.variant in ABLATIONS else job.variant, dataset="street_scenes",
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
    return {"variant": job.variant, "target": job.target, "seed": job.seed, "miou": scores["heldout_miou"],
            "iou": scores["heldout_iou"], "run_seconds": train_seconds, "heldout_eval_seconds": evaluation_seconds,
            "wall_seconds": time.perf_counter() - started, **info}


def run_phase(jobs: list[Job], parallel: int) -> list[dict[str, Any]]:
    """Run jobs in ``parallel`` spawned processes (one intra-op thread each by default); print as they finish."""
    results = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=parallel, mp_context=context) as pool:
        futures = {pool.submit(run_job, job): job for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            print(f"  {result['variant']:<12} {result['target']:<10} seed {result['seed']}: "
                  f"mIoU {100 * result['miou']:.2f}  ({result['wall_seconds']:.0f} s)", flush=True)
            results.append(result)
    return results


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
    checks = {t: means.get(("hiast", t), float("nan")) > means.get(("source_only", t), float("inf")) for t in targets}

    delta_lines = ["| switched off | " + " | ".join(f"Δ {t}" for t in targets) + " | Δ mean |",
                   "|---" * (len(targets) + 2) + "|"]
    for variant in list(ABLATIONS)[1:]:
        deltas = [means.get((variant, t), float("nan")) - means.get(("hiast", t), float("nan")) for t in targets]
        delta_lines.append(f"| {variant} | " + " | ".join(f"{d:+.2f}" for d in deltas)
                           + f" | {np.mean(deltas):+.2f} |")

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


def write_section(path: Path, body: str) -> None:
    """Replace (or append) the ``## hiast_gain`` section of BENCHMARKS.md (atomically, via benchmarks._common)."""
    replace_section(SECTION, f"## {SECTION}\n\n{body.strip()}\n", path=path)


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None, help="data root (default: raysel's default data root)")
    parser.add_argument("--targets", nargs="*", default=None, help="target domains (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--variants", nargs="*", default=ORDER, choices=ORDER)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (spawned processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    parser.add_argument("--cache-dir", default=None, help="stage cache (default: <data root>/_raysel_cache)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of the script")
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md even with --quick")
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    args = parser.parse_args(argv)

    from raysel import data

    family = data.get_family("street_scenes")
    root = Path(args.data_root) if args.data_root else data.default_data_root()
    data.prepare(family, root)
    targets = args.targets or list(family.default_targets)
    for target in targets:
        if target not in family.default_targets:
            raise ConfigError(f"unknown target {target!r}; valid: {', '.join(family.default_targets)}")
    cache_dir = args.cache_dir or str(root / "_raysel_cache")
    overrides = tuple(QUICK.items()) if args.quick else ()

    def jobs(variants: list[str]) -> list[Job]:
        return [Job(v, t, s, str(root), cache_dir, args.threads, overrides)
                for v in variants if v in args.variants for s in args.seeds for t in targets]

    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    # Phase 1: the source stage (per seed, shared by targets); phase 2: warm-ups; phase 3: HIAST and ablations.
    print("phase 1: source-only", flush=True)
    results += run_phase([j for j in jobs(["source_only"]) if j.target == targets[0]], args.parallel)
    results += run_phase([j for j in jobs(["source_only"]) if j.target != targets[0]], args.parallel)
    print("phase 2: adversarial warm-up", flush=True)
    results += run_phase(jobs(["warm_up"]), args.parallel)
    print("phase 3: HIAST and ablations", flush=True)
    results += run_phase(jobs(list(ABLATIONS)), args.parallel)
    total = time.perf_counter() - started

    table, verdict = summarise(results, targets, args.seeds)
    command = command_line("hiast_gain.py", argv or sys.argv[1:])
    from raysel.methods.hiast import HiastConfig

    defaults = HiastConfig(**dict(overrides))
    body = "\n".join([
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}  ",
        f"Machine: {machine_description()}; "
        f"{args.parallel} runs in parallel with {args.threads} torch thread(s) each; load average "
        f"{os.getloadavg()[0]:.1f} at the end. Total wall time {total / 60:.1f} min.  ",
        f"Data: embedded street_scenes (source game -> {', '.join(targets)}), 96x192, held-out split; "
        f"seeds {args.seeds}. Model small_segnet.  ",
        f"HIAST defaults: alpha {defaults.alpha}, beta {defaults.beta}, gamma {defaults.gamma}, k {defaults.k}, "
        f"lambda_i {defaults.lambda_i}, lambda_c {defaults.lambda_c}, lambda_cst {defaults.lambda_cst}, "
        f"tau {defaults.tau}, lambda_at {defaults.lambda_at}; {defaults.rounds} rounds x "
        f"{defaults.iterations_per_round} iterations, batch {defaults.batch_size}, Adam lr {defaults.learning_rate}; "
        f"warm-up {defaults.warmup_iterations} iterations after {defaults.source_iterations} source iterations.",
        "",
        "Held-out target mIoU (%, absent classes skipped):",
        "",
        table,
        "",
        "HIAST beats source-only (seed mean): " + ", ".join(f"{t}: {'yes' if ok else 'NO'}"
                                                            for t, ok in verdict["hiast_beats_source_only"].items()),
    ])
    print("\n" + body)
    if not args.quick or args.write:
        write_section(Path(args.output), body)
        print(f"\nwrote section '## {SECTION}' of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
