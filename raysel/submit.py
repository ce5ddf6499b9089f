"""`python -m raysel.submit JOB.yaml`: submit a ready-made job definition from `jobs/` to a Ray cluster.

A job definition is YAML with ``entrypoint`` (the command) and ``runtime_env`` (working dir, excludes, env vars).
Token authentication stays on: the client sends the cluster token (``RAY_AUTH_MODE=token``, token from
``~/.ray/auth_token``, ``RAY_AUTH_TOKEN_PATH`` or ``RAY_AUTH_TOKEN``). Run it from the repository root so that
``working_dir: .`` uploads this checkout.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from raysel.errors import ConfigError, UserError, exits_cleanly_on_user_error

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def load_job(path: Path) -> dict[str, Any]:
    """Read and check a job definition; a missing file or key is a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"job definition {path} does not exist (see jobs/ for the ready-made ones)")
    try:
        job = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: malformed YAML ({getattr(error, 'problem', error)})") from None
    missing = [key for key in ("entrypoint", "runtime_env") if key not in job]
    if missing:
        raise ConfigError(f"{path}: missing key(s) {', '.join(missing)}; a job needs entrypoint and runtime_env")
    return job


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raysel.submit",
        description="Submit a job definition (jobs/*.yaml) to a Ray cluster's job server with token "
        "authentication, follow its logs, and exit with the job's outcome.",
        epilog="example:\n  RAY_AUTH_MODE=token python -m raysel.submit jobs/embedded_demo.yaml "
        "--address http://127.0.0.1:8265 -- --num-samples 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("job", type=Path, help="job definition YAML (entrypoint + runtime_env)")
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
                        help="job server URL (default $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265; reach a "
                        "cluster's through `ray dashboard cluster.yaml` or SSH port forwarding)")
    parser.add_argument("--no-wait", action="store_true", help="print the submission id and return at once")
    parser.add_argument("extra", nargs="*", help="arguments appended to the entrypoint (after --)")
    return parser


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    job = load_job(args.job)
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # must be set before Ray is imported
    from ray.job_submission import JobSubmissionClient  # lazy: only after the line above (and Ray is slow to import)

    entrypoint = " ".join([str(job["entrypoint"]).strip(), *map(shlex.quote, args.extra)])
    try:
        client = JobSubmissionClient(args.address)
        submission_id = client.submit_job(entrypoint=entrypoint, runtime_env=job["runtime_env"])
    except Exception as error:  # connection refused, 401 without a token, bad runtime_env
        raise UserError(f"could not submit {args.job} to {args.address}: {str(error).splitlines()[0]}") from None
    print(f"submitted {submission_id}: {entrypoint}", flush=True)
    if args.no_wait:
        return 0
    return follow(client, submission_id)


def follow(client: Any, submission_id: str, poll_s: float = 2.0) -> int:
    """Print the job's new log lines until it ends; 0 when it SUCCEEDED, 1 otherwise."""
    printed = 0
    while True:
        status = str(client.get_job_status(submission_id)).split(".")[-1]
        logs = client.get_job_logs(submission_id)
        if len(logs) > printed:
            sys.stdout.write(logs[printed:])
            sys.stdout.flush()
            printed = len(logs)
        if status in TERMINAL:
            print(f"job {submission_id} {status}")
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(poll_s)


if __name__ == "__main__":
    sys.exit(main())
