"""Connecting to Ray: join a running cluster or start a local instance, fail fast when nothing listens."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import ray

from raysel.errors import UserError


def connect(address: str | None, *, dashboard: bool = False, num_cpus: int | None = None, num_gpus: int | None = None,
            object_store_mb: int = 1024, stream: Any = None) -> bool:
    """Join a running cluster (``--address`` or ``RAY_ADDRESS``, as set by ``ray job submit``) or start a local one.

    Args:
        address: the cluster's GCS address (``HOST:PORT`` or ``auto``); None: ``$RAY_ADDRESS``, else a local Ray.
        dashboard: start Ray's dashboard with a local Ray and print its URL. Off by default: on 2 cores it adds about
            1.5 s to every start and some CPU throughout, and raysel prints its own progress (``raysel status``
            shows a study from another terminal). A joined cluster keeps whatever dashboard it has.
        num_cpus: CPUs of a local Ray (default: the machine's).
        num_gpus: GPUs of a local Ray (default: those Ray detects).
        object_store_mb: a local Ray's object store size.
        stream: where the dashboard's URL is printed (default: stdout).

    Returns:
        True when this call started a local instance (so the caller shuts it down).

    Example:
        >>> started_here = connect(None)  # doctest: +SKIP
        >>> ray.shutdown() if started_here else None  # doctest: +SKIP
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # raysel prints its own progress; keep Tune's tables quiet
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise UserError(f"could not reach Ray at --address {address}: {one_line(error)}") from None
        return False
    context = ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard, log_to_driver=False,
                       configure_logging=False, object_store_memory=object_store_mb * 1024 * 1024)
    if dashboard:
        print(f"Ray dashboard: {dashboard_url(context.dashboard_url)} (sign in with Ray's token: "
              f"{os.environ.get('RAY_AUTH_TOKEN_PATH', '~/.ray/auth_token')})", file=stream or sys.stdout, flush=True)
    return True


def dashboard_url(address: str) -> str:
    """Ray's dashboard address as a URL (``ray.init`` gives ``HOST:PORT`` without a scheme)."""
    return address if "://" in address else f"http://{address}"


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast with one clear line when nothing listens at a ``host:port`` GCS address (ray.init would hang)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address must look like HOST:PORT (the Ray head's GCS address), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise UserError(f"no Ray reachable at --address {address}: {error.strerror or error}; start the cluster "
                        f"(`ray start --head`) or fix the address") from None


def cluster_cpus() -> float:
    """CPUs the connected Ray cluster has right now (1 when it reports none)."""
    return float(ray.cluster_resources().get("CPU", 1.0))


def one_line(error: BaseException) -> str:
    """An exception as one line of at most 2000 characters (for error columns and messages)."""
    text = f"{type(error).__name__}: {error}".strip().replace("\n", " ")
    return text[:2000]
