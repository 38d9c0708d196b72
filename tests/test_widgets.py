"""The widget panels' Python side, driven as the browser would (no browser needed).

Each panel keeps the array it last displayed (`current_image` etc.); we compare it
with what the likelihood's own methods say, never the PNG bytes (except once, to check
that the PNG is that array, upscaled).
"""
import io

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from torch import nn

from sosvae_core.observations import DiagonalNormal, LowRankNormal
from sosvae_core.slerp import slerp
from sosvae_core.networks import VAE
from sosvae_core.editing import PAPER_EDIT_SCALE, colour_to_values, stroke_mask
from sosvae_core.widgets import ComponentPanel, EditPanel, LatentPanel, SlerpPanel, display_array, event_xy, png_bytes

ATOL = 1e-5


def random_distribution(shape, rank=4, seed=0) -> LowRankNormal:
    """A LowRankNormal with visible structure: mean around 0.5, P of per-pixel std ~0.1."""
    g = torch.Generator().manual_seed(seed)
    S = int(np.prod(shape))
    loc = 0.5 + 0.1 * torch.randn(S, generator=g)
    P = 0.1 * torch.randn(S, rank, generator=g) / rank ** 0.5
    return LowRankNormal(loc, P, 1e-5)


def tiny_vae(shape, kind="sos", seed=0) -> VAE:
    """An untrained small VAE whose head is re-initialised so P is not ~1e-5."""
    torch.manual_seed(seed)
    model = VAE(shape, kind, latent_dim=4, rank=3, channels=(4, 8), blocks=1)
    for name in ("factor", "var"):
        if hasattr(model.head, name):
            nn.init.normal_(getattr(model.head, name).weight, 0.0, 0.05)
    nn.init.normal_(model.head.mean.weight, 0.0, 0.05)
    return model.eval()


def decoded(model, z):
    with torch.no_grad():
        return model.decode(z.reshape(1, -1)).first()


def close(a, b, atol=ATOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol), float((a - b).abs().max())


SHAPES = [(1, 6, 5), (3, 5, 4)]


# -- 1. components ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_component_sliders_show_the_scaled_sample(shape):
    d = random_distribution(shape)
    panel = ComponentPanel(d, image_shape=shape, seed=1)
    assert len(panel.sliders) == d.rank
    assert [s.value for s in panel.sliders] == [1.0] * d.rank
    # untouched: the ordinary sample μ + P ω_p + √ε ω_d
    close(panel.current_image,
          d.rsample(omega_p=panel.omega_p, omega_d=panel.omega_d).clamp(0, 1).reshape(shape))
    for i, v in [(0, 3.5), (2, -2.0), (1, 0.0)]:
        panel.sliders[i].value = v  # what the browser's slider does
        scaled = d.scale_components(panel.scales)
        expected = scaled.rsample(omega_p=panel.omega_p, omega_d=panel.omega_d)
        close(panel.current_image, expected.clamp(0, 1).reshape(shape))
    assert panel.scales.tolist() == [3.5, 0.0, -2.0, 1.0]


def test_component_resample_and_reset_buttons():
    shape = (1, 6, 5)
    d = random_distribution(shape)
    panel = ComponentPanel(d, image_shape=shape, seed=0)
    panel.set_scales([2.0, 1.0, 1.0, 0.5])
    omega = panel.omega_p.clone()
    panel.resample_button.click()
    assert not torch.equal(omega, panel.omega_p)
    expected = d.scale_components(torch.tensor([2.0, 1.0, 1.0, 0.5]))
    close(panel.current_image,
          expected.rsample(omega_p=panel.omega_p, omega_d=panel.omega_d).clamp(0, 1).reshape(shape))
    panel.reset_button.click()
    assert panel.scales.tolist() == [1.0] * 4
    assert panel.new_z_button is None  # a fixed distribution has no z


def test_component_panel_on_a_model_and_its_png():
    model = tiny_vae((1, 7, 6))
    panel = ComponentPanel(model, seed=3)
    d = decoded(model, panel.z)
    panel.sliders[0].value = -4.0
    scales = torch.tensor([-4.0, 1.0, 1.0])
    close(panel.current_image, d.scale_components(scales).rsample(
        omega_p=panel.omega_p, omega_d=panel.omega_d).clamp(0, 1).reshape(1, 7, 6))
    # the PNG is that image, upscaled by the integer zoom with nearest neighbour
    png = np.array(PILImage.open(io.BytesIO(bytes(panel.image.value))))
    z = panel.zoom
    assert png.shape == (7 * z, 6 * z)
    assert np.array_equal(png, np.kron(display_array(panel.current_image), np.ones((z, z), np.uint8)))
    z_before = panel.z.clone()
    panel.new_z_button.click()
    assert not torch.equal(z_before, panel.z)
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_component_panel_refuses_the_diagonal_model():
    with pytest.raises(TypeError, match="low-rank"):
        ComponentPanel(DiagonalNormal(torch.full((30,), 0.5), torch.full((30,), 0.01)),
                       image_shape=(1, 6, 5))


