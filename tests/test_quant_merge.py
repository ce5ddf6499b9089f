"""Merging: identical models, ties, HDRQ noise rounding with cosine rejection, BN moment matching, bad inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from raysel.errors import ConfigError
from raysel.models.base import SegmentationModel
from raysel.quant import (has_rounding_ties, interpolate_models, merge_batchnorm_statistics, merge_models,
                          merge_quantized_weights)
from raysel.quant import quantize_model

class TinyNet(SegmentationModel):
    def __init__(self, num_classes: int = 4, width: int = 6) -> None:
        super().__init__()
        self.num_classes, self.feature_dim = num_classes, width
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


def tiny(seed: int, num_classes: int = 4, width: int = 6) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet(num_classes, width)
    bn = model.features[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.num_batches_tracked.fill_(10 + seed)
    return model.eval()


def quantized(seed: int, bits: int = 4) -> nn.Module:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(99))
    return quantize_model(tiny(seed), bits, bits, example_input=x).calibrate(x)


@pytest.mark.parametrize("count", [2, 3])
def test_merging_identical_float_models_returns_the_same_weights(count):
    model = tiny(0)
    merged = merge_models([model] + [tiny(0) for _ in range(count - 1)])
    exact = count == 2  # (a + a) / 2 == a in floating point; thirds round
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert int(merged.state_dict()[key]) == count * int(value)
        else:
            torch.testing.assert_close(merged.state_dict()[key], value, atol=0 if exact else 1e-6,
                                       rtol=0 if exact else 1e-6, msg=key)
    assert merged is not model


def test_merging_averages_parameters_and_moment_matches_batchnorm():
    a, b = tiny(0), tiny(1)
    a.features[1].running_mean.fill_(0.0)
    a.features[1].running_var.fill_(1.0)
    a.features[1].num_batches_tracked.fill_(1)
    b.features[1].running_mean.fill_(2.0)
    b.features[1].running_var.fill_(1.0)
    b.features[1].num_batches_tracked.fill_(3)
    merged = merge_models([a, b])
    torch.testing.assert_close(merged.classifier.weight, (a.classifier.weight + b.classifier.weight) / 2)
    # weights n_k / N = 1/4, 3/4: mu = 1.5; var = 1/4 (1 + 1.5^2) + 3/4 (1 + 0.5^2) = 1.75
    torch.testing.assert_close(merged.features[1].running_mean, torch.full((6,), 1.5))
    torch.testing.assert_close(merged.features[1].running_var, torch.full((6,), 1.75))
    assert int(merged.features[1].num_batches_tracked) == 4


def test_batchnorm_moment_matching_formula_on_hand_values():
    mean, variance = merge_batchnorm_statistics(
        [torch.tensor([0.0, 1.0]), torch.tensor([4.0, 1.0])], [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 2.0])],
        weights=[1, 1])
    torch.testing.assert_close(mean, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(variance, torch.tensor([0.5 * (1 + 4) + 0.5 * (3 + 4), 2.0]))


def test_merging_identical_quantized_models_keeps_the_quantized_weights_and_outputs():
    model = quantized(0)
    merged = merge_models([model, quantized(0)], rounding="noise")
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(merged(x), model(x))
    for name, layer in model.quantized_layers().items():
        merged_layer = merged.quantized_layers()[name]
        torch.testing.assert_close(merged_layer.weight_quantizer.scale, layer.weight_quantizer.scale)
        torch.testing.assert_close(merged_layer.weight_quantizer.integer_weight(merged_layer.weight),
                                   layer.weight_quantizer.integer_weight(layer.weight))


def _hand_case():
    # Equal steps 1: integer sums 1, 2, 5, 8, 3 -> ties (odd sums) at elements 0, 2, 4.
    first = torch.tensor([0.0, 1.0, 2.0, 3.0, -2.0])
    second = torch.tensor([1.0, 1.0, 3.0, 5.0, 5.0])
    return [first, second], [torch.tensor(1.0), torch.tensor(1.0)]


def test_float_rounding_leaves_ties_to_round_half_even():
    weights, steps = _hand_case()
    merged, step = merge_quantized_weights(weights, steps, -8, 7, rounding="float")
    torch.testing.assert_close(merged, torch.tensor([0.5, 1.0, 2.5, 4.0, 1.5]))
    torch.testing.assert_close(torch.round(merged / step), torch.tensor([0.0, 1.0, 2.0, 4.0, 2.0]))


def test_noise_rounding_touches_only_ties_and_resolves_them_to_a_neighbour():
    weights, steps = _hand_case()
    seen = set()
    for seed in range(12):
        generator = torch.Generator().manual_seed(seed)
        merged, step = merge_quantized_weights(weights, steps, -8, 7, "noise", num_samples=5, generator=generator)
        integers = torch.round(merged / step)
        assert integers[1] == 1 and integers[3] == 4  # non-tie elements: the exact midpoint
        assert float((merged - torch.tensor([0.5, 1.0, 2.5, 4.0, 1.5])).abs().max()) <= 0.5
        assert integers[0] in (0, 1) and integers[2] in (2, 3) and integers[4] in (1, 2)
        seen.add(tuple(integers.tolist()))
    assert len(seen) > 1  # the ambiguity is resolved by sampling, not by a fixed rule


def _cosines(merged: torch.Tensor, step: torch.Tensor, weights: list[torch.Tensor]) -> list[float]:
    rounded = torch.round(merged / step) * step
    midpoint = sum(weights) / len(weights)
    return [float(F.cosine_similarity((rounded - w).flatten(), (midpoint - w).flatten(), dim=0).abs()) for w in weights]


def test_cosine_rejection_keeps_a_draw_at_least_as_good_as_the_first_for_every_model():
    torch.manual_seed(0)
    weights = [torch.randint(-8, 8, (64,)).float(), torch.randint(-8, 8, (64,)).float()]
    steps = [torch.tensor(1.0), torch.tensor(1.0)]
    first, step = merge_quantized_weights(weights, steps, -8, 7, "noise", 1, torch.Generator().manual_seed(3))
    best, _ = merge_quantized_weights(weights, steps, -8, 7, "noise", 50, torch.Generator().manual_seed(3))
    for cosine_best, cosine_first in zip(_cosines(best, step, weights), _cosines(first, step, weights)):
        assert cosine_best >= cosine_first - 1e-6


def test_three_models_have_no_ties_so_noise_equals_float_rounding():
    weights = [torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])]
    steps = [torch.tensor(1.0)] * 3
    noise, _ = merge_quantized_weights(weights, steps, -8, 7, "noise")
    plain, _ = merge_quantized_weights(weights, steps, -8, 7, "float")
    torch.testing.assert_close(noise, plain)


def test_noise_draws_can_differ_only_when_the_merge_has_ties():
    # Two quantized models have ties, so merge draws differ between seeds; three have none (odd count), so every
    # draw is the same merge and the benchmark's 30-draw mean needs one draw; float models never have ties.
    a, b, c = quantized(0), quantized(1), quantized(2)
    assert has_rounding_ties([a, b]) and not has_rounding_ties([a, b, c]) and not has_rounding_ties([tiny(0), tiny(1)])
    draws = [merge_models([a, b], rounding="noise", seed=seed) for seed in (0, 1)]
    assert any(not torch.equal(draws[0].quantized_layers()[n].weight, draws[1].quantized_layers()[n].weight)
               for n in draws[0].quantized_layers())
    odd = [merge_models([a, b, c], rounding="noise", seed=seed) for seed in (0, 1)]
    for name, layer in odd[0].quantized_layers().items():
        assert torch.equal(layer.weight, odd[1].quantized_layers()[name].weight)


def test_quantized_merge_averages_steps_and_is_seeded():
    a, b = quantized(0), quantized(1)
    merged = merge_models([a, b], rounding="noise", seed=5)
    again = merge_models([a, b], rounding="noise", seed=5)
    for name, layer in merged.quantized_layers().items():
        expected = (a.quantized_layers()[name].weight_quantizer.scale + b.quantized_layers()[name].weight_quantizer.scale) / 2
        torch.testing.assert_close(layer.weight_quantizer.scale, expected)
        torch.testing.assert_close(layer.weight, again.quantized_layers()[name].weight)
    for name, quantizer in merged.activation_quantizers().items():
        expected = (a.activation_quantizers()[name].scale + b.activation_quantizers()[name].scale) / 2
        torch.testing.assert_close(quantizer.scale, expected)


def test_interpolation_endpoints_are_the_models():
    a, b = tiny(0), tiny(1)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(interpolate_models([a, b], [1.0, 0.0])(x), a(x))
    torch.testing.assert_close(interpolate_models([a, b], [0.0, 1.0])(x), b(x))


def test_bad_merge_inputs_are_config_errors():
    with pytest.raises(ConfigError, match="at least two models"):
        merge_models([tiny(0)])
    with pytest.raises(ConfigError, match="at least two models"):
        merge_models([])
    with pytest.raises(ConfigError, match="different class counts: model 0 has 4, model 1 has 7"):
        merge_models([tiny(0), tiny(1, num_classes=7)])
    with pytest.raises(ConfigError, match="different architectures"):
        merge_models([tiny(0), tiny(1, width=8)])
    with pytest.raises(ConfigError, match="different types"):
        merge_models([tiny(0), nn.Sequential(nn.Conv2d(3, 4, 1))])
    with pytest.raises(ConfigError, match="different types"):
        merge_models([tiny(0), quantized(0)])
    with pytest.raises(ConfigError, match="different bit-widths"):
        merge_models([quantized(0, bits=4), quantized(1, bits=3)])
    with pytest.raises(ConfigError, match="valid: noise, float"):
        merge_models([tiny(0), tiny(1)], rounding="integer")
    with pytest.raises(ConfigError, match="num_samples"):
        merge_models([quantized(0), quantized(1)], num_samples=0)
