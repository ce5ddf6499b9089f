"""Model helpers shared by the methods: DDP unwrapping, BatchNorm freezing, mean-teacher copies and EMA updates."""

from __future__ import annotations

import copy

import torch
from torch import nn

from raysel.conventions import BATCHNORM_TYPES
from raysel.methods.base import RunContext
from raysel.models import default_model_name

__all__ = [
    "unwrap", "freeze_batchnorm", "make_ema_teacher", "ema_update", "model_name",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def freeze_batchnorm(model: nn.Module, frozen: bool = True) -> nn.Module:
    """Freeze every BatchNorm layer (no affine updates, running statistics fixed), as HIAST's self-training does.

    raysel models implement ``freeze_batchnorm`` so the freeze survives ``model.train()``; for other modules the BN
    layers are put in eval mode now (call again after ``train()``).
    """
    inner = unwrap(model)
    if hasattr(inner, "freeze_batchnorm"):
        inner.freeze_batchnorm(frozen)
        return model
    for module in inner.modules():
        if isinstance(module, BATCHNORM_TYPES):
            for parameter in module.parameters():
                parameter.requires_grad_(not frozen)
            module.train(not frozen and inner.training)
    return model


def make_ema_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of the student for the mean teacher (eval mode, no gradients)."""
    teacher = copy.deepcopy(unwrap(student))
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, tau: float) -> None:
    """Mean-teacher update, HIAST Eq. 13: ``w_teacher = tau * w_teacher + (1 - tau) * w_student``.

    Floating-point buffers (BN running statistics) are copied from the student, as HIAST's code does; with frozen
    BN they are identical anyway.
    """
    student = unwrap(student)
    teacher_parameters = list(teacher.parameters())
    student_parameters = [p.detach() for p in student.parameters()]
    if len(teacher_parameters) != len(student_parameters):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_mul_(teacher_parameters, tau)
    torch._foreach_add_(teacher_parameters, student_parameters, alpha=1.0 - tau)
    for teacher_buffer, student_buffer in zip(teacher.buffers(), student.buffers()):
        teacher_buffer.copy_(student_buffer)


def model_name(ctx: RunContext) -> str:
    """The resolved network name (the spec may leave it to the task's default)."""
    return ctx.spec.model or default_model_name(ctx.task)
