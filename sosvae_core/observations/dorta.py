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

For the variance we view one channel of L in blocks of image rows:

    L[row h, row h]     = D_h      (W×W, lower triangular, band r)
    L[row h, row h − a] = A_{h,a}  (W×W, band r),  a = 1..r

and the "strip" of row h is the W×(r+1)W matrix [A_{h,r} … A_{h,1} D_h], which
is the slice L[hW:(h+1)W, (h−r)W:(h+1)W] of the dense per-channel factor.

Layout of `off_diag`: (B, C, n_off, H, W), with

    off_diag[b, c, n, h, w] = L[(c, h, w), (c, h + dy_n, w + dx_n)],
    (dy_n, dx_n) = stencil_offsets(k)[n],

the offsets listed in raster order of the window (top-left first). A decoder
head can predict them as the C·n_off output channels of a conv layer: the
(B, C·n_off, H, W) tensor (channel index c·n_off + n) is accepted as is.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F
from torch.distributions import constraints

from .base import LOG_2PI, ObservationDistribution, ObservationModel, check_finite, check_tensors, flat_mask

__all__ = [
    "SparsePrecisionNormal",
    "BandedPrecisionNormal",
    "stencil_offsets",
    "num_off_diagonal",
    "MAX_DENSE_PIXELS",
    "SparsePrecisionHead",
]
MAX_DENSE_PIXELS = 4096  # dense S×S helpers refuse bigger images (4096² float64 = 128 MiB)
SAMPLERS = ("wavefront", "scipy")


# -- stencil geometry ----------------------------------------------------------------------


def _check_stencil(k: int, image_shape: Optional[Sequence[int]] = None) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"stencil must be an odd int >= 3 (e.g. 3 or 5), got {k!r}")
    k = int(k)
    if k < 3 or k % 2 == 0:
        raise ValueError(f"stencil must be an odd int >= 3 (e.g. 3 or 5), got {k}; "
                         f"the k×k window needs a centre pixel")
    if image_shape is not None:
        C, H, W = image_shape
        if k // 2 >= min(H, W):
            raise ValueError(
                f"stencil={k} is larger than the {C}x{H}x{W} image: some of its weights could "
                f"never point inside it; use an odd stencil <= {2 * min(H, W) - 1}")
    return k


def stencil_offsets(k: int) -> list[tuple[int, int]]:
    """The (dy, dx) offsets of the earlier-in-raster-order neighbours in a k×k window.

    Order (= the n axis of `off_diag`): raster order of the window, i.e. rows
    dy = −r..−1 with dx = −r..r each, then dy = 0 with dx = −r..−1 (r = k // 2).
    For k = 3: [(-1,-1), (-1,0), (-1,1), (0,-1)].
    """
    r = _check_stencil(k) // 2
    return [(dy, dx) for dy in range(-r, 1) for dx in range(-r, r + 1) if dy < 0 or dx < 0]


