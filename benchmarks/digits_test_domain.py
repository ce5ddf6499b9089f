"""Can the new digits test target measure selection? Source-only accuracy on every digits target, per severity.

Issue 29 item 4: the digits test target ``stroke_digits`` sits at chance for source-only models (10-14 % with 10
classes), so its selection tables measure noise. ``warped_digits`` (:mod:`raysel.data.digits`) is a second held-back
test target, rendered at one of ``WARPED_SEVERITIES``. This benchmark decides which severity qualifies, and it uses
source-only accuracy alone, before any selector is scored on the target. A severity qualifies when the source-only
mean over seeds lies in [30, 70] %: far enough above chance that adaptation and selection can show, and far enough
below the ceiling that they have room.

For each seed, the registered ``source_only`` method is trained once at its defaults, in-process (``run_local``,
no Ray), on the source ``clean_digits``. It is then scored on the held-out split of every digits target: each
development target and ``stroke_digits`` once, and ``warped_digits`` once per severity. Each severity has its own
generated tree. The source and the other targets are byte-identical in every tree (their own random streams); the
benchmark checks this before it trains.

    python -m benchmarks.digits_test_domain                    # seeds 0 1 2, every severity; writes BENCHMARKS.md
    python -m benchmarks.digits_test_domain --severity 2 3     # only these severities
    python -m benchmarks.digits_test_domain --quick            # smoke run: tiny data, 3 iterations, prints only

Writes the ``## digits_test_domain`` section of BENCHMARKS.md unless ``--quick`` or ``--no-write``. Then set
``WARPED_SEVERITY`` in raysel/data/digits.py to a qualifying severity (the one closest to 50 % is named).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from benchmarks._common import (BENCHMARKS_PATH, command_line, config_defaults, data_identity, default_device,
                                heldout_score_key, run_in_processes, write_section)

from raysel import data
from raysel.data.digits import (DEVELOPMENT_TARGETS, SOURCE_DOMAIN, WARPED_SEVERITIES, WARPED_SEVERITY, DigitsConfig,
                                prepare_digits)
from raysel.execution import run_local
from raysel.heldout import heldout_scores
from raysel.methods.base import RunSpec

SECTION = "digits_test_domain"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("benchmarks/_common.py", "raysel/data/digits.py", "raysel/data/generation.py", "raysel/data/common.py",
            "raysel/methods/source_only.py", "raysel/methods/base.py", "raysel/methods/stages.py",
            "raysel/methods/training.py", "raysel/methods/optim.py", "raysel/methods/augment.py", "raysel/models",
            "raysel/heldout.py", "raysel/metrics.py", "raysel/execution/local.py", "raysel/execution/trial.py")
METHOD = "source_only"
NEW_TARGET = "warped_digits"
STROKE_TARGET = "stroke_digits"
QUALIFYING_RANGE = (30.0, 70.0)  # source-only held-out accuracy, points
QUICK_ITERATIONS = 3
CHANCE_POINTS = 10.0  # uniform guessing over 10 classes


@dataclass(frozen=True)
class SeedJob:
    """One source-only model: trained on the first tree, scored on every tree's targets."""

    seed: int
    roots: tuple[tuple[int, str], ...]  # (severity, data root) per severity, the first one trained on
    workdir: str
    threads: int
    overrides: tuple[tuple[str, Any], ...]


