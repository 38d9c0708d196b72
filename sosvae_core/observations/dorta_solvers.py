"""The solvers behind Dorta et al.'s sparse-precision model N(μ, (LLᵀ)⁻¹) (`observations.dorta`).

Each takes the factor L as the distribution stores it, `log_diag` (B, S) = log L_ii and
`off_diag` (B, C, n_off, H, W) (layout in `observations.dorta`), with the index tables of
`stencil_geometry`; none forms an S×S matrix except `dense_factor`, the tests' reference:

    stencil_geometry   the stencil's offsets, conv kernels, row-strip and wavefront tables
    apply_Lt           Lᵀv by one transposed conv, O(S·k²)
    wavefront_solve    L⁻¹b or L⁻ᵀb by substitution along anti-diagonals, O(S·k²), differentiable
    selected_variance  diag((LLᵀ)⁻¹) by block selected inversion over image rows, O(S·r²·W²)
    scipy_solve_Lt     L⁻ᵀb by spsolve_triangular on a CSR (float64, detached)

Conditioning on an edit works on the banded precision LLᵀ instead (`observations.banded`).

For the selected inversion we view one channel of L in blocks of image rows:

    L[row h, row h]     = D_h      (W×W, lower triangular, band r)
    L[row h, row h − a] = A_{h,a}  (W×W, band r),  a = 1..r

and the "strip" of row h is the W×(r+1)W matrix [A_{h,r} … A_{h,1} D_h], which is the
slice L[hW:(h+1)W, (h−r)W:(h+1)W] of the dense per-channel factor (`row_strip`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F

__all__ = [
    "stencil_offsets", "num_off_diagonal", "StencilGeometry", "stencil_geometry", "apply_Lt",
    "gather_neighbours", "row_strip", "wavefront_solve", "selected_variance", "factor_csr",
    "scipy_solve_Lt", "dense_factor", "MAX_DENSE_PIXELS",
]
MAX_DENSE_PIXELS = 4096  # dense S×S helpers refuse bigger images (4096² float64 = 128 MiB)


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


@dataclass(frozen=True, eq=False)
class StencilGeometry:
    """Index tables for an H×W channel and a k×k stencil (they depend on H, W, k only).

    scatter_kernel: one-hot (n_off, 1, k, k) kernels; a transposed conv with them scatters
        weight·v from pixel i to its neighbour i + offset, the plain conv gathers v_{i+offset}.
    strip_flat, strip_src: where each stencil weight (source n) and the diagonal (source
        n_off) of a row land in the flattened row strip (`row_strip`).
    plans: the wavefront tables of `wavefront_solve`, keyed by `transpose`.
    """

    height: int
    width: int
    stencil: int
    offsets: tuple
    scatter_kernel: torch.Tensor
    strip_flat: torch.Tensor
    strip_src: torch.Tensor
    plans: dict

    @property
    def r(self) -> int:
        return self.stencil // 2

    @property
    def n_off(self) -> int:
        return len(self.offsets)


@functools.lru_cache(maxsize=32)
def stencil_geometry(H: int, W: int, k: int, dtype: torch.dtype, device: torch.device) -> StencilGeometry:
    """The `StencilGeometry` of H×W and k, cached: a decoder that builds a new distribution every
    step reuses it."""
    offsets, r = stencil_offsets(k), k // 2
    kernel = torch.zeros(len(offsets), 1, k, k, dtype=dtype, device=device)
    for n, (dy, dx) in enumerate(offsets):
        kernel[n, 0, r + dy, r + dx] = 1.0
    flat, src = [], []
    for c in range(W):
        for n, (dy, dx) in enumerate(offsets + [(0, 0)]):
            if 0 <= c + dx < W:
                flat.append(c * (r + 1) * W + (r + dy) * W + c + dx)
                src.append(c * (len(offsets) + 1) + n)
    plans = {t: _wavefront_plan(H, W, offsets, t, device) for t in (False, True)}
    return StencilGeometry(H, W, k, tuple(offsets), kernel, torch.tensor(flat, dtype=torch.long, device=device),
                           torch.tensor(src, dtype=torch.long, device=device), plans)


def _wavefront_plan(H: int, W: int, offsets: list[tuple[int, int]], transpose: bool,
                    device: torch.device) -> dict:
    """Index tables for `wavefront_solve` on one H×W channel.

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


# -- local operators, O(S·k²) ----------------------------------------------------------------

