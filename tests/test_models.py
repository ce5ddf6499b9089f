"""Model registry, shapes, parameter counts, parameter groups, ImageNet-cache loading and discriminators."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from raysel.errors import ConfigError, DataError
from raysel.models import build_model, count_parameters, default_model_name, model_names
from raysel.models.classification import ResNet50Classifier, SmallCNN
from raysel.models.discriminators import (
    DomainDiscriminator,
    GradientReversal,
    OutputSpaceDiscriminator,
    PatchDiscriminator,
    dann_coefficient,
    gradient_reversal,
)
from raysel.models.pretrained import imagenet_checkpoint_path
from raysel.models.segmentation import DeepLabV2, SmallSegNet

NUM_SEG_CLASSES = 19
NUM_CLS_CLASSES = 10


@pytest.fixture(autouse=True)
def _seed_and_empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic init, and a torch hub cache that is empty unless a test fills it (never the user's cache)."""
    torch.manual_seed(0)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def conv_params(in_channels: int, out_channels: int, kernel: int, bias: bool = True) -> int:
    return in_channels * out_channels * kernel * kernel + (out_channels if bias else 0)


def parameter_ids(parameters) -> list[int]:
    return [id(p) for p in parameters]


def assert_parameter_groups_partition(model: nn.Module) -> None:
    backbone = parameter_ids(model.backbone_parameters())
    head = parameter_ids(model.head_parameters())
    assert backbone and head
    assert not set(backbone) & set(head)
    assert sorted(backbone + head) == sorted(parameter_ids(model.parameters()))


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------


def test_model_names_and_defaults() -> None:
    assert model_names("segmentation") == ["small_segnet", "deeplabv2_resnet101"]
    assert model_names("classification") == ["small_cnn", "resnet50"]
    assert default_model_name("segmentation") == "small_segnet"
    assert default_model_name("classification") == "small_cnn"
    assert isinstance(build_model("small_segnet", "segmentation", 5), SmallSegNet)
    assert isinstance(build_model("small_cnn", "classification", 5), SmallCNN)


def test_unknown_model_name_lists_valid_names_for_the_task() -> None:
    with pytest.raises(ConfigError, match="unknown segmentation model 'resnet50'.*small_segnet, deeplabv2_resnet101"):
        build_model("resnet50", "segmentation", 19)
    with pytest.raises(ConfigError, match="small_cnn, resnet50"):
        build_model("nope", "classification", 10)


def test_unknown_task_and_bad_num_classes_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown task 'detection'.*segmentation, classification"):
        model_names("detection")
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("small_segnet", "segmentation", 0)


# ---------------------------------------------------------------------------------------------------------------
# SmallSegNet
# ---------------------------------------------------------------------------------------------------------------


def test_small_segnet_shapes_and_contract() -> None:
    model = SmallSegNet(NUM_SEG_CLASSES).eval()
    x = torch.randn(2, 3, 48, 96)
    with torch.no_grad():
        features = model.forward_features(x)
        logits_low = model.head(features)
        logits = model(x)
    assert model.feature_dim == 64
    assert features.shape == (2, 64, 12, 24)  # output stride 4
    assert logits_low.shape == (2, NUM_SEG_CLASSES, 12, 24)
    assert logits.shape == (2, NUM_SEG_CLASSES, 48, 96)
    expected = F.interpolate(logits_low, size=(48, 96), mode="bilinear", align_corners=True)
    torch.testing.assert_close(logits, expected)


def test_small_segnet_odd_input_size_and_batch_of_one_in_train_mode() -> None:
    model = SmallSegNet(NUM_SEG_CLASSES).train()
    logits = model(torch.randn(1, 3, 37, 53))  # batch 1 must train (no BN on the pooled 1x1 branch)
    assert logits.shape == (1, NUM_SEG_CLASSES, 37, 53)


def test_small_segnet_parameter_count_and_groups() -> None:
    model = SmallSegNet(NUM_SEG_CLASSES)
    assert 300_000 <= count_parameters(model) <= 1_000_000
    assert_parameter_groups_partition(model)


def test_small_segnet_backward_reaches_every_parameter() -> None:
    model = SmallSegNet(4).train()
    target = torch.randint(0, 4, (2, 32, 64))
    target[:, :4] = 255
    F.cross_entropy(model(torch.randn(2, 3, 32, 64)), target, ignore_index=255).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_freeze_batchnorm_survives_train_and_keeps_running_stats() -> None:
    model = SmallSegNet(4).freeze_batchnorm()
    model.train()
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not bn.training for bn in batchnorms)
    assert all(not p.requires_grad for bn in batchnorms for p in bn.parameters())
    before = batchnorms[0].running_mean.clone()
    model(torch.randn(2, 3, 32, 32) * 5 + 3)
    torch.testing.assert_close(batchnorms[0].running_mean, before)
    assert model.classifier.weight.requires_grad and model.classifier.training
    model.freeze_batchnorm(False)
    assert all(bn.training and bn.weight.requires_grad for bn in batchnorms)


