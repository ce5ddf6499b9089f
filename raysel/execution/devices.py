"""Which device a trial computes on and which process-group backend its Ray Train workers use."""

from __future__ import annotations

import os
import sys

import torch

from raysel.request import Resources

# Set to 1 on the nodes (not the client) only for Ray's fake multi-node provider, whose GPU nodes have no CUDA:
# GPU-requesting trials then compute on CPU instead of failing (raysel/testing/fake_cluster.py sets it on the head).
FAKE_GPUS_ENV = "RAYSEL_FAKE_GPUS"


def process_group_backend(use_gpu: bool) -> str:
    """NCCL for GPU workers, gloo on CPU and on fake GPU nodes.

    Decided from the request, not from ``torch.cuda.is_available()`` here: this runs in the Tune trial's driver
    process, which holds no GPU on a real cluster (CUDA hidden), while its Train workers do.
    """
    return "nccl" if use_gpu and os.environ.get(FAKE_GPUS_ENV) != "1" else "gloo"


def direct_device(resources: Resources) -> torch.device:
    """The trial's device: CUDA when it asked for a GPU (CPU on opted-in fake GPU nodes), else CPU."""
    return cpu_if_fake_gpu(torch.device("cuda")) if resources.gpus_per_worker > 0 else torch.device("cpu")


def cpu_if_fake_gpu(device: torch.device) -> torch.device:
    """A CUDA device this node cannot back is an error, except under RAYSEL_FAKE_GPUS=1 (Ray's fake multi-node
    provider advertises GPUs a CPU-only machine lacks; used to exercise autoscaling), where the trial uses CPU."""
    if device.type != "cuda" or torch.cuda.is_available():
        return device
    if os.environ.get(FAKE_GPUS_ENV) != "1":
        raise RuntimeError("this trial asked for a GPU but CUDA is not available on its node")
    print(f"raysel: {FAKE_GPUS_ENV}=1 and no CUDA on this node: the GPU this trial holds is fake, computing on CPU",
          file=sys.stderr, flush=True)
    return torch.device("cpu")
