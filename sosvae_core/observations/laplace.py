"""A pixel-independent Laplace likelihood: the L1 baseline many VAE users compare against.

    p(y | z) = Π_i 1/(2b_i) · exp(−|y_i − μ_i| / b_i),   b_i = σ_i / √2,

with the per-pixel variance σ² = 2b² predicted as the β-VAE's is (softplus(·) + ε), so
the two baselines differ only in the shape of the pixel noise. Not in the paper; it is
trained like the β-VAE (the KL target only) and shows that pixel-independent noise looks
the same whatever its shape.

    log p(y | z) = −Σ_i [log(2b_i) + |y_i − μ_i| / b_i],   H = Σ_i [1 + log(2b_i)].

A sample is driven by the same standard-normal ω_d as every other model, mapped through
the Laplace quantile: u = Φ(ω_d), y = μ − b·sign(u − ½)·log(1 − 2|u − ½|), computed as
y = μ − b·sign(ω_d)·(log 2 + log Φ(−|ω_d|)) so that the tails stay exact.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .base import ObservationModel
from .diagonal import DiagonalHead, PixelIndependent

__all__ = ["DiagonalLaplace", "LaplaceHead"]

LOG_2 = math.log(2.0)


class DiagonalLaplace(PixelIndependent):
    """Independent Laplace pixels with mean μ and variance σ² (scale b = σ/√2)."""

    @property
    def scale(self) -> torch.Tensor:
        return (self._variance / 2).sqrt()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        self._check_value(value)
        b = self.scale
        return -((2 * b).log() + (value - self.loc).abs() / b).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (1 + (2 * self.scale).log()).sum(-1)

    def rsample(self, sample_shape: torch.Size = torch.Size(),
                omega_p: Optional[torch.Tensor] = None,
                omega_d: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y = μ + b·F⁻¹(Φ(ω_d)) with F the standard Laplace CDF (ω_p, if given, must be empty)."""
        _, omega_d = self._noise(sample_shape, omega_p, omega_d)
        magnitude = -(LOG_2 + torch.special.log_ndtr(-omega_d.abs()))
        return self.loc + self.scale * omega_d.sign() * magnitude


class LaplaceHead(DiagonalHead):
    """Features → independent Laplace pixels, variance softplus(·) + ε (the β-VAE's head)."""

    distribution = DiagonalLaplace


LAPLACE = ObservationModel(
    name="laplace", label="Laplace VAE", step_cost=0.8,
    head=lambda c_in, image_shape, eps, **_: LaplaceHead(c_in, image_shape[0], eps))
