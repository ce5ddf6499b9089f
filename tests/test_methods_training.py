"""Training-loop helpers (raysel.methods.training): batches, running means, report points, the NaN-loss policy and the
gradient all-reduce, on one worker and on a real two-process gloo group."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from raysel.errors import ConfigError
from raysel.methods import training
from raysel.methods.base import LocalSession, NonFiniteLossError, RunContext, RunSpec


def one_worker() -> RunContext:
    return RunContext(RunSpec(method="source_only"), LocalSession())


def test_infinite_batches_cycles_and_running_mean() -> None:
    loader = DataLoader(TensorDataset(torch.arange(3)), batch_size=2, drop_last=True)
    batches = training.infinite_batches(loader)
    assert [next(batches)[0].tolist() for _ in range(3)] == [[0, 1]] * 3
    empty = training.infinite_batches(DataLoader(TensorDataset(torch.arange(1)), batch_size=2, drop_last=True))
    with pytest.raises(ConfigError, match="smaller than one batch"):
        next(empty)
    running = training.RunningMean()
    running.add(loss=1.0, other=4.0)
    running.add(loss=3.0)
    assert running.means(one_worker()) == {"loss": 2.0, "other": 4.0}
    running.add(loss=float("nan"))
    assert math.isnan(running.means()["loss"])


def test_memoized_dataset_decodes_once_and_respects_the_size_cap() -> None:
    class Counting(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.calls = 0

        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int) -> dict:
            self.calls += 1
            return {"image": torch.full((2,), float(index)), "index": index}

    inner = Counting()
    cached = training.MemoizedDataset(inner)
    assert [cached[i]["index"] for i in (0, 1, 1, 2, 2)] == [0, 1, 1, 2, 2] and len(cached) == 3
    assert inner.calls == 3
    uncached = training.MemoizedDataset(Counting(), max_bytes=8)  # 3 samples x 8 bytes do not fit
    uncached[1], uncached[1]
    assert not uncached.enabled and uncached.dataset.calls == 3


def test_stop_if_not_finite() -> None:
    training.stop_if_not_finite(one_worker(), torch.tensor(1.0), "step 1")
    with pytest.raises(NonFiniteLossError, match="step 2"):
        training.stop_if_not_finite(one_worker(), torch.tensor(float("nan")), "step 2")


@pytest.mark.parametrize("iterations, reports, expected", [
    (10, 2, [5, 10]), (7, 1, [7]), (10, 3, [3, 7, 10]), (2, 5, [1, 2]), (1, 4, [1]), (100, 4, [25, 50, 75, 100]),
])
def test_report_points_are_evenly_spaced_end_at_the_last_iteration_and_skip_zero(
        iterations: int, reports: int, expected: list[int]) -> None:
    assert training.report_points(iterations, reports) == expected


def test_average_gradients_is_a_no_op_on_one_worker() -> None:
    layer = nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    before = [parameter.grad.clone() for parameter in layer.parameters()]
    training.average_gradients(one_worker(), list(layer.parameters()))
    assert all(torch.equal(a, p.grad) for a, p in zip(before, layer.parameters()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_worker_checks(rank: int, port: int, results: dict) -> None:
    """Per-rank body: grads rank+1 and 10*(rank+1) average to 1.5 and 15; a NaN on rank 1 stops both ranks."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ctx = RunContext(RunSpec(method="source_only"), LocalSession(world_rank=rank, world_size=2))
        weight, bias, unused = (nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2)),
                                nn.Parameter(torch.zeros(1)))
        weight.grad, bias.grad = torch.full((2, 2), rank + 1.0), torch.full((2,), 10.0 * (rank + 1))
        training.average_gradients(ctx, [weight, unused, bias])
        training.stop_if_not_finite(ctx, torch.tensor(1.0), "step 1")
        try:
            training.stop_if_not_finite(ctx, torch.tensor(float("nan") if rank == 1 else 1.0), "step 2")
            stopped = False
        except NonFiniteLossError:
            stopped = True
        results[rank] = (weight.grad.tolist(), bias.grad.tolist(), unused.grad, stopped)
    finally:
        dist.destroy_process_group()


def test_average_gradients_and_the_nan_policy_on_a_real_two_process_group() -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_two_worker_checks, args=(_free_port(), results), nprocs=2, join=True)
        results = dict(results)
    for rank in (0, 1):
        weight, bias, unused, stopped = results[rank]
        assert weight == [[1.5, 1.5], [1.5, 1.5]] and bias == [15.0, 15.0] and unused is None
        assert stopped  # rank 0's loss was finite, but it stops together with rank 1
