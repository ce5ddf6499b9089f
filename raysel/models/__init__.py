"""Model registry: ``build_model(name, task, num_classes)`` for the segmentation and classification networks.

| task | name | default | what |
|---|---|---|---|
| segmentation | ``small_segnet`` | yes | :class:`~raysel.models.segmentation.SmallSegNet`, ~0.5M params, CPU-friendly |
| segmentation | ``deeplabv2_resnet101`` | | :class:`~raysel.models.segmentation.DeepLabV2` (HIAST, T2S-DA) |
| classification | ``small_cnn`` | yes | :class:`~raysel.models.classification.SmallCNN` for 32x32 digits |
| classification | ``resnet50`` | | :class:`~raysel.models.classification.ResNet50Classifier` (GSDA, HDRQ) |
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from raysel.errors import ConfigError, unknown_name_error
from raysel.models.base import ClassificationModel, FeatureModel, SegmentationModel, count_parameters
from raysel.models.classification import ResNet50Classifier, SmallCNN
from raysel.models.segmentation import DeepLabV2, SmallSegNet

__all__ = [
    "build_model", "model_names", "default_model_name", "count_parameters",
    "FeatureModel", "SegmentationModel", "ClassificationModel",
    "SmallSegNet", "DeepLabV2", "SmallCNN", "ResNet50Classifier",
]

# name -> builder(num_classes, pretrained); the first entry of each task is its default.
_BUILDERS: dict[str, dict[str, Callable[[int, bool], FeatureModel]]] = {
    "segmentation": {
        "small_segnet": lambda num_classes, pretrained: SmallSegNet(num_classes),
        "deeplabv2_resnet101": lambda num_classes, pretrained: DeepLabV2(num_classes, pretrained=pretrained),
    },
    "classification": {
        "small_cnn": lambda num_classes, pretrained: SmallCNN(num_classes),
        "resnet50": lambda num_classes, pretrained: ResNet50Classifier(num_classes, pretrained=pretrained),
    },
}


def _builders_for(task: str) -> dict[str, Callable[[int, bool], FeatureModel]]:
    if task not in _BUILDERS:
        raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(_BUILDERS)}")
    return _BUILDERS[task]


def model_names(task: str) -> list[str]:
    """Model names available for ``task`` ("segmentation" or "classification"), default first."""
    return list(_builders_for(task))


def default_model_name(task: str) -> str:
    """The CPU-friendly default model of ``task`` (small_segnet / small_cnn)."""
    return model_names(task)[0]


def build_model(name: str, task: str, num_classes: int, pretrained: bool = True) -> nn.Module:
    """Build model ``name`` for ``task`` with ``num_classes`` outputs; unknown names raise ConfigError listing valid ones.

    ``pretrained`` loads ImageNet backbone weights from the local torchvision cache when present (ResNet models
    only; nothing is downloaded, a missing file logs one warning line and leaves random initialisation).
    """
    builders = _builders_for(task)
    if name not in builders:
        raise unknown_name_error(f"{task} model", name, builders, "valid models")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return builders[name](num_classes, pretrained)
