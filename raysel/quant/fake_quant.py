"""Fake quantizers: per-tensor symmetric weights (learnable step, AdaRound, HDRQ noise) and LSQ activations.

Conventions (HDRQ's QDrop-derived toolkit, ``tools/qdrop/quantization``; see shared/reference/methods.md §2.1-2.2):

* Uniform quantization without zero point (HDRQ paper eq. 8): ``q(x) = clamp(round(x / s), qmin, qmax) * s``.
  Weights are signed, ``[-2^(b-1), 2^(b-1) - 1]``. Activations are unsigned ``[0, 2^b - 1]`` when everything the
  observer saw was non-negative (post-ReLU) and signed otherwise. HDRQ's code always uses the unsigned range and
  drops the zero point, silently clipping negative activations to 0 (it switches some layers to symmetric by
  hand); choosing the range from the observed sign is the same thing where the code is right and avoids the
  clipping bug elsewhere.
* Rounding uses the straight-through estimator; the gradient reaching the step ``s`` is the LSQ one (Esser et
  al. 2020). Activation steps get LSQ's gradient scale ``1 / sqrt(numel * qmax)``; weight steps get none (as in
  HDRQ's ``HDRQFakeQuantize``).
* Initial steps come from an MSE observer: a grid of 100 clipping ratios ``1, 0.99, ..., 0.01`` of the observed
  range, keeping the one with the smallest ``mean |q(x) - x|^p`` with ``p = 2.4`` (QDrop / HDRQ config).
* HDRQ noise-based pseudo-quantization (paper §4.1, eq. 9): instead of ``q(x)`` use ``x + eps * s`` inside the
  clipping range and the clip value outside, with ``eps`` drawn from the *empirical* distribution of the actual
  rounding error ``(q(x) - x) / s`` (256-bin histogram, HDRQ's code) or from ``U[-1/2, 1/2]`` (the paper's
  analytic approximation); ``noise_distribution`` switches between the two. The histogram is estimated from
  ``histogram_samples`` random elements (8192; 0 = all, exactly as the code) and sampled with one uniform per
  element, which keeps HDRQ's iteration cost within a few percent of QDrop's on CPU (the code's
  ``torch.multinomial`` over 256 bins costs ~5x a round-to-nearest pass per element).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from raysel.errors import ConfigError

MIN_BITS, MAX_BITS = 2, 8
NOISE_DISTRIBUTIONS = ("histogram", "uniform")
WEIGHT_MODES = ("float", "nearest", "adaround", "noise")
ACTIVATION_MODES = ("nearest", "noise")
MSE_CANDIDATES = 100
MSE_MAX_SAMPLES = 1 << 16
LP_NORM = 2.4
HISTOGRAM_BINS = 256
HISTOGRAM_SAMPLES = 8192  # elements the rounding-error histogram is estimated from (0: all)
ADAROUND_ZETA, ADAROUND_GAMMA = 1.1, -0.1  # h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)
SCALE_FLOOR = float(torch.finfo(torch.float32).eps)  # smallest quantizer step (LSQ code: scale.abs().clamp(min=eps))
_OBSERVER_SAMPLES_PER_CALL = 1 << 16


def validate_bits(bits: int, name: str = "bits") -> int:
    """Return ``bits`` if it is an integer in [2, 8]; otherwise raise ConfigError naming ``name``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{name} must be an integer between {MIN_BITS} and {MAX_BITS}, got {bits!r}")
    return bits


