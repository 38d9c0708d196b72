"""Tests for the Dorta et al. (2018) sparse-precision observation model and its solvers.

Every reference is dense and built here, independently of the module: L by a
loop over pixels and stencil offsets, then N(μ, Λ⁻¹) as torch's
MultivariateNormal(loc, precision_matrix=LLᵀ). All in float64 and seeded.
"""
import math

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp
import torch
from torch.distributions import Distribution, MultivariateNormal

from sosvae_core.observations import banded
from sosvae_core.observations import dorta_solvers as solvers
from sosvae_core.observations.dorta import (
    MAX_DENSE_PIXELS,
    SparsePrecisionNormal,
    num_off_diagonal,
    stencil_offsets,
)

DT = torch.float64
CASES = [((1, 5, 4), 3), ((1, 5, 4), 5), ((2, 4, 5), 3), ((2, 4, 5), 5), ((2, 9, 7), 5)]
IDS = [f"{c}x{h}x{w}-k{k}" for (c, h, w), k in CASES]


@pytest.fixture(autouse=True)
def one_thread():
    # the tensors here are tiny: extra intra-op threads only spin, and badly so on
    # a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ref_offsets(k):
    """Earlier-in-raster-order offsets of a k×k window, in raster order."""
    r = k // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) < (0, 0)]


def ref_factor(log_diag, off_diag, shape, k):
    """Dense L (B, S, S), one pixel and one offset at a time."""
    C, H, W = shape
    B, S = log_diag.shape
    L = torch.zeros(B, S, S, dtype=log_diag.dtype)
    for c in range(C):
        for h in range(H):
            for w in range(W):
                i = (c * H + h) * W + w
                L[:, i, i] = log_diag[:, i].exp()
                for n, (dy, dx) in enumerate(ref_offsets(k)):
                    if 0 <= h + dy < H and 0 <= w + dx < W:
                        L[:, i, (c * H + h + dy) * W + w + dx] = off_diag[:, c, n, h, w]
    return L


