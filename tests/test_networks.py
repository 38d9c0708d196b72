import math

import pytest
import torch

from sosvae_core.networks import UPSAMPLING, VAE, ResidualBlock, halve
from sosvae_core.observations import DiagonalNormal, DistributionOnly, LowRankNormal

SMALL = dict(channels=(8, 16, 32), blocks=1, latent_dim=6, rank=3)


@pytest.mark.parametrize("upsample", UPSAMPLING)
@pytest.mark.parametrize("shape", [(3, 218, 178), (1, 64, 64), (1, 208, 176), (1, 25, 25), (3, 27, 22)])
def test_vae_round_trips_any_image_size(shape, upsample):
    torch.manual_seed(0)
    model = VAE(shape, "sos", upsample=upsample, **SMALL)
    x = torch.rand(2, *shape)
    q, obs = model(x)
    assert q.loc.shape == (2, 6)
    assert isinstance(obs, LowRankNormal)
    assert obs.mean.shape == (2, math.prod(shape)) and obs.cov_factor.shape == (2, math.prod(shape), 3)


@pytest.mark.parametrize("side", [(28, 23), (27, 22)])
def test_resize_upsampling_has_no_checkerboard_and_transposed_does(side):
    """A constant input stays constant through the resize block (up to the border of its
    3×3 convolution); the paper's stride-2 transposed block writes its 1×1 shortcut onto
    every other pixel only, a fixed dot grid the rest of the network must undo."""
    torch.manual_seed(0)
    th, tw = side
    x = torch.ones(1, 4, halve(th), halve(tw))
    resize = ResidualBlock(4, 4, stride=2, norm="none", resize_to=(th, tw)).eval()
    transpose = ResidualBlock(4, 4, stride=2, norm="none", transpose=True,
                              output_padding=(1 - th % 2, 1 - tw % 2)).eval()
    with torch.no_grad():
        skip_r, skip_t = resize.skip(x), transpose.skip(x)
        body_r = resize(x)[..., 1:-1, 1:-1]
    assert skip_r.shape == skip_t.shape == (1, 4, th, tw)
    assert torch.allclose(skip_r, skip_r[..., :1, :1].expand_as(skip_r))
    assert torch.allclose(body_r, body_r[..., :1, :1].expand_as(body_r), atol=1e-6)
    # the transposed shortcut: the bias alone on odd rows and columns
    assert not torch.allclose(skip_t[..., 0, 0], skip_t[..., 1, 1])


def test_unknown_upsampling_is_a_clear_error():
    with pytest.raises(ValueError, match="upsampling 'bilinear'"):
        VAE((1, 16, 16), "sos", upsample="bilinear", **SMALL)


def test_paper_network_keeps_218x178_exactly():
    # the paper's sizes: 218×178 → 109×89 → 55×45 → 28×23 and back
    assert [halve(218), halve(109), halve(55)] == [109, 55, 28]
    assert [halve(178), halve(89), halve(45)] == [89, 45, 23]
    model = VAE((3, 218, 178), "sos")  # channels 64..512, latent 128, R = 25
    assert model.decoder.body[0].kernel_size == (28, 23)
    with torch.no_grad():
        obs = model.decode(torch.zeros(1, 128))
    assert obs.cov_factor.shape == (1, 3 * 218 * 178, 25)


def test_heads_start_flat_grey_with_covariance_near_eps():
    torch.manual_seed(0)
    model = VAE((1, 16, 16), "sos", **SMALL).eval()
    with torch.no_grad():
        obs = model.decode(torch.randn(4, 6))
    assert (obs.mean - 0.5).abs().max() < 1e-2
    assert obs.cov_factor.abs().max() < 1e-2
    assert obs.fixed_diag and (obs.cov_diag == 1e-5).all()
    beta = VAE((1, 16, 16), "beta", **SMALL).eval()
    with torch.no_grad():
        d = beta.decode(torch.randn(4, 6))
    assert isinstance(d, DiagonalNormal)
    torch.testing.assert_close(d.variance, torch.full_like(d.variance, 2e-5), rtol=1e-2, atol=0)


def test_learned_diagonal_head_for_the_ablation():
    model = VAE((1, 16, 16), "sos_learned_diag", **SMALL).eval()
    with torch.no_grad():
        obs = model.decode(torch.randn(2, 6))
    assert not obs.fixed_diag and obs.cov_diag.shape == (2, 256)


def test_cov_factor_layout_is_rank_major_then_chw():
    # component r of P is conv channels r·C … r·C + C − 1, flattened C, H, W
    model = VAE((2, 4, 5), "sos", **SMALL)
    h = torch.randn(1, 8, 4, 5)
    raw = model.head.factor(h)  # (1, R·C, H, W)
    P = model.head(h).cov_factor
    torch.testing.assert_close(P[0, :, 1], raw[0, 2:4].flatten())


def test_variance_parameters_are_the_non_mean_heads():
    model = VAE((1, 8, 8), "sos_learned_diag", **SMALL)
    names = {n for n, p in model.named_parameters() if any(p is q for q in model.variance_parameters())}
    assert names == {"head.factor.weight", "head.factor.bias", "head.diag.weight", "head.diag.bias"}
    beta = VAE((1, 8, 8), "beta", **SMALL)
    assert len(beta.variance_parameters()) == 2


@pytest.mark.parametrize("kind", ["sos", "sos_learned_diag", "beta", "dorta"])
def test_head_channels_sets_the_feature_maps_every_head_sees(kind):
    """The decoder's last 1×1 convolution widens to head_channels; the paper's network
    (head_channels None) keeps channels[0] → channels[0]."""
    torch.manual_seed(0)
    model = VAE((1, 8, 8), kind, head_channels=20, **SMALL)
    last = [m for m in model.decoder.body if isinstance(m, torch.nn.Conv2d)][-1]
    assert (last.in_channels, last.out_channels) == (8, 20)
    assert model.decoder(torch.zeros(2, 6)).shape == (2, 20, 8, 8)
    heads = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert heads and all(h.in_channels == 20 for h in heads)
    with torch.no_grad():
        assert model.decode(torch.zeros(2, 6)).mean.shape == (2, 64)
    paper = VAE((1, 8, 8), kind, **SMALL)
    last = [m for m in paper.decoder.body if isinstance(m, torch.nn.Conv2d)][-1]
    assert (last.in_channels, last.out_channels) == (8, 8)


def test_head_channels_must_be_positive():
    with pytest.raises(ValueError, match="head_channels must be a positive"):
        VAE((1, 8, 8), "sos", head_channels=0, **SMALL)


def test_distribution_only_model():
    m = DistributionOnly((1, 4, 4), rank=3)
    d = m.distribution(5)
    assert d.batch_shape == (5,) and d.cov_factor.shape == (5, 16, 3)
    assert m.sample_prior(2).mean.shape == (2, 16)


def test_unknown_norm_and_model():
    with pytest.raises(ValueError, match="unknown norm"):
        VAE((1, 8, 8), "sos", norm="layer", **SMALL)
    with pytest.raises(ValueError, match="unknown observation model"):
        VAE((1, 8, 8), "bernoulli", **SMALL)