def signed_range(bits: int) -> tuple[int, int]:
    """Integer grid ``[-2^(b-1), 2^(b-1) - 1]`` of a signed b-bit quantizer."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def unsigned_range(bits: int) -> tuple[int, int]:
    """Integer grid ``[0, 2^b - 1]`` of an unsigned b-bit quantizer."""
    return 0, 2**bits - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest with a straight-through (identity) gradient."""
    return (x.round() - x).detach() + x


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity in the forward pass, gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    return (x - x * factor).detach() + x * factor


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Round-to-nearest fake quantization ``clamp(round(x/s), qmin, qmax) * s`` (eq. 8) with STE/LSQ gradients."""
    return torch.clamp(round_ste(x / scale), qmin, qmax) * scale


def sample_rounding_noise(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int,
                          distribution: str = "histogram", bins: int = HISTOGRAM_BINS,
                          histogram_samples: int = HISTOGRAM_SAMPLES) -> torch.Tensor:
    """Noise ``eps`` in units of the step, in ``[-1/2, 1/2)``, shaped like ``x`` (no gradient).

    ``histogram`` (HDRQ's code): a ``bins``-bin histogram of the actual rounding error ``(q(x) - x)/s`` over the
    non-clipped elements; each element draws a bin with probability proportional to its count and a uniform
    position inside it. The histogram is taken over ``histogram_samples`` randomly chosen elements (0: all of
    them, exactly the code's histogram); the per-element noise is then still distributed as the full histogram
    in expectation, at a fraction of the cost. A bin is drawn by picking a random member of the histogram's
    sample (probability = count / total, the same law as the code's ``torch.multinomial`` over the 256 counts,
    which is ~5x slower on CPU because it binary-searches the CDF per element). ``uniform``: the paper's
    ``U[-1/2, 1/2]``. An all-clipped tensor falls back to uniform.
    """
    with torch.no_grad():
        uniform = torch.rand(x.shape, device=x.device, dtype=x.dtype)
        if distribution == "uniform":
            return uniform.sub_(0.5)
        if distribution != "histogram":
            raise ConfigError(f"unknown noise distribution {distribution!r}; valid: {', '.join(NOISE_DISTRIBUTIONS)}")
        flat = x.detach().reshape(-1)
        if 0 < histogram_samples < flat.numel():
            flat = flat[torch.randint(flat.numel(), (histogram_samples,), device=x.device)]
        scaled = flat / scale.detach()
        inside = (scaled > qmin) & (scaled < qmax)  # inside the range round() already lies in [qmin, qmax]
        error = (torch.round(scaled) - scaled)[inside]
        if error.numel() == 0:
            return uniform.sub_(0.5)
        lower_edges = torch.floor((error + 0.5) * bins).clamp_(0, bins - 1) / bins - 0.5
        # One uniform per element gives both the sample member (integer part of u * n) and the position inside
        # the bin (fractional part): the RNG is the expensive part on CPU, so it runs once per element.
        position = uniform.mul_(error.numel())
        member = position.long().clamp_(max=error.numel() - 1)
        within = position.sub_(member)
        picked = lower_edges.index_select(0, member.view(-1)).view(x.shape)  # index_select: ~6x faster than []
        return picked.add_(within, alpha=1.0 / bins)


def noise_fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int,
                        distribution: str = "histogram", bins: int = HISTOGRAM_BINS,
                        histogram_samples: int = HISTOGRAM_SAMPLES) -> torch.Tensor:
    """HDRQ pseudo-quantization (§4.1): ``x + eps*s`` inside ``(s*qmin, s*qmax)``, the clip value outside.

    The gradient flows to ``x`` (identity inside the range) and to ``s`` through ``eps*s`` and the clip values.
    """
    upper, lower = scale * qmax, scale * qmin
    noise = sample_rounding_noise(x, scale, qmin, qmax, distribution, bins, histogram_samples)
    return torch.where(x >= upper, upper, torch.where(x <= lower, lower, x + noise * scale))


def mse_scale(x: torch.Tensor, qmin: int, qmax: int, p: float = LP_NORM, candidates: int = MSE_CANDIDATES,
              max_samples: int = MSE_MAX_SAMPLES) -> torch.Tensor:
    """MSE-observer step: grid search over clipping ratios ``1 - i/candidates`` minimising ``mean |q(x) - x|^p``.

    Signed grids clip symmetrically at ``ratio * max|x|`` with ``s = clip / ((qmax - qmin) / 2)`` (QDrop's
    symmetric observer); unsigned grids clip at ``ratio * max(x)`` with ``s = clip / qmax``. The range comes from
    the whole tensor; the error is measured on at most ``max_samples`` elements drawn with a fixed seed (a
    ResNet-101 has layers of 2.4M weights and 100 candidates of ``|.|^2.4`` on all of them take minutes on CPU).
    """
    values = x.detach().reshape(-1).float()
    if values.numel() == 0:
        return torch.tensor(1.0)
    signed = qmin < 0
    extent = values.abs().max() if signed else values.clamp(min=0).max()
    if extent <= 0:
        return torch.tensor(1.0)
    if 0 < max_samples < values.numel():
        generator = torch.Generator(device=values.device).manual_seed(0)
        values = values[torch.randint(values.numel(), (max_samples,), generator=generator, device=values.device)]
    levels = (qmax - qmin) / 2 if signed else qmax
    ratios = 1.0 - torch.arange(candidates, dtype=torch.float32, device=values.device) / candidates
    steps = ratios * extent / levels
    errors = torch.empty(candidates, device=values.device)
    chunk = max(1, (1 << 22) // max(values.numel(), 1))  # bound the [chunk, numel] temporary to ~4M floats
    for start in range(0, candidates, chunk):
        step = steps[start:start + chunk, None]
        quantized = torch.clamp(torch.round(values[None] / step), qmin, qmax) * step
        errors[start:start + chunk] = (quantized - values[None]).abs().pow(p).mean(dim=1)
    return steps[torch.argmin(errors)].detach().cpu()


class WeightQuantizer(nn.Module):
    """Per-tensor symmetric weight fake-quantizer with a learnable step and four modes.

    ``float`` (off), ``nearest`` (round-to-nearest, STE; the deployed behaviour), ``adaround`` (BRECQ/QDrop soft
    rounding ``floor(w/s) + h(V)`` with ``h(V) = clamp(sigmoid(V)*1.2 - 0.1, 0, 1)``, Nagel et al. 2020) and
    ``noise`` (HDRQ pseudo-quantization).
    """

    def __init__(self, bits: int, noise_distribution: str = "histogram") -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.mode = "nearest"
        self.noise_distribution = noise_distribution
        self.histogram_samples = HISTOGRAM_SAMPLES
        self.alpha: nn.Parameter | None = None
        self._cache: tuple[tuple, torch.Tensor] | None = None
        self.set_bits(bits)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_cache"] = None  # copies and pickles do not carry the inference cache
        return state

    def set_bits(self, bits: int) -> None:
        """Change the bit-width (first/last layers go to 8 bits); re-run ``initialize`` afterwards."""
        self.bits = validate_bits(bits, "weight bits")
        self.qmin, self.qmax = signed_range(bits)

    def initialize(self, weight: torch.Tensor, p: float = LP_NORM) -> None:
        """Set the step with the MSE observer on ``weight``."""
        with torch.no_grad():
            self.scale.copy_(mse_scale(weight, self.qmin, self.qmax, p).to(self.scale))

    def set_mode(self, mode: str) -> None:
        """Switch between ``float``, ``nearest``, ``adaround`` (needs ``init_adaround``) and ``noise``."""
        if mode not in WEIGHT_MODES:
            raise ConfigError(f"unknown weight quantizer mode {mode!r}; valid: {', '.join(WEIGHT_MODES)}")
        if mode == "adaround" and self.alpha is None:
            raise ConfigError("adaround mode needs init_adaround(weight) first")
        self.mode = mode

    def init_adaround(self, weight: torch.Tensor) -> None:
        """Create the AdaRound variable V with ``h(V)`` equal to the fractional part of ``w/s`` (no change at start)."""
        with torch.no_grad():
            scaled = weight.detach() / self.scale.detach()
            rest = scaled - torch.floor(scaled)
            # sigmoid(V) = (rest - gamma) / (zeta - gamma)  <=>  V = -log((zeta - gamma) / (rest - gamma) - 1)
            alpha = -torch.log((ADAROUND_ZETA - ADAROUND_GAMMA) / (rest - ADAROUND_GAMMA) - 1)
        self.alpha = nn.Parameter(alpha)
        self.mode = "adaround"

    def rectified_sigmoid(self) -> torch.Tensor:
        """AdaRound's ``h(V)`` in [0, 1]."""
        assert self.alpha is not None
        return torch.clamp(torch.sigmoid(self.alpha) * (ADAROUND_ZETA - ADAROUND_GAMMA) + ADAROUND_GAMMA, 0, 1)

    def rounding_regularizer(self, b: float) -> torch.Tensor:
        """AdaRound's ``sum(1 - |2h(V) - 1|^b)``, pushing every ``h(V)`` to 0 or 1."""
        return (1 - (2 * self.rectified_sigmoid() - 1).abs().pow(b)).sum()

    def hard_adaround(self, weight: torch.Tensor) -> torch.Tensor:
        """Dequantized weight with AdaRound's final hard decision ``floor(w/s) + [V >= 0]``; drops V."""
        assert self.alpha is not None
        with torch.no_grad():
            step = self.scale.detach()
            integer = torch.clamp(torch.floor(weight / step) + (self.alpha >= 0).to(weight.dtype), self.qmin, self.qmax)
        self.alpha = None
        self.mode = "nearest"
        return integer * step

    def integer_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """Integer codes ``clamp(round(w/s), qmin, qmax)`` of the deployed (round-to-nearest) weight."""
        with torch.no_grad():
            return torch.clamp(torch.round(weight / self.scale), self.qmin, self.qmax)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Fake-quantized weight in the current mode."""
        if self.mode == "float":
            return weight
        if self.mode == "nearest":
            if torch.is_grad_enabled():
                return fake_quantize(weight, self.scale, self.qmin, self.qmax)
            return self._cached_nearest(weight)
        if self.mode == "noise":
            return noise_fake_quantize(weight, self.scale, self.qmin, self.qmax, self.noise_distribution,
                                       histogram_samples=self.histogram_samples)
        step = self.scale.detach()  # AdaRound learns the rounding only; the step stays at its MSE value
        return torch.clamp(torch.floor(weight.detach() / step) + self.rectified_sigmoid(), self.qmin, self.qmax) * step

    def _cached_nearest(self, weight: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest weight for no-grad inference, recomputed only when weight, step or bits change
        (tensor version counters), so evaluating a quantized model does not re-quantize every weight per batch."""
        key = (id(weight), weight.data_ptr(), weight._version, weight.device, self.scale.data_ptr(),
               self.scale._version, self.qmin, self.qmax)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, fake_quantize(weight, self.scale, self.qmin, self.qmax))
        return self._cache[1]

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}"


