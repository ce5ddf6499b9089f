"""Registry-driven contracts (issue 15 item 7): every registered method, selector, dataset family and model passes
the same checks, so a new one gets them for free by registering.

* methods: a valid default config, a search-space YAML whose keys are config fields, registered default selectors;
  two steps on tiny data in-process (LocalSession, no Ray), the required metrics reported, a checkpoint written, and
  a restart from it returning the same network without training again;
* selectors: one finite score per candidate that does not depend on the candidates' order (synthetic predictions);
* dataset families: tiny data (generated, or the fake real-dataset layouts of test_data_real) loads with the
  family's class count, image and label shapes and dtypes;
* models: every registered model of every task maps images to logits of the right shape and dtype.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import torch

from raysel import data, models
from raysel.data.family import registered_families
from raysel.errors import UserError
from raysel.methods.base import LocalSession, RunContext, RunSpec
from raysel.methods.result import rebuild_model, save_model
from raysel.orchestration.pipeline import stage_keying_names
from raysel.registry import TASKS, get_method, method_names
from raysel.search_space import load_search_space
from raysel.selection.predictions import CandidatePredictions, probability_grid
from raysel.selection.selectors import TRIAL_SCORE_SELECTORS, get_selector, selector_names

REQUIRED_METRICS = ("epoch", "target_confidence")  # Tune's progress and ASHA's default objective
IGNORE_LABEL = 255
TINY_IMAGE_SIZE = (32, 64)

# Budget fields a method names by convention, set to two steps (or one report) on tiny data. A new method that
# names its budget like this needs nothing here; one that does not adds an entry to TINY_OVERRIDES.
TINY_BY_NAME = {"iterations": 2, "rounds": 1, "iterations_per_round": 2, "batch_size": 2, "reports": 1,
                "num_reports": 1, "reports_per_round": 1, "report_interval": 1, "pseudo_label_batch_size": 2}
HDRQ_TINY = {"reconstruction_iterations": 2, "calibration_images": 2, "merge_samples": 2, "barrier_points": 0}
TINY_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    # HDRQ adapts (hiast / gsda), quantizes and merges every target: tiny budgets for each stage.
    ("hdrq", "segmentation"): {**HDRQ_TINY, "adaptation_settings": "source_iterations=2, warmup_iterations=2, "
                               "iterations_per_round=2, batch_size=2, pseudo_label_batch_size=2"},
    ("hdrq", "classification"): {**HDRQ_TINY, "adaptation_settings": "source_iterations=2, iterations=2, "
                                 "batch_size=4"},
}


def tiny_config(method_name: str, task: str) -> Any:
    """The method's default config with every conventionally named budget field at two steps, plus overrides."""
    method = get_method(method_name)
    values = {}
    for field in dataclasses.fields(method.config_class):
        if field.name in TINY_BY_NAME or field.name.endswith("_iterations"):
            values[field.name] = TINY_BY_NAME.get(field.name, 2)
    values.update(TINY_OVERRIDES.get((method_name, task), {}))
    return dataclasses.replace(method.default_config(), **values)


# --------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", method_names())
def test_method_declares_a_valid_config_search_space_and_selectors(name: str) -> None:
    method = get_method(name)
    assert method.name == name and method.tasks and set(method.tasks) <= set(TASKS)
    config = method.default_config()
    if hasattr(config, "validate"):
        config.validate()
    for task in method.tasks:
        tiny = tiny_config(name, task)
        if hasattr(tiny, "validate"):
            tiny.validate()
    assert method.search_space_path.is_file(), f"{name} has no search space {method.search_space_path}"
    space = load_search_space(method.search_space_path, method)  # raises on a key that is no config field
    assert set(space.entries) <= set(method.hyperparameter_names())
    assert space.swept_names(), f"the search space of {name} sweeps nothing"
    assert method.default_selectors and set(method.default_selectors) <= set(selector_names())
    if method.prepare_shared is not None:  # its shipped sweep shares the stages it pre-builds
        assert stage_keying_names(method, space) == []


def method_cases() -> list[Any]:
    """(method, task) for every registered method and each task it supports."""
    return [pytest.param(name, task, id=f"{name}-{task}") for name in method_names() for task in get_method(name).tasks]


def run_context(root: Path, task: str, method: str, tmp_path: Path, session: LocalSession) -> RunContext:
    """A tiny run on the embedded family of ``task``: its first default target, small images, a small subset."""
    dataset = "street_scenes" if task == "segmentation" else "digits"
    spec = RunSpec(method=method, dataset=dataset, data_root=str(root), target=None,
                   image_size=TINY_IMAGE_SIZE if task == "segmentation" else None, cache_dir=str(tmp_path / "cache"),
                   output_dir=str(tmp_path / "out"), seed=0, selection_size=4, num_threads=1)
    (tmp_path / "out").mkdir(exist_ok=True)
    return RunContext(spec, session)


