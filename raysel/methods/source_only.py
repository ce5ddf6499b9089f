"""Source-only baseline: supervised training on the labelled source domain, no adaptation (both tasks).

Every sweep includes it as the reference point. Training is the shared stage
:func:`raysel.methods.stages.source_stage`, cached per (data, model, settings, seed) and *not* per target, so the
same network serves every target domain and is also the starting point of HIAST's adversarial warm-up when the
settings agree (the defaults do). Segmentation: pixel cross-entropy (ignore 255) with flip + scaled-crop
augmentation; classification: image cross-entropy with scaled crops; both with ``photometric_ops`` ops of the
strong-augmentation pool (colour jitter, blur, contrast, brightness, posterize, equalize, solarize, grey).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


from raysel.hyperparameters import check_fields
from raysel.methods import stages, training
from raysel.methods.base import RunContext
from raysel.methods.reports import LOSS, TARGET_CONFIDENCE, EpochReport
from raysel.methods.result import TrainResult
from raysel.registry import Method, register

__all__ = [
    "SourceOnlyConfig", "train_source_only",
]


@dataclass(frozen=True)
class SourceOnlyConfig:
    """Source-only hyperparameters: the shared source stage's settings, with its defaults and ranges
    (:class:`~raysel.methods.stages.SourceStageSettings`, sized for the embedded benchmarks on CPU)."""

    # Adam; DeepLab practice would be SGD 2.5e-4 with poly decay
    learning_rate: float = stages.source_stage_field("learning_rate")
    iterations: int = stages.source_stage_field("iterations")
    # None: 8 segmentation / 32 classification images
    batch_size: int | None = stages.source_stage_field("batch_size")
    optimizer: Literal["adam", "sgd"] = stages.source_stage_field("optimizer")
    weight_decay: float = stages.source_stage_field("weight_decay")
    schedule: Literal["cosine", "poly", "constant"] = stages.source_stage_field("schedule")
    # 0.1 for ImageNet backbones (DeepLab/DANN practice)
    backbone_lr_ratio: float = stages.source_stage_field("backbone_lr_ratio")
    freeze_batchnorm: bool = stages.source_stage_field("freeze_batchnorm")  # True for batch-1 DeepLab training
    photometric_ops: int = stages.source_stage_field("photometric_ops")  # 0 = geometric augmentation only

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid hyperparameter."""
        check_fields(self)
        self.settings().validate()

    def settings(self) -> stages.SourceStageSettings:
        """The shared source stage these hyperparameters describe."""
        return stages.SourceStageSettings(
            learning_rate=self.learning_rate, iterations=self.iterations, batch_size=self.batch_size,
            optimizer=self.optimizer, weight_decay=self.weight_decay, schedule=self.schedule,
            backbone_lr_ratio=self.backbone_lr_ratio, freeze_batchnorm=self.freeze_batchnorm,
            photometric_ops=self.photometric_ops)


def train_source_only(config: SourceOnlyConfig, ctx: RunContext) -> TrainResult:
    """Train (or fetch from the stage cache) the source-only model, report once with a checkpoint, return it."""
    config.validate()
    model = ctx.build_model(pretrained=False)
    restored = ctx.restore()
    if restored is not None:
        model.load_state_dict(restored["model"])
        model.eval()
        return TrainResult(model)
    watch = training.Stopwatch()
    with watch.time("source_stage"):
        stage = stages.source_stage(ctx, config.settings())
    model.load_state_dict(stage["model"])
    model.eval()
    report = EpochReport.from_measurements(round=1, epoch=1, iteration=config.iterations, measurements={
        LOSS: stage["final_loss"], TARGET_CONFIDENCE: training.target_confidence(model, ctx, ctx.target_dataset()),
        "seconds_source_stage": watch.seconds["source_stage"], "seconds_train_loop": stage.get("seconds", 0.0)})
    ctx.report(report, checkpoint_state={"model": model.state_dict(), "config": dataclasses.asdict(config)},
               model=model)
    return TrainResult(model)


register(Method(
    name="source_only",
    tasks=("segmentation", "classification"),
    config_class=SourceOnlyConfig,
    train=train_source_only,
    # No shared stage before the trials: the trial *is* the source stage (cached by its settings, built once under a
    # lock when trials share them). Pre-building it from the sweep's fixed values trained an unused model at the
    # default settings whenever the sweep varied the learning rate, length or weight decay.
    prepare_shared=None,
    description="Source-only baseline: cross-entropy on the labelled source domain, no adaptation",
))