def num_off_diagonal(k: int) -> int:
    """n_off = (k² − 1)/2, the number of off-diagonal weights per pixel."""
    return (_check_stencil(k) ** 2 - 1) // 2


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
        try:
            shape = tuple(int(s) for s in image_shape)
        except (TypeError, ValueError):
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got "
                             f"{image_shape!r}; pass e.g. (1, 64, 64)")
        C, H, W = shape
        k = _check_stencil(stencil, (C, H, W))
        S, n_off, r = C * H * W, (k * k - 1) // 2, k // 2
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
        check_tensors(loc=loc, log_diag=log_diag, off_diag=off_diag)

        self.loc, self.log_diag, self.off_diag = loc, log_diag, off_diag
        self.image_shape = (C, H, W)
        self.stencil = k
        self.offsets = stencil_offsets(k)
        self._r = r
        self._init_shapes(torch.Size([B]), torch.Size([S]), validate_args)
        if self._validate_args:
            check_finite("loc", loc)
            check_finite("log_diag", log_diag)
            check_finite("off_diag", off_diag)
        self._build_geometry()

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

    def _build_geometry(self) -> None:
        geometry = _geometry(self.image_shape[1], self.image_shape[2], self.stencil,
                             self.loc.dtype, self.loc.device)
        self._scatter_kernel, self._strip_flat, self._strip_src, self._plans = geometry

    # -- sizes -------------------------------------------------------------------------

    @property
    def num_pixels(self) -> int:
        return self.event_shape[0]

    @property
    def n_off(self) -> int:
        return len(self.offsets)

    # -- local operators, O(S·k²) ----------------------------------------------------------

    def _apply_Lt(self, v: torch.Tensor) -> torch.Tensor:
        """Lᵀ v for v of shape (..., B, S), with local ops only (O(S·k²)).

        (Lᵀv)_j = L_jj v_j + Σ_n off_diag[n, j − off_n] · v_{j − off_n}: every
        later pixel i = j − off_n passes its weighted value back to neighbour j.
        """
        C, H, W = self.image_shape
        batch = v.shape[:-1]
        v5 = v.reshape(*batch, C, 1, H, W)
        weighted = (self.off_diag * v5).reshape(-1, self.n_off, H, W)
        scattered = F.conv_transpose2d(weighted, self._scatter_kernel, padding=self._r)
        return self.log_diag.exp() * v + scattered.reshape(*batch, self.num_pixels)

    def _strip(self, h: int) -> torch.Tensor:
        """Row strip L[hW:(h+1)W, (h−r)W:(h+1)W] per (B, C): shape (B, C, W, (r+1)W).

        Columns of rows h − a < 0 hold weights that point outside the image;
        callers only ever multiply them by zeros or drop what they produce.
        """
        C, H, W = self.image_shape
        B, r = self.batch_shape[0], self._r
        vals = torch.cat([self.off_diag[:, :, :, h, :].transpose(-1, -2),
                          self.log_diag.reshape(B, C, H, W)[:, :, h, :].exp().unsqueeze(-1)], -1)
        vals = vals.reshape(B, C, -1).index_select(-1, self._strip_src)
        strip = vals.new_zeros(B, C, W * (r + 1) * W).index_copy(-1, self._strip_flat, vals)
        return strip.view(B, C, W, (r + 1) * W)

    # -- the fast exact path: wavefront triangular solves in torch ------------------------

    def _wavefront_solve(self, rhs: torch.Tensor, transpose: bool) -> torch.Tensor:
        """Exact u = L⁻¹ rhs (transpose=False) or y = L⁻ᵀ rhs (transpose=True), rhs (..., B, S).

        Differentiable w.r.t. rhs, log_diag and off_diag (see `_WavefrontSolve`).
        """
        return _WavefrontSolve.apply(rhs, self.log_diag, self.off_diag, self, transpose)

    def _wavefront_loop(self, rhs: torch.Tensor, log_diag: torch.Tensor, off_diag: torch.Tensor,
                        transpose: bool) -> torch.Tensor:
        """The substitution itself (no autograd; in-place writes into one buffer).

        Each pixel needs only pixels solved before it, all within r rows and r
        columns, so every pixel on one anti-diagonal "wavefront" t = (r+1)·row + col
        (counted from the corner where the solve starts) is independent of the
        others: one vectorised step per wavefront, (r+1)(H−1)+W steps, O(S·k²)
        flops in all.
        """
        C, H, W = self.image_shape
        B, HW, n_off = self.batch_shape[0], H * W, self.n_off
        plan = self._plans[transpose]
        batch = rhs.shape[:-1]
        # everything in wavefront order, divided by the diagonal L_jj once up front
        inv_diag = (-log_diag).exp().view(B, C, HW).index_select(-1, plan["order"])
        weights = torch.cat([off_diag.reshape(B, C, n_off * HW),
                             off_diag.new_zeros(B, C, 1)], -1)  # last entry: "no neighbour"
        weights = weights.index_select(-1, plan["weight"]).view(B, C, HW, n_off)
        weights = weights * inv_diag.unsqueeze(-1)
        scaled = rhs.reshape(*batch, C, HW).index_select(-1, plan["order"]) * inv_diag
        out = rhs.new_zeros(*batch, C, HW + 1)  # slot HW stays 0: neighbours outside the image
        for (s, e), deps in zip(plan["bounds"], plan["deps"]):
            known = out.index_select(-1, deps).unflatten(-1, (e - s, n_off))
            out[..., s:e] = scaled[..., s:e] - torch.linalg.vecdot(known, weights[:, :, s:e])
        return out[..., :HW].index_select(-1, plan["inverse"]).reshape(rhs.shape)

    def _neighbours(self, v: torch.Tensor) -> torch.Tensor:
        """v_{i + off_n} for every pixel i and offset n: (..., B, S) → (..., B, C, n_off, H, W).

        A conv with the one-hot kernels gathers the stencil; zeros outside the image.
        """
        C, H, W = self.image_shape
        batch = v.shape[:-1]
        gathered = F.conv2d(v.reshape(-1, 1, H, W), self._scatter_kernel, padding=self._r)
        return gathered.reshape(*batch, C, self.n_off, H, W)

    # -- the simple exact path: scipy sparse matrices (float64, no autograd) ------------

    def _factor_csr(self) -> sp.csr_array:
        """L for the whole batch as one block-diagonal (B·S)×(B·S) CSR matrix (float64)."""
        C, H, W = self.image_shape
        B, S, n_off = self.batch_shape[0], self.num_pixels, self.n_off
        pix = np.arange(S).reshape(C, H, W)
        hh, ww = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
        rows, cols, src = [np.arange(S)], [np.arange(S)], [C * n_off * H * W + np.arange(S)]
        for c in range(C):
            for n, (dy, dx) in enumerate(self.offsets):
                ok = (hh + dy >= 0) & (ww + dx >= 0) & (ww + dx < W)
                rows.append(pix[c][ok])
                cols.append(pix[c, hh[ok] + dy, ww[ok] + dx])
                src.append(((c * n_off + n) * H + hh[ok]) * W + ww[ok])
        rows, cols, src = (np.concatenate(a) for a in (rows, cols, src))
        params = torch.cat([self.off_diag.reshape(B, -1), self.log_diag.exp()], -1)
        data = params.detach().to("cpu", torch.float64).numpy()[:, src]
        shift = (np.arange(B) * S)[:, None]
        return sp.csr_array((data.ravel(), ((rows + shift).ravel(), (cols + shift).ravel())),
                            shape=(B * S, B * S))

    def _solve_Lt_scipy(self, e: torch.Tensor) -> torch.Tensor:
        """y = L⁻ᵀ e with scipy.sparse.linalg.spsolve_triangular: O(S·k²) flops, compiled."""
        B, S = self.batch_shape[0], self.num_pixels
        n = e.shape[:-2].numel()
        rhs = e.detach().to("cpu", torch.float64).reshape(n, B * S).T.numpy()
        y = spla.spsolve_triangular(self._factor_csr().T.tocsr(), rhs, lower=False)
        y = torch.from_numpy(np.ascontiguousarray(y.T)).reshape(e.shape)
        return y.to(device=e.device, dtype=e.dtype)

    # -- the distribution interface ---------------------------------------------------------

    def log_det_precision(self) -> torch.Tensor:
        """log|Λ| = 2 Σ_i log L[i, i], shape (B,)."""
        return 2 * self.log_diag.sum(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(x; μ, Λ⁻¹) = ½ log|Λ| − ½ ‖Lᵀ(x − μ)‖² − S/2 · log 2π.

        value: (..., B, S) → (..., B). O(S·k²) with one transposed conv.
        """
        self._check_value(value)
        z = self._apply_Lt(value - self.loc)
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
            return self.loc + self._solve_Lt_scipy(omega_d)
        return self.loc + self._wavefront_solve(omega_d, transpose=True)

    @property
    def variance(self) -> torch.Tensor:
        """Exact per-pixel variance diag(Λ⁻¹), shape (B, S), by selected inversion.

        Σ = Λ⁻¹ satisfies LᵀΣ = L⁻¹ (Takahashi's equations), whose upper-triangular
        part only needs Σ inside the band of L. In row blocks, with
        T_h = [A_{h+1,1}; …; A_{h+r,r}] (rW × W), G = D_h⁻ᵀT_hᵀ and the window
        Σ_w = Σ[rows h+1..h+r]²:

            Σ[h, h+1..h+r] = −G Σ_w,   Σ[h, h] = D_h⁻ᵀ D_h⁻¹ + G Σ_w Gᵀ.

        Cost: H sequential steps with O(r²W³) flops each, i.e. O(S·r²·W²) per
        channel image (~0.1 GFLOP at 64×64, k = 5), memory O(B·C·(rW)²). Exact and
        differentiable; it never forms the dense S×S inverse.
        """
        C, H, W = self.image_shape
        r, B = self._r, self.batch_shape[0]
        eye = torch.eye(W, dtype=self.loc.dtype, device=self.loc.device)
        window = self.loc.new_zeros(B, C, r * W, r * W)  # Σ of rows h+1..h+r (zero below image)
        below = [self.loc.new_zeros(B, C, W, (r + 1) * W) for _ in range(r)]  # strips h+1..h+r
        diag_rows = []
        for h in reversed(range(H)):
            strip = self._strip(h)
            D = strip[..., r * W:]
            # column block of L under D_h: A_{h+a,a} sits in strip(h+a) at column block r−a
            T = torch.cat([below[a - 1][..., (r - a) * W:(r - a + 1) * W] for a in range(1, r + 1)], -2)
            G = torch.linalg.solve_triangular(D.mT, T.mT, upper=True)  # D⁻ᵀTᵀ: W × rW
            D_inv = torch.linalg.solve_triangular(D, eye, upper=False)
            X = G @ window  # = −Σ[h, h+1..h+r]
            sigma_hh = D_inv.mT @ D_inv + X @ G.mT
            diag_rows.append(sigma_hh.diagonal(dim1=-2, dim2=-1))
            keep = (r - 1) * W  # the window slides up one row: rows h..h+r−1
            top = torch.cat([sigma_hh, -X[..., :keep]], -1)
            bottom = torch.cat([-X[..., :keep].mT, window[..., :keep, :keep]], -1)
            window = torch.cat([top, bottom], -2)
            below = [strip] + below[:-1]
        return torch.stack(diag_rows[::-1], -2).reshape(B, -1)

    def covariance_row(self, pixel_index: int) -> torch.Tensor:
        """Cov(x_i, x) = Λ⁻¹ e_i = L⁻ᵀ(L⁻¹ e_i), shape (B, S): two wavefront solves, O(S·k²)."""
        S = self.num_pixels
        if not -S <= int(pixel_index) < S:
            raise ValueError(f"pixel_index {pixel_index} is outside 0..{S - 1}")
        e = self.loc.new_zeros(self.loc.shape)
        e[:, int(pixel_index) % S] = 1.0
        return self._wavefront_solve(self._wavefront_solve(e, False), True)

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
        mask, values = _edit(self, mask, values)
        out = self.loc.detach().clone()
        out[:, mask] = values
        if 0 < int(mask.sum()) < self.num_pixels:
            band, rhs = _schur_band(self._precision_coo(), self.loc, mask, values)
            shift = np.stack([sla.solveh_banded(b, r, check_finite=False) for b, r in zip(band, rhs)])
            out[:, ~mask] = self.loc.detach()[:, ~mask] - torch.from_numpy(shift).to(out)
        return out

    def conditional(self, mask: torch.Tensor, values: torch.Tensor) -> "BandedPrecisionNormal":
        """p(x_a | x_b = values) = N(μ_a − Λ_aa⁻¹Λ_ab(values − μ_b), Λ_aa⁻¹): exact, its precision
        the sub-block Λ_aa of Λ = LLᵀ, banded like Λ (bandwidth ≤ r·W + r in raster order), as a
        `BandedPrecisionNormal` over the unedited pixels a (flattened order): float64, detached,
        O(S·r²·W²) per image. Arguments as for `conditional_mean`.
        """
        mask, values = _edit(self, mask, values)
        return _conditioned(self._precision_coo(), self.loc, mask, values)

    def _precision_coo(self) -> sp.coo_array:
        """Λ = LLᵀ for the whole batch, block diagonal (B·S)×(B·S), float64 COO."""
        L = self._factor_csr()
        return (L @ L.T).tocoo()

    # -- dense helpers, for tests and tiny images ----------------------------------------

    def _check_dense(self) -> None:
        if self.num_pixels > MAX_DENSE_PIXELS:
            raise ValueError(f"dense S×S matrices are for tiny images only (S = {self.num_pixels} "
                             f"> {MAX_DENSE_PIXELS}); use log_prob/variance/covariance_row instead")

    def to_dense_factor(self) -> torch.Tensor:
        """Dense lower-triangular L, shape (B, S, S), assembled from the row strips."""
        self._check_dense()
        C, H, W = self.image_shape
        r = self._r
        blocks = []
        for c in range(C):
            rows = []
            for h in range(H):
                strip = self._strip(h)[:, c]
                lo = max(h - r, 0)  # drop the columns of rows above the image
                rows.append(F.pad(strip[..., (lo - h + r) * W:], (lo * W, (H - h - 1) * W)))
            blocks.append(torch.cat(rows, -2))
        return _block_diag_batched(blocks)

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


def _edit(dist, mask: torch.Tensor, values: torch.Tensor):
    """An edit of a flat batch (B, S) checked: (flat bool mask, values (B, k) detached, loc's dtype)."""
    B, S = dist.loc.shape
    mask = flat_mask(mask, S).to(dist.loc.device)
    k = int(mask.sum())
    if values.shape[-1] != k or values.dim() > 2 or (values.dim() == 2 and values.shape[0] != B):
        raise ValueError(f"values must have shape (B, k) = ({B}, {k}) or (k,), got "
                         f"{tuple(values.shape)}; k is the number of True pixels in mask")
    return mask, values.detach().to(dist.loc).expand(B, k)


def _schur_band(lam: sp.coo_array, loc: torch.Tensor, mask: torch.Tensor, values: torch.Tensor):
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


def _conditioned(lam: sp.coo_array, loc: torch.Tensor, mask: torch.Tensor, values: torch.Tensor):
    """The conditional N(μ_a − Λ_aa⁻¹Λ_ab δ_b, Λ_aa⁻¹) of a precision Λ given an edit (`_schur_band`)."""
    if bool(mask.all()):
        raise ValueError("the mask selects every pixel, so no pixel is left to condition; leave at "
                         "least one pixel unedited")
    band, rhs = _schur_band(lam, loc, mask, values)
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
        """diag(Λ⁻¹) by selected inversion (Takahashi): from UΣ = U⁻ᵀ, for j ≥ i,
        Σ_ij = (δ_ij / U_ii − Σ_{k=i+1}^{i+m} U_ik Σ_kj) / U_ii, which needs Σ only inside the
        band below row i: a sliding m × m window, n steps of O(m²)."""
        B, n = self.loc.shape
        m = self.bandwidth
        diag = self._chol[:, m]
        if m == 0:
            return self._torch(1 / diag ** 2)
        chol = np.concatenate([self._chol, np.zeros((B, m + 1, m))], -1)  # zeros beyond the last pixel
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
        return self._torch(var)

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
        mask, values = _edit(self, mask, values)
        out = self.loc.clone()
        out[:, mask] = values
        if 0 < int(mask.sum()) < self.event_shape[0]:
            out[:, ~mask] = _conditioned(self._precision_coo(), self.loc, mask, values).loc
        return out

    def conditional(self, mask: torch.Tensor, values: torch.Tensor) -> "BandedPrecisionNormal":
        """The conditional given an edit: again a banded precision, its sub-block."""
        mask, values = _edit(self, mask, values)
        return _conditioned(self._precision_coo(), self.loc, mask, values)

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


def _block_diag_batched(blocks: list[torch.Tensor]) -> torch.Tensor:
    """Block-diagonal (B, ΣN, ΣN) from per-channel (B, N, N) blocks."""
    n = sum(b.shape[-1] for b in blocks)
    out = blocks[0].new_zeros(blocks[0].shape[0], n, n)
    start = 0
    for b in blocks:
        size = b.shape[-1]
        out[:, start:start + size, start:start + size] = b
        start += size
    return out


@functools.lru_cache(maxsize=32)
def _geometry(H: int, W: int, k: int, dtype: torch.dtype, device: torch.device):
    """Index tables for the local operations; they depend on H, W, k only, so a
    decoder that builds a new distribution every step reuses them (cached)."""
    offsets, r = stencil_offsets(k), k // 2
    n_off = len(offsets)
    # Lᵀv scatters weight·v from pixel i to its neighbour i + offset: a transposed
    # conv with a one-hot k×k kernel per offset does exactly that (and the plain
    # conv with the same kernels gathers v_{i+offset}).
    kernel = torch.zeros(n_off, 1, k, k, dtype=dtype, device=device)
    for n, (dy, dx) in enumerate(offsets):
        kernel[n, 0, r + dy, r + dx] = 1.0
    # Row strip [A_{h,r} … A_{h,1} D_h] (W × (r+1)W): flat position of each stencil
    # weight (source index n) and of the diagonal (source index n_off).
    flat, src = [], []
    for c in range(W):
        for n, (dy, dx) in enumerate(offsets + [(0, 0)]):
            if 0 <= c + dx < W:
                flat.append(c * (r + 1) * W + (r + dy) * W + c + dx)
                src.append(c * (n_off + 1) + n)
    flat = torch.tensor(flat, dtype=torch.long, device=device)
    src = torch.tensor(src, dtype=torch.long, device=device)
    plans = {t: _wavefront_plan(H, W, offsets, t, device) for t in (False, True)}
    return kernel, flat, src, plans


class _WavefrontSolve(torch.autograd.Function):
    """x = M⁻¹ b for M = L (transpose=False) or M = Lᵀ (transpose=True).

    Backward, from M x = b: ∂b = M⁻ᵀ ∂x (the solve in the other direction) and
    ∂M = −∂b xᵀ on the pattern of M. In terms of L this is ∂L[i, j] = −p_i q_j
    with (p, q) = (∂b, x) for M = L and (x, ∂b) for M = Lᵀ, so

        ∂off_diag[n, i] = −p_i · q_{i+off_n},   ∂log_diag_i = −p_i · q_i · L_ii,

    local products summed over the sample dimensions: one more wavefront solve and
    O(S·k²) work, instead of replaying every wavefront step through autograd.
    The backward is itself built from differentiable ops, so double backward works.
    """

    @staticmethod
    def forward(ctx, b, log_diag, off_diag, dist, transpose):
        x = dist._wavefront_loop(b, log_diag, off_diag, transpose)
        ctx.save_for_backward(x, log_diag, off_diag)
        ctx.dist, ctx.transpose = dist, transpose
        return x

    @staticmethod
    def backward(ctx, grad_x):
        x, log_diag, off_diag = ctx.saved_tensors
        dist, transpose = ctx.dist, ctx.transpose
        grad_b = _WavefrontSolve.apply(grad_x, log_diag, off_diag, dist, not transpose)
        grad_log_diag = grad_off_diag = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            p, q = (x, grad_b) if transpose else (grad_b, x)
            # parameters are shared by the samples: sum over the leading sample dims
            # (flattened first, since .sum(()) would reduce every dim)
            p, q = p.reshape(-1, *p.shape[-2:]), q.reshape(-1, *q.shape[-2:])
            if ctx.needs_input_grad[1]:
                grad_log_diag = -(p * q).sum(0) * log_diag.exp()
            if ctx.needs_input_grad[2]:
                C, H, W = dist.image_shape
                p5 = p.reshape(*p.shape[:-1], C, 1, H, W)
                grad_off_diag = -(p5 * dist._neighbours(q)).sum(0)
        return grad_b, grad_log_diag, grad_off_diag, None, None


def _wavefront_plan(H: int, W: int, offsets: list[tuple[int, int]], transpose: bool,
                    device: torch.device) -> dict:
    """Index tables for `_wavefront_solve` on one H×W channel.

    L u = b (forward, raster order): u_j needs u_{j+off_n}, weight off_diag[n, j].
    Lᵀy = e (backward, reverse raster order): y_j needs y_i for the later pixels
    i = j − off_n, weight off_diag[n, i]. Wavefront t = (r+1)·row + col counted from
    the solve's starting corner; every dependency has a smaller t, since
    |dx| <= r < r+1 per row step.
    """
    r, n_off, HW = max(-dy for dy, _ in offsets), len(offsets), H * W
    hh, ww = (a.ravel() for a in np.meshgrid(np.arange(H), np.arange(W), indexing="ij"))
    if transpose:
        t = (r + 1) * (H - 1 - hh) + (W - 1 - ww)
    else:
        t = (r + 1) * hh + ww
    order = np.argsort(t, kind="stable")
    rank = np.empty(HW, dtype=np.int64)
    rank[order] = np.arange(HW)
    deps = np.full((HW, n_off), HW, dtype=np.int64)  # HW: the zero slot
    weight = np.full((HW, n_off), n_off * HW, dtype=np.int64)  # n_off·HW: the zero weight
    for n, (dy, dx) in enumerate(offsets):
        sign = -1 if transpose else 1
        h2, w2 = hh + sign * dy, ww + sign * dx
        ok = (h2 >= 0) & (h2 < H) & (w2 >= 0) & (w2 < W)
        deps[ok, n] = rank[h2[ok] * W + w2[ok]]
        at = (h2 * W + w2) if transpose else (hh * W + ww)  # the later pixel holds the weight
        weight[ok, n] = n * HW + at[ok]
    deps, weight = deps[order], weight[order]
    counts = np.bincount(t, minlength=t.max() + 1)
    ends = np.cumsum(counts)
    bounds = [(int(e - c), int(e)) for c, e in zip(counts, ends)]
    as_long = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long, device=device)
    return {
        "order": as_long(order),
        "inverse": as_long(rank),
        "weight": as_long(weight.ravel()),
        "bounds": bounds,
        "deps": [as_long(deps[s:e].ravel()) for s, e in bounds],
    }


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