def make(shape, k, B=3, seed=0, scale=0.4, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    C, H, W = shape
    S, n = C * H * W, num_off_diagonal(k)
    loc = torch.randn(B, S, generator=g, dtype=DT)
    log_diag = 0.3 * torch.randn(B, S, generator=g, dtype=DT)
    off = scale * torch.randn(B, C, n, H, W, generator=g, dtype=DT)
    return loc.to(dtype), log_diag.to(dtype), off.to(dtype)


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    shape, k = request.param
    loc, log_diag, off = make(shape, k)
    dist = SparsePrecisionNormal(loc, log_diag, off, shape, stencil=k)
    L = ref_factor(log_diag, off, shape, k)
    mvn = MultivariateNormal(loc, precision_matrix=L @ L.mT)
    return dist, mvn, L, (loc, log_diag, off, shape, k)


# -- layout --------------------------------------------------------------------------------


def test_stencil_offsets_order_and_count():
    assert stencil_offsets(3) == [(-1, -1), (-1, 0), (-1, 1), (0, -1)]
    for k in (3, 5, 7):
        offs = stencil_offsets(k)
        assert offs == ref_offsets(k)
        assert len(offs) == num_off_diagonal(k) == (k * k - 1) // 2
        assert offs == sorted(offs)  # raster order of the window


def test_conv_layout_is_a_view_of_the_canonical_layout():
    loc, log_diag, off = make((2, 4, 5), 5)
    a = SparsePrecisionNormal(loc, log_diag, off, (2, 4, 5), stencil=5)
    b = SparsePrecisionNormal(loc, log_diag, off.reshape(3, 2 * 12, 4, 5), (2, 4, 5), stencil=5)
    x = torch.randn(3, 40, dtype=DT)
    torch.testing.assert_close(a.log_prob(x), b.log_prob(x), rtol=0, atol=0)


def test_is_a_torch_distribution(case):
    dist, *_ = case
    B, S = dist.loc.shape
    assert isinstance(dist, Distribution)
    assert dist.batch_shape == (B,) and dist.event_shape == (S,)
    assert dist.rsample().shape == (B, S)
    assert dist.rsample((4, 2)).shape == (4, 2, B, S)
    s = dist.sample((5,))
    assert s.shape == (5, B, S) and not s.requires_grad
    torch.testing.assert_close(dist.stddev, dist.variance.sqrt())
    assert dist.mean is dist.loc and dist.mode is dist.loc


# -- against the dense reference ---------------------------------------------------------------


def test_dense_precision_matches_reference(case):
    dist, mvn, L, _ = case
    torch.testing.assert_close(dist.to_dense_factor(), L, rtol=0, atol=0)
    torch.testing.assert_close(dist.to_dense_precision(), L @ L.mT, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(dist.covariance_matrix, mvn.covariance_matrix, rtol=1e-9, atol=1e-10)


def test_channels_are_independent():
    loc, log_diag, off = make((2, 4, 5), 5)
    lam = SparsePrecisionNormal(loc, log_diag, off, (2, 4, 5), stencil=5).to_dense_precision()
    assert lam[:, :20, 20:].abs().max() == 0 and lam[:, 20:, :20].abs().max() == 0


def test_log_prob_and_entropy(case):
    dist, mvn, *_ = case
    x = torch.randn((4,) + tuple(dist.loc.shape), dtype=DT, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(dist.log_prob(x), mvn.log_prob(x), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(dist.entropy(), mvn.entropy(), rtol=1e-12, atol=1e-10)


def test_variance_is_exact(case):
    dist, mvn, *_ = case
    torch.testing.assert_close(dist.variance, mvn.variance, rtol=1e-10, atol=1e-12)


def test_covariance_row(case):
    dist, mvn, *_ = case
    S = dist.loc.shape[-1]
    for i in (0, S // 2 + 1, S - 1, -1):
        torch.testing.assert_close(dist.covariance_row(i), mvn.covariance_matrix[:, i % S],
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["wavefront", "scipy"])
def test_samples_with_given_eps_match_dense_triangular_solve(case, method):
    dist, _, L, _ = case
    eps = torch.randn((2,) + tuple(dist.loc.shape), dtype=DT, generator=torch.Generator().manual_seed(2))
    ref = dist.loc + torch.linalg.solve_triangular(L.mT, eps.unsqueeze(-1), upper=True).squeeze(-1)
    torch.testing.assert_close(dist.rsample(omega_d=eps, method=method), ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(dist.rsample((2,), omega_d=eps, method=method), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape,k", [((1, 5, 4), 3), ((2, 4, 5), 5)], ids=["1x5x4-k3", "2x4x5-k5"])
def test_empirical_covariance_of_samples(shape, k):
    # N = 200k: each covariance entry has standard error sqrt((Σ_ii Σ_jj + Σ_ij²)/N);
    # we allow 5 standard errors per entry.
    loc, log_diag, off = make(shape, k, B=1)
    dist = SparsePrecisionNormal(loc, log_diag, off, shape, stencil=k)
    torch.manual_seed(3)
    N = 200_000
    x = dist.sample((N,))[:, 0]
    emp = torch.cov(x.T)
    L = ref_factor(log_diag, off, shape, k)[0]
    sigma = torch.cholesky_inverse(L.mT, upper=True)  # (LLᵀ)⁻¹
    d = sigma.diagonal()
    stderr = ((d[:, None] * d[None, :] + sigma ** 2) / N).sqrt()
    assert ((emp - sigma).abs() <= 5 * stderr).all(), ((emp - sigma).abs() / stderr).max()
    torch.testing.assert_close(x.mean(0), loc[0], rtol=0, atol=5 * (d / N).sqrt().max().item())


def test_conditional_mean_matches_dense_formula(case):
    dist, mvn, _, (loc, *_rest, shape, _k) = case
    S = loc.shape[-1]
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(S, generator=g) < 0.3
    mask[0] = True
    k = int(mask.sum())
    values = torch.randn(loc.shape[0], k, dtype=DT, generator=g)
    sigma = mvn.covariance_matrix
    a, b = ~mask, mask
    s12 = sigma[:, a][:, :, b]
    s22 = sigma[:, b][:, :, b]
    ref = loc.clone()
    ref[:, a] = loc[:, a] + (s12 @ torch.linalg.solve(s22, (values - loc[:, b]).unsqueeze(-1))).squeeze(-1)
    ref[:, b] = values
    out = dist.conditional_mean(mask, values)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    assert torch.equal(out[:, b], values)
    # an image-shaped mask and shared (k,) values are accepted too
    out2 = dist.conditional_mean(mask.view(shape), values[0])
    torch.testing.assert_close(out2[0], ref[0], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("k", [3, 5])
def test_bigger_image_solvers_agree(k):
    # more rows than the stencil spans, non-square: wavefront vs scipy, and the
    # row-block selected inversion vs a dense inverse
    shape = (1, 16, 11)
    loc, log_diag, off = make(shape, k, B=2, scale=0.2)
    dist = SparsePrecisionNormal(loc, log_diag, off, shape, stencil=k)
    eps = torch.randn(3, 2, 176, dtype=DT, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(dist.rsample(omega_d=eps), dist.rsample(omega_d=eps, method="scipy"),
                               rtol=0, atol=1e-10)
    sigma = torch.linalg.inv(ref_factor(log_diag, off, shape, k) @ ref_factor(log_diag, off, shape, k).mT)
    torch.testing.assert_close(dist.variance, sigma.diagonal(dim1=-2, dim2=-1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dist.covariance_row(100), sigma[:, 100], rtol=1e-10, atol=1e-12)


def test_conditional_mean_trivial_masks():
    loc, log_diag, off = make((1, 5, 4), 3)
    dist = SparsePrecisionNormal(loc, log_diag, off, (1, 5, 4))
    assert torch.equal(dist.conditional_mean(torch.zeros(20, dtype=torch.bool), torch.zeros(3, 0, dtype=DT)), loc)
    v = torch.randn(3, 20, dtype=DT)
    assert torch.equal(dist.conditional_mean(torch.ones(20, dtype=torch.bool), v), v)


def test_border_weights_are_ignored():
    # weights that point outside the image change nothing
    shape, k = (1, 6, 5), 5
    loc, log_diag, off = make(shape, k)
    off2 = off.clone()
    for n, (dy, dx) in enumerate(stencil_offsets(k)):
        for h in range(6):
            for w in range(5):
                if not (0 <= h + dy < 6 and 0 <= w + dx < 5):
                    off2[:, :, n, h, w] = 123.0
    a = SparsePrecisionNormal(loc, log_diag, off, shape, stencil=k)
    b = SparsePrecisionNormal(loc, log_diag, off2, shape, stencil=k)
    x = torch.randn(3, 30, dtype=DT)
    eps = torch.randn(3, 30, dtype=DT)
    torch.testing.assert_close(a.log_prob(x), b.log_prob(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(a.rsample(omega_d=eps), b.rsample(omega_d=eps), rtol=0, atol=1e-12)
    torch.testing.assert_close(a.variance, b.variance, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.to_dense_precision(), b.to_dense_precision(), rtol=0, atol=0)


def test_float32_agrees_with_float64():
    loc, log_diag, off = make((1, 8, 8), 5, scale=0.1)
    d64 = SparsePrecisionNormal(loc, log_diag, off, (1, 8, 8), stencil=5)
    d32 = SparsePrecisionNormal(loc.float(), log_diag.float(), off.float(), (1, 8, 8), stencil=5)
    x, eps = torch.randn(2, 3, 64, dtype=DT), torch.randn(3, 64, dtype=DT)
    torch.testing.assert_close(d32.log_prob(x.float()).double(), d64.log_prob(x), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(d32.rsample(omega_d=eps.float()).double(), d64.rsample(omega_d=eps), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(d32.variance.double(), d64.variance, rtol=1e-4, atol=1e-5)


# -- each solver on its own, against the dense reference ----------------------------------------


def geometry(shape, k):
    return solvers.stencil_geometry(shape[1], shape[2], k, DT, torch.device("cpu"))


def test_stencil_geometry_is_cached_and_its_wavefronts_cover_every_pixel_once():
    geo = geometry((1, 5, 4), 3)
    assert geo is geometry((2, 5, 4), 3)  # the channels share it
    assert (geo.r, geo.n_off, geo.offsets) == (1, 4, tuple(stencil_offsets(3)))
    for transpose in (False, True):
        plan = geo.plans[transpose]
        assert sorted(plan["order"].tolist()) == list(range(20))
        assert [s for s, _ in plan["bounds"]] == [0] + [e for _, e in plan["bounds"][:-1]]
        assert plan["bounds"][-1][1] == 20 and len(plan["bounds"]) == 2 * (5 - 1) + 4


def test_row_strip_is_the_slice_of_the_dense_factor(case):
    _, _, L, (_, log_diag, off, (C, H, W), k) = case
    geo, r = geometry((C, H, W), k), k // 2
    for h in range(H):
        strip = solvers.row_strip(h, log_diag, off, geo)
        assert strip.shape == (3, C, W, (r + 1) * W)
        lo = max(h - r, 0)  # columns of rows above the image are left out
        for c in range(C):
            block = L[:, c * H * W:(c + 1) * H * W, c * H * W:(c + 1) * H * W]
            torch.testing.assert_close(strip[:, c, :, (lo - h + r) * W:],
                                       block[:, h * W:(h + 1) * W, lo * W:(h + 1) * W], rtol=0, atol=0)


def test_dense_factor_matches_reference(case):
    _, _, L, (_, log_diag, off, shape, k) = case
    torch.testing.assert_close(solvers.dense_factor(log_diag, off, geometry(shape, k)), L, rtol=0, atol=0)


def test_apply_Lt_and_gather_neighbours(case):
    _, _, L, (_, log_diag, off, (C, H, W), k) = case
    geo = geometry((C, H, W), k)
    v = torch.randn(2, 3, C * H * W, dtype=DT, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(solvers.apply_Lt(v, log_diag, off, geo), (L.mT @ v.unsqueeze(-1)).squeeze(-1),
                               rtol=1e-12, atol=1e-12)
    got = solvers.gather_neighbours(v, C, geo)
    assert got.shape == (2, 3, C, len(stencil_offsets(k)), H, W)
    image = v.reshape(2, 3, C, H, W)
    for n, (dy, dx) in enumerate(stencil_offsets(k)):
        for h in range(H):
            for w in range(W):
                inside = 0 <= h + dy < H and 0 <= w + dx < W
                want = image[..., h + dy, w + dx] if inside else torch.zeros(2, 3, C, dtype=DT)
                assert torch.equal(got[:, :, :, n, h, w], want)


@pytest.mark.parametrize("transpose", [False, True], ids=["L", "Lt"])
def test_wavefront_solve(case, transpose):
    _, _, L, (_, log_diag, off, shape, k) = case
    b = torch.randn(2, 3, L.shape[-1], dtype=DT, generator=torch.Generator().manual_seed(9))
    M = L.mT if transpose else L
    ref = torch.linalg.solve_triangular(M, b.unsqueeze(-1), upper=transpose).squeeze(-1)
    got = solvers.wavefront_solve(b, log_diag, off, geometry(shape, k), transpose)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_wavefront_solve_gradients():
    shape, k = (2, 4, 3), 3
    geo = geometry(shape, k)
    _, log_diag, off = _params(shape, k)
    b = torch.randn(2, 1, 24, dtype=DT, generator=torch.Generator().manual_seed(10)).requires_grad_()
    for transpose in (False, True):
        f = lambda ld, o, b: solvers.wavefront_solve(b, ld, o, geo, transpose)
        assert torch.autograd.gradcheck(f, (log_diag, off, b))
        assert torch.autograd.gradgradcheck(f, (log_diag, off, b))


def test_selected_variance(case):
    _, mvn, _, (_, log_diag, off, shape, k) = case
    torch.testing.assert_close(solvers.selected_variance(log_diag, off, geometry(shape, k)), mvn.variance,
                               rtol=1e-10, atol=1e-12)


def test_factor_csr_and_scipy_solve_Lt(case):
    _, _, L, (_, log_diag, off, shape, k) = case
    geo = geometry(shape, k)
    B, S = log_diag.shape
    dense = solvers.factor_csr(log_diag, off, geo).toarray()
    torch.testing.assert_close(torch.from_numpy(dense), torch.block_diag(*L), rtol=0, atol=0)
    e = torch.randn(2, B, S, dtype=DT, generator=torch.Generator().manual_seed(11))
    ref = torch.linalg.solve_triangular(L.mT, e.unsqueeze(-1), upper=True).squeeze(-1)
    torch.testing.assert_close(solvers.scipy_solve_Lt(e, log_diag, off, geo), ref, rtol=0, atol=1e-10)


def test_schur_band(case):
    _, _, L, (loc, *_rest) = case
    B, S = loc.shape
    lam = L @ L.mT
    g = torch.Generator().manual_seed(12)
    mask = torch.rand(S, generator=g) < 0.3
    mask[1] = True
    values = torch.randn(B, int(mask.sum()), dtype=DT, generator=g)
    band, rhs = banded.schur_band(sp.coo_array(torch.block_diag(*lam).numpy()), loc, mask, values)
    a, b = ~mask, mask
    lam_aa, lam_ab = lam[:, a][:, :, a], lam[:, a][:, :, b]
    m, n_a = band.shape[1] - 1, int(a.sum())
    for i in range(B):  # back from LAPACK's upper band storage: band[m + p − q, q] = Λ_aa[p, q], p ≤ q
        upper = sum(np.diag(band[i, m - d, d:], d) for d in range(m + 1))
        torch.testing.assert_close(torch.from_numpy(np.triu(upper)), torch.triu(lam_aa[i]), rtol=0, atol=1e-12)
        assert np.all(np.triu(lam_aa[i].numpy(), m + 1) == 0)  # nothing outside the band
    assert band.shape == (B, m + 1, n_a)
    want = (lam_ab @ (values - loc[:, b]).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(torch.from_numpy(rhs), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [0, 1, 4])
def test_banded_variance(m):
    g = np.random.default_rng(13)
    n, B = 12, 2
    dense = []
    for _ in range(B):
        A = np.triu(np.tril(g.standard_normal((n, n)), m), -m)
        dense.append(A @ A.T + n * np.eye(n))  # symmetric positive definite, bandwidth ≤ 2m
    band_m = min(2 * m, n - 1)
    band = np.stack([np.stack([np.concatenate([np.zeros(d), np.diag(M, d)]) for d in range(band_m, -1, -1)])
                     for M in dense])
    chol = np.stack([sla.cholesky_banded(b, lower=False) for b in band])
    want = np.stack([np.diag(np.linalg.inv(M)) for M in dense])
    np.testing.assert_allclose(banded.banded_variance(chol), want, rtol=1e-12, atol=1e-14)


# -- gradients -------------------------------------------------------------------------------


def _params(shape, k, B=1):
    return tuple(t.requires_grad_() for t in make(shape, k, B=B))


def test_gradcheck_log_prob():
    shape, k = (2, 4, 5), 3
    x = torch.randn(2, 1, 40, dtype=DT, generator=torch.Generator().manual_seed(5))
    f = lambda m, ld, off: SparsePrecisionNormal(m, ld, off, shape, stencil=k).log_prob(x)
    assert torch.autograd.gradcheck(f, _params(shape, k))


def test_gradcheck_rsample_and_variance():
    shape, k = (1, 5, 4), 3
    eps = torch.randn(2, 1, 20, dtype=DT, generator=torch.Generator().manual_seed(6)).requires_grad_()
    f = lambda m, ld, off, e: SparsePrecisionNormal(m, ld, off, shape, stencil=k).rsample(omega_d=e)
    assert torch.autograd.gradcheck(f, _params(shape, k) + (eps,))
    assert torch.autograd.gradgradcheck(f, _params(shape, k) + (eps,))
    h = lambda m, ld, off: SparsePrecisionNormal(m, ld, off, shape, stencil=k).covariance_row(7)
    assert torch.autograd.gradcheck(h, _params(shape, k))
    g = lambda m, ld, off: SparsePrecisionNormal(m, ld, off, shape, stencil=k).variance
    assert torch.autograd.gradcheck(g, _params(shape, k))


def test_gradgradcheck_log_prob_and_entropy():
    # second derivatives (Laplace approximations, gradient penalties) are exact too
    shape, k = (1, 4, 3), 3
    x = torch.randn(2, 12, dtype=DT, generator=torch.Generator().manual_seed(7)).requires_grad_()
    f = lambda m, ld, off, x: (lambda d: d.log_prob(x) + d.entropy())(SparsePrecisionNormal(m, ld, off, shape, k))
    assert torch.autograd.gradgradcheck(f, _params(shape, k, B=2) + (x,))


def test_expand_and_value_validation_as_torch():
    loc, log_diag, off = make((1, 5, 4), 3, B=1)
    d = SparsePrecisionNormal(loc, log_diag, off, (1, 5, 4), validate_args=True)
    e = d.expand((3,))
    assert e.batch_shape == (3,) and e.sample().shape == (3, 20) and e._validate_args
    x = torch.randn(3, 20, dtype=DT)
    torch.testing.assert_close(e.log_prob(x), d.log_prob(x))
    torch.testing.assert_close(e.entropy(), d.entropy().expand(3))
    with pytest.raises(ValueError, match=r"expands to \(B'\,\) from B = 1 only, not to \(2, 3\)"):
        d.expand((2, 3))
    x[0, 4] = float("nan")
    with pytest.raises(ValueError, match="value contains NaN"):
        e.log_prob(x)
    with pytest.raises(ValueError, match=r"value of shape \(2, 20\) does not broadcast with the batch \(3,\)"):
        e.log_prob(torch.zeros(2, 20, dtype=DT))
    assert torch.isnan(SparsePrecisionNormal(loc, log_diag, off, (1, 5, 4), validate_args=False).log_prob(x[:1])).all()


def test_gradients_reach_every_parameter():
    loc, log_diag, off = _params((1, 5, 4), 3, B=2)
    dist = SparsePrecisionNormal(loc, log_diag, off, (1, 5, 4))
    (dist.log_prob(torch.zeros(2, 20, dtype=DT)).sum() + dist.rsample().sum()).backward()
    for t in (loc, log_diag, off):
        assert t.grad is not None and t.grad.abs().sum() > 0


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [4, 2, 1, 0, -3, 3.0, True])
def test_bad_stencil_sizes(k):
    loc, log_diag, off = make((1, 5, 4), 3)
    with pytest.raises(ValueError, match="stencil must be an odd int >= 3"):
        SparsePrecisionNormal(loc, log_diag, off, (1, 5, 4), stencil=k)
    with pytest.raises(ValueError, match="stencil must be an odd int"):
        stencil_offsets(k)


def test_stencil_larger_than_image():
    loc, log_diag, off = torch.zeros(2, 9), torch.zeros(2, 9), torch.zeros(2, 1, 24, 3, 3)
    with pytest.raises(ValueError, match=r"stencil=7 is larger than the 1x3x3 image.*<= 5"):
        SparsePrecisionNormal(loc, log_diag, off, (1, 3, 3), stencil=7)
    # a 5×5 stencil on a 4-pixel-wide image is fine: every weight can land inside
    SparsePrecisionNormal(torch.zeros(1, 20), torch.zeros(1, 20), torch.zeros(1, 1, 12, 5, 4),
                          (1, 5, 4), stencil=5)


def test_shape_errors_name_the_problem():
    loc, log_diag, off = make((2, 4, 5), 5)
    with pytest.raises(ValueError, match=r"loc must have shape \(B, S\) = \(B, 40\)"):
        SparsePrecisionNormal(loc[:, :39], log_diag, off, (2, 4, 5), stencil=5)
    with pytest.raises(ValueError, match=r"log_diag has shape \(2, 40\) but loc has \(3, 40\)"):
        SparsePrecisionNormal(loc, log_diag[:2], off, (2, 4, 5), stencil=5)
    with pytest.raises(ValueError, match=r"off_diag must have shape .*n_off = \(k²−1\)/2 = 12"):
        SparsePrecisionNormal(loc, log_diag, off[:, :, :4], (2, 4, 5), stencil=5)
    with pytest.raises(ValueError, match=r"image_shape must be \(C, H, W\)"):
        SparsePrecisionNormal(loc, log_diag, off, (4, 10), stencil=5)
    with pytest.raises(ValueError, match="share one floating dtype"):
        SparsePrecisionNormal(loc.float(), log_diag, off, (2, 4, 5), stencil=5)
    dist = SparsePrecisionNormal(loc, log_diag, off, (2, 4, 5), stencil=5)
    with pytest.raises(ValueError, match="expected S = 40"):
        dist.log_prob(torch.zeros(3, 41, dtype=DT))
    with pytest.raises(ValueError, match=r"omega_d must have shape \(\*sample_shape, B, S\)"):
        dist.rsample(omega_d=torch.zeros(3, 39, dtype=DT))
    with pytest.raises(ValueError, match="omega_p has last dimension 2, expected 0"):
        dist.rsample(omega_p=torch.zeros(3, 2, dtype=DT))
    with pytest.raises(ValueError, match="method must be one of"):
        dist.rsample(method="dense")
    with pytest.raises(ValueError, match="outside 0..39"):
        dist.covariance_row(40)
    with pytest.raises(ValueError, match="mask has 39 entries"):
        dist.conditional_mean(torch.zeros(39, dtype=torch.bool), torch.zeros(3, 0, dtype=DT))
    with pytest.raises(ValueError, match=r"values must have shape \(B, k\) = \(3, 1\)"):
        dist.conditional_mean(torch.arange(40) == 0, torch.zeros(3, 2, dtype=DT))


def test_non_finite_parameters():
    loc, log_diag, off = make((1, 5, 4), 3)
    for name, i in (("loc", 0), ("log_diag", 1), ("off_diag", 2)):
        args = [loc.clone(), log_diag.clone(), off.clone()]
        args[i].view(-1)[3] = math.nan if i != 1 else math.inf
        with pytest.raises(ValueError, match=f"^{name} contains NaN or Inf values"):
            SparsePrecisionNormal(*args, (1, 5, 4))
        SparsePrecisionNormal(*args, (1, 5, 4), validate_args=False)  # opt-out skips the scan


def test_dense_helpers_refuse_big_images():
    H = MAX_DENSE_PIXELS // 64 + 1
    loc, log_diag, off = (torch.zeros(1, H * 64), torch.zeros(1, H * 64), torch.zeros(1, 1, 4, H, 64))
    dist = SparsePrecisionNormal(loc, log_diag, off, (1, H, 64))
    with pytest.raises(ValueError, match="tiny images only"):
        dist.to_dense_precision()
