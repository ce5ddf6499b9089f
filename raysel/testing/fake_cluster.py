"""A fake multi-node autoscaling Ray cluster on one machine, and a sampler of its node count over time.

A test harness shared by ``tests/test_autoscaling.py``, ``tests/ray_head.py`` and ``benchmarks/autoscaling.py``
(it lives in raysel because benchmarks, outside users of raysel, may not import ``tests``).
Ray's fake multi-node provider launches "nodes" as local raylets, so GPU scale-up from zero can be exercised on a
CPU-only machine: the worker node type advertises ``{"CPU": 1, "GPU": 1}`` that the machine does not have
(``../shared/reference/ray.md``, "Autoscaling on one machine"). ``ray.cluster_utils.AutoscalingCluster`` is not
usable as shipped (it reads a YAML file missing from the 2.60 wheel and stops every Ray on the host), so
:class:`FakeCluster` writes the config and owns the head itself:

* free ports outside Ray's worker port range (10002-19999), its own temp dir, token authentication on;
* ``ray start --head --block`` in its own session with ``RAY_FAKE_CLUSTER=1`` and autoscaler v1;
* stopping signals only that process group (SIGTERM, then SIGKILL), then SIGKILLs any leftover process whose
  command line or environment names this cluster's own temp dir (fake nodes' raylets and agents were seen outliving
  the group); never the CLI's stop command, which would hit every Ray instance on the machine.

The trials' nodes advertise GPUs without CUDA: the head's environment (inherited by the autoscaler, the fake nodes
and their workers) sets ``RAYSEL_FAKE_GPUS=1`` so raysel computes GPU-requesting trials on CPU there.

:class:`NodeSampler` runs ``python -m raysel.testing.fake_cluster sample ADDRESS`` (a separate token-carrying Ray
driver, so the calling process needs no Ray connection of its own) and records (time, alive worker nodes, busy
GPUs) every ``interval_s``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Self, Sequence

REPO = Path(__file__).resolve().parents[2]  # the checkout: working directory of the sweep CLI and the sampler
WORKER_TYPE = "gpu_worker"
HEAD_TYPE = "ray.head.default"
PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
              "--node-manager-port", "--object-manager-port")
EMPTY_LIST_KEYS = ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                   "setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                   "worker_start_ray_commands")
OBJECT_STORE_BYTES = 256 * 1024 * 1024

__all__ = [
    "REPO", "WORKER_TYPE", "HEAD_TYPE", "PORT_FLAGS", "OBJECT_STORE_BYTES", "StartedUntilExit", "free_ports",
    "node_ip_address", "autoscaling_config", "FakeCluster", "token_client_env", "dashboard_answers", "signal_group",
    "own_processes", "kill_leftovers", "Sample", "sample_once", "sampler_main", "NodeSampler", "SweepRun",
    "run_sweep_cli", "Timeline", "summarize",
]


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------


class StartedUntilExit:
    """A context manager over ``start()`` (which returns self) and ``stop()``: a failed start stops what it began."""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_ports(count: int, low: int = 20000, high: int = 60000) -> list[int]:
    """Distinct free TCP ports outside Ray's worker port range (10002-19999)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        if low <= port < high and port not in ports:
            ports.append(port)
    return ports


def node_ip_address() -> str:
    """This machine's node IP as the fake nodes compute theirs (not the IP of a Ray this process may have started)."""
    from ray._private.services import node_ip_address_from_perspective

    return node_ip_address_from_perspective()


