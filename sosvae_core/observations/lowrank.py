"""Observation distributions of SOS-VAE (paper Section 3).

An image y with S = C·H·W pixels (flattened in C, H, W order) is modelled as

    p(y | z) = N(μ, Σ),   Σ = P Pᵀ + D,

with the covariance factor P (`cov_factor`, S × R, rank R = 25 in the paper) and
the diagonal D (`cov_diag`), which the paper fixes to ε·I with ε = 1e-5.
Equivalently (eq. 4) a sample is

    y = μ + P ω_p + √D ω_d,   ω_p ~ N(0, I_R),  ω_d ~ N(0, I_S),

and everything below is O(S·R²): the S × S matrix Σ is never formed. With the capacitance
C = I + Pᵀ D⁻¹ P (R × R) and its Cholesky factor L (Woodbury, determinant lemma):

    log N(y; μ, Σ) = −½ (S log 2π + log|C| + log|D| + rᵀΣ⁻¹r),   r = y − μ,
    rᵀΣ⁻¹r = min_ω ‖r − Pω‖²_{D⁻¹} + ‖ω‖²   at ω* = C⁻¹ Pᵀ D⁻¹ r,
    H = S/2 (1 + log 2π) + ½ (log|C| + log|D|).

The R-sized reductions (PᵀD⁻¹P, PᵀD⁻¹r) are accumulated in float64 whatever the dtype of
P, and the R×R algebra runs in float64; the S-sized work runs in P's dtype.

`LowRankHead` predicts μ and P from the decoder's features (SOS-VAE, and with a learned
D the unstabilised ablation of Appendix A); `DistributionOnly` is Section 4.5's single
N(μ, PPᵀ + εI) with no network.
"""
from __future__ import annotations

import ctypes
import math
import sys
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from .base import (LOG_2PI, ObservationDistribution, ObservationModel, broadcast_batch, check_finite,
                   check_tensors, flat_mask, inverse_softplus, tiny_conv)

__all__ = [
    "CapacitanceError",
    "LowRankNormal",
    "LowRankHead",
    "DistributionOnly",
]

# the float32 sums over S behind PᵀP and Pᵀr run over blocks of this many rows, and the
# blocks are added in float64: one float32 sum over all S = 116,412 rows of CelebA is what
# loses accuracy (the capacitance of nearly parallel columns stops being positive definite
# at ε = 1e-5); a few large blocks cost no more than one product
_BLOCK_ROWS = 8192
# a P this small (float64 entries) is converted whole, so that its products are exact
_EXACT_ELEMENTS = 1 << 20

Scalar = Union[float, torch.Tensor]  # ε: a Python float or a 0-d tensor

# Linux's madvise(2), to put a large fresh gradient on huge pages: writing 290 MB of new memory
# in 4 KiB pages costs ~70,000 page faults, as long as the product that fills it (benchmarks/)
_MADV_HUGEPAGE, _HUGE_PAGE, _ADVISED_BYTES = 14, 2 << 20, 16 << 20
try:
    _madvise = ctypes.CDLL(None, use_errno=True).madvise if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _madvise = None
if _madvise is not None:
    _madvise.argtypes, _madvise.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int


class CapacitanceError(RuntimeError):
    """The R×R capacitance matrix I + Pᵀ D⁻¹ P could not be Cholesky-factorised."""


