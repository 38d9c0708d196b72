"""Inpainting with structured uncertainty: the hidden regions, the fit of z to the visible pixels,
the bits per hidden dimension against dense float64 references, and the run folder's memory."""
import json
import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal

from sosvae_core import inpainting
from sosvae_core.likelihood import bits_per_dim
from sosvae_core.observations import DiagonalNormal, LowRankNormal
from sosvae_core.observations.laplace import DiagonalLaplace

SHAPE = (2, 5, 4)
S = 40


class LinearModel(nn.Module):
    """z ↦ N(b + Wz, PPᵀ + εI) ("sos"), or independent pixels ("beta", "laplace") with the same
    mean: a latent model whose best code given the visible pixels has a closed form."""

    def __init__(self, kind="sos", latent=3, rank=2, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.kind, self.image_shape, self.latent_dim = kind, SHAPE, latent
        self.W = nn.Parameter(0.2 * torch.randn(S, latent, generator=g, dtype=dtype))
        self.b = nn.Parameter(0.5 + 0.1 * torch.randn(S, generator=g, dtype=dtype))
        self.P = nn.Parameter(0.1 * torch.randn(S, rank, generator=g, dtype=dtype))
        self.var = nn.Parameter(0.01 + 0.02 * torch.rand(S, generator=g, dtype=dtype))

    def encode(self, x):
        z = torch.zeros(x.shape[0], self.latent_dim, dtype=self.W.dtype)
        return Normal(z, torch.ones_like(z))

    def decode(self, z):
        loc = self.b + z.to(self.W.dtype) @ self.W.T
        if self.kind == "sos":
            return LowRankNormal(loc, self.P.expand(z.shape[0], S, -1), 1e-3)
        cls = DiagonalNormal if self.kind == "beta" else DiagonalLaplace
        return cls(loc, self.var.expand(z.shape[0], S))


def images(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *SHAPE, generator=g, dtype=torch.float64) * 255).round() / 255


def dense_sigma(model):
    return (model.P @ model.P.T + 1e-3 * torch.eye(S, dtype=torch.float64)).detach()


