"""The SOS-VAE likelihood, N(μ, PPᵀ + D) over images, as a torch Distribution (paper Section 3).

An image y with S = C·H·W pixels (flattened in C, H, W order) is modelled as

    p(y | z) = N(μ, Σ),   Σ = P Pᵀ + D,

with the covariance factor P (`cov_factor`, S × R, rank R = 25 in the paper) and
the diagonal D (`cov_diag`), which the paper fixes to ε·I with ε = 1e-5.
Equivalently (eq. 4) a sample is

    y = μ + P ω_p + √D ω_d,   ω_p ~ N(0, I_R),  ω_d ~ N(0, I_S),

and everything is O(S·R²): the S × S matrix Σ is never formed. With the capacitance
C = I + Pᵀ D⁻¹ P (R × R) and its Cholesky factor L (Woodbury, determinant lemma; the
algebra and its gradients are in `woodbury`):

    log N(y; μ, Σ) = −½ (S log 2π + log|C| + log|D| + rᵀΣ⁻¹r),   r = y − μ,
    rᵀΣ⁻¹r = min_ω ‖r − Pω‖²_{D⁻¹} + ‖ω‖²   at ω* = C⁻¹ Pᵀ D⁻¹ r,
    H = S/2 (1 + log 2π) + ½ (log|C| + log|D|).

Editing (eqs. 6–7) conditions on edited pixels y₂ = b through the same R × R algebra:
the mean μ₁ + P₁ω* and, whole, a LowRankNormal over the unedited pixels again.

The heads that predict μ and P from a decoder's features (SOS-VAE, App. A's learned
diagonal) and Section 4.5's single N(μ, PPᵀ + εI) are in `sos`.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch.distributions import constraints

from .base import LOG_2PI, ObservationDistribution, broadcast_batch, check_finite, check_tensors, flat_mask
from .woodbury import CapacitanceError, Gram64, WoodburyTerms, log_det, mahalanobis_terms, woodbury

__all__ = ["CapacitanceError", "LowRankNormal"]


def _split_diag(cov_diag, loc: torch.Tensor):
    """cov_diag → (ε, D): ε (a float or a 0-d tensor) when every diagonal entry is one value,
    the paper's D = εI and the fast path; else D, a tensor broadcastable to (..., S)."""
    if isinstance(cov_diag, bool) or not isinstance(cov_diag, (int, float, torch.Tensor)):
        raise ValueError(f"cov_diag must be a positive float ε or a tensor broadcastable to (..., S), "
                         f"got {type(cov_diag).__name__} {cov_diag!r}; pass e.g. 1e-5 (the paper's ε)")
    if not isinstance(cov_diag, torch.Tensor):
        eps = float(cov_diag)
        if not (eps > 0) or not math.isfinite(eps):
            raise ValueError(f"the diagonal ε must be a positive finite number, got {cov_diag}; "
                             f"the paper uses ε = 1e-5")
        return eps, None
    check_tensors(loc=loc, cov_diag=cov_diag)
    if cov_diag.dim() == 0:
        return cov_diag, None
    if cov_diag.shape[-1] not in (1, loc.shape[-1]):
        raise ValueError(f"cov_diag of shape {tuple(cov_diag.shape)} does not broadcast to loc "
                         f"{tuple(loc.shape)}; pass a float ε or a tensor of shape (..., S)")
    if all(n == 1 or st == 0 for n, st in zip(cov_diag.shape, cov_diag.stride())):
        # one stored value expanded (e.g. another LowRankNormal's cov_diag): the fast path
        return cov_diag[(0,) * cov_diag.dim()], None
    return None, cov_diag