def apply_Lt(v: torch.Tensor, log_diag: torch.Tensor, off_diag: torch.Tensor,
             geo: StencilGeometry) -> torch.Tensor:
    """Lᵀ v for v of shape (..., B, S), with local ops only (O(S·k²)).

    (Lᵀv)_j = L_jj v_j + Σ_n off_diag[n, j − off_n] · v_{j − off_n}: every
    later pixel i = j − off_n passes its weighted value back to neighbour j.
    """
    C, H, W = off_diag.shape[1], geo.height, geo.width
    batch = v.shape[:-1]
    v5 = v.reshape(*batch, C, 1, H, W)
    weighted = (off_diag * v5).reshape(-1, geo.n_off, H, W)
    scattered = F.conv_transpose2d(weighted, geo.scatter_kernel, padding=geo.r)
    return log_diag.exp() * v + scattered.reshape(v.shape)


def gather_neighbours(v: torch.Tensor, channels: int, geo: StencilGeometry) -> torch.Tensor:
    """v_{i + off_n} for every pixel i and offset n: (..., B, S) → (..., B, C, n_off, H, W).

    A conv with the one-hot kernels gathers the stencil; zeros outside the image.
    """
    H, W = geo.height, geo.width
    batch = v.shape[:-1]
    gathered = F.conv2d(v.reshape(-1, 1, H, W), geo.scatter_kernel, padding=geo.r)
    return gathered.reshape(*batch, channels, geo.n_off, H, W)


def row_strip(h: int, log_diag: torch.Tensor, off_diag: torch.Tensor, geo: StencilGeometry) -> torch.Tensor:
    """Row strip L[hW:(h+1)W, (h−r)W:(h+1)W] per (B, C): shape (B, C, W, (r+1)W).

    Columns of rows h − a < 0 hold weights that point outside the image;
    callers only ever multiply them by zeros or drop what they produce.
    """
    B, C = off_diag.shape[:2]
    H, W, r = geo.height, geo.width, geo.r
    vals = torch.cat([off_diag[:, :, :, h, :].transpose(-1, -2),
                      log_diag.reshape(B, C, H, W)[:, :, h, :].exp().unsqueeze(-1)], -1)
    vals = vals.reshape(B, C, -1).index_select(-1, geo.strip_src)
    strip = vals.new_zeros(B, C, W * (r + 1) * W).index_copy(-1, geo.strip_flat, vals)
    return strip.view(B, C, W, (r + 1) * W)


# -- the fast exact path: wavefront triangular solves in torch --------------------------------

def wavefront_solve(rhs: torch.Tensor, log_diag: torch.Tensor, off_diag: torch.Tensor,
                    geo: StencilGeometry, transpose: bool) -> torch.Tensor:
    """Exact u = L⁻¹ rhs (transpose=False) or y = L⁻ᵀ rhs (transpose=True), rhs (..., B, S).

    Differentiable w.r.t. rhs, log_diag and off_diag, twice (see `_WavefrontSolve`).
    """
    return _WavefrontSolve.apply(rhs, log_diag, off_diag, geo, transpose)


def _wavefront_loop(rhs: torch.Tensor, log_diag: torch.Tensor, off_diag: torch.Tensor,
                    geo: StencilGeometry, transpose: bool) -> torch.Tensor:
    """The substitution itself (no autograd; in-place writes into one buffer).

    Each pixel needs only pixels solved before it, all within r rows and r
    columns, so every pixel on one anti-diagonal "wavefront" t = (r+1)·row + col
    (counted from the corner where the solve starts) is independent of the
    others: one vectorised step per wavefront, (r+1)(H−1)+W steps, O(S·k²)
    flops in all.
    """
    B, C = off_diag.shape[:2]
    HW, n_off = geo.height * geo.width, geo.n_off
    plan = geo.plans[transpose]
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
    def forward(ctx, b, log_diag, off_diag, geo, transpose):
        x = _wavefront_loop(b, log_diag, off_diag, geo, transpose)
        ctx.save_for_backward(x, log_diag, off_diag)
        ctx.geo, ctx.transpose = geo, transpose
        return x

    @staticmethod
    def backward(ctx, grad_x):
        x, log_diag, off_diag = ctx.saved_tensors
        geo, transpose = ctx.geo, ctx.transpose
        grad_b = _WavefrontSolve.apply(grad_x, log_diag, off_diag, geo, not transpose)
        grad_log_diag = grad_off_diag = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            p, q = (x, grad_b) if transpose else (grad_b, x)
            # parameters are shared by the samples: sum over the leading sample dims
            # (flattened first, since .sum(()) would reduce every dim)
            p, q = p.reshape(-1, *p.shape[-2:]), q.reshape(-1, *q.shape[-2:])
            if ctx.needs_input_grad[1]:
                grad_log_diag = -(p * q).sum(0) * log_diag.exp()
            if ctx.needs_input_grad[2]:
                C = off_diag.shape[1]
                p5 = p.reshape(*p.shape[:-1], C, 1, geo.height, geo.width)
                grad_off_diag = -(p5 * gather_neighbours(q, C, geo)).sum(0)
        return grad_b, grad_log_diag, grad_off_diag, None, None


