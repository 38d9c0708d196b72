"""The test log-likelihood: the importance-weighted bound against an exact linear Gaussian model,
the dequantisation against exact bin probabilities, and the evaluation of trained models."""
import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

from sosvae_core import likelihood


class LinearGaussian(nn.Module):
    """p(z) = N(0, I), p(x | z) = N(Wz + b, σ²I): log p(x) = log N(x; b, WWᵀ + σ²I) exactly.
    The encoder is the exact posterior's mean with a too-wide scale, so the ELBO is loose."""

    def __init__(self, W, b, sigma, scale_factor=2.0):
        super().__init__()
        self.W, self.b, self.sigma, self.scale_factor = W, b, sigma, scale_factor
        self.latent_dim = W.shape[1]
        self.image_shape = (1, 1, W.shape[0])
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device
        d = W.shape[1]
        self.post_cov = torch.linalg.inv(torch.eye(d, dtype=W.dtype) + W.T @ W / sigma ** 2)

    def exact_log_prob(self, x):
        S = self.W.shape[0]
        cov = self.W @ self.W.T + self.sigma ** 2 * torch.eye(S, dtype=self.W.dtype)
        return MultivariateNormal(self.b, cov).log_prob(x.flatten(1).double())

    def encode(self, x):
        r = x.flatten(1).double() - self.b
        loc = (self.post_cov @ self.W.T @ r.T).T / self.sigma ** 2
        scale = self.scale_factor * self.post_cov.diagonal().sqrt().expand_as(loc)
        return Normal(loc.float(), scale.float())

    def decode(self, z):
        mean = (z.double() @ self.W.T + self.b).float()
        return Independent(Normal(mean, torch.full_like(mean, self.sigma)), 1)


@pytest.fixture
def linear_model():
    g = torch.Generator().manual_seed(0)
    S, d = 12, 3
    W = torch.randn(S, d, generator=g, dtype=torch.float64) * 0.3
    return LinearGaussian(W, torch.full((S,), 0.5, dtype=torch.float64), 0.2)


def test_the_bound_rises_with_k_towards_the_exact_log_likelihood(linear_model):
    x = linear_model.decode(torch.randn(64, 3, generator=torch.Generator().manual_seed(1))).sample()
    exact = linear_model.exact_log_prob(x)
    gaps = []
    for k in (1, 10, 100, 1000):
        log_w = likelihood.log_weights(linear_model, x.reshape(64, 1, 1, 12), k, torch.Generator().manual_seed(2))
        gaps.append(float((exact - likelihood.iwae_bound(log_w)).mean()))
    assert gaps[0] > 0.3  # the ELBO is loose: the encoder's scale is twice the posterior's
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps  # L_K rises with K
    assert -0.01 < gaps[-1] < 0.02 and gaps[-1] < gaps[0] / 30, gaps  # and approaches log p(x)


def test_k_one_is_the_elbo(linear_model):
    x = torch.rand(5, 1, 1, 12)
    log_w = likelihood.log_weights(linear_model, x, 1, torch.Generator().manual_seed(0))
    assert torch.allclose(likelihood.iwae_bound(log_w), log_w[0])


def test_dequantisation_bounds_the_exact_bin_probability():
    """Independent N(μ, σ²) pixels: the 8-bit image's probability is a product of exact bin masses
    Φ(hi) − Φ(lo); the dequantised bound lies below it by the Jensen gap, which is tiny for σ ≫ 1/255."""
    g = torch.Generator().manual_seed(0)
    mu, sigma, S, n_images = 0.4, 0.1, 64, 400
    n = (torch.randn(n_images, S, generator=g) * sigma * 255 + mu * 255).round().clamp(0, 255)
    density = Normal(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64))
    lo, hi = (n.double() - 0.5) / 255, (n.double() + 0.5) / 255
    exact_bits = -(density.cdf(hi) - density.cdf(lo)).log().sum(-1) / (S * math.log(2))
    x = likelihood.dequantise(n / 255, g)
    assert ((x * 255 - n).abs() <= 0.5 + 1e-4).all()  # each value stays in its own bin
    bound_bits = likelihood.bits_per_dim(density.log_prob(x.double()).sum(-1), S)
    assert float(bound_bits.mean()) >= float(exact_bits.mean()) - 1e-3
    assert abs(float(bound_bits.mean() - exact_bits.mean())) < 2e-3


