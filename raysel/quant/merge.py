"""Model merging for multi-target DA: mid-point weight averaging (Li et al. 2024) and HDRQ's quantized merging.

* Float models: every parameter is averaged with equal weights; BatchNorm running statistics are merged by moment
  matching of the Gaussian mixture, weighted by each model's ``num_batches_tracked`` (Li et al.'s ``merge.py``
  ``--merge_buffer``): ``mu = sum_k w_k mu_k``, ``var = sum_k w_k (var_k + (mu_k - mu)^2)``, ``w_k = n_k / sum n``.
* Quantized models (:class:`~raysel.quant.wrap.QuantizedModel`, BN folded): weights are merged on the
  quantization grids. ``rounding="float"`` is the plain float-domain merge of HDRQ eq. 11,
  ``round((I1*s1 + I2*s2) / (s1 + s2))``, which leaves exact ties (odd ``I1 + I2`` at equal steps) to
  round-half-to-even. ``rounding="noise"`` is HDRQ's noise-sampling rounding (§4.3, eq. 12) as in the official
  ``merge_nets_QDROP``: on tie elements only, ``eps_k ~ U[-s_k/2, s_k/2]`` is subtracted before averaging;
  ``num_samples`` draws are made and a draw is accepted when it improves *every* model's cosine similarity between
  ``merged - q_k`` and ``mid - q_k`` (flattened tensor, absolute value; the first draw is always accepted). The
  stored weight is the noisy float midpoint with the mean step; inference re-rounds it to the grid. Biases and all
  quantizer steps are averaged linearly. For more than two models a tie is an average whose fractional part is
  exactly 1/2 (none can occur for an odd count, which is why the paper skips sampling for three targets).
* ``interpolate_models`` gives the path ``theta(t) = (1 - t) theta_a + t theta_b`` used by the error barrier.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from raysel.errors import ConfigError
from raysel.quant.fold import BATCHNORM_TYPES
from raysel.quant.wrap import QuantizedModel

ROUNDING_MODES = ("noise", "float")


def merge_batchnorm_statistics(means: Sequence[torch.Tensor], variances: Sequence[torch.Tensor],
                               weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Moment-matched mean and variance of the mixture ``sum_k w_k N(mu_k, var_k)`` (weights normalised)."""
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError("batch-norm merge weights must sum to a positive value")
    normalised = [float(w) / total for w in weights]
    mean = sum(w * m for w, m in zip(normalised, means))
    variance = sum(w * (v + (m - mean) ** 2) for w, m, v in zip(normalised, means, variances))
    return mean, variance


