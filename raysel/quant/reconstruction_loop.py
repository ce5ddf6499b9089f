"""The block reconstruction loop shared by BRECQ, QDrop and HDRQ: capture a unit's inputs and the float model's
outputs on the calibration images, then minimise the reconstruction error (QDrop ``lp_loss``) with optional QDrop
input mixing, an extra loss term (rounding or distance regulariser) and learning-rate schedules; per-unit reports.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from raysel.errors import ConfigError
from raysel.quant.fake_quant import SCALE_FLOOR, ActivationQuantizer, WeightQuantizer
from raysel.quant.wrap import QuantizedLayer, QuantizedModel


@dataclass
class UnitReport:
    """Per-unit outcome: reconstruction error before (round-to-nearest) and after, iterations and loop time."""

    name: str
    phase: str
    iterations: int
    seconds: float
    initial_error: float
    final_error: float


@dataclass
class ReconstructionReport:
    """What ``reconstruct`` did; ``iterations_per_second`` is the optimisation loop speed (capture excluded)."""

    method: str
    units: list[UnitReport] = field(default_factory=list)
    movement: dict[str, Any] | None = None  # how far it moved the model (raysel.quant.movement); set when done

    @property
    def iterations_per_second(self) -> float:
        seconds = sum(unit.seconds for unit in self.units)
        return sum(unit.iterations for unit in self.units) / seconds if seconds > 0 else float("nan")


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """QDrop/BRECQ ``lp_loss`` with p=2: squared error summed over channels, mean over batch and positions."""
    return (prediction - target).pow(2).sum(1).mean()


class _StopForward(Exception):
    """Raised by capture hooks to end a forward pass once the unit's input/output is recorded."""


@dataclass
class UnitData:
    """Cached unit inputs (quantized model, float model) and float outputs over the calibration images."""

    quant_inputs: torch.Tensor
    float_inputs: torch.Tensor | None
    float_outputs: torch.Tensor

    @classmethod
    def capture(cls, name: str, quantized: QuantizedModel, float_model: QuantizedModel, images: torch.Tensor,
                batch_size: int, need_float_input: bool) -> "UnitData":
        """Record the unit's quantized inputs and the float model's outputs (and float inputs for QDrop mixing)."""
        quant_inputs, _ = capture_unit_io(quantized, name, images, batch_size, want_output=False)
        float_inputs, float_outputs = capture_unit_io(float_model, name, images, batch_size, want_output=True)
        return cls(quant_inputs, float_inputs if need_float_input else None, float_outputs)

    @torch.no_grad()
    def error(self, unit: nn.Module, batch_size: int) -> float:
        """Reconstruction loss of the unit in its current state on the quantized inputs (no dropping)."""
        drop = {quantizer: quantizer.drop_prob for quantizer in activation_quantizers(unit)}
        for quantizer in drop:
            quantizer.drop_prob = 1.0
        total = sum(float(reconstruction_loss(unit(inputs), outputs)) * len(inputs)
                    for inputs, outputs in zip(self.quant_inputs.split(batch_size), self.float_outputs.split(batch_size)))
        for quantizer, value in drop.items():
            quantizer.drop_prob = value
        return total / len(self.quant_inputs)


