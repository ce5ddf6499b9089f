"""cluster.yaml checked offline: Ray's own autoscaler validation, GPU scale-from-zero, localhost dashboard, token auth, pins.

Ray's ``prepare_config`` fills in the AWS defaults and ``validate_config`` applies the autoscaler's JSON schema and
cross-field checks (../shared/reference/ray.md: validating the raw YAML fails on a missing ``cluster_synced_files``,
so prepare first). Neither contacts AWS, so no credentials or boto3 are needed.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER_FILE = REPO / "cluster.yaml"
PINNED_PACKAGES = ("torch", "torchvision", "ray")


@pytest.fixture(scope="module")
def raw_config() -> dict[str, Any]:
    """cluster.yaml as written (before Ray fills in defaults)."""
    return yaml.safe_load(CLUSTER_FILE.read_text())


@pytest.fixture(scope="module")
def prepared_config(raw_config: dict[str, Any]) -> dict[str, Any]:
    """cluster.yaml after Ray's own preparation, exactly what `ray up` validates."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(raw_config))


def gpu_node_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Node types that advertise at least one GPU."""
    return {name: node for name, node in config["available_node_types"].items()
            if node.get("resources", {}).get("GPU", 0) > 0}


def all_commands(config: dict[str, Any]) -> list[str]:
    """Every shell command the autoscaler runs on a node, in one list."""
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [command for key in keys for command in config.get(key) or []]


def pyproject_pins() -> dict[str, str]:
    """package name -> its exact `name[extras]==version` requirement in pyproject.toml, for the pinned packages."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins: dict[str, str] = {}
    for requirement in dependencies:
        name = re.split(r"[\[=<>~! ]", requirement, maxsplit=1)[0]
        if name in PINNED_PACKAGES:
            assert "==" in requirement, f"pyproject.toml should pin {name} exactly, got {requirement!r}"
            pins[name] = requirement
    assert set(pins) == set(PINNED_PACKAGES), pins
    return pins


def test_ray_validation_accepts_the_config(prepared_config: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared_config)
    assert prepared_config["provider"]["type"] == "aws"


def test_ray_validation_rejects_a_broken_copy(raw_config: dict[str, Any]) -> None:
    """The validation used above is live: the same config with a dangling head type or a bad field fails it."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    dangling_head = copy.deepcopy(raw_config)
    dangling_head["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(dangling_head))

    fractional_gpu = copy.deepcopy(raw_config)
    name = next(iter(gpu_node_types(raw_config)))
    fractional_gpu["available_node_types"][name]["resources"]["GPU"] = 0.5  # the schema wants integers
    with pytest.raises(Exception, match="is not of type 'integer'"):
        validate_config(prepare_config(fractional_gpu))


def test_gpu_workers_scale_from_zero(prepared_config: dict[str, Any]) -> None:
    gpu_types = gpu_node_types(prepared_config)
    assert gpu_types, "cluster.yaml should have at least one GPU worker node type"
    assert prepared_config["head_node_type"] not in gpu_types
    for name, node in gpu_types.items():
        assert node["min_workers"] == 0, f"{name}: GPU nodes must scale from zero"
        assert 1 <= node["max_workers"] <= prepared_config["max_workers"], name
        assert node["resources"]["CPU"] >= 1, name
    assert prepared_config["idle_timeout_minutes"] > 0


def test_head_has_no_gpu_and_takes_no_trials(prepared_config: dict[str, Any]) -> None:
    head = prepared_config["available_node_types"][prepared_config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU") == 0, "the head should not run trials (no CPU advertised)"


def test_dashboard_binds_to_localhost_only(raw_config: dict[str, Any]) -> None:
    # Every value Ray uses (comments excluded): no command or setting may open a listener on all interfaces.
    assert "0.0.0.0" not in yaml.safe_dump(raw_config)
    head_start = " ".join(raw_config["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head_start)
    assert hosts and set(hosts) <= {"127.0.0.1", "localhost"}, head_start


def test_token_authentication_is_on_everywhere(raw_config: dict[str, Any]) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        started = [command for command in raw_config[key] if "ray start" in command]
        assert started and all("RAY_AUTH_MODE=token" in command for command in started), key
    assert "RAY_AUTH_MODE=disabled" not in CLUSTER_FILE.read_text()
    # The token travels as a file from the user's machine: the config names a path, never a value.
    assert raw_config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]", CLUSTER_FILE.read_text())


def test_setup_installs_the_working_copy_with_the_pyproject_pins(raw_config: dict[str, Any]) -> None:
    remote_copy = next(remote for remote, local in raw_config["file_mounts"].items() if local == ".")
    setup = " ".join(raw_config["setup_commands"])
    assert f"pip install --no-cache-dir {remote_copy}" in setup
    for name, requirement in pyproject_pins().items():
        assert f'"{requirement}"' in setup, f"setup_commands should install {requirement} (as pyproject.toml pins it)"
    assert ".venv" in raw_config["rsync_exclude"], "the 6 GB virtual environment must not be synced to the nodes"


def test_docker_image_matches_the_ray_pin(raw_config: dict[str, Any]) -> None:
    ray_version = pyproject_pins()["ray"].split("==")[1]
    for key in ("head_image", "worker_image"):
        assert raw_config["docker"][key].startswith(f"rayproject/ray:{ray_version}-"), key
    assert raw_config["docker"]["worker_image"].endswith("-gpu")
