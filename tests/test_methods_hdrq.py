"""HDRQ as a method: config validation, the multi-target pipeline end to end on tiny data (segmentation and
classification), trial-scored merge-quality selection, and a real 2-trial ``python -m raysel.sweep hdrq``."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from raysel.errors import ConfigError
from raysel.hyperparameters import config_from_dict
from raysel.methods import hdrq
from raysel.methods.base import LocalSession, RunContext, RunSpec
from tests.sweep_runner import run_sweep_in

# Tiny HIAST / GSDA adaptations (sources of 3 iterations): enough to give two different specialists per target.
TINY_HIAST = ("source_iterations=3, warmup_iterations=2, rounds=1, iterations_per_round=2, reports_per_round=1, "
              "batch_size=2, pseudo_label_batch_size=2")
TINY_GSDA = "source_iterations=3, iterations=3, batch_size=8"


# ---------------------------------------------------------------------------------------------------- config


def test_bits_shorthand_sets_weight_and_activation_bits() -> None:
    config = hdrq.HdrqConfig(bits="W6A8")
    assert (config.weight_bits, config.activation_bits, config.bits) == (6, 8, "W6A8")
    default = hdrq.HdrqConfig()
    assert (default.weight_bits, default.activation_bits, default.bits) == (4, 4, "W4A4")
    explicit = config_from_dict(hdrq.HdrqConfig, {"bits": "W8A8", "weight_bits": 3})  # explicit bits win
    assert (explicit.weight_bits, explicit.activation_bits, explicit.bits) == (3, 8, "W3A8")
    # the resolved config round-trips (the store row is built from asdict)
    assert config_from_dict(hdrq.HdrqConfig, dataclasses.asdict(explicit)) == explicit


@pytest.mark.parametrize("values, fragment", [
    ({"bits": "W9A4"}, "weight_bits must be an integer between 2 and 8, got 9"),
    ({"bits": "W4A1"}, "activation_bits must be an integer between 2 and 8, got 1"),
    ({"weight_bits": 16}, "weight_bits must be an integer between 2 and 8"),
    ({"bits": "4/4"}, "bits must look like W4A4"),
    ({"ptq_method": "adaround"}, "ptq_method must be one of brecq, qdrop, hdrq, none"),
    ({"targets": ["day_city"]}, "at least two target domains"),
    ({"targets": ["day_city", "day_city"]}, "duplicates"),
    ({"lambda_distance": -0.1}, "lambda_distance must be >= 0"),
    ({"quantization_noise": "gaussian"}, "quantization_noise must be one of histogram, uniform, none"),
    ({"merge_samples": 0}, "merge_samples must be >= 1"),
    ({"reconstruction_iterations": 0}, "reconstruction_iterations must be >= 1"),
    ({"calibration_images": 0}, "calibration_images must be >= 1"),
    ({"barrier_points": 2}, "barrier_points must be 0 .* or >= 3"),
    ({"adaptation": "no_such_method"}, "unknown method 'no_such_method'; registered methods: .*hiast"),
    ({"adaptation": "hdrq"}, "single-target method"),
    ({"adaptation": "hiast", "adaptation_settings": "rounds=1, alpah=0.3"}, "alpah.*valid keys for HiastConfig"),
    ({"adaptation": "hiast", "adaptation_settings": "rounds=0"}, "rounds must be >= 1"),
    ({"adaptation_settings": "rounds"}, "expected key=value pairs"),
])
def test_invalid_config_is_one_clear_config_error(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        config_from_dict(hdrq.HdrqConfig, values)


def test_adaptation_settings_are_parsed_as_yaml_over_the_short_preset() -> None:
    assert hdrq.parse_settings(" rounds=1, learning_rate=1e-4 ,freeze_batchnorm=true,") == {
        "rounds": 1, "learning_rate": "1e-4", "freeze_batchnorm": True}  # YAML 1.1 reads 1e-4 as text ...
    method, config = hdrq.resolve_adaptation(hdrq.HdrqConfig(adaptation_settings="learning_rate=1e-4"),
                                             "segmentation")
    assert method.name == "hiast" and config.learning_rate == 1e-4  # ... which the config coerces to float
    assert config.rounds == 1 and config.reports_per_round == 1  # the short preset
    method, config = hdrq.resolve_adaptation(hdrq.HdrqConfig(), "classification")
    assert method.name == "gsda" and config.num_reports == 1
    with pytest.raises(ConfigError, match="does not support classification"):
        hdrq.resolve_adaptation(hdrq.HdrqConfig(adaptation="hiast"), "classification")


def test_merge_targets_need_two_targets_without_the_source_and_include_the_run_target() -> None:
    from raysel.data import get_family

    family = get_family("street_scenes")
    ctx = SimpleNamespace(family=family, source="game", target="dusk_city")
    assert hdrq.merge_targets(hdrq.HdrqConfig(), ctx) == ("day_city", "dusk_city")
    with pytest.raises(ConfigError, match="source domain 'game' cannot also be a target"):
        hdrq.merge_targets(hdrq.HdrqConfig(targets=("game", "dusk_city")), ctx)
    with pytest.raises(ConfigError, match="run's target 'dusk_city' is not among"):
        hdrq.merge_targets(hdrq.HdrqConfig(targets=("day_city", "game")), SimpleNamespace(
            family=family, source="other", target="dusk_city"))
    one_target = dataclasses.replace(family, default_targets=("day_city",))
    with pytest.raises(ConfigError, match="at least two target domains"):
        hdrq.merge_targets(hdrq.HdrqConfig(), SimpleNamespace(family=one_target, source="game", target="day_city"))


def test_registered_for_both_tasks_with_a_paired_bits_grid() -> None:
    from raysel.registry import get_method
    from raysel.search_space import load_search_space

    method = get_method("hdrq")
    assert method.tasks == ("segmentation", "classification") and method.config_class is hdrq.HdrqConfig
    space = load_search_space(method.search_space_path, method)
    assert space.entries["bits"].values == ("W8A8", "W6A6", "W4A8", "W4A4", "W3A3")
    assert set(space.entries["ptq_method"].values) == {"brecq", "qdrop", "hdrq"}
    assert space.entries["noise_sampling"].values == (True, False)
    assert space.entries["lambda_distance"].swept and space.num_grid_points() == 30
    fixed = space.fixed_values()
    assert fixed["reconstruction_iterations"] <= 100 and fixed["calibration_images"] <= 16
    for bits in space.entries["bits"].values:
        for lam in space.entries["lambda_distance"].values:
            config = config_from_dict(hdrq.HdrqConfig, {**fixed, "bits": bits, "lambda_distance": lam})
            assert f"W{config.weight_bits}A{config.activation_bits}" == bits


# ---------------------------------------------------------------------------------------------------- selection


def _trial(trial_id: str, merge_quality: float | None, heldout: float) -> dict:
    row = {"sweep_id": "sw", "trial_id": trial_id, "method": "hdrq", "task": "segmentation",
           "dataset": "street_scenes", "source": "game", "target": "day_city", "seed": 0, "status": "finished",
           "heldout_miou": heldout, "hyperparameters": {"bits": "W4A4"}}
    if merge_quality is not None:
        row["scores"] = {"merge_quality": merge_quality}
    return row


def test_merge_quality_decides_from_the_stored_trial_scores(tmp_path: Path) -> None:
    from raysel.selection.decision import select_sweep
    from raysel.selection.selectors import MergeQualitySelector
    from raysel.store import ResultStore

    store = ResultStore(tmp_path)
    for trial_id, quality, heldout in (("t0", 0.5, 0.30), ("t1", 0.9, 0.25), ("t2", 0.7, 0.40)):
        store.write_trial(_trial(trial_id, quality, heldout))
    printed = io.StringIO()
    decisions = select_sweep(store, "sw", "hdrq", selectors=("merge_quality",), stream=printed)
    assert [d["selector"] for d in decisions] == ["merge_quality"]
    decision = decisions[0]
    assert decision["selected_trial_id"] == "t1" and decision["score"] == pytest.approx(0.9)
    assert decision["heldout_regret"] == pytest.approx(15.0)  # best 0.40 - selected 0.25, in points
    stored = store.load(table="selections", sweep_id="sw")
    assert list(stored["selector"]) == ["merge_quality"] and list(stored["selected_trial_id"]) == ["t1"]
    trials = store.load_sweep("sw").sort_values("trial_id")
    assert MergeQualitySelector().score_trials(trials).tolist() == pytest.approx([0.5, 0.9, 0.7])


def test_merge_quality_without_trial_scores_is_skipped_with_a_clear_line(tmp_path: Path) -> None:
    from raysel.selection.decision import select_sweep
    from raysel.store import ResultStore

    store = ResultStore(tmp_path)
    for trial_id in ("t0", "t1"):
        store.write_trial(_trial(trial_id, None, 0.3))
    printed = io.StringIO()
    assert select_sweep(store, "sw", "hiast", selectors=("merge_quality",), stream=printed) == []
    assert "selector merge_quality skipped: no trial stored score_merge_quality" in printed.getvalue()


def test_hdrq_sweeps_select_with_merge_quality_first() -> None:
    from raysel.registry import get_method

    assert get_method("hdrq").default_selectors[0] == "merge_quality"
    assert get_method("hiast").default_selectors == ("fmiou",)


# ---------------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A few images per split of both embedded benchmarks (the data package's small configs)."""
    from raysel.data.digits import DigitsConfig, prepare_digits
    from raysel.data.street_scenes import StreetScenesConfig, prepare_street_scenes

    street, digits = tmp_path_factory.mktemp("street"), tmp_path_factory.mktemp("digits")
    prepare_street_scenes(street, StreetScenesConfig.small())
    prepare_digits(digits, DigitsConfig.small())
    return {"street_scenes": street, "digits": digits}


