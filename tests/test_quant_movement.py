"""raysel.quant.movement: codes changed, step and weight movement of a reconstruction, exact on a tiny model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from raysel.errors import ConfigError
from raysel.quant import QuantizedModel, quantize_and_reconstruct, quantize_model, reconstruction_movement
from tests.test_quant_reconstruct import _reconstruction_config, images, tiny_model


def two_layers() -> QuantizedModel:
    """Linear(2, 2) + ReLU + Linear(2, 2) at W4A4: layers "0" (4 bits) and "2" (8 bits, the head), one activation
    quantizer (layer 0's output); weights on a 0.1 grid, activation step 0.5."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    quantized = quantize_model(model, 4, 4, example_input=torch.randn(1, 2))
    layers = quantized.quantized_layers()
    with torch.no_grad():
        layers["0"].weight.copy_(torch.tensor([[0.1, 0.2], [0.3, 0.4]]))  # codes 1 2 3 4
        layers["2"].weight.copy_(torch.tensor([[0.4, -0.4], [0.8, -0.8]]))  # codes 4 -4 8 -8
        for layer in layers.values():
            layer.weight_quantizer.scale.fill_(0.1)
        quantized.activation_quantizers()["0.output_quantizer"].scale.fill_(0.5)
    return quantized


def test_movement_counts_flipped_codes_and_relative_step_and_weight_changes():
    start = two_layers()
    end = copy.deepcopy(start)
    layers = end.quantized_layers()
    with torch.no_grad():
        layers["0"].weight[0, 0] = 0.0  # one of layer 0's 4 codes: 1 -> 0
        layers["2"].weight_quantizer.scale.fill_(0.2)  # step doubled: all 4 codes halve, dequantized values stay
        end.activation_quantizers()["0.output_quantizer"].scale.fill_(0.55)
    movement = reconstruction_movement(start, end, float_weights_learned=True)
    layer0 = 0.1 / math.sqrt(0.01 + 0.04 + 0.09 + 0.16)  # ||(0.1, 0, 0, 0)|| / ||(0.1, 0.2, 0.3, 0.4)||
    assert (movement["layers"], movement["activation_quantizers"]) == (2, 1)
    assert movement["codes_changed"] == pytest.approx((0.25 + 1.0) / 2) and movement["codes_changed_max"] == 1.0
    assert movement["weight_step_movement"] == pytest.approx(0.5)  # (0 + 1) / 2 over layers
    assert movement["weight_step_movement_max"] == pytest.approx(1.0)
    assert movement["activation_step_movement"] == pytest.approx(0.1)
    assert movement["dequantized_weight_movement"] == pytest.approx(layer0 / 2)  # layer 2: same values, new grid
    assert movement["dequantized_weight_movement_max"] == pytest.approx(layer0)
    assert movement["weight_movement"] == pytest.approx(layer0 / 2)
    # Float weights not learned (AdaRound): no float-weight movement, the rest unchanged.
    unlearned = reconstruction_movement(start, end, float_weights_learned=False)
    assert unlearned["weight_movement"] is None and unlearned["weight_movement_max"] is None
    assert unlearned["codes_changed"] == movement["codes_changed"]


def test_no_movement_is_zero_and_different_models_are_refused():
    start = two_layers()
    movement = reconstruction_movement(start, copy.deepcopy(start), float_weights_learned=True)
    assert all(movement[name] == 0.0 for name in ("codes_changed", "weight_step_movement", "activation_step_movement",
                                                  "dequantized_weight_movement", "weight_movement"))
    other = quantize_model(nn.Sequential(nn.Linear(2, 2)), 4, 4, example_input=torch.randn(1, 2))
    with pytest.raises(ConfigError, match="identically wrapped"):
        reconstruction_movement(start, other, float_weights_learned=False)


@pytest.mark.parametrize("method", ["qdrop", "hdrq"])
def test_reconstruction_reports_its_movement(method):
    model, calibration = tiny_model(), images()
    start = quantize_model(model, 3, 4, example_input=calibration[:1]).calibrate(calibration)
    quantized, report = quantize_and_reconstruct(model, calibration, _reconstruction_config(method, iterations=20),
                                                 base_model=model)
    assert report.movement == reconstruction_movement(start, quantized, float_weights_learned=method == "hdrq")
    assert report.movement["activation_step_movement"] > 0  # LSQ activation steps are learned by both
    if method == "qdrop":  # AdaRound: rounding flips only, the weight step stays at its MSE value
        assert report.movement["weight_step_movement"] == 0.0 and report.movement["weight_movement"] is None
        assert report.movement["codes_changed"] > 0
    else:  # HDRQ learns the float weights and their steps
        assert report.movement["weight_movement"] > 0 and report.movement["weight_step_movement"] > 0
