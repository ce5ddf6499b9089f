"""GPU switches: resolution per device, CPU runs identical to an explicit no-acceleration run, the autocast path
forced on CPU (bf16; fp16 with a gradient scaler), loader options, and the sweep's command-line switches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from raysel.errors import ConfigError
from raysel.methods import gsda, hiast, networks, optim, stages
from raysel.methods.acceleration import Acceleration, acceleration_from_arguments
from raysel.hyperparameters import config_from_dict
from raysel.methods.base import LocalSession, RunContext, RunSpec

ALL_OFF = {"amp": "off", "channels_last": "off", "pin_memory": "off", "persistent_workers": "off",
           "cudnn_benchmark": "off", "loader_workers": 0}


class RandomImages(Dataset):
    """Seeded random images with per-image (classification) or per-pixel (segmentation) labels."""

    def __init__(self, count: int, num_classes: int, size: tuple[int, int], segmentation: bool) -> None:
        generator = torch.Generator().manual_seed(3)
        self.images = torch.randn(count, 3, *size, generator=generator)
        shape = (count, *size) if segmentation else (count,)
        self.labels = torch.randint(0, num_classes, shape, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index], "index": index}


class TinyContext(RunContext):
    """A RunContext over in-memory random data (no data package, no Ray) with the given acceleration settings."""

    def __init__(self, root: Path, acceleration: dict, segmentation: bool = False) -> None:
        model = "small_segnet" if segmentation else "small_cnn"
        self.spec = RunSpec(method="test", dataset="random", model=model, seed=0, output_dir=str(root),
                            cache_dir=str(root / "cache"), acceleration=acceleration)
        self.session = LocalSession(checkpoint_root=str(root / "checkpoints"))
        self.task = "segmentation" if segmentation else "classification"
        self.num_classes = 19 if segmentation else 4
        self.source, self.target = "a", "b"
        self.data_root, self.output_dir, self.cache_dir = root, root, root / "cache"
        self.size = (32, 64) if segmentation else (32, 32)

    def source_dataset(self, split: str = "train") -> Dataset:
        return RandomImages(8, self.num_classes, self.size, self.task == "segmentation")

    def target_dataset(self) -> Dataset:
        return RandomImages(8, self.num_classes, self.size, self.task == "segmentation")


SOURCE = stages.SourceStageSettings(iterations=3, batch_size=4, photometric_ops=1)


def source_run(tmp_path: Path, acceleration: dict) -> dict:
    torch.manual_seed(0)
    return stages.train_on_source(TinyContext(tmp_path, acceleration), SOURCE)


def gsda_run(tmp_path: Path, acceleration: dict) -> tuple[LocalSession, torch.nn.Module]:
    ctx = TinyContext(tmp_path, acceleration)
    config = config_from_dict(gsda.GsdaConfig, dict(groups=2, iterations=3, batch_size=4, num_reports=1,
                                                    init_from_source=False, discriminator_hidden=16))
    model = gsda.train_gsda(config, ctx).model
    return ctx.session, model


def hiast_steps(tmp_path: Path, acceleration: dict, steps: int = 2) -> list[dict[str, float]]:
    """``steps`` real HIAST self-training iterations (no HPLA) on random pseudo-labels."""
    torch.manual_seed(0)
    ctx = TinyContext(tmp_path, acceleration, segmentation=True)
    config = hiast.HiastConfig(batch_size=2, iterations_per_round=steps)
    student = ctx.build_model(pretrained=False)
    networks.freeze_batchnorm(student)
    student.train()
    teacher = networks.make_ema_teacher(student)
    optimizer = optim.build_optimizer(student, config.learning_rate)
    scheduler = optim.build_scheduler(optimizer, steps)
    generator = torch.Generator().manual_seed(0)
    data = ctx.target_dataset()
    terms = []
    for step in range(steps):
        batch = {"image": data.images[2 * step:2 * step + 2], "pseudo_label": data.labels[2 * step:2 * step + 2],
                 "index": torch.arange(2 * step, 2 * step + 2)}
        terms.append(hiast.self_training_step(config, ctx, student, teacher, batch, None, generator, optimizer,
                                              scheduler))
    return terms


# ---------------------------------------------------------------------------------------------------- resolution


def test_auto_is_all_off_on_cpu() -> None:
    resolved = Acceleration().resolve(torch.device("cpu"))
    assert resolved.amp == "off" and resolved.dtype is None and resolved.scaler is None
    assert not (resolved.channels_last or resolved.pin_memory or resolved.persistent_workers
                or resolved.cudnn_benchmark)
    assert resolved.loader_options() == {"num_workers": 0}
    model = torch.nn.Conv2d(3, 4, 3)
    assert resolved.prepare_model(model) is model
    assert resolved.describe() == "amp off, 0 loader workers"


def test_auto_switches_turn_on_for_a_cuda_device() -> None:
    # amp is given explicitly: resolving "auto" asks the GPU whether it supports bf16.
    resolved = Acceleration(amp="off").resolve(torch.device("cuda"))
    assert resolved.channels_last and resolved.pin_memory and resolved.cudnn_benchmark
    assert 1 <= resolved.loader_workers <= 4 and resolved.persistent_workers
    assert resolved.loader_options() == {"num_workers": resolved.loader_workers, "pin_memory": True,
                                         "persistent_workers": True}
    no_workers = Acceleration(amp="off", loader_workers=0).resolve(torch.device("cuda"))
    assert not no_workers.persistent_workers  # DataLoader refuses persistent workers without workers
    assert Acceleration(amp="off", pin_memory="off").resolve(torch.device("cuda")).pin_memory is False


@pytest.mark.parametrize("values, message", [
    ({"amp": "fp8"}, "amp must be one of auto, bf16, fp16, off"),
    ({"channels_last": "yes"}, "channels_last must be one of auto, on, off"),
    ({"loader_workers": -1}, "loader_workers must be an integer >= 0"),
    ({"tf32": "on"}, "unknown acceleration setting(s) tf32"),
])
def test_invalid_settings_name_the_key(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Acceleration.from_dict(values)


# ---------------------------------------------------------------------------------------------------- CPU unchanged


def test_cpu_source_stage_is_identical_to_an_explicit_no_acceleration_run(tmp_path: Path) -> None:
    default = source_run(tmp_path / "default", {})
    plain = source_run(tmp_path / "plain", ALL_OFF)
    assert default["final_loss"] == plain["final_loss"]
    assert all(torch.equal(default["model"][key], plain["model"][key]) for key in plain["model"])


def test_cpu_gsda_and_hiast_are_identical_to_an_explicit_no_acceleration_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    default_session, default_model = gsda_run(tmp_path / "default", {})
    torch.manual_seed(0)
    plain_session, plain_model = gsda_run(tmp_path / "plain", ALL_OFF)
    assert default_session.reports[-1]["loss"] == plain_session.reports[-1]["loss"]
    plain_state = plain_model.state_dict()
    assert all(torch.equal(value, plain_state[key]) for key, value in default_model.state_dict().items())
    assert hiast_steps(tmp_path / "h-default", {}) == hiast_steps(tmp_path / "h-plain", ALL_OFF)


# ---------------------------------------------------------------------------------------------------- forced on CPU


def test_bf16_autocast_forced_on_cpu_trains_with_finite_losses(tmp_path: Path) -> None:
    forced = {"amp": "bf16", "channels_last": "on"}
    ctx = TinyContext(tmp_path, forced)
    assert ctx.acceleration.dtype is torch.bfloat16 and ctx.acceleration.scaler is None
    with ctx.acceleration.autocast():
        assert ctx.build_model(pretrained=False)(torch.randn(2, 3, 32, 32)).dtype is torch.bfloat16
    stage = source_run(tmp_path / "source", forced)
    assert torch.isfinite(torch.tensor(stage["final_loss"]))
    assert stage["final_loss"] != source_run(tmp_path / "fp32", ALL_OFF)["final_loss"]  # autocast really ran
    session, _ = gsda_run(tmp_path / "gsda", forced)
    assert torch.isfinite(torch.tensor(session.reports[-1]["loss"]))
    for terms in hiast_steps(tmp_path / "hiast", forced):
        assert all(torch.isfinite(torch.tensor(value)) for value in terms.values())


def test_fp16_goes_through_the_gradient_scaler(tmp_path: Path) -> None:
    resolved = Acceleration(amp="fp16").resolve(torch.device("cpu"))
    assert resolved.scaler is not None
    model = torch.nn.Linear(4, 2)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with resolved.autocast():
        loss = model(torch.randn(8, 4)).float().pow(2).mean()
    resolved.backward_step(loss, optimizer)
    assert torch.isfinite(loss) and not torch.equal(before, model.weight)
    assert resolved.scaler.get_scale() > 0


def test_loader_gets_workers_pinned_memory_and_persistent_workers(tmp_path: Path) -> None:
    ctx = TinyContext(tmp_path, {"loader_workers": 2, "persistent_workers": "on"})
    loader = ctx.loader(ctx.source_dataset(), 4)
    assert loader.num_workers == 2 and loader.persistent_workers
    plain = TinyContext(tmp_path, ALL_OFF).loader(ctx.source_dataset(), 4)
    for batch, expected in zip(loader, plain):  # same batches, same order, from worker processes
        assert torch.equal(batch["image"], expected["image"])


# ---------------------------------------------------------------------------------------------------- command line


def test_sweep_switches_reach_the_run_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raysel.sweep import build_parser, main

    args = build_parser().parse_args(["hiast", "--amp", "bf16", "--channels-last", "off", "--loader-workers", "2"])
    settings = acceleration_from_arguments(args)
    assert settings == {"amp": "bf16", "channels_last": "off", "pin_memory": "auto", "persistent_workers": "auto",
                        "cudnn_benchmark": "auto", "loader_workers": 2}
    assert RunSpec.from_dict(RunSpec(method="hiast", acceleration=settings).to_dict()).acceleration == settings
    with pytest.raises(SystemExit) as exit_info:
        main(["hiast", "--loader-workers", "-1", "--results", str(tmp_path / "results")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: loader_workers must be an integer >= 0 (or unset for auto), got -1"]