# -- 2. slerp grid ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_slerp_corners_and_grid(shape):
    d = random_distribution(shape, rank=5)
    panel = SlerpPanel(d, image_shape=shape, seed=2)
    tl, tr, bl, br = panel.corners
    assert panel.tx.value == panel.ty.value == 0.0

    def sample(omega):
        return d.rsample(omega_p=omega, omega_d=panel.omega_d).clamp(0, 1).reshape(shape)

    close(panel.current_image, panel.corner_images[0])
    close(panel.current_image, sample(tl))
    for (tx, ty), corner, k in [((1, 0), tr, 1), ((0, 1), bl, 2), ((1, 1), br, 3)]:
        panel.tx.value, panel.ty.value = float(tx), float(ty)
        close(panel.current_image, sample(corner))
        close(panel.current_image, panel.corner_images[k])
    panel.tx.value, panel.ty.value = 0.3, 0.7
    close(panel.current_image, sample(slerp(slerp(tl, tr, 0.3), slerp(bl, br, 0.3), 0.7)))
    before = panel.corners.clone()
    panel.corners_button.click()
    assert not torch.equal(before, panel.corners)
    panel.set_t(0.0, 0.0)
    close(panel.current_image, panel.corner_images[0])


# -- 3. latent panel ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_latent_panel_click_shows_the_covariance_row(shape):
    model = tiny_vae(shape)
    images = torch.rand(4, *shape, generator=torch.Generator().manual_seed(0))
    panel = LatentPanel(model, images, seed=0)
    C, H, W = shape
    d = decoded(model, panel.z)
    close(panel.current_image, d.mean.clamp(0, 1).reshape(shape))
    close(panel.current_variance, d.variance.reshape(shape))
    close(panel.current_sample, d.rsample(omega_p=panel.omega_p, omega_d=panel.omega_d)
          .clamp(0, 1).reshape(shape))
    z = panel.zoom
    for r, c in [(0, 0), (H - 1, W - 1), (2, 1)]:
        panel.mouse_down((c + 0.5) * z, (r + 0.5) * z)  # centre of the clicked pixel
        assert panel.pixel == (r, c)
        close(panel.current_covariance, d.covariance_row(r * W + c).reshape(shape))
    # the ipyevents message, as the browser sends it
    panel._on_dom_event({"type": "mousedown", "dataX": z * 1 + 1, "dataY": z * 3 + 1})
    assert panel.pixel == (3, 1)
    close(panel.current_covariance, d.covariance_row(3 * W + 1).reshape(shape))


