"""Post-training quantization toolkit: BN folding, fake quantizers, model wrapping, BRECQ/QDrop/HDRQ, merging.

Typical use (what the ``hdrq`` method module does)::

    quantized, report = quantize_and_reconstruct(adapted_model, target_images, PtqConfig(method="hdrq"),
                                                 base_model=source_model)
    merged = merge_models([quantized_city, quantized_idd], rounding="noise")
"""

from raysel.quant.fake_quant import ActivationQuantizer, WeightQuantizer, validate_bits
from raysel.quant.fold import fold_batchnorm
from raysel.quant.merge import (has_rounding_ties, interpolate_models, merge_batchnorm_statistics, merge_models,
                                merge_quantized_weights)
from raysel.quant.movement import reconstruction_movement
from raysel.quant.ptq_config import PTQ_METHODS, PtqConfig
from raysel.quant.reconstruct import output_error, quantize_and_reconstruct, reconstruct
from raysel.quant.reconstruction_loop import ReconstructionReport
from raysel.quant.wrap import QuantizedBlock, QuantizedLayer, QuantizedModel, quantize_model

__all__ = [
    "fold_batchnorm", "WeightQuantizer", "ActivationQuantizer", "validate_bits",
    "quantize_model", "QuantizedModel", "QuantizedLayer", "QuantizedBlock",
    "PtqConfig", "PTQ_METHODS", "ReconstructionReport", "reconstruct", "quantize_and_reconstruct", "output_error",
    "reconstruction_movement",
    "merge_models", "merge_quantized_weights", "has_rounding_ties", "merge_batchnorm_statistics", "interpolate_models",
]