def test_a_uniform_guess_scores_eight_bits():
    assert float(likelihood.bits_per_dim(torch.zeros(1), 100)) == pytest.approx(math.log2(255), abs=1e-12)


def test_evaluate_reports_bits_with_standard_errors(linear_model):
    x = (linear_model.decode(torch.randn(40, 3)).sample().clamp(0, 1) * 255).round() / 255
    out = likelihood.evaluate(linear_model, x.reshape(40, 1, 1, 12), k=50, seed=0, batch_size=16)
    assert out["n_images"] == 40 and out["k"] == 50 and out["num_dims"] == 12
    assert out["bits_per_dim"] <= out["elbo_bits_per_dim"]  # the bound is tighter than the ELBO
    assert 0 < out["bits_per_dim_se"] < 1
    again = likelihood.evaluate(linear_model, x.reshape(40, 1, 1, 12), k=50, seed=0, batch_size=16)
    assert again == out  # seeded


def test_evaluate_refuses_what_it_cannot_measure(linear_model):
    with pytest.raises(ValueError, match="k ≥ 1"):
        likelihood.evaluate(linear_model, torch.rand(4, 1, 1, 12), k=0)
    with pytest.raises(ValueError, match="at least 2 images"):
        likelihood.evaluate(linear_model, torch.rand(1, 1, 1, 12), k=5)


def test_a_model_without_latent_scores_its_exact_likelihood():
    from sosvae_core.observations import DistributionOnly
    model = DistributionOnly((1, 4, 4), rank=2, eps=1e-2, seed=0)
    x = torch.rand(6, 1, 4, 4)
    out = likelihood.evaluate(model, x, k=7, seed=3)
    assert out["k"] == 0 and out["bits_per_dim"] == out["elbo_bits_per_dim"]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        exact = model.distribution(6).log_prob(likelihood.dequantise(x, g).flatten(1))
    assert out["bits_per_dim"] == pytest.approx(float(likelihood.bits_per_dim(exact, 16).mean()), rel=1e-6)
    wider = likelihood.evaluate(likelihood.WithDiagonal(model, 1e-1), x, seed=3)
    assert wider["bits_per_dim"] != out["bits_per_dim"]


