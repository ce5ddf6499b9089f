"""`python -m raysel.select SWEEP`: re-score a finished sweep offline with label-free selectors.

Reads only the predictions each trial cached on the target training subset (no target label is read) and records
the decisions in the result store's ``selections`` table: every selector the cached outputs allow is scored and
recorded, the first applicable one of the decision order makes the headline decision (``--selector``, else the order
the sweep itself decided with: its own ``--selector`` options or the method's default selectors), and each
selector's pick is printed side by side. No model is re-run, except for finished candidates whose
predictions file is missing, and for every candidate with ``--repredict``: those predict again from their
checkpoints as Ray tasks, one per candidate with the trial's CPU/GPU request (:mod:`raysel.execution.repredict`).
Scoring cached predictions needs numpy only: without re-prediction this command imports neither torch nor Ray.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raysel.conventions import RESULTS_ENV, default_results_root
from raysel.errors import DataError, UserError, exits_cleanly_on_user_error
from raysel.reporting.summary import decision_lines, format_trials_table
from raysel.request import SweepRequest, load_request
from raysel.selection.applicability import uncached_candidates
from raysel.selection.decision import select_sweep
from raysel.selection.selectors import selector_names
from raysel.store import ResultStore
from raysel.store.compaction import compact_sweep


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by `raysel select`)."""
    parser = argparse.ArgumentParser(
        prog="python -m raysel.select",
        description="Re-score a finished sweep's candidates with label-free selectors (no target labels) and record "
        "each decision in the result store. Models run again only to replace missing prediction files, or for every "
        "candidate with --repredict.",
        epilog="examples:\n  python -m raysel.select hiast-20261123-120000 --selector fmiou --selector rank_mean\n"
        "  python -m raysel.select hiast-20261123-120000 --repredict   # predict every candidate again on Ray",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", help="sweep id (see: python -m raysel.query \"SELECT DISTINCT sweep_id FROM trials\")")
    parser.add_argument("--selector", dest="selectors", action="append", choices=selector_names(), default=None,
                        help="selector that decides (repeatable: the first applicable one decides; default: the "
                        "sweep's own decision order, i.e. its --selector options, else the method's default "
                        "selectors, e.g. fmiou, hdrq: merge_quality); every other applicable selector is recorded too")
    parser.add_argument("--results", type=Path, default=default_results_root(),
                        help=f"result store folder (default ${RESULTS_ENV}, else ./results)")
    parser.add_argument("--repredict", action="store_true",
                        help="recompute every finished candidate's predictions from its checkpoint first, as Ray tasks "
                        "(one per candidate, with the trial's CPUs and GPUs); without it only missing prediction "
                        "files are recomputed")
    parser.add_argument("--address", default=None,
                        help="Ray cluster for re-prediction (default: RAY_ADDRESS, else a local Ray for this command)")
    return parser


def saved_request(results: Path, sweep_id: str) -> SweepRequest | None:
    """The sweep's saved request (``sweeps/<SWEEP>/sweep.json``), or None when it is not kept or cannot be read.

    It says where the sweep recorded its files (so that a copied store finds its caches) and the order the sweep
    decided with, so that re-scoring never looks the method up in the registry: that imports its training code (torch).
    """
    try:
        return load_request(results, sweep_id)
    except UserError:  # no sweep.json (a store copied without its sweeps/ folder), or one raysel cannot read
        return None


def predict_again(store: ResultStore, sweep_id: str, *, only_missing: bool, address: str | None) -> None:
    """(Re)compute candidates' prediction caches from their checkpoints as Ray tasks (raysel.execution.repredict)."""
    # Imported on use, not at the top: Ray and torch take seconds to import and only re-prediction needs them, so
    # `raysel select` on cached predictions (the usual case) neither loads them nor starts Ray. Not a cycle: this
    # entry module sits above raysel.execution.
    from raysel.execution.repredict import repredict_sweep

    repredict_sweep(store, sweep_id, only_missing=only_missing, address=address)


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Re-predict what must be, re-score every applicable selector, record and print the decisions."""
    args = build_parser().parse_args(argv)
    store = ResultStore(args.results)
    request = saved_request(args.results, args.sweep)
    recorded_root = request.results if request is not None else None
    if args.repredict or uncached_candidates(store.load_sweep(args.sweep), store.root, recorded_root):
        predict_again(store, args.sweep, only_missing=not args.repredict, address=args.address)
    # The sweep's own decision order; None (no request) lets select_sweep take the method's default selectors.
    selectors = args.selectors or (request.selectors if request is not None else None)
    decisions = select_sweep(store, args.sweep, selectors=selectors, record_all=True)
    compact_sweep(store, args.sweep)  # the re-scored rows were written as per-trial files: merge them back
    if not decisions:
        raise DataError(f"no selector could score sweep {args.sweep!r} (the lines above say why)")
    print("\n" + format_trials_table(store.load_sweep(args.sweep), decisions) + "\n")
    for line in decision_lines(decisions):
        print(line)
    print(f"recorded {len(decisions)} decision(s) in {args.results}/selections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
