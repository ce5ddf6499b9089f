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

The settings, their defaults and where they follow the paper or the code: :mod:`raysel.quant.ptq_config`; the
shared capture-and-optimise loop: :mod:`raysel.quant.reconstruction_loop`.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from raysel.errors import ConfigError
from raysel.quant.fold import fold_batchnorm
from raysel.quant.movement import reconstruction_movement
from raysel.quant.ptq_config import PtqConfig
from raysel.quant.reconstruction_loop import (ReconstructionReport, UnitData, UnitReport, activation_quantizers,
                                              cosine_schedule, cosine_with_warmup, device_of, log_unit,
                                              named_quantized_layers, optimize_unit, quantized_layers_of,
                                              reconstruction_loss, step_parameters)
from raysel.quant.wrap import QuantizedModel, quantize_model

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
    ``method="hdrq"`` with ``lambda_distance > 0``. The model ends with round-to-nearest weights and activations;
    the report's ``movement`` says how far reconstruction moved it (:mod:`raysel.quant.movement`).
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
    device = device_of(quantized)
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
    # The float model is a copy of the calibrated start (weights, steps) that reconstruction never updates: the
    # reference of the movement, with no second copy. Read-only and RNG-free: the result is unchanged.
    report.movement = reconstruction_movement(float_model, quantized, float_weights_learned=config.method == "hdrq")
    return report


@torch.no_grad()
def output_error(model: nn.Module, reference: nn.Module, images: torch.Tensor, batch_size: int = 4) -> float:
    """Mean reconstruction loss between ``model`` and ``reference`` outputs over ``images`` (diagnostics, tests)."""
    device = device_of(model)
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
            log_unit(log, report.units[-1])
        quantized.set_quant_state(weights=True, activations=True)
        for name, unit in units:
            report.units.append(_reconstruct_brecq_activations(name, unit, quantized, float_model, images, config))
            log_unit(log, report.units[-1])
    elif config.method == "qdrop":
        quantized.set_quant_state(weights=True, activations=True)
        for name, unit in units:
            report.units.append(_reconstruct_adaround(name, unit, quantized, float_model, images, config, joint=True))
            log_unit(log, report.units[-1])
    else:
        quantized.set_quant_state(weights=True, activations=True)
        for name, unit in units:
            report.units.append(_reconstruct_hdrq(name, unit, quantized, float_model, images, config, base_weights))
            log_unit(log, report.units[-1])


def _reconstruct_adaround(name: str, unit: nn.Module, quantized: QuantizedModel, float_model: QuantizedModel,
                          images: torch.Tensor, config: PtqConfig, joint: bool) -> UnitReport:
    """BRECQ weight pass (``joint=False``) or QDrop joint weights + activations with dropping (``joint=True``)."""
    data = UnitData.capture(name, quantized, float_model, images, config.batch_size, need_float_input=joint)
    initial = data.error(unit, config.batch_size)
    layers = quantized_layers_of(unit)
    for layer in layers:
        layer.weight_quantizer.init_adaround(layer.weight)
    alphas = [layer.weight_quantizer.alpha for layer in layers]
    optimizers = [torch.optim.Adam(alphas, lr=config.adaround_lr)]
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] = []
    quantizers = activation_quantizers(unit)
    if joint and quantizers:
        for quantizer in quantizers:
            quantizer.drop_prob = config.drop_prob
        optimizers.append(torch.optim.Adam(step_parameters(quantizers), lr=config.activation_scale_lr))
        schedulers.append(cosine_schedule(optimizers[-1], config.iterations))
    warm_up_end = config.warm_up * config.iterations

    def rounding_loss(step: int) -> torch.Tensor | float:
        # LinearTempDecay: b stays b_start during warm-up, then decays linearly to b_end; the loss starts after it.
        if step < warm_up_end:
            return 0.0
        progress = (step - warm_up_end) / max(config.iterations - warm_up_end, 1)
        b = config.b_end + (config.b_start - config.b_end) * max(0.0, 1.0 - progress)
        return config.round_loss_weight * sum(layer.weight_quantizer.rounding_regularizer(b) for layer in layers)

    seconds = optimize_unit(unit, data, config.iterations, config.batch_size, config.drop_prob if joint else None,
                        optimizers, schedulers, rounding_loss, step_parameters(quantizers) if joint else [])
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
    data = UnitData.capture(name, quantized, float_model, images, config.batch_size, need_float_input=False)
    initial = data.error(unit, config.batch_size)
    quantizers = activation_quantizers(unit)
    iterations = config.brecq_activation_iterations
    seconds = 0.0
    if quantizers:
        optimizer = torch.optim.Adam(step_parameters(quantizers), lr=config.brecq_activation_lr)
        seconds = optimize_unit(unit, data, iterations, config.batch_size, None, [optimizer],
                            [cosine_schedule(optimizer, iterations)], lambda step: 0.0, step_parameters(quantizers))
    return UnitReport(name, "activations", iterations if quantizers else 0, seconds, initial,
                      data.error(unit, config.batch_size))


def _reconstruct_hdrq(name: str, unit: nn.Module, quantized: QuantizedModel, float_model: QuantizedModel,
                      images: torch.Tensor, config: PtqConfig, base_weights: dict[str, torch.Tensor] | None) -> UnitReport:
    """HDRQ: noise-based pseudo-quantization, float weights + steps learned, distance to the source weights."""
    data = UnitData.capture(name, quantized, float_model, images, config.batch_size, need_float_input=True)
    initial = data.error(unit, config.batch_size)
    layer_paths = named_quantized_layers(unit, name)
    layers = [layer for _, layer in layer_paths]
    quantizers = activation_quantizers(unit)
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
    weight_optimizer = torch.optim.Adam([layer.weight for layer in layers] + weight_steps, lr=config.effective_weight_lr)
    optimizers = [weight_optimizer]
    schedulers = [cosine_with_warmup(weight_optimizer, config.iterations, config.warm_up * config.iterations,
                                      config.warmup_start_multiplier)]
    if quantizers:
        optimizers.append(torch.optim.Adam(step_parameters(quantizers), lr=config.activation_scale_lr))
        schedulers.append(cosine_schedule(optimizers[-1], config.iterations))
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

    seconds = optimize_unit(unit, data, config.iterations, config.batch_size, config.drop_prob, optimizers, schedulers,
                        distance_loss, weight_steps + step_parameters(quantizers), before_step=switch_to_real_quantization)
    for layer in layers:
        layer.weight.requires_grad_(False)
        layer.weight_quantizer.set_mode("nearest")
    for quantizer in quantizers:
        quantizer.set_mode("nearest")
        quantizer.drop_prob = 1.0
    return UnitReport(name, "weights+activations", config.iterations, seconds, initial, data.error(unit, config.batch_size))


# ---------------------------------------------------------------------------------------------------------------
# the units, the base weights, the images


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
    device = device_of(quantized)
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
