"""The pixel-independent Laplace model against torch's Laplace in float64, and end to end."""
import math

import pytest
import scipy.stats
import torch
from torch.distributions import Laplace, Normal

from sosvae_core import figures
from sosvae_core.configs import get_config
from sosvae_core.observations.laplace import DiagonalLaplace, LaplaceHead
from sosvae_core.train import Trainer

DT = torch.float64
S = 2 * 4 * 5


def make(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, S, generator=g, dtype=DT)
    var = torch.rand(batch, S, generator=g, dtype=DT) + 0.05
    return DiagonalLaplace(loc, var), loc, var, Laplace(loc, (var / 2).sqrt())


def test_log_prob_entropy_and_moments_match_torch_laplace():
    d, loc, var, ref = make()
    x = ref.sample((4,))
    torch.testing.assert_close(d.log_prob(x), ref.log_prob(x).sum(-1))
    torch.testing.assert_close(d.entropy(), ref.entropy().sum(-1))
    torch.testing.assert_close(d.variance, ref.variance)
    torch.testing.assert_close(d.mean, ref.mean)
    torch.testing.assert_close(d.covariance_row(7), torch.diag_embed(ref.variance)[:, 7])



def test_expand_validation_and_second_derivatives():
    d, loc, var, ref = make(batch=1)
    e = d.expand((2, 3))
    assert e.batch_shape == (2, 3) and type(e) is DiagonalLaplace
    x = ref.sample((2, 3)).squeeze(-2)
    torch.testing.assert_close(e.log_prob(x), d.log_prob(x))
    x[0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="value contains NaN"):
        DiagonalLaplace(loc, var, validate_args=True).log_prob(x)
    # |y − μ| has no curvature away from μ: the Hessian in y is zero, the one in b is not
    inputs = [t.clone().requires_grad_() for t in (loc, var, ref.sample())]
    f = lambda m, v, y: (lambda d: d.log_prob(y) + d.entropy())(DiagonalLaplace(m, v))
    assert torch.autograd.gradgradcheck(f, inputs)

def test_sample_is_the_laplace_quantile_of_the_normal_noise_with_exact_tails():
    d, loc, var, ref = make()
    g = torch.Generator().manual_seed(1)
    omega = torch.randn(2, 3, S, generator=g, dtype=DT)
    omega[0, 0, :4] = torch.tensor([-9.0, -3.0, 3.0, 9.0], dtype=DT)  # far tails: 1 − Φ(9) ≈ 1e-19
    want = ref.icdf(Normal(0.0, 1.0).cdf(omega).clamp(1e-300, 1 - 1e-16))
    got = d.rsample((2,), omega_d=omega)
    # the quantile through Φ loses the upper tail to rounding; ours stays exact there
    torch.testing.assert_close(got[..., 4:], want[..., 4:])
    b = (var[0, :4] / 2).sqrt()
    exact = -torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=DT) * b * (
        math.log(2) + torch.tensor([scipy.stats.norm.logcdf(-abs(w)) for w in (-9.0, -3.0, 3.0, 9.0)], dtype=DT))
    torch.testing.assert_close(got[0, 0, :4], loc[0, :4] + exact)
    assert torch.isfinite(got).all()


def test_samples_follow_the_laplace_distribution():
    loc, var = torch.tensor([[0.3]], dtype=DT), torch.tensor([[0.08]], dtype=DT)
    torch.manual_seed(0)
    x = DiagonalLaplace(loc, var).rsample((4000,))[:, 0, 0]
    b = math.sqrt(0.08 / 2)
    assert scipy.stats.kstest(x.numpy(), "laplace", args=(0.3, b)).pvalue > 0.01
    # a Gaussian of the same variance is rejected by the same test
    assert scipy.stats.kstest(x.numpy(), "norm", args=(0.3, math.sqrt(0.08))).pvalue < 0.01


def test_gradcheck_log_prob_entropy_and_rsample():
    g = torch.Generator().manual_seed(2)
    loc = torch.randn(1, 5, generator=g, dtype=DT, requires_grad=True)
    var = (torch.rand(1, 5, generator=g, dtype=DT) + 0.2).requires_grad_()
    x = torch.randn(1, 5, generator=g, dtype=DT) + 0.3
    omega = torch.randn(1, 5, generator=g, dtype=DT)
    f = lambda m, v: (DiagonalLaplace(m, v).log_prob(x) + DiagonalLaplace(m, v).entropy()
                      + DiagonalLaplace(m, v).rsample(omega_d=omega).sum(-1))
    assert torch.autograd.gradcheck(f, (loc, var))


def test_head_starts_grey_with_the_beta_vaes_variance():
    head = LaplaceHead(c_in=4, image_channels=2, eps=1e-5)
    d = head(torch.randn(3, 4, 5, 6))
    assert isinstance(d, DiagonalLaplace) and d.loc.shape == (3, 2 * 5 * 6)
    torch.testing.assert_close(d.loc, torch.full_like(d.loc, 0.5), atol=1e-3, rtol=0)
    torch.testing.assert_close(d.variance, torch.full_like(d.variance, 2e-5), atol=0, rtol=1e-2)


def test_bad_noise_is_rejected():
    d, *_ = make()
    with pytest.raises(ValueError, match="omega_p has last dimension 25, expected 0"):
        d.rsample(omega_p=torch.zeros(3, 25, dtype=DT))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lfw):
    cfg = get_config("lfw", "smoke", model="laplace", epochs=4, pretrain_epochs=1)
    return Trainer(cfg, tmp_path_factory.mktemp("laplace"), datasets=lfw, progress=False,
                   tensorboard=False).fit().eval()


def test_config_of_the_laplace_model_has_the_kl_target_only():
    cfg = get_config("celeba", "quick", model="laplace")
    assert cfg.target_kl == 45.0 and cfg.target_entropy_at is None and cfg.release_warmup_epochs == 1


def test_trained_laplace_model_draws_figure_2s_rows(trained):
    z = figures.prior_z(trained, 3, seed=0)
    panel = figures.observation_panel(trained, z, seed=0)
    obs = trained.decode(z)
    assert isinstance(obs, DiagonalLaplace)
    torch.testing.assert_close(panel["mean"], figures.as_images(obs.mean, trained.image_shape))
    omega_p, omega_d = obs.draw_noise(torch.Generator().manual_seed(0))
    torch.testing.assert_close(panel["sample"], figures.as_images(obs.rsample(omega_p=omega_p, omega_d=omega_d),
                                                                  trained.image_shape))
    # pixel-independent: the covariance to the centre pixel is zero once its own entry is removed
    assert panel["cov_positive"].abs().max() == 0 and panel["cov_negative"].abs().max() == 0
    with pytest.raises(ValueError, match="slerp_grid interpolates ω_p, and DiagonalLaplace has none"):
        figures.slerp_grid(trained, z)


def test_trained_from_the_command_line(tmp_path, capsys):
    from sosvae_core.__main__ import main as cli
    from sosvae_core.runs import load_run
    run = tmp_path / "run"
    assert cli(["train", "--config", "lfw", "--profile", "smoke", "--model", "laplace", "--run-dir", str(run),
                "--no-progress", "--set", "epochs=1"]) == 0
    assert "finished: epoch 1" in capsys.readouterr().out
    assert isinstance(load_run(run).head, LaplaceHead)
