"""Closed-form kl_divergence between the Gaussian observation models and torch's Gaussians,
against torch's dense MultivariateNormal formula in float64 (LowRankNormal's own pairs are in
test_lowrank_torch_semantics.py)."""
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from sosvae_core.observations import DiagonalNormal, LowRankNormal

F64 = torch.float64
S = 6


def diagonal(seed, batch=(2,)):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(*batch, S, generator=g, dtype=F64)
    var = torch.rand(*batch, S, generator=g, dtype=F64) + 0.2
    return DiagonalNormal(loc, var), MultivariateNormal(loc, torch.diag_embed(var))


def test_diagonal_normal_pairs_match_the_dense_formula():
    (p, p_mvn), (q, q_mvn) = diagonal(0), diagonal(1, batch=(3, 1))
    want = kl_divergence(p_mvn, q_mvn)
    assert want.shape == (3, 2)
    torch.testing.assert_close(kl_divergence(p, q), want)
    torch.testing.assert_close(kl_divergence(p, q_mvn), want)
    torch.testing.assert_close(kl_divergence(p_mvn, q), want)
    independent = Independent(Normal(q.loc, q.variance.sqrt()), 1)
    torch.testing.assert_close(kl_divergence(p, independent), want)
    torch.testing.assert_close(kl_divergence(independent, p), kl_divergence(q_mvn, p_mvn))


def test_gradients_flow_through_the_kl():
    g = torch.Generator().manual_seed(2)
    loc = torch.randn(S, generator=g, dtype=F64, requires_grad=True)
    P = torch.randn(S, 2, generator=g, dtype=F64, requires_grad=True)
    _, q = diagonal(3, batch=())
    assert torch.autograd.gradcheck(lambda m, P: kl_divergence(LowRankNormal(m, P, 0.1), q), (loc, P))