def _refresh_signed(module: "ActivationQuantizer", incompatible_keys: object) -> None:
    """Load-state-dict hook (module level so quantized models stay picklable)."""
    module._sync_signed()


class ActivationQuantizer(nn.Module):
    """LSQ activation fake-quantizer (learnable step, grad scale ``1/sqrt(numel*qmax)``), QDrop dropping, HDRQ noise.

    ``drop_prob`` is QDrop's probability of *quantizing* an element during reconstruction (elements not quantized
    keep their float value; 1.0 = always quantize, the inference behaviour). ``observe`` collects a subsample of
    the activations for the MSE initialisation in ``finish_observing``.
    """

    def __init__(self, bits: int, noise_distribution: str = "histogram") -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        # ``signed`` persists in the state dict; ``_signed`` is its Python copy so forward never syncs a device.
        self.register_buffer("signed", torch.tensor(False))
        self._signed = False
        self.register_load_state_dict_post_hook(_refresh_signed)
        self.enabled = True
        self.mode = "nearest"
        self.drop_prob = 1.0
        self.noise_distribution = noise_distribution
        self.histogram_samples = HISTOGRAM_SAMPLES
        self.observing = False
        self._observed: list[torch.Tensor] = []
        self._observed_min = math.inf
        self.set_bits(bits)

    def set_bits(self, bits: int) -> None:
        """Change the bit-width (the quantizer feeding the last layer goes to 8 bits)."""
        self.bits = validate_bits(bits, "activation bits")

    def _sync_signed(self) -> None:
        self._signed = bool(self.signed)

    def set_signed(self, signed: bool) -> None:
        """Use the signed grid (activations that can be negative) or the unsigned one (post-ReLU)."""
        self.signed.fill_(bool(signed))
        self._signed = bool(signed)

    @property
    def qmin(self) -> int:
        return signed_range(self.bits)[0] if self._signed else 0

    @property
    def qmax(self) -> int:
        return signed_range(self.bits)[1] if self._signed else unsigned_range(self.bits)[1]

    def set_mode(self, mode: str) -> None:
        """``nearest`` (LSQ round-to-nearest) or ``noise`` (HDRQ pseudo-quantization)."""
        if mode not in ACTIVATION_MODES:
            raise ConfigError(f"unknown activation quantizer mode {mode!r}; valid: {', '.join(ACTIVATION_MODES)}")
        self.mode = mode

    def start_observing(self) -> None:
        """Pass activations through unchanged and record a subsample of them for calibration."""
        self.observing, self._observed, self._observed_min = True, [], math.inf

    def finish_observing(self, p: float = LP_NORM) -> None:
        """Pick the signed/unsigned grid from the observed minimum and the step with the MSE observer."""
        self.observing = False
        if not self._observed:
            return  # never executed: keep the current step
        samples = torch.cat(self._observed)
        self.set_signed(self._observed_min < 0)
        with torch.no_grad():
            self.scale.copy_(mse_scale(samples, self.qmin, self.qmax, p).to(self.scale))
        self._observed = []

    def _record(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1)
        self._observed_min = min(self._observed_min, float(flat.min())) if flat.numel() else self._observed_min
        if flat.numel() > _OBSERVER_SAMPLES_PER_CALL:
            flat = flat[torch.randint(flat.numel(), (_OBSERVER_SAMPLES_PER_CALL,), device=flat.device)]
        self._observed.append(flat.float().cpu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantized activations (or ``x`` itself when observing or disabled)."""
        if self.observing:
            self._record(x)
            return x
        if not self.enabled:
            return x
        qmin, qmax = self.qmin, self.qmax
        step = scale_gradient(self.scale, 1.0 / math.sqrt(x.numel() * qmax))
        if self.mode == "noise":
            quantized = noise_fake_quantize(x, step, qmin, qmax, self.noise_distribution,
                                            histogram_samples=self.histogram_samples)
        else:
            quantized = fake_quantize(x, step, qmin, qmax)
        if self.drop_prob < 1.0:
            return torch.where(torch.rand_like(x) < self.drop_prob, quantized, x)
        return quantized

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self._signed}, enabled={self.enabled}, mode={self.mode}"