def test_box_masks_hide_a_quarter_in_a_box_over_all_channels():
    centre = inpainting.box_masks((3, 44, 36), 3, "centre")
    assert torch.equal(centre[0], centre[2]) and centre[0].all(0).sum() == 22 * 18  # a quarter, centred
    assert torch.equal(centre[0, :, 11:33, 9:27], torch.ones(3, 22, 18, dtype=torch.bool))
    boxes = inpainting.box_masks((3, 44, 36), 50, "random", seed=3)
    assert torch.equal(boxes, inpainting.box_masks((3, 44, 36), 50, "random", seed=3))  # seeded
    assert torch.equal(boxes.all(1), boxes.any(1))  # every channel of a pixel
    areas = boxes[:, 0].sum((1, 2)).double() / (44 * 36)
    assert ((areas - 0.25).abs() < 0.03).all(), areas
    for m in boxes[:, 0]:  # one rectangle each
        rows, cols = m.any(1).nonzero().squeeze(1), m.any(0).nonzero().squeeze(1)
        assert m[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    assert len({tuple(m.nonzero()[0].tolist()) for m in boxes[:, 0]}) > 10  # positions differ
    with pytest.raises(ValueError, match="kind must be one of"):
        inpainting.box_masks(SHAPE, 2, "circle")


@pytest.mark.parametrize("kind", ["sos", "beta", "laplace"])
def test_visible_log_prob_is_each_images_marginal(kind):
    model = LinearModel(kind)
    z = torch.randn(4, 3, dtype=torch.float64)
    obs = model.decode(z)
    x = images().flatten(1)
    visible = ~inpainting.box_masks(SHAPE, 4, "random", seed=2).flatten(1)
    got = inpainting.visible_log_prob(obs, x, visible)
    for i in range(4):
        want = model.decode(z[i:i + 1]).marginal(visible[i]).log_prob(x[i:i + 1, visible[i]])
        torch.testing.assert_close(got[i:i + 1], want)
    if kind == "sos":  # and the marginal against the dense sub-block
        v = visible[0]
        dense = MultivariateNormal(obs.loc[0, v], dense_sigma(model)[v][:, v])
        torch.testing.assert_close(got[0], dense.log_prob(x[0, v]))


@pytest.mark.parametrize("kind", ["sos", "beta"])
def test_fit_codes_finds_the_closed_form_map_code_and_leaves_the_network_as_it_was(kind):
    """With a mean linear in z the best code is z* = (I + W_vᵀΣ_vv⁻¹W_v)⁻¹ W_vᵀΣ_vv⁻¹(x_v − b_v)."""
    model = LinearModel(kind)
    x = images(2).flatten(1)
    visible = ~inpainting.box_masks(SHAPE, 2, "random", seed=5).flatten(1)
    fit = inpainting.fit_codes(model, x, visible, steps=400, lr=0.05)
    sigma = dense_sigma(model) if kind == "sos" else torch.diag(model.var.detach())
    W, b = model.W.detach(), model.b.detach()
    for i in range(2):
        v = visible[i]
        A = torch.linalg.solve(sigma[v][:, v], W[v])  # Σ_vv⁻¹ W_v
        want = torch.linalg.solve(torch.eye(3, dtype=torch.float64) + W[v].T @ A, A.T @ (x[i, v] - b[v]))
        torch.testing.assert_close(fit["z"][i], want, rtol=0, atol=2e-3)
    assert fit["objective"].shape == (401, 2) and (fit["objective"][-1] > fit["objective"][0]).all()
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_score_hidden_matches_the_dense_conditional_and_marginal():
    model = LinearModel("sos")
    x = images(4).flatten(1)
    z = torch.randn(4, 3, dtype=torch.float64)
    hidden = inpainting.box_masks(SHAPE, 4, "random", seed=7).flatten(1)
    hidden[1] = hidden[0]  # two images share a box: conditioned together
    got = inpainting.score_hidden(model, z, x, x, hidden)
    sigma = dense_sigma(model)
    for i in range(4):
        h, v = hidden[i], ~hidden[i]
        loc = model.decode(z[i:i + 1]).loc[0].detach()
        gain = sigma[h][:, v] @ torch.linalg.inv(sigma[v][:, v])
        cond = MultivariateNormal(loc[h] + gain @ (x[i, v] - loc[v]), sigma[h][:, h] - gain @ sigma[v][:, h])
        K = int(h.sum())
        assert got["hidden_dims"][i] == K
        torch.testing.assert_close(got["bits_conditional"][i], bits_per_dim(cond.log_prob(x[i, h]), K))
        marg = MultivariateNormal(loc[h], sigma[h][:, h])
        torch.testing.assert_close(got["bits_marginal"][i], bits_per_dim(marg.log_prob(x[i, h]), K))
        torch.testing.assert_close(got["mse_conditional"][i], (cond.mean - x[i, h]).pow(2).mean())
        torch.testing.assert_close(got["variance_conditional"][i], cond.variance.mean())


def test_a_pixel_independent_model_scores_its_hidden_pixels_one_by_one():
    model = LinearModel("laplace")
    x = images(3).flatten(1)
    z = torch.randn(3, 3, dtype=torch.float64)
    hidden = inpainting.box_masks(SHAPE, 3, "centre").flatten(1)
    got = inpainting.score_hidden(model, z, x, x, hidden)
    obs = model.decode(z)
    b = (obs.variance / 2).sqrt()
    per_pixel = -((2 * b).log() + (x - obs.loc).abs() / b)  # log density of each pixel
    K = int(hidden[0].sum())
    want = -(per_pixel[:, hidden[0]].sum(-1) - K * math.log(255)) / (K * math.log(2))
    torch.testing.assert_close(got["bits_conditional"], want.detach())
    torch.testing.assert_close(got["bits_marginal"], got["bits_conditional"])


def test_evaluate_is_remembered_in_the_run_folder(tmp_path, monkeypatch):
    model = LinearModel("beta")
    model.run_dir = tmp_path
    imgs = images(3)
    first = inpainting.evaluate(model, imgs, "random", steps=3, seed=1)
    assert first["n"] == 3 and len(first["bits_conditional"]) == 3 and first["steps"] == 3
    stored = json.loads((tmp_path / "inpainting.json").read_text())
    assert len(stored) == 1

    def refit(*args, **kwargs):
        raise AssertionError("fitted again")
    monkeypatch.setattr(inpainting, "fit_codes", refit)
    assert inpainting.evaluate(model, imgs, "random", steps=3, seed=1) == json.loads(json.dumps(first))
    with pytest.raises(AssertionError, match="fitted again"):  # other images, another seed: computed anew
        inpainting.evaluate(model, imgs, "random", steps=3, seed=2)
    with pytest.raises(ValueError, match="at least 2 images"):
        inpainting.evaluate(model, imgs[:1], "centre")


def test_every_model_sees_the_same_regions_and_dequantised_values():
    imgs = images(3)
    a = inpainting.evaluate(LinearModel("sos"), imgs, "random", steps=2, seed=4)
    b = inpainting.evaluate(LinearModel("beta"), imgs, "random", steps=2, seed=4)
    assert a["hidden_dims"] == b["hidden_dims"]
    rows = inpainting.table_rows({"sos": {"random": a}, "beta": {"random": b}})
    assert [(r["model"], r["answer"].split()[0]) for r in rows] == [("sos", "conditional"), ("sos", "marginal"),
                                                                   ("beta", "marginal")]
    table = inpainting.markdown_table(rows, {"sos": "SOS-VAE"})
    assert table.count("\n") == 4 and "| SOS-VAE | conditional |" in table
    gain = inpainting.paired_difference(b["bits_marginal"], a["bits_conditional"])
    diffs = torch.tensor(b["bits_marginal"], dtype=torch.float64) - torch.tensor(a["bits_conditional"], dtype=torch.float64)
    assert math.isclose(gain["mean"], float(diffs.mean())) and math.isclose(gain["se"], float(diffs.std() / math.sqrt(3)))


def test_completions_keep_the_visible_pixels_and_vary_the_hidden_ones():
    model = LinearModel("sos")
    image = images(1)[0]
    hidden = inpainting.box_masks(SHAPE, 1, "centre")[0]
    out = inpainting.completions(model, image, hidden, torch.zeros(3, dtype=torch.float64), n_samples=3)
    for picture in [out["mean"], *out["samples"]]:
        assert torch.equal(picture[~hidden], image[~hidden])
    assert not torch.allclose(out["samples"][0][hidden], out["samples"][1][hidden])
    assert torch.all(out["std"][~hidden] == 0) and torch.all(out["std"][hidden] > 0)
