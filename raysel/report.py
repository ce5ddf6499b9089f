"""`python -m raysel.report SWEEP`: PNG plots, ``report.md`` and a self-contained ``report.html`` of a finished sweep.

Argument parsing only; what the report holds and how it is drawn is :mod:`raysel.reporting.sweep_report`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from raysel.conventions import RESULTS_ENV, default_results_root
from raysel.errors import exits_cleanly_on_user_error
from raysel.reporting.sweep_report import write_report
from raysel.store import ResultStore


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m raysel.report`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m raysel.report",
        description="Plot a finished sweep (selector scores against held-out scores, hyperparameters against the "
        "selection score, per-class held-out IoU of the selected and best candidate) and write a Markdown summary "
        "embedding the plots.",
        epilog="example:\n  python -m raysel.report hiast-20261123-120000 --output report/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", help="sweep id (see: python -m raysel.query \"SELECT DISTINCT sweep_id FROM trials\")")
    parser.add_argument("--results", type=Path, default=default_results_root(),
                        help=f"result store folder (default ${RESULTS_ENV}, else ./results)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for the PNGs and report.md (default <results>/reports/<sweep>)")
    parser.add_argument("--selector", default=None,
                        help="selector whose choice the plots follow (default: the sweep's headline decision, i.e. "
                        "the method's default selector)")
    return parser


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m raysel.report`` and ``raysel report``."""
    args = build_parser().parse_args(argv)
    path = write_report(ResultStore(args.results), args.sweep, args.output, args.selector)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text())
    print(f"wrote {path} with {len(images)} plot(s): {', '.join(images) or 'none'}")
    print(f"wrote {path.with_name('report.html')} (self-contained: plots embedded, opens offline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
