"""Closed-form KL divergences between the Gaussian observation models and torch's Gaussians.

For Gaussians p = N(μ_p, Σ_p) and q = N(μ_q, Σ_q) over S pixels,

    KL(p ‖ q) = ½ [tr(Σ_q⁻¹Σ_p) + (μ_q − μ_p)ᵀΣ_q⁻¹(μ_q − μ_p) − S + log|Σ_q| − log|Σ_p|],

and with Σ_p = F Fᵀ + diag(d) (F: P for LowRankNormal, the Cholesky factor for
MultivariateNormal; d: D for LowRankNormal, σ² for DiagonalNormal and Independent(Normal))
the trace is Σ_j f_jᵀ Σ_q⁻¹ f_j + Σ_i d_i (Σ_q⁻¹)_ii: q's Mahalanobis norm of each column of
F and q's precision diagonal. For a LowRankNormal q both are O(S·R²) by Woodbury (paper
Section 3), so KL(LowRankNormal ‖ LowRankNormal) never forms an S × S matrix.

Registered with torch.distributions.kl_divergence for every pair of LowRankNormal,
DiagonalNormal, MultivariateNormal and Independent(Normal, 1) that has one of ours. The
pixel-independent Laplace and the sparse-precision model have none here.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch.distributions import Independent, MultivariateNormal, Normal, register_kl
from torch.distributions.multivariate_normal import _batch_mahalanobis

from .diagonal import DiagonalNormal
from .lowrank import LowRankNormal

__all__ = []  # importing the module registers the divergences


class _Gaussian(NamedTuple):
    """What the KL needs of one Gaussian: Σ = F Fᵀ + diag(d), log|Σ|, vᵀΣ⁻¹v, diag(Σ⁻¹)."""

    loc: torch.Tensor
    factor: Optional[torch.Tensor]
    diag: Optional[torch.Tensor]
    log_det: Callable[[], torch.Tensor]
    mahalanobis: Callable[[torch.Tensor], torch.Tensor]
    precision_diagonal: Callable[[], torch.Tensor]


def _independent(loc: torch.Tensor, variance: torch.Tensor) -> _Gaussian:
    return _Gaussian(loc, None, variance, lambda: variance.log().sum(-1),
                     lambda v: (v * v / variance).sum(-1), lambda: 1 / variance)


def _gaussian(d) -> _Gaussian:
    if isinstance(d, LowRankNormal):
        return _Gaussian(d.loc, d.cov_factor, d.cov_diag, d._log_det_cov, d._mahalanobis,
                         d._precision_diagonal)
    if isinstance(d, DiagonalNormal):
        return _independent(d.loc, d.variance)
    if isinstance(d, Independent) and isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1:
        return _independent(d.base_dist.loc, d.base_dist.scale.pow(2))
    if isinstance(d, MultivariateNormal):
        tril = d._unbroadcasted_scale_tril
        return _Gaussian(d.loc, tril, None, lambda: 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1),
                         lambda v: _batch_mahalanobis(tril, v),
                         lambda: d.precision_matrix.diagonal(dim1=-2, dim2=-1))
    raise NotImplementedError(f"no closed-form KL for {d!r}: of Independent, only Independent(Normal(loc, "
                              f"scale), 1) over the pixels has one")


def _kl_gaussian(p, q) -> torch.Tensor:
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL({type(p).__name__} ‖ {type(q).__name__}) needs one event shape, got "
                         f"{tuple(p.event_shape)} and {tuple(q.event_shape)}; both must be over the same S pixels")
    gp, gq = _gaussian(p), _gaussian(q)
    trace = 0
    if gp.factor is not None:  # the columns of F as a batch of vectors ahead of the KL's batch
        columns = gp.factor.movedim(-1, 0)
        batch_dims = len(torch.broadcast_shapes(p.batch_shape, q.batch_shape))
        columns = columns.reshape(columns.shape[:1] + (1,) * (batch_dims + 2 - columns.dim()) + columns.shape[1:])
        trace = trace + gq.mahalanobis(columns).sum(0)
    if gp.diag is not None:
        trace = trace + (gp.diag * gq.precision_diagonal()).sum(-1)
    kl = 0.5 * (trace + gq.mahalanobis(gq.loc - gp.loc) - p.event_shape[0] + gq.log_det() - gp.log_det())
    return kl.to(torch.promote_types(gp.loc.dtype, gq.loc.dtype))


def _kl_needs_independent(p, q):
    raise ValueError(f"KL({type(p).__name__} ‖ {type(q).__name__}): a Normal has event shape (), an image "
                     f"distribution (S,); wrap the Normal over the pixels as Independent(Normal(loc, scale), 1)")


_OURS = (LowRankNormal, DiagonalNormal)
for _p in _OURS + (MultivariateNormal, Independent):
    for _q in _OURS + (MultivariateNormal, Independent):
        if _p in _OURS or _q in _OURS:
            register_kl(_p, _q)(_kl_gaussian)
for _ours in _OURS:
    register_kl(_ours, Normal)(_kl_needs_independent)
    register_kl(Normal, _ours)(_kl_needs_independent)
