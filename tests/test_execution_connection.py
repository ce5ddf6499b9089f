"""Connecting to Ray: the local instance's worker preload, and refusing an address nothing listens at."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from raysel.errors import UserError
from raysel.execution.connection import WORKER_PRELOAD_MODULES, _check_reachable, local_system_config


def test_local_system_config_lists_the_preload_modules():
    assert local_system_config(("raysel.execution.driver",)) == {
        "preload_python_modules": ["raysel.execution.driver"]}
    assert local_system_config(()) == {}


def test_the_trial_driver_is_preloaded_by_default():
    assert "raysel.execution.driver" in WORKER_PRELOAD_MODULES


def test_an_address_nothing_listens_at_is_refused_at_once():
    with socket.socket() as probe:  # a free port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError, match="no Ray reachable"):
        _check_reachable(f"127.0.0.1:{port}", timeout_s=1.0)
    with pytest.raises(UserError, match="HOST:PORT"):
        _check_reachable("no-port-here")


PROBE = textwrap.dedent("""
    import json, sys
    import ray
    from raysel.execution import connect

    started = connect(None, num_cpus=1, object_store_mb=100)

    @ray.remote(num_cpus=1)
    def modules_at_start():
        import sys
        return "raysel.execution.driver" in sys.modules, "torch" in sys.modules

    try:
        print(json.dumps({"started": started, "preloaded": ray.get(modules_at_start.remote())}))
    finally:
        ray.shutdown()
""")


@pytest.mark.integration
def test_a_local_instance_starts_workers_with_the_trial_driver_imported(tmp_path):
    """A real local Ray (in a child process that owns it): a task's worker has the trial driver imported before the
    task runs, so the first trial does not pay for torch's import after it is scheduled."""
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"started": True, "preloaded": [True, True]}