@dataclasses.dataclass
class TinyRun:
    """One method trained for two steps on tiny data in-process: what it returned, reported and ran in."""

    result: Any
    session: LocalSession
    ctx: RunContext
    workdir: Path


@pytest.fixture(scope="module")
def tiny_run(tiny_roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], TinyRun]:
    """Each (method, task) trained once per module: the resume test and the rebuild test inspect the same run."""
    runs: dict[tuple[str, str], TinyRun] = {}

    def run(name: str, task: str) -> TinyRun:
        if (name, task) not in runs:
            dataset = "street_scenes" if task == "segmentation" else "digits"
            workdir = tmp_path_factory.mktemp(f"{name}-{task}")
            session = LocalSession(checkpoint_root=str(workdir / "checkpoints"))
            ctx = run_context(tiny_roots[dataset], task, name, workdir, session)
            ctx.report_scores = lambda reported: {"probe": 1.0}  # ASHA's trial-scored objectives score that model
            runs[(name, task)] = TinyRun(get_method(name).train(tiny_config(name, task), ctx), session, ctx, workdir)
        return runs[(name, task)]

    return run


@pytest.mark.parametrize("name, task", method_cases())  # in-process, no Ray: fast enough for the unit suite
def test_method_runs_two_steps_reports_checkpoints_and_resumes(name: str, task: str, tiny_roots: dict[str, Path],
                                                               tiny_run: Callable[[str, str], TinyRun]) -> None:
    method = get_method(name)
    dataset = "street_scenes" if task == "segmentation" else "digits"
    run = tiny_run(name, task)
    session, ctx, model = run.session, run.ctx, run.result.model
    assert session.reports, f"{name} reported nothing"
    assert all(report.get("score_probe") == 1.0 for report in session.reports), f"{name} reports without its model"
    for key in REQUIRED_METRICS:
        assert key in session.reports[-1] and math.isfinite(float(session.reports[-1][key])), (key, session.reports)
    assert session._last_checkpoint is not None, f"{name} wrote no checkpoint"
    images = torch.stack([ctx.target_dataset()[index]["image"] for index in range(2)])
    model.eval()
    with torch.no_grad():
        logits = model(images)
    assert logits.shape[:2] == (2, ctx.num_classes) and torch.isfinite(logits).all()

    restarted = LocalSession(_last_checkpoint=session._last_checkpoint)
    config = tiny_config(name, task)
    resumed = method.train(config, run_context(tiny_roots[dataset], task, name, run.workdir, restarted)).model
    resumed.eval()
    with torch.no_grad():
        torch.testing.assert_close(resumed(images), logits)
    assert len(restarted.reports) < len(session.reports)  # it resumed from the checkpoint, it did not start over


@pytest.mark.parametrize("name, task", method_cases())
def test_method_rebuilds_from_its_saved_state(name: str, task: str, tiny_run: Callable[[str, str], TinyRun],
                                              tmp_path: Path) -> None:
    """The trained model rebuilt from what the trial saved (``save_model`` + ``rebuild_model``), as --repredict does."""
    run = tiny_run(name, task)
    images = torch.stack([run.ctx.target_dataset()[index]["image"] for index in range(2)])
    trained = run.result.model.eval()
    rebuilt = rebuild_model(save_model(run.result, tmp_path / "model.pt"), run.ctx).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), trained(images))


# --------------------------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------------------------


