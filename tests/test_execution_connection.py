"""Connecting to Ray: an address that is not HOST:PORT is refused at once, before ray.init could hang on it (an
unreachable HOST:PORT is covered through the CLI in test_sweep.py); a local Ray has a dashboard only when asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raysel.errors import UserError
from raysel.execution.connection import _check_reachable


@pytest.mark.parametrize("address", ["no-port-here", "host:port", ":6379"])
def test_an_address_that_is_not_host_port_is_refused(address: str) -> None:
    with pytest.raises(UserError, match="HOST:PORT"):
        _check_reachable(address)


@pytest.mark.integration
def test_a_local_ray_has_a_dashboard_only_when_asked(tmp_path: Path) -> None:
    """In a fresh interpreter (this session's shared Ray would be joined instead), one local Ray after the other: with
    ``dashboard=True`` the URL printed answers (with Ray's token); the default local Ray prints none and serves nothing
    there."""
    script = """
import contextlib, io, os, re
from pathlib import Path
import ray
from raysel.execution.connection import connect
from raysel.testing.fake_cluster import dashboard_answers
token = os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")
url = ""
for asked in (True, False):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert connect(None, dashboard=asked, num_cpus=1, object_store_mb=128)
    try:
        found = re.search(r"Ray dashboard: (http://\\S+)", printed.getvalue())
        url = found.group(1) if found else url
        secret = os.environ.get("RAY_AUTH_TOKEN") or Path(token).expanduser().read_text().strip()
        print("printed" if found else "none printed", url, "answers" if dashboard_answers(url, secret) else "silent")
    finally:
        ray.shutdown()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    asked, default = done.stdout.splitlines()[-2:]
    found, url, answered = asked.split()
    assert (found, answered) == ("printed", "answers") and url.startswith("http://"), asked
    assert default.split() == ["none", "printed", url, "silent"]
