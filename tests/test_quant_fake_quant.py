"""Fake quantizers: 8-bit near-identity, level counts, LSQ gradients, MSE init, HDRQ noise range, bit checks."""

from __future__ import annotations

import math

import pytest
import torch

from raysel.errors import ConfigError
from raysel.quant.fake_quant import (
    ActivationQuantizer, WeightQuantizer, fake_quantize, mse_scale, noise_fake_quantize, sample_rounding_noise,
    signed_range, unsigned_range, validate_bits,
)

def test_eight_bit_quantization_is_identity_within_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(64, 32)
    quantizer = WeightQuantizer(8)
    quantizer.initialize(weight)
    step = float(quantizer.scale.detach())
    qmin, qmax = signed_range(8)
    inside = (weight > qmin * step) & (weight < qmax * step)
    error = (quantizer(weight) - weight).detach().abs()
    assert inside.float().mean() > 0.99
    assert float(error[inside].max()) <= step / 2 + 1e-7
    assert step < float(weight.abs().max()) / 100  # a fine grid at 8 bits


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_number_of_distinct_weight_levels_is_at_most_two_to_the_bits(bits):
    torch.manual_seed(bits)
    weight = torch.randn(128, 64)
    quantizer = WeightQuantizer(bits)
    quantizer.initialize(weight)
    levels = torch.unique(quantizer(weight))
    assert 1 < levels.numel() <= 2**bits
    integers = levels / quantizer.scale
    torch.testing.assert_close(integers, integers.round(), atol=1e-4, rtol=0)


def test_activation_step_gets_the_lsq_gradient_with_its_scale_factor():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 4, 5, 5))
    quantizer = ActivationQuantizer(4)
    quantizer.start_observing()
    quantizer(x)
    quantizer.finish_observing()
    assert not quantizer._signed  # post-ReLU data -> unsigned grid [0, 15]
    quantizer(x).sum().backward()
    grad = quantizer.scale.grad
    assert grad is not None and torch.isfinite(grad) and grad != 0
    # Same step without the scale factor: the ratio is LSQ's 1/sqrt(numel * qmax).
    raw_step = quantizer.scale.detach().clone().requires_grad_(True)
    fake_quantize(x, raw_step, 0, 15).sum().backward()
    torch.testing.assert_close(grad, raw_step.grad / math.sqrt(x.numel() * 15))


def test_signed_activations_use_a_symmetric_grid():
    quantizer = ActivationQuantizer(4)
    quantizer.start_observing()
    quantizer(torch.linspace(-1, 1, 101))
    quantizer.finish_observing()
    assert (quantizer.qmin, quantizer.qmax) == signed_range(4)
    state = quantizer.state_dict()
    fresh = ActivationQuantizer(4)
    fresh.load_state_dict(state)
    assert (fresh.qmin, fresh.qmax) == signed_range(4)


def test_mse_initialisation_clips_heavy_tails_and_is_exact_on_grid_data():
    torch.manual_seed(0)
    heavy = torch.cat([torch.randn(10000), torch.tensor([50.0])])
    qmin, qmax = signed_range(4)
    step = float(mse_scale(heavy, qmin, qmax))
    assert step * qmax < 25.0  # the outlier is clipped rather than stretching the grid
    on_grid = torch.arange(0, 16, dtype=torch.float32) * 0.25
    step = mse_scale(on_grid, *unsigned_range(4))
    torch.testing.assert_close(fake_quantize(on_grid, step, *unsigned_range(4)), on_grid)


def test_weight_quantizer_gradient_reaches_weight_and_step():
    weight = torch.randn(8, 8, requires_grad=True)
    quantizer = WeightQuantizer(4)
    quantizer.initialize(weight)
    for mode in ("nearest", "noise"):
        quantizer.set_mode(mode)
        weight.grad, quantizer.scale.grad = None, None
        (quantizer(weight) ** 2).sum().backward()
        assert weight.grad is not None and quantizer.scale.grad is not None and quantizer.scale.grad != 0


def test_hdrq_noise_stays_within_half_a_step_and_clips_outside():
    torch.manual_seed(0)
    x = torch.randn(4000) * 3
    step = torch.tensor(0.2)
    qmin, qmax = signed_range(4)
    for distribution in ("histogram", "uniform"):
        noise = sample_rounding_noise(x, step, qmin, qmax, distribution)
        assert noise.shape == x.shape
        assert float(noise.min()) >= -0.5 and float(noise.max()) < 0.5
        out = noise_fake_quantize(x, step, qmin, qmax, distribution)
        inside = (x > qmin * step) & (x < qmax * step)
        assert float((out - x)[inside].abs().max()) <= float(step) / 2 + 1e-6
        torch.testing.assert_close(out[x >= qmax * step], torch.full_like(out[x >= qmax * step], qmax * 0.2))
        torch.testing.assert_close(out[x <= qmin * step], torch.full_like(out[x <= qmin * step], qmin * 0.2))


