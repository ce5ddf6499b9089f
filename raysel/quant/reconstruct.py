"""Block-wise PTQ reconstruction on a few unlabeled target images: BRECQ, QDrop and HDRQ.

All three minimise, unit by unit in execution order, the reconstruction error of the unit's output against the
float model's output on the calibration images (QDrop ``lp_loss``: squared error summed over channels, averaged
over batch and positions). Inputs of a unit come from the quantized model with all earlier units already
reconstructed.

* **BRECQ** (Li et al. 2021): weights first, then activations, as two passes over all units. Weight pass:
  AdaRound ``h(V) = clamp(sigmoid(V)*1.2 - 0.1, 0, 1)`` with rounding loss ``round_loss_weight * sum(1 - |2h-1|^b)``
  after a warm-up fraction ``warm_up`` of the iterations, ``b`` decaying linearly 20 -> 2; activations off. Then
  hard rounding. Activation pass: LSQ steps only (``brecq_activation_lr``, ``activation_iterations``).
* **QDrop** (Wei et al. 2022): AdaRound and LSQ activation steps jointly; the unit input mixes quantized and float
  inputs elementwise, and each activation quantizer inside the unit quantizes an element with probability
  ``drop_prob`` (0.5) and keeps it float otherwise.
* **HDRQ** (Shin et al. 2025): QDrop's input mixing and dropping, but the *float weights and the weight steps* are
  optimised directly (no AdaRound) under noise-based pseudo-quantization of weights and activations (§4.1, eq. 9),
  plus the distance regulariser ``lambda_distance * sum_layers ||W - W_base||_F`` to the source model's folded
  weights (§4.2, eq. 10). As in the official code the norm is **not squared** (``.norm()``); the paper only says
  "l2-norm". For the last ``real_quant_fraction`` of the iterations the noise is switched off and real fake
  quantization (round-to-nearest, STE) is used. After reconstruction weights stay float and are rounded at
  inference with the learned step (code: ``get_hard_value`` is a no-op).

Paper vs code, and what the defaults follow (``PtqConfig.paper(...)`` gives the full-scale values):

* iterations per unit: paper and code 20000; default 300 (CPU-sized, about a minute for small_segnet).
* AdaRound lr on V: code 1e-3 (Adam default) over 20000 steps; default 1e-2, because V must travel ~2.4 to
  saturate ``h(V)`` within 300 steps (1e-3 leaves most rounding decisions at round-to-nearest).
* HDRQ weight lr: paper text 1e-3, code 1e-4 with a linear warm-up from 1e-3x over ``warm_up`` then cosine;
  default 1e-4 (code).
* HDRQ real-quantization phase: paper "last 3500 of 20000" (0.175), code last ``warm_up * iters`` = 4000 (0.2);
  default 0.2 (code).
* HDRQ noise: paper ``U[-s/2, s/2]``; code the 256-bin empirical rounding-error histogram; default histogram
  (code), ``noise="uniform"`` the paper's, ``noise="none"`` the ablation without noise.
* distance term: paper "l2-norm"; code ``||W - W_base||`` not squared; here not squared (code); lambda 5e-2.
* calibration: code 32 target images (activation observers see the first 8); default 8 (observers see 8).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from raysel.errors import ConfigError
from raysel.quant.fake_quant import ActivationQuantizer, WeightQuantizer, validate_bits
from raysel.quant.fold import fold_batchnorm
from raysel.quant.wrap import QuantizedLayer, QuantizedModel, quantize_model

PTQ_METHODS = ("brecq", "qdrop", "hdrq")
NOISE_CHOICES = ("histogram", "uniform", "none")
_SCALE_FLOOR = float(torch.finfo(torch.float32).eps)


@dataclass
class PtqConfig:
    """Post-training quantization settings (names follow QDrop/HDRQ's config); ``validate`` raises ConfigError."""

    method: str = "hdrq"                 # brecq | qdrop | hdrq
    weight_bits: int = 4
    activation_bits: int = 4
    iterations: int = 300                # per reconstruction unit (paper/code: 20000)
    activation_iterations: int | None = None  # BRECQ activation pass; None -> iterations // 4 (code: 5000)
    calibration_images: int = 8          # unlabeled target images (code: 32)
    activation_calibration_images: int = 8  # images the activation MSE observers see (code: 8)
    batch_size: int = 1                  # code: 1
    drop_prob: float = 0.5               # QDrop/HDRQ probability of quantizing an element
    warm_up: float = 0.2                 # AdaRound warm-up and HDRQ lr warm-up fraction
    round_loss_weight: float = 0.01      # AdaRound rounding-loss weight
    b_start: float = 20.0                # AdaRound b: 20 -> 2
    b_end: float = 2.0
    adaround_lr: float = 1e-2            # Adam on V; 1e-3 (QDrop) at 20000 iterations, see the table above
    activation_scale_lr: float = 4e-5    # Adam on activation steps, cosine to 0 (QDrop/HDRQ)
    brecq_activation_lr: float = 4e-4    # BRECQ activation pass
    weight_lr: float = 1e-4              # HDRQ float weights + weight steps (code 1e-4; paper text 1e-3)
    warmup_start_multiplier: float = 1e-3  # HDRQ lr warm-up starts at this fraction of weight_lr
    lambda_distance: float = 5e-2        # HDRQ distance regularisation weight (lambda)
    noise: str = "histogram"             # HDRQ noise: histogram (code) | uniform (paper) | none (ablation)
    real_quant_fraction: float = 0.2     # HDRQ final fraction with real fake quantization (code 0.2, paper 0.175)
    histogram_samples: int = 8192        # elements the noise histogram is estimated from per tensor (0: all, code)
    lp_norm: float = 2.4                 # MSE observer p
    first_last_bits: int = 8
    seed: int = 0

    @classmethod
    def paper(cls, method: str = "hdrq", weight_bits: int = 4, activation_bits: int = 4, **overrides) -> "PtqConfig":
        """Full-scale settings of the paper / official code (20000 iterations, 32 calibration images)."""
        values = dict(method=method, weight_bits=weight_bits, activation_bits=activation_bits, iterations=20000,
                      activation_iterations=5000, calibration_images=32, adaround_lr=1e-3)
        values.update(overrides)
        return cls(**values)

    def validate(self) -> "PtqConfig":
        """Check every field; raise ConfigError naming the key and the valid values."""
        if self.method not in PTQ_METHODS:
            raise ConfigError(f"unknown PTQ method {self.method!r}; valid: {', '.join(PTQ_METHODS)}")
        if self.noise not in NOISE_CHOICES:
            raise ConfigError(f"noise must be one of {', '.join(NOISE_CHOICES)}, got {self.noise!r}")
        validate_bits(self.weight_bits, "weight_bits")
        validate_bits(self.activation_bits, "activation_bits")
        validate_bits(self.first_last_bits, "first_last_bits")
        if isinstance(self.histogram_samples, bool) or not isinstance(self.histogram_samples, int) or self.histogram_samples < 0:
            raise ConfigError(f"histogram_samples must be an integer >= 0 (0: all elements), got {self.histogram_samples!r}")
        for name in ("iterations", "calibration_images", "activation_calibration_images", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.activation_iterations is not None and (not isinstance(self.activation_iterations, int)
                                                       or self.activation_iterations < 1):
            raise ConfigError(f"activation_iterations must be a positive integer or null, got {self.activation_iterations!r}")
        for name in ("drop_prob", "warm_up", "real_quant_fraction", "warmup_start_multiplier"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {value!r}")
        if self.drop_prob == 0.0:
            raise ConfigError("drop_prob must be > 0 (it is the probability of quantizing an element)")
        for name in ("round_loss_weight", "lambda_distance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("adaround_lr", "activation_scale_lr", "brecq_activation_lr", "weight_lr", "lp_norm", "b_start", "b_end"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        return self

    @property
    def brecq_activation_iterations(self) -> int:
        return self.activation_iterations or max(1, self.iterations // 4)


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

    @property
    def iterations_per_second(self) -> float:
        seconds = sum(unit.seconds for unit in self.units)
        return sum(unit.iterations for unit in self.units) / seconds if seconds > 0 else float("nan")


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """QDrop/BRECQ ``lp_loss`` with p=2: squared error summed over channels, mean over batch and positions."""
    return (prediction - target).pow(2).sum(1).mean()


def quantize_and_reconstruct(model: nn.Module, calibration_images: torch.Tensor, config: PtqConfig,
                             base_model: nn.Module | None = None,
                             log: Callable[[str], None] | None = None) -> tuple[QuantizedModel, ReconstructionReport]:
    """Fold + wrap ``model`` at the config's bits, MSE-calibrate on the images, then run the config's PTQ method."""
    config.validate()
    images = _calibration_subset(calibration_images, config)
    quantized = quantize_model(model, config.weight_bits, config.activation_bits,
                               example_input=images[:1], first_last_bits=config.first_last_bits)
    quantized.calibrate(images, activation_images=config.activation_calibration_images, p=config.lp_norm)
    return quantized, reconstruct(quantized, images, config, base_model=base_model, log=log)


def reconstruct(quantized: QuantizedModel, calibration_images: torch.Tensor, config: PtqConfig,
                base_model: nn.Module | None = None, log: Callable[[str], None] | None = None) -> ReconstructionReport:
    """Run BRECQ / QDrop / HDRQ block reconstruction in place on a calibrated ``quantized`` model.

    ``base_model`` is the source (pre-adaptation) model HDRQ's distance term pulls towards; it is required for
    ``method="hdrq"`` with ``lambda_distance > 0``. The model ends with round-to-nearest weights and activations.
    """
    config.validate()
    if not isinstance(quantized, QuantizedModel):
        raise ConfigError("reconstruct needs a QuantizedModel (from raysel.quant.quantize_model)")
    if (quantized.weight_bits, quantized.activation_bits) != (config.weight_bits, config.activation_bits):
        raise ConfigError(f"model is quantized at W{quantized.weight_bits}A{quantized.activation_bits} but the config "
                          f"asks for W{config.weight_bits}A{config.activation_bits}")
    images = _calibration_subset(calibration_images, config)
    base_weights = None
    if config.method == "hdrq" and config.lambda_distance > 0:
        if base_model is None:
            raise ConfigError("HDRQ distance regularisation (lambda_distance > 0) needs base_model, the source model; "
                              "pass it or set lambda_distance: 0")
        base_weights = _base_weights(quantized, base_model)
    device = _device_of(quantized)
    devices = [device.index or 0] if device.type == "cuda" else []
    trainable_before = {name: p.requires_grad for name, p in quantized.named_parameters()}
    report = ReconstructionReport(config.method)
    quantized.eval().requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)
            float_model = copy.deepcopy(quantized).set_quant_state(weights=False, activations=False)
            units = _units_in_execution_order(quantized, images[:1].to(device))
            _run_method(quantized, float_model, units, images.to(device), config, base_weights, report, log)
    finally:
        quantized.set_quant_state(weights=True, activations=True)
        for name, parameter in quantized.named_parameters():
            parameter.requires_grad_(trainable_before.get(name, False))
    return report


@torch.no_grad()
def output_error(model: nn.Module, reference: nn.Module, images: torch.Tensor, batch_size: int = 4) -> float:
    """Mean reconstruction loss between ``model`` and ``reference`` outputs over ``images`` (diagnostics, tests)."""
    device = _device_of(model)
    losses = [float(reconstruction_loss(model(batch.to(device)), reference(batch.to(device))))
              for batch in images.split(batch_size)]
    return sum(losses) / len(losses)


# ---------------------------------------------------------------------------------------------------------------
# method drivers


def _run_method(quantized: QuantizedModel, float_model: QuantizedModel, units: list[tuple[str, nn.Module]],
                images: torch.Tensor, config: PtqConfig, base_weights: dict[str, torch.Tensor] | None,
                report: ReconstructionReport, log: Callable[[str], None] | None) -> None:
    if config.method == "brecq":
        quantized.set_quant_state(weights=True, activations=False)
        for name, unit in units:
            report.units.append(_reconstruct_adaround(name, unit, quantized, float_model, images, config, joint=False))
            _log(log, report.units[-1])
        quantized.set_quant_state(weights=True, activations=True)
        for name, unit in units:
            report.units.append(_reconstruct_brecq_activations(name, unit, quantized, float_model, images, config))
            _log(log, report.units[-1])
    elif config.method == "qdrop":
        quantized.set_quant_state(weights=True, activations=True)
        for name, unit in units:
            report.units.append(_reconstruct_adaround(name, unit, quantized, float_model, images, config, joint=True))
            _log(log, report.units[-1])
    else:
        quantized.set_quant_state(weights=True, activations=True)
        for name, unit in units:
            report.units.append(_reconstruct_hdrq(name, unit, quantized, float_model, images, config, base_weights))
            _log(log, report.units[-1])


def _reconstruct_adaround(name: str, unit: nn.Module, quantized: QuantizedModel, float_model: QuantizedModel,
                          images: torch.Tensor, config: PtqConfig, joint: bool) -> UnitReport:
    """BRECQ weight pass (``joint=False``) or QDrop joint weights + activations with dropping (``joint=True``)."""
    data = _UnitData.capture(name, quantized, float_model, images, config.batch_size, need_float_input=joint)
    initial = data.error(unit, config.batch_size)
    layers = _layers(unit)
    for layer in layers:
        layer.weight_quantizer.init_adaround(layer.weight)
    alphas = [layer.weight_quantizer.alpha for layer in layers]
    optimizers = [torch.optim.Adam(alphas, lr=config.adaround_lr)]
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] = []
    quantizers = _activation_quantizers(unit)
    if joint and quantizers:
        for quantizer in quantizers:
            quantizer.drop_prob = config.drop_prob
        optimizers.append(torch.optim.Adam(_steps(quantizers), lr=config.activation_scale_lr))
        schedulers.append(_cosine(optimizers[-1], config.iterations))
    warm_up_end = config.warm_up * config.iterations

    def rounding_loss(step: int) -> torch.Tensor | float:
        # LinearTempDecay: b stays b_start during warm-up, then decays linearly to b_end; the loss starts after it.
        if step < warm_up_end:
            return 0.0
        progress = (step - warm_up_end) / max(config.iterations - warm_up_end, 1)
        b = config.b_end + (config.b_start - config.b_end) * max(0.0, 1.0 - progress)
        return config.round_loss_weight * sum(layer.weight_quantizer.rounding_regularizer(b) for layer in layers)

    seconds = _optimize(unit, data, config.iterations, config.batch_size, config.drop_prob if joint else None,
                        optimizers, schedulers, rounding_loss, _steps(quantizers) if joint else [])
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(layer.weight_quantizer.hard_adaround(layer.weight))
    for quantizer in quantizers:
        quantizer.drop_prob = 1.0
    return UnitReport(name, "weights+activations" if joint else "weights", config.iterations, seconds, initial,
                      data.error(unit, config.batch_size))


def _reconstruct_brecq_activations(name: str, unit: nn.Module, quantized: QuantizedModel, float_model: QuantizedModel,
                                   images: torch.Tensor, config: PtqConfig) -> UnitReport:
    """BRECQ activation pass: learn the LSQ steps of the unit with weights fixed (hard-rounded)."""
    data = _UnitData.capture(name, quantized, float_model, images, config.batch_size, need_float_input=False)
    initial = data.error(unit, config.batch_size)
    quantizers = _activation_quantizers(unit)
    iterations = config.brecq_activation_iterations
    seconds = 0.0
    if quantizers:
        optimizer = torch.optim.Adam(_steps(quantizers), lr=config.brecq_activation_lr)
        seconds = _optimize(unit, data, iterations, config.batch_size, None, [optimizer],
                            [_cosine(optimizer, iterations)], lambda step: 0.0, _steps(quantizers))
    return UnitReport(name, "activations", iterations if quantizers else 0, seconds, initial,
                      data.error(unit, config.batch_size))


def _reconstruct_hdrq(name: str, unit: nn.Module, quantized: QuantizedModel, float_model: QuantizedModel,
                      images: torch.Tensor, config: PtqConfig, base_weights: dict[str, torch.Tensor] | None) -> UnitReport:
    """HDRQ: noise-based pseudo-quantization, float weights + steps learned, distance to the source weights."""
    data = _UnitData.capture(name, quantized, float_model, images, config.batch_size, need_float_input=True)
    initial = data.error(unit, config.batch_size)
    layer_paths = _layer_paths(unit, name)
    layers = [layer for _, layer in layer_paths]
    quantizers = _activation_quantizers(unit)
    noise_mode = "nearest" if config.noise == "none" else "noise"
    for layer in layers:
        layer.weight_quantizer.noise_distribution = config.noise
        layer.weight_quantizer.histogram_samples = config.histogram_samples
        layer.weight_quantizer.set_mode(noise_mode)
        layer.weight.requires_grad_(True)
    for quantizer in quantizers:
        quantizer.noise_distribution = config.noise
        quantizer.histogram_samples = config.histogram_samples
        quantizer.set_mode(noise_mode)
        quantizer.drop_prob = config.drop_prob
    weight_steps = [layer.weight_quantizer.scale for layer in layers]
    weight_optimizer = torch.optim.Adam([layer.weight for layer in layers] + weight_steps, lr=config.weight_lr)
    optimizers = [weight_optimizer]
    schedulers = [_cosine_with_warmup(weight_optimizer, config.iterations, config.warm_up * config.iterations,
                                      config.warmup_start_multiplier)]
    if quantizers:
        optimizers.append(torch.optim.Adam(_steps(quantizers), lr=config.activation_scale_lr))
        schedulers.append(_cosine(optimizers[-1], config.iterations))
    switch_step = config.iterations - int(round(config.real_quant_fraction * config.iterations))
    base = [(layer, base_weights[path]) for path, layer in layer_paths] if base_weights is not None else []

    def switch_to_real_quantization(step: int) -> None:
        if step == switch_step:  # final phase: real fake quantization (round-to-nearest, STE)
            for quantizer in [layer.weight_quantizer for layer in layers] + quantizers:
                quantizer.set_mode("nearest")

    def distance_loss(step: int) -> torch.Tensor | float:
        if not base:
            return 0.0
        # eq. (10) motivation; not squared, as the official code's (W - W_base).norm()
        return config.lambda_distance * sum((layer.weight - weight).norm() for layer, weight in base)

    seconds = _optimize(unit, data, config.iterations, config.batch_size, config.drop_prob, optimizers, schedulers,
                        distance_loss, weight_steps + _steps(quantizers), before_step=switch_to_real_quantization)
    for layer in layers:
        layer.weight.requires_grad_(False)
        layer.weight_quantizer.set_mode("nearest")
    for quantizer in quantizers:
        quantizer.set_mode("nearest")
        quantizer.drop_prob = 1.0
    return UnitReport(name, "weights+activations", config.iterations, seconds, initial, data.error(unit, config.batch_size))


# ---------------------------------------------------------------------------------------------------------------
# shared pieces


class _StopForward(Exception):
    """Raised by capture hooks to end a forward pass once the unit's input/output is recorded."""


@dataclass
class _UnitData:
    """Cached unit inputs (quantized model, float model) and float outputs over the calibration images."""

    quant_inputs: torch.Tensor
    float_inputs: torch.Tensor | None
    float_outputs: torch.Tensor

    @classmethod
    def capture(cls, name: str, quantized: QuantizedModel, float_model: QuantizedModel, images: torch.Tensor,
                batch_size: int, need_float_input: bool) -> "_UnitData":
        quant_inputs, _ = _capture(quantized, name, images, batch_size, want_output=False)
        float_inputs, float_outputs = _capture(float_model, name, images, batch_size, want_output=True)
        return cls(quant_inputs, float_inputs if need_float_input else None, float_outputs)

    @torch.no_grad()
    def error(self, unit: nn.Module, batch_size: int) -> float:
        """Reconstruction loss of the unit in its current state on the quantized inputs (no dropping)."""
        drop = {quantizer: quantizer.drop_prob for quantizer in _activation_quantizers(unit)}
        for quantizer in drop:
            quantizer.drop_prob = 1.0
        total = sum(float(reconstruction_loss(unit(inputs), outputs)) * len(inputs)
                    for inputs, outputs in zip(self.quant_inputs.split(batch_size), self.float_outputs.split(batch_size)))
        for quantizer, value in drop.items():
            quantizer.drop_prob = value
        return total / len(self.quant_inputs)


@torch.no_grad()
def _capture(model: QuantizedModel, name: str, images: torch.Tensor, batch_size: int,
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


def _optimize(unit: nn.Module, data: _UnitData, iterations: int, batch_size: int, mix_prob: float | None,
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
                parameter.abs_().clamp_(min=_SCALE_FLOOR)
    seconds = time.perf_counter() - start
    for parameter in steps:
        parameter.requires_grad_(False)
    return seconds


def _cosine(optimizer: torch.optim.Optimizer, iterations: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine annealing to 0 over ``iterations`` (QDrop's CosineAnnealingLR, eta_min=0)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, iterations) / iterations)))


def _cosine_with_warmup(optimizer: torch.optim.Optimizer, iterations: int, warmup: float,
                        start_multiplier: float) -> torch.optim.lr_scheduler.LambdaLR:
    """HDRQ's CosineWithWarmup: linear from ``start_multiplier`` x lr over ``warmup`` steps, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return start_multiplier + (1 - start_multiplier) * step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, iterations - warmup) / max(iterations - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _layers(unit: nn.Module) -> list[QuantizedLayer]:
    return [module for module in unit.modules() if isinstance(module, QuantizedLayer)]


def _layer_paths(unit: nn.Module, unit_name: str) -> list[tuple[str, QuantizedLayer]]:
    """QuantizedLayers of a unit with their full paths in the wrapped model."""
    return [(f"{unit_name}.{path}" if path else unit_name, module)
            for path, module in unit.named_modules() if isinstance(module, QuantizedLayer)]


def _activation_quantizers(unit: nn.Module) -> list[ActivationQuantizer]:
    return [module for module in unit.modules() if isinstance(module, ActivationQuantizer)]


def _steps(quantizers: list[ActivationQuantizer] | list[WeightQuantizer]) -> list[nn.Parameter]:
    return [quantizer.scale for quantizer in quantizers]


def _units_in_execution_order(quantized: QuantizedModel, image: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Reconstruction units sorted by when they first run (earlier units feed later ones)."""
    units = quantized.reconstruction_units()
    order: dict[str, int] = {}

    def recorder(name: str) -> Callable:
        def record(module: nn.Module, args: tuple) -> None:  # must return None: a pre-hook's value replaces the input
            order.setdefault(name, len(order))
        return record

    handles = [unit.register_forward_pre_hook(recorder(name)) for name, unit in units]
    try:
        with torch.no_grad():
            quantized(image)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name, _ in units if name not in order]
    if missing:
        raise ConfigError(f"reconstruction unit(s) {', '.join(missing)} never run in the forward pass")
    return sorted(units, key=lambda item: order[item[0]])


def _base_weights(quantized: QuantizedModel, base_model: nn.Module) -> dict[str, torch.Tensor]:
    """Folded source-model weights by quantized-layer path (HDRQ folds and wraps the base model the same way)."""
    if isinstance(base_model, QuantizedModel):
        source = {name: layer.weight for name, layer in base_model.quantized_layers().items()}
    else:
        folded = fold_batchnorm(base_model)
        source = {}
        for name in quantized.quantized_layers():
            try:
                module = folded.get_submodule(name)
            except AttributeError:
                raise ConfigError(f"base_model has no layer {name!r}; it must have the quantized model's architecture") from None
            if isinstance(module, nn.Sequential):  # a ResNet downsample: Sequential(conv, folded BN)
                convs = [m for m in module.children() if isinstance(m, (nn.Conv2d, nn.Linear))]
                module = convs[0] if len(convs) == 1 else module
            source[name] = getattr(module, "weight", None)
    device = _device_of(quantized)
    weights = {}
    for name, layer in quantized.quantized_layers().items():
        weight = source.get(name)
        if weight is None or weight.shape != layer.weight.shape:
            raise ConfigError(f"base_model layer {name!r} does not match the quantized model "
                              f"(expected a weight of shape {tuple(layer.weight.shape)})")
        weights[name] = weight.detach().to(device).clone()
    return weights


def _calibration_subset(images: torch.Tensor, config: PtqConfig) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or images.shape[0] == 0:
        raise ConfigError("calibration_images must be a non-empty [N, ...] tensor of unlabeled target images")
    return images[:config.calibration_images]


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _log(log: Callable[[str], None] | None, unit: UnitReport) -> None:
    if log is not None:
        log(f"{unit.phase:<20} {unit.name:<28} error {unit.initial_error:.4g} -> {unit.final_error:.4g} "
            f"({unit.iterations} it, {unit.iterations / max(unit.seconds, 1e-9):.1f} it/s)")

