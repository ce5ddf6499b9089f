"""GPU-ready training switches: mixed precision, channels-last, pinned memory, persistent loader workers, cuDNN autotuning.

Every switch defaults to ``auto``: on when the run's device is CUDA, off on CPU, so a CPU run does exactly what it
did before these switches existed (no autocast, no gradient scaler, contiguous tensors, ``num_workers=0``).
``Acceleration`` is the user's request (carried in :class:`raysel.methods.base.RunSpec` as a dict);
:meth:`Acceleration.resolve` turns it into a :class:`DeviceAcceleration` for one device, which the training loops use
through ``ctx.acceleration``:

* ``autocast()``: the forward pass under bf16 autocast (where the GPU supports bf16) or fp16 autocast;
* ``backward_step(loss, optimizer)``: ``loss.backward(); optimizer.step()``, through a ``torch.amp.GradScaler`` under
  fp16 (bf16 needs none);
* ``prepare_model(model)``: channels-last memory format (faster convolutions on tensor cores);
* ``loader_options()``: DataLoader workers, pinned memory and persistent workers.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from raysel.acceleration_switches import (AMP_CHOICES, CUDA_LOADER_WORKERS, SWITCH_CHOICES, SWITCHES,
                                          AccelerationSwitches, acceleration_from_arguments,
                                          add_acceleration_arguments)
from raysel.errors import ConfigError

__all__ = [
    "AMP_CHOICES", "SWITCH_CHOICES", "SWITCHES", "CUDA_LOADER_WORKERS", "AMP_DTYPES", "Acceleration", "resolve_amp",
    "available_cpus", "DeviceAcceleration", "add_acceleration_arguments", "acceleration_from_arguments",
]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Acceleration(AccelerationSwitches):
    """The requested switches (:class:`~raysel.acceleration_switches.AccelerationSwitches`), resolvable per device."""

    def resolve(self, device: torch.device) -> "DeviceAcceleration":
        """What is actually on for ``device``: every ``auto`` decided, the amp dtype chosen, a scaler made for fp16."""
        self.validate()
        cuda = device.type == "cuda"

        def switch(name: str) -> bool:
            value = getattr(self, name)
            return cuda if value == "auto" else value == "on"

        amp = resolve_amp(self.amp, device)
        workers = self.loader_workers if self.loader_workers is not None else (
            min(CUDA_LOADER_WORKERS, available_cpus()) if cuda else 0)
        return DeviceAcceleration(device=device, amp=amp, channels_last=switch("channels_last"),
                                  pin_memory=switch("pin_memory"), loader_workers=workers,
                                  persistent_workers=switch("persistent_workers") and workers > 0,
                                  cudnn_benchmark=switch("cudnn_benchmark"))


def resolve_amp(amp: str, device: torch.device) -> str:
    """``"bf16"``, ``"fp16"`` or ``"off"`` for ``device``: auto is bf16 on a bf16-capable GPU, fp16 on an older one,
    off on CPU; an explicit bf16 on a GPU without bf16 is a ConfigError."""
    cuda = device.type == "cuda"
    if amp == "auto":
        if not cuda:
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("amp bf16: this GPU does not support bfloat16; use --amp fp16 or --amp auto")
    return amp


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class DeviceAcceleration:
    """The switches resolved for one device, and the helpers the training loops call (no-ops where a switch is off).

    One instance per run (``ctx.acceleration``): under fp16 it owns the run's ``torch.amp.GradScaler``.
    """

    def __init__(self, device: torch.device, amp: str, channels_last: bool, pin_memory: bool, loader_workers: int,
                 persistent_workers: bool, cudnn_benchmark: bool) -> None:
        self.device = device
        self.amp = amp
        self.channels_last = channels_last
        self.pin_memory = pin_memory
        self.loader_workers = loader_workers
        self.persistent_workers = persistent_workers
        self.cudnn_benchmark = cudnn_benchmark
        self.dtype = AMP_DTYPES.get(amp)
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's context: ``torch.autocast`` at the resolved dtype, or nothing when amp is off."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward(); optimizer.step()``; under fp16 through the gradient scaler (scale, step, update)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model in channels-last memory format when that switch is on (unchanged otherwise)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def loader_options(self) -> dict[str, Any]:
        """DataLoader keyword arguments: worker processes, pinned memory, persistent workers."""
        options: dict[str, Any] = {"num_workers": self.loader_workers}
        if self.pin_memory:
            options["pin_memory"] = True
        if self.persistent_workers:
            options["persistent_workers"] = True
        return options

    def apply_backend_settings(self) -> None:
        """Turn on cuDNN autotuning (process-wide in torch) when that switch is on; nothing otherwise."""
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True

    def describe(self) -> str:
        """One line naming what is on, e.g. ``amp bf16, channels-last, pinned memory, 4 loader workers``."""
        parts = [f"amp {self.amp}"]
        parts += [label for label, on in (("channels-last", self.channels_last), ("pinned memory", self.pin_memory),
                                          ("persistent workers", self.persistent_workers),
                                          ("cudnn benchmark", self.cudnn_benchmark)) if on]
        parts.append(f"{self.loader_workers} loader workers")
        return ", ".join(parts)
