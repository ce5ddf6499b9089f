"""The GPU acceleration switches a user asks for (``--amp``, ``--channels-last``, ...), without torch.

A sweep request carries these switches and ``python -m raysel.sweep --help`` lists their choices, so they live here,
where importing them costs neither torch nor Ray. :class:`raysel.methods.acceleration.Acceleration` extends
:class:`AccelerationSwitches` with ``resolve(device)``, which decides every ``auto`` for the device a run trains on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from raysel.errors import ConfigError

__all__ = [
    "AMP_CHOICES", "SWITCH_CHOICES", "SWITCHES", "CUDA_LOADER_WORKERS", "AccelerationSwitches",
    "add_acceleration_arguments", "acceleration_from_arguments",
]

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
SWITCH_CHOICES = ("auto", "on", "off")
SWITCHES = ("channels_last", "pin_memory", "persistent_workers", "cudnn_benchmark")
# DataLoader worker processes per training process on CUDA (capped by the CPUs this process may run on).
CUDA_LOADER_WORKERS = 4


@dataclass(frozen=True)
class AccelerationSwitches:
    """The requested switches; ``auto`` = on for a CUDA device, off on CPU. ``loader_workers`` None = auto."""

    amp: str = "auto"  # auto | bf16 | fp16 | off; auto = bf16 where the GPU supports it, else fp16 + GradScaler
    channels_last: str = "auto"  # auto | on | off
    pin_memory: str = "auto"
    persistent_workers: str = "auto"
    cudnn_benchmark: str = "auto"
    loader_workers: int | None = None  # DataLoader worker processes; None: 4 on CUDA (fewer CPUs: that many), 0 on CPU

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid switch and its valid values."""
        if self.amp not in AMP_CHOICES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        for name in SWITCHES:
            if getattr(self, name) not in SWITCH_CHOICES:
                raise ConfigError(f"{name} must be one of {', '.join(SWITCH_CHOICES)}, got {getattr(self, name)!r}")
        workers = self.loader_workers
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise ConfigError(f"loader_workers must be an integer >= 0 (or unset for auto), got {workers!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "AccelerationSwitches":
        """Build from a RunSpec's ``acceleration`` dict (missing keys = auto); unknown keys raise ConfigError."""
        values = dict(values or {})
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ConfigError(f"unknown acceleration setting(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        switches = cls(**values)
        switches.validate()
        return switches

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (what RunSpec carries)."""
        return dataclasses.asdict(self)


def add_acceleration_arguments(parser: Any) -> None:
    """The ``--amp``, ``--channels-last``, ... options of ``raysel.sweep`` (an argparse parser), in their own group."""
    group = parser.add_argument_group("GPU acceleration (default auto: on when trials run on CUDA, off on CPU)")
    group.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                       help="mixed precision: bf16 autocast where the GPU supports it, else fp16 with a gradient "
                       "scaler (default auto)")
    for name, what in (("channels_last", "channels-last memory format for the networks"),
                       ("pin_memory", "pinned host memory for the data loaders"),
                       ("persistent_workers", "keep data-loader worker processes between epochs"),
                       ("cudnn_benchmark", "cuDNN autotuning of convolution algorithms")):
        group.add_argument(f"--{name.replace('_', '-')}", choices=SWITCH_CHOICES, default="auto", help=what)
    group.add_argument("--loader-workers", type=int, default=None,
                       help=f"data-loader worker processes per training process (default: {CUDA_LOADER_WORKERS} "
                       "on CUDA, 0 on CPU)")


def acceleration_from_arguments(args: Any) -> dict[str, Any]:
    """The RunSpec ``acceleration`` dict from parsed :func:`add_acceleration_arguments` options (validated)."""
    switches = AccelerationSwitches(amp=args.amp, loader_workers=args.loader_workers,
                                    **{name: getattr(args, name) for name in SWITCHES})
    switches.validate()
    return switches.to_dict()
