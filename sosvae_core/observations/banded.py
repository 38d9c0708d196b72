"""Dorta et al.'s model given an edit (editing by conditioning, as eqs. 6–7 for the low-rank
model): N(μ, Λ⁻¹) with a banded precision.

Given the edited pixels b, the unedited pixels a of N(μ, Λ⁻¹) follow

    N(μ_a − Λ_aa⁻¹Λ_ab(x_b − μ_b), Λ_aa⁻¹).

Λ = LLᵀ of `observations.dorta` is banded in raster order (bandwidth m = r·W + r), and so is its
principal sub-block Λ_aa: `schur_band` stores it in LAPACK band storage, `conditioned` builds the
conditional, a `BandedPrecisionNormal`. That distribution works through the banded Cholesky
factor Λ = UᵀU, O(n·m²) per image: its log_prob, samples, variance (`banded_variance`, selected
inversion inside the band), and its own conditional, again a sub-block. float64 in scipy,
detached: nothing here carries a gradient.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import torch

from .base import LOG_2PI, ObservationDistribution, check_tensors, checked_edit
from .dorta_solvers import MAX_DENSE_PIXELS

__all__ = ["BandedPrecisionNormal", "conditioned", "schur_band", "banded_variance"]


def conditioned(lam: sp.coo_array, loc: torch.Tensor, mask: torch.Tensor, values: torch.Tensor):
    """The conditional N(μ_a − Λ_aa⁻¹Λ_ab δ_b, Λ_aa⁻¹) of a precision Λ given an edit (`schur_band`)."""
    if bool(mask.all()):
        raise ValueError("the mask selects every pixel, so no pixel is left to condition; leave at "
                         "least one pixel unedited")
    band, rhs = schur_band(lam, loc, mask, values)
    dist = BandedPrecisionNormal(loc.detach()[:, ~mask], band)
    shift = np.stack([sla.cho_solve_banded((c, False), r, check_finite=False) for c, r in zip(dist._chol, rhs)])
    dist.loc = dist.loc - torch.from_numpy(shift).to(dist.loc)
    return dist


class BandedPrecisionNormal(ObservationDistribution):
    """N(μ, Λ⁻¹) with a banded symmetric precision Λ: the conditional of Dorta et al.'s model
    given an edit (`SparsePrecisionNormal.conditional`), whose precision is a sub-block of LLᵀ.

    Args:
        loc: μ, (B, n).
        band: Λ in LAPACK upper band storage, band[b, m + i − j, j] = Λ_b[i, j] for
            0 ≤ j − i ≤ m, (B, m + 1, n), numpy float64.

    With the banded Cholesky factor Λ = UᵀU (LAPACK pbtrf, O(n·m²)): log_prob and entropy
    from log|Λ| = 2 Σ log U_ii and ‖U(x − μ)‖²; a sample μ + U⁻¹ω_d; the variance
    diag(Λ⁻¹) by selected inversion inside the band (O(n·m²)). float64 in scipy, detached:
    the results carry no gradient. batch_shape (B,), event_shape (n,).
    """

    def __init__(self, loc: torch.Tensor, band: np.ndarray):
        check_tensors(loc=loc)
        band = np.asarray(band, dtype=np.float64)
        if loc.dim() != 2 or band.ndim != 3 or band.shape[0] != loc.shape[0] or band.shape[2] != loc.shape[1]:
            raise ValueError(f"loc must be (B, n) and band (B, m + 1, n), got {tuple(loc.shape)} and "
                             f"{band.shape}")
        self.loc, self.band = loc.detach(), band
        try:
            self._chol = np.stack([sla.cholesky_banded(b, lower=False, check_finite=False) for b in band])
        except np.linalg.LinAlgError:
            raise ValueError("the banded precision is not positive definite; it must be a sub-block "
                             "of a precision matrix LLᵀ") from None
        self._init_shapes(torch.Size(loc.shape[:1]), torch.Size(loc.shape[1:]), validate_args=False)

    @property
    def bandwidth(self) -> int:
        return self.band.shape[1] - 1

    def _numpy(self, t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy()

    def _torch(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.loc)

    def log_det_precision(self) -> torch.Tensor:
        return self._torch(2 * np.log(self._chol[:, -1]).sum(-1))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """½ log|Λ| − ½ ‖U(x − μ)‖² − n/2 · log 2π, value (..., B, n) → (..., B)."""
        self._check_value(value)
        r = self._numpy(value - self.loc)
        m, Ur = self.bandwidth, np.zeros(np.broadcast_shapes(r.shape, self.loc.shape))
        for d in range(m + 1):  # (Ur)_i = Σ_d U[i, i + d] r[i + d]
            Ur[..., :r.shape[-1] - d] += self._chol[:, m - d, d:] * r[..., d:]
        quad = self._torch((Ur * Ur).sum(-1))
        return 0.5 * self.log_det_precision() - 0.5 * quad - 0.5 * self.event_shape[0] * LOG_2PI

    def entropy(self) -> torch.Tensor:
        return 0.5 * self.event_shape[0] * (1 + LOG_2PI) - 0.5 * self.log_det_precision()

    def rsample(self, sample_shape: torch.Size = torch.Size(), omega_p: Optional[torch.Tensor] = None,
                omega_d: Optional[torch.Tensor] = None) -> torch.Tensor:
        """μ + U⁻¹ω_d (so Cov = U⁻¹U⁻ᵀ = Λ⁻¹), one banded triangular solve per image; detached."""
        _, omega_d = self._noise(sample_shape, omega_p, omega_d)
        w = self._numpy(omega_d)
        out = np.empty_like(w)
        for b, chol in enumerate(self._chol):
            rhs = w[..., b, :].reshape(-1, w.shape[-1]).T
            out[..., b, :] = sla.solve_banded((0, self.bandwidth), chol, rhs, check_finite=False).T.reshape(
                w[..., b, :].shape)
        return self.loc + self._torch(out)

    @property
    def variance(self) -> torch.Tensor:
        """diag(Λ⁻¹) by selected inversion inside the band (`banded_variance`), n steps of O(m²)."""
        return self._torch(banded_variance(self._chol))

    def covariance_row(self, pixel_index: int) -> torch.Tensor:
        """Cov(x_i, x) = Λ⁻¹e_i, one banded Cholesky solve per image."""
        B, n = self.loc.shape
        if not -n <= int(pixel_index) < n:
            raise ValueError(f"pixel_index {pixel_index} is outside 0..{n - 1}")
        e = np.zeros(n)
        e[int(pixel_index) % n] = 1.0
        return self._torch(np.stack([sla.cho_solve_banded((c, False), e, check_finite=False) for c in self._chol]))

    def _precision_coo(self) -> sp.coo_array:
        """Λ for the whole batch, block diagonal (B·n)×(B·n), from the band (both triangles)."""
        B, n = self.loc.shape
        m = self.bandwidth
        d, j = np.nonzero(np.ones((m + 1, n), dtype=bool))
        i = j - (m - d)
        keep = i >= 0
        d, i, j = d[keep], i[keep], j[keep]
        shift = (np.arange(B) * n)[:, None]
        vals = self.band[:, d, j]
        rows = np.concatenate([i + shift, (j + shift)[:, i != j]], -1).ravel()
        cols = np.concatenate([j + shift, (i + shift)[:, i != j]], -1).ravel()
        data = np.concatenate([vals, vals[:, i != j]], -1).ravel()
        return sp.coo_array((data, (rows, cols)), shape=(B * n, B * n))

    def conditional_mean(self, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """E[x_a | x_b = values] as a full (B, n) image, as `SparsePrecisionNormal.conditional_mean`."""
        mask, values = checked_edit(self, mask, values)
        out = self.loc.clone()
        out[:, mask] = values
        if 0 < int(mask.sum()) < self.event_shape[0]:
            out[:, ~mask] = conditioned(self._precision_coo(), self.loc, mask, values).loc
        return out

    def conditional(self, mask: torch.Tensor, values: torch.Tensor) -> "BandedPrecisionNormal":
        """The conditional given an edit: again a banded precision, its sub-block."""
        mask, values = checked_edit(self, mask, values)
        return conditioned(self._precision_coo(), self.loc, mask, values)

    @property
    def precision_matrix(self) -> torch.Tensor:
        """Dense Λ (B, n, n); for tests and tiny images only."""
        B, n = self.loc.shape
        if n > MAX_DENSE_PIXELS:
            raise ValueError(f"dense n×n matrices are for tiny images only (n = {n} > {MAX_DENSE_PIXELS})")
        return self._torch(self._precision_coo().toarray().reshape(B, n, B, n)[np.arange(B), :, np.arange(B)])

    @property
    def covariance_matrix(self) -> torch.Tensor:
        return torch.linalg.inv(self.precision_matrix)

    def __repr__(self) -> str:
        return (f"BandedPrecisionNormal(batch_shape={tuple(self.batch_shape)}, n={self.event_shape[0]}, "
                f"bandwidth={self.bandwidth})")


def schur_band(lam: sp.coo_array, loc: torch.Tensor, mask: torch.Tensor, values: torch.Tensor):
    """For a precision Λ (COO, block diagonal over the B images of S pixels) and an edit of the
    pixels b: (Λ_aa in LAPACK upper band storage, band[:, m + i − j, j] = Λ_aa[i, j] for i ≤ j,
    (B, m + 1, n_a); Λ_ab(values − μ_b), (B, n_a)), float64, a the unedited pixels."""
    B, S = loc.shape
    edited = mask.cpu().numpy()
    mu = loc.detach().to("cpu", torch.float64).numpy()
    delta = np.zeros((B, S))
    delta[:, edited] = values.to("cpu", torch.float64).numpy() - mu[:, edited]
    img, row, col = lam.row // S, lam.row % S, lam.col % S
    pos = np.cumsum(~edited) - 1  # index of each unedited pixel inside a
    n_a = S - int(edited.sum())
    # right-hand side Λ_ab δ_b, from the entries with row in a, column in b
    sel = ~edited[row] & edited[col]
    rhs = np.bincount(img[sel] * n_a + pos[row[sel]], minlength=B * n_a,
                      weights=lam.data[sel] * delta[img[sel], col[sel]]).reshape(B, n_a)
    sel = ~edited[row] & ~edited[col] & (row <= col)
    i, j = pos[row[sel]], pos[col[sel]]
    m = int((j - i).max())
    band = np.zeros((B, m + 1, n_a))
    band[img[sel], m + i - j, j] = lam.data[sel]
    return band, rhs


def banded_variance(chol: np.ndarray) -> np.ndarray:
    """diag(Λ⁻¹), (B, n), from the upper banded Cholesky factor Λ = UᵀU in LAPACK band storage
    (B, m + 1, n), by selected inversion (Takahashi): from UΣ = U⁻ᵀ, for j ≥ i,
    Σ_ij = (δ_ij / U_ii − Σ_{k=i+1}^{i+m} U_ik Σ_kj) / U_ii, which needs Σ only inside the
    band below row i: a sliding m × m window, n steps of O(m²)."""
    B, m1, n = chol.shape
    m = m1 - 1
    diag = chol[:, m]
    if m == 0:
        return 1 / diag ** 2
    chol = np.concatenate([chol, np.zeros((B, m + 1, m))], -1)  # zeros beyond the last pixel
    ds = np.arange(1, m + 1)
    window = np.zeros((B, m, m))  # Σ of pixels i + 1 … i + m
    var = np.empty((B, n))
    for i in reversed(range(n)):
        u = chol[:, m - ds, i + ds]  # U[i, i + 1 … i + m]
        row = -np.einsum("bk,bkj->bj", u, window) / diag[:, i, None]
        var[:, i] = 1 / diag[:, i] ** 2 - (u * row).sum(-1) / diag[:, i]
        nxt = np.empty_like(window)
        nxt[:, 0, 0] = var[:, i]
        nxt[:, 0, 1:] = nxt[:, 1:, 0] = row[:, :m - 1]
        nxt[:, 1:, 1:] = window[:, :m - 1, :m - 1]
        window = nxt
    return var
