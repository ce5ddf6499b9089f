"""Progress of a running sweep: one line per finished trial and a periodic status line (a Tune callback)."""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback

from raysel.store.schema import PRIMARY_HELDOUT_COLUMNS


class ProgressPrinter:
    """A Tune callback printing one line per finished trial and a status line at most every ``interval_s``."""

    def __init__(self, total: int | None, interval_s: float = 30.0) -> None:
        self.total = total
        self.interval_s = interval_s
        self.started = time.time()
        self.last_status = 0.0
        self.best: tuple[float, str] | None = None
        self.callback = _ProgressCallback(self)

    def _counts(self, trials: list, just_ended: Any = None) -> str:
        # Tune calls the completion hooks before it updates the trial's status: count that trial as done.
        states = ["TERMINATED" if t is just_ended else t.status for t in trials]
        done = sum(s in ("TERMINATED", "ERROR") for s in states)
        running = states.count("RUNNING")
        pending = states.count("PENDING")
        total = self.total if self.total else len(states)
        return f"{done}/{total} done, {running} running, {pending} pending"

    def status_line(self, trials: list) -> None:
        """Print elapsed time, trial counts and the best held-out score so far (oracle, never used to select)."""
        elapsed = time.time() - self.started
        best = f", best held-out mIoU so far {100 * self.best[0]:.1f} ({self.best[1]}; oracle, not used to select)" if self.best else ""
        print(f"[{elapsed:6.0f}s] trials {self._counts(trials)}{best}", flush=True)

    def trial_line(self, trial: Any, trials: list, outcome: str) -> None:
        """Print one finished or errored trial with its held-out score or error."""
        result = trial.last_result or {}
        score = next((result[key] for key in PRIMARY_HELDOUT_COLUMNS.values() if key in result), None)
        if isinstance(score, (int, float)) and math.isfinite(score) and (self.best is None or score > self.best[0]):
            self.best = (float(score), trial.trial_id)
        status = result.get("status", outcome)
        detail = f"held-out {100 * score:.1f}" if isinstance(score, (int, float)) and math.isfinite(score) else result.get("error", "")
        elapsed = time.time() - self.started
        # sys.stdout is looked up at print time: Tune pickles callbacks, and a stream object cannot be pickled.
        print(f"[{elapsed:6.0f}s] trial {trial.trial_id} {status}: {detail}  ({self._counts(trials, trial)})",
              flush=True)


class _ProgressCallback(Callback):
    """Tune's hooks forwarded to a :class:`ProgressPrinter`."""

    def __init__(self, printer: ProgressPrinter) -> None:
        self.printer = printer

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.time()
        if now - self.printer.last_status >= self.printer.interval_s:
            self.printer.last_status = now
            self.printer.status_line(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.printer.trial_line(trial, trials, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.printer.trial_line(trial, trials, "errored")