# -- the exact per-pixel variance: selected inversion over image rows ------------------------

def selected_variance(log_diag: torch.Tensor, off_diag: torch.Tensor, geo: StencilGeometry) -> torch.Tensor:
    """Exact diag(Λ⁻¹) for Λ = LLᵀ, shape (B, S), by selected inversion.

    Σ = Λ⁻¹ satisfies LᵀΣ = L⁻¹ (Takahashi's equations), whose upper-triangular
    part only needs Σ inside the band of L. In row blocks, with
    T_h = [A_{h+1,1}; …; A_{h+r,r}] (rW × W), G = D_h⁻ᵀT_hᵀ and the window
    Σ_w = Σ[rows h+1..h+r]²:

        Σ[h, h+1..h+r] = −G Σ_w,   Σ[h, h] = D_h⁻ᵀ D_h⁻¹ + G Σ_w Gᵀ.

    Cost: H sequential steps with O(r²W³) flops each, i.e. O(S·r²·W²) per
    channel image (~0.1 GFLOP at 64×64, k = 5), memory O(B·C·(rW)²). Exact and
    differentiable; it never forms the dense S×S inverse.
    """
    B, C = off_diag.shape[:2]
    H, W, r = geo.height, geo.width, geo.r
    eye = torch.eye(W, dtype=log_diag.dtype, device=log_diag.device)
    window = log_diag.new_zeros(B, C, r * W, r * W)  # Σ of rows h+1..h+r (zero below image)
    below = [log_diag.new_zeros(B, C, W, (r + 1) * W) for _ in range(r)]  # strips h+1..h+r
    diag_rows = []
    for h in reversed(range(H)):
        strip = row_strip(h, log_diag, off_diag, geo)
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


# -- the factor as a matrix: scipy sparse (float64, no autograd) and dense -------------------

def factor_csr(log_diag: torch.Tensor, off_diag: torch.Tensor, geo: StencilGeometry) -> sp.csr_array:
    """L for the whole batch as one block-diagonal (B·S)×(B·S) CSR matrix (float64)."""
    B, C = off_diag.shape[:2]
    H, W, n_off = geo.height, geo.width, geo.n_off
    S = C * H * W
    pix = np.arange(S).reshape(C, H, W)
    hh, ww = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    rows, cols, src = [np.arange(S)], [np.arange(S)], [C * n_off * H * W + np.arange(S)]
    for c in range(C):
        for n, (dy, dx) in enumerate(geo.offsets):
            ok = (hh + dy >= 0) & (ww + dx >= 0) & (ww + dx < W)
            rows.append(pix[c][ok])
            cols.append(pix[c, hh[ok] + dy, ww[ok] + dx])
            src.append(((c * n_off + n) * H + hh[ok]) * W + ww[ok])
    rows, cols, src = (np.concatenate(a) for a in (rows, cols, src))
    params = torch.cat([off_diag.reshape(B, -1), log_diag.exp()], -1)
    data = params.detach().to("cpu", torch.float64).numpy()[:, src]
    shift = (np.arange(B) * S)[:, None]
    return sp.csr_array((data.ravel(), ((rows + shift).ravel(), (cols + shift).ravel())),
                        shape=(B * S, B * S))


def scipy_solve_Lt(e: torch.Tensor, log_diag: torch.Tensor, off_diag: torch.Tensor,
                   geo: StencilGeometry) -> torch.Tensor:
    """y = L⁻ᵀ e, e (..., B, S), with scipy.sparse.linalg.spsolve_triangular: O(S·k²) flops,
    compiled, float64; the result is detached."""
    B, S = log_diag.shape
    n = e.shape[:-2].numel()
    rhs = e.detach().to("cpu", torch.float64).reshape(n, B * S).T.numpy()
    y = spla.spsolve_triangular(factor_csr(log_diag, off_diag, geo).T.tocsr(), rhs, lower=False)
    y = torch.from_numpy(np.ascontiguousarray(y.T)).reshape(e.shape)
    return y.to(device=e.device, dtype=e.dtype)


def dense_factor(log_diag: torch.Tensor, off_diag: torch.Tensor, geo: StencilGeometry) -> torch.Tensor:
    """Dense lower-triangular L, shape (B, S, S), assembled from the row strips (tiny images)."""
    H, W, r = geo.height, geo.width, geo.r
    blocks = []
    for c in range(off_diag.shape[1]):
        rows = []
        for h in range(H):
            strip = row_strip(h, log_diag, off_diag, geo)[:, c]
            lo = max(h - r, 0)  # drop the columns of rows above the image
            rows.append(F.pad(strip[..., (lo - h + r) * W:], (lo * W, (H - h - 1) * W)))
        blocks.append(torch.cat(rows, -2))
    return _block_diag_batched(blocks)


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