@torch.no_grad()
def capture_unit_io(model: QuantizedModel, name: str, images: torch.Tensor, batch_size: int,
             want_output: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``model`` on the images, recording the input (and output) of submodule ``name``; stops early."""
    unit = model.model.get_submodule(name)
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def pre_hook(module: nn.Module, args: tuple) -> None:
        if len(args) != 1 or not isinstance(args[0], torch.Tensor):
            raise ConfigError(f"reconstruction unit {name!r} must take exactly one tensor input")
        inputs.append(args[0].detach())
        if not want_output:
            raise _StopForward

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        outputs.append(output.detach())
        raise _StopForward

    handles = [unit.register_forward_pre_hook(pre_hook)]
    if want_output:
        handles.append(unit.register_forward_hook(hook))
    try:
        for batch in images.split(batch_size):
            try:
                model(batch)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
    if len(inputs) != len(images.split(batch_size)):
        raise ConfigError(f"reconstruction unit {name!r} did not run in the model's forward pass")
    return torch.cat(inputs), (torch.cat(outputs) if want_output else None)


def optimize_unit(unit: nn.Module, data: UnitData, iterations: int, batch_size: int, mix_prob: float | None,
              optimizers: list[torch.optim.Optimizer], schedulers: list, extra_loss: Callable[[int], torch.Tensor | float],
              steps: list[nn.Parameter], before_step: Callable[[int], None] | None = None) -> float:
    """The reconstruction loop; returns its wall time. ``mix_prob``: QDrop input mixing (None: quantized input).

    ``steps`` are the quantizer step parameters: made trainable here and kept positive after every update.
    """
    for parameter in steps:
        parameter.requires_grad_(True)
    count = data.quant_inputs.shape[0]
    device = data.quant_inputs.device
    start = time.perf_counter()
    for step in range(iterations):
        if before_step is not None:
            before_step(step)
        index = torch.randint(count, (batch_size,), device=device)
        inputs = data.quant_inputs[index]
        if mix_prob is not None and data.float_inputs is not None and mix_prob < 1.0:
            inputs = torch.where(torch.rand_like(inputs) < mix_prob, inputs, data.float_inputs[index])
        loss = reconstruction_loss(unit(inputs), data.float_outputs[index]) + extra_loss(step)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        with torch.no_grad():  # steps stay positive (LSQ code: scale.abs().clamp(min=eps))
            for parameter in steps:
                parameter.abs_().clamp_(min=SCALE_FLOOR)
    seconds = time.perf_counter() - start
    for parameter in steps:
        parameter.requires_grad_(False)
    return seconds


def cosine_schedule(optimizer: torch.optim.Optimizer, iterations: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine annealing to 0 over ``iterations`` (QDrop's CosineAnnealingLR, eta_min=0)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, iterations) / iterations)))


def cosine_with_warmup(optimizer: torch.optim.Optimizer, iterations: int, warmup: float,
                        start_multiplier: float) -> torch.optim.lr_scheduler.LambdaLR:
    """HDRQ's CosineWithWarmup: linear from ``start_multiplier`` x lr over ``warmup`` steps, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return start_multiplier + (1 - start_multiplier) * step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, iterations - warmup) / max(iterations - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def quantized_layers_of(unit: nn.Module) -> list[QuantizedLayer]:
    """The unit's quantized conv/linear layers (their weight quantizers are what the methods train)."""
    return [module for module in unit.modules() if isinstance(module, QuantizedLayer)]


def named_quantized_layers(unit: nn.Module, unit_name: str) -> list[tuple[str, QuantizedLayer]]:
    """QuantizedLayers of a unit with their full paths in the wrapped model."""
    return [(f"{unit_name}.{path}" if path else unit_name, module)
            for path, module in unit.named_modules() if isinstance(module, QuantizedLayer)]


def activation_quantizers(unit: nn.Module) -> list[ActivationQuantizer]:
    """The unit's activation quantizers (QDrop drops them elementwise; their steps are learned)."""
    return [module for module in unit.modules() if isinstance(module, ActivationQuantizer)]


def step_parameters(quantizers: list[ActivationQuantizer] | list[WeightQuantizer]) -> list[nn.Parameter]:
    """The step (scale) parameters of ``quantizers``, the LSQ parameters the loop keeps positive."""
    return [quantizer.scale for quantizer in quantizers]


def device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (CPU when it has none), where calibration data must live."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def log_unit(log: Callable[[str], None] | None, unit: UnitReport) -> None:
    """One progress line per reconstructed unit (errors before/after, speed) when a ``log`` callback is given."""
    if log is not None:
        log(f"{unit.phase:<20} {unit.name:<28} error {unit.initial_error:.4g} -> {unit.final_error:.4g} "
            f"({unit.iterations} it, {unit.iterations / max(unit.seconds, 1e-9):.1f} it/s)")