# ---------------------------------------------------------------------------------------------------------------
# DeepLab-V2 / ResNet-101
# ---------------------------------------------------------------------------------------------------------------


def test_deeplabv2_structure_shapes_and_parameter_count() -> None:
    model = build_model("deeplabv2_resnet101", "segmentation", NUM_SEG_CLASSES, pretrained=False).eval()
    assert isinstance(model, DeepLabV2)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        features = model.forward_features(x)
        logits = model(x)
        summed = sum(branch(features) for branch in model.classifier.branches)
        torch.testing.assert_close(model.head(features), summed)  # all four branches summed
    assert features.shape == (1, 2048, 8, 8)  # output stride 8
    assert logits.shape == (1, NUM_SEG_CLASSES, 64, 64)

    resnet101 = torchvision.models.resnet101(weights=None)
    expected = count_parameters(resnet101) - count_parameters(resnet101.fc) + 4 * conv_params(2048, NUM_SEG_CLASSES, 3)
    assert count_parameters(model) == expected
    assert_parameter_groups_partition(model)
    assert parameter_ids(model.head_parameters()) == parameter_ids(model.classifier.parameters())


def test_deeplabv2_dilations_match_hiast_and_aspp_init() -> None:
    model = DeepLabV2(NUM_SEG_CLASSES, pretrained=False)
    layer3, layer4 = model.backbone.layer3, model.backbone.layer4
    # HIAST's _nostride_dilate: first block of layer3 keeps dilation 1, the rest 2; layer4: first 2, rest 4.
    assert (layer3[0].conv2.dilation, layer3[1].conv2.dilation) == ((1, 1), (2, 2))
    assert (layer4[0].conv2.dilation, layer4[-1].conv2.dilation) == ((2, 2), (4, 4))
    assert all(m.stride == (1, 1) for m in [*layer3.modules(), *layer4.modules()] if isinstance(m, nn.Conv2d))
    assert [b.dilation[0] for b in model.classifier.branches] == [6, 12, 18, 24]
    weights = torch.cat([b.weight.flatten() for b in model.classifier.branches])
    assert weights.std().item() == pytest.approx(0.01, rel=0.02)
    assert all(torch.count_nonzero(b.bias) == 0 for b in model.classifier.branches)


def test_missing_imagenet_weights_warn_once_and_use_random_init(caplog: pytest.LogCaptureFixture) -> None:
    path = imagenet_checkpoint_path(torchvision.models.ResNet101_Weights.IMAGENET1K_V1)
    assert path.parent == Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    assert path.name == "resnet101-63fe2227.pth"
    with caplog.at_level(logging.WARNING, logger="raysel.models.pretrained"):
        build_model("deeplabv2_resnet101", "segmentation", NUM_SEG_CLASSES, pretrained=True)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"ImageNet weights for resnet101 not found in {path}; starting from random initialisation"]
    assert not path.exists()  # nothing was downloaded


