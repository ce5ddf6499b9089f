"""Re-prediction rebuilds every method's model from what its trial saved (TrainResult + save_model/rebuild_model),
HDRQ's quantized merged model included, and predicts exactly what the trial cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raysel.methods.base import LocalSession, RunContext, RunSpec
from raysel.methods.result import MODULE, STATE_DICT, TrainResult, rebuild_model, recipe_path, save_model

TINY_GSDA = "source_iterations=3, iterations=3, batch_size=8"


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from raysel.data.digits import DigitsConfig, prepare_digits

    root = tmp_path_factory.mktemp("digits")
    prepare_digits(root, DigitsConfig.small())
    return root


def digits_context(root: Path, tmp_path: Path) -> RunContext:
    spec = RunSpec(method="gsda", dataset="digits", data_root=str(root), model="small_cnn", output_dir=str(tmp_path))
    return RunContext(spec, LocalSession())


@pytest.mark.parametrize("saved_as", [STATE_DICT, MODULE])
def test_a_saved_model_is_rebuilt_with_its_recipe(digits_root: Path, tmp_path: Path, saved_as: str) -> None:
    ctx = digits_context(digits_root, tmp_path)
    model = ctx.build_model(pretrained=False).eval()
    path = save_model(TrainResult(model, saved_as=saved_as), tmp_path / "model.pt")
    assert recipe_path(path).is_file()
    rebuilt = rebuild_model(path, ctx)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(images), model(images))


def test_a_checkpoint_without_recipe_is_a_state_dict_and_a_misfit_is_a_data_error(digits_root: Path,
                                                                                     tmp_path: Path) -> None:
    from raysel.errors import DataError

    ctx = digits_context(digits_root, tmp_path)
    torch.save(ctx.build_model(pretrained=False).state_dict(), tmp_path / "model.pt")
    assert isinstance(rebuild_model(tmp_path / "model.pt", ctx), torch.nn.Module)
    torch.save({"not": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(DataError, match="does not fit the model small_cnn"):
        rebuild_model(tmp_path / "model.pt", ctx)


@pytest.mark.integration
def test_a_tiny_hdrq_trial_repredicts_the_predictions_it_cached(digits_root: Path, tmp_path: Path) -> None:
    from raysel.execution import run_local
    from raysel.execution.repredict import PredictionJob, predict_candidate
    from raysel.quant import QuantizedModel
    from raysel.selection.predictions import load_predictions

    hyperparameters = {"bits": "W4A8", "ptq_method": "qdrop", "reconstruction_iterations": 3,
                       "calibration_images": 4, "merge_samples": 4, "barrier_points": 0,
                       "adaptation_settings": TINY_GSDA}
    spec = RunSpec(method="hdrq", dataset="digits", data_root=str(digits_root), target="noisy_digits",
                   cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "trial"), selection_size=6)
    run = run_local("hdrq", hyperparameters, spec)
    assert run.final["status"] == "finished" and isinstance(run.result.model, QuantizedModel)
    assert run.final["scores"]["merge_quality"] == run.result.scores["merge_quality"]  # the method's own score
    assert set(run.final["scores"]) == {"merge_quality", "consistency", "mixval"}  # and the model-based ones
    cached = load_predictions(run.final["predictions_path"])

    job = PredictionJob(sweep_id="s", trial_id="t", run=dict(spec.to_dict(), output_dir=str(tmp_path / "trial")),
                        checkpoint_path=run.final["checkpoint_path"],
                        predictions_path=str(tmp_path / "again.npz"), num_cpus=1, num_gpus=0)
    again = load_predictions(predict_candidate(job))
    assert again.image_ids == cached.image_ids
    np.testing.assert_array_equal(again.labels, cached.labels)
    np.testing.assert_allclose(again.probabilities, cached.probabilities, atol=1e-6)
    # clean_digits has a held-out split of its own: the trial and its re-prediction both write the source
    # calibration cache that the score estimate (ATC) fits on, next to the prediction cache.
    from raysel.selection.calibration import calibration_path, load_calibration

    calibration = load_calibration(calibration_path(run.final["predictions_path"]))
    assert calibration.task == "classification" and calibration.num_images == 6  # selection_size source images
    recomputed = load_calibration(calibration_path(tmp_path / "again.npz"))
    np.testing.assert_array_equal(recomputed.correct, calibration.correct)
