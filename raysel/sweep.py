"""`python -m raysel.sweep METHOD`: sweep a method's hyperparameters with Ray Tune and select without target labels.

Argument parsing only; the work happens in :mod:`raysel.sweeping` (and :mod:`raysel.execution`).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from raysel.errors import ConfigError, UserError, exits_cleanly_on_user_error
from raysel.methods.acceleration import acceleration_from_arguments, add_acceleration_arguments

EPILOG = """examples:
  python -m raysel.sweep hiast                                  # embedded benchmark, CPU, local Ray
  python -m raysel.sweep hiast --target day_city dusk_city --num-samples 2 --search random
  python -m raysel.sweep hiast --search optuna --num-samples 20 --scheduler asha
  python -m raysel.sweep hiast --data cityscapes --data-root /data --source gta5 --gpus-per-worker 0.5
  python -m raysel.sweep hiast --name my-sweep --resume        # continue a killed sweep
afterwards:
  python -m raysel.query "SELECT trial_id, hp_alpha, score_fmiou, heldout_miou FROM trials ORDER BY score_fmiou DESC"
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raysel.sweep",
        description="Sweep a UDA method's hyperparameters as Ray Tune trials, select the configuration to ship "
        "without target labels (fused-vote F-mIoU by default), and record every trial in the Parquet result store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("method", help="registered method name (e.g. hiast, source_only); an unknown name lists them")
    what = parser.add_argument_group("what to sweep")
    what.add_argument("--space", type=Path, help="search-space YAML (default: search_spaces/METHOD.yaml)")
    what.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="fix a hyperparameter to one value, overriding the space (repeatable), e.g. --set rounds=1")
    what.add_argument("--num-samples", type=int, default=1,
                      help="samples per grid point (grid/random) or total trials (optuna); default 1")
    what.add_argument("--search", choices=("grid", "random", "optuna"), default="grid",
                      help="grid: every grid point; random: sample the distributions; optuna: TPE guided by the "
                      "label-free target confidence (default: grid)")
    what.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo",
                      help="fifo runs every trial to the end; asha stops weak trials early on the label-free "
                      "target confidence (default: fifo)")
    what.add_argument("--objective", default="target_confidence",
                      help="label-free score Optuna maximises and ASHA compares: target_confidence (reported while "
                      "training) or a trial-scored selector: consistency, mixval (with asha computed at every report), "
                      "merge_quality (hdrq; fifo only) (default: target_confidence)")
    what.add_argument("--startup-trials", type=int, default=10,
                      help="optuna: random trials before TPE models the objective (default 10, Optuna's)")
    what.add_argument("--seed", type=int, default=0, help="seed for training, data order and the search (default 0)")
    data = parser.add_argument_group("data and model")
    data.add_argument("--data", default=None,
                      help="dataset family: the embedded street_scenes/digits benchmarks (default for the method's "
                      "task) or gta5, synthia, cityscapes, idd, office31, officehome with --data-root")
    data.add_argument("--data-root", type=Path, default=None,
                      help="folder holding the dataset (default: $RAYSEL_DATA_ROOT or ~/.cache/raysel/data; the "
                      "embedded benchmarks are generated there on first use)")
    data.add_argument("--source", default=None, help="source domain (default: the family's default source)")
    data.add_argument("--target", nargs="+", default=None,
                      help="one or more target domains; each target is swept and selected separately")
    data.add_argument("--model", default=None, help="network name (default: the small CPU model of the task)")
    data.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                      help="resize images to H W (default: the dataset's native size)")
    data.add_argument("--selection-size", type=int, default=500,
                      help="target training images in the label-free selection subset (default 500, or all)")
    _add_resource_arguments(parser.add_argument_group("resources (per trial)"))
    add_acceleration_arguments(parser)
    out = parser.add_argument_group("results")
    out.add_argument("--results", type=Path, default=Path("results"), help="result store folder (default ./results)")
    out.add_argument("--name", default=None, help="sweep id (default METHOD-YYYYmmdd-HHMMSS)")
    out.add_argument("--resume", action="store_true",
                     help="continue the sweep --name (default: the latest sweep of METHOD); finished trials are kept")
    out.add_argument("--selector", dest="selectors", action="append", default=None,
                     help="label-free selector(s) recorded after the sweep; the first decides (default: the method's, "
                          "fmiou; hdrq: merge_quality then fmiou)")
    out.add_argument("--progress-interval", type=float, default=30.0,
                     help="seconds between progress lines (default 30)")
    out.add_argument("--mlflow", metavar="URI", default=None,
                     help="also track the sweep in MLflow (off by default): one run per trial (hyperparameters, "
                     "metrics over time, label-free scores, held-out scores as oracle_*) under a parent run carrying "
                     "the selection decision; e.g. sqlite:///mlflow.db (no server) or http://HOST:5000")
    return parser


