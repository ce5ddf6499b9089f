"""The source-only baseline: config validation, registration, and training on both tasks (tiny data)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from raysel.errors import ConfigError
from raysel.hyperparameters import config_from_dict
from raysel.methods import source_only, stages
from raysel.methods.base import LocalSession, RunContext, RunSpec


def test_registered_for_both_tasks() -> None:
    from raysel.registry import get_method

    method = get_method("source_only")
    assert method.tasks == ("segmentation", "classification")
    assert method.config_class is source_only.SourceOnlyConfig


@pytest.mark.parametrize("changes, key", [
    ({"learning_rate": 0.0}, "learning_rate"), ({"iterations": 0}, "iterations"), ({"batch_size": 0}, "batch_size"),
    ({"optimizer": "lbfgs"}, "optimizer"), ({"schedule": "step"}, "schedule"),
])
def test_invalid_config(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        dataclasses.replace(source_only.SourceOnlyConfig(), **changes).validate()


def test_unknown_key_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid keys for SourceOnlyConfig: .*iterations.*learning_rate"):
        config_from_dict(source_only.SourceOnlyConfig, {"lr": 1.0})


def test_defaults_share_the_cached_stage_with_hiast() -> None:
    from raysel.methods.hiast import HiastConfig

    assert source_only.SourceOnlyConfig().settings() == HiastConfig().source_settings()


@pytest.fixture(scope="module")
def tiny_roots(tmp_path_factory: pytest.TempPathFactory):
    from raysel.data.digits import DigitsConfig, prepare_digits
    from raysel.data.street_scenes import StreetScenesConfig, prepare_street_scenes

    street, digits = tmp_path_factory.mktemp("street"), tmp_path_factory.mktemp("digits")
    prepare_street_scenes(street, StreetScenesConfig.small())
    prepare_digits(digits, DigitsConfig.small())
    return {"street_scenes": street, "digits": digits}


@pytest.mark.integration
@pytest.mark.parametrize("dataset, size", [("street_scenes", (32, 64)), ("digits", None)])
def test_trains_caches_and_restores(tiny_roots, tmp_path, monkeypatch, dataset: str, size) -> None:
    builds = []
    original = stages.train_on_source
    monkeypatch.setattr(stages, "train_on_source", lambda *a, **k: builds.append(1) or original(*a, **k))
    config = source_only.SourceOnlyConfig(iterations=3, batch_size=4)
    targets = {"street_scenes": ("day_city", "dusk_city"), "digits": None}[dataset]

    def context(session: LocalSession, target: str | None = None) -> RunContext:
        spec = RunSpec(method="source_only", dataset=dataset, data_root=str(tiny_roots[dataset]), target=target,
                       image_size=size, cache_dir=str(tmp_path / "cache"), seed=0)
        return RunContext(spec, session)

    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    ctx = context(session, targets[0] if targets else None)
    model = source_only.train_source_only(config, ctx).model
    assert len(session.reports) == 1 and session.reports[0]["epoch"] == 1
    assert math.isfinite(session.reports[0]["loss"]) and 0 < session.reports[0]["target_confidence"] <= 1
    images = ctx.target_dataset()[0]["image"][None]
    logits = model(images)
    assert logits.shape[:2] == (1, ctx.num_classes)
    # the stage does not depend on the target: another target reuses it without training
    other = context(LocalSession(), targets[1] if targets else None)
    source_only.train_source_only(config, other)
    assert len(builds) == 1
    # restoring from the checkpoint returns the same network without training
    restored = source_only.train_source_only(
        config, context(LocalSession(_last_checkpoint=session._last_checkpoint), targets[0] if targets else None)).model
    assert torch.allclose(restored(images), logits)
    assert len(builds) == 1


@pytest.mark.integration
def test_absurd_learning_rate_stops_with_non_finite_loss(tiny_roots, tmp_path) -> None:
    from raysel.methods.base import NonFiniteLossError

    spec = RunSpec(method="source_only", dataset="digits", data_root=str(tiny_roots["digits"]),
                   cache_dir=str(tmp_path / "cache"), seed=0)
    config = source_only.SourceOnlyConfig(learning_rate=1e30, iterations=30, batch_size=4, weight_decay=0.0)
    with pytest.raises(NonFiniteLossError, match="source stage iteration"):
        source_only.train_source_only(config, RunContext(spec, LocalSession()))
    assert not list((tmp_path / "cache").rglob("state.pt"))  # nothing cached for a failed stage
