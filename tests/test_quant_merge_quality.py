"""Label-free merge-quality score and error barrier on known cases."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from raysel.errors import ConfigError
from raysel.metrics import confusion_matrix, harmonic_mean, miou
from raysel.quant import merge_models, quantize_model
from raysel.quant.merge_quality import (agreement_score, barrier_of_path, error_barrier, merge_quality,
                                       predict_labels, specialist_references)

def pixel_classifier(seed: int, num_classes: int = 4) -> nn.Module:
    """A 1x1-conv per-pixel classifier: logits [B, C, H, W]."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, num_classes, 1)).eval()


def subset(seed: int, count: int = 3) -> torch.Tensor:
    return torch.randn(count, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("agreement", ["miou", "pixel"])
def test_identical_models_agree_fully_and_have_zero_barrier(agreement):
    model = pixel_classifier(0)
    targets = {"day": subset(1), "dusk": subset(2)}
    merged = merge_models([model, pixel_classifier(0)])
    quality = merge_quality(merged, {"day": model, "dusk": pixel_classifier(0)}, targets, agreement=agreement)
    assert quality.score == pytest.approx(1.0) and quality.per_target == {"day": 1.0, "dusk": 1.0}
    barrier = error_barrier(model, pixel_classifier(0), targets["day"], targets["dusk"], num_points=5)
    assert abs(barrier.barrier) < 1e-6 and len(barrier.losses) == 5
    assert barrier.losses == pytest.approx([barrier.losses[0]] * 5, abs=1e-6)


def test_score_is_the_harmonic_mean_of_per_target_agreement_with_each_specialist():
    day, dusk = pixel_classifier(0), pixel_classifier(1)
    targets = {"day": subset(1), "dusk": subset(2)}
    quality = merge_quality(day, {"day": day, "dusk": dusk}, targets, agreement="pixel")  # "merged" = day specialist
    expected_dusk = float((predict_labels(day, targets["dusk"]) == predict_labels(dusk, targets["dusk"])).float().mean())
    assert quality.per_target["day"] == 1.0
    assert quality.per_target["dusk"] == pytest.approx(expected_dusk)
    assert 0 < expected_dusk < 1
    assert quality.score == pytest.approx(harmonic_mean([1.0, expected_dusk]))
    miou_quality = merge_quality(day, {"day": day, "dusk": dusk}, targets)
    reference = predict_labels(dusk, targets["dusk"])
    assert miou_quality.per_target["dusk"] == pytest.approx(
        miou(confusion_matrix(predict_labels(day, targets["dusk"]), reference, 4)))


def test_agreement_on_hand_labels():
    predictions = torch.tensor([0, 0, 1, 1])
    reference = torch.tensor([0, 1, 1, 1])
    assert agreement_score(predictions, reference, 2, "pixel") == pytest.approx(0.75)
    # IoU class 0: 1 / 2, class 1: 2 / 3
    assert agreement_score(predictions, reference, 2, "miou") == pytest.approx((0.5 + 2 / 3) / 2)


def test_barrier_on_opposite_linear_models_is_log_classes_minus_endpoint_mean():
    # theta_b = -theta_a: the midpoint has zero logits, so its loss is exactly log C.
    torch.manual_seed(0)
    model_a = nn.Conv2d(3, 4, 1, bias=False).eval()
    model_a.weight.data *= 10  # confident endpoints: low loss, so the zero-logit midpoint is a real barrier
    model_b = nn.Conv2d(3, 4, 1, bias=False).eval()
    model_b.weight.data = -model_a.weight.data
    images_a, images_b = subset(1), subset(2)
    pseudo_a, pseudo_b = model_a(images_a).argmax(1), model_b(images_b).argmax(1)

    @torch.no_grad()
    def loss(model: nn.Module) -> float:
        return 0.5 * float(F.cross_entropy(model(images_a), pseudo_a) + F.cross_entropy(model(images_b), pseudo_b))

    barrier = error_barrier(model_a, model_b, images_a, images_b, num_points=3)
    assert barrier.t == [0.0, 0.5, 1.0]
    assert barrier.losses[1] == pytest.approx(math.log(4), abs=1e-6)
    assert barrier.losses[0] == pytest.approx(loss(model_a), abs=1e-6)
    # Eq. 2: the highest point of the path minus the mean of the two endpoint losses.
    endpoint_mean = 0.5 * (loss(model_a) + loss(model_b))
    assert barrier.baseline == pytest.approx(endpoint_mean, abs=1e-6)
    assert barrier.barrier == pytest.approx(max(loss(model_a), math.log(4), loss(model_b)) - endpoint_mean, abs=1e-6)


@torch.no_grad()
def test_barrier_between_permuted_copies_is_the_midpoint_loss_increase():
    # Permuting hidden units gives the same function (equal endpoint losses) but a different, worse midpoint:
    # the classic non-zero barrier of Frankle et al. / Git Re-Basin.
    torch.manual_seed(0)
    model_a = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    for module in model_a:
        if isinstance(module, nn.Conv2d):
            module.weight.mul_(4)
    permutation = torch.randperm(8)
    model_b = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    model_b[0].weight.copy_(model_a[0].weight[permutation])
    model_b[0].bias.copy_(model_a[0].bias[permutation])
    model_b[2].weight.copy_(model_a[2].weight[:, permutation])
    model_b[2].bias.copy_(model_a[2].bias)
    images_a, images_b = subset(1), subset(2)
    midpoint = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    for target, first, second in zip(midpoint.parameters(), model_a.parameters(), model_b.parameters()):
        target.copy_((first + second) / 2)

    def loss(model: nn.Module) -> float:  # pseudo-labels of the endpoints = model_a's (same function)
        return 0.5 * float(F.cross_entropy(model(images_a), model_a(images_a).argmax(1))
                           + F.cross_entropy(model(images_b), model_a(images_b).argmax(1)))

    barrier = error_barrier(model_a, model_b, images_a, images_b, num_points=3)
    assert barrier.losses[0] == pytest.approx(barrier.losses[2], abs=1e-6)
    assert barrier.barrier == pytest.approx(loss(midpoint) - loss(model_a), abs=1e-5)
    assert barrier.barrier > 0.05


@pytest.mark.parametrize("slope, expected", [(0.0, 0.0), (1.0, 0.5), (-3.0, 1.5)])
def test_barrier_of_a_linear_loss_is_half_the_endpoint_gap(slope, expected):
    # L(theta(t)) = 2 + slope * t: the path's maximum is an endpoint, so eq. 2 gives |L_a - L_b| / 2, the paper's lower
    # bound for unequal endpoint losses (§3.3). The old baseline (the chord (1 - t) L_a + t L_b) gave 0 here.
    losses = [2.0 + slope * t for t in torch.linspace(0, 1, 11).tolist()]
    assert barrier_of_path(losses) == pytest.approx(expected)


def test_barrier_of_a_quadratic_bump_is_its_height_above_the_endpoint_mean():
    # L(theta(t)) = 1 + t + 4 c t (1 - t): endpoints 1 and 2 (mean 1.5); maximum at t* = (4c + 1) / (8c).
    c = 2.0
    ts = torch.linspace(0, 1, 1601).tolist()
    t_star = (4 * c + 1) / (8 * c)
    peak = 1 + t_star + 4 * c * t_star * (1 - t_star)
    assert barrier_of_path([1 + t + 4 * c * t * (1 - t) for t in ts]) == pytest.approx(peak - 1.5, abs=1e-5)


def quantized_pair_with_ties(x: torch.Tensor) -> tuple[nn.Module, nn.Module]:
    """Two 4-bit quantized models with equal steps and on-grid weights, many of whose integer codes sum to an odd
    number (exact ties at t = 0.5), as BRECQ/QDrop store them."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    first = quantize_model(base, 4, 4, example_input=x[:1]).calibrate(x)
    second = copy.deepcopy(first)
    with torch.no_grad():
        for layer_a, layer_b in zip(first.quantized_layers().values(), second.quantized_layers().values()):
            step = layer_a.weight_quantizer.scale
            codes = layer_a.weight_quantizer.integer_weight(layer_a.weight)
            layer_a.weight.copy_(codes * step)
            shift = torch.randint(-2, 3, codes.shape, generator=torch.Generator().manual_seed(1))
            codes_b = torch.clamp(codes + shift, layer_a.weight_quantizer.qmin, layer_a.weight_quantizer.qmax)
            layer_b.weight.copy_(codes_b * step)
    return first, second


def off_grid_copy(model: nn.Module, seed: int) -> nn.Module:
    """The same deployed integers stored off the grid (W + u s, |u| < 0.4), as HDRQ's float weights are."""
    moved = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in moved.quantized_layers().values():
            offset = (torch.rand(layer.weight.shape, generator=generator) - 0.5) * 0.8
            layer.weight.add_(offset * layer.weight_quantizer.scale)
    return moved


def test_on_grid_and_off_grid_weights_deploying_the_same_integers_have_the_same_barrier():
    x = subset(4, count=4)
    on_a, on_b = quantized_pair_with_ties(x)
    off_a, off_b = off_grid_copy(on_a, 2), off_grid_copy(on_b, 3)
    for on, off in ((on_a, off_a), (on_b, off_b)):  # same deployed model
        assert torch.equal(on(x), off(x))
    on_grid = error_barrier(on_a, on_b, x[:2], x[2:], num_points=3)  # t = 0.5 hits the exact ties
    off_grid = error_barrier(off_a, off_b, x[:2], x[2:], num_points=3)
    assert on_grid.losses == pytest.approx(off_grid.losses, abs=1e-5)
    assert on_grid.barrier == pytest.approx(off_grid.barrier, abs=1e-5)


def test_classification_models_and_batches_work():
    torch.manual_seed(0)
    first, second = nn.Linear(5, 3).eval(), nn.Linear(5, 3).eval()
    batches = [torch.randn(4, 5), torch.randn(3, 5)]
    quality = merge_quality(first, {"a": first, "b": first}, {"a": batches, "b": torch.randn(6, 5)})
    assert quality.score == pytest.approx(1.0)
    assert error_barrier(first, second, batches).barrier >= 0.0


def test_quantized_identical_specialists_merge_with_full_agreement():
    x = subset(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 1), nn.ReLU(), nn.Conv2d(6, 4, 1)).eval()
    specialist = quantize_model(model, 4, 4, example_input=x[:1]).calibrate(x)
    merged = merge_models([specialist, quantize_model(model, 4, 4, example_input=x[:1]).calibrate(x)])
    quality = merge_quality(merged, {"a": specialist}, {"a": x})
    assert quality.score == pytest.approx(1.0)
    assert abs(error_barrier(specialist, merged, x).barrier) < 1e-6