def _add_resource_arguments(res: argparse._ArgumentGroup) -> None:
    """The per-trial resource options (workers, CPUs, GPUs, executor, failures, cluster address)."""
    res.add_argument("--workers", type=int, default=1, help="data-parallel Ray Train workers per trial (default 1)")
    res.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default 1)")
    res.add_argument("--gpus-per-worker", type=float, default=0.0,
                     help="GPUs per worker; fractions share a GPU, e.g. 0.5 (default 0: CPU)")
    res.add_argument("--max-concurrent", type=int, default=None,
                     help="trials at once (default: as many as the local CPUs fit; on a cluster, Tune decides)")
    res.add_argument("--executor", choices=("auto", "train", "direct"), default="auto",
                     help="auto: one worker runs inside the Tune trial, several use a Ray Train TorchTrainer; "
                     "train: always TorchTrainer; direct: always in the trial (default auto)")
    res.add_argument("--max-failures", type=int, default=1,
                     help="retries of a failed trial (Tune) and of killed workers (Train) (default 1)")
    res.add_argument("--address", default=None,
                     help="Ray cluster to join (default: $RAY_ADDRESS, as set by `ray job submit`, else start a "
                     "local Ray)")


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported here, not at the top, for start-up time only: --help and argument errors answer without torch and Ray.
    from raysel import data as data_module
    from raysel import execution, sweeping
    from raysel.registry import get_method
    from raysel.search_space import load_search_space
    from raysel.summary import print_sweep_summary

    method = get_method(args.method)
    results = str(args.results)
    if args.resume:
        sweep_id = args.name or execution.latest_sweep_id(results, method.name)
        if sweep_id is None:
            raise UserError(f"--resume: no previous {method.name} sweep under {args.results / 'sweeps'}")
        settings, search, _ = execution.load_settings(results, sweep_id)
        space = load_search_space(Path(settings.space_path or method.search_space_path), method)
        space.apply_overrides(settings.overrides)
    else:
        family = data_module.get_family(args.data or _default_dataset(method))
        if family.task not in method.tasks:
            raise ConfigError(f"method {method.name} does not support {family.task} data ({family.name}); "
                              f"it supports {', '.join(method.tasks)}")
        space_path = args.space or method.search_space_path
        space = load_search_space(space_path, method)
        space.apply_overrides(args.overrides)
        targets = args.target or list(family.default_targets[:1])
        for domain in [args.source or family.default_source, *targets]:
            if domain not in family.domains:
                raise ConfigError(f"unknown domain {domain!r} for {family.name}; valid: {', '.join(family.domains)}")
        resources = execution.Resources(args.workers, args.cpus_per_worker, args.gpus_per_worker, args.executor)
        resources.validate()
        sweep_id = args.name or f"{method.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        if "__" in sweep_id or "/" in sweep_id or "\\" in sweep_id or sweep_id.startswith("."):
            raise ConfigError(f"--name {sweep_id!r}: a sweep id may not contain '__', '/' or '\\' or start with '.'")
        run = {"method": method.name, "dataset": family.name,
               "data_root": str(args.data_root) if args.data_root else None,
               "source": args.source or family.default_source, "model": args.model,
               "image_size": tuple(args.image_size) if args.image_size else None, "seed": args.seed,
               "selection_size": args.selection_size, "acceleration": acceleration_from_arguments(args)}
        settings = execution.SweepSettings(method=method.name, sweep_id=sweep_id, results=results, run=run,
                                        targets=targets, resources=resources, max_failures=args.max_failures,
                                        selectors=tuple(args.selectors or method.default_selectors),
                                        space_path=str(space_path), overrides=list(args.overrides))
        search = execution.SearchSettings(search=args.search, scheduler=args.scheduler, num_samples=args.num_samples,
                                       max_concurrent=args.max_concurrent, seed=args.seed, objective=args.objective,
                                       startup_trials=args.startup_trials)
        if args.num_samples < 1:
            raise ConfigError(f"--num-samples must be at least 1, got {args.num_samples}")
    outcome = sweeping.run_sweep(settings, search, space, resume=args.resume, address=args.address,
                                 progress_interval_s=args.progress_interval, mlflow_uri=args.mlflow)
    print_sweep_summary(outcome)
    return 0 if outcome.decisions else 1


def _default_dataset(method) -> str:
    return "street_scenes" if "segmentation" in method.tasks else "digits"


if __name__ == "__main__":
    sys.exit(main())
