"""The β-VAE baseline's pixel-independent Gaussian (paper Section 4.1).

    p(y | z) = N(μ, diag(σ²)),   σ² = softplus(·) + ε,

so a sample is μ plus uncorrelated pixel noise, y = μ + σ ⊙ ω_d: the paper's point of
contrast (Fig. 1, top). `PixelIndependent` holds what every pixel-independent model
shares (a mean and a per-pixel variance, a covariance that is zero off the diagonal,
edits that change nothing but the edited pixels); `DiagonalNormal` adds the Gaussian.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from .base import (LOG_2PI, ObservationDistribution, ObservationModel, check_finite, check_tensors,
                   flat_mask, inverse_softplus, tiny_conv)

__all__ = ["PixelIndependent", "DiagonalNormal", "DiagonalHead"]


class PixelIndependent(ObservationDistribution):
    """A distribution whose pixels are independent, given its mean and per-pixel variance.

    The batch shape is that of loc and variance broadcast together (both expanded to it).
    """

    arg_constraints = {"loc": constraints.real_vector,
                       "variance": constraints.independent(constraints.positive, 1)}

    def __init__(self, loc: torch.Tensor, variance: torch.Tensor,
                 validate_args: Optional[bool] = None):
        check_tensors(loc=loc, variance=variance)
        if loc.dim() < 1:
            raise ValueError("loc must have at least one dimension (..., S); flatten the image first")
        try:
            batch_shape = torch.broadcast_shapes(loc.shape, variance.shape)
        except RuntimeError:
            raise ValueError(f"variance of shape {tuple(variance.shape)} does not broadcast to "
                             f"loc {tuple(loc.shape)}; pass a (..., S) tensor") from None
        self.loc = loc.expand(batch_shape)
        self._variance = variance.expand(batch_shape)
        self._init_shapes(batch_shape[:-1], batch_shape[-1:], validate_args)
        if self._validate_args:
            check_finite("loc", loc)
            check_finite("variance", variance)
            if not (variance > 0).all():
                raise ValueError("variance must be strictly positive; parameterise it as exp(·)")

    def expand(self, batch_shape, _instance=None) -> "PixelIndependent":
        return self._expanded(PixelIndependent, batch_shape,
                              {"loc": (self.loc, 1), "_variance": (self._variance, 1)}, _instance)

    @property
    def variance(self) -> torch.Tensor:
        return self._variance

    @property
    def covariance_matrix(self) -> torch.Tensor:
        return torch.diag_embed(self._variance)

    def covariance_row(self, pixel_index: int) -> torch.Tensor:
        """Cov(y_i, y): zero everywhere but at pixel i itself."""
        S = self.event_shape[0]
        if not -S <= pixel_index < S:
            raise ValueError(f"pixel_index {pixel_index} is outside 0..{S - 1}")
        row = torch.zeros_like(self._variance)
        row[..., pixel_index % S] = self._variance[..., pixel_index % S]
        return row

    def conditional_mean(self, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Independent pixels: an edit changes nothing but the edited pixels."""
        mask = flat_mask(mask, self.event_shape[0])
        k = int(mask.sum())
        if values.shape[-1] != k:
            raise ValueError(f"values has {values.shape[-1]} entries but the mask selects k = {k} pixels")
        out = self.loc.clone()
        out[..., mask] = values.to(out.dtype).expand(out.shape[:-1] + (k,))
        return out

    def conditional(self, mask: torch.Tensor, values: torch.Tensor) -> "PixelIndependent":
        """p(y₁ | y₂ = b) for independent pixels: the unedited pixels' marginal, whatever the edit.

        mask: bool (S,) or (C, H, W) of the edited pixels; values: (..., k). The result holds
        the unedited pixels in flattened order, so that every model answers the same call.
        """
        mask = flat_mask(mask, self.event_shape[0])
        k = int(mask.sum())
        if values.shape[-1] != k:
            raise ValueError(f"values has {values.shape[-1]} entries but the mask selects k = {k} pixels")
        if bool(mask.all()):
            raise ValueError("the mask selects every pixel, so no pixel is left to condition; leave at "
                             "least one pixel unedited")
        return self.marginal(~mask)

    def marginal(self, keep: torch.Tensor) -> "PixelIndependent":
        """The distribution of the pixels `keep` selects (bool (S,) or (C, H, W)), in flattened order."""
        keep = flat_mask(keep, self.event_shape[0]).to(self.loc.device)
        if not keep.any():
            raise ValueError("keep selects no pixel; select at least one")
        return type(self)(self.loc[..., keep], self._variance[..., keep], validate_args=False)

    def first(self) -> "PixelIndependent":
        S = self.loc.shape[-1]
        return type(self)(self.loc.reshape(-1, S)[0].detach().float().cpu(),
                          self._variance.reshape(-1, S)[0].detach().float().cpu())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, S={self.event_shape[0]})"


class DiagonalNormal(PixelIndependent):
    """N(μ, diag(σ²)): the β-VAE's likelihood."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        self._check_value(value)
        r = value - self.loc
        return -0.5 * (LOG_2PI + self._variance.log() + r * r / self._variance).sum(-1)

    def entropy(self) -> torch.Tensor:
        return 0.5 * (1 + LOG_2PI + self._variance.log()).sum(-1)

    def rsample(self, sample_shape: torch.Size = torch.Size(),
                omega_p: Optional[torch.Tensor] = None,
                omega_d: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y = μ + σ ω_d: uncorrelated pixel noise (ω_p, if given, must be empty)."""
        _, omega_d = self._noise(sample_shape, omega_p, omega_d)
        return self.loc + self._variance.sqrt() * omega_d


class DiagonalHead(nn.Module):
    """Features → a pixel-independent distribution with variance softplus(·) + ε."""

    variance_prefixes = ("var",)
    diagonal_prefixes = ("var",)  # on a log scale: softplus(·) + ε
    distribution = DiagonalNormal

    def __init__(self, c_in: int, image_channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.mean = tiny_conv(c_in, image_channels, 0.5)
        self.var = tiny_conv(c_in, image_channels, inverse_softplus(eps))

    def forward(self, h: torch.Tensor, validate: bool = False) -> PixelIndependent:
        return self.distribution(self.mean(h).flatten(1), F.softplus(self.var(h)).flatten(1) + self.eps,
                                 validate_args=validate)


BETA = ObservationModel(
    name="beta", label="β-VAE", step_cost=0.8,
    head=lambda c_in, image_shape, eps, **_: DiagonalHead(c_in, image_shape[0], eps))
