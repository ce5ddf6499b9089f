"""A real `ray start --head --block` owned by one test: free ports, own temp dir, token auth, own process group.

Stopping it signals only this process group (SIGTERM, then SIGKILL), never the CLI stop command, which would hit every Ray
instance on the machine (../shared/reference/ray.md).
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from raysel.testing.fake_cluster import PORT_FLAGS, dashboard_answers, free_ports, signal_group, token_client_env


class RayHead:
    """Start a token-authenticated head; ``env`` is what a client needs to talk to it."""

    def __init__(self, num_cpus: int = 2, extra_args: list[str] | None = None, extra_env: dict[str, str] | None = None):
        self.num_cpus = num_cpus
        self.extra_args = extra_args or []
        self.extra_env = extra_env or {}
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
        self.token_path = self.temp_dir / "auth_token"
        self.token = secrets.token_hex(32)
        self.process: subprocess.Popen | None = None
        ports = free_ports(len(PORT_FLAGS))
        self.ports = dict(zip(PORT_FLAGS, ports))

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports['--port']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a token-carrying client (ray CLI, job SDK, ray.init)."""
        return token_client_env(self.token_path)

    def start(self, timeout_s: float = 60.0) -> "RayHead":
        self.token_path.write_text(self.token)
        command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--num-cpus={self.num_cpus}",
                   "--num-gpus=0", f"--temp-dir={self.temp_dir / 't'}", "--dashboard-host=127.0.0.1",
                   "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--include-dashboard=true",
                   f"--object-store-memory={512 * 1024 * 1024}"]
        command += [f"{flag}={port}" for flag, port in self.ports.items()] + self.extra_args
        env = {**self.env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **self.extra_env}
        self.log = open(self.temp_dir / "head.log", "w")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray head exited early: {(self.temp_dir / 'head.log').read_text()[-3000:]}")
            if dashboard_answers(self.dashboard_url, self.token):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"ray head not ready in {timeout_s}s: {(self.temp_dir / 'head.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            signal_group(self.process, (signal.SIGTERM, signal.SIGKILL), wait_s=10)
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "RayHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
