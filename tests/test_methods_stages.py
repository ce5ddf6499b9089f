"""Shared stage settings (raysel.methods.stages): validation and per-task defaults."""

from __future__ import annotations

import pytest

from raysel.errors import ConfigError
from raysel.methods import stages


def test_stage_settings_validate() -> None:
    stages.SourceStageSettings().validate()
    stages.AdversarialWarmupSettings().validate()
    with pytest.raises(ConfigError, match="lambda_at"):
        stages.AdversarialWarmupSettings(lambda_at=-1).validate()
    with pytest.raises(ConfigError, match="source iterations"):
        stages.SourceStageSettings(iterations=0).validate()


def test_source_batch_size_defaults_per_task_and_never_exceed_the_data() -> None:
    settings = stages.SourceStageSettings()
    assert settings.batch_size_for("segmentation", 500) == 8
    assert settings.batch_size_for("classification", 360) == 32
    assert settings.batch_size_for("classification", 12) == 12  # tiny data: one batch of everything
    assert stages.SourceStageSettings(batch_size=64).batch_size_for("classification", 12) == 64  # explicit wins
