"""BN folding: eval-mode outputs preserved to 1e-5 on the small models and torchvision ResNet blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from raysel.errors import ConfigError
from raysel.models import build_model
from raysel.quant import fold_batchnorm, quantize_model
from raysel.quant.fold import BATCHNORM_TYPES, fold_pair, unfolded_batchnorms

def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding has something to do."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, BATCHNORM_TYPES):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.data.copy_(torch.rand(n, generator=generator) * 0.6 - 0.3)
    return model.eval()


def tiny_resnet() -> nn.Sequential:
    """A stem plus one BasicBlock and one Bottleneck with a downsample (torchvision's block classes)."""
    downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        BasicBlock(8, 8),
        Bottleneck(8, 4, stride=2, downsample=downsample),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


@pytest.mark.parametrize("name,task,shape", [
    ("small_segnet", "segmentation", (2, 3, 32, 64)),
    ("small_cnn", "classification", (3, 3, 32, 32)),
])
def test_folding_preserves_small_model_outputs(name, task, shape):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(name, task, num_classes=7))
    x = torch.randn(shape)
    folded = fold_batchnorm(model)
    assert unfolded_batchnorms(folded) == []
    assert not any(isinstance(m, BATCHNORM_TYPES) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=0)
    assert any(isinstance(m, BATCHNORM_TYPES) for m in model.modules()), "folding must not touch the input model"


def test_folding_preserves_resnet_block_outputs():
    torch.manual_seed(0)
    model = randomize_batchnorm(tiny_resnet())
    x = torch.randn(2, 3, 16, 16)
    folded = fold_batchnorm(model)
    assert unfolded_batchnorms(folded) == []
    assert isinstance(folded[4].downsample[1], nn.Identity)
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=0)


def test_fold_pair_matches_formula_on_hand_values():
    layer = nn.Linear(2, 2, bias=False)
    layer.weight.data = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    bn = nn.BatchNorm1d(2, eps=0.0)
    bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
    bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    bn.weight.data = torch.tensor([2.0, 1.0])
    bn.bias.data = torch.tensor([0.5, 0.0])
    fold_pair(layer, bn)
    # W' = W * gamma / sqrt(var); b' = beta - gamma * mean / sqrt(var)
    torch.testing.assert_close(layer.weight.data, torch.tensor([[1.0, 2.0], [6.0, 8.0]]))
    torch.testing.assert_close(layer.bias.data, torch.tensor([0.5 - 2.0 * 1.0 / 2.0, 0.0 + 1.0 * 1.0 / 0.5]))


def test_fold_keeps_existing_bias_and_handles_non_affine_batchnorm():
    torch.manual_seed(0)
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4, affine=False)))
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(fold_batchnorm(model)(x), model(x), atol=1e-5, rtol=0)


def test_batchnorm_without_preceding_layer_stays_and_quantization_refuses_it():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3))
    assert unfolded_batchnorms(fold_batchnorm(model)) == ["0"]
    with pytest.raises(ConfigError, match="'0'.*cannot be folded"):
        quantize_model(model, 4, 4)


def test_batchnorm_without_running_stats_is_a_config_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ConfigError, match="running statistics"):
        fold_batchnorm(model)