def run_context(root: Path, dataset: str, target: str, tmp_path: Path, session: LocalSession,
                image_size: tuple[int, int] | None) -> RunContext:
    spec = RunSpec(method="hdrq", dataset=dataset, data_root=str(root), target=target, image_size=image_size,
                   cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "out"), seed=0, selection_size=6)
    (tmp_path / "out").mkdir(exist_ok=True)  # run_worker creates it before finish_run
    return RunContext(spec, session)


@pytest.mark.integration
def test_segmentation_pipeline_caches_stages_restores_and_scores_every_target(tiny_roots, tmp_path,
                                                                               monkeypatch) -> None:
    from raysel.execution.trial import finish_run
    from raysel.quant import QuantizedModel
    from raysel.registry import get_method

    trains, quantizations = [], []
    original_quantize = hdrq.quantize_and_reconstruct
    monkeypatch.setattr(hdrq, "quantize_and_reconstruct",
                        lambda *a, **k: quantizations.append(a[2].method) or original_quantize(*a, **k))

    def counting_method(name: str):  # the registered method, with its train loop counted per target
        method = get_method(name)
        return dataclasses.replace(method, train=lambda c, tctx: trains.append(tctx.target) or method.train(c, tctx))

    monkeypatch.setattr(hdrq, "get_method", counting_method)
    config = hdrq.HdrqConfig(bits="W4A4", ptq_method="hdrq", reconstruction_iterations=3, calibration_images=2,
                             merge_samples=4, barrier_points=3, adaptation="hiast", adaptation_settings=TINY_HIAST)
    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    ctx = run_context(tiny_roots["street_scenes"], "street_scenes", "day_city", tmp_path, session, (32, 64))
    result = hdrq.train_hdrq(config, ctx)
    merged = result.model

    assert isinstance(merged, QuantizedModel) and not merged.training
    assert merged(torch.zeros(1, 3, 32, 64)).shape == (1, 19, 32, 64)
    assert sorted(trains) == ["day_city", "dusk_city"] and quantizations == ["hdrq", "hdrq"]
    (report,) = session.reports
    assert 0.0 <= report["merge_quality"] <= 1.0 and report["epoch"] == 1
    for key in ("merge_quality_day_city", "merge_quality_dusk_city", "error_barrier", "target_confidence",
                "ptq_iterations_per_second", "seconds_ptq_stage"):
        assert math.isfinite(report[key]), key
    assert report["error_barrier"] >= 0.0 and report["ptq_iterations_per_second"] > 0
    assert result.evaluation_targets == ("day_city", "dusk_city") and result.saved_as == "module"
    assert result.scores == {"merge_quality": report["merge_quality"]}

    # held-out scores come only from execution.trial.finish_run: per target and their harmonic mean
    final = finish_run(result, ctx)
    day, dusk = final["heldout_miou_day_city"], final["heldout_miou_dusk_city"]
    expected = 0.0 if min(day, dusk) <= 0 else 2 * day * dusk / (day + dusk)
    assert final["heldout_miou"] == pytest.approx(expected)
    assert len(final["heldout_iou_day_city"]) == 19 and final["scores"]["merge_quality"] == report["merge_quality"]
    assert Path(final["predictions_path"]).exists() and "error_barrier" in final["metrics"]

    # another merge of the same specialists (float rounding) reuses the adapted and quantized stages
    other = hdrq.train_hdrq(dataclasses.replace(config, noise_sampling=False),
                            run_context(tiny_roots["street_scenes"], "street_scenes", "dusk_city", tmp_path,
                                        LocalSession(), (32, 64)))
    assert len(trains) == 2 and len(quantizations) == 2
    assert other.evaluation_targets == ("day_city", "dusk_city")
    # a restarted trial returns the checkpointed merge without recomputing
    restored_session = LocalSession(_last_checkpoint=session._last_checkpoint)
    restored = hdrq.train_hdrq(config, run_context(tiny_roots["street_scenes"], "street_scenes", "day_city",
                                                   tmp_path, restored_session, (32, 64)))
    assert restored_session.reports == [] and len(quantizations) == 2
    images = torch.randn(2, 3, 32, 64)
    torch.testing.assert_close(restored.model(images), merged(images))
    assert (restored.scores, restored.metrics, restored.evaluation_targets) == (
        result.scores, result.metrics, result.evaluation_targets)


