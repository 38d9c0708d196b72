"""The sparse-precision observation model of Dorta et al. (CVPR 2018, "SUPN").

The SOS-VAE paper compares its low-rank covariance against this model. An image
x with S = C·H·W pixels (flattened in C, H, W order) is modelled as

    x ~ N(μ, Λ⁻¹),   Λ = L Lᵀ,

where L is lower triangular (in raster order) and sparse: pixel i has non-zero
weights L[i, j] only for the neighbours j inside a k×k stencil centred on i that
come *earlier* in raster order (the rows above inside the window, and the pixels
to its left in its own row), plus a positive diagonal L[i, i] = exp(log_diag_i).
That gives n_off = (k² − 1)/2 off-diagonal weights per pixel. Channels are
independent: the stencil never crosses channels, so Λ is block diagonal with one
(H·W)×(H·W) block per channel. Weights that would point outside the image (at
the borders) are ignored: as long as they are finite they change no result and
get zero gradient.

Because L has a positive diagonal, it *is* the Cholesky factor of Λ, and L is
banded with bandwidth r·W + r (r = k // 2) in raster order. Nothing below forms
an S×S matrix (except the dense helpers for tests):

    method                 how                                       cost (per image)
    log_prob               Lᵀ(x − μ) by one transposed conv           O(S·k²)
    entropy                closed form from log|Λ| = 2 Σ log_diag     O(S)
    rsample "wavefront"    L⁻ᵀω, anti-diagonal wavefronts, torch      O(S·k²), (r+1)(H−1)+W steps
    rsample "scipy"        L⁻ᵀω, spsolve_triangular on a CSR          O(S·k²), float64, no grad
    covariance_row         L⁻ᵀ(L⁻¹e_i), two wavefront solves          O(S·k²)
    variance (exact)       block selected inversion over image rows   O(S·r²·W²), H steps
    conditional_mean       banded Cholesky of Λ_aa (LAPACK pbsv)      O(S·r²·W²), float64, no grad
    conditional            N(·, Λ_aa⁻¹) as a BandedPrecisionNormal    O(S·r²·W²), float64, no grad

The solvers live in `observations.dorta_solvers`, the conditional given an edit (a
`BandedPrecisionNormal`) in `observations.banded`; this module holds the distribution, the
decoder head and the registry entry.

Layout of `off_diag`: (B, C, n_off, H, W), with

    off_diag[b, c, n, h, w] = L[(c, h, w), (c, h + dy_n, w + dx_n)],
    (dy_n, dx_n) = stencil_offsets(k)[n],

the offsets listed in raster order of the window (top-left first). A decoder
head can predict them as the C·n_off output channels of a conv layer: the
(B, C·n_off, H, W) tensor (channel index c·n_off + n) is accepted as is.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import torch
from torch.distributions import constraints

from .banded import BandedPrecisionNormal, conditioned, schur_band
from .base import LOG_2PI, ObservationDistribution, ObservationModel, check_finite, check_tensors, checked_edit
from .dorta_solvers import (MAX_DENSE_PIXELS, _check_stencil, apply_Lt, dense_factor, factor_csr, num_off_diagonal,
                            scipy_solve_Lt, selected_variance, stencil_geometry, stencil_offsets, wavefront_solve)

__all__ = [
    "SparsePrecisionNormal",
    "stencil_offsets",
    "num_off_diagonal",
    "MAX_DENSE_PIXELS",
    "SparsePrecisionHead",
]
SAMPLERS = ("wavefront", "scipy")


def _checked_shapes(loc, log_diag, off_diag, image_shape, stencil):
    """The arguments of `SparsePrecisionNormal` checked: ((C, H, W), k, off_diag as (B, C, n_off, H, W))."""
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got "
                         f"{image_shape!r}; pass e.g. (1, 64, 64)")
    C, H, W = shape
    k = _check_stencil(stencil, (C, H, W))
    S, n_off = C * H * W, (k * k - 1) // 2
    for name, t in (("loc", loc), ("log_diag", log_diag)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[-1] != S:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape (B, S) = (B, {S}) for image {C}x{H}x{W}, "
                             f"got {shape}; flatten images in C, H, W order")
    B = loc.shape[0]
    if log_diag.shape != loc.shape:
        raise ValueError(f"log_diag has shape {tuple(log_diag.shape)} but loc has "
                         f"{tuple(loc.shape)}; both must be (B, S)")
    if not isinstance(off_diag, torch.Tensor):
        raise ValueError(f"off_diag must be a tensor of shape (B, C, n_off, H, W), got "
                         f"{type(off_diag).__name__}")
    if off_diag.dim() == 4 and tuple(off_diag.shape) == (B, C * n_off, H, W):
        off_diag = off_diag.reshape(B, C, n_off, H, W)  # channel index c·n_off + n
    if tuple(off_diag.shape) != (B, C, n_off, H, W):
        raise ValueError(
            f"off_diag must have shape (B, C, n_off, H, W) = {(B, C, n_off, H, W)} or "
            f"(B, C·n_off, H, W) = {(B, C * n_off, H, W)} for stencil={k}, got "
            f"{tuple(off_diag.shape)}; n_off = (k²−1)/2 = {n_off}")
    return (C, H, W), k, off_diag


class SparsePrecisionNormal(ObservationDistribution):
    """x ~ N(μ, (L Lᵀ)⁻¹) with the sparse stencil factor L of Dorta et al. (2018).

    Args:
        loc: μ, shape (B, S).
        log_diag: log L[i, i], shape (B, S).
        off_diag: the stencil weights, (B, C, n_off, H, W) or the conv-friendly
            (B, C·n_off, H, W); see the module docstring for the order of n.
        image_shape: (C, H, W) with S = C·H·W.
        stencil: k, odd, >= 3, with k // 2 < min(H, W).
        validate_args: also check the parameters are finite (shapes are always
            checked); None follows torch's global default (on).

    batch_shape is (B,), event_shape is (S,).
    """

    # exact per-pixel variance needs a selected inversion, ten times the cost of log_prob with
    # its backward pass (benchmarks/bench_dorta.py): the trainer does not log it every step
    variance_is_expensive = True
    # what the arguments are, as torch declares it; they are checked by hand below (one-line messages)
    arg_constraints = {"loc": constraints.real_vector, "log_diag": constraints.independent(constraints.real, 1),
                       "off_diag": constraints.independent(constraints.real, 4)}

    def __init__(
        self,
        loc: torch.Tensor,
        log_diag: torch.Tensor,
        off_diag: torch.Tensor,
        image_shape: Sequence[int],
        stencil: int = 3,
        validate_args: Optional[bool] = None,
    ):
        (C, H, W), k, off_diag = _checked_shapes(loc, log_diag, off_diag, image_shape, stencil)
        check_tensors(loc=loc, log_diag=log_diag, off_diag=off_diag)

        self.loc, self.log_diag, self.off_diag = loc, log_diag, off_diag
        self.image_shape = (C, H, W)
        self.stencil = k
        self.offsets = stencil_offsets(k)
        self._init_shapes(torch.Size(loc.shape[:1]), torch.Size([C * H * W]), validate_args)
        if self._validate_args:
            check_finite("loc", loc)
            check_finite("log_diag", log_diag)
            check_finite("off_diag", off_diag)
        self._geometry = stencil_geometry(H, W, k, loc.dtype, loc.device)

    def expand(self, batch_shape, _instance=None) -> "SparsePrecisionNormal":
        """The same images, B' of them: batch_shape (B',) from B = 1 or B = B'."""
        batch_shape = torch.Size(batch_shape)
        B = self.batch_shape[0]
        if len(batch_shape) != 1 or B not in (1, batch_shape[0]):
            raise ValueError(f"SparsePrecisionNormal has a flat batch of images (B,) = ({B},): it expands "
                             f"to (B',) from B = 1 only, not to {tuple(batch_shape)}; reshape the images first")
        if _instance is not None:
            raise NotImplementedError("SparsePrecisionNormal.expand does not fill a subclass instance")
        new = SparsePrecisionNormal(self.loc.expand(batch_shape + self.event_shape),
                                    self.log_diag.expand(batch_shape + self.event_shape),
                                    self.off_diag.expand(batch_shape + self.off_diag.shape[1:]),
                                    self.image_shape, self.stencil, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # -- sizes -------------------------------------------------------------------------

    @property
    def num_pixels(self) -> int:
        return self.event_shape[0]

    @property
    def n_off(self) -> int:
        return len(self.offsets)

    # -- the distribution interface ---------------------------------------------------------

    def log_det_precision(self) -> torch.Tensor:
        """log|Λ| = 2 Σ_i log L[i, i], shape (B,)."""
        return 2 * self.log_diag.sum(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(x; μ, Λ⁻¹) = ½ log|Λ| − ½ ‖Lᵀ(x − μ)‖² − S/2 · log 2π.

        value: (..., B, S) → (..., B). O(S·k²) with one transposed conv.
        """
        self._check_value(value)
        z = apply_Lt(value - self.loc, self.log_diag, self.off_diag, self._geometry)
        return 0.5 * self.log_det_precision() - 0.5 * z.pow(2).sum(-1) \
            - 0.5 * self.num_pixels * LOG_2PI

    def entropy(self) -> torch.Tensor:
        """H = S/2 · (1 + log 2π) − ½ log|Λ|, shape (B,)."""
        return 0.5 * self.num_pixels * (1 + LOG_2PI) - 0.5 * self.log_det_precision()

    def rsample(self, sample_shape: torch.Size = torch.Size(),
                omega_p: Optional[torch.Tensor] = None, omega_d: Optional[torch.Tensor] = None,
                method: str = "wavefront") -> torch.Tensor:
        """Exact samples x = μ + L⁻ᵀ ω_d, ω_d ~ N(0, I), so Cov(x) = L⁻ᵀL⁻¹ = Λ⁻¹.

        omega_p: the model has no structured noise; if given it must be empty (..., 0).
        omega_d: optional (*sample_shape, B, S) noise (sample_shape is then read from it).
        method: "wavefront" (default): back substitution in torch, vectorised over
            anti-diagonals, (r+1)(H−1)+W steps, O(S·k²) flops per sample,
            differentiable w.r.t. loc, log_diag and off_diag.
            "scipy": spsolve_triangular on the block-diagonal CSR of Lᵀ, O(S·k²)
            flops in float64 on the CPU; L⁻ᵀω_d is detached (gradients reach loc only).
        """
        if method not in SAMPLERS:
            raise ValueError(f"method must be one of {SAMPLERS}, got {method!r}")
        if omega_p is not None and omega_p.shape[-1] != 0:
            raise ValueError(f"omega_p has last dimension {omega_p.shape[-1]}, expected 0: "
                             f"{type(self).__name__} has no structured noise; pass omega_d alone")
        if omega_d is None:
            omega_d = torch.randn(self._extended_shape(torch.Size(sample_shape)),
                                  dtype=self.loc.dtype, device=self.loc.device)
        else:
            expected = tuple(sample_shape) + tuple(self.batch_shape) + tuple(self.event_shape)
            if omega_d.shape[-2:] != self.batch_shape + self.event_shape or (
                    len(sample_shape) and tuple(omega_d.shape) != expected):
                raise ValueError(f"omega_d must have shape (*sample_shape, B, S) = {expected}, got "
                                 f"{tuple(omega_d.shape)}")
            omega_d = omega_d.to(self.loc)
        if method == "scipy":
            return self.loc + scipy_solve_Lt(omega_d, self.log_diag, self.off_diag, self._geometry)
        return self.loc + self._solve(omega_d, transpose=True)

    def _solve(self, rhs: torch.Tensor, transpose: bool) -> torch.Tensor:
        """L⁻¹ rhs, or L⁻ᵀ rhs when `transpose` (`wavefront_solve`, differentiable)."""
        return wavefront_solve(rhs, self.log_diag, self.off_diag, self._geometry, transpose)

    @property
    def variance(self) -> torch.Tensor:
        """Exact per-pixel variance diag(Λ⁻¹), shape (B, S), by selected inversion.

        Block selected inversion over image rows (`selected_variance`): H steps of O(r²W³),
        O(S·r²·W²) per channel image; exact and differentiable, no dense S×S inverse.
        """
        return selected_variance(self.log_diag, self.off_diag, self._geometry)

    def covariance_row(self, pixel_index: int) -> torch.Tensor:
        """Cov(x_i, x) = Λ⁻¹ e_i = L⁻ᵀ(L⁻¹ e_i), shape (B, S): two wavefront solves, O(S·k²)."""
        S = self.num_pixels
        if not -S <= int(pixel_index) < S:
            raise ValueError(f"pixel_index {pixel_index} is outside 0..{S - 1}")
        e = self.loc.new_zeros(self.loc.shape)
        e[:, int(pixel_index) % S] = 1.0
        return self._solve(self._solve(e, False), True)

    def conditional_mean(self, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """E[x_a | x_b = values] = μ_a − Λ_aa⁻¹ Λ_ab (values − μ_b), as a full (B, S) image.

        b are the edited pixels (mask True), a the rest. Λ = LLᵀ has the bandwidth of
        L, m = r·W + r, in raster order, and so has its principal submatrix Λ_aa. So
        Λ = LLᵀ is formed as a scipy sparse product (float64) and each image's
        Λ_aa z = Λ_ab (values − μ_b) is solved by a banded Cholesky
        (scipy.linalg.solveh_banded, LAPACK pbsv): O(S·m²) = O(S·r²·W²) flops and
        O(S·m) memory per image, the same order as `variance`. Exact; the result is
        detached (no gradient).

        mask: bool (S,) or (C, H, W), shared by the batch; values: (B, k) or (k,) in
        the flattened order of the masked pixels. Edited pixels equal `values`.
        """
        mask, values = checked_edit(self, mask, values)
        out = self.loc.detach().clone()
        out[:, mask] = values
        if 0 < int(mask.sum()) < self.num_pixels:
            band, rhs = schur_band(self._precision_coo(), self.loc, mask, values)
            shift = np.stack([sla.solveh_banded(b, r, check_finite=False) for b, r in zip(band, rhs)])
            out[:, ~mask] = self.loc.detach()[:, ~mask] - torch.from_numpy(shift).to(out)
        return out

    def conditional(self, mask: torch.Tensor, values: torch.Tensor) -> "BandedPrecisionNormal":
        """p(x_a | x_b = values) = N(μ_a − Λ_aa⁻¹Λ_ab(values − μ_b), Λ_aa⁻¹): exact, its precision
        the sub-block Λ_aa of Λ = LLᵀ, banded like Λ (bandwidth ≤ r·W + r in raster order), as a
        `BandedPrecisionNormal` over the unedited pixels a (flattened order): float64, detached,
        O(S·r²·W²) per image. Arguments as for `conditional_mean`.
        """
        mask, values = checked_edit(self, mask, values)
        return conditioned(self._precision_coo(), self.loc, mask, values)

    def _precision_coo(self) -> sp.coo_array:
        """Λ = LLᵀ for the whole batch, block diagonal (B·S)×(B·S), float64 COO."""
        L = factor_csr(self.log_diag, self.off_diag, self._geometry)
        return (L @ L.T).tocoo()

    # -- dense helpers, for tests and tiny images ----------------------------------------

    def _check_dense(self) -> None:
        if self.num_pixels > MAX_DENSE_PIXELS:
            raise ValueError(f"dense S×S matrices are for tiny images only (S = {self.num_pixels} "
                             f"> {MAX_DENSE_PIXELS}); use log_prob/variance/covariance_row instead")

    def to_dense_factor(self) -> torch.Tensor:
        """Dense lower-triangular L, shape (B, S, S), assembled from the row strips."""
        self._check_dense()
        return dense_factor(self.log_diag, self.off_diag, self._geometry)

    def to_dense_precision(self) -> torch.Tensor:
        """Dense Λ = L Lᵀ, shape (B, S, S); raises for S > MAX_DENSE_PIXELS."""
        L = self.to_dense_factor()
        return L @ L.mT

    @property
    def precision_matrix(self) -> torch.Tensor:
        return self.to_dense_precision()

    @property
    def covariance_matrix(self) -> torch.Tensor:
        """Dense Λ⁻¹ = L⁻ᵀL⁻¹ (tiny images only)."""
        L = self.to_dense_factor()
        eye = torch.eye(self.num_pixels, dtype=L.dtype, device=L.device)
        L_inv = torch.linalg.solve_triangular(L, eye, upper=False)
        return L_inv.mT @ L_inv

    def __repr__(self) -> str:
        C, H, W = self.image_shape
        return (f"SparsePrecisionNormal(batch_shape={tuple(self.batch_shape)}, "
                f"image={C}x{H}x{W}, stencil={self.stencil})")


class SparsePrecisionHead(torch.nn.Module):
    """Decoder features → N(μ, (LLᵀ)⁻¹): μ, log L_ii and the stencil weights per pixel.

    Initialised like the other heads (weights of std 1e-5): a flat grey mean and
    Λ ≈ I/σ² with σ² = 2e-5, the starting variance of the β-VAE head, so that mean-only
    pre-training (Dorta et al. trained the mean first) sees the same scale.
    """

    variance_prefixes = ("log_diag", "off_diag")
    diagonal_prefixes = ("log_diag",)  # log L_ii: the per-pixel precision on a log scale

    def __init__(self, c_in: int, image_shape: Sequence[int], stencil: int = 3, eps: float = 1e-5):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.stencil = _check_stencil(stencil, self.image_shape)
        C = self.image_shape[0]

        def conv(c_out: int, bias: float) -> torch.nn.Conv2d:
            layer = torch.nn.Conv2d(c_in, c_out, 1)
            torch.nn.init.normal_(layer.weight, 0.0, 1e-5)
            torch.nn.init.constant_(layer.bias, bias)
            return layer

        self.mean = conv(C, 0.5)
        self.log_diag = conv(C, -0.5 * math.log(2 * eps))
        self.off_diag = conv(C * num_off_diagonal(self.stencil), 0.0)

    def forward(self, h: torch.Tensor, validate: bool = False) -> "SparsePrecisionNormal":
        return SparsePrecisionNormal(self.mean(h).flatten(1), self.log_diag(h).flatten(1), self.off_diag(h),
                                     self.image_shape, self.stencil, validate_args=validate)


DORTA = ObservationModel(
    name="dorta", label="Dorta et al.",
    head=lambda c_in, image_shape, eps, stencil, **_: SparsePrecisionHead(c_in, image_shape, stencil=stencil, eps=eps))