def domain_fingerprint(tree: Path, domain: str) -> str:
    """SHA-256 over a generated domain's file names and bytes (equal trees, equal images)."""
    digest = hashlib.sha256()
    for path in sorted((tree / domain).rglob("*.png")):
        digest.update(str(path.relative_to(tree)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def prepare_trees(severities: Sequence[int], workdir: Path, quick: bool) -> dict[int, Path]:
    """One generated digits tree per severity (tiny with ``quick``); ValueError when anything but warped_digits
    differs between them, since the one source-only model per seed is scored on all of them."""
    roots: dict[int, Path] = {}
    for severity in severities:
        base = DigitsConfig.small() if quick else DigitsConfig()
        root = workdir / f"severity_{severity}"
        prepare_digits(root, dataclasses.replace(base, warped_severity=severity))
        roots[severity] = root
    shared = [domain for domain in data.get_family("digits").domains if domain != NEW_TARGET]
    first = next(iter(roots.values()))
    reference = {domain: domain_fingerprint(first / "digits", domain) for domain in shared}
    for severity, root in roots.items():
        changed = [domain for domain in shared if domain_fingerprint(root / "digits", domain) != reference[domain]]
        if changed:
            raise ValueError(f"severity {severity} changed {', '.join(changed)}: only {NEW_TARGET} may differ")
    return roots


def run_seed(job: SeedJob) -> tuple[int, dict[str, float], float]:
    """Train source-only for one seed; (seed, held-out accuracy per target key, training seconds). Keys: each
    development target, ``stroke_digits`` and ``warped_digits@<severity>``."""
    torch.set_num_threads(job.threads)
    family = data.get_family("digits")
    (_, trained_root), *_ = job.roots
    workdir = Path(job.workdir) / f"seed_{job.seed}"
    spec = RunSpec(method=METHOD, dataset="digits", data_root=trained_root, target=DEVELOPMENT_TARGETS[0],
                   seed=job.seed, output_dir=str(workdir / "output"), cache_dir=str(workdir / "cache"),
                   num_threads=job.threads)
    device = default_device()
    started = time.perf_counter()
    run = run_local(METHOD, dict(job.overrides), spec, device=device, checkpoint_root=workdir / "checkpoints")
    if run.result is None:
        raise RuntimeError(f"source_only seed {job.seed} failed: {run.final.get('error')}")
    seconds = time.perf_counter() - started
    key = heldout_score_key(family.task)
    scores = {target: float(heldout_scores(run.result.model, family, trained_root, target, device)[key])
              for target in (*DEVELOPMENT_TARGETS, STROKE_TARGET)}
    for severity, root in job.roots:
        scores[f"{NEW_TARGET}@{severity}"] = float(heldout_scores(run.result.model, family, root, NEW_TARGET,
                                                                  device)[key])
    return job.seed, scores, seconds


def inside(points: float) -> bool:
    """Whether a source-only accuracy (points) lies in the qualifying range."""
    return QUALIFYING_RANGE[0] <= points <= QUALIFYING_RANGE[1]


def verdicts(scores: dict[int, dict[str, float]], severities: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Per severity: the seeds' accuracies (points), their mean, and whether the mean and every seed qualify."""
    seeds = sorted(scores)
    rows = {}
    for severity in severities:
        values = [100 * scores[seed][f"{NEW_TARGET}@{severity}"] for seed in seeds]
        mean = float(np.mean(values))
        rows[severity] = {"values": values, "mean": mean, "qualifies": inside(mean),
                          "every_seed": all(inside(value) for value in values)}
    return rows


def report(scores: dict[int, dict[str, float]], severities: Sequence[int], seconds: dict[int, float],
           identity: str, quick: bool) -> str:
    """The markdown body: one row per target (each severity of the new one), the verdict and the choice."""
    seeds = sorted(scores)
    low, high = QUALIFYING_RANGE
    seed_text = " / ".join(f"seed {seed}" for seed in seeds)
    lines = [f"Source-only = the registered `{METHOD}` method at its defaults "
             f"({', '.join(f'{k}={v}' for k, v in config_defaults(METHOD).items())})"
             + (f", shortened to {QUICK_ITERATIONS} iterations on tiny data (a smoke run: the numbers mean nothing)"
                if quick else "")
             + f", trained once per seed on `{SOURCE_DOMAIN}` and scored on every target's held-out split. Data: "
             f"{identity}; one tree per severity, identical except `{NEW_TARGET}`. Chance: {CHANCE_POINTS:.0f}. "
             f"A severity qualifies when its source-only mean lies in [{low:.0f}, {high:.0f}]. The decision uses "
             "source-only accuracy alone: no selector has been scored on the new target.", "",
             f"| target | role | source-only ({seed_text}) | mean | in [{low:.0f}, {high:.0f}] |",
             "|---|---|---:|---:|:-:|"]
    for target in (*DEVELOPMENT_TARGETS, STROKE_TARGET):
        values = [100 * scores[seed][target] for seed in seeds]
        role = "development" if target in DEVELOPMENT_TARGETS else "test"
        lines.append(f"| {target} | {role} | {' / '.join(f'{v:.1f}' for v in values)} | **{np.mean(values):.1f}** "
                     f"| {'yes' if inside(float(np.mean(values))) else 'no'} |")
    rows = verdicts(scores, severities)
    for severity, row in rows.items():
        current = " (generated now)" if severity == WARPED_SEVERITY else ""
        lines.append(f"| {NEW_TARGET}, severity {severity}{current} | test (candidate) "
                     f"| {' / '.join(f'{v:.1f}' for v in row['values'])} | **{row['mean']:.1f}** "
                     f"| {'yes' if row['qualifies'] else 'no'}{'' if row['every_seed'] else ' (not every seed)'} |")
    qualifying = [severity for severity, row in rows.items() if row["qualifies"]]
    lines.append("")
    if qualifying:
        best = min(qualifying, key=lambda severity: (abs(rows[severity]["mean"] - 50.0), severity))
        lines.append(f"**Qualifying severities: {', '.join(map(str, qualifying))}.** Closest to 50 %: severity "
                     f"{best} (source-only mean {rows[best]['mean']:.1f}); `WARPED_SEVERITY` is {WARPED_SEVERITY}"
                     + (" already." if best == WARPED_SEVERITY else f": set it to {best} in raysel/data/digits.py."))
    else:
        lines.append(f"**No severity qualifies**: none has a source-only mean in [{low:.0f}, {high:.0f}]; "
                     f"`{NEW_TARGET}` must not be used as a test target until one does.")
    lines += ["", f"Training time per seed: {', '.join(f'{seconds[s]:.0f} s' for s in seeds)} "
              f"(train, cache predictions and score the trained-for target)."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--severity", type=int, nargs="+", default=sorted(WARPED_SEVERITIES),
                        choices=sorted(WARPED_SEVERITIES), help="severities of warped_digits to score (default all)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: tiny data, {QUICK_ITERATIONS} iterations, prints only (no BENCHMARKS.md)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--parallel", type=int, default=1, help="seeds at once, in spawned processes (default 1)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the data trees and runs go (default: a temporary folder, removed afterwards)")
    parser.add_argument("--output", type=Path, default=BENCHMARKS_PATH, help="the BENCHMARKS.md to update")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.parallel < 1:
        parser.error("--threads and --parallel must be >= 1")
    args.seeds = list(dict.fromkeys(args.seeds or ([0] if args.quick else [0, 1, 2])))
    args.severity = list(dict.fromkeys(args.severity))
    return args


def run_benchmark(args: argparse.Namespace, workdir: Path) -> tuple[str, bool]:
    """Prepare the trees, train and score every seed (printing each), and return the body and whether the data
    stayed the same throughout."""
    roots = prepare_trees(args.severity, workdir / "data", args.quick)
    first = roots[args.severity[0]] / "digits"
    identity = data_identity(first)
    print(f"data: {identity}; trees: {', '.join(str(root) for root in roots.values())}", flush=True)
    overrides = (("iterations", QUICK_ITERATIONS),) if args.quick else ()
    jobs = [SeedJob(seed, tuple((severity, str(root)) for severity, root in roots.items()), str(workdir / "runs"),
                    args.threads, overrides) for seed in args.seeds]
    scores: dict[int, dict[str, float]] = {}
    seconds: dict[int, float] = {}
    for seed, seed_scores, took in run_in_processes(run_seed, jobs, args.parallel):
        scores[seed], seconds[seed] = seed_scores, took
        print(f"seed {seed}: " + ", ".join(f"{key} {100 * value:.1f}" for key, value in seed_scores.items())
              + f"  ({took:.0f} s)", flush=True)
    return report(scores, args.severity, seconds, identity, args.quick), data_identity(first) == identity


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.digits_test_domain``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("digits_test_domain.py", argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        body, unchanged = run_benchmark(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="raysel-digits-test-domain-") as directory:
            body, unchanged = run_benchmark(args, Path(directory))
    print("\n" + body, flush=True)
    if not unchanged:
        print("error: the data was regenerated during the benchmark; results are not written", file=sys.stderr)
        return 3
    if not (args.quick or args.no_write):
        write_section(SECTION, command, body, path=args.output)
        print(f"wrote the '## {SECTION}' section of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
