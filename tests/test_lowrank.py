"""The low-rank observation model N(μ, PPᵀ + D) checked against dense float64 references."""
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from sosvae_core.observations import CapacitanceError, LowRankNormal

IMAGE = (3, 6, 5)
S = 3 * 6 * 5


def make(rank, batch=2, learned_diag=False, seed=0, eps=1e-2):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, S, generator=g, dtype=torch.float64)
    P = torch.randn(batch, S, rank, generator=g, dtype=torch.float64) * 0.5
    diag = torch.rand(batch, S, generator=g, dtype=torch.float64) + 0.05 if learned_diag else eps
    return LowRankNormal(loc, P, diag), loc, P, diag


def dense(loc, P, diag):
    D = diag if isinstance(diag, torch.Tensor) else torch.full_like(loc, diag)
    return MultivariateNormal(loc, covariance_matrix=P @ P.mT + torch.diag_embed(D))


CASES = [(r, ld) for r in (1, 2, 3, 4) for ld in (False, True)]


@pytest.mark.parametrize("rank,learned", CASES)
def test_log_prob_entropy_variance_match_dense(rank, learned):
    d, loc, P, diag = make(rank, learned_diag=learned)
    ref = dense(loc, P, diag)
    x = ref.sample((5,)) + 0.1
    torch.testing.assert_close(d.log_prob(x), ref.log_prob(x), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(d.entropy(), ref.entropy(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(d.variance, ref.covariance_matrix.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(d.covariance_matrix, ref.covariance_matrix)


def test_log_prob_at_paper_epsilon():
    # ε = 1e-5 makes the capacitance ill-conditioned: the stable form must still agree
    d, loc, P, diag = make(4, eps=1e-5)
    ref = dense(loc, P, diag)
    x = ref.sample((3,))
    torch.testing.assert_close(d.log_prob(x), ref.log_prob(x), rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(d.entropy(), ref.entropy(), rtol=1e-12, atol=1e-8)


def test_float32_log_prob_is_stable_at_paper_epsilon():
    # a float32 network with ε = 1e-5 on an image that lies mostly in span(P):
    # naive Woodbury subtracts two sums of size ~S/ε; ours stays close to float64
    d64, loc, P, _ = make(4, eps=1e-5, seed=3)
    x = loc + (P @ torch.randn(2, 4, 1, dtype=torch.float64)).squeeze(-1) + 1e-3 * torch.randn(2, S, dtype=torch.float64)
    d32 = LowRankNormal(loc.float(), P.float(), 1e-5)
    err = (d32.log_prob(x.float()).double() - d64.log_prob(x)).abs()
    assert (err / d64.log_prob(x).abs()).max() < 1e-4


@pytest.mark.parametrize("rank,learned", CASES)
def test_covariance_row_matches_dense(rank, learned):
    d, loc, P, diag = make(rank, learned_diag=learned)
    cov = dense(loc, P, diag).covariance_matrix
    centre = (IMAGE[1] // 2) * IMAGE[2] + IMAGE[2] // 2
    for i in (0, centre, S - 1, -1):
        torch.testing.assert_close(d.covariance_row(i), cov[..., i % S, :])


@pytest.mark.parametrize("rank,learned", CASES)
def test_conditional_mean_matches_dense_schur_formula(rank, learned):
    d, loc, P, diag = make(rank, learned_diag=learned)
    cov = dense(loc, P, diag).covariance_matrix
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(S, generator=g) < 0.3
    b = torch.randn(2, int(mask.sum()), generator=g, dtype=torch.float64)
    got = d.conditional_mean(mask.reshape(IMAGE), b)
    # dense reference: μ₁ + Σ₁₂ Σ₂₂⁻¹ (b − μ₂) with an explicit inverse
    o, e = (~mask).nonzero().squeeze(-1), mask.nonzero().squeeze(-1)
    s12 = cov[:, o][:, :, e]
    s22_inv = torch.linalg.inv(cov[:, e][:, :, e])
    want_o = loc[:, o] + (s12 @ s22_inv @ (b - loc[:, e]).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got[:, o], want_o, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(got[:, e], b)


@pytest.mark.parametrize("learned", [False, True])
def test_conditional_mean_with_fewer_edited_pixels_than_components(learned):
    d, loc, P, diag = make(4, learned_diag=learned)
    cov = dense(loc, P, diag).covariance_matrix
    mask = torch.zeros(S, dtype=torch.bool)
    mask[[3, 40]] = True  # k = 2 < R = 4
    b = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    e, o = mask.nonzero().squeeze(-1), (~mask).nonzero().squeeze(-1)
    want = loc[:, o] + (cov[:, o][:, :, e] @ torch.linalg.solve(cov[:, e][:, :, e], (b - loc[:, e]).unsqueeze(-1))).squeeze(-1)
    torch.testing.assert_close(d.conditional_mean(mask, b)[:, o], want, rtol=1e-8, atol=1e-8)


def test_conditional_mean_of_nothing_is_the_mean():
    d, loc, _, _ = make(3)
    mask = torch.zeros(S, dtype=torch.bool)
    torch.testing.assert_close(d.conditional_mean(mask, torch.zeros(2, 0, dtype=torch.float64)), loc)


@pytest.mark.parametrize("rank,learned", CASES)
def test_principal_components_reconstruct_PPt(rank, learned):
    d, loc, P, diag = make(rank, learned_diag=learned)
    U, s, V = d.principal_components()
    assert (s[..., :-1] >= s[..., 1:]).all(), "sorted by decreasing singular value"
    torch.testing.assert_close(U @ torch.diag_embed(s) @ V.mT, P)
    torch.testing.assert_close((U * s.unsqueeze(-2)) @ (U * s.unsqueeze(-2)).mT, P @ P.mT)
    torch.testing.assert_close(U.mT @ U, torch.eye(rank, dtype=torch.float64).expand(2, rank, rank))
    torch.testing.assert_close(s, torch.linalg.svdvals(P))


def test_principal_components_of_rank_deficient_factor():
    d, loc, P, _ = make(3)
    P = P.clone()
    P[..., 2] = P[..., 0]  # two equal columns: one singular value is zero
    U, s, V = LowRankNormal(loc, P, 1e-2).principal_components()
    assert s[..., -1].abs().max() < 1e-6
    torch.testing.assert_close(U @ torch.diag_embed(s) @ V.mT, P)


def test_scale_by_ones_changes_nothing_and_scaling_works():
    d, loc, P, _ = make(4)
    same = d.scale_components(torch.ones(4))
    torch.testing.assert_close(same.covariance_matrix, d.covariance_matrix)
    U, s, V = d.principal_components()
    scales = torch.tensor([2.0, 1.0, 0.0, -1.0], dtype=torch.float64)
    scaled = d.scale_components(scales)
    # eq. 5 by hand: P' = U (S·A) Vᵀ
    want = U @ torch.diag_embed(s * scales) @ V.mT
    torch.testing.assert_close(scaled.cov_factor, want)
    # the first component doubles its singular value, the third disappears
    torch.testing.assert_close(scaled.principal_components()[1][..., 0], 2 * s[..., 0])


@pytest.mark.parametrize("learned", [False, True])
def test_rsample_with_given_omega_matches_eq4(learned):
    d, loc, P, diag = make(3, learned_diag=learned)
    g = torch.Generator().manual_seed(2)
    wp = torch.randn(7, 2, 3, generator=g, dtype=torch.float64)
    wd = torch.randn(7, 2, S, generator=g, dtype=torch.float64)
    D = diag if isinstance(diag, torch.Tensor) else torch.full_like(loc, diag)
    want = loc + torch.einsum("bsr,nbr->nbs", P, wp) + D.sqrt() * wd
    torch.testing.assert_close(d.rsample((7,), omega_p=wp, omega_d=wd), want)


def test_empirical_covariance_of_samples_matches_sigma():
    torch.manual_seed(0)
    d, loc, P, diag = make(2, batch=1, learned_diag=True)
    n = 200_000
    x = d.rsample((n,))[:, 0]
    emp = torch.cov(x.T)
    sigma = d.covariance_matrix[0]
    # Monte-Carlo error of a covariance entry is ~ sqrt((Σii Σjj + Σij²)/n)
    tol = 5 * torch.sqrt((sigma.diagonal()[:, None] * sigma.diagonal()[None] + sigma ** 2) / n)
    assert ((emp - sigma).abs() <= tol).all()
    assert (x.mean(0) - loc[0]).abs().max() < 5 * math.sqrt(sigma.diagonal().max() / n)


def test_gradcheck_log_prob_and_entropy():
    g = torch.Generator().manual_seed(5)
    s, r = 6, 2
    loc = torch.randn(1, s, generator=g, dtype=torch.float64, requires_grad=True)
    P = torch.randn(1, s, r, generator=g, dtype=torch.float64, requires_grad=True)
    D = (torch.rand(1, s, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    x = torch.randn(1, s, generator=g, dtype=torch.float64)

    def f(loc, P, D):
        d = LowRankNormal(loc, P, D)
        return d.log_prob(x) + d.entropy()

    assert torch.autograd.gradcheck(f, (loc, P, D))


def test_fused_fixed_diagonal_gradients_match_autograd_path():
    # one value per distribution takes the fused path; a leading sample dimension
    # of one takes the plain autograd path: same numbers, same gradients
    g = torch.Generator().manual_seed(7)
    loc = torch.randn(3, S, generator=g, dtype=torch.float64, requires_grad=True)
    P = torch.randn(3, S, 4, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, S, generator=g, dtype=torch.float64)
    grads = []
    for value in (x, x.unsqueeze(0)):
        d = LowRankNormal(loc, P, 1e-3)
        (d.log_prob(value).sum() * 0.7 + d.entropy().sum() * 1.3).backward()
        grads.append((loc.grad.clone(), P.grad.clone()))
        loc.grad = P.grad = None
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-9)
    fixed = lambda loc, P: (lambda d: d.log_prob(x[:1]) * 0.3 + d.entropy())(LowRankNormal(loc, P, 1e-2))
    assert torch.autograd.gradcheck(fixed, (loc[:1].detach().requires_grad_(), P[:1].detach().requires_grad_()))


@pytest.mark.parametrize("batch,pixels", [((), S), ((3,), S), ((2, 3), S), ((4,), 100_000)])
@pytest.mark.parametrize("column_major", [False, True])
def test_gradient_of_P_is_torchs_in_Ps_own_layout(batch, pixels, column_major):
    # the fused backward writes P's gradient row- or column-major as P is (the heads make it
    # column-major), without a batch, with two, and at 19 MB (a buffer advised onto huge pages)
    from torch.distributions import LowRankMultivariateNormal
    g = torch.Generator().manual_seed(5)
    P = torch.randn(*batch, pixels, 6, generator=g, dtype=torch.float64) * 0.3
    P = (P.mT.contiguous().mT if column_major else P).requires_grad_()
    loc = torch.randn(*batch, pixels, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(*batch, pixels, generator=g, dtype=torch.float64)
    grads = []
    for d in (LowRankNormal(loc, P, 1e-2), LowRankMultivariateNormal(loc, P, torch.full_like(loc, 1e-2))):
        grads.append(torch.autograd.grad((d.log_prob(x) * 0.7 + d.entropy()).sum(), (loc, P)))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-10)
    assert grads[0][1].stride() == P.stride()


@pytest.mark.parametrize("shared", [False, True])
def test_fused_learned_diagonal_matches_dense_gradients(shared):
    # a learned D takes the fused path whitened (P / √D, r / √D): values and gradients
    # of loc, P and D equal the dense float64 reference, for a per-image or a shared D
    g = torch.Generator().manual_seed(11)
    loc = torch.randn(3, S, generator=g, dtype=torch.float64, requires_grad=True)
    P = torch.randn(3, S, 4, generator=g, dtype=torch.float64, requires_grad=True)
    D = (torch.rand(*(() if shared else (3,)), S, generator=g, dtype=torch.float64) * 1e-2 + 1e-4).requires_grad_()
    x = loc.detach() + torch.randn(3, S, generator=g, dtype=torch.float64) * 0.1
    results = []
    for dist in (lambda: LowRankNormal(loc, P, D), lambda: dense(loc, P, D.expand(3, S))):
        d = dist()
        value = d.log_prob(x).sum() * 0.7 + d.entropy().sum() * 1.3
        results.append((value.detach(), *torch.autograd.grad(value, (loc, P, D))))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-8)


def test_gradients_reach_parameters_through_rsample_and_edits():
    d, loc, P, diag = make(2, learned_diag=True)
    loc.requires_grad_(); P.requires_grad_(); diag.requires_grad_()
    d = LowRankNormal(loc, P, diag)
    mask = torch.zeros(S, dtype=torch.bool)
    mask[::7] = True
    (d.rsample().sum() + d.conditional_mean(mask, torch.zeros(2, int(mask.sum()), dtype=torch.float64)).sum()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (loc, P, diag))


# -- bad input ------------------------------------------------------------------------

def test_bad_epsilon():
    for eps in (0.0, -1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ε must be a positive finite number"):
            LowRankNormal(torch.zeros(1, 4), torch.zeros(1, 4, 2), eps)


def test_rank_above_pixels():
    with pytest.raises(ValueError, match=r"rank R = 5 exceeds the number of pixels S = 4"):
        LowRankNormal(torch.zeros(1, 4), torch.zeros(1, 4, 5))


@pytest.mark.parametrize("bad", ["loc", "cov_factor", "cov_diag"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_parameters(bad, value):
    args = dict(loc=torch.zeros(1, 4), cov_factor=torch.ones(1, 4, 2), cov_diag=torch.ones(1, 4))
    args[bad] = args[bad].clone()
    args[bad].view(-1)[0] = value
    with pytest.raises(ValueError, match=f"{bad} contains NaN or Inf"):
        LowRankNormal(**args, validate_args=True)


def test_non_positive_learned_diagonal():
    with pytest.raises(ValueError, match="cov_diag must be strictly positive"):
        LowRankNormal(torch.zeros(1, 4), torch.ones(1, 4, 2), torch.zeros(1, 4), validate_args=True)


def test_shape_mismatches():
    with pytest.raises(ValueError, match="loc has S = 5 pixels but cov_factor has 4 rows"):
        LowRankNormal(torch.zeros(1, 5), torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="cov_diag of shape .* does not broadcast"):
        LowRankNormal(torch.zeros(1, 4), torch.zeros(1, 4, 2), torch.ones(3))
    with pytest.raises(ValueError, match="cov_factor must have shape"):
        LowRankNormal(torch.zeros(1, 4), torch.zeros(4))
    d = LowRankNormal(torch.zeros(1, 4), torch.ones(1, 4, 2))
    with pytest.raises(ValueError, match="value has 3 pixels, expected S = 4"):
        d.log_prob(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="mask has 3 entries but the image has S = 4"):
        d.conditional_mean(torch.zeros(3, dtype=torch.bool), torch.zeros(1, 0))
    with pytest.raises(ValueError, match="values has 2 entries but the mask selects k = 1"):
        d.conditional_mean(torch.tensor([True, False, False, False]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        d.conditional_mean(torch.zeros(4), torch.zeros(1, 0))
    with pytest.raises(ValueError, match="scales has 3 entries"):
        d.scale_components(torch.ones(3))
    with pytest.raises(ValueError, match="omega_p has last dimension 3"):
        d.rsample(omega_p=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="pixel_index 4 is outside"):
        d.covariance_row(4)


def test_failed_cholesky_says_what_happened():
    # a huge factor overflows the float64 capacitance to inf: Cholesky fails
    P = torch.full((1, 4, 2), 1e200, dtype=torch.float64)
    d = LowRankNormal(torch.zeros(1, 4, dtype=torch.float64), P, 1e-5, validate_args=False)
    with pytest.raises(CapacitanceError, match="capacitance I \\+ Pᵀ D⁻¹ P failed .*not positive definite"):
        d.log_prob(torch.zeros(1, 4, dtype=torch.float64))


def test_a_learned_scalar_eps_gets_the_dense_gradient():
    """The `sos_learned_eps` head: one learned ε·I for all pixels, its log-likelihood and its gradient
    equal to the dense float64 N(μ, PPᵀ + εI)'s; frozen with the variance heads during pre-training."""
    from sosvae_core.observations.sos import LowRankHead
    torch.manual_seed(0)
    head = LowRankHead(4, 1, rank=3, eps=1e-2, learn_eps=True).double()
    torch.nn.init.normal_(head.factor.weight, std=0.3)
    h, x = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.rand(2, 9, dtype=torch.float64)
    obs = head(h)
    obs.log_prob(x).sum().backward()
    ours = head.log_eps.grad.clone()
    log_eps = head.log_eps.detach().clone().requires_grad_(True)
    cov = obs.cov_factor.detach() @ obs.cov_factor.detach().mT + log_eps.exp() * torch.eye(9, dtype=torch.float64)
    dense = torch.distributions.MultivariateNormal(obs.loc.detach(), cov).log_prob(x).sum()
    dense.backward()
    assert torch.allclose(obs.log_prob(x).sum().detach(), dense.detach(), rtol=1e-10)
    assert torch.allclose(ours, log_eps.grad, rtol=1e-8)
    assert "log_eps" in head.variance_prefixes and "log_eps" in head.diagonal_prefixes
    with pytest.raises(ValueError, match="choose one"):
        LowRankHead(4, 1, learn_diag=True, learn_eps=True)


def test_both_ways_of_adding_the_outer_product_to_the_gradient_agree(monkeypatch):
    # out += u wᵀ runs as baddbmm_ above a size and as addcmul_ below it: the same numbers either way
    from sosvae_core.observations import woodbury

    g = torch.Generator().manual_seed(0)
    out, u, w = torch.randn(3, 50, 4, generator=g), torch.randn(3, 50, generator=g), torch.randn(3, 1, 4, generator=g)
    expected = out.double() + u.double().unsqueeze(-1) * w.double()
    below = woodbury._add_outer(out.clone(), u, w)
    monkeypatch.setattr(woodbury, "_DEPTH_ONE_BYTES", 0)
    above = woodbury._add_outer(out.clone(), u, w)
    torch.testing.assert_close(below.double(), expected)
    torch.testing.assert_close(above.double(), expected)
