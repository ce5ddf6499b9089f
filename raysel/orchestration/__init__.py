"""Whole sweeps: connect to Ray, prepare the data and the method's shared stages, tune, compact, select.

:mod:`raysel.orchestration.pipeline` holds the steps; :func:`run_sweep` (what ``python -m raysel.sweep`` runs, and
what Python callers and benchmarks call) and its :class:`SweepOutcome` are re-exported here. Importing this package
imports torch and Ray: light commands (``raysel status``, ``query``, ``select``, ``report``) never import it.
"""

from raysel.orchestration.pipeline import SweepOutcome, run_sweep

__all__ = ["run_sweep", "SweepOutcome"]