def autoscaling_config(gcs_address: str, max_workers: int, idle_timeout_minutes: float,
                       worker_resources: dict[str, float] | None = None) -> dict[str, Any]:
    """The fake_multinode autoscaler config: a head that takes no workers and a GPU worker type scaling from 0."""
    resources = dict(worker_resources or {"CPU": 1, "GPU": 1})
    config: dict[str, Any] = {
        "cluster_name": "raysel-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "auth": {"ssh_user": "ubuntu"},
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "head_node_type": HEAD_TYPE,
        "available_node_types": {
            HEAD_TYPE: {"resources": {}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {"resources": {**resources, "object_store_memory": OBJECT_STORE_BYTES},
                          "node_config": {}, "min_workers": 0, "max_workers": max_workers},
        },
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }
    config.update({key: [] for key in EMPTY_LIST_KEYS})
    return config


# --------------------------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------------------------


class FakeCluster(StartedUntilExit):
    """A token-authenticated fake autoscaling cluster: CPU-only head, ``max_workers`` GPU nodes at most."""

    def __init__(self, max_workers: int = 2, idle_timeout_minutes: float = 0.2, head_cpus: int = 1,
                 extra_env: dict[str, str] | None = None) -> None:
        self.max_workers = max_workers
        self.idle_timeout_minutes = idle_timeout_minutes
        self.head_cpus = head_cpus
        self.extra_env = {"RAYSEL_FAKE_GPUS": "1", **(extra_env or {})}
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rfc-", dir="/tmp"))  # short: Ray's socket paths are limited
        self.token_path = self.temp_dir / "auth_token"
        self.token = secrets.token_hex(32)
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        self.ip = node_ip_address()
        self.process: subprocess.Popen | None = None
        self.log_path = self.temp_dir / "head.log"

    @property
    def gcs_address(self) -> str:
        """``ip:port`` of the head's GCS (what ``--address`` takes)."""
        return f"{self.ip}:{self.ports['--port']}"

    @property
    def dashboard_url(self) -> str:
        """The head's dashboard (job server) URL on localhost."""
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    @property
    def session_root(self) -> Path:
        """Ray's temp dir for this cluster (sessions and logs of the head and every fake node)."""
        return self.temp_dir / "t"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a token-carrying client of this cluster (ray.init, the sweep CLI)."""
        return token_client_env(self.token_path)

    def head_env(self) -> dict[str, str]:
        """The head's environment: fake provider, 1-s autoscaler loop, autoscaler v1, quick SIGTERM, raysel opt-in."""
        return {**self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                "RAY_enable_autoscaler_v2": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **self.extra_env}

    def head_command(self, config_path: Path) -> list[str]:
        """``ray start --head --block`` with every port fixed, no head GPU and a capped object store."""
        command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                   f"--autoscaling-config={config_path}", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
                   f"--temp-dir={self.session_root}", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
                   "--include-dashboard=true", f"--object-store-memory={OBJECT_STORE_BYTES}"]
        return command + [f"{flag}={port}" for flag, port in self.ports.items()]

    def start(self, timeout_s: float = 120.0) -> "FakeCluster":
        """Write token and config, start the head in its own session, wait until its dashboard answers."""
        self.token_path.write_text(self.token)
        config_path = self.temp_dir / "autoscaling.json"
        config = autoscaling_config(self.gcs_address, self.max_workers, self.idle_timeout_minutes)
        config_path.write_text(json.dumps(config, indent=2))
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.head_command(config_path), env=self.head_env(), stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake cluster head exited early:\n{self.head_log()}")
            if dashboard_answers(self.dashboard_url, self.token):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"fake cluster head not ready in {timeout_s:.0f} s:\n{self.head_log()}")

    def head_log(self, chars: int = 3000) -> str:
        """The end of the head's console output (for error messages)."""
        return self.log_path.read_text()[-chars:] if self.log_path.exists() else ""

    def autoscaler_log(self, chars: int = 4000) -> str:
        """The end of the autoscaler's log (monitor.log), for failure messages."""
        logs = sorted(self.session_root.glob("session_*/logs/monitor.log"))
        return logs[-1].read_text(errors="replace")[-chars:] if logs else ""

    def logs_containing(self, text: str) -> list[Path]:
        """Log files of this cluster's processes (head and fake nodes) that contain ``text``."""
        found = []
        for path in self.session_root.glob("session_*/logs/*"):
            if path.is_file() and text in path.read_text(errors="replace"):
                found.append(path)
        return found

    def stop(self) -> None:
        """Terminate the head's process group, then leftovers of this cluster; remove the temp dir."""
        if self.process is not None and self.process.poll() is None:
            signal_group(self.process, (signal.SIGTERM, signal.SIGKILL), wait_s=15)
        kill_leftovers(str(self.temp_dir))
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def token_client_env(token_path: Path) -> dict[str, str]:
    """This process's environment for a client of a token-authenticated head we own (ray CLI, job SDK, ray.init).

    The token comes from ``token_path`` only (an inherited ``RAY_AUTH_TOKEN`` or ``RAY_ADDRESS`` would point elsewhere),
    and this virtual environment's ``bin`` leads ``PATH``, because jobs run ``python ...`` through the head's PATH.
    """
    env = dict(os.environ)
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), "RAY_USAGE_STATS_ENABLED": "0",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    for key in ("RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        env.pop(key, None)
    return env


def dashboard_answers(dashboard_url: str, token: str) -> bool:
    """Whether a token-authenticated Ray head's dashboard answers (its readiness probe)."""
    request = urllib.request.Request(f"{dashboard_url}/api/version", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200 and bool(json.loads(response.read()))
    except Exception:
        return False


def signal_group(process: subprocess.Popen, signals: Sequence[int], wait_s: float) -> None:
    """Send each signal in turn to the process's group until the process exits."""
    for sig in signals:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def own_processes(marker: str) -> list[int]:
    """Ids of live processes whose command line or environment contains ``marker`` (this cluster's unique temp
    dir): Ray workers retitle themselves (``ray::IDLE``) and start their own process groups, but they inherit the
    head's environment, whose RAY_AUTH_TOKEN_PATH lies in that dir."""
    pids = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            found = any(needle in (entry / name).read_bytes() for name in ("cmdline", "environ"))
        except OSError:
            continue
        if found:
            pids.append(int(entry.name))
    return pids


def kill_leftovers(marker: str, timeout_s: float = 15.0) -> None:
    """SIGKILL this cluster's processes that outlived its process group (fake nodes' raylets and agents were seen
    surviving it), until none is left or ``timeout_s`` passed."""
    deadline = time.time() + timeout_s
    while (pids := own_processes(marker)) and time.time() < deadline:
        for pid in pids:
            _kill_pid(pid)
        time.sleep(0.5)


def _kill_pid(pid: int) -> None:
    """SIGKILL one process by id; gone already is fine."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------------------------
# Node count over time
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One observation: wall-clock time, alive worker (non-head) nodes, GPUs in use and GPUs in the cluster."""

    time: float
    workers: int
    gpus_busy: float
    gpus_total: float


def sample_once(ray: Any) -> Sample:
    """Count alive non-head nodes and busy GPUs from the connected driver's view of the GCS."""
    alive = [node for node in ray.nodes() if node.get("Alive")]
    workers = sum("node:__internal_head__" not in node.get("Resources", {}) for node in alive)
    total = float(ray.cluster_resources().get("GPU", 0.0))
    available = float(ray.available_resources().get("GPU", 0.0))
    return Sample(time.time(), workers, max(0.0, total - available), total)


def sampler_main(address: str, interval_s: float) -> None:
    """Print one JSON sample per line until killed (run as a separate driver by :class:`NodeSampler`)."""
    import ray

    ray.init(address=address, log_to_driver=False, configure_logging=False)
    while True:
        print(json.dumps(sample_once(ray).__dict__), flush=True)
        time.sleep(interval_s)


class NodeSampler(StartedUntilExit):
    """Record :class:`Sample` s of a cluster every ``interval_s`` from a separate sampler process."""

    def __init__(self, cluster: FakeCluster, interval_s: float = 0.5) -> None:
        self.cluster = cluster
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._errors = cluster.temp_dir / "sampler.log"

    def start(self, timeout_s: float = 120.0) -> "NodeSampler":
        """Start the sampler process and wait for its first sample."""
        command = [sys.executable, "-m", "raysel.testing.fake_cluster", "sample", self.cluster.gcs_address,
                   str(self.interval_s)]
        self._error_file = open(self._errors, "w")
        self.process = subprocess.Popen(command, env=self.cluster.env, stdout=subprocess.PIPE,
                                        stderr=self._error_file, text=True, cwd=REPO)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_until(lambda sample: True, timeout_s, what="a first node-count sample")
        return self

    def _read(self) -> None:
        """Collect the sampler's JSON lines into ``samples`` (a daemon thread)."""
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.samples.append(Sample(**json.loads(line)))
            except (ValueError, TypeError):
                continue

    def latest(self) -> Sample | None:
        """The newest sample, if any."""
        return self.samples[-1] if self.samples else None

    def wait_until(self, condition: Callable[[Sample], bool], timeout_s: float, what: str) -> Sample:
        """Block until a new sample satisfies ``condition``; raise TimeoutError naming ``what`` otherwise."""
        deadline = time.time() + timeout_s
        seen = 0
        while time.time() < deadline:
            fresh = self.samples[seen:]
            seen += len(fresh)
            for sample in fresh:
                if condition(sample):
                    return sample
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"node sampler exited: {self._errors.read_text()[-2000:]}")
            time.sleep(self.interval_s / 2)
        raise TimeoutError(f"no {what} within {timeout_s:.0f} s; last sample {self.latest()}")

    def stop(self) -> None:
        """Terminate the sampler process (ours, by id) and its reader thread."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if getattr(self, "_error_file", None):
            self._error_file.close()


# --------------------------------------------------------------------------------------------------------------
# One sweep on the cluster, and its timeline
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SweepRun:
    """A ``python -m raysel.sweep`` subprocess run against the cluster: exit code, wall-clock bounds, output."""

    returncode: int
    started: float
    ended: float
    output: str


def run_sweep_cli(cluster: FakeCluster, sweep_args: Sequence[str], log_path: Path, timeout_s: float) -> SweepRun:
    """Run the sweep CLI against the cluster with the token-carrying environment; capture its output."""
    command = [sys.executable, "-m", "raysel.sweep", *sweep_args, "--address", cluster.gcs_address]
    started = time.time()
    with open(log_path, "w") as log:
        completed = subprocess.run(command, env=cluster.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   timeout=timeout_s)
    return SweepRun(completed.returncode, started, time.time(), log_path.read_text())


@dataclass
class Timeline:
    """What the node count did, in seconds from the sweep's start (``None``: the event was not observed)."""

    first_scale_up_s: float | None
    peak_workers: int
    peak_reached_s: float | None
    peak_gpus_busy: float
    last_trial_end_s: float | None
    scale_down_s: float | None  # from the last trial's end to the first sample with 0 worker nodes
    rows: list[tuple[float, int, float]]  # (seconds, worker nodes, busy GPUs) whenever either changed


def summarize(samples: Sequence[Sample], sweep_started: float, last_trial_end: float | None) -> Timeline:
    """Reduce samples to first scale-up, peak, scale-down after the last trial, and a change-only timeline."""
    after = [s for s in samples if s.time >= sweep_started]
    first_up = next((s.time for s in after if s.workers > 0), None)
    peak = max((s.workers for s in after), default=0)
    peak_at = next((s.time for s in after if s.workers == peak), None) if peak else None
    down = None
    if last_trial_end is not None:
        down = next((s.time for s in after if s.time >= last_trial_end and s.workers == 0), None)
    rows: list[tuple[float, int, float]] = []
    for sample in samples:
        if not rows or (sample.workers, sample.gpus_busy) != rows[-1][1:]:
            rows.append((sample.time - sweep_started, sample.workers, sample.gpus_busy))

    def since(moment: float | None, origin: float = sweep_started) -> float | None:
        return None if moment is None else moment - origin

    return Timeline(since(first_up), peak, since(peak_at), max((s.gpus_busy for s in after), default=0.0),
                    since(last_trial_end), since(down, last_trial_end) if last_trial_end else None, rows)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "sample":
    sampler_main(sys.argv[2], float(sys.argv[3]))
