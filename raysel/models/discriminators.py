"""Adversarial discriminators and the gradient reversal layer used by the adaptation methods.

* :class:`OutputSpaceDiscriminator`: AdaptSegNet's FCDiscriminator on softmax maps (HIAST/IAST adversarial warm-up).
* :class:`PatchDiscriminator`: easy-vs-hard patch discriminator of SFDA's IPSM (Eq. 15), conditioned on the patch
  position k.
* :class:`DomainDiscriminator`: DANN's MLP on feature vectors (GSDA's domain/group/class discriminators).
* :class:`GradientReversal`: DANN's gradient reversal layer.

All discriminators return logits (use ``BCEWithLogitsLoss``, or MSE for LSGAN as IAST does).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _strided_conv_stack(in_channels: int, ndf: int, num_layers: int, first_kernel_size: int) -> nn.Sequential:
    """``num_layers`` convs (stride 2, pad 1) with widths ndf, 2ndf, 4ndf, 8ndf..., each followed by LeakyReLU 0.2."""
    layers: list[nn.Module] = []
    channels = in_channels
    for index in range(num_layers):
        width = ndf * 2**index
        kernel_size = first_kernel_size if index == 0 else 4
        layers += [nn.Conv2d(channels, width, kernel_size, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels = width
    return nn.Sequential(*layers)


class OutputSpaceDiscriminator(nn.Module):
    """AdaptSegNet FCDiscriminator: 5 convs (k4, s2, p1) C->ndf->2ndf->4ndf->8ndf->1, LeakyReLU 0.2 between.

    Input: the C-channel softmax of full-resolution logits. Output: a logit map at 1/32 resolution.
    ``ndf=64`` is the paper/HIAST width; use a narrower one for CPU runs. ``first_kernel_size=3`` reproduces
    IAST's 3x3 first conv (HIAST and AdaptSegNet use 4).
    """

    def __init__(self, num_classes: int, ndf: int = 64, first_kernel_size: int = 4) -> None:
        super().__init__()
        self.features = _strided_conv_stack(num_classes, ndf, num_layers=4, first_kernel_size=first_kernel_size)
        self.classifier = nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=2, padding=1)

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Source/target logit map ``[B, 1, ~H/32, ~W/32]``."""
        return self.classifier(self.features(probabilities))


class PatchDiscriminator(nn.Module):
    """SFDA IPSM discriminator D(k, i_{t,k}) (Eq. 15): scores a patch's prediction map as easy vs hard.

    Same DCGAN/AdaptSegNet trunk (``num_layers`` convs k4 s2 p1, LeakyReLU 0.2) on the patch's C-channel softmax,
    global average pooling to ``h``, then a logit. SFDA says D is a *conditional* version with a 256-d label
    embedding of the patch position k in {0..K^2-1}; the paper's supplement with the exact design is not available,
    so we use the projection-discriminator form (Miyato & Koyama 2018):
    ``logit = w.h + b + embed(k) . P h`` with ``embed`` of dimension ``embedding_dim`` (256).
    ``num_positions=None`` makes it unconditional. Patches must be at least ``2**num_layers`` pixels on each side.
    """

    def __init__(
        self,
        num_classes: int,
        num_positions: int | None = None,
        ndf: int = 64,
        num_layers: int = 4,
        embedding_dim: int = 256,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.features = _strided_conv_stack(num_classes, ndf, num_layers=num_layers, first_kernel_size=4)
        feature_channels = ndf * 2 ** (num_layers - 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(feature_channels, 1)
        self.num_positions = num_positions
        if num_positions is not None:
            self.position_embedding = nn.Embedding(num_positions, embedding_dim)
            self.projection = nn.Linear(feature_channels, embedding_dim, bias=False)

    def forward(self, probabilities: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        """Logit ``[B]`` per patch; ``position`` (int64 ``[B]``) is required iff the discriminator is conditional."""
        minimum = 2**self.num_layers
        if min(probabilities.shape[-2:]) < minimum:
            raise ValueError(f"patches must be at least {minimum}x{minimum} for {self.num_layers} stride-2 convs; got {tuple(probabilities.shape[-2:])}")
        pooled = self.pool(self.features(probabilities)).flatten(1)
        logit = self.linear(pooled).squeeze(1)
        if self.num_positions is None:
            if position is not None:
                raise ValueError("this PatchDiscriminator is unconditional (num_positions=None) but got positions")
            return logit
        if position is None:
            raise ValueError("this PatchDiscriminator is conditional: pass the patch position k for every patch")
        return logit + (self.position_embedding(position) * self.projection(pooled)).sum(dim=1)


class DomainDiscriminator(nn.Module):
    """DANN domain classifier on feature vectors: in -> hidden -> hidden -> 1, ReLU + dropout 0.5 after each hidden.

    DANN (ResNet-50 experiments) uses hidden=1024; GSDA builds its domain, group and class discriminators from it.
    Output: one logit per sample ``[B]``.
    """

    def __init__(self, in_features: int, hidden: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Domain logit per sample ``[B]``."""
        return self.layers(features).squeeze(1)


class _GradientReversalFunction(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``-coefficient`` backward (DANN Eq. 9 / §3.3)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coefficient: float) -> torch.Tensor:  # type: ignore[override]
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.coefficient * grad_output, None


def gradient_reversal(x: torch.Tensor, coefficient: float = 1.0) -> torch.Tensor:
    """Functional gradient reversal: ``x`` forward, ``-coefficient * grad`` backward."""
    return _GradientReversalFunction.apply(x, coefficient)


class GradientReversal(nn.Module):
    """Gradient reversal layer; set ``coefficient`` during training (e.g. from :func:`dann_coefficient`)."""

    def __init__(self, coefficient: float = 1.0) -> None:
        super().__init__()
        self.coefficient = coefficient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Identity forward; reversed, scaled gradient backward."""
        return gradient_reversal(x, self.coefficient)

    def extra_repr(self) -> str:
        return f"coefficient={self.coefficient}"


def dann_coefficient(progress: float, gamma: float = 10.0, high: float = 1.0) -> float:
    """DANN's GRL schedule lambda_p = high * (2 / (1 + exp(-gamma * p)) - 1), p = training progress in [0, 1]."""
    return high * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)
