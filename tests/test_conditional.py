"""The whole conditional distribution p(y₁ | y₂ = b) of every observation model (and `marginal`),
checked against the dense float64 Schur complement: mean, covariance, log_prob, entropy, variance."""
import pytest
import torch
from torch.distributions import MultivariateNormal

from sosvae_core.observations import BandedPrecisionNormal, DiagonalNormal, LowRankNormal, SparsePrecisionNormal
from sosvae_core.observations.laplace import DiagonalLaplace

DT = torch.float64
IMAGE = (1, 6, 5)
S = 30
R = 4


def low_rank(learned: bool, batch: int = 2, seed: int = 0, rank: int = R, eps: float = 1e-2):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, S, generator=g, dtype=DT)
    P = 0.5 * torch.randn(batch, S, rank, generator=g, dtype=DT)
    diag = torch.rand(batch, S, generator=g, dtype=DT) + 0.05 if learned else eps
    return LowRankNormal(loc, P, diag)


def edit(k: int, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(S, dtype=torch.bool)
    mask[torch.randperm(S, generator=g)[:k]] = True
    return mask, torch.randn(batch, k, generator=g, dtype=DT)


def dense_conditional(loc: torch.Tensor, cov: torch.Tensor, mask: torch.Tensor, values: torch.Tensor):
    """The textbook formulas (eq. 7) on dense float64 matrices: (mean, covariance) of y₁ | y₂ = b."""
    a, b = ~mask, mask
    s11, s12, s22 = cov[:, a][:, :, a], cov[:, a][:, :, b], cov[:, b][:, :, b]
    if not b.any():
        return loc, cov
    mean = loc[:, a] + (s12 @ torch.linalg.solve(s22, (values - loc[:, b]).unsqueeze(-1))).squeeze(-1)
    return mean, s11 - s12 @ torch.linalg.solve(s22, s12.mT)


def assert_matches_dense(cond, mean, cov, rtol=1e-9, atol=1e-10):
    ref = MultivariateNormal(mean, covariance_matrix=cov)
    x = ref.sample((4,)) + 0.1
    torch.testing.assert_close(cond.mean, mean, rtol=rtol, atol=atol)
    torch.testing.assert_close(cond.covariance_matrix, cov, rtol=rtol, atol=atol)
    torch.testing.assert_close(cond.variance, cov.diagonal(dim1=-2, dim2=-1), rtol=rtol, atol=atol)
    torch.testing.assert_close(cond.log_prob(x), ref.log_prob(x), rtol=rtol, atol=atol)
    torch.testing.assert_close(cond.entropy(), ref.entropy(), rtol=rtol, atol=atol)


# k edited values: none, fewer than R, R, more than R, all but one
@pytest.mark.parametrize("k", [0, 2, R, 11, S - 1])
@pytest.mark.parametrize("learned", [False, True], ids=["eps", "learned_diag"])
def test_low_rank_conditional_matches_the_dense_schur_complement(k, learned):
    d = low_rank(learned)
    mask, values = edit(k)
    cond = d.conditional(mask.reshape(IMAGE), values)
    assert isinstance(cond, LowRankNormal) and cond.event_shape == (S - k,)
    mean, cov = dense_conditional(d.loc, d.covariance_matrix, mask, values)
    assert_matches_dense(cond, mean, cov)
    # conditional_mean stays the fast path for the same mean
    torch.testing.assert_close(d.conditional_mean(mask, values)[:, ~mask], mean, rtol=1e-9, atol=1e-10)


def test_low_rank_conditional_shares_values_across_the_batch_and_keeps_its_rank():
    d = low_rank(False)
    mask, values = edit(6)
    cond = d.conditional(mask, values[0])
    mean, cov = dense_conditional(d.loc, d.covariance_matrix, mask, values[0].expand(2, -1))
    assert_matches_dense(cond, mean, cov)
    assert cond.rank == R and cond.fixed_diag  # εI stays εI: the fast path of every method
    # fewer unedited pixels than R: the square factor of the same covariance
    mask, values = edit(S - 2)
    assert d.conditional(mask, values).rank == 2


def test_low_rank_conditional_samples_have_its_moments():
    torch.manual_seed(0)
    d = low_rank(False, batch=1)
    mask, values = edit(3, batch=1)
    cond = d.conditional(mask, values)
    y = cond.rsample((40_000,))[:, 0]
    mean, cov = dense_conditional(d.loc, d.covariance_matrix, mask, values)
    scale = cov[0].diagonal().sqrt()
    assert ((y.mean(0) - mean[0]).abs() / scale).max() < 0.03  # 40,000 draws: SE 0.005 σ
    corr = torch.cov(y.T) / (scale[:, None] * scale[None])
    torch.testing.assert_close(corr, cov[0] / (scale[:, None] * scale[None]), rtol=0, atol=0.03)


def test_low_rank_conditional_at_paper_epsilon_in_float32():
    """An inpainting-sized edit at ε = 1e-5: float32 agrees with float64 (conditioning on
    thousands of pixels makes C₂ ≈ PᵀP/ε large, and its inverse must stay accurate)."""
    g = torch.Generator().manual_seed(3)
    n, rank = 3 * 40 * 32, 25
    loc = torch.rand(2, n, generator=g, dtype=DT)
    P = 0.03 * torch.randn(2, n, rank, generator=g, dtype=DT)
    mask = torch.ones(n, dtype=torch.bool)
    mask[n // 3: n // 3 + n // 4] = False  # a quarter of the image hidden
    x = loc + (P @ torch.randn(2, rank, 1, generator=g, dtype=DT)).squeeze(-1) + 0.01 * torch.randn(2, n, generator=g, dtype=DT)
    exact = LowRankNormal(loc, P, 1e-5).conditional(mask, x[:, mask])
    single = LowRankNormal(loc.float(), P.float(), 1e-5).conditional(mask, x[:, mask].float())
    target = x[:, ~mask]
    torch.testing.assert_close(single.mean.double(), exact.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(single.variance.double(), exact.variance, rtol=1e-4, atol=1e-9)
    lp64, lp32 = exact.log_prob(target), single.log_prob(target.float()).double()
    assert ((lp32 - lp64).abs() / target.shape[-1]).max() < 1e-5, (lp32, lp64)  # nats per hidden value


def test_low_rank_conditional_passes_gradients():
    d0 = low_rank(True)
    loc, P, diag = (t.clone().requires_grad_() for t in (d0.loc, d0.cov_factor, d0.cov_diag))
    mask, values = edit(5)
    values.requires_grad_()
    cond = LowRankNormal(loc, P, diag).conditional(mask, values)
    (cond.log_prob(torch.zeros(S - 5, dtype=DT)).sum() + cond.rsample().sum()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (loc, P, diag, values))


def test_low_rank_marginal_is_the_sub_block():
    for learned in (False, True):
        d = low_rank(learned)
        for kept in (7, 2):  # more and fewer pixels than R
            keep, _ = edit(kept)
            m = d.marginal(keep)
            cov = d.covariance_matrix[:, keep][:, :, keep]
            assert_matches_dense(m, d.loc[:, keep], cov)


@pytest.mark.parametrize("cls", [DiagonalNormal, DiagonalLaplace])
def test_pixel_independent_conditional_is_the_marginal_of_the_unedited_pixels(cls):
    g = torch.Generator().manual_seed(0)
    loc, var = torch.randn(2, S, generator=g, dtype=DT), torch.rand(2, S, generator=g, dtype=DT) + 0.1
    d = cls(loc, var)
    mask, values = edit(9)
    cond = d.conditional(mask.reshape(IMAGE), values)
    assert type(cond) is cls and cond.event_shape == (S - 9,)
    torch.testing.assert_close(cond.mean, loc[:, ~mask])
    torch.testing.assert_close(cond.variance, var[:, ~mask])
    x = torch.randn(2, S, generator=g, dtype=DT)
    per_pixel = cls(loc[..., None], var[..., None]).log_prob(x[..., None])  # (2, S): one pixel each
    torch.testing.assert_close(cond.log_prob(x[:, ~mask]), per_pixel[:, ~mask].sum(-1))


@pytest.mark.parametrize("make", [lambda: low_rank(False), lambda: DiagonalNormal(torch.zeros(2, S), torch.ones(2, S))],
                         ids=["low_rank", "diagonal"])
def test_a_conditional_of_everything_or_the_wrong_values_is_one_line(make):
    d = make()
    with pytest.raises(ValueError, match="no pixel is left"):
        d.conditional(torch.ones(S, dtype=torch.bool), torch.zeros(2, S, dtype=d.loc.dtype))
    with pytest.raises(ValueError, match="values has 3 entries but the mask selects k = 2"):
        d.conditional(edit(2)[0], torch.zeros(2, 3, dtype=d.loc.dtype))
    with pytest.raises(ValueError, match="keep selects no pixel"):
        d.marginal(torch.zeros(S, dtype=torch.bool))


# -- Dorta et al.: the precision's sub-block ------------------------------------------------------

def sparse_precision(shape=IMAGE, stencil=3, batch=2, seed=0):
    C, H, W = shape
    n_off = (stencil ** 2 - 1) // 2
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, C * H * W, generator=g, dtype=DT)
    log_diag = 0.3 * torch.randn(batch, C * H * W, generator=g, dtype=DT)
    off = 0.4 * torch.randn(batch, C, n_off, H, W, generator=g, dtype=DT)
    return SparsePrecisionNormal(loc, log_diag, off, shape, stencil=stencil)


@pytest.mark.parametrize("k", [0, 1, 7, S - 1])
@pytest.mark.parametrize("stencil", [3, 5])
def test_sparse_precision_conditional_matches_the_dense_schur_complement(k, stencil):
    d = sparse_precision(stencil=stencil)
    mask, values = edit(k)
    cond = d.conditional(mask.reshape(IMAGE), values)
    assert isinstance(cond, BandedPrecisionNormal) and cond.event_shape == (S - k,)
    mean, cov = dense_conditional(d.loc, d.covariance_matrix, mask, values)
    assert_matches_dense(cond, mean, cov, rtol=1e-8, atol=1e-9)
    precision = d.to_dense_precision()
    torch.testing.assert_close(cond.precision_matrix, precision[:, ~mask][:, :, ~mask])  # the sub-block
    torch.testing.assert_close(cond.covariance_row(-1), cov[:, -1], rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(d.conditional_mean(mask, values)[:, ~mask], mean, rtol=1e-8, atol=1e-9)


def test_sparse_precision_conditional_conditions_again_and_samples_its_moments():
    d = sparse_precision(batch=1)
    mask, values = edit(5, batch=1)
    cond = d.conditional(mask, values)
    # conditioning the conditional on one more pixel = conditioning on both at once
    more = torch.zeros(S - 5, dtype=torch.bool)
    more[3] = True
    both = mask.clone()
    both[(~mask).nonzero()[3]] = True
    full = torch.zeros(1, S, dtype=DT)
    full[:, mask] = values
    full[:, (~mask).nonzero()[3]] = 0.7
    twice, once = cond.conditional(more, torch.full((1, 1), 0.7, dtype=DT)), d.conditional(both, full[:, both])
    torch.testing.assert_close(twice.mean, once.mean)
    torch.testing.assert_close(twice.precision_matrix, once.precision_matrix)
    torch.testing.assert_close(cond.conditional_mean(more, torch.full((1, 1), 0.7, dtype=DT))[:, ~more], once.mean)
    torch.manual_seed(0)
    y = cond.rsample((40_000,))[:, 0]
    cov = cond.covariance_matrix[0]
    scale = cov.diagonal().sqrt()
    assert ((y.mean(0) - cond.mean[0]).abs() / scale).max() < 0.03
    torch.testing.assert_close(torch.cov(y.T) / (scale[:, None] * scale[None]),
                               cov / (scale[:, None] * scale[None]), rtol=0, atol=0.03)
