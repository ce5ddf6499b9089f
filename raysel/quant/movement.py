"""How far block reconstruction moved a quantized model from its calibrated start (the evidence of whether a PTQ
method's regularisers, e.g. HDRQ's noise and distance terms, changed the solution, not only its score).

Per quantized layer, start = the MSE-calibrated model with round-to-nearest weights (what reconstruction begins
from), end = the reconstructed model as deployed (round-to-nearest with its final step):

* ``codes_changed``: fraction of integer weight codes ``clamp(round(w/s), qmin, qmax)`` that differ between start
  and end. For BRECQ/QDrop (AdaRound, step fixed) these are the rounding decisions flipped against nearest; for
  HDRQ (float weights and step learned) every deployed code that moved.
* ``weight_step_movement`` / ``activation_step_movement``: ``|s_end - s_start| / s_start`` per weight quantizer /
  per activation quantizer (AdaRound keeps the weight step, so 0 there; LSQ learns activation steps in all three).
* ``dequantized_weight_movement``: ``||q_end - q_start|| / ||q_start||`` of the dequantized weights ``codes * s``,
  comparable across methods.
* ``weight_movement``: ``||w_end - w_start|| / ||w_start||`` of the float weights, only where reconstruction learns
  them (HDRQ); ``None`` otherwise (AdaRound replaces the float weight by its rounding, whose distance to the start
  is the quantization error, not a movement).

Each is the mean over layers (over activation quantizers for activation steps; unweighted, so small layers count
as much as large ones) with the per-layer maximum as ``<name>_max``.
"""

from __future__ import annotations

from typing import Any

import torch

from raysel.errors import ConfigError
from raysel.quant.wrap import QuantizedModel

MOVEMENT_MEASURES = ("codes_changed", "weight_step_movement", "activation_step_movement",
                     "dequantized_weight_movement", "weight_movement")


def relative_change(change: float, reference: float) -> float:
    """``change / reference``; 0 when nothing changed from a zero reference, infinite when something did."""
    if reference > 0:
        return change / reference
    return 0.0 if change == 0 else float("inf")


@torch.no_grad()
def reconstruction_movement(start: QuantizedModel, end: QuantizedModel,
                            float_weights_learned: bool) -> dict[str, Any]:
    """Mean and per-layer max of the module doc's measures between two identically wrapped models (start, end)."""
    start_layers, end_layers = start.quantized_layers(), end.quantized_layers()
    start_activations, end_activations = start.activation_quantizers(), end.activation_quantizers()
    if start_layers.keys() != end_layers.keys() or start_activations.keys() != end_activations.keys():
        raise ConfigError("reconstruction_movement needs two identically wrapped models (the same quantized layers)")
    per_layer: dict[str, list[float]] = {name: [] for name in MOVEMENT_MEASURES}
    for name, first in start_layers.items():
        last = end_layers[name]
        first_step, last_step = first.weight_quantizer.scale, last.weight_quantizer.scale
        first_codes = first.weight_quantizer.integer_weight(first.weight)
        last_codes = last.weight_quantizer.integer_weight(last.weight)
        per_layer["codes_changed"].append(float((first_codes != last_codes).float().mean()))
        per_layer["weight_step_movement"].append(relative_change(float((last_step - first_step).abs()),
                                                                 float(first_step)))
        first_dequantized = first_codes * first_step
        per_layer["dequantized_weight_movement"].append(relative_change(
            float((last_codes * last_step - first_dequantized).norm()), float(first_dequantized.norm())))
        if float_weights_learned:
            per_layer["weight_movement"].append(relative_change(float((last.weight - first.weight).norm()),
                                                                float(first.weight.norm())))
    for name, first in start_activations.items():
        per_layer["activation_step_movement"].append(relative_change(
            float((end_activations[name].scale - first.scale).abs()), float(first.scale)))
    summary: dict[str, Any] = {"layers": len(start_layers), "activation_quantizers": len(start_activations)}
    for measure, values in per_layer.items():
        # No value (float weights not learned, or a model without activation quantizers): None, shown as "—".
        summary[measure] = sum(values) / len(values) if values else None
        summary[f"{measure}_max"] = max(values) if values else None
    return summary