def test_cached_imagenet_weights_are_loaded_for_resnet101(caplog: pytest.LogCaptureFixture) -> None:
    source = torchvision.models.resnet101(weights=None)
    with torch.no_grad():
        source.bn1.running_mean.uniform_(-1, 1)  # a buffer too, so buffers are proven to load
    path = imagenet_checkpoint_path(torchvision.models.ResNet101_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        model = DeepLabV2(NUM_SEG_CLASSES, pretrained=True)
    assert not caplog.records
    torch.testing.assert_close(model.backbone.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[2].conv3.weight, source.layer4[2].conv3.weight)
    torch.testing.assert_close(model.backbone.bn1.running_mean, source.bn1.running_mean)


def test_corrupt_or_mismatched_cached_weights_raise_data_error() -> None:
    path = imagenet_checkpoint_path(torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read ImageNet weights .*resnet50-0676ba61.pth"):
        ResNet50Classifier(NUM_CLS_CLASSES, pretrained=True)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(DataError, match="do not fit resnet50"):
        ResNet50Classifier(NUM_CLS_CLASSES, pretrained=True)


# ---------------------------------------------------------------------------------------------------------------
# Classification models
# ---------------------------------------------------------------------------------------------------------------


def test_small_cnn_shapes_parameter_count_and_groups() -> None:
    model = SmallCNN(NUM_CLS_CLASSES).train()
    x = torch.randn(4, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (4, model.feature_dim) == (4, 128)
    assert model.head(features).shape == (4, NUM_CLS_CLASSES)
    torch.testing.assert_close(model(x), model.head(model.forward_features(x)))
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, NUM_CLS_CLASSES)  # other digit sizes work too
    assert 100_000 <= count_parameters(model) <= 300_000
    assert_parameter_groups_partition(model)


def test_resnet50_classifier_bottleneck_and_parameter_count() -> None:
    model = build_model("resnet50", "classification", NUM_CLS_CLASSES, pretrained=False).eval()
    assert isinstance(model, ResNet50Classifier)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (1, 256) and model.feature_dim == 256
    assert logits.shape == (1, NUM_CLS_CLASSES)
    resnet50 = torchvision.models.resnet50(weights=None)
    backbone = count_parameters(resnet50) - count_parameters(resnet50.fc)
    bottleneck = 2048 * 256 + 256 + 2 * 256  # Linear + BatchNorm1d affine
    assert count_parameters(model) == backbone + bottleneck + 256 * NUM_CLS_CLASSES + NUM_CLS_CLASSES
    assert_parameter_groups_partition(model)
    assert parameter_ids(model.backbone_parameters()) == parameter_ids(model.backbone.parameters())

    plain = ResNet50Classifier(NUM_CLS_CLASSES, pretrained=False, bottleneck_dim=0).eval()
    with torch.no_grad():
        assert plain.forward_features(x).shape == (1, 2048) and plain.feature_dim == 2048


# ---------------------------------------------------------------------------------------------------------------
# Discriminators and gradient reversal
# ---------------------------------------------------------------------------------------------------------------


def test_output_space_discriminator_matches_adaptsegnet() -> None:
    discriminator = OutputSpaceDiscriminator(NUM_SEG_CLASSES)  # ndf 64, the paper width
    widths = [NUM_SEG_CLASSES, 64, 128, 256, 512, 1]
    assert count_parameters(discriminator) == sum(conv_params(a, b, 4) for a, b in zip(widths, widths[1:]))
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert all(m.negative_slope == 0.2 for m in discriminator.modules() if isinstance(m, nn.LeakyReLU))

    narrow = OutputSpaceDiscriminator(NUM_SEG_CLASSES, ndf=8)
    probabilities = torch.softmax(torch.randn(2, NUM_SEG_CLASSES, 64, 128), dim=1)
    assert narrow(probabilities).shape == (2, 1, 2, 4)
    iast = OutputSpaceDiscriminator(NUM_SEG_CLASSES, ndf=8, first_kernel_size=3)
    assert iast.features[0].kernel_size == (3, 3)
    assert iast(probabilities).shape == (2, 1, 2, 4)


def test_patch_discriminator_conditioning_and_errors() -> None:
    discriminator = PatchDiscriminator(NUM_SEG_CLASSES, num_positions=9, ndf=8, embedding_dim=16)
    patches = torch.softmax(torch.randn(4, NUM_SEG_CLASSES, 24, 48), dim=1)
    positions = torch.tensor([0, 3, 5, 8])
    logits = discriminator(patches, positions)
    assert logits.shape == (4,)
    same_patch = patches[:1].expand(2, -1, -1, -1)
    two_positions = discriminator(same_patch, torch.tensor([1, 2]))
    assert not torch.allclose(two_positions[0], two_positions[1])  # the position k changes the score
    logits.sum().backward()
    assert discriminator.position_embedding.weight.grad is not None
    with pytest.raises(ValueError, match="conditional"):
        discriminator(patches)
    with pytest.raises(ValueError, match="at least 16x16"):
        discriminator(patches[..., :8, :8], positions)
    unconditional = PatchDiscriminator(NUM_SEG_CLASSES, ndf=8)
    assert unconditional(patches).shape == (4,)
    assert count_parameters(PatchDiscriminator(19, num_positions=9)) == (
        sum(conv_params(a, b, 4) for a, b in zip([19, 64, 128, 256], [64, 128, 256, 512])) + 512 + 1 + 9 * 256 + 512 * 256
    )


def test_domain_discriminator_shape_and_parameter_count() -> None:
    discriminator = DomainDiscriminator(256, hidden=1024)
    assert discriminator(torch.randn(5, 256)).shape == (5,)
    assert count_parameters(discriminator) == (256 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 + 1)


def test_gradient_reversal_negates_and_scales_gradient() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    layer = GradientReversal(coefficient=0.5)
    y = layer(x)
    torch.testing.assert_close(y, x)
    (y * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * torch.arange(4.0).expand(3, 4))
    layer.coefficient = 2.0
    x.grad = None
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3, 4), -2.0))
    x.grad = None
    gradient_reversal(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3, 4), -1.0))


def test_dann_coefficient_schedule() -> None:
    assert dann_coefficient(0.0) == 0.0
    assert dann_coefficient(1.0) == pytest.approx(2 / (1 + torch.exp(torch.tensor(-10.0)).item()) - 1)
    values = [dann_coefficient(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] < 1.0
