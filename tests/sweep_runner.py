"""Run ``python -m raysel.sweep ...`` in-process from a working directory, as a user types it, and keep its output."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path


def run_sweep_in(workdir: Path, argv: list[str]) -> tuple[int, str]:
    """``raysel.sweep.main(argv)`` run from ``workdir`` (so a relative ``--results`` lands there and trials run in
    another working directory); returns the exit code and everything it printed."""
    from raysel.sweep import main  # on call: it pulls in Ray and torch, and conftest imports this module early

    printed = io.StringIO()
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(printed):
            code = main(argv)
    finally:
        os.chdir(previous)
    return code, printed.getvalue()
