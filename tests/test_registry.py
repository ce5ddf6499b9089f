"""raysel.registry: the one task check of a method, and the source-stage settings every adapting method shares."""

from __future__ import annotations

import dataclasses

import pytest

from raysel.errors import ConfigError
from raysel.hyperparameters import config_from_dict, field_ranges
from raysel.methods import hdrq, stages
from raysel.methods.source_only import SourceOnlyConfig
from raysel.registry import get_method, method_names
from raysel.search_space import SearchSpace

SOURCE_FIELDS = {"source_learning_rate": "learning_rate", "source_iterations": "iterations"}
STARTS_FROM_SOURCE_STAGE = ("gsda", "hiast", "sfda", "t2sda")


def stage_defaults_and_ranges(names: dict[str, str]) -> tuple[dict[str, object], dict[str, object]]:
    """The defaults and ranges SourceStageSettings declares, under the names a method config uses."""
    defaults = {field.name: field.default for field in dataclasses.fields(stages.SourceStageSettings)}
    ranges = field_ranges(stages.SourceStageSettings)
    return ({name: defaults[stage] for name, stage in names.items()},
            {name: ranges[stage] for name, stage in names.items()})


def test_exactly_the_adapting_methods_declare_the_source_stage_and_all_through_one_base() -> None:
    declaring = sorted(name for name in method_names()
                       if "source_learning_rate" in get_method(name).hyperparameter_names())
    assert declaring == sorted(STARTS_FROM_SOURCE_STAGE)
    for name in STARTS_FROM_SOURCE_STAGE:
        assert issubclass(get_method(name).config_class, stages.SourceStageFields), name


@pytest.mark.parametrize("name", STARTS_FROM_SOURCE_STAGE)
def test_source_stage_fields_have_the_stage_defaults_and_ranges(name: str) -> None:
    config_class = get_method(name).config_class
    defaults, ranges = stage_defaults_and_ranges(SOURCE_FIELDS)
    assert {field: getattr(config_class(), field) for field in SOURCE_FIELDS} == defaults
    assert {field: field_ranges(config_class)[field] for field in SOURCE_FIELDS} == ranges
    assert config_class().source_settings() == stages.SourceStageSettings()  # one shared cached source model


@pytest.mark.parametrize("name", STARTS_FROM_SOURCE_STAGE)
@pytest.mark.parametrize("override, message", [
    ("source_learning_rate=-1", "source_learning_rate': value -1: float field must be > 0"),
    ("source_iterations=0", "source_iterations': value 0: int field must be >= 1"),
])
def test_set_refuses_an_out_of_range_source_stage_setting(name: str, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchSpace.empty(get_method(name)).apply_overrides([override])
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=key):
        config_from_dict(get_method(name).config_class, {key: float(value)})


def test_the_source_only_method_trains_the_same_stage_with_the_same_defaults_and_ranges() -> None:
    names = {"learning_rate": "learning_rate", "iterations": "iterations", "batch_size": "batch_size",
             "weight_decay": "weight_decay", "backbone_lr_ratio": "backbone_lr_ratio",
             "photometric_ops": "photometric_ops"}
    defaults, ranges = stage_defaults_and_ranges(names)
    assert {name: getattr(SourceOnlyConfig(), name) for name in names} == defaults
    assert {name: field_ranges(SourceOnlyConfig)[name] for name in names} == ranges
    assert SourceOnlyConfig().settings() == stages.SourceStageSettings()


def test_check_task_names_the_method_the_data_and_the_supported_tasks() -> None:
    get_method("hdrq").check_task("classification", "digits")  # both tasks: no error
    with pytest.raises(ConfigError) as error:
        get_method("gsda").check_task("segmentation", "street_scenes")
    assert str(error.value) == ("method gsda does not support segmentation data (street_scenes); "
                                "it supports classification")


def test_hdrq_checks_its_adaptation_method_through_the_registry() -> None:
    with pytest.raises(ConfigError) as error:
        hdrq.resolve_adaptation(hdrq.HdrqConfig(adaptation="hiast"), "classification")
    assert str(error.value) == ("adaptation method hiast does not support classification data; "
                                "it supports segmentation")
