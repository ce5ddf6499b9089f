"""How much the Ray sweep costs over running the same HIAST configurations as plain in-process loops.

One run measures, on the same machine and data, with the shared warm-up/source stages already cached:

* plain: each configuration's per-worker loop (training, prediction cache, held-out scoring) called directly in
  this process, one after another, with one torch thread (what a trial gets with ``--cpus-per-worker 1``);
* sweep, one at a time: ``python -m raysel.sweep hiast`` on the same configurations with ``--max-concurrent 1``,
  including ``ray.init``, Tune scheduling, trial processes, store writes, selection and ``ray.shutdown``;
* sweep, default concurrency: the same sweep with as many concurrent trials as the CPUs fit (the default).

The ratio sweep/plain (one at a time) is the orchestration overhead; the default-concurrency ratio is what a user
sees. Single-worker trials run the loop inside the Tune trial (``--executor auto``) because Ray Train's worker-group
start-up would otherwise dominate small trials (see raysel/execution/__init__.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import command_line, write_section


def space_yaml(alphas: list[float], fixed: dict[str, object]) -> str:
    lines = [f"alpha: {{grid: [{', '.join(str(a) for a in alphas)}]}}"]
    lines += [f"{key}: {value}" for key, value in fixed.items()]
    return "\n".join(lines) + "\n"


def plain_loops(alphas: list[float], fixed: dict[str, object], data_root: Path, workdir: Path,
                selection_size: int) -> float:
    """Run every configuration's per-worker loop directly, sequentially, one thread; return wall seconds."""
    import torch

    from raysel.execution.trial import run_worker
    from raysel.methods.base import LocalSession

    torch.set_num_threads(1)
    started = time.perf_counter()
    for index, alpha in enumerate(alphas):
        run = {"method": "hiast", "dataset": "street_scenes", "data_root": str(data_root), "source": "game",
               "target": "day_city", "seed": 0, "selection_size": selection_size, "num_threads": 1,
               "output_dir": str(workdir / f"plain-{index}")}
        final = run_worker({"method": "hiast", "hyperparameters": {"alpha": alpha, **fixed}, "run": run},
                           LocalSession(checkpoint_root=str(workdir / f"plain-ckpt-{index}")))
        assert final["status"] == "finished", final
    return time.perf_counter() - started


def sweep(space: Path, data_root: Path, results: Path, name: str, max_concurrent: int | None,
          selection_size: int) -> float:
    from raysel.sweep import main

    args = ["hiast", "--space", str(space), "--data-root", str(data_root), "--results", str(results), "--name", name,
            "--selection-size", str(selection_size), "--progress-interval", "600"]
    if max_concurrent:
        args += ["--max-concurrent", str(max_concurrent)]
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    elapsed = time.perf_counter() - started
    assert code == 0, f"sweep {name} failed"
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=4, help="number of HIAST configurations (alpha values)")
    parser.add_argument("--iterations", type=int, default=60, help="self-training iterations per configuration")
    parser.add_argument("--selection-size", type=int, default=100)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true", help="print the table without touching BENCHMARKS.md")
    args = parser.parse_args(argv)

    from raysel import data

    data_root = args.data_root or data.default_data_root()
    data.prepare(data.get_family("street_scenes"), data_root)
    alphas = [round(0.2 + 0.6 * i / max(args.configs - 1, 1), 3) for i in range(args.configs)]
    fixed = {"rounds": 1, "iterations_per_round": args.iterations, "reports_per_round": 1}
    workdir = Path(tempfile.mkdtemp(prefix="raysel-overhead-"))
    space = workdir / "space.yaml"
    space.write_text(space_yaml(alphas, fixed))

    print("warming the shared stages (not timed) ...", flush=True)
    plain_loops(alphas[:1], fixed, data_root, workdir / "warm", args.selection_size)
    print("plain in-process loops ...", flush=True)
    plain_s = plain_loops(alphas, fixed, data_root, workdir, args.selection_size)
    print(f"  {plain_s:.1f} s\nsweep, one trial at a time ...", flush=True)
    sequential_s = sweep(space, data_root, workdir / "results", "overhead-sequential", 1, args.selection_size)
    print(f"  {sequential_s:.1f} s\nsweep, default concurrency ...", flush=True)
    concurrent_s = sweep(space, data_root, workdir / "results", "overhead-concurrent", None, args.selection_size)
    print(f"  {concurrent_s:.1f} s", flush=True)

    per_config = (sequential_s - plain_s) / args.configs
    body = "\n".join([
        f"{args.configs} HIAST configurations (alpha {alphas}), 1 round of {args.iterations} iterations each, "
        f"street_scenes game -> day_city, selection subset {args.selection_size}; shared warm-up/source stages cached "
        "before timing. Ratios are measured in this one run.",
        "",
        "| run | wall s | ratio to plain |",
        "|---|---|---|",
        f"| plain in-process loops, sequential, 1 thread | {plain_s:.1f} | 1.00 |",
        f"| `raysel.sweep`, `--max-concurrent 1` (orchestration overhead) | {sequential_s:.1f} | "
        f"{sequential_s / plain_s:.2f} |",
        f"| `raysel.sweep`, default concurrency (what users run) | {concurrent_s:.1f} | {concurrent_s / plain_s:.2f} |",
        "",
        f"Overhead per configuration when run one at a time: {per_config:.1f} s (Ray start-up, trial processes, "
        "store writes and selection, spread over the configurations). Single-worker trials run the training loop "
        "inside the Tune trial; Ray Train's worker-group start-up (10-30 s per run here) is used only with "
        "`--workers > 1` or `--executor train`.",
    ])
    print(body)
    if not args.no_write:
        write_section("sweep_overhead", command_line("sweep_overhead.py", argv), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
