"""Editing by conditioning and its brushes (sosvae_core.editing)."""
import pytest
import torch

from sosvae_core import editing
from sosvae_core.editing import colour_to_values, stroke_mask
from sosvae_core.networks import VAE


def test_floor_scales_follows_the_papers_rule():
    got = editing.floor_scales(torch.tensor([-5.0, -0.02, -0.0, 0.0, 0.01, 0.03, 0.5]))
    assert got.tolist() == pytest.approx([-5.0, -0.03, 0.03, 0.03, 0.03, 0.03, 0.5])
    assert editing.floor_scales(0.0) == editing.COMPONENT_FLOOR and editing.floor_scales(-0.01) == -0.03
    assert editing.floor_scales(0.5) == 0.5


def test_edit_sequence_is_the_conditional_mean():
    shape = (3, 12, 10)
    torch.manual_seed(0)
    m = VAE(shape, "sos", channels=(8, 16), blocks=1, latent_dim=4, rank=3).eval()
    z = torch.randn(1, 4)
    out = editing.edit_sequence(m, z, ["hair", "skin"], sequential=True)
    obs = m.decode(z)
    mask = editing.segment_mask(shape, *editing.FACE_EDITS["hair"]["stroke"]) | \
        editing.segment_mask(shape, *editing.FACE_EDITS["skin"]["stroke"])
    assert torch.equal(out["edited"][-1][mask], out["conditional"][-1][mask])
    values = out["edited"][-1][mask][None]
    torch.testing.assert_close(out["conditional"][-1].flatten(), obs.conditional_mean(mask, values)[0])
    # colours are per channel for RGB, luminance for gray
    hair = editing.segment_mask(shape, *editing.FACE_EDITS["hair"]["stroke"])
    assert torch.allclose(out["edited"][0][0][hair[0]], torch.tensor(0.85))


@pytest.mark.parametrize("kind", ["sos", "beta"])
def test_edit_sequence_samples_the_whole_conditional(kind):
    shape = (3, 12, 10)
    torch.manual_seed(0)
    m = VAE(shape, kind, channels=(8, 16), blocks=1, latent_dim=4, rank=3).eval()
    z = torch.randn(1, 4)
    out = editing.edit_sequence(m, z, ["hair", "skin"], n_samples=4, seed=1)
    assert out["samples"].shape == (2, 4, *shape) and out["variance"].shape == (2, *shape)
    obs = m.decode(z)
    for i in range(2):
        mask = out["masks"][i]
        assert torch.equal(out["samples"][i][:, mask], out["edited"][i][mask].expand(4, -1))  # strokes as painted
        assert torch.all(out["variance"][i][mask] == 0)
        rest = obs.conditional(mask, out["edited"][i][mask][None])
        torch.testing.assert_close(out["variance"][i][~mask], rest.variance[0].detach())
        assert torch.all(out["variance"][i] <= out["prior_variance"][0] + 1e-7)  # an edit never adds variance
    again = editing.edit_sequence(m, z, ["hair", "skin"], n_samples=4, seed=1)
    assert torch.equal(again["samples"], out["samples"])  # seeded
    decided = editing.variance_decided(out, ["hair", "skin"])
    for v in decided.values():
        assert 0 < v["edited"] <= 1 and 0 <= v["decided"] <= 1
    if kind == "beta":  # independent pixels: only the painted values lose their variance
        prior = out["prior_variance"][0]
        want = float(prior[out["masks"][1]].sum() / prior.sum())
        assert decided["skin"]["decided"] == pytest.approx(want, rel=1e-4) and decided["skin"]["halved"] == 0


def test_segment_mask_covers_the_segment():
    m = editing.segment_mask((1, 20, 20), 0.5, 0.1, 0.5, 0.9, width=0.05)
    assert m[0, 10, 2:17].all() and not m[0, 0].any() and m.dtype == torch.bool


def test_stroke_mask_geometry():
    one = stroke_mask([(2.5, 3.5)], 0.4, 6, 5)
    assert one.sum() == 1 and one[2, 3]
    line = stroke_mask([(1.5, 0.2), (1.5, 4.8)], 0.5, 6, 5)
    assert line[1].all() and line.sum() == 5
    disc = stroke_mask([(3.0, 3.0)], 1.0, 6, 6)  # centres (2.5|3.5, 2.5|3.5) are at 0.71
    assert disc.sum() == 4
    assert stroke_mask([(-5.0, -5.0)], 1.0, 6, 5).sum() == 0


def test_colour_to_values():
    assert torch.allclose(colour_to_values("#ff0000", 3), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(colour_to_values("#ff0000", 1), torch.tensor([0.299]))
    assert torch.allclose(colour_to_values("white", 1), torch.tensor([1.0]))
    assert torch.allclose(colour_to_values((0.0, 1.0, 0.0), 1), torch.tensor([0.587]))