def test_histogram_noise_follows_the_measured_rounding_error():
    # Every element sits 0.1..0.2 steps *below* a grid point, so the rounding error q(x) - x lies in [0.1, 0.2]:
    # histogram noise must stay there (up to one bin), while the paper's uniform noise spans [-0.5, 0.5).
    torch.manual_seed(0)
    step = torch.tensor(1.0)
    x = torch.randint(-5, 5, (20000,)).float() - (0.1 + 0.1 * torch.rand(20000))
    noise = sample_rounding_noise(x, step, -8, 7, "histogram")
    assert float(noise.min()) >= 0.1 - 1 / 256 and float(noise.max()) <= 0.2 + 1 / 256
    assert abs(float(noise.mean()) - 0.15) < 0.01
    full = sample_rounding_noise(x, step, -8, 7, "histogram", histogram_samples=0)
    assert float(full.min()) >= 0.1 - 1 / 256 and float(full.max()) <= 0.2 + 1 / 256
    uniform = sample_rounding_noise(x, step, -8, 7, "uniform")
    assert float(uniform.min()) < -0.4 and float(uniform.max()) > 0.4


def test_all_clipped_tensor_falls_back_to_uniform_noise():
    x = torch.full((100,), 10.0)
    noise = sample_rounding_noise(x, torch.tensor(0.1), -8, 7)
    assert float(noise.min()) >= -0.5 and float(noise.max()) < 0.5


def test_adaround_starts_at_the_float_weight_and_hardens_to_the_grid():
    torch.manual_seed(0)
    weight = torch.randn(16, 16) * 0.1
    quantizer = WeightQuantizer(4)
    quantizer.initialize(weight)
    quantizer.init_adaround(weight)
    step = quantizer.scale.detach()
    inside = (weight > -8 * step) & (weight < 7 * step)
    torch.testing.assert_close(quantizer(weight)[inside], weight[inside], atol=1e-5, rtol=0)
    hard = quantizer.hard_adaround(weight)
    assert quantizer.alpha is None and quantizer.mode == "nearest"
    torch.testing.assert_close(hard / step, (hard / step).round(), atol=1e-4, rtol=0)
    # Untrained V rounds to nearest (h(V) >= 0.5 <=> fractional part >= 0.5).
    torch.testing.assert_close(hard, quantizer(weight))


@pytest.mark.parametrize("bits", [1, 9, 0, 3.5, True, "4"])
def test_unsupported_bit_widths_are_config_errors(bits):
    with pytest.raises(ConfigError, match="between 2 and 8"):
        validate_bits(bits, "weight_bits")
    with pytest.raises(ConfigError):
        WeightQuantizer(bits)


def test_unknown_modes_are_config_errors():
    with pytest.raises(ConfigError, match="valid: float, nearest, adaround, noise"):
        WeightQuantizer(4).set_mode("stochastic")
    with pytest.raises(ConfigError, match="init_adaround"):
        WeightQuantizer(4).set_mode("adaround")
    with pytest.raises(ConfigError, match="histogram, uniform"):
        sample_rounding_noise(torch.randn(4), torch.tensor(1.0), -8, 7, "gaussian")


def test_inference_cache_follows_weight_and_step_changes():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 8))
    quantizer = WeightQuantizer(4)
    quantizer.initialize(weight)
    with torch.no_grad():
        first = quantizer(weight)
        assert quantizer(weight) is first  # cached
        weight.mul_(2)
        torch.testing.assert_close(quantizer(weight), fake_quantize(weight, quantizer.scale, -8, 7))
        quantizer.scale.mul_(0.5)
        torch.testing.assert_close(quantizer(weight), fake_quantize(weight, quantizer.scale, -8, 7))
        weight.data = torch.randn(8, 8)
        torch.testing.assert_close(quantizer(weight), fake_quantize(weight, quantizer.scale, -8, 7))
    quantizer.set_bits(2)
    with torch.no_grad():
        torch.testing.assert_close(quantizer(weight), fake_quantize(weight, quantizer.scale, -2, 1))