@torch.library.custom_op("sosvae::checked_cholesky", mutates_args=())
def _checked_cholesky(tril: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
    """cholesky_ex's factor, or CapacitanceError where it failed. An operator of its own, so
    that torch.compile runs the check (a branch on the data) inside its graph, unbroken."""
    if (info != 0).any():
        bad = int((info != 0).nonzero()[0, 0]) if info.dim() else 0
        raise CapacitanceError(
            f"Cholesky of the {tril.shape[-1]}×{tril.shape[-1]} capacitance "
            f"I + Pᵀ D⁻¹ P failed (batch element {bad}): it is not positive definite, which "
            f"means cov_factor or cov_diag hold huge or non-finite values; lower the learning "
            f"rate or raise the diagonal ε"
        )
    return tril.clone()  # an operator's output may not alias its input


@_checked_cholesky.register_fake
def _(tril, info):
    return torch.empty_like(tril)


_checked_cholesky.register_autograd(lambda ctx, grad: (grad, None))


def _cholesky(capacitance: torch.Tensor) -> torch.Tensor:
    return _checked_cholesky(*torch.linalg.cholesky_ex(capacitance))


def _cross64(P: torch.Tensor, y: Optional[torch.Tensor], with_gram: bool):
    """(PᵀP or None, Pᵀy or None) in float64, for P (..., S, R) and y (..., S).

    A small P is converted to float64 first (a product of two float32 numbers is exact in
    float64); a large one is summed in float32 over blocks of _BLOCK_ROWS rows, and the
    blocks in float64, which costs no more than one float32 product and needs no float64
    copy of P (S·R·8 bytes).
    """
    if P.dtype == torch.float64 and (y is None or y.dtype == torch.float64):
        return (P.mT @ P if with_gram else None,
                None if y is None else (P.mT @ y.unsqueeze(-1)).squeeze(-1))
    exact = P.numel() <= _EXACT_ELEMENTS
    rows = P.shape[-2] if exact else _BLOCK_ROWS
    gram = proj = None
    for start in range(0, P.shape[-2], rows):
        block = P[..., start:start + rows, :]
        block = block.double() if exact else block
        if with_gram:
            g = (block.mT @ block).double()
            gram = g if gram is None else gram.add_(g)
        if y is not None:
            y_block = y[..., start:start + rows].to(block.dtype)
            p = (y_block.unsqueeze(-2) @ block).squeeze(-2).double()  # yᵀP: half the time of Pᵀy
            proj = p if proj is None else proj.add_(p)
    return gram, proj


class _Gram64(torch.autograd.Function):
    """(PᵀP, Pᵀy) in float64 (see _cross64), with the gradients written out:

        ∂/∂P: G ↦ P (G + Gᵀ) + y gᵀ,   ∂/∂y: g ↦ P g   (G, g: the incoming gradients),

    in differentiable ops, so that second derivatives work. Autograd through the blocks
    would keep a float64 copy of each alive for the backward pass.
    """

    @staticmethod
    def forward(ctx, P, y, with_gram):
        ctx.save_for_backward(P, y)
        return _cross64(P, y, with_gram)

    @staticmethod
    def backward(ctx, g_gram, g_proj):
        P, y = ctx.saved_tensors
        g_P = g_y = None
        if ctx.needs_input_grad[0]:
            g_P = 0 if g_gram is None else P @ (g_gram + g_gram.mT).to(P.dtype)
            if g_proj is not None:
                g_P = g_P + _outer_sum(y.to(P.dtype), g_proj.to(P.dtype), P.dim() - 2)
        if ctx.needs_input_grad[1] and g_proj is not None:
            g_y = (P @ g_proj.to(P.dtype).unsqueeze(-1)).squeeze(-1)
        return g_P, g_y, None


def _outer_sum(y: torch.Tensor, g: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """Σ y gᵀ over the leading dimensions of y (..., S) and g (..., R) beyond the last
    `batch_dims` (the samples of a broadcast log_prob): (*batch, S, R), without an
    S × R matrix per sample."""
    y = y.expand(g.shape[:-1] + y.shape[-1:])
    extra = y.dim() - 1 - batch_dims
    if extra <= 0:
        return y.unsqueeze(-1) * g.unsqueeze(-2)
    return torch.einsum("n...s,n...r->...sr", y.flatten(0, extra - 1), g.flatten(0, extra - 1))


def _woodbury(r: Optional[torch.Tensor], P: torch.Tensor, eps: Scalar):
    """For Σ = PPᵀ + εI: (L, ω*, u) with L the Cholesky factor of C = I + PᵀP/ε (float64),
    ω* = C⁻¹Pᵀr/ε (float64) and u = r − Pω* (r's dtype); ω* and u are None without r.

    A learned diagonal D reaches it whitened, Σ = D^½ (P̃P̃ᵀ + I) D^½ with P̃ = D^-½P,
    r̃ = D^-½r and ε = 1, where C is unchanged (LowRankNormal._whitened).
    """
    gram, proj = _Gram64.apply(P, r, True)
    eye = torch.eye(P.shape[-1], dtype=torch.float64, device=P.device)
    tril = _cholesky(eye + gram / eps)
    if r is None:
        return tril, None, None
    omega = torch.cholesky_solve((proj / eps).unsqueeze(-1), tril).squeeze(-1)
    u = r - (omega.to(P.dtype).unsqueeze(-2) @ P.mT).squeeze(-2)  # ω*ᵀPᵀ: faster than Pω* for a row-major P
    return tril, omega, u


def _empty(shape, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor; on Linux, one of _ADVISED_BYTES or more is advised onto huge
    pages before its first write (the advice is only that: where the kernel has none, 4 KiB)."""
    t = like.new_empty(shape)
    nbytes = t.numel() * t.element_size()
    if _madvise is not None and t.device.type == "cpu" and nbytes >= _ADVISED_BYTES:
        start = -(-t.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        end = (t.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        _madvise(start, end - start, _MADV_HUGEPAGE)
    return t


def _times(P: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """P @ M for P (..., S, R), laid out in memory as P is (row-major, or column-major as the
    heads make it), so that a gradient meets its tensor without a transposing copy. Outside
    autograd (a first derivative) and torch.compile, written into a fresh `_empty`."""
    column_major = P.mT.is_contiguous() and not P.is_contiguous()
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return (M.mT @ P.mT).mT if column_major else P @ M
    shape = torch.broadcast_shapes(P.shape[:-2], M.shape[:-2]) + P.shape[-2:]
    if column_major:
        return torch.matmul(M.mT, P.mT, out=_empty(shape[:-2] + shape[-2:][::-1], P)).mT
    return torch.matmul(P, M, out=_empty(shape, P))


def _add_outer(out: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out += u wᵀ in place, for out (..., S, R), u (..., S), w (..., 1, R): with one batch
    dimension a product of depth one (baddbmm_, faster than addcmul_ at large S), else addcmul_."""
    if (out.dim(), u.dim(), w.dim()) == (3, 2, 3) and out.shape[0] == u.shape[0] == w.shape[0]:
        return out.baddbmm_(u.unsqueeze(-1), w)
    return out.addcmul_(u.unsqueeze(-1), w)


def _mahalanobis_terms(u: torch.Tensor, omega: torch.Tensor, eps: Scalar) -> torch.Tensor:
    """rᵀΣ⁻¹r = ‖u‖²/ε + ‖ω*‖² (float64), the Woodbury minimum at ω*."""
    return (u * u).sum(-1).double() / eps + (omega * omega).sum(-1)


def _log_det(tril: torch.Tensor) -> torch.Tensor:
    return 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)


class _WoodburyTerms(torch.autograd.Function):
    """rᵀΣ⁻¹r and log|C| for Σ = PPᵀ + εI, with hand-derived gradients.

    Forward: _woodbury, maha = ‖u‖²/ε + ‖ω*‖². Backward (ω* is a minimiser, so its own
    variation drops out):
        ∂maha/∂r = 2u/ε,   ∂maha/∂P = −2 u ω*ᵀ/ε,   ∂maha/∂ε = −‖u‖²/ε²,
        ∂log|C|/∂P = 2 P C⁻¹/ε,   ∂log|C|/∂ε = (tr C⁻¹ − R)/ε.
    This reads P twice in the forward pass and once in the backward, where autograd
    through the same expression makes several more full S×R temporaries; see benchmarks/.
    The gradients are differentiable ops of (u, ω*, L); when a second derivative is asked
    for (create_graph), these are recomputed with autograd on, so that how u, ω* and L move
    with r, P and ε is part of it.
    """

    @staticmethod
    def forward(ctx, r, P, eps):
        tril, omega, u = _woodbury(r, P, eps)
        if isinstance(eps, torch.Tensor):
            ctx.save_for_backward(r, P, u, omega, tril, eps)
        else:
            ctx.save_for_backward(r, P, u, omega, tril)
        ctx.eps = eps
        return _mahalanobis_terms(u, omega, eps), _log_det(tril)

    @staticmethod
    def backward(ctx, g_maha, g_log_det):
        r, P, u, omega, tril, *eps = ctx.saved_tensors
        eps = eps[0] if eps else ctx.eps
        if torch.is_grad_enabled():  # create_graph: the second derivative sees u, ω*, L move
            tril, omega, u = _woodbury(r, P, eps)
        needs_r, needs_P, needs_eps = ctx.needs_input_grad
        g_r = g_P = g_eps = None
        if needs_r:
            g_r = (2 / eps) * g_maha.to(u.dtype).unsqueeze(-1) * u
        if needs_P or needs_eps:
            eye = torch.eye(P.shape[-1], dtype=torch.float64, device=P.device)
            c_inv = torch.cholesky_solve(eye.expand_as(tril), tril)
        if needs_P:
            M = ((2 / eps) * g_log_det.unsqueeze(-1).unsqueeze(-1) * c_inv).to(P.dtype)
            w = ((-2 / eps) * g_maha.unsqueeze(-1).unsqueeze(-1) * omega.unsqueeze(-2)).to(P.dtype)
            g_P = _add_outer(_times(P, M), u.to(P.dtype), w)  # in place: no second S×R temporary
        if needs_eps:
            d_maha = -(u * u).sum(-1).double() / eps ** 2
            d_log_det = (c_inv.diagonal(dim1=-2, dim2=-1).sum(-1) - P.shape[-1]) / eps
            g_eps = (g_maha * d_maha + g_log_det * d_log_det).sum().to(eps.dtype)
        return g_r, g_P, g_eps


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
        """(r, P, ε) for D = εI, else (D^-½r, D^-½P, 1): the arguments of _woodbury, for all
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
        return self._lazy("_cap_tril", lambda: _woodbury(*self._whitened())[0])

    def _log_det_diag(self) -> torch.Tensor:
        if self._diag is not None:
            return self._diag.log().sum(-1).double()
        if isinstance(self._eps, torch.Tensor):
            return self.event_shape[0] * self._eps.double().log()
        return self.event_shape[0] * math.log(self._eps)

    def _log_det_cov(self) -> torch.Tensor:
        # matrix determinant lemma: log|PPᵀ + D| = log|C| + log|D|
        return self._lazy("_log_det_cap", lambda: _log_det(self.capacitance_tril)) + self._log_det_diag()

    def _mahalanobis(self, r: torch.Tensor) -> torch.Tensor:
        """rᵀΣ⁻¹r (float64) for residuals r (..., S) that broadcast with the batch."""
        r, P, eps = self._whitened(r)
        _, omega, u = _woodbury(r, P, eps)
        return _mahalanobis_terms(u, omega, eps)

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
            maha, log_det_cap = _WoodburyTerms.apply(*self._whitened(r))
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
        evals, V = torch.linalg.eigh(_Gram64.apply(P, None, True)[0])
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
        omega = _woodbury(*self._whitened(values - self.loc.index_select(-1, idx), idx))[1]
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
        tril, omega, _ = _woodbury(*self._whitened(r, edited))
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
