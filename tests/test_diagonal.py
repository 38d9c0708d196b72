"""The β-VAE's pixel-independent Gaussian against dense float64 references."""
import pytest
import torch
from torch.distributions import MultivariateNormal

from sosvae_core.observations import DiagonalNormal

S = 3 * 6 * 5


def test_diagonal_normal_matches_dense():
    g = torch.Generator().manual_seed(4)
    loc = torch.randn(2, S, generator=g, dtype=torch.float64)
    var = torch.rand(2, S, generator=g, dtype=torch.float64) + 0.1
    d = DiagonalNormal(loc, var)
    ref = MultivariateNormal(loc, covariance_matrix=torch.diag_embed(var))
    x = ref.sample((3,))
    torch.testing.assert_close(d.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(d.entropy(), ref.entropy())
    torch.testing.assert_close(d.covariance_row(5), ref.covariance_matrix[:, 5])
    wd = torch.randn(3, 2, S, generator=g, dtype=torch.float64)
    torch.testing.assert_close(d.rsample((3,), omega_d=wd), loc + var.sqrt() * wd)


def test_diagonal_normal_edit_changes_only_edited_pixels():
    loc = torch.zeros(1, S, dtype=torch.float64)
    d = DiagonalNormal(loc, torch.ones(1, S, dtype=torch.float64))
    mask = torch.zeros(S, dtype=torch.bool)
    mask[:4] = True
    out = d.conditional_mean(mask, torch.ones(1, 4, dtype=torch.float64))
    assert out[0, :4].eq(1).all() and out[0, 4:].eq(0).all()


def test_gradcheck_log_prob_and_entropy():
    g = torch.Generator().manual_seed(5)
    loc = torch.randn(1, 6, generator=g, dtype=torch.float64, requires_grad=True)
    var = (torch.rand(1, 6, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    x = torch.randn(1, 6, generator=g, dtype=torch.float64)
    f = lambda loc, v: DiagonalNormal(loc, v).log_prob(x) + DiagonalNormal(loc, v).entropy()
    assert torch.autograd.gradcheck(f, (loc, var))


def test_first_is_the_first_image_unbatched_on_the_cpu():
    d = DiagonalNormal(torch.arange(2 * S, dtype=torch.float64).reshape(2, S), torch.full((2, S), 0.5, dtype=torch.float64))
    one = d.first()
    assert type(one) is DiagonalNormal and one.loc.shape == (S,) and one.loc.dtype == torch.float32
    torch.testing.assert_close(one.loc, d.loc[0].float())
    torch.testing.assert_close(one.variance, d.variance[0].float())


def test_bad_input():
    with pytest.raises(ValueError, match="variance of shape .* does not broadcast"):
        DiagonalNormal(torch.zeros(1, 4), torch.ones(1, 3))
    with pytest.raises(ValueError, match="variance must be strictly positive"):
        DiagonalNormal(torch.zeros(1, 4), torch.zeros(1, 4))
    d = DiagonalNormal(torch.zeros(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match="value has 3 pixels, expected S = 4"):
        d.log_prob(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="omega_p has last dimension 2, expected 0: DiagonalNormal has no structured noise"):
        d.rsample(omega_p=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="omega_d has last dimension 3, expected S = 4"):
        d.rsample(omega_d=torch.zeros(1, 3))


def test_batch_shapes_broadcast_and_expand():
    # a variance with more batch dimensions than the mean widens the batch, as in torch
    g = torch.Generator().manual_seed(6)
    loc = torch.randn(S, generator=g, dtype=torch.float64)
    var = torch.rand(4, 1, S, generator=g, dtype=torch.float64) + 0.1
    d = DiagonalNormal(loc, var)
    assert d.batch_shape == (4, 1) and d.sample((2,)).shape == (2, 4, 1, S)
    e = d.expand((4, 3))
    assert e.batch_shape == (4, 3) and type(e) is DiagonalNormal and e.sample().shape == (4, 3, S)
    x = torch.randn(4, 3, S, generator=g, dtype=torch.float64)
    torch.testing.assert_close(e.log_prob(x), d.log_prob(x))
    torch.testing.assert_close(e.entropy(), d.entropy().expand(4, 3))


def test_value_validation_and_argument_dtypes():
    d = DiagonalNormal(torch.zeros(2, 4), torch.ones(2, 4), validate_args=True)
    x = torch.zeros(2, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="value contains NaN"):
        d.log_prob(x)
    with pytest.raises(ValueError, match=r"value of shape \(3, 4\) does not broadcast with the batch \(2,\)"):
        d.log_prob(torch.zeros(3, 4))
    assert torch.isnan(DiagonalNormal(torch.zeros(2, 4), torch.ones(2, 4), validate_args=False).log_prob(x)[1])
    with pytest.raises(ValueError, match="loc and variance must share one floating dtype, got float32, float64"):
        DiagonalNormal(torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.float64))


def test_gradgradcheck_log_prob_and_entropy():
    g = torch.Generator().manual_seed(8)
    loc = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    var = (torch.rand(2, 4, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    x = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    f = lambda loc, v, x: (lambda d: d.log_prob(x) + d.entropy())(DiagonalNormal(loc, v))
    assert torch.autograd.gradgradcheck(f, (loc, var, x))