def test_latent_panel_encodes_and_samples():
    shape = (1, 6, 5)
    model = tiny_vae(shape)
    images = (torch.rand(5, *shape, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    panel = LatentPanel(model, images, seed=0)
    panel.index.value = 2  # moving the index slider encodes that image
    x = images[2].float() / 255
    with torch.no_grad():
        z = model.encode(x[None]).mean
    close(panel.z, z)
    close(panel.input_image, x)
    close(panel.current_image, decoded(model, z).mean.clamp(0, 1).reshape(shape))
    panel.prior_button.click()
    assert panel.input_image is None and not torch.allclose(panel.z, z)
    panel.encode_button.click()
    close(panel.z, z)


@pytest.mark.parametrize("kind", ["beta", "laplace"])
def test_latent_panel_with_a_pixel_independent_model(kind):
    shape = (1, 6, 5)
    model = tiny_vae(shape, kind=kind)
    panel = LatentPanel(model, seed=0)
    assert panel.encode_button is None
    panel.select_pixel(2, 3)
    cov = panel.current_covariance.reshape(-1)
    assert torch.count_nonzero(cov) == 1 and cov[2 * 5 + 3] > 0
    d = decoded(model, panel.z)
    assert type(d) is type(model.decode(panel.z.reshape(1, -1)))
    close(panel.current_sample, d.rsample(omega_p=panel.omega_p, omega_d=panel.omega_d).clamp(0, 1).reshape(shape))


def test_panels_refuse_a_model_without_an_unbatched_form():
    model = tiny_vae((1, 6, 5), kind="dorta")
    with pytest.raises(TypeError, match="SparsePrecisionNormal has no unbatched form"):
        LatentPanel(model, seed=0)


# -- 4. editing ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_edit_strokes_accumulate_undo_and_reset(shape):
    C, H, W = shape
    d = random_distribution(shape, rank=4)
    panel = EditPanel(d, image_shape=shape)
    close(panel.current_image, d.mean.clamp(0, 1).reshape(shape))

    first = [(1.5, 0.5), (1.5, 3.5)]
    panel.apply_stroke(first, "#ffffff", 0.5)
    m1 = stroke_mask(first, 0.5, H, W)
    mask = m1.expand(C, H, W)
    values = torch.ones(int(mask.sum()))
    after_first = d.conditional_mean(mask, values).clamp(0, 1).reshape(shape)
    close(panel.current_image, after_first)
    assert torch.all(panel.current_image[mask] == 1.0)  # edited pixels take their values
    close(panel.current_edit[~mask], d.mean.clamp(0, 1).reshape(shape)[~mask])

    # a second stroke, crossing the first: conditioned on both, the later colour wins
    second = [(0.5, 2.5), (4.5, 2.5)]
    panel.apply_stroke(second, "#ff0000", 0.5)
    m2 = stroke_mask(second, 0.5, H, W)
    colours = torch.zeros(C, H, W)
    colours[:, m1] = 1.0
    colours[:, m2] = colour_to_values("#ff0000", C)[:, None]
    both = (m1 | m2).expand(C, H, W)
    close(panel.current_image, d.conditional_mean(both, colours[both]).clamp(0, 1).reshape(shape))
    assert len(panel.strokes) == 2

    panel.undo_button.click()
    close(panel.current_image, after_first)
    panel.reset_button.click()
    close(panel.current_image, d.mean.clamp(0, 1).reshape(shape))
    assert panel.strokes == []
    panel.undo()  # nothing left to undo: still the mean
    close(panel.current_image, d.mean.clamp(0, 1).reshape(shape))


def test_edit_component_scale_conditions_the_scaled_distribution():
    shape = (3, 6, 5)
    C, H, W = shape
    d = random_distribution(shape, rank=4)
    panel = EditPanel(d, image_shape=shape, component_scale=PAPER_EDIT_SCALE)
    stroke = [(2.5, 0.5), (2.5, 3.5)]
    panel.apply_stroke(stroke, "#000000", 0.5)
    mask = stroke_mask(stroke, 0.5, H, W).expand(C, H, W)
    # dense float64 reference: Σ = (cP)(cP)ᵀ + D, μ₁ + Σ₁₂Σ₂₂⁻¹(b − μ₂)
    S = C * H * W
    P = d.cov_factor.reshape(S, -1).double() * PAPER_EDIT_SCALE
    cov = P @ P.T + torch.diag(torch.as_tensor(d.cov_diag, dtype=torch.float64).expand(S))
    m, e = mask.flatten(), ~mask.flatten()
    mu = d.loc.reshape(S).double()
    want = mu.clone()
    want[e] = mu[e] + cov[e][:, m] @ torch.linalg.solve(cov[m][:, m], torch.zeros(int(m.sum()), dtype=torch.float64) - mu[m])
    want[m] = 0.0
    close(panel.result.double().flatten(), want, atol=1e-5)
    # the slider re-renders with the full P
    panel.component_scale.value = 1.0
    close(panel.result.flatten(), d.conditional_mean(mask, torch.zeros(int(m.sum()))).flatten(), atol=1e-5)
    with pytest.raises(ValueError, match="component_scale"):
        EditPanel(d, image_shape=shape, component_scale=0.0)


def test_edit_mouse_stroke_is_apply_stroke():
    shape = (3, 5, 4)
    C, H, W = shape
    model = tiny_vae(shape)
    panel = EditPanel(model, seed=0, radius=0.7)
    panel.colour.value = "#00ff00"
    z = panel.zoom
    path = [(1 * z, 1 * z), (2 * z + 3, 2 * z), (3 * z, 3.5 * z)]  # (x, y) on screen
    panel.mouse_down(*path[0])
    assert panel.strokes == []  # nothing is conditioned before mouse-up
    panel.mouse_move(*path[1])
    panel.mouse_up(*path[2])
    points = [(y / z, x / z) for x, y in path]
    mask = stroke_mask(points, 0.7, H, W).expand(C, H, W)
    k = int(mask[0].sum())
    values = torch.cat([torch.zeros(k), torch.ones(k), torch.zeros(k)])  # green, C·H·W order
    d = decoded(model, panel.z)
    expected = d.conditional_mean(mask, values).clamp(0, 1).reshape(shape)
    close(panel.current_image, expected)
    # the same through the ipyevents messages; leaving the image ends the stroke
    panel.reset()
    for kind, (x, y) in zip(["mousedown", "mousemove", "mouseleave"], path):
        panel._on_dom_event({"type": kind, "dataX": x, "dataY": y})
    close(panel.current_image, expected)
    panel.mouse_move(0, 0)  # moving with no button pressed paints nothing
    assert len(panel.strokes) == 1
    # a browser's event: position relative to the element's box, here shown at half size
    panel.reset()
    w, h = panel.display_size
    for kind, (x, y) in zip(["mousedown", "mousemove", "mouseup"], path):
        panel._on_dom_event({"type": kind, "relativeX": x / 2, "relativeY": y / 2,
                             "boundingRectWidth": w / 2, "boundingRectHeight": h / 2,
                             "dataX": 0, "dataY": 0})  # dataX/Y are ignored when a box is given
    close(panel.current_image, expected)


@pytest.mark.parametrize("model_kind", ["sos", "beta"])
def test_edit_resample_the_rest_draws_conditional_samples_and_keeps_the_strokes(model_kind):
    shape = (3, 6, 5)
    C, H, W = shape
    model = tiny_vae(shape, model_kind)
    panel = EditPanel(model, seed=0)
    stroke = [(2.5, 0.5), (2.5, 3.5)]
    panel.apply_stroke(stroke, "#ff0000", 0.5)
    mask = stroke_mask(stroke, 0.5, H, W).expand(C, H, W)
    values = colour_to_values("#ff0000", C)[:, None].expand(C, int(mask[0].sum())).reshape(-1)
    mean = panel.current_image.clone()
    panel.resample_button.click()
    assert panel.view.value == EditPanel.SAMPLE and len(panel.strokes) == 1
    first = panel.result.clone()
    torch.testing.assert_close(first[mask], values)  # the strokes stay
    assert not torch.allclose(first[~mask], mean[~mask])
    # the sample is the conditional's, with the noise the panel drew
    d = decoded(model, panel.z)
    rest = d.conditional(mask, values)
    omega_p, omega_d = panel._noise
    close(first[~mask], rest.rsample(omega_p=omega_p[..., :rest.noise_rank], omega_d=omega_d[~mask.reshape(-1)]))
    panel.resample()
    assert not torch.allclose(panel.result[~mask], first[~mask])  # new noise, a new sample
    torch.testing.assert_close(panel.result[mask], values)
    panel.view.value = EditPanel.MEAN
    close(panel.current_image, mean)

    # the conditional variance: 0 on the stroke, the conditional's elsewhere, never above the variance before
    assert panel.variance_box.layout.display == "none" and panel.current_variance is None
    panel.variance_toggle.value = True
    assert panel.variance_box.layout.display == ""
    assert torch.all(panel.current_variance[mask] == 0)
    close(panel.current_variance[~mask], rest.variance)
    assert torch.all(panel.current_variance <= d.variance.reshape(shape) + 1e-6)
    if model_kind == "beta":  # independent pixels: the edit decides nothing elsewhere
        close(panel.current_variance[~mask], d.variance.reshape(shape)[~mask])
    panel.reset()  # nothing edited: the variance before any edit
    close(panel.current_variance, d.variance.reshape(shape))


def test_event_xy():
    event = {"relativeX": 30, "relativeY": 10, "boundingRectWidth": 100, "boundingRectHeight": 50,
             "dataX": 0, "dataY": 0}
    assert event_xy(event, 200, 100) == (60, 20)
    assert event_xy({"dataX": 7, "dataY": 9}, 200, 100) == (7, 9)


def test_edit_panel_with_a_model_keeps_strokes_across_z():
    shape = (1, 6, 5)
    model = tiny_vae(shape)
    panel = EditPanel(model, seed=0)
    panel.apply_stroke([(2.0, 2.0)], "black", 1.0)
    panel.new_z_button.click()
    d = decoded(model, panel.z)
    mask = stroke_mask([(2.0, 2.0)], 1.0, 6, 5).expand(1, 6, 5)
    close(panel.current_image,
          d.conditional_mean(mask, torch.zeros(int(mask.sum()))).clamp(0, 1).reshape(shape))


# -- plumbing ------------------------------------------------------------------------------

def test_png_bytes_upscales_with_nearest_neighbour():
    a = np.array([[0, 255], [128, 64]], dtype=np.uint8)
    png = np.array(PILImage.open(io.BytesIO(png_bytes(a, 3))))
    assert np.array_equal(png, np.kron(a, np.ones((3, 3), np.uint8)))
