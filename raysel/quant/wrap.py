"""Model wrapper: ``quantize_model(model, weight_bits, activation_bits) -> QuantizedModel``.

What it builds (QDrop/HDRQ's ``quantized_module`` layout, methods.md §2.1):

* The model is BN-folded (:func:`raysel.quant.fold.fold_batchnorm`, on a copy).
* Every ``nn.Conv2d`` / ``nn.Linear`` becomes a :class:`QuantizedLayer`: a weight fake-quantizer plus an output
  activation quantizer. A ``ReLU`` that directly follows it inside an ``nn.Sequential`` (after the folded BN's
  Identity) is fused into it, so the output quantizer sees post-ReLU values.
* torchvision ``BasicBlock`` / ``Bottleneck`` become a :class:`QuantizedBlock`: inner convs quantize their
  (ReLU) outputs; the last conv and the downsample do not; one quantizer sits after the residual add + ReLU.
* First and last layers: the first executed layer's weights and the head layers' weights (the layers run by
  ``model.head``, e.g. all four DeepLab-V2 ASPP branches, HDRQ's 8-bit ``conv_seg``) use 8 bits; the quantizer
  feeding the head uses 8 bits; head outputs (logits) are not quantized. The input image is not quantized (it is
  8-bit already).
* Layers it cannot quantize (any other module that owns parameters: ConvTranspose, Conv1d/3d, RNNs, LayerNorm,
  embeddings, a BatchNorm with no Conv/Linear before it, ...) are named in one ConfigError.

Reconstruction units (``QuantizedModel.reconstruction_units``): a ResNet block; otherwise a top-level child of
the network that holds quantized layers (the conv-BN-ReLU stages of the small nets, the ASPP head, the stem).
"""

from __future__ import annotations

from typing import Iterator

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from raysel.errors import ConfigError
from raysel.quant.fake_quant import ActivationQuantizer, WeightQuantizer, validate_bits
from raysel.quant.fold import fold_batchnorm, unfolded_batchnorms

QUANTIZABLE_TYPES = (nn.Conv2d, nn.Linear)
RESNET_BLOCK_TYPES = (torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck)
FIRST_LAST_BITS = 8


class QuantizedLayer(nn.Module):
    """Conv2d/Linear with a weight fake-quantizer, an optionally fused ReLU and an output activation quantizer."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, weight_bits: int, activation_bits: int | None, relu: bool) -> None:
        super().__init__()
        self.layer = layer
        self.relu = relu
        self.weight_quantizer = WeightQuantizer(weight_bits)
        self.output_quantizer = ActivationQuantizer(activation_bits) if activation_bits is not None else None

    @property
    def weight(self) -> nn.Parameter:
        return self.layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Layer with the fake-quantized weight, then ReLU (if fused), then output quantization."""
        weight = self.weight_quantizer(self.layer.weight)
        if isinstance(self.layer, nn.Conv2d):
            out = self.layer._conv_forward(x, weight, self.layer.bias)
        else:
            out = F.linear(x, weight, self.layer.bias)
        if self.relu:
            out = F.relu(out)
        return self.output_quantizer(out) if self.output_quantizer is not None else out