def merge_models(models: Sequence[nn.Module], rounding: str = "noise", num_samples: int = 100,
                 seed: int | None = 0) -> nn.Module:
    """Merge two or more models adapted from the same source into one (mid-point / uniform average).

    Float models: parameters averaged, BN statistics moment-matched (Li et al. 2024). Quantized models: HDRQ
    merging on the quantization grid with ``rounding`` ``"noise"`` (eq. 12 + cosine rejection over
    ``num_samples`` draws, seeded by ``seed``) or ``"float"`` (eq. 11). Returns a new model; inputs are unchanged.
    """
    _check_mergeable(models)
    if rounding not in ROUNDING_MODES:
        raise ConfigError(f"unknown merge rounding {rounding!r}; valid: {', '.join(ROUNDING_MODES)}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    merged = interpolate_models(models, [1.0 / len(models)] * len(models), count_weighted_batchnorm=True)
    if isinstance(models[0], QuantizedModel):
        generator = torch.Generator(device=_device_of(models[0]))
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        merged_layers = merged.quantized_layers()
        per_model_layers = [model.quantized_layers() for model in models]
        with torch.no_grad():
            for name, layer in merged_layers.items():
                sources = [layers[name] for layers in per_model_layers]
                weight, step = merge_quantized_weights(
                    [source.weight for source in sources], [source.weight_quantizer.scale for source in sources],
                    layer.weight_quantizer.qmin, layer.weight_quantizer.qmax, rounding, num_samples, generator)
                layer.weight.copy_(weight)
                layer.weight_quantizer.scale.copy_(step)
    return merged


@torch.no_grad()
def has_rounding_ties(models: Sequence[nn.Module]) -> bool:
    """Whether merging ``models`` meets an exact tie (an integer mean with fractional part 1/2) in any quantized
    weight: only then can noise-sampling draws (eq. 12) differ; never for float models or an odd model count."""
    if not isinstance(models[0], QuantizedModel):
        return False
    per_model = [model.quantized_layers() for model in models]
    for name in per_model[0]:
        integers = [layers[name].weight_quantizer.integer_weight(layers[name].weight) for layers in per_model]
        if bool((torch.remainder(2 * sum(integers), 2 * len(models)) == len(models)).any()):
            return True
    return False


@torch.no_grad()
def merge_quantized_weights(weights: Sequence[torch.Tensor], steps: Sequence[torch.Tensor], qmin: int, qmax: int,
                            rounding: str = "noise", num_samples: int = 100,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged (float-stored) weight and mean step of K quantized weights (HDRQ eq. 11 / eq. 12 + rejection).

    ``q_k = clamp(round(W_k/s_k)) s_k``; ties are elements whose integer mean has fractional part 1/2. With
    ``rounding="float"`` the result is the plain midpoint ``mean_k q_k`` (inference rounds it with the mean step).
    With ``"noise"`` tie elements get ``-eps_k``, ``eps_k ~ U[-s_k/2, s_k/2]``, before averaging, and the draw with
    the best cosine agreement for every model (both must improve, official code) is kept.
    """
    if rounding not in ROUNDING_MODES:
        raise ConfigError(f"unknown merge rounding {rounding!r}; valid: {', '.join(ROUNDING_MODES)}")
    count = len(weights)
    integers = [torch.clamp(torch.round(w / s), qmin, qmax) for w, s in zip(weights, steps)]
    grids = [i * s for i, s in zip(integers, steps)]
    mean_step = sum(steps) / count
    midpoint = sum(grids) / count
    integer_sum = sum(integers)
    ties = torch.remainder(2 * integer_sum, 2 * count) == count
    if rounding == "float" or not bool(ties.any()):
        return midpoint, mean_step
    # Only tie elements change between draws: split every dot product and norm into a fixed non-tie part and a
    # per-draw tie part, so a draw costs O(#ties) instead of O(numel).
    flat_grids = [g.reshape(-1) for g in grids]
    flat_mid = midpoint.reshape(-1)
    tie_index = ties.reshape(-1).nonzero().squeeze(1)
    keep = ~ties.reshape(-1)
    rounded_fixed = torch.round(flat_mid[keep] / mean_step) * mean_step
    fixed = []
    for grid in flat_grids:
        direction = flat_mid - grid  # mid - q_k
        moved_fixed = rounded_fixed - grid[keep]
        fixed.append((float((moved_fixed * direction[keep]).sum()), float(moved_fixed.pow(2).sum()),
                      float(direction.norm()), direction[tie_index]))
    tie_grids = [grid[tie_index] for grid in flat_grids]
    best_cosines: list[float] | None = None
    best_noise: list[torch.Tensor] | None = None
    for _ in range(num_samples):
        noises = [(torch.rand(tie_index.shape, generator=generator, device=tie_index.device, dtype=flat_mid.dtype) - 0.5) * s
                  for s in steps]
        noisy_mid = sum(g - n for g, n in zip(tie_grids, noises)) / count
        rounded = torch.round(noisy_mid / mean_step) * mean_step
        cosines = []
        for grid, (dot_fixed, norm_sq_fixed, direction_norm, direction_ties) in zip(tie_grids, fixed):
            moved = rounded - grid
            dot = dot_fixed + float((moved * direction_ties).sum())
            norm = (norm_sq_fixed + float(moved.pow(2).sum())) ** 0.5
            cosines.append(abs(dot) / max(norm * direction_norm, 1e-12))
        if best_cosines is None or all(c > b for c, b in zip(cosines, best_cosines)):
            best_cosines, best_noise = cosines, noises
    merged = flat_mid.clone()
    merged[tie_index] = sum(g - n for g, n in zip(tie_grids, best_noise)) / count
    return merged.view_as(midpoint), mean_step


def interpolate_models(models: Sequence[nn.Module], coefficients: Sequence[float],
                       count_weighted_batchnorm: bool = False) -> nn.Module:
    """``sum_k c_k theta_k`` for every floating tensor (parameters, quantizer steps), as a new model.

    BatchNorm statistics are moment-matched with mixture weights ``c_k`` (times ``num_batches_tracked`` when
    ``count_weighted_batchnorm``, Li et al.'s merge); integer buffers come from the first model, except
    ``num_batches_tracked``, which becomes the sum when counts are used.
    """
    _check_mergeable(models)
    if len(coefficients) != len(models):
        raise ConfigError(f"{len(coefficients)} coefficients for {len(models)} models")
    merged = copy.deepcopy(models[0])
    states = [model.state_dict() for model in models]
    merged_state = merged.state_dict()
    batchnorm_keys = set()
    for name, module in models[0].named_modules():
        if isinstance(module, BATCHNORM_TYPES) and module.running_mean is not None:
            batchnorm_keys |= {f"{name}.running_mean", f"{name}.running_var", f"{name}.num_batches_tracked"}
            _merge_batchnorm_buffers(name, states, coefficients, merged_state, count_weighted_batchnorm)
    for key, value in merged_state.items():
        if key in batchnorm_keys or not torch.is_floating_point(value):
            continue
        merged_state[key] = sum(c * state[key] for c, state in zip(coefficients, states))
    merged.load_state_dict(merged_state)
    return merged


def _merge_batchnorm_buffers(name: str, states: list[dict], coefficients: Sequence[float],
                             merged_state: dict, count_weighted: bool) -> None:
    counts = [float(state[f"{name}.num_batches_tracked"]) for state in states]
    use_counts = count_weighted and sum(counts) > 0
    weights = [c * n for c, n in zip(coefficients, counts)] if use_counts else list(coefficients)
    if sum(weights) <= 0:  # e.g. t = 0 with an untracked endpoint: fall back to the coefficients
        weights = list(coefficients)
    mean, variance = merge_batchnorm_statistics([s[f"{name}.running_mean"] for s in states],
                                                [s[f"{name}.running_var"] for s in states], weights)
    merged_state[f"{name}.running_mean"] = mean
    merged_state[f"{name}.running_var"] = variance
    if count_weighted:
        merged_state[f"{name}.num_batches_tracked"] = torch.tensor(int(sum(counts)), dtype=torch.long)


def _check_mergeable(models: Sequence[nn.Module]) -> None:
    """ConfigError unless there are >= 2 models of one architecture, class count and quantization."""
    if not isinstance(models, Sequence) or len(models) < 2:
        raise ConfigError(f"merging needs at least two models, got {len(models) if isinstance(models, Sequence) else models!r}")
    first = models[0]
    for index, model in enumerate(models[1:], start=1):
        if type(model) is not type(first):
            raise ConfigError(f"cannot merge models of different types: model 0 is {type(first).__name__}, "
                              f"model {index} is {type(model).__name__}")
        classes = (getattr(first, "num_classes", None), getattr(model, "num_classes", None))
        if None not in classes and classes[0] != classes[1]:
            raise ConfigError(f"cannot merge models with different class counts: model 0 has {classes[0]}, "
                              f"model {index} has {classes[1]}")
        if isinstance(first, QuantizedModel):
            inner = (type(first.model).__name__, type(model.model).__name__)
            if inner[0] != inner[1]:
                raise ConfigError(f"cannot merge quantized models of different architectures: {inner[0]} vs {inner[1]}")
            bits_first = ({n: q.bits for n, q in first.weight_quantizers().items()}, first.weight_bits, first.activation_bits)
            bits_other = ({n: q.bits for n, q in model.weight_quantizers().items()}, model.weight_bits, model.activation_bits)
            if bits_first != bits_other:
                raise ConfigError(f"cannot merge models quantized at different bit-widths: "
                                  f"W{first.weight_bits}A{first.activation_bits} vs W{model.weight_bits}A{model.activation_bits}")
        state_first, state_other = first.state_dict(), model.state_dict()
        if state_first.keys() != state_other.keys():
            differing = sorted(set(state_first) ^ set(state_other))[:3]
            raise ConfigError(f"cannot merge models of different architectures: model {index} differs in {differing}")
        for key, value in state_first.items():
            if value.shape != state_other[key].shape:
                raise ConfigError(f"cannot merge models of different architectures: {key!r} has shape "
                                  f"{tuple(value.shape)} in model 0 and {tuple(state_other[key].shape)} in model {index}")


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")