def synthetic_candidates(task: str, count: int = 5, num_classes: int = 4, seed: int = 0) -> list[CandidatePredictions]:
    """``count`` candidates that agree with a reference to different degrees, with probabilities."""
    rng = np.random.default_rng(seed)
    shape = (3, 8, 8) if task == "segmentation" else (24,)
    truth = rng.integers(0, num_classes, shape)
    candidates = []
    for index in range(count):
        labels = np.where(rng.random(shape) < 0.15 * index, rng.integers(0, num_classes, shape), truth).astype(np.uint8)
        logits = rng.normal(size=(*shape, num_classes)) + 3.0 * np.eye(num_classes)[labels]
        probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        rows = cols = None
        features = logits + rng.normal(size=logits.shape)  # penultimate-feature stand-ins, correlated with labels
        if task == "segmentation":
            rows, cols = probability_grid(8, 8, (4, 4))
            probabilities = np.moveaxis(probabilities[:, rows][:, :, cols], -1, 1)
            features = np.moveaxis(features[:, rows][:, :, cols], -1, 1)
        candidates.append(CandidatePredictions(
            labels=labels, probabilities=probabilities.astype(np.float16),
            image_ids=tuple(f"i{k}" for k in range(shape[0])), image_indices=np.arange(shape[0]),
            num_classes=num_classes, task=task, probability_rows=rows, probability_cols=cols,
            features=features.astype(np.float16), feature_rows=rows, feature_cols=cols))
    return candidates


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", [name for name in selector_names() if name not in TRIAL_SCORE_SELECTORS])
def test_selector_scores_are_finite_and_independent_of_candidate_order(name: str, task: str) -> None:
    candidates = synthetic_candidates(task)
    scores = get_selector(name).score(candidates)
    assert scores.shape == (len(candidates),) and scores.dtype == np.float64 and np.isfinite(scores).all()
    order = np.random.default_rng(1).permutation(len(candidates))
    reordered = get_selector(name).score([candidates[index] for index in order])
    np.testing.assert_allclose(reordered, scores[order], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", list(TRIAL_SCORE_SELECTORS))
def test_trial_scored_selector_reads_finite_stored_scores_in_row_order(name: str) -> None:
    selector = get_selector(name)
    trials = pd.DataFrame({"trial_id": ["t0", "t1", "t2"], selector.column: [0.3, 0.9, 0.5]})
    scores = selector.score_trials(trials)
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(selector.score_trials(trials.iloc[[2, 0, 1]]), scores[[2, 0, 1]])


# --------------------------------------------------------------------------------------------------------------
# Dataset families and models
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_layout_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake real-dataset layouts of test_data_real (GTA5, Cityscapes, IDD, SYNTHIA, Office-31, Office-Home)."""
    from tests import test_data_real

    root = tmp_path_factory.mktemp("real")
    for make in (test_data_real.make_gta5, test_data_real.make_cityscapes, test_data_real.make_idd,
                 test_data_real.make_synthia, test_data_real.make_office31, test_data_real.make_officehome):
        make(root)
    return root


def check_sample(family: Any, sample: dict[str, Any], with_labels: bool) -> None:
    """The image is float32 [3, H, W]; a label is int64 [H, W] (segmentation) or a scalar class, within range."""
    image = sample["image"]
    assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
    if not with_labels:
        assert "label" not in sample or sample["label"] is None
        return
    label = torch.as_tensor(sample["label"])
    assert label.dtype == torch.int64
    if family.task == "segmentation":
        assert tuple(label.shape) == tuple(image.shape[1:])
        valid = label[label != IGNORE_LABEL]
        assert valid.numel() == 0 or (valid.min() >= 0 and valid.max() < family.num_classes)
    else:
        assert label.ndim == 0 and 0 <= int(label) < family.num_classes


@pytest.mark.parametrize("name", sorted(registered_families()))
def test_dataset_family_loads_tiny_data_with_its_class_count_shapes_and_dtypes(
        name: str, tiny_roots: dict[str, Path], real_layout_root: Path) -> None:
    family = data.get_family(name)
    assert family.task in TASKS and len(family.class_names) == family.num_classes
    assert family.default_source in family.domains and set(family.default_targets) <= set(family.domains)
    root = tiny_roots.get(name, real_layout_root)
    size = TINY_IMAGE_SIZE if family.task == "segmentation" else None
    source = family.load(root, family.default_source, "train", with_labels=True, image_size=size)
    assert len(source) > 0
    check_sample(family, source[0], with_labels=True)
    for target in family.default_targets:
        for split, with_labels in (("train", False), ("heldout", True)):
            if split not in family.splits(target):
                continue
            try:
                dataset = family.load(root, target, split, with_labels=with_labels, image_size=size)
            except UserError:  # this target is not in the tiny layouts
                continue
            if len(dataset):
                check_sample(family, dataset[0], with_labels)


@pytest.mark.parametrize("name, task", [(name, task) for task in TASKS for name in models.model_names(task)])
def test_model_maps_images_to_logits_of_its_class_count(name: str, task: str) -> None:
    num_classes = 5
    model = models.build_model(name, task, num_classes, pretrained=False).eval()
    images = torch.randn(2, 3, *((TINY_IMAGE_SIZE if task == "segmentation" else (32, 32))))
    with torch.no_grad():
        logits = model(images)
    expected = (2, num_classes, *TINY_IMAGE_SIZE) if task == "segmentation" else (2, num_classes)
    assert tuple(logits.shape) == expected and logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_every_registry_is_covered() -> None:
    """The parametrizations above read the registries: none of them is empty."""
    assert method_names() and selector_names() and registered_families()
    assert all(models.model_names(task) for task in TASKS)
