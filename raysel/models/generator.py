"""Noise -> image generator used by SFDA's source-domain estimation (Liu et al., CVPR 2021, Eq. 3).

SFDA says only "an architecture similar to DCGAN [35]" with a 256-d latent space; the concrete layout follows the
DCGAN generator of DFAD (``GeneratorB`` in VainF/Data-Free-Adversarial-Distillation, the adversarial data-free
distillation SFDA builds on): z -> Linear -> ``8 ngf`` channels at 1/16 of the output size, BatchNorm, four
[ConvTranspose 4x4 stride 2 + BN + LeakyReLU 0.2] blocks (8ngf -> 4ngf -> 2ngf -> ngf -> ngf), 3x3 conv to RGB, tanh;
weights N(0, 0.02), BN weights N(1, 0.02).

One addition for raysel: segmentation networks here consume ImageNet-normalised images, so the tanh output is
mapped to pixels in [0, 1] and normalised with the ImageNet mean/std. Fake and real images then live in the same
input space (the BNS constraint on the first BatchNorm layer would otherwise have to learn that affine map).
Output sizes that are not multiples of 16 are produced at the next multiple and resized bilinearly.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from raysel.conventions import IMAGENET_MEAN, IMAGENET_STD  # as raysel.data normalises real images

UPSAMPLINGS = 4  # four stride-2 transposed convs: the projected map is 1/16 of the output


class NoiseToImageGenerator(nn.Module):
    """DCGAN-style generator G(z), z ~ N(0, 1) (SFDA Eq. 3), emitting ImageNet-normalised ``[B, 3, H, W]`` images."""

    def __init__(self, image_size: tuple[int, int], latent_dim: int = 256, width: int = 64, slope: float = 0.2) -> None:
        super().__init__()
        height, width_pixels = (int(v) for v in image_size)
        if height < 1 or width_pixels < 1:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        self.image_size = (height, width_pixels)
        self.latent_dim = latent_dim
        scale = 2**UPSAMPLINGS
        self.initial_size = (math.ceil(height / scale), math.ceil(width_pixels / scale))
        channels = (width * 8, width * 4, width * 2, width, width)
        self.project = nn.Linear(latent_dim, channels[0] * self.initial_size[0] * self.initial_size[1])
        layers: list[nn.Module] = [nn.BatchNorm2d(channels[0])]
        for in_channels, out_channels in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out_channels), nn.LeakyReLU(slope, inplace=True)]
        layers += [nn.Conv2d(channels[-1], 3, 3, padding=1), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._initialise()

    def _initialise(self) -> None:
        """DCGAN initialisation: conv/linear weights N(0, 0.02), biases 0, BN weights N(1, 0.02)."""
        for module in self.modules():
            if isinstance(module, (nn.ConvTranspose2d, nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def sample_noise(self, batch_size: int, generator: torch.Generator | None = None,
                     device: torch.device | None = None) -> torch.Tensor:
        """Draw z ~ N(0, I) of shape ``[batch_size, latent_dim]`` (on CPU from ``generator``, then moved)."""
        noise = torch.randn(batch_size, self.latent_dim, generator=generator)
        return noise.to(device) if device is not None else noise

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """Fake images ``[B, 3, H, W]``, ImageNet-normalised like the real data."""
        projected = self.project(noise.flatten(1)).view(noise.shape[0], -1, *self.initial_size)
        images = self.main(projected)
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        pixels = (images + 1.0) * 0.5
        return (pixels - self.mean) / self.std
