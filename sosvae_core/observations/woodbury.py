"""The O(S·R²) algebra behind `LowRankNormal`: Woodbury's identity and the determinant lemma.

For Σ = P Pᵀ + εI with P (`cov_factor`) of shape S × R, the capacitance

    C = I + Pᵀ P / ε   (R × R),   L its Cholesky factor,

gives everything the likelihood needs without the S × S matrix Σ:

    log|Σ| = log|C| + S log ε = 2 Σ_r log L_rr + S log ε           (determinant lemma)
    rᵀΣ⁻¹r = min_ω ‖r − Pω‖²/ε + ‖ω‖²  at  ω* = C⁻¹ Pᵀ r / ε        (Woodbury)
           = ‖u‖²/ε + ‖ω*‖²,   u = r − Pω*.

The minimisation form subtracts per pixel (u) rather than two sums of size ~S/ε, so float32
does not cancel catastrophically at the paper's ε = 1e-5. The R-sized reductions (PᵀP, Pᵀr)
are accumulated in float64 whatever the dtype of P, the R×R algebra runs in float64, and the
S-sized work runs in P's dtype. A learned diagonal D reaches these functions whitened
(P̃ = D^-½P, r̃ = D^-½r, ε = 1), where C is the same matrix.

`WoodburyTerms` returns (rᵀΣ⁻¹r, log|C|) with hand-derived gradients that read P once in
the backward pass; `Gram64` returns (PᵀP, Pᵀy) in float64 with its own gradients; a failed
factorisation raises `CapacitanceError` inside a compiled graph too.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Optional, Union

import torch

__all__ = ["CapacitanceError", "Gram64", "WoodburyTerms", "woodbury", "mahalanobis_terms", "log_det"]

# the float32 sums over S behind PᵀP and Pᵀr run over blocks of this many rows, and the
# blocks are added in float64: one float32 sum over all S = 116,412 rows of CelebA is what
# loses accuracy (the capacitance of nearly parallel columns stops being positive definite
# at ε = 1e-5); a few large blocks cost no more than one product
_BLOCK_ROWS = 8192
# a P this small (float64 entries) is converted whole, so that its products are exact
_EXACT_ELEMENTS = 1 << 20
# out += u wᵀ on a gradient of this many bytes or more runs as a product of depth one (baddbmm_),
# below it as an elementwise addcmul_: each is the faster one on its side (benchmarks/README.md)
_DEPTH_ONE_BYTES = 200 << 20

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


class Gram64(torch.autograd.Function):
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


def woodbury(r: Optional[torch.Tensor], P: torch.Tensor, eps: Scalar):
    """For Σ = PPᵀ + εI: (L, ω*, u) with L the Cholesky factor of C = I + PᵀP/ε (float64),
    ω* = C⁻¹Pᵀr/ε (float64) and u = r − Pω* (r's dtype); ω* and u are None without r.

    A learned diagonal D reaches it whitened, Σ = D^½ (P̃P̃ᵀ + I) D^½ with P̃ = D^-½P,
    r̃ = D^-½r and ε = 1, where C is unchanged (LowRankNormal._whitened).
    """
    gram, proj = Gram64.apply(P, r, True)
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
    """out += u wᵀ in place, for out (..., S, R), u (..., S), w (..., 1, R): for a large out with
    one batch dimension a product of depth one (baddbmm_), else addcmul_ (_DEPTH_ONE_BYTES)."""
    if ((out.dim(), u.dim(), w.dim()) == (3, 2, 3) and out.shape[0] == u.shape[0] == w.shape[0]
            and out.numel() * out.element_size() >= _DEPTH_ONE_BYTES):
        return out.baddbmm_(u.unsqueeze(-1), w)
    return out.addcmul_(u.unsqueeze(-1), w)


def mahalanobis_terms(u: torch.Tensor, omega: torch.Tensor, eps: Scalar) -> torch.Tensor:
    """rᵀΣ⁻¹r = ‖u‖²/ε + ‖ω*‖² (float64), the Woodbury minimum at ω*."""
    return (u * u).sum(-1).double() / eps + (omega * omega).sum(-1)


def log_det(tril: torch.Tensor) -> torch.Tensor:
    return 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)


class WoodburyTerms(torch.autograd.Function):
    """rᵀΣ⁻¹r and log|C| for Σ = PPᵀ + εI, with hand-derived gradients.

    Forward: woodbury, maha = ‖u‖²/ε + ‖ω*‖². Backward (ω* is a minimiser, so its own
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
        tril, omega, u = woodbury(r, P, eps)
        if isinstance(eps, torch.Tensor):
            ctx.save_for_backward(r, P, u, omega, tril, eps)
        else:
            ctx.save_for_backward(r, P, u, omega, tril)
        ctx.eps = eps
        return mahalanobis_terms(u, omega, eps), log_det(tril)

    @staticmethod
    def backward(ctx, g_maha, g_log_det):
        r, P, u, omega, tril, *eps = ctx.saved_tensors
        eps = eps[0] if eps else ctx.eps
        if torch.is_grad_enabled():  # create_graph: the second derivative sees u, ω*, L move
            tril, omega, u = woodbury(r, P, eps)
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