def test_bad_inputs_are_config_errors():
    model = pixel_classifier(0)
    with pytest.raises(ConfigError, match="miou, pixel"):
        merge_quality(model, {"a": model}, {"a": subset(1)}, agreement="kappa")
    with pytest.raises(ConfigError, match="no unlabeled images given for target"):
        merge_quality(model, {"a": model, "b": model}, {"a": subset(1)})
    with pytest.raises(ConfigError, match="at least one target"):
        merge_quality(model, {}, {})
    with pytest.raises(ConfigError, match="num_points"):
        error_barrier(model, model, subset(1), num_points=1)


@pytest.mark.parametrize("agreement", ["miou", "pixel"])
def test_precomputed_references_give_the_same_quality_without_re_running_the_specialists(agreement):
    day, dusk = pixel_classifier(0), pixel_classifier(1)
    specialists = {"day": day, "dusk": dusk}
    targets = {"day": [subset(1), subset(5, count=2)], "dusk": subset(2, count=5)}
    merged = merge_models([day, dusk])
    references = specialist_references(specialists, targets, batch_size=2)
    assert references["dusk"].shape == (5, 6, 6)
    assert torch.equal(references["day"], predict_labels(day, targets["day"]))
    calls = []
    for model in specialists.values():
        model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    given = merge_quality(merged, specialists, targets, agreement=agreement, references=references)
    assert calls == []  # the specialists were not run again
    assert given == merge_quality(merged, specialists, targets, agreement=agreement)
    assert sum(calls) == 10  # without references each specialist predicts its own target's images


def test_references_of_other_targets_or_images_are_config_errors():
    day, dusk = pixel_classifier(0), pixel_classifier(1)
    specialists = {"day": day, "dusk": dusk}
    targets = {"day": subset(1), "dusk": subset(2)}
    references = specialist_references(specialists, targets)
    with pytest.raises(ConfigError, match="references are for target"):
        merge_quality(day, specialists, targets, references={"day": references["day"]})
    with pytest.raises(ConfigError, match="references are for target"):
        merge_quality(day, specialists, targets, references={**references, "night": references["day"]})
    with pytest.raises(ConfigError, match="reference labels of target 'dusk' have shape"):
        merge_quality(day, specialists, targets, references={**references, "dusk": references["dusk"][:2]})
    with pytest.raises(ConfigError, match="no unlabeled images given for target"):
        specialist_references(specialists, {"day": subset(1)})
