"""The price of coherence and the rank ablation (notebook 13): what each measure measures."""
import math

import pytest
import torch

from sosvae_core import likelihood, tradeoffs
from sosvae_core.networks import VAE


@pytest.fixture
def sos():
    torch.manual_seed(0)
    model = VAE((1, 8, 8), "sos", latent_dim=4, rank=3, channels=(4, 8), blocks=1).eval()
    torch.nn.init.normal_(model.head.factor.weight, std=0.5)  # a P with some structure to it
    return model


class SmoothP(torch.nn.Module):
    """p(x | z) = N(0.5, PPᵀ + 1e-5·I) with P's two columns smooth ramps across the 8×8 image."""
    latent_dim, image_shape, rank = 2, (1, 8, 8), 2

    def __init__(self):
        super().__init__()
        ramp = torch.linspace(-0.2, 0.2, 8)
        self.P = torch.stack([ramp.repeat(8), ramp.repeat_interleave(8)], dim=-1)  # (64, 2)
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def decode(self, z):
        from sosvae_core.observations import LowRankNormal
        return LowRankNormal(torch.full((z.shape[0], 64), 0.5), self.P.expand(z.shape[0], 64, 2), 1e-5)


def test_a_larger_eps_makes_samples_noisier_and_the_likelihood_kinder(sos):
    model = SmoothP()
    coherence = [tradeoffs.sample_coherence(likelihood.WithDiagonal(model, e), n=16) for e in (1e-5, 1e-1)]
    assert coherence[0] > 0.9 and coherence[1] < 0.2  # P's smooth columns, then pixel noise over them
    bits = likelihood.evaluate(sos, torch.rand(6, 1, 8, 8), k=3, eps_values=[1e-5, 1e-1])
    assert bits[1e-5]["bits_per_dim"] > bits[1e-1]["bits_per_dim"]  # unexplained residuals cost 1/ε


def test_the_tradeoff_rows_and_points(sos, monkeypatch):
    """FID and KID come from Table 1's cached computation (tested in test_fid.py and test_table1.py);
    here the study asks it for the right models: the re-scored ones at the FID points, once each."""
    asked = []

    def fake_sample_fid(model, extractor, reference, n, seed):
        asked.append((getattr(model, "eps", None), n))
        return {"fid_samples": 100.0 + len(asked), "kid_samples": 5.0, "kid_samples_std": 0.5}

    monkeypatch.setattr(tradeoffs, "_sample_fid", fake_sample_fid)
    rows = tradeoffs.eps_tradeoff(sos, torch.rand(4, 1, 8, 8), k=2, extractor=None, reference=None, n_fid=10,
                                  eps_grid=(1e-5, 1e-2), fid_eps=(1e-2,))
    assert [r["eps"] for r in rows] == [1e-5, 1e-2] and asked == [(1e-2, 10)]
    assert "fid_samples" not in rows[0] and rows[1]["fid_samples"] == 101.0 and "kid_samples" in rows[1]
    assert rows[0]["bits_per_dim"] > rows[1]["bits_per_dim"]
    point = tradeoffs.model_point(sos, torch.rand(4, 1, 8, 8), k=2, extractor=None, reference=None, n_fid=10)
    assert asked[-1] == (None, 10)  # the model as trained
    assert {"bits_per_dim", "coherence", "fid_samples", "kid_samples"} <= set(point)
    fig = tradeoffs.plot_tradeoff(rows, {"β-VAE": point})
    assert fig.axes[0].get_xscale() == "log"
    share = tradeoffs.top_component_share(sos, n=8)
    assert 1 / 3 <= share <= 1  # the top of three components holds at least its share
    ranked = [dict(point, rank=r, pixel_variance=0.01, concentration=0.3, unchanged_fraction=0.4,
                   top_component_share=share, step_seconds=0.1, kid_samples_std=0.1) for r in (1, 5, 25)]
    fig = tradeoffs.plot_rank_curves(ranked, "ranks")
    assert len(fig.axes) == 8 and all(math.isfinite(v) for v in fig.axes[0].lines[0].get_ydata())


def test_the_learned_eps_model_reports_its_eps():
    torch.manual_seed(0)
    model = VAE((1, 8, 8), "sos_learned_eps", latent_dim=4, rank=3, channels=(4, 8), blocks=1).eval()
    with torch.no_grad():
        model.head.log_eps.fill_(math.log(2e-3))
    obs = model.decode(torch.zeros(1, 4))
    assert torch.allclose(obs.cov_diag, torch.full_like(obs.cov_diag, 2e-3))