def test_the_nll_command_on_a_trained_run(tmp_path, capsys):
    """`python -m sosvae_core nll --run RUN`: one JSON line; --eps re-scores the trained μ and P."""
    import json

    from sosvae_core.__main__ import main as cli
    run = tmp_path / "run"
    assert cli(["train", "--config", "lfw", "--profile", "smoke", "--run-dir", str(run), "--no-progress",
                "--set", "epochs=1", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    common = ["--run", str(run), "--k", "4", "--n", "6", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    assert cli(["nll", *common]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["k"] == 4 and out["n_images"] == 6 and out["eps"] == 1e-5 and out["model"] == "sos"
    assert out["bits_per_dim"] <= out["elbo_bits_per_dim"] and out["bits_per_dim_se"] > 0
    assert cli(["nll", *common, "--eps", "1e-2"]) == 0
    rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rescored["eps"] == 1e-2 and rescored["bits_per_dim"] != out["bits_per_dim"]
    assert cli(["nll", *common, "--n", "100000"]) == 2  # the last --n counts
    assert "fewer than n = 100000" in capsys.readouterr().err


def test_one_set_of_codes_scores_every_eps_as_rescoring_one_at_a_time_would():
    from sosvae_core.observations import LowRankNormal

    class TinyLowRank(LinearGaussian):
        def decode(self, z):
            mean = (z.double() @ self.W.T + self.b).float()
            P = 0.1 * torch.ones(*mean.shape, 2)
            return LowRankNormal(mean, P, self.sigma ** 2)

    g = torch.Generator().manual_seed(0)
    model = TinyLowRank(torch.randn(12, 3, generator=g, dtype=torch.float64) * 0.3,
                        torch.full((12,), 0.5, dtype=torch.float64), 0.2)
    x = torch.rand(6, 1, 1, 12)
    grid = likelihood.evaluate(model, x, k=5, seed=1, eps_values=[1e-3, 1e-1])
    for eps in (1e-3, 1e-1):
        alone = likelihood.evaluate(likelihood.WithDiagonal(model, eps), x, k=5, seed=1)
        assert grid[eps] == pytest.approx(alone, rel=1e-6)
    with pytest.raises(ValueError, match="needs a low-rank model"):
        likelihood.evaluate(LinearGaussian(model.W, model.b, 0.2), x, k=2, eps_values=[1e-2])


def test_with_diagonal_keeps_the_wrapped_models_mode():
    # a caller that restores the wrapper's mode afterwards (table1.generate_images) must leave an
    # evaluated model in eval mode, or its batch normalisation switches to batch statistics
    inner = torch.nn.BatchNorm1d(3).eval()
    inner.image_shape = (3,)
    wrapped = likelihood.WithDiagonal(inner, 1e-3)
    assert not wrapped.training
    was_training = wrapped.training
    wrapped.eval()
    wrapped.train(was_training)
    assert not inner.training
    assert likelihood.WithDiagonal(inner.train(), 1e-3).training


@pytest.mark.parametrize("kind", ["beta", "sos"])
def test_the_compiled_decoder_gives_the_eager_bound_and_leaves_no_trace(kind):
    from sosvae_core.networks import VAE, compiled_decoders

    torch.manual_seed(0)
    model = VAE((3, 12, 10), kind, latent_dim=4, rank=3, eps=1e-3, channels=(8, 16), blocks=1)
    for m in model.modules():  # batch statistics unlike the initial ones, so that folding them matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(5, 3, 12, 10)
    validate = torch.distributions.Distribution._validate_args
    eager = likelihood.evaluate(model, x, k=6, seed=2, batch_size=2)
    compiled = likelihood.evaluate(model, x, k=6, seed=2, batch_size=2, compile=True)
    assert compiled["bits_per_dim"] == pytest.approx(eager["bits_per_dim"], rel=1e-5)
    assert compiled["elbo_bits_per_dim"] == pytest.approx(eager["elbo_bits_per_dim"], rel=1e-5)
    z = torch.randn(4, 4)
    with torch.no_grad():
        reference = model.decode(z).mean
    with compiled_decoders(model):
        assert model._inference_body is not None
        with torch.no_grad():
            torch.testing.assert_close(model.decode(z).mean, reference, rtol=1e-5, atol=1e-5)
        assert model.decode(z).mean.requires_grad  # with gradients: the eager decoder, which has them
    assert model._inference_body is None
    assert torch.distributions.Distribution._validate_args == validate  # torch.compile turns it off; restored


def test_fixed_rows_pads_every_decode_to_one_size_and_changes_no_weight(linear_model):
    rows = []
    decode = linear_model.decode
    linear_model.decode = lambda z: rows.append(z.shape[0]) or decode(z)
    x = torch.rand(3, 1, 1, 12)
    plain = likelihood.log_weights(linear_model, x, 7, torch.Generator().manual_seed(0), codes_per_batch=8)
    assert rows == [6, 6, 6, 3]  # 2 codes × 3 images a chunk, then the last code
    rows.clear()
    padded = likelihood.log_weights(linear_model, x, 7, torch.Generator().manual_seed(0), codes_per_batch=8,
                                    fixed_rows=True)
    assert rows == [8, 8, 8, 8]
    torch.testing.assert_close(padded, plain)