@pytest.mark.integration
@pytest.mark.parametrize("ptq_method, bits", [("qdrop", "W4A8"), ("none", "W8A8")])
def test_classification_pipeline_merges_three_targets(tiny_roots, tmp_path, ptq_method: str, bits: str) -> None:
    from raysel.execution.trial import finish_run
    from raysel.quant import QuantizedModel

    config = hdrq.HdrqConfig(bits=bits, ptq_method=ptq_method, reconstruction_iterations=3, calibration_images=4,
                             merge_samples=4, barrier_points=0, adaptation_settings=TINY_GSDA)
    session = LocalSession()
    ctx = run_context(tiny_roots["digits"], "digits", "noisy_digits", tmp_path, session, None)
    result = hdrq.train_hdrq(config, ctx)
    assert isinstance(result.model, QuantizedModel) == (ptq_method != "none")
    (report,) = session.reports
    assert set(k for k in report if k.startswith("merge_quality_")) == {
        "merge_quality_photo_digits", "merge_quality_noisy_digits", "merge_quality_inverted_blur_digits"}
    assert 0.0 <= report["merge_quality"] <= 1.0 and "error_barrier" not in report
    final = finish_run(result, ctx)
    accuracies = [final[f"heldout_accuracy_{t}"] for t in ("photo_digits", "noisy_digits", "inverted_blur_digits")]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    expected = 0.0 if min(accuracies) <= 0 else 3 / sum(1 / a for a in accuracies)
    assert final["heldout_accuracy"] == pytest.approx(expected) and "heldout_miou" not in final


