"""Settings of block-wise PTQ reconstruction (BRECQ, QDrop, HDRQ) with their validation, and where they follow
the papers or the official code.

Paper vs code, and what the defaults follow (``PtqConfig.paper(...)`` gives the full-scale values):

* iterations per unit: paper and code 20000; default 300 (CPU-sized, about a minute for small_segnet).
* AdaRound lr on V: code 1e-3 (Adam default) over 20000 steps; default 1e-2, because V must travel ~2.4 to
  saturate ``h(V)`` within 300 steps (1e-3 leaves most rounding decisions at round-to-nearest).
* HDRQ weight lr: paper text 1e-3, code 1e-4 with a linear warm-up from 1e-3x over ``warm_up`` then cosine over
  20000 steps. The short-run treatment AdaRound's lr got: the weights must travel as far in a short run as in the
  code's, so by default (``weight_lr_reference_iterations=20000``) the lr used is
  ``weight_lr * 20000 / iterations`` (the code's lr x steps budget; 1e-3 at 2000 iterations, the paper's text
  value), capped at ``MAX_WEIGHT_LR_MULTIPLIER`` x ``weight_lr`` = 1e-2 (reached at 200 iterations; Adam moves an
  element by up to ~lr a step, and a 4-bit step of the small models is ~1e-2). ``None`` keeps ``weight_lr``.
  Measured (street source small_segnet, W3A3, 8 day_city images, 100 iterations per unit): 1e-4 moves weights
  0.03 steps on average and changes 6 % of codes (reconstruction error 0.67 of round-to-nearest); scaled
  (1e-2) 0.71 steps, 60 % of codes, error 0.63.
* HDRQ real-quantization phase: paper "last 3500 of 20000" (0.175), code last ``warm_up * iters`` = 4000 (0.2);
  default 0.2 (code).
* HDRQ noise: paper ``U[-s/2, s/2]``; code the 256-bin empirical rounding-error histogram; default histogram
  (code), ``noise="uniform"`` the paper's, ``noise="none"`` the ablation without noise.
* distance term: paper "l2-norm"; code ``||W - W_base||`` not squared; here not squared (code); lambda 5e-2.
* calibration: code 32 target images (activation observers see the first 8); default 8 (observers see 8).
"""

from __future__ import annotations

from dataclasses import dataclass

from raysel.errors import ConfigError
from raysel.quant.fake_quant import validate_bits

PTQ_METHODS = ("brecq", "qdrop", "hdrq")
NOISE_CHOICES = ("histogram", "uniform", "none")
CODE_ITERATIONS = 20000  # reconstruction iterations per unit of the paper and the official code
MAX_WEIGHT_LR_MULTIPLIER = 100.0  # the short-run HDRQ weight lr is at most this many times weight_lr


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
    weight_lr_reference_iterations: int | None = CODE_ITERATIONS  # lr x iterations kept at the code's; None: as is
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
        values = dict(method=method, weight_bits=weight_bits, activation_bits=activation_bits, iterations=CODE_ITERATIONS,
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
        reference = self.weight_lr_reference_iterations
        if reference is not None and (isinstance(reference, bool) or not isinstance(reference, int) or reference < 1):
            raise ConfigError(f"weight_lr_reference_iterations must be a positive integer or null, got {reference!r}")
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
    def effective_weight_lr(self) -> float:
        """HDRQ's weight lr for this run length: ``weight_lr`` scaled to keep the code's lr x iterations budget
        (capped, see the module docstring), or ``weight_lr`` itself when ``weight_lr_reference_iterations`` is None."""
        if self.weight_lr_reference_iterations is None:
            return self.weight_lr
        multiplier = max(1.0, self.weight_lr_reference_iterations / self.iterations)
        return self.weight_lr * min(multiplier, MAX_WEIGHT_LR_MULTIPLIER)

    @property
    def brecq_activation_iterations(self) -> int:
        return self.activation_iterations or max(1, self.iterations // 4)