class LowRankNormal(ObservationDistribution):
    """N(μ, P Pᵀ + D) over flattened images (paper Section 3), a torch Distribution.

    Args:
        loc: μ, shape (..., S).
        cov_factor: P, shape (..., S, R) with R ≤ S.
        cov_diag: D, either a positive float ε (the paper's fixed ε·I, default 1e-5), a
            0-d tensor ε (e.g. a learned noise level; it gets gradients), or a positive
            tensor broadcastable to (..., S) (a learned diagonal).
        validate_args: check finiteness and positivity (costs one pass over P), and check
            values in log_prob as torch does; None follows torch's global default.

    The batch shape is that of loc, cov_factor and cov_diag broadcast together; the
    attributes `loc`, `cov_factor` and `cov_diag` are expanded to it, as in torch's
    LowRankMultivariateNormal. `kl_divergence` is registered against itself, torch's
    MultivariateNormal and Independent(Normal, 1), and DiagonalNormal (observations.kl).
    """

    arg_constraints = {"loc": constraints.real_vector,
                       "cov_factor": constraints.independent(constraints.real, 2),
                       "cov_diag": constraints.independent(constraints.positive, 1)}

    def __init__(
        self,
        loc: torch.Tensor,
        cov_factor: torch.Tensor,
        cov_diag: Union[float, torch.Tensor] = 1e-5,
        validate_args: Optional[bool] = None,
    ):
        check_tensors(loc=loc, cov_factor=cov_factor)
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
        eps, diag = _split_diag(cov_diag, loc)
        diag_batch = cov_diag.shape[:-1] if isinstance(cov_diag, torch.Tensor) else torch.Size()
        batch_shape = broadcast_batch(loc=loc.shape[:-1], cov_factor=cov_factor.shape[:-2],
                                      cov_diag=diag_batch)
        self.loc = loc.expand(batch_shape + (S,))
        self.cov_factor = cov_factor.expand(batch_shape + (S, R))
        self._eps = eps
        self._diag = None if diag is None else diag.expand(batch_shape + (S,))
        self._cap_tril = None
        self._log_det_cap = None
        self._init_shapes(batch_shape, torch.Size([S]), validate_args)
        if self._validate_args:
            check_finite("loc", loc)
            check_finite("cov_factor", cov_factor)
            if isinstance(cov_diag, torch.Tensor):
                check_finite("cov_diag", cov_diag)
                if not (cov_diag > 0).all():
                    raise ValueError("cov_diag must be strictly positive everywhere; "
                                     "parameterise it as exp(·) or softplus(·) + ε")

    def expand(self, batch_shape, _instance=None) -> "LowRankNormal":
        new = self._expanded(LowRankNormal, batch_shape, {
            "loc": (self.loc, 1), "cov_factor": (self.cov_factor, 2), "_diag": (self._diag, 1),
            "_cap_tril": (self._cap_tril, 2), "_log_det_cap": (self._log_det_cap, 0)}, _instance)
        new._eps = self._eps
        return new

    # -- sizes and the scalar-ε special case ----------------------------------------

    @property
    def rank(self) -> int:
        return self.cov_factor.shape[-1]

    @property
    def fixed_diag(self) -> bool:
        """True for one diagonal value ε (the paper's D = ε·I): the capacitance is I + PᵀP/ε."""
        return self._eps is not None

    @property
    def cov_diag(self) -> torch.Tensor:
        """D as a (..., S) tensor, whether fixed (ε, expanded without a copy) or learned."""
        if self._diag is not None:
            return self._diag
        eps = self._eps if isinstance(self._eps, torch.Tensor) else self.loc.new_full((), self._eps)
        return eps.expand(self.loc.shape)

    diagonal = cov_diag

    def _cov_diag_arg(self) -> Union[float, torch.Tensor]:
        """cov_diag as this distribution was built from it: ε or D, for a related distribution."""
        return self._diag if self._eps is None else self._eps

    def _whitened(self, r: Optional[torch.Tensor] = None, pixels: Optional[torch.Tensor] = None):
        """(r, P, ε) for D = εI, else (D^-½r, D^-½P, 1): the arguments of woodbury, for all
        pixels or for the rows `pixels` of P and D (r is given for those only)."""
        P = self.cov_factor if pixels is None else self.cov_factor.index_select(-2, pixels)
        if self.fixed_diag:
            return r, P, self._eps
        d = self._diag if pixels is None else self._diag.index_select(-1, pixels)
        inv_sqrt_d = d.rsqrt()
        return None if r is None else r * inv_sqrt_d, P * inv_sqrt_d.unsqueeze(-1), 1.0

    # -- Woodbury and the determinant lemma --------------------------------------------

    def _lazy(self, name: str, compute):
        """A cached quantity, computed with grad enabled (as torch's lazy_property does), so
        that a first call under no_grad does not leave a detached cache for later calls."""
        value = getattr(self, name)
        if value is None:
            with torch.enable_grad():
                value = compute()
            if not torch.is_inference_mode_enabled():
                setattr(self, name, value)
        return value

    @property
    def capacitance_tril(self) -> torch.Tensor:
        """Cholesky factor of the capacitance C = I + Pᵀ D⁻¹ P (float64, cached)."""
        return self._lazy("_cap_tril", lambda: woodbury(*self._whitened())[0])

    def _log_det_diag(self) -> torch.Tensor:
        if self._diag is not None:
            return self._diag.log().sum(-1).double()
        if isinstance(self._eps, torch.Tensor):
            return self.event_shape[0] * self._eps.double().log()
        return self.event_shape[0] * math.log(self._eps)

    def _log_det_cov(self) -> torch.Tensor:
        # matrix determinant lemma: log|PPᵀ + D| = log|C| + log|D|
        return self._lazy("_log_det_cap", lambda: log_det(self.capacitance_tril)) + self._log_det_diag()

    def _mahalanobis(self, r: torch.Tensor) -> torch.Tensor:
        """rᵀΣ⁻¹r (float64) for residuals r (..., S) that broadcast with the batch."""
        r, P, eps = self._whitened(r)
        _, omega, u = woodbury(r, P, eps)
        return mahalanobis_terms(u, omega, eps)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(y; μ, PPᵀ + D), O(S·R²).

        The Mahalanobis term uses Woodbury in its minimisation form,
            rᵀ Σ⁻¹ r = min_ω ‖r − Pω‖²_{D⁻¹} + ‖ω‖²  at  ω* = C⁻¹ Pᵀ D⁻¹ r,
        which equals rᵀD⁻¹r − ‖L⁻¹PᵀD⁻¹r‖² but subtracts per pixel rather than two
        sums of size ~S/ε, so float32 does not cancel catastrophically at ε = 1e-5.
        """
        self._check_value(value)
        r = value - self.loc
        S = self.event_shape[0]
        if r.shape == self.loc.shape:  # one value per distribution: fused gradients
            maha, log_det_cap = WoodburyTerms.apply(*self._whitened(r))
            if self._log_det_cap is None and torch.is_grad_enabled():
                self._log_det_cap = log_det_cap  # shared with entropy()
            log_det = log_det_cap + self._log_det_diag()
        else:
            maha = self._mahalanobis(r)
            log_det = self._log_det_cov()
        return (-0.5 * (S * LOG_2PI + log_det + maha)).to(r.dtype)

    def entropy(self) -> torch.Tensor:
        """H = S/2·(1 + log 2π) + ½ log|Σ| (closed form)."""
        S = self.event_shape[0]
        return (0.5 * S * (1 + LOG_2PI) + 0.5 * self._log_det_cov()).to(self.loc.dtype)

    def _precision_factor(self) -> torch.Tensor:
        """A = L⁻¹ P̃ᵀ (..., R, S), float64, with Σ⁻¹ = D^-½ (I − AᵀA) D^-½ and P̃ = D^-½P."""
        _, P, eps = self._whitened()
        A = torch.linalg.solve_triangular(self.capacitance_tril, P.mT.double(), upper=False)
        return A / eps ** 0.5

    def _precision_diagonal(self) -> torch.Tensor:
        """diag(Σ⁻¹) (..., S), float64."""
        return (1 - self._precision_factor().pow(2).sum(-2)) / self.cov_diag.double()

    # -- moments and sampling (eq. 4) ------------------------------------------------------

    @property
    def variance(self) -> torch.Tensor:
        """Per-pixel variance diag(Σ) = Σ_r P_{ir}² + D_i."""
        return self.cov_factor.pow(2).sum(-1) + self.cov_diag

    @property
    def covariance_matrix(self) -> torch.Tensor:
        """Dense Σ; for tests and tiny images only (S × S memory)."""
        return self.cov_factor @ self.cov_factor.mT + torch.diag_embed(self.cov_diag)

    @property
    def precision_matrix(self) -> torch.Tensor:
        """Dense Σ⁻¹ by Woodbury; for tests and tiny images only (S × S memory)."""
        A = self._precision_factor()
        d = self.cov_diag.double().rsqrt()
        eye = torch.eye(self.event_shape[0], dtype=torch.float64, device=A.device)
        return (d.unsqueeze(-1) * (eye - A.mT @ A) * d.unsqueeze(-2)).to(self.loc.dtype)

    @property
    def scale_tril(self) -> torch.Tensor:
        """Dense Cholesky factor of Σ; for tests and tiny images only."""
        return torch.linalg.cholesky(self.covariance_matrix)

    def covariance_row(self, pixel_index: int) -> torch.Tensor:
        """Cov(y_i, y) for one pixel i, shape (..., S): P P_iᵀ + D_i e_i (Fig. 2 slices)."""
        S = self.event_shape[0]
        if not -S <= pixel_index < S:
            raise ValueError(f"pixel_index {pixel_index} is outside 0..{S - 1}")
        pixel_index %= S
        row = (self.cov_factor @ self.cov_factor[..., pixel_index, :].unsqueeze(-1)).squeeze(-1)
        row = row.clone()
        row[..., pixel_index] += self.cov_diag[..., pixel_index]
        return row

    def rsample(self, sample_shape: torch.Size = torch.Size(),
                omega_p: Optional[torch.Tensor] = None,
                omega_d: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y = μ + P ω_p + √D ω_d (eq. 4), drawing whichever ω is not given.

        omega_p: (*sample_shape, *batch, R); omega_d: (*sample_shape, *batch, S).
        """
        omega_p, omega_d = self._noise(sample_shape, omega_p, omega_d)
        structured = (self.cov_factor @ omega_p.unsqueeze(-1)).squeeze(-1)
        return self.loc + structured + self.cov_diag.sqrt() * omega_d

    @property
    def noise_rank(self) -> int:
        return self.rank

    def first(self) -> "LowRankNormal":
        S, R = self.cov_factor.shape[-2:]
        loc = self.loc.reshape(-1, S)[0]
        P = self.cov_factor.reshape(-1, S, R)[0]
        diag = self._cov_diag_arg()
        if isinstance(diag, torch.Tensor):
            diag = (diag if diag.dim() == 0 else diag.reshape(-1, S)[0]).detach().float().cpu()
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
        evals, V = torch.linalg.eigh(Gram64.apply(P, None, True)[0])
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
        return LowRankNormal(self.loc, P, self._cov_diag_arg(), validate_args=False)

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
        omega = woodbury(*self._whitened(values - self.loc.index_select(-1, idx), idx))[1]
        out = self.loc + (self.cov_factor @ omega.to(self.loc.dtype).unsqueeze(-1)).squeeze(-1)
        out = out.clone()
        out[..., idx] = values.to(out.dtype).expand(out.shape[:-1] + (k,))
        return out

    def conditional(self, mask: torch.Tensor, values: torch.Tensor) -> "LowRankNormal":
        """p(y₁ | y₂ = b): the distribution of the unedited pixels given the edit (eq. 7 whole).

        With C₂ = I + P₂ᵀD₂⁻¹P₂ (R × R) and its Cholesky factor L₂ (float64),

            μ̃ = μ₁ + P₁ω*,   Σ̃ = Σ₁₁ − Σ₁₂Σ₂₂⁻¹Σ₂₁ = D₁ + P₁ C₂⁻¹ P₁ᵀ = D₁ + (P₁L₂⁻ᵀ)(P₁L₂⁻ᵀ)ᵀ,

        low rank plus the diagonal again, so the result is a LowRankNormal over the S − k
        unedited pixels with cov_factor P₁L₂⁻ᵀ and the diagonal D₁: its mean, samples,
        variance, log_prob and entropy cost what the unconditioned ones do, O(k·R² + S·R²),
        with no k × k or S × S matrix. Given the edit, ω_p ~ N(ω*, C₂⁻¹), and a conditional
        sample is μ₁ + P₁ω_p + √D₁ω_d. `conditional_mean` is the fast path for its mean.

        mask: bool (S,) or (C, H, W) of the edited pixels, shared by the batch; values: (..., k)
        in the flattened order of the masked pixels. The result's pixels are the unedited
        ones in flattened order; with fewer of them than R, its cov_factor is the square
        factor of the same Σ̃ (`marginal`).
        """
        S = self.event_shape[0]
        mask = flat_mask(mask, S).to(self.loc.device)
        k = int(mask.sum())
        if values.shape[-1] != k:
            raise ValueError(f"values has {values.shape[-1]} entries but the mask selects k = {k} pixels")
        if k == S:
            raise ValueError("the mask selects every pixel, so no pixel is left to condition; leave at "
                             "least one pixel unedited")
        if k == 0:
            return self.marginal(~mask)
        edited, rest = mask.nonzero().squeeze(-1), (~mask).nonzero().squeeze(-1)
        r = values.to(self.loc) - self.loc.index_select(-1, edited)
        tril, omega, _ = woodbury(*self._whitened(r, edited))
        P1 = self.cov_factor.index_select(-2, rest)
        loc = self.loc.index_select(-1, rest) + (P1 @ omega.to(P1.dtype).unsqueeze(-1)).squeeze(-1)
        # L₂⁻¹ has singular values ≤ 1 (C₂ ⪰ I): forming it in float64 loses nothing
        eye = torch.eye(self.rank, dtype=tril.dtype, device=tril.device)
        factor = P1 @ torch.linalg.solve_triangular(tril, eye, upper=False).mT.to(P1.dtype)
        diag = self._eps if self.fixed_diag else self._diag.index_select(-1, rest)
        return _low_rank_normal(loc, factor, diag)

    def marginal(self, keep: torch.Tensor) -> "LowRankNormal":
        """The distribution of the pixels `keep` selects, N(μ_K, P_K P_Kᵀ + D_K): a Gaussian's
        marginal is its sub-block, so the rows of μ, P and D (e.g. the visible pixels of an image).

        keep: bool (S,) or (C, H, W), shared by the batch; the result's pixels are the kept ones
        in flattened order. With fewer of them than R, the cov_factor is the square factor of
        the same P_K P_Kᵀ (from a QR decomposition), so the noise ω_p then has that length.
        """
        S = self.event_shape[0]
        keep = flat_mask(keep, S).to(self.loc.device)
        if not keep.any():
            raise ValueError("keep selects no pixel; select at least one")
        idx = keep.nonzero().squeeze(-1)
        diag = self._eps if self.fixed_diag else self._diag.index_select(-1, idx)
        return _low_rank_normal(self.loc.index_select(-1, idx), self.cov_factor.index_select(-2, idx), diag)

    def __repr__(self) -> str:
        diag = f"ε={float(self._eps):g}" if self.fixed_diag else "learned diagonal"
        return (f"LowRankNormal(batch_shape={tuple(self.batch_shape)}, S={self.event_shape[0]}, "
                f"R={self.rank}, {diag})")


def _low_rank_normal(loc: torch.Tensor, cov_factor: torch.Tensor, cov_diag) -> LowRankNormal:
    """LowRankNormal(loc, cov_factor, cov_diag) for a part of an image, which may have fewer
    pixels S than the rank R: then cov_factor (S × R) becomes the S × S factor Rᵀ of the same
    cov_factor·cov_factorᵀ, from the QR decomposition cov_factorᵀ = QR."""
    S, R = cov_factor.shape[-2:]
    if R > S:
        cov_factor = torch.linalg.qr(cov_factor.mT)[1].mT
    return LowRankNormal(loc, cov_factor, cov_diag, validate_args=False)