@pytest.mark.integration
def test_sweep_selects_with_merge_quality_and_stores_per_target_heldout(ray_local, embedded_data_root,
                                                                        tmp_path) -> None:
    """A real 2-trial ``python -m raysel.sweep hdrq`` on local Ray (QDrop vs HDRQ at W4A4, tiny budgets)."""
    from raysel import store
    code, output = run_sweep_in(tmp_path, [
        "hdrq", "--data-root", str(embedded_data_root), "--results", "results", "--name", "hdrq-tiny",
        "--image-size", "32", "64", "--selection-size", "8", "--progress-interval", "5",
        "--set", "bits=W4A4", "--set", "ptq_method={grid: [qdrop, hdrq]}",
        "--set", "noise_sampling=true", "--set", "lambda_distance=0.05",
        "--set", "reconstruction_iterations=2", "--set", "calibration_images=2",
        "--set", "merge_samples=4", "--set", "barrier_points=3",
        "--set", f"adaptation_settings={TINY_HIAST}"])
    assert code == 0, output
    results = tmp_path / "results"
    trials = store.load(results, sweep_id="hdrq-tiny").sort_values("trial_id")
    assert len(trials) == 2 and set(trials["status"]) == {"finished"}, trials[["status", "error"]]
    assert sorted(trials["hp_ptq_method"]) == ["hdrq", "qdrop"] and set(trials["hp_bits"]) == {"W4A4"}
    assert set(trials["hp_weight_bits"]) == {4} and set(trials["hp_activation_bits"]) == {4}
    assert trials["score_merge_quality"].between(0, 1).all() and trials["score_fmiou"].between(0, 1).all()
    for _, trial in trials.iterrows():
        day, dusk = trial["heldout_miou_day_city"], trial["heldout_miou_dusk_city"]
        assert 0 <= day <= 1 and 0 <= dusk <= 1 and len(trial["heldout_iou_dusk_city"]) == 19
        expected = 0.0 if min(day, dusk) <= 0 else 2 * day * dusk / (day + dusk)
        assert trial["heldout_miou"] == pytest.approx(expected)
        assert np.isfinite(trial["error_barrier"]) and np.isfinite(trial["merge_quality_day_city"])
    selections = store.load(results, table="selections", sweep_id="hdrq-tiny")
    assert {"fmiou", "merge_quality"} <= set(selections["selector"])  # every applicable selector is recorded
    assert list(selections[selections["headline"]]["selector"]) == ["merge_quality"]  # hdrq's default decides
    decision = selections[selections["selector"] == "merge_quality"].iloc[0]
    best = trials.loc[trials["score_merge_quality"].idxmax()]
    assert decision["selected_trial_id"] == best["trial_id"]
    assert decision["score"] == pytest.approx(best["score_merge_quality"])
    assert decision["heldout_regret"] == pytest.approx(100 * (trials["heldout_miou"].max() - best["heldout_miou"]))
    marked = [line for line in output.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and best["trial_id"] in marked[0]
    assert "selected by merge_quality" in output


def test_config_is_frozen_and_its_literals_match_the_ptq_and_noise_choices() -> None:
    import typing

    from raysel.hyperparameters import field_types, literal_choices
    from raysel.quant.ptq_config import NOISE_CHOICES

    config = hdrq.HdrqConfig(bits="W6A6")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.weight_bits = 4  # type: ignore[misc]
    types = field_types(hdrq.HdrqConfig)
    assert tuple(literal_choices(types["ptq_method"])) == hdrq.PTQ_CHOICES
    assert tuple(literal_choices(types["quantization_noise"])) == NOISE_CHOICES
    assert typing.get_origin(types["ptq_method"]) is typing.Literal
    with pytest.raises(ConfigError, match="merge_samples must be >= 1"):
        hdrq.HdrqConfig(merge_samples=0).validate()


def test_hdrq_weight_lr_schedule_reaches_the_ptq_config_and_the_search_space() -> None:
    scaled = hdrq.HdrqConfig(reconstruction_iterations=2000).ptq_config(seed=0)
    assert scaled.effective_weight_lr == pytest.approx(1e-3)  # 1e-4 x 20000 / 2000
    fixed = hdrq.HdrqConfig(reconstruction_iterations=2000, weight_lr=3e-4, weight_lr_schedule="fixed").ptq_config(0)
    assert fixed.effective_weight_lr == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="weight_lr_schedule"):
        hdrq.HdrqConfig(weight_lr_schedule="linear").validate()
    space = yaml.safe_load((Path(__file__).parents[1] / "search_spaces" / "hdrq.yaml").read_text())
    assert space["weight_lr_schedule"] == "scaled" and space["weight_lr"] == pytest.approx(1e-4)


