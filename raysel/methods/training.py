"""Training-loop helpers shared by the methods: endless batches, running means, timing, report points, the NaN-loss
policy, gradient averaging for modules outside DDP, and a label-free confidence signal.

Everything is DDP-correct through :class:`raysel.methods.base.RunContext`: collective helpers must be called by every
rank at the same step.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from raysel.errors import ConfigError
from raysel.methods.base import NonFiniteLossError, RunContext

__all__ = [
    "infinite_batches", "MemoizedDataset", "RunningMean", "stop_if_not_finite", "report_points", "average_gradients",
    "Stopwatch", "target_confidence",
]


def infinite_batches(loader: DataLoader, start_epoch: int = 0) -> Iterator[Any]:
    """Cycle through a (DistributedSampler-backed) loader forever, reshuffling each pass with ``set_epoch``."""
    epoch = start_epoch
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ConfigError("the training loader yields no batch: the dataset is smaller than one batch per worker")
        epoch += 1


class MemoizedDataset(Dataset):
    """Keeps decoded samples in memory after their first access, when the whole dataset fits in ``max_bytes``.

    Decoding a 96x192 PNG costs ~15 ms, comparable to a training step of the small models, and HIAST reads every
    target image again per pseudo-label round and per HPLA donor. Large (real) datasets are passed through.
    Samples are shared, so callers must not modify them in place (collation and the augmentations copy).
    """

    def __init__(self, dataset: Dataset, max_bytes: int = 768 * 2**20) -> None:
        self.dataset = dataset
        self.cache: dict[int, Any] = {}
        size = len(dataset)
        first = dataset[0] if size else {}
        per_sample = sum(v.numel() * v.element_size() for v in first.values() if isinstance(v, torch.Tensor))
        self.enabled = per_sample * size <= max_bytes
        if self.enabled and size:
            self.cache[0] = first

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if not self.enabled:
            return self.dataset[index]
        sample = self.cache.get(index)
        if sample is None:
            sample = self.cache[index] = self.dataset[index]
        return sample


class RunningMean:
    """Average named scalars between two reports (losses, confidences); NaN/inf values propagate on purpose."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, **values: float) -> None:
        """Record one value per name."""
        for name, value in values.items():
            self.totals[name] = self.totals.get(name, 0.0) + float(value)
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self, ctx: RunContext | None = None) -> dict[str, float]:
        """Per-name means; with a context they are averaged over workers (every rank must call this)."""
        names = sorted(self.totals)
        local = torch.tensor([self.totals[n] / max(1, self.counts[n]) for n in names], dtype=torch.float64)
        if ctx is not None and names:
            local = ctx.all_reduce_mean(local)
        return {name: float(value) for name, value in zip(names, local.tolist())}

    def reset(self) -> None:
        """Forget everything recorded."""
        self.totals.clear()
        self.counts.clear()


def stop_if_not_finite(ctx: RunContext, loss: torch.Tensor | float, where: str) -> None:
    """The NaN-loss policy: raise NonFiniteLossError on every rank together when any rank's loss is NaN/inf."""
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if ctx.any_rank_not_finite(value):
        raise NonFiniteLossError(f"training loss became {value} at {where}; stopping this trial")


def report_points(iterations: int, reports: int) -> list[int]:
    """Iterations (1-based, ascending) after which a run reports: ``reports`` evenly spaced, the last at ``iterations``.

    Duplicates collapse when ``reports`` exceeds ``iterations``, and no point is 0 (iteration 0 never reports).
    """
    return sorted({max(1, round(iterations * (j + 1) / reports)) for j in range(reports)})


def average_gradients(ctx: RunContext, parameters: Sequence[nn.Parameter]) -> None:
    """All-reduce-mean, in one collective, the gradients of modules that are not DDP-wrapped (GAN parts, auxiliary
    discriminators) so every worker steps with the same gradient; a no-op on one worker."""
    if ctx.world_size <= 1:
        return
    with_grad = [parameter for parameter in parameters if parameter.grad is not None]
    if not with_grad:
        return
    flat = ctx.all_reduce_mean(torch.cat([parameter.grad.reshape(-1) for parameter in with_grad]))
    offset = 0
    for parameter in with_grad:
        count = parameter.grad.numel()
        parameter.grad.copy_(flat[offset:offset + count].view_as(parameter.grad))
        offset += count


class Stopwatch:
    """Accumulates wall time per named phase (train loop, pseudo-labels, ...) for the speed benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def time(self, name: str) -> "_Phase":
        """Context manager adding the enclosed wall time to phase ``name``."""
        return _Phase(self, name)


class _Phase:
    def __init__(self, watch: Stopwatch, name: str) -> None:
        self.watch, self.name = watch, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.watch.seconds[self.name] = self.watch.seconds.get(self.name, 0.0) + time.perf_counter() - self.started


@torch.no_grad()
def target_confidence(model: nn.Module, ctx: RunContext, dataset: Dataset, count: int = 24,
                      batch_size: int = 8) -> float:
    """Label-free progress signal for schedulers: mean max-softmax of ``model`` on a fixed subset of target
    training images (the first ``count``, split across workers); per pixel for segmentation, per image otherwise."""
    was_training = model.training
    model.eval()
    indices = list(range(min(count, len(dataset))))[ctx.rank::ctx.world_size]
    total, pixels = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for start in range(0, len(indices), batch_size):
        images = torch.stack([dataset[i]["image"] for i in indices[start:start + batch_size]]).to(ctx.device)
        confidence = model(images).float().softmax(dim=1).max(dim=1).values
        total += confidence.double().sum().cpu()
        pixels += confidence.numel()
    model.train(was_training)
    return float(ctx.all_reduce_sum(total) / ctx.all_reduce_sum(pixels).clamp(min=1))