class QuantizedBlock(nn.Module):
    """A folded torchvision BasicBlock/Bottleneck with QDrop's quantizer placement and one output quantizer."""

    def __init__(self, block: nn.Module, weight_bits: int, activation_bits: int) -> None:
        super().__init__()
        convs = ["conv1", "conv2"] + (["conv3"] if hasattr(block, "conv3") else [])
        for index, name in enumerate(convs):
            inner = index < len(convs) - 1  # inner convs: ReLU fused and output quantized; the last conv: neither
            setattr(self, name, QuantizedLayer(getattr(block, name), weight_bits,
                                               activation_bits if inner else None, relu=inner))
        self.conv_names = tuple(convs)
        self.downsample = None
        if block.downsample is not None:
            downsample_conv = [m for m in block.downsample.children() if isinstance(m, nn.Conv2d)]
            if len(downsample_conv) != 1:
                raise ConfigError("a ResNet block's downsample must hold exactly one Conv2d (+ BatchNorm)")
            self.downsample = QuantizedLayer(downsample_conv[0], weight_bits, None, relu=False)
        self.output_quantizer = ActivationQuantizer(activation_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block: quantized convs, add the (downsampled) identity, ReLU, quantize the block output."""
        out = x
        for name in self.conv_names:
            out = getattr(self, name)(out)
        identity = self.downsample(x) if self.downsample is not None else x
        return self.output_quantizer(F.relu(out + identity))


class QuantizedModel(nn.Module):
    """A folded, quantizer-wrapped model; attributes the wrapped model has (``head``, ``num_classes``...) pass through.

    Typical use: ``q = quantize_model(m, 4, 4); q.calibrate(images); reconstruct(q, images, PtqConfig(...))``.
    """

    def __init__(self, model: nn.Module, weight_bits: int, activation_bits: int,
                 first_layers: tuple[str, ...], last_layers: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.weight_bits = weight_bits
        self.activation_bits = activation_bits
        self.first_layers = first_layers
        self.last_layers = last_layers

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(super().__getattr__("model"), name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's forward with fake quantization."""
        return self.model(x)

    def quantized_layers(self) -> dict[str, QuantizedLayer]:
        """Every QuantizedLayer by its path inside the wrapped model (the original Conv/Linear path)."""
        return {name: module for name, module in self.model.named_modules() if isinstance(module, QuantizedLayer)}

    def activation_quantizers(self) -> dict[str, ActivationQuantizer]:
        """Every activation quantizer by path."""
        return {name: module for name, module in self.model.named_modules() if isinstance(module, ActivationQuantizer)}

    def weight_quantizers(self) -> dict[str, WeightQuantizer]:
        """Every weight quantizer by its layer's path."""
        return {name: layer.weight_quantizer for name, layer in self.quantized_layers().items()}

    def set_quant_state(self, weights: bool, activations: bool) -> "QuantizedModel":
        """Turn weight (round-to-nearest) and activation quantization on or off everywhere; clears dropping/noise."""
        for quantizer in self.weight_quantizers().values():
            quantizer.alpha = None
            quantizer.set_mode("nearest" if weights else "float")
        for quantizer in self.activation_quantizers().values():
            quantizer.enabled, quantizer.drop_prob = activations, 1.0
            quantizer.set_mode("nearest")
        return self

    def reconstruction_units(self) -> list[tuple[str, nn.Module]]:
        """Units of block-wise reconstruction in registration order: ResNet blocks, else top-level children."""
        units: list[tuple[str, nn.Module]] = []

        def visit(module: nn.Module, prefix: str) -> None:
            for name, child in module.named_children():
                path = f"{prefix}{name}"
                if not any(isinstance(m, QuantizedLayer) for m in child.modules()):
                    continue
                if isinstance(child, (QuantizedLayer, QuantizedBlock)):
                    units.append((path, child))
                elif any(isinstance(m, QuantizedBlock) for m in child.modules()):
                    visit(child, f"{path}.")
                else:
                    units.append((path, child))

        visit(self.model, "")
        return units

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, activation_images: int = 8, p: float = 2.4, batch_size: int = 4) -> "QuantizedModel":
        """Initialise all steps with the MSE observer (L_p, p=2.4): weights from the weights, activations from the
        first ``activation_images`` images run in float (HDRQ: observers see 8 images); then quantize everything."""
        if images.dim() < 2 or images.shape[0] == 0:
            raise ConfigError("calibration needs at least one image (a [N, ...] tensor)")
        self.eval()
        for name, layer in self.quantized_layers().items():
            layer.weight_quantizer.initialize(layer.weight, p)
        self.set_quant_state(weights=False, activations=False)
        quantizers = self.activation_quantizers().values()
        for quantizer in quantizers:
            quantizer.start_observing()
        device = _device_of(self)
        for batch in images[:activation_images].split(batch_size):
            self.model(batch.to(device))
        for quantizer in quantizers:
            quantizer.finish_observing(p)
        return self.set_quant_state(weights=True, activations=True)


