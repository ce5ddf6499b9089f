"""Shared fixtures: a real local Ray owned by the test session, and the embedded benchmark generated once.

Ray hygiene (../shared/reference/ray.md): explicit num_cpus, a capped object store, a temp dir the session owns,
and only ``ray.shutdown()`` of the instance started here — never the CLI command that stops every Ray on the host.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
REPO = Path(__file__).resolve().parent.parent

# Small convolutions on a shared 2-core machine ran up to 10x slower with torch's default 2 intra-op threads while
# Ray trials used the other core; tests use one thread (trials set their own from --cpus-per-worker).
import torch  # noqa: E402

torch.set_num_threads(1)

from raysel.data.digits import DigitsConfig, prepare_digits  # noqa: E402
from raysel.data.street_scenes import StreetScenesConfig, prepare_street_scenes  # noqa: E402
from tests.sweep_runner import run_sweep_in  # noqa: E402


# The sweeps' data: the default image sizes, few images (more than the tests' --selection-size 12 per target), so that
# generating it takes seconds instead of ~90 s and every trial loads and evaluates a few images instead of hundreds.
EMBEDDED_STREET_SCENES = StreetScenesConfig(source_train=24, target_train=16, target_heldout=8)
EMBEDDED_DIGITS = DigitsConfig(per_domain=60)


@pytest.fixture(scope="session")
def embedded_data_root() -> Path:
    """The embedded benchmarks generated once into a session folder, at the small sizes above (sweeps accept them)."""
    root = Path(tempfile.mkdtemp(prefix="raysel-data-"))
    prepare_street_scenes(root, EMBEDDED_STREET_SCENES)
    prepare_digits(root, EMBEDDED_DIGITS)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_roots(tmp_path_factory) -> dict[str, Path]:
    """The embedded families' small generated data (a few images per split), once per session."""
    street, digits = tmp_path_factory.mktemp("street"), tmp_path_factory.mktemp("digits")
    prepare_street_scenes(street, StreetScenesConfig.small())
    prepare_digits(digits, DigitsConfig.small())
    return {"street_scenes": street, "digits": digits}


@pytest.fixture(scope="session")
def ray_local():
    """A real in-process Ray instance with 2 CPUs, started and shut down by this test session only."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False,
             object_store_memory=512 * 1024 * 1024, _temp_dir=temp_dir)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


TINY_HIAST = ["--set", "rounds=1", "--set", "iterations_per_round=6", "--set", "warmup_iterations=6",
              "--set", "source_iterations=10", "--set", "reports_per_round=1", "--set", "lambda_i=1.0",
              "--set", "alpha={grid: [0.3, 0.5, 0.7]}", "--selection-size", "12", "--progress-interval", "5"]


@pytest.fixture(scope="session")
def tiny_hiast_sweep(ray_local, embedded_data_root: Path, tmp_path_factory) -> dict:
    """One real 3-trial HIAST sweep on local Ray, shared by the tests that inspect its results."""
    workdir = tmp_path_factory.mktemp("sweep")
    results = workdir / "results"
    code, printed = run_sweep_in(workdir, ["hiast", "--data-root", str(embedded_data_root), "--results", "results",
                                           "--name", "tiny", *TINY_HIAST])
    return {"code": code, "results": results, "printed": printed, "sweep_id": "tiny",
            "data_root": embedded_data_root}
