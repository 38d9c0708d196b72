"""LowRankNormal as a torch.distributions citizen: the semantics of PyTorch's own tests for
LowRankMultivariateNormal (shapes, broadcasting, log_prob, sampling, properties, moments,
entropy, KL, expand, validation, gradcheck and gradgradcheck), checked against torch's
LowRankMultivariateNormal and the dense float64 covariance; plus second derivatives, the
grad mode of the caches and float32 accuracy at the paper's image size."""
import math

import pytest
import torch
from torch.distributions import (Independent, Laplace, LowRankMultivariateNormal, MultivariateNormal,
                                 Normal, constraints, kl_divergence)

from sosvae_core.observations import DiagonalNormal, LowRankNormal
from sosvae_core.observations.lowrank import CapacitanceError

F64 = torch.float64
S, R = 5, 2


def params(batch=(), seed=0, diag="learned", dtype=F64):
    """(loc, P, cov_diag) with cov_diag a float ε, a 0-d tensor ε or a (..., S) tensor."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(*batch, S, generator=g, dtype=dtype)
    P = torch.randn(*batch, S, R, generator=g, dtype=dtype) * 0.7
    if diag == "learned":
        D = torch.rand(*batch, S, generator=g, dtype=dtype) + 0.2
    elif diag == "tensor":
        D = torch.tensor(0.3, dtype=dtype)
    else:
        D = 0.3
    return loc, P, D


def torch_lowrank(loc, P, D):
    D = D if isinstance(D, torch.Tensor) and D.dim() else torch.full_like(loc, float(D))
    return LowRankMultivariateNormal(loc, P, D)


def dense(d: LowRankNormal) -> MultivariateNormal:
    return MultivariateNormal(d.loc, covariance_matrix=d.covariance_matrix)


DIAGS = ["learned", "float", "tensor"]


# -- shapes and broadcasting (test_lowrank_multivariate_normal_shape, *_parameter_broadcasting) --

SHAPES = [  # batch shapes of loc, cov_factor, cov_diag → batch shape of the distribution
    ((), (), (), ()),
    ((3,), (), (), (3,)),
    ((), (3,), (), (3,)),
    ((), (), (5,), (5,)),  # cov_diag with more batch dimensions than loc and cov_factor
    ((4, 1), (3,), (1, 3), (4, 3)),
    ((2, 1, 3), (1, 4, 1), (), (2, 4, 3)),
]


@pytest.mark.parametrize("loc_b,factor_b,diag_b,batch", SHAPES)
def test_batch_shape_broadcasts_all_three_arguments_as_torch_does(loc_b, factor_b, diag_b, batch):
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(*loc_b, S, generator=g, dtype=F64)
    P = torch.randn(*factor_b, S, R, generator=g, dtype=F64)
    D = torch.rand(*diag_b, S, generator=g, dtype=F64) + 0.1
    d, ref = LowRankNormal(loc, P, D), LowRankMultivariateNormal(loc, P, D)
    assert d.batch_shape == ref.batch_shape == batch and d.event_shape == ref.event_shape == (S,)
    assert d.loc.shape == d.cov_diag.shape == batch + (S,) and d.cov_factor.shape == batch + (S, R)
    assert d.sample().shape == batch + (S,)
    assert d.sample((2,)).shape == (2,) + batch + (S,)
    assert d.sample((2, 7)).shape == (2, 7) + batch + (S,)
    assert d.entropy().shape == ref.entropy().shape == batch
    x = ref.sample((2,))
    torch.testing.assert_close(d.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(d.log_prob(x[0]), ref.log_prob(x[0]))  # one value per distribution
    torch.testing.assert_close(d.entropy(), ref.entropy())


def test_invalid_parameter_broadcasting_is_one_clear_error():
    with pytest.raises(ValueError, match=r"the batch shapes do not broadcast \(loc \(2,\), cov_factor \(3,\), "
                                         r"cov_diag \(\)\); give the arguments equal leading dimensions"):
        LowRankNormal(torch.zeros(2, S), torch.zeros(3, S, R))
    with pytest.raises(ValueError, match=r"cov_diag \(4,\)"):
        LowRankNormal(torch.zeros(2, S), torch.zeros(2, S, R), torch.ones(4, S))


def test_argument_types_and_dtypes_are_checked_up_front():
    loc, P = torch.zeros(S), torch.zeros(S, R)
    with pytest.raises(ValueError, match=r"cov_diag must be a positive float ε .*got str '1e-5'; pass e.g. 1e-5"):
        LowRankNormal(loc, P, "1e-5")
    with pytest.raises(ValueError, match="cov_diag must be a positive float"):
        LowRankNormal(loc, P, True)
    with pytest.raises(ValueError, match=r"loc and cov_factor must share one floating dtype, got float32, float64; "
                                         r"cast them with \.to\(dtype\)"):
        LowRankNormal(loc, P.double())
    with pytest.raises(ValueError, match="loc and cov_diag must share one floating dtype, got float32, float64"):
        LowRankNormal(loc, P, torch.ones(S, dtype=F64))
    with pytest.raises(ValueError, match="loc and cov_factor must share one floating dtype, got int64, int64"):
        LowRankNormal(torch.zeros(S, dtype=torch.long), torch.zeros(S, R, dtype=torch.long))
    with pytest.raises(ValueError, match=r"cov_factor must be a tensor, got list; wrap it with torch.as_tensor"):
        LowRankNormal(loc, [[0.0] * R] * S)


# -- log_prob, properties, moments, entropy (test_lowrank_multivariate_normal_*) -----------------

@pytest.mark.parametrize("diag", DIAGS)
@pytest.mark.parametrize("batch", [(), (3,)])
def test_log_prob_matches_torch_and_the_dense_covariance(diag, batch):
    loc, P, D = params(batch, diag=diag)
    d = LowRankNormal(loc, P, D)
    ref, full = torch_lowrank(loc, P, D), dense(d)
    x = full.sample((4,))
    torch.testing.assert_close(d.log_prob(x), full.log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.log_prob(x), ref.log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.log_prob(x[0]), full.log_prob(x[0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("diag", DIAGS)
def test_properties_match_the_dense_distribution(diag):
    loc, P, D = params((2,), diag=diag)
    d = LowRankNormal(loc, P, D)
    full, ref = dense(d), torch_lowrank(loc, P, D)
    torch.testing.assert_close(d.mean, full.mean)
    torch.testing.assert_close(d.mode, full.mode)
    torch.testing.assert_close(d.variance, full.variance)
    torch.testing.assert_close(d.stddev, full.stddev)
    torch.testing.assert_close(d.covariance_matrix, ref.covariance_matrix)
    torch.testing.assert_close(d.precision_matrix, full.precision_matrix)
    torch.testing.assert_close(d.scale_tril, full.scale_tril)
    torch.testing.assert_close(d.cov_diag, ref.cov_diag)
    torch.testing.assert_close(d.entropy(), full.entropy(), rtol=1e-12, atol=1e-12)


def test_params_and_samples_satisfy_the_declared_constraints():
    d = LowRankNormal(*params((2,)))
    for name, constraint in d.arg_constraints.items():
        assert constraint.check(getattr(d, name)).all(), name
    assert d.support is constraints.real_vector and d.support.check(d.sample((3,))).all()
    assert d.has_rsample and d.rsample().requires_grad is False


def test_sample_moments_match_mean_and_covariance():
    torch.manual_seed(0)
    d = LowRankNormal(*params((2,)))
    n = 100_000
    x = d.sample((n,))
    sigma = d.covariance_matrix
    # Monte-Carlo standard errors of a mean and of a covariance entry
    torch.testing.assert_close(x.mean(0), d.mean, rtol=0, atol=5 * math.sqrt(float(d.variance.max()) / n))
    emp = torch.stack([torch.cov(x[:, b].T) for b in range(2)])
    var = sigma.diagonal(dim1=-2, dim2=-1)
    tol = 5 * torch.sqrt((var.unsqueeze(-1) * var.unsqueeze(-2) + sigma ** 2) / n)
    assert ((emp - sigma).abs() <= tol).all()


@pytest.mark.parametrize("diag", DIAGS)
def test_entropy_matches_monte_carlo(diag):
    torch.manual_seed(1)
    d = LowRankNormal(*params((2,), diag=diag))
    n = 60_000
    lp = d.log_prob(d.sample((n,)))
    torch.testing.assert_close(-lp.mean(0), d.entropy(), rtol=0, atol=5 * float(lp.std(0).max()) / math.sqrt(n))


# -- KL divergence (test_kl_lowrank_multivariate_normal*, test_kl_monte_carlo) -------------------

@pytest.mark.parametrize("p_diag,q_diag", [("learned", "float"), ("float", "learned"), ("tensor", "tensor")])
def test_kl_between_low_rank_normals_matches_torch_and_dense(p_diag, q_diag):
    p = LowRankNormal(*params((2,), seed=1, diag=p_diag))
    q = LowRankNormal(*params((3, 1), seed=2, diag=q_diag))  # batches broadcast to (3, 2)
    want = kl_divergence(dense(p), dense(q))
    assert want.shape == (3, 2)
    torch.testing.assert_close(kl_divergence(p, q), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kl_divergence(p, q), kl_divergence(torch_lowrank(*params((2,), seed=1, diag=p_diag)),
                                                                 torch_lowrank(*params((3, 1), seed=2, diag=q_diag))))


def test_kl_against_torch_gaussians_and_the_diagonal_model():
    p = LowRankNormal(*params((2,), seed=3))
    g = torch.Generator().manual_seed(4)
    loc, var = torch.randn(2, S, generator=g, dtype=F64), torch.rand(2, S, generator=g, dtype=F64) + 0.3
    A = torch.randn(S, S, generator=g, dtype=F64)
    others = {
        "mvn": (MultivariateNormal(loc, A @ A.T + torch.eye(S, dtype=F64)),) * 2,
        "independent": (Independent(Normal(loc, var.sqrt()), 1), MultivariateNormal(loc, torch.diag_embed(var))),
        "diagonal": (DiagonalNormal(loc, var), MultivariateNormal(loc, torch.diag_embed(var))),
    }
    for name, (other, as_mvn) in others.items():
        torch.testing.assert_close(kl_divergence(p, other), kl_divergence(dense(p), as_mvn), msg=name)
        torch.testing.assert_close(kl_divergence(other, p), kl_divergence(as_mvn, dense(p)), msg=name)
    torch.testing.assert_close(kl_divergence(p, p), torch.zeros(2, dtype=F64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"wrap the Normal over the pixels as Independent\(Normal\(loc, scale\), 1\)"):
        kl_divergence(p, Normal(loc, var))
    with pytest.raises(NotImplementedError, match=r"only Independent\(Normal\(loc, scale\), 1\)"):
        kl_divergence(p, Independent(Laplace(loc, var), 1))
    with pytest.raises(ValueError, match="needs one event shape"):
        kl_divergence(p, LowRankNormal(torch.zeros(S + 1, dtype=F64), torch.zeros(S + 1, R, dtype=F64)))


def test_kl_matches_monte_carlo():
    torch.manual_seed(2)
    p, q = LowRankNormal(*params(seed=5)), LowRankNormal(*params(seed=6, diag="float"))
    x = p.sample((100_000,))
    ratio = p.log_prob(x) - q.log_prob(x)
    torch.testing.assert_close(kl_divergence(p, q), ratio.mean(), rtol=0, atol=5 * float(ratio.std()) / math.sqrt(len(x)))


# -- expand (test_distribution_expand) ----------------------------------------------------------

@pytest.mark.parametrize("diag", DIAGS)
def test_expand_broadcasts_and_keeps_the_values(diag):
    d = LowRankNormal(*params((2,), diag=diag))
    d.entropy()  # a filled cache is shared, expanded
    e = d.expand((4, 2))
    assert e.batch_shape == (4, 2) and e.event_shape == d.event_shape and type(e) is LowRankNormal
    assert e.sample().shape == (4, 2, S) and e.sample((3,)).shape == (3, 4, 2, S)
    x = d.sample((4,))
    torch.testing.assert_close(e.log_prob(x), d.log_prob(x))
    torch.testing.assert_close(e.entropy(), d.entropy().expand(4, 2))
    torch.testing.assert_close(e.covariance_matrix, d.covariance_matrix.expand(4, 2, S, S))
    assert e.fixed_diag == d.fixed_diag and e._validate_args == d._validate_args
    with pytest.raises(RuntimeError):
        d.expand((3,))


# -- validation (TestValidation) -------------------------------------------------------------

def test_validate_args_rejects_a_nan_value_as_torch_does():
    loc, P, D = params()
    x = torch.zeros(S, dtype=F64)
    x[1] = float("nan")
    with pytest.raises(ValueError):
        torch_lowrank(loc, P, D).log_prob(x)
    with pytest.raises(ValueError, match="value contains NaN, which is outside the support"):
        LowRankNormal(loc, P, D, validate_args=True).log_prob(x)
    assert torch.isnan(LowRankNormal(loc, P, D, validate_args=False).log_prob(x))
    with pytest.raises(ValueError, match=r"value of shape \(3, 5\) does not broadcast with the batch \(2,\)"):
        LowRankNormal(*params((2,)), validate_args=True).log_prob(torch.zeros(3, S, dtype=F64))
    with pytest.raises(ValueError, match="value has 4 pixels, expected S = 5"):
        LowRankNormal(loc, P, D, validate_args=False).log_prob(torch.zeros(4, dtype=F64))


def test_validate_args_follows_torchs_global_default():
    from torch.distributions import Distribution
    loc, P, D = params()
    before = Distribution._validate_args
    try:
        Distribution.set_default_validate_args(False)
        assert not LowRankNormal(loc, P, D)._validate_args
        Distribution.set_default_validate_args(True)
        assert LowRankNormal(loc, P, D)._validate_args
    finally:
        Distribution.set_default_validate_args(before)


# -- gradients: gradcheck, gradgradcheck, Hessians ---------------------------------------------

@pytest.mark.parametrize("diag", DIAGS)
@pytest.mark.parametrize("samples", [False, True])
def test_gradcheck_and_gradgradcheck_of_log_prob_and_entropy(diag, samples):
    # one value per distribution takes the fused path, a batch of samples the plain one
    loc, P, D = params(() if samples else (2,), diag=diag)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2 if samples else 1, *loc.shape, generator=g, dtype=F64)[0 if not samples else slice(None)]
    inputs = [t.clone().requires_grad_() for t in (loc, P, x) + ((D,) if isinstance(D, torch.Tensor) else ())]

    def f(loc, P, x, *D):
        d = LowRankNormal(loc, P, D[0] if D else 0.3)
        return d.log_prob(x).sum(0) * 0.7 + d.entropy() * 1.3

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_gradcheck_rsample():
    loc, P, D = params((2,))
    g = torch.Generator().manual_seed(3)
    wp, wd = torch.randn(2, R, generator=g, dtype=F64), torch.randn(2, S, generator=g, dtype=F64)
    inputs = [t.clone().requires_grad_() for t in (loc, P, D)]
    assert torch.autograd.gradcheck(lambda *a: LowRankNormal(*a).rsample(omega_p=wp, omega_d=wd), inputs)


@pytest.mark.parametrize("diag", DIAGS)
def test_hessian_of_log_prob_is_minus_the_precision(diag):
    d = LowRankNormal(*params(diag=diag))
    y = torch.randn(S, dtype=F64)
    want = -torch.linalg.inv(d.covariance_matrix)
    torch.testing.assert_close(torch.autograd.functional.hessian(d.log_prob, y), want)
    torch.testing.assert_close(torch.autograd.functional.hessian(lambda m: LowRankNormal(m, d.cov_factor, d.cov_diag)
                                                                  .log_prob(y), d.loc), want)
    v = torch.randn(S, dtype=F64)
    _, hvp = torch.autograd.functional.hvp(d.log_prob, y, v)
    torch.testing.assert_close(hvp, want @ v)


def test_a_scalar_tensor_noise_level_gets_its_gradient():
    # a learned ε as a 0-d tensor takes the fast path and keeps its gradient
    loc, P, _ = params()
    eps = torch.tensor(0.3, dtype=F64, requires_grad=True)
    x = torch.randn(S, dtype=F64)
    d = LowRankNormal(loc, P, eps)
    assert d.fixed_diag and d.cov_diag.shape == (S,)
    (d.log_prob(x) + 0.5 * d.entropy()).backward()
    eps_ref = eps.detach().clone().requires_grad_()
    full = MultivariateNormal(loc, P @ P.T + eps_ref * torch.eye(S, dtype=F64))
    (full.log_prob(x) + 0.5 * full.entropy()).backward()
    torch.testing.assert_close(eps.grad, eps_ref.grad)
    # an expanded single value (another distribution's cov_diag) takes the same path
    again = LowRankNormal(loc, P * 2, d.cov_diag)
    assert again.fixed_diag
    torch.testing.assert_close(again.log_prob(x), LowRankNormal(loc, P * 2, 0.3).log_prob(x))


# -- the caches keep gradients whatever the grad mode of the first call (test_lazy_property_grad) -

@pytest.mark.parametrize("first", ["log_prob", "entropy", "capacitance"])
def test_caches_filled_under_no_grad_still_carry_gradients(first):
    loc, P, D = params((2,), diag="float")
    P = P.requires_grad_()
    d = LowRankNormal(loc, P, D)
    with torch.no_grad():
        {"log_prob": lambda: d.log_prob(loc), "entropy": d.entropy, "capacitance": lambda: d.capacitance_tril}[first]()
    h = d.entropy()
    assert h.requires_grad and d.capacitance_tril.requires_grad
    grad, = torch.autograd.grad(h.sum(), P)
    want, = torch.autograd.grad(LowRankNormal(loc, P, D).entropy().sum(), P)
    torch.testing.assert_close(grad, want)


def test_nothing_is_cached_under_inference_mode():
    d = LowRankNormal(*params((2,)))
    with torch.inference_mode():
        d.entropy()
        d.log_prob(d.loc)
    assert d._cap_tril is None and d._log_det_cap is None


# -- float32 at the paper's image size ------------------------------------------------------------

def test_float32_log_prob_and_entropy_within_1e6_of_float64_at_celeba_size():
    # S = 3·218·178, R = 25, ε = 1e-5, and a hard case: nearly parallel columns of P, which
    # float32 sums over all S rows cannot tell apart (the capacitance stops being positive
    # definite); the image lies in span(P) up to small noise and a brightness offset
    S_, R_ = 3 * 218 * 178, 25
    g = torch.Generator().manual_seed(0)
    loc = 0.5 + 0.1 * torch.randn(1, S_, generator=g)
    P = 0.01 * torch.randn(1, S_, R_, generator=g) + 0.01
    P[..., R_ - R_ // 2:] = P[..., :R_ // 2] + 1e-5 * torch.randn(1, S_, R_ // 2, generator=g)
    x = loc + (P @ torch.randn(1, R_, 1, generator=g)).squeeze(-1) + 0.003 * torch.randn(1, S_, generator=g)
    d32 = LowRankNormal(loc, P, 1e-5, validate_args=False)
    d64 = LowRankNormal(loc.double(), P.double(), 1e-5, validate_args=False)
    for ours, ref in ((d32.log_prob(x), d64.log_prob(x.double())), (d32.entropy(), d64.entropy())):
        assert ours.dtype == torch.float32
        assert float(((ours.double() - ref) / ref).abs().max()) <= 1e-6


def test_a_capacitance_that_is_not_positive_definite_in_float64_still_says_so():
    P = torch.full((1, S, R), 1e200, dtype=F64)
    with pytest.raises(CapacitanceError):
        LowRankNormal(torch.zeros(1, S, dtype=F64), P, 1e-5, validate_args=False).entropy()


# -- the example for users of torch.distributions ---------------------------------------------------

EXAMPLE = """
import torch
from torch.distributions import MultivariateNormal, kl_divergence
from sosvae_core.observations import LowRankNormal

S, R = 6, 2
loc, P = torch.zeros(S, dtype=torch.float64), torch.randn(S, R, dtype=torch.float64)
p = LowRankNormal(loc, P, 1e-2)  # N(μ, PPᵀ + εI), the paper's fixed ε
q = MultivariateNormal(loc + 1, torch.eye(S, dtype=torch.float64))
print(kl_divergence(p, q), kl_divergence(p.expand((3,)), q))  # closed form; batch (3,) by expand
H = torch.autograd.functional.hessian(p.log_prob, torch.zeros(S, dtype=torch.float64))
assert torch.allclose(H, -torch.linalg.inv(p.covariance_matrix))  # second derivatives: −Σ⁻¹
"""


def test_the_torch_distributions_example_runs(capsys):
    torch.manual_seed(0)
    exec(EXAMPLE, {})
    assert capsys.readouterr().out.count("tensor(") == 2
