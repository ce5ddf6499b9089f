"""Batch-norm folding: every Conv/Linear directly followed by a BatchNorm absorbs it; the BatchNorm becomes Identity.

HDRQ quantizes after folding ("Quantization is applied after folding batch normalization layers", paper §5), with
QDrop's ``fold_bn.py`` rule: a BatchNorm is folded into the Conv/Linear that is its *preceding sibling* in module
registration order (``nn.Sequential(conv, bn, relu)``, torchvision ``Bottleneck.conv1, bn1, ...``,
``downsample = Sequential(conv, bn)``). In eval mode the folded model computes the same function:

    W' = W * gamma / sqrt(var + eps)        (per output channel)
    b' = gamma * (b - mean) / sqrt(var + eps) + beta       (b = 0 when the layer had no bias)

BatchNorms that follow no Conv/Linear are left in place (``unfolded_batchnorms`` lists them); the quantization
wrapper refuses such models with a ConfigError.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from raysel.conventions import BATCHNORM_TYPES
from raysel.errors import ConfigError

FOLDABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm into the Conv/Linear registered right before it (eval-mode equivalent model).

    Returns the folded model (a deep copy unless ``inplace``); it is put in eval mode because the folded weights
    reproduce the BatchNorm's *running* statistics, not batch statistics.
    """
    folded = model if inplace else copy.deepcopy(model)
    _fold_children(folded, prefix="")
    return folded.eval()


def unfolded_batchnorms(model: nn.Module) -> list[str]:
    """Names of BatchNorm modules still present (not preceded by a Conv/Linear sibling)."""
    return [name for name, module in model.named_modules() if isinstance(module, BATCHNORM_TYPES)]


def fold_pair(layer: nn.Module, batchnorm: nn.Module, name: str = "") -> None:
    """Absorb ``batchnorm`` into ``layer`` in place (weights scaled per output channel, bias created if missing)."""
    if not batchnorm.track_running_stats or batchnorm.running_mean is None:
        raise ConfigError(f"BatchNorm {name!r} has no running statistics (track_running_stats=False); it cannot be folded")
    out_channels = layer.weight.shape[0]
    if batchnorm.num_features != out_channels:
        raise ConfigError(f"BatchNorm {name!r} has {batchnorm.num_features} features but the layer before it "
                          f"has {out_channels} output channels; cannot fold")
    with torch.no_grad():
        inverse_std = torch.rsqrt(batchnorm.running_var.double() + batchnorm.eps)
        gamma = batchnorm.weight.double() if batchnorm.affine else torch.ones_like(inverse_std)
        beta = batchnorm.bias.double() if batchnorm.affine else torch.zeros_like(inverse_std)
        factor = gamma * inverse_std
        old_bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(factor)
        new_weight = layer.weight.double() * factor.view(-1, *([1] * (layer.weight.dim() - 1)))
        new_bias = (old_bias - batchnorm.running_mean.double()) * factor + beta
        layer.weight.copy_(new_weight.to(layer.weight.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.to(layer.weight.dtype))
        else:
            layer.bias.copy_(new_bias.to(layer.bias.dtype))


def _fold_children(module: nn.Module, prefix: str) -> None:
    previous: tuple[str, nn.Module] | None = None
    for child_name, child in list(module.named_children()):
        full_name = f"{prefix}{child_name}"
        if isinstance(child, BATCHNORM_TYPES) and previous is not None and isinstance(previous[1], FOLDABLE_TYPES):
            fold_pair(previous[1], child, full_name)
            setattr(module, child_name, nn.Identity())
            previous = None  # a second BN in a row has nothing left to fold into
            continue
        _fold_children(child, prefix=f"{full_name}.")
        previous = (full_name, child)
