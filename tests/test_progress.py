"""raysel.progress: plain periodic lines outside a terminal, tqdm's live bar on one, heartbeats for unknown totals."""

from __future__ import annotations

import io
import time

from tqdm import tqdm

from raysel.progress import Heartbeat, heartbeat, progress, read_status_file


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (as sys.stderr does in an interactive shell)."""

    def isatty(self) -> bool:
        return True


def test_log_mode_writes_one_plain_line_per_update_with_interval_zero(tmp_path):
    stream = io.StringIO()
    status = tmp_path / "run" / "progress.txt"
    with progress(4, "source training", interval_s=0, stream=stream, status_file=status) as bar:
        for step in range(4):
            bar.set_postfix(loss=f"{1.0 / (step + 1):.3f}", refresh=False)
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split(" [")[0] for line in lines[:5]] == [f"source training: {n}/4" for n in range(5)]
    assert "loss=0.250" in lines[-1]
    assert read_status_file(status).startswith("source training: 4/4")


def test_log_mode_throttles_to_the_interval():
    stream = io.StringIO()
    with progress(1000, "images", interval_s=25, stream=stream) as bar:
        for _ in range(1000):
            bar.update(1)
    # the first line, the final one: a fast loop never floods a log
    assert len(stream.getvalue().splitlines()) <= 3


def test_interval_is_capped_at_thirty_seconds():
    bar = progress(3, "x", interval_s=600, stream=io.StringIO())
    assert bar.mininterval == 30.0
    bar.close()


def test_terminal_mode_is_a_live_tqdm_bar():
    stream = _Terminal()
    bar = progress(3, "warm-up", stream=stream)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "\r" in stream.getvalue() and "3/3" in stream.getvalue()


def test_unknown_total_counts_up():
    stream = io.StringIO()
    with progress(None, "images", interval_s=0, stream=stream, unit="img") as bar:
        bar.update(2)
    assert "images: 2/?" in stream.getvalue()


def test_heartbeat_beats_with_detail_and_elapsed_time_from_its_clock():
    now = [100.0]
    stream = io.StringIO()
    beat = Heartbeat("shared stages", 30.0, stream, detail=lambda: "source training: 3/10", clock=lambda: now[0])
    now[0] = 165.0
    line = beat.beat()
    assert line == "shared stages: still running, 01:05 elapsed, source training: 3/10"
    assert stream.getvalue().strip() == line


def test_heartbeat_context_prints_periodically_while_waiting():
    stream = io.StringIO()
    with heartbeat("waiting", interval_s=0.01, stream=stream) as beat:
        while beat.beats < 3:
            time.sleep(0.005)
    assert stream.getvalue().count("waiting: still running") >= 3


def test_status_file_missing_reads_as_none(tmp_path):
    assert read_status_file(tmp_path / "nothing.txt") is None
