"""What raysel writes about sweeps for people to read: the end-of-sweep table and the report of a finished sweep.

* :mod:`raysel.reporting.summary` — the table printed when a sweep (or ``raysel select``) ends;
* :mod:`raysel.reporting.sweep_report` — the report ``raysel report`` writes: evaluation, plots, ``report.md``;
* :mod:`raysel.reporting.html` — the self-contained ``report.html`` next to it;
* :mod:`raysel.reporting.plots` — its PNG plots (matplotlib, Agg canvas);
* :mod:`raysel.reporting.formatting` — what the report, its plots and its HTML share.

Nothing here imports torch or Ray (``raysel select`` and ``raysel report`` stay light), and this package imports
none of its modules, so importing one of them loads only what it needs.
"""
