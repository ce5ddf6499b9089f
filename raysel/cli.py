"""The `raysel` console script: `raysel sweep|select|query|report|submit|status|study ...` runs
`python -m raysel.<command>`."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "sweep": "sweep a method's hyperparameters with Ray Tune and select without target labels",
    "select": "re-score a finished sweep offline with a label-free selector",
    "query": "run SQL over the Parquet result store",
    "report": "plot a finished sweep's selection into report.md and a self-contained report.html",
    "submit": "submit a job definition from jobs/ to a Ray cluster (token auth)",
    "status": "show a running or finished sweep or study: trials done/running/failed, best label-free score, time left",
    "study": "run many named sweeps from a YAML file as one resumable, time-boxed study (--max-minutes)",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
        print("usage: raysel COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines) +
              "\n\n`raysel COMMAND --help` explains each command's options.")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"raysel.{argv[0]}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
