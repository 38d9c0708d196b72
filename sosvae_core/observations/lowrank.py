"""Observation distributions of SOS-VAE (paper Section 3).

An image y with S = C·H·W pixels (flattened in C, H, W order) is modelled as

    p(y | z) = N(μ, Σ),   Σ = P Pᵀ + D,

with the covariance factor P (`cov_factor`, S × R, rank R = 25 in the paper) and
the diagonal D (`cov_diag`), which the paper fixes to ε·I with ε = 1e-5.
Equivalently (eq. 4) a sample is

    y = μ + P ω_p + √D ω_d,   ω_p ~ N(0, I_R),  ω_d ~ N(0, I_S),

and everything below is O(S·R²): the S × S matrix Σ is never formed.

`LowRankHead` predicts μ and P from the decoder's features (SOS-VAE, and with a learned
D the unstabilised ablation of Appendix A); `DistributionOnly` is Section 4.5's single
N(μ, PPᵀ + εI) with no network.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .base import (LOG_2PI, ObservationDistribution, ObservationModel, check_finite, flat_mask,
                   inverse_softplus, tiny_conv)

__all__ = [
    "CapacitanceError",
    "LowRankNormal",
    "LowRankHead",
    "DistributionOnly",
]


class CapacitanceError(RuntimeError):
    """The R×R capacitance matrix I + Pᵀ D⁻¹ P could not be Cholesky-factorised."""


def _cholesky(capacitance: torch.Tensor) -> torch.Tensor:
    tril, info = torch.linalg.cholesky_ex(capacitance)
    if (info != 0).any():
        bad = int((info != 0).nonzero()[0, 0]) if info.dim() else 0
        raise CapacitanceError(
            f"Cholesky of the {capacitance.shape[-1]}×{capacitance.shape[-1]} capacitance "
            f"I + Pᵀ D⁻¹ P failed (batch element {bad}): it is not positive definite, which "
            f"means cov_factor or cov_diag hold huge or non-finite values; lower the learning "
            f"rate or raise the diagonal ε"
        )
    return tril


class _FixedDiagTerms(torch.autograd.Function):
    """Mahalanobis term and log|C| for Σ = PPᵀ + εI, with hand-derived gradients.

    (A learned diagonal D reaches it whitened, with ε = 1: see LowRankNormal.log_prob.)

    Forward: C = I + PᵀP/ε, ω* = C⁻¹Pᵀr/ε, u = r − Pω*, maha = ‖u‖²/ε + ‖ω*‖².
    Backward (ω* is a minimiser, so its own variation drops out):
        ∂maha/∂r = 2u/ε,   ∂maha/∂P = −2 u ω*ᵀ/ε,   ∂log|C|/∂P = 2 P C⁻¹/ε.
    This reads P about five times in all, where autograd through the same
    expression makes several more full S×R temporaries; see benchmarks/.
    """

    @staticmethod
    def forward(ctx, r, P, eps):
        tril = _cholesky(torch.eye(P.shape[-1], dtype=torch.float64, device=P.device)
                         + (P.mT @ P).double() / eps)
        omega = torch.cholesky_solve((P.mT @ r.unsqueeze(-1)).double() / eps, tril)
        u = r - (P @ omega.to(P.dtype)).squeeze(-1)
        maha = (u * u).sum(-1).double() / eps + omega.pow(2).sum((-2, -1))
        log_det_cap = 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        ctx.save_for_backward(P, u, omega, tril)
        ctx.eps = eps
        return maha, log_det_cap

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_maha, g_logdet):
        P, u, omega, tril = ctx.saved_tensors
        eps = ctx.eps
        g_r = g_P = None
        if ctx.needs_input_grad[0]:
            g_r = (2 / eps) * g_maha.to(u.dtype).unsqueeze(-1) * u
        if ctx.needs_input_grad[1]:
            eye = torch.eye(P.shape[-1], dtype=torch.float64, device=P.device)
            c_inv = torch.cholesky_solve(eye.expand_as(tril), tril)
            M = ((2 / eps) * g_logdet.unsqueeze(-1).unsqueeze(-1) * c_inv).to(P.dtype)
            g_P = P @ M
            w = ((-2 / eps) * g_maha.unsqueeze(-1).unsqueeze(-1) * omega.mT).to(P.dtype)
            g_P.addcmul_(u.unsqueeze(-1), w)  # in place: no second S×R temporary
        return g_r, g_P, None


class LowRankNormal(ObservationDistribution):
    """N(μ, P Pᵀ + D) over flattened images (paper Section 3).

    Args:
        loc: μ, shape (..., S).
        cov_factor: P, shape (..., S, R) with R ≤ S.
        cov_diag: D, either a positive float ε (the paper's fixed ε·I, default 1e-5)
            or a positive tensor broadcastable to (..., S) (a learned diagonal).
        validate_args: check shapes and finiteness (costs one pass over P).

    The R×R linear algebra runs in float64: it is tiny, and it keeps the
    capacitance I + PᵀP/ε well-conditioned-enough for ε = 1e-5 in float32 nets.
    """

    def __init__(
        self,
        loc: torch.Tensor,
        cov_factor: torch.Tensor,
        cov_diag: Union[float, torch.Tensor] = 1e-5,
        validate_args: Optional[bool] = None,
    ):
        if loc.dim() < 1:
            raise ValueError("loc must have at least one dimension (..., S); flatten the image first")
        if cov_factor.dim() < 2:
            raise ValueError("cov_factor must have shape (..., S, R); got a tensor of shape "
                             f"{tuple(cov_factor.shape)}")
        S, R = cov_factor.shape[-2:]
        if loc.shape[-1] != S:
            raise ValueError(
                f"loc has S = {loc.shape[-1]} pixels but cov_factor has {S} rows; both must "
                f"describe the same flattened image (loc: (..., S), cov_factor: (..., S, R))"
            )
        if R > S:
            raise ValueError(f"rank R = {R} exceeds the number of pixels S = {S}; use R ≤ S")
        if isinstance(cov_diag, torch.Tensor):
            if cov_diag.dim() == 0:
                cov_diag = float(cov_diag)
            else:
                try:
                    torch.broadcast_shapes(cov_diag.shape, loc.shape)
                except RuntimeError:
                    raise ValueError(
                        f"cov_diag of shape {tuple(cov_diag.shape)} does not broadcast to loc "
                        f"{tuple(loc.shape)}; pass a float ε or a tensor of shape (..., S)"
                    ) from None
        if isinstance(cov_diag, (int, float)):
            if not (cov_diag > 0) or not math.isfinite(cov_diag):
                raise ValueError(
                    f"the diagonal ε must be a positive finite number, got {cov_diag}; "
                    f"the paper uses ε = 1e-5"
                )
            cov_diag = float(cov_diag)
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], cov_factor.shape[:-2])
        self.loc = loc.expand(batch_shape + (S,))
        self.cov_factor = cov_factor.expand(batch_shape + (S, R))
        self.cov_diag = cov_diag
        super().__init__(batch_shape, torch.Size([S]), validate_args=validate_args)
        if self._validate_args:
            check_finite("loc", loc)
            check_finite("cov_factor", cov_factor)
            if isinstance(cov_diag, torch.Tensor):
                check_finite("cov_diag", cov_diag)
                if not (cov_diag > 0).all():
                    raise ValueError("cov_diag must be strictly positive everywhere; "
                                     "parameterise it as exp(·) or softplus(·) + ε")
        self._cap_tril = None
        self._log_det_cap = None

    # -- sizes and the scalar-ε special case ----------------------------------------

    @property
    def rank(self) -> int:
        return self.cov_factor.shape[-1]

    @property
    def fixed_diag(self) -> bool:
        """True for the paper's D = ε·I, where the capacitance is I + PᵀP/ε."""
        return isinstance(self.cov_diag, float)

    @property
    def diagonal(self) -> torch.Tensor:
        """D as a (..., S) tensor, whether fixed (ε) or learned."""
        return self._diag_tensor()

    def _diag_tensor(self) -> torch.Tensor:
        if self.fixed_diag:
            return self.loc.new_full(self.loc.shape, self.cov_diag)
        return self.cov_diag.expand(self.loc.shape)

    def _inv_diag_times(self, t: torch.Tensor, columns: bool = False) -> torch.Tensor:
        """D⁻¹ t for a vector t (..., S), or for a matrix t (..., S, k) when `columns`."""
        if self.fixed_diag:
            return t / self.cov_diag
        d = self.cov_diag.expand(self.loc.shape)
        return t / (d.unsqueeze(-1) if columns else d)

    # -- Woodbury and the determinant lemma --------------------------------------------

    @property
    def capacitance_tril(self) -> torch.Tensor:
        """Cholesky factor of the capacitance C = I + Pᵀ D⁻¹ P (float64, cached)."""
        if self._cap_tril is None:
            P = self.cov_factor
            if self.fixed_diag:  # scale the R×R result, not the S×R factor
                gram = (P.mT @ P) / self.cov_diag
            else:
                gram = P.mT @ self._inv_diag_times(P, columns=True)  # the O(S·R²) step
            eye = torch.eye(self.rank, dtype=torch.float64, device=P.device)
            self._cap_tril = _cholesky(eye + gram.double())
        return self._cap_tril

    def _log_det_cov(self) -> torch.Tensor:
        # matrix determinant lemma: log|PPᵀ + D| = log|C| + log|D|
        if self._log_det_cap is None:
            self._log_det_cap = 2 * self.capacitance_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        if self.fixed_diag:
            log_det_d = self.event_shape[0] * math.log(self.cov_diag)
        else:
            log_det_d = self.cov_diag.log().expand(self.loc.shape).sum(-1).double()
        return self._log_det_cap + log_det_d

    def _posterior_omega(self, residual: torch.Tensor) -> torch.Tensor:
        """ω* = C⁻¹ Pᵀ D⁻¹ r: the mean of ω_p given y (the Woodbury solve)."""
        rhs = (self.cov_factor.mT @ self._inv_diag_times(residual).unsqueeze(-1)).double()
        return torch.cholesky_solve(rhs, self.capacitance_tril).squeeze(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(y; μ, PPᵀ + D), O(S·R²).

        The Mahalanobis term uses Woodbury in its minimisation form,
            rᵀ Σ⁻¹ r = min_ω ‖r − Pω‖²_{D⁻¹} + ‖ω‖²  at  ω* = C⁻¹ Pᵀ D⁻¹ r,
        which equals rᵀD⁻¹r − ‖L⁻¹PᵀD⁻¹r‖² but subtracts per pixel rather than two
        sums of size ~S/ε, so float32 does not cancel catastrophically at ε = 1e-5.
        """
        if value.shape[-1] != self.event_shape[0]:
            raise ValueError(f"value has {value.shape[-1]} pixels, expected S = "
                             f"{self.event_shape[0]}; flatten images to (..., S)")
        r = value - self.loc
        S = self.event_shape[0]
        if r.shape == self.loc.shape:
            # one value per distribution: fused gradients. A learned D is whitened first,
            # Σ = D^½ (P̃P̃ᵀ + I) D^½ with P̃ = D^-½ P and r̃ = D^-½ r, so that the same
            # terms apply with ε = 1 and log|Σ| = log|C| + Σᵢ log Dᵢ (C is unchanged).
            if self.fixed_diag:
                maha, log_det_cap = _FixedDiagTerms.apply(r, self.cov_factor, self.cov_diag)
                log_det_d = S * math.log(self.cov_diag)
            else:
                d = self.cov_diag.expand(self.loc.shape)
                inv_sqrt_d = d.rsqrt()
                maha, log_det_cap = _FixedDiagTerms.apply(r * inv_sqrt_d, self.cov_factor * inv_sqrt_d.unsqueeze(-1),
                                                          1.0)
                log_det_d = d.log().sum(-1).double()
            if self._log_det_cap is None:
                self._log_det_cap = log_det_cap  # shared with entropy()
            log_det = log_det_cap + log_det_d
        else:
            omega = self._posterior_omega(r)
            unexplained = r - (self.cov_factor @ omega.to(r.dtype).unsqueeze(-1)).squeeze(-1)
            maha = (unexplained * self._inv_diag_times(unexplained)).sum(-1).double()
            maha = maha + omega.pow(2).sum(-1)
            log_det = self._log_det_cov()
        return (-0.5 * (S * LOG_2PI + log_det + maha)).to(value.dtype)

    def entropy(self) -> torch.Tensor:
        """H = S/2·(1 + log 2π) + ½ log|Σ| (closed form)."""
        S = self.event_shape[0]
        return (0.5 * S * (1 + LOG_2PI) + 0.5 * self._log_det_cov()).to(self.loc.dtype)

    # -- moments and sampling (eq. 4) ------------------------------------------------------

    @property
    def variance(self) -> torch.Tensor:
        """Per-pixel variance diag(Σ) = Σ_r P_{ir}² + D_i."""
        return self.cov_factor.pow(2).sum(-1) + self._diag_tensor()

    @property
    def covariance_matrix(self) -> torch.Tensor:
        """Dense Σ; for tests and tiny images only (S × S memory)."""
        return self.cov_factor @ self.cov_factor.mT + torch.diag_embed(self._diag_tensor())

    def covariance_row(self, pixel_index: int) -> torch.Tensor:
        """Cov(y_i, y) for one pixel i, shape (..., S): P P_iᵀ + D_i e_i (Fig. 2 slices)."""
        S = self.event_shape[0]
        if not -S <= pixel_index < S:
            raise ValueError(f"pixel_index {pixel_index} is outside 0..{S - 1}")
        pixel_index %= S
        row = (self.cov_factor @ self.cov_factor[..., pixel_index, :].unsqueeze(-1)).squeeze(-1)
        row = row.clone()
        row[..., pixel_index] += self._diag_tensor()[..., pixel_index]
        return row

    def rsample(self, sample_shape: torch.Size = torch.Size(),
                omega_p: Optional[torch.Tensor] = None,
                omega_d: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y = μ + P ω_p + √D ω_d (eq. 4), drawing whichever ω is not given.

        omega_p: (*sample_shape, *batch, R); omega_d: (*sample_shape, *batch, S).
        """
        omega_p, omega_d = self._noise(sample_shape, omega_p, omega_d)
        structured = (self.cov_factor @ omega_p.unsqueeze(-1)).squeeze(-1)
        return self.loc + structured + self._diag_tensor().sqrt() * omega_d

    @property
    def noise_rank(self) -> int:
        return self.rank

    def first(self) -> "LowRankNormal":
        S, R = self.cov_factor.shape[-2:]
        loc = self.loc.reshape(-1, S)[0]
        P = self.cov_factor.reshape(-1, S, R)[0]
        diag = self.cov_diag
        if not self.fixed_diag:
            diag = diag.expand(self.loc.shape).reshape(-1, S)[0].detach().float().cpu()
        # row-major P: the edit panel gathers rows of it (P₂ in eqs. 6–7)
        return LowRankNormal(loc.detach().float().cpu(), P.detach().float().cpu().contiguous(),
                             diag, validate_args=False)

    # -- components (eq. 5) and editing (eqs. 6–7) --------------------------------------

    def principal_components(self):
        """SVD P = U diag(s) Vᵀ through the R×R Gram matrix PᵀP = V diag(s²) Vᵀ.

        Returns (U (..., S, R), s (..., R), V (..., R, R)), sorted by decreasing s.
        Columns of U whose singular value is zero are returned as zeros.
        """
        P = self.cov_factor
        evals, V = torch.linalg.eigh((P.mT @ P).double())
        evals, V = evals.flip(-1), V.flip(-1)  # eigh sorts ascending
        s = evals.clamp_min(0).sqrt()
        tol = s[..., :1] * max(P.shape[-2:]) * torch.finfo(P.dtype).eps
        inv_s = torch.where(s > tol, 1 / s, torch.zeros_like(s))
        U = P @ (V * inv_s.unsqueeze(-2)).to(P.dtype)
        return U, s.to(P.dtype), V.to(P.dtype)

    def scale_components(self, scales: torch.Tensor) -> "LowRankNormal":
        """The distribution with P = U (S·A) Vᵀ (eq. 5), A = diag(scales).

        scales: (R,) or (..., R), in the order of `principal_components` (largest first).
        Scaling by ones returns the same covariance.
        """
        U, s, V = self.principal_components()
        scales = torch.as_tensor(scales, dtype=s.dtype, device=s.device)
        if scales.shape[-1] != self.rank:
            raise ValueError(f"scales has {scales.shape[-1]} entries, expected one per component (R = {self.rank})")
        P = U @ ((s * scales).unsqueeze(-1) * V.mT)
        return LowRankNormal(self.loc, P, self.cov_diag, validate_args=False)

    def conditional_mean(self, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """E[y₁ | y₂ = b] for edited pixels y₂ (eqs. 6–7), returned as a full image.

        μ₁ + Σ₁₂ Σ₂₂⁻¹ (b − μ₂) = μ₁ + P₁ ω*, with ω* = (I + P₂ᵀD₂⁻¹P₂)⁻¹ P₂ᵀ D₂⁻¹ (b − μ₂)
        the posterior mean of ω_p given the edit (Woodbury on Σ₂₂): O(k·R² + S·R) for k
        edited values, and no k × k matrix.

        mask: bool (S,) or (C, H, W), shared by the batch; values: (..., k) in the
        flattened order of the masked pixels. Edited pixels take exactly `values`.
        """
        S = self.event_shape[0]
        mask = flat_mask(mask, S)
        k = int(mask.sum())
        if values.shape[-1] != k:
            raise ValueError(f"values has {values.shape[-1]} entries but the mask selects k = {k} pixels")
        if k == 0:
            return self.loc.clone()
        idx = mask.nonzero().squeeze(-1)
        P2 = self.cov_factor.index_select(-2, idx)
        if self.fixed_diag:
            inv_d2 = 1.0 / self.cov_diag
        else:
            inv_d2 = (1.0 / self.cov_diag.expand(self.loc.shape).index_select(-1, idx)).unsqueeze(-1)
        d = (values - self.loc.index_select(-1, idx)).unsqueeze(-1)
        P2s = P2 * inv_d2
        cap = torch.eye(self.rank, dtype=torch.float64, device=P2.device) + (P2.mT @ P2s).double()
        omega = torch.cholesky_solve((P2s.mT @ d).double(), _cholesky(cap))
        out = self.loc + (self.cov_factor @ omega.to(self.loc.dtype)).squeeze(-1)
        out = out.clone()
        out[..., idx] = values.to(out.dtype).expand(out.shape[:-1] + (k,))
        return out

    def __repr__(self) -> str:
        diag = f"ε={self.cov_diag:g}" if self.fixed_diag else "learned diagonal"
        return (f"LowRankNormal(batch_shape={tuple(self.batch_shape)}, S={self.event_shape[0]}, "
                f"R={self.rank}, {diag})")


class LowRankHead(nn.Module):
    """Features → N(μ, PPᵀ + D): D = εI (paper) or a learned softplus(·) + ε."""

    variance_prefixes = ("factor", "diag")
    diagonal_prefixes = ("diag",)  # on a log scale: softplus(·) + ε

    def __init__(self, c_in: int, image_channels: int, rank: int = 25, eps: float = 1e-5,
                 learn_diag: bool = False):
        super().__init__()
        self.rank, self.eps, self.c = rank, eps, image_channels
        self.mean = tiny_conv(c_in, image_channels, 0.5)
        self.factor = tiny_conv(c_in, rank * image_channels, 0.0)
        self.diag = tiny_conv(c_in, image_channels, inverse_softplus(eps)) if learn_diag else None

    def forward(self, h: torch.Tensor, validate: bool = False) -> LowRankNormal:
        B = h.shape[0]
        loc = self.mean(h).flatten(1)
        # rank-major channels: component r is channels r·C … r·C + C − 1; flatten C, H, W
        P = self.factor(h).reshape(B, self.rank, -1).transpose(1, 2)
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
DISTRIBUTION = ObservationModel(
    name="distribution", label="distribution-only", entropy_bound=True, step_cost=0.1,
    standalone=lambda image_shape, rank, eps, seed, **_: DistributionOnly(image_shape, rank, eps, seed=seed))