def quantize_model(model: nn.Module, weight_bits: int, activation_bits: int,
                   example_input: torch.Tensor | None = None, first_last_bits: int = FIRST_LAST_BITS) -> QuantizedModel:
    """Fold BN, wrap every Conv2d/Linear (and ResNet block) with fake quantizers; first/last layers at 8 bits.

    ``example_input`` (one small batch) is used once to find the first and the head layers by execution order;
    by default a 64x64 (or vector) random input shaped for the first layer. Steps are not calibrated yet: call
    ``QuantizedModel.calibrate``. Unsupported layers and bit-widths outside [2, 8] raise ConfigError.
    """
    validate_bits(weight_bits, "weight_bits")
    validate_bits(activation_bits, "activation_bits")
    validate_bits(first_last_bits, "first_last_bits")
    folded = fold_batchnorm(model)
    unsupported = [f"{name!r} (BatchNorm with no Conv/Linear before it; cannot be folded)"
                   for name in unfolded_batchnorms(folded)]
    unsupported += _unsupported_layers(folded)
    if unsupported:
        raise ConfigError("cannot quantize layer(s) " + ", ".join(unsupported)
                          + "; supported: Conv2d, Linear (BatchNorm folded into them), torchvision ResNet blocks")
    _wrap_children(folded, weight_bits, activation_bits)
    quantized = QuantizedModel(folded, weight_bits, activation_bits, (), ())
    if not quantized.quantized_layers():
        raise ConfigError(f"model {type(model).__name__} has no Conv2d/Linear layer to quantize")
    _assign_first_last(quantized, example_input, first_last_bits)
    return quantized.eval()


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _unsupported_layers(model: nn.Module) -> list[str]:
    """Modules owning parameters that the wrapper cannot quantize, as 'path' (Type) strings."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZABLE_TYPES) and type(module) in QUANTIZABLE_TYPES:
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)):  # subclasses may change forward; refuse rather than guess
            found.append(f"{name!r} ({type(module).__name__})")
            continue
        if any(True for _ in module.parameters(recurse=False)) or isinstance(module, (nn.RNNBase, nn.modules.conv._ConvNd)):
            found.append(f"{name!r} ({type(module).__name__})")
    return found


def _next_non_identity(siblings: list[tuple[str, nn.Module]], index: int) -> tuple[str, nn.Module] | None:
    for name, module in siblings[index + 1:]:
        if not isinstance(module, nn.Identity):
            return name, module
    return None


def _wrap_children(module: nn.Module, weight_bits: int, activation_bits: int) -> None:
    siblings = list(module.named_children())
    for index, (name, child) in enumerate(siblings):
        if isinstance(child, RESNET_BLOCK_TYPES):
            setattr(module, name, QuantizedBlock(child, weight_bits, activation_bits))
        elif isinstance(child, QUANTIZABLE_TYPES):
            # Fuse a following ReLU only inside nn.Sequential, where "follows" is guaranteed to mean "runs next".
            following = _next_non_identity(siblings, index) if isinstance(module, nn.Sequential) else None
            relu = following is not None and isinstance(following[1], nn.ReLU)
            if relu:
                setattr(module, following[0], nn.Identity())
            setattr(module, name, QuantizedLayer(child, weight_bits, activation_bits, relu=relu))
        else:
            _wrap_children(child, weight_bits, activation_bits)


def _default_example_input(quantized: QuantizedModel) -> torch.Tensor:
    first = next(iter(quantized.quantized_layers().values())).layer
    device = first.weight.device
    if isinstance(first, nn.Conv2d):
        return torch.randn(1, first.in_channels, 64, 64, device=device)
    return torch.randn(1, first.in_features, device=device)


@torch.no_grad()
def _assign_first_last(quantized: QuantizedModel, example_input: torch.Tensor | None, bits: int) -> None:
    """Trace one forward: first executed layer and head layers get ``bits``-bit weights; the quantizer feeding the
    head gets ``bits`` bits; head outputs are not quantized."""
    events: list[tuple[str, str]] = []
    handles = []
    for name, layer in quantized.quantized_layers().items():
        handles.append(layer.register_forward_pre_hook(lambda m, a, name=name: events.append(("layer", name))))
    for name, quantizer in quantized.activation_quantizers().items():
        handles.append(quantizer.register_forward_hook(lambda m, a, o, name=name: events.append(("act", name))))
    quantized.set_quant_state(weights=False, activations=False)
    x = example_input if example_input is not None else _default_example_input(quantized)
    inner = quantized.model
    try:
        if callable(getattr(inner, "forward_features", None)) and callable(getattr(inner, "head", None)):
            features = inner.forward_features(x)
            feature_events = len(events)
            inner.head(features)
            head_layers = [name for kind, name in events[feature_events:] if kind == "layer"]
            feeding = [name for kind, name in events[:feature_events] if kind == "act"][-1:]
        else:
            inner(x)
            layer_positions = [i for i, (kind, _) in enumerate(events) if kind == "layer"]
            head_layers = [events[layer_positions[-1]][1]] if layer_positions else []
            feeding = [name for kind, name in events[:layer_positions[-1]] if kind == "act"][-1:] if layer_positions else []
    finally:
        for handle in handles:
            handle.remove()
    layers = quantized.quantized_layers()
    executed = [name for kind, name in events if kind == "layer"]
    if not executed:
        raise ConfigError("no quantized layer ran in the example forward pass; pass example_input matching the model")
    first = executed[0]
    last = list(dict.fromkeys(head_layers)) or [executed[-1]]
    layers[first].weight_quantizer.set_bits(bits)
    for name in last:
        layers[name].weight_quantizer.set_bits(bits)
        layers[name].output_quantizer = None  # logits stay in float
    quantizers = quantized.activation_quantizers()
    for name in feeding:
        if name in quantizers:
            quantizers[name].set_bits(bits)
    quantized.first_layers, quantized.last_layers = (first,), tuple(last)
    quantized.set_quant_state(weights=True, activations=True)


def iter_layer_pairs(a: QuantizedModel, b: QuantizedModel) -> Iterator[tuple[str, QuantizedLayer, QuantizedLayer]]:
    """Matching QuantizedLayers of two identically wrapped models (same paths)."""
    layers_b = b.quantized_layers()
    for name, layer in a.quantized_layers().items():
        yield name, layer, layers_b[name]