def test_mean_movement_averages_the_specialists_and_skips_stages_cached_before_it() -> None:
    first = {"codes_changed": 0.1, "weight_step_movement": 0.0, "activation_step_movement": 0.2,
             "dequantized_weight_movement": 0.05, "weight_movement": None}
    second = dict(first, codes_changed=0.3, activation_step_movement=0.4)
    metrics = hdrq.mean_movement([{"movement": first}, {"movement": second}])
    assert metrics == pytest.approx({"ptq_codes_changed": 0.2, "ptq_weight_step_movement": 0.0,
                                     "ptq_activation_step_movement": 0.3, "ptq_dequantized_weight_movement": 0.05})
    assert hdrq.mean_movement([{"movement": first}, {}]) == {}  # one stage cached before movement was recorded


def test_repeated_merges_of_the_same_specialists_run_each_specialist_once() -> None:
    from raysel.quant import merge_models, quantize_model
    from raysel.quant.merge_quality import merge_quality

    images = {"day": [torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))],
              "dusk": [torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(2)),
                       torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(3))]}
    models = {}
    for seed, target in enumerate(images):
        torch.manual_seed(seed)
        base = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
        calibration = torch.cat(images[target])
        models[target] = quantize_model(base, 4, 4, example_input=calibration[:1]).calibrate(calibration)
    seen: dict[str, int] = {target: 0 for target in models}

    def count(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        for target, model in models.items():  # merged models are copies that carry the hook: not counted
            if module is model:
                seen[target] += inputs[0].shape[0]

    hooks = [model.register_forward_hook(count) for model in models.values()]
    config = hdrq.HdrqConfig(bits="W4A4", merge_samples=4, barrier_points=0)
    ctx = SimpleNamespace(spec=SimpleNamespace(seed=0))
    specialists = hdrq.Specialists(dict(models), images, {})
    merges = [hdrq.merge_specialists(config, ctx, specialists, merge_seed=seed) for seed in (0, 1000)]
    assert seen == {"day": 3, "dusk": 4}  # each specialist predicted its own target's images once, for both merges
    for hook in hooks:
        hook.remove()
    for merge, seed in zip(merges, (0, 1000)):  # the same merge and quality as re-running the specialists
        merged = merge_models(list(models.values()), rounding="noise", num_samples=4, seed=seed)
        for got, expected in zip(merge.model.state_dict().values(), merged.state_dict().values()):
            assert torch.equal(got, expected)
        assert merge.quality == merge_quality(merged, models, images)
        assert merge.metrics == {f"merge_quality_{t}": value for t, value in merge.quality.per_target.items()}
