"""raysel.execution.devices: the trial's device and the Train workers' process-group backend (fast)."""

from __future__ import annotations

import pytest
import torch

from raysel.execution.devices import FAKE_GPUS_ENV, direct_device, process_group_backend
from raysel.request import Resources


def test_gpu_trials_use_nccl_from_the_request_and_gloo_on_cpu_or_fake_gpus(monkeypatch) -> None:
    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    assert process_group_backend(use_gpu=True) == "nccl"  # even here, where this process sees no CUDA
    assert process_group_backend(use_gpu=False) == "gloo"
    monkeypatch.setenv(FAKE_GPUS_ENV, "1")
    assert process_group_backend(use_gpu=True) == "gloo"


def test_gpu_request_without_cuda_fails_unless_fake_gpus_are_declared(monkeypatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        direct_device(Resources(gpus_per_worker=1))
    monkeypatch.setenv(FAKE_GPUS_ENV, "1")
    assert direct_device(Resources(gpus_per_worker=1)).type == "cpu"
    assert direct_device(Resources()).type == "cpu"
