"""The models whose likelihood is `LowRankNormal`: their decoder head and their registry entries.

    SOS-VAE (Section 3)        N(μ, PPᵀ + εI), ε = 1e-5 fixed, R = 25; μ and P from 1×1
                               convolutions of the decoder's last features, P's R·C channels
                               read rank-major (component r is channels r·C … r·C + C − 1)
    App. A's ablation          a learned diagonal D = softplus(·) + ε per pixel, no entropy bound
    learned ε (ours)           one learned ε for all pixels, under the entropy bound
    distribution-only (4.5)    a single N(μ, PPᵀ + εI) over images: no network, no latent
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import ObservationModel, inverse_softplus, tiny_conv
from .lowrank import LowRankNormal

__all__ = ["LowRankHead", "DistributionOnly", "SOS", "SOS_LEARNED_DIAG", "SOS_LEARNED_EPS", "DISTRIBUTION"]


class LowRankHead(nn.Module):
    """Features → N(μ, PPᵀ + D): D = εI (paper), a learned per-pixel softplus(·) + ε (App. A),
    or a learned scalar ε·I (`learn_eps`: log ε is one parameter, starting at the given ε)."""

    variance_prefixes = ("factor", "diag", "log_eps")
    diagonal_prefixes = ("diag", "log_eps")  # on a log scale

    def __init__(self, c_in: int, image_channels: int, rank: int = 25, eps: float = 1e-5,
                 learn_diag: bool = False, learn_eps: bool = False):
        super().__init__()
        if learn_diag and learn_eps:
            raise ValueError("learn_diag and learn_eps both learn the diagonal; choose one")
        self.rank, self.eps, self.c = rank, eps, image_channels
        self.mean = tiny_conv(c_in, image_channels, 0.5)
        self.factor = tiny_conv(c_in, rank * image_channels, 0.0)
        self.diag = tiny_conv(c_in, image_channels, inverse_softplus(eps)) if learn_diag else None
        self.log_eps = nn.Parameter(torch.tensor(math.log(eps))) if learn_eps else None

    def forward(self, h: torch.Tensor, validate: bool = False) -> LowRankNormal:
        B = h.shape[0]
        loc = self.mean(h).flatten(1)
        # rank-major channels: component r is channels r·C … r·C + C − 1; flatten C, H, W
        P = self.factor(h).reshape(B, self.rank, -1).transpose(1, 2)
        if self.log_eps is not None:
            diag = self.log_eps.exp()
        else:
            diag = self.eps if self.diag is None else F.softplus(self.diag(h)).flatten(1) + self.eps
        return LowRankNormal(loc, P, diag, validate_args=validate)


class DistributionOnly(nn.Module):
    """Section 4.5: a single N(μ, PPᵀ + εI) over images, no network and no latent."""

    def __init__(self, image_shape: Sequence[int], rank: int = 25, eps: float = 1e-5,
                 init_std: float = 1e-3, seed: int = 0):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.kind, self.rank, self.eps, self.latent_dim = "distribution", rank, eps, 0
        S = math.prod(image_shape)
        g = torch.Generator().manual_seed(seed)
        self.loc = nn.Parameter(torch.full((S,), 0.5))
        # a small random P breaks the symmetry between components (P = 0 is a saddle)
        self.cov_factor = nn.Parameter(init_std * torch.randn(S, rank, generator=g))

    def distribution(self, batch: int = 1) -> LowRankNormal:
        S = self.loc.shape[0]
        return LowRankNormal(self.loc.expand(batch, S), self.cov_factor.expand(batch, S, self.rank),
                             self.eps, validate_args=False)

    def decode(self, z: torch.Tensor, validate: bool = False) -> LowRankNormal:
        return self.distribution(z.shape[0])

    def variance_parameters(self):
        return [self.cov_factor]

    def diagonal_parameters(self):
        return []

    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> LowRankNormal:
        return self.distribution(n)


SOS = ObservationModel(
    name="sos", label="SOS-VAE", entropy_bound=True,
    head=lambda c_in, image_shape, rank, eps, **_: LowRankHead(c_in, image_shape[0], rank, eps))
# Appendix A's ablation: a learned diagonal, no entropy bound, variance heads released at full rate
SOS_LEARNED_DIAG = ObservationModel(
    name="sos_learned_diag", label="SOS-VAE, learned D (App. A)", warm_release=False,
    head=lambda c_in, image_shape, rank, eps, **_: LowRankHead(c_in, image_shape[0], rank, eps, learn_diag=True))
# ours, not the paper's: the paper's likelihood with one learned ε for all pixels, under the entropy bound
SOS_LEARNED_EPS = ObservationModel(
    name="sos_learned_eps", label="SOS-VAE, learned ε", entropy_bound=True,
    head=lambda c_in, image_shape, rank, eps, **_: LowRankHead(c_in, image_shape[0], rank, eps, learn_eps=True))
DISTRIBUTION = ObservationModel(
    name="distribution", label="distribution-only", entropy_bound=True, step_cost=0.1,
    standalone=lambda image_shape, rank, eps, seed, **_: DistributionOnly(image_shape, rank, eps, seed=seed))
