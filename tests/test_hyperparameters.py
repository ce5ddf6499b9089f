"""The one hyperparameter schema (raysel.hyperparameters): types, Literal choices and declared ranges read from a
frozen config dataclass serve validation, coercion, the search-space checks and the store's column types."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

import pytest

from raysel.errors import ConfigError
from raysel.hyperparameters import (Range, bounded, check_fields, config_from_dict, field_ranges, field_types,
                                    value_problem)
from raysel.registry import get_method, method_names
from raysel.search_space import SearchSpace, load_search_space


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """A config using every kind of declaration."""

    alpha: float = bounded(0.5, gt=0.0, le=1.0)
    k: int = bounded(4, ge=1, help="hard classes")
    mode: Literal["fast", "slow"] = "fast"
    batch_size: int | None = bounded(None, ge=1)
    sizes: tuple[int, ...] = ()

    def validate(self) -> None:
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class ToyMethod:
    name: str = "toy"
    config_class: type = ToyConfig

    def hyperparameter_names(self) -> list[str]:
        return [field.name for field in dataclasses.fields(self.config_class)]


def test_ranges_say_which_bounds_are_inclusive() -> None:
    alpha = field_ranges(ToyConfig)["alpha"]
    assert (alpha.contains(1.0), alpha.contains(0.0), alpha.contains(math.nan)) == (True, False, False)
    assert alpha.describe() == "in (0, 1]" and Range(low=1).describe() == ">= 1" and Range(high=2.5).describe() == "<= 2.5"
    assert set(field_ranges(ToyConfig)) == {"alpha", "k", "batch_size"}
    with pytest.raises(ValueError):
        bounded(1, ge=0, gt=0)


def test_config_from_dict_coerces_validates_and_names_the_key() -> None:
    config = config_from_dict(ToyConfig, {"alpha": "1", "k": 3.0, "batch_size": "8", "sizes": [1, 2]})
    assert (config.alpha, config.k, config.batch_size, config.sizes) == (1.0, 3, 8, (1, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.k = 5  # type: ignore[misc]
    for values, message in [({"alpha": 0.0}, r"^alpha must be in \(0, 1\], got 0.0$"),
                            ({"k": 0}, r"^k \(hard classes\) must be >= 1, got 0$"),
                            ({"mode": "medium"}, r"^mode must be one of fast, slow, got 'medium'$"),
                            ({"batch_size": 0}, "batch_size must be >= 1"), ({"k": 2.5}, "'k' expects int"),
                            ({"kk": 1}, r"unknown hyperparameter\(s\) kk; valid keys for ToyConfig")]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(ToyConfig, values)


def test_value_problem_checks_type_then_literal_then_range() -> None:
    types = field_types(ToyConfig)
    assert value_problem(2, types["k"], field_ranges(ToyConfig)["k"]) is None
    assert value_problem("x", types["k"]) == "expects an integer"
    assert value_problem("slow", types["mode"]) is None and "expects one of" in value_problem("x", types["mode"])
    assert value_problem(1.5, types["alpha"], field_ranges(ToyConfig)["alpha"]) == "must be in (0, 1]"


@pytest.mark.parametrize("text, fragment", [
    ("alpha: {grid: [0.5, 1.5]}\n", r"line 1: hyperparameter 'alpha': grid value 1.5: float field must be in \(0, 1\]"),
    ("k: 0\n", r"line 1: hyperparameter 'k': value 0: int field must be >= 1"),
    ("alpha: 0.5\nmode: {choice: [fast, medium]}\n", r"line 2: hyperparameter 'mode': choice value 'medium'"),
])
def test_search_space_refuses_values_outside_the_schema(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_search_space(path, ToyMethod())
    assert SearchSpace.empty(ToyMethod()).set_entry("alpha", {"uniform": [0.1, 0.9]}, "--set").kind == "uniform"


@pytest.mark.parametrize("name", method_names())
def test_every_method_config_is_frozen_and_its_defaults_fit_its_schema(name: str) -> None:
    config_class = get_method(name).config_class
    assert config_class.__dataclass_params__.frozen
    config = config_class()
    check_fields(config)
    assert set(field_types(config_class)) == {field.name for field in dataclasses.fields(config_class)}
