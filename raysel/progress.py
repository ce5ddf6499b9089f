"""Progress of long steps: a live tqdm bar on a terminal, a plain line every few seconds in a log (CI, `ray job logs`).

One library (tqdm) does the counting, rates and ETA. When the stream is not a terminal, tqdm's own ``mininterval``
throttles redraws and each redraw is written as one full line, so a log shows a line at most every ``interval_s``
seconds (default 15 s) whenever the loop advances. :func:`heartbeat` covers waits whose total is unknown (a remote
task, a lock) and prints even while nothing advances, so no step stays silent for more than 30 seconds.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from tqdm import tqdm

DEFAULT_INTERVAL_S = 15.0
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
PROGRESS_FILE = "progress.txt"  # a run directory's latest progress line (RunContext.progress_file)
MAX_SILENCE_S = 30.0  # the bound: interval_s is capped to it


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (a live bar) rather than a log file or pipe (plain lines)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class _LineStream:
    """A write-only stream for tqdm: outside a terminal each redraw (``\\r...``) becomes one plain line;
    ``passthrough`` keeps tqdm's live redraws (a terminal); ``status_file`` keeps the latest line on disk."""

    def __init__(self, stream: TextIO, status_file: Path | None = None, passthrough: bool = False) -> None:
        self.stream, self.status_file, self.passthrough = stream, status_file, passthrough

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        self.stream.write(text if self.passthrough else (line + "\n" if line else ""))
        if line and self.status_file is not None:
            with contextlib.suppress(OSError):  # best effort: progress display must never fail the run
                self.status_file.parent.mkdir(parents=True, exist_ok=True)
                temporary = self.status_file.with_name(self.status_file.name + ".tmp")
                temporary.write_text(line + "\n")
                os.replace(temporary, self.status_file)
        return len(text)

    def isatty(self) -> bool:
        return self.passthrough

    def flush(self) -> None:
        self.stream.flush()


def progress(total: int | None, desc: str, *, interval_s: float = DEFAULT_INTERVAL_S, stream: TextIO | None = None,
             unit: str = "it", terminal: bool | None = None, status_file: Path | str | None = None,
             **kwargs: Any) -> tqdm:
    """A tqdm counter for a loop of ``total`` steps: a live bar on a terminal, else a line every ``interval_s``.

    Update it with ``bar.update(1)`` and ``bar.set_postfix(loss=...)``; close it (or use it as a context manager)
    to print the final line. ``terminal`` overrides the TTY detection (tests). ``status_file``, when given, always
    holds the latest line, so a process that cannot see this one's output (the sweep driver waiting on a Ray task
    whose logs stay on its node) can show it in its :func:`heartbeat`.
    """
    stream = stream if stream is not None else sys.stderr
    live = is_terminal(stream) if terminal is None else terminal
    interval_s = min(max(0.0, interval_s), MAX_SILENCE_S)
    if live and status_file is None:
        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=True, **kwargs)
    target = _LineStream(stream, Path(status_file) if status_file else None, passthrough=live)
    return tqdm(total=total, desc=desc, unit=unit, file=target, mininterval=0.1 if live else interval_s,
                maxinterval=interval_s, miniters=1, ascii=not live, leave=True,
                **({"dynamic_ncols": True} if live else {"bar_format": LOG_FORMAT}), **kwargs)


class Heartbeat:
    """Prints ``desc: still running, <elapsed> elapsed[, detail]`` every ``interval_s`` until stopped (a thread)."""

    def __init__(self, desc: str, interval_s: float, stream: TextIO, detail: Callable[[], str | None] | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.interval_s, self.stream, self.detail, self.clock = desc, interval_s, stream, detail, clock
        self.started = clock()
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {desc}", daemon=True)

    def beat(self) -> str:
        """Print (and return) one heartbeat line now."""
        extra = self.detail() if self.detail else None
        elapsed = tqdm.format_interval(self.clock() - self.started)
        line = f"{self.desc}: still running, {elapsed} elapsed" + (f", {extra}" if extra else "")
        print(line, file=self.stream, flush=True)
        self.beats += 1
        return line

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@contextlib.contextmanager
def heartbeat(desc: str, *, interval_s: float = DEFAULT_INTERVAL_S, stream: TextIO | None = None,
              detail: Callable[[], str | None] | None = None) -> Iterator[Heartbeat]:
    """Within the block, print a line every ``interval_s`` (at most 30 s) for a step whose total is unknown.

    ``detail`` may return extra text for each line (e.g. the latest progress a remote task wrote to a file).
    """
    beat = Heartbeat(desc, min(max(0.01, interval_s), MAX_SILENCE_S), stream if stream is not None else sys.stderr,
                     detail).start()
    try:
        yield beat
    finally:
        beat.stop()


def read_status_file(path: Path | str) -> str | None:
    """The latest progress line a :func:`progress` counter kept in ``status_file``, or None when there is none yet."""
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None
