import pytest
import torch

from sosvae_core import figures, pca_baseline
from sosvae_core.networks import VAE
from sosvae_core.observations import DistributionOnly
from sosvae_core.slerp import slerp

SHAPE = (1, 10, 8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = VAE(SHAPE, "sos", channels=(8, 16), blocks=1, latent_dim=4, rank=3).eval()
    with torch.no_grad():  # give P some size so the figures are not trivial
        m.head.factor.weight.normal_(0, 0.05)
    return m


def test_spatial_coherence_separates_smooth_from_independent_noise():
    g = torch.Generator().manual_seed(0)
    iid = torch.randn(20, 1, 32, 32, generator=g)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(20, 1, 36, 36, generator=g), 5, stride=1)
    assert abs(figures.spatial_coherence(iid)) < 0.05
    assert figures.spatial_coherence(smooth) > 0.7


def test_observation_panel_rows_follow_the_distribution(model):
    z = torch.randn(2, 4)
    panel = figures.observation_panel(model, z, seed=3)
    obs = model.decode(z)
    torch.testing.assert_close(panel["mean"].flatten(1), obs.mean)
    torch.testing.assert_close(panel["variance"].flatten(1), obs.variance)
    torch.testing.assert_close(panel["difference"], panel["sample"] - panel["mean"])
    centre = figures.centre_pixel(SHAPE)
    row = obs.covariance_row(centre)
    row[:, centre] = 0
    torch.testing.assert_close((panel["cov_positive"] - panel["cov_negative"]).flatten(1), row)


def test_fig2_map_rows_have_one_scale_and_colour_bar_per_model(model):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panel = figures.observation_panel(model, torch.randn(2, 4, generator=torch.Generator().manual_seed(0)), seed=3)
    panel["cov_negative"] = panel["cov_positive"].flip(-1)  # this small model's covariance is all positive
    louder = {k: (v * 3 if k not in ("mean", "sample") else v) for k, v in panel.items()}
    fig = figures.plot_observation_panels({"a": panel, "b": louder}, n_cols=2)
    axes = fig.axes[:len(figures.ROW_TITLES) * 4]
    bars = fig.axes[len(axes):]
    assert len(bars) == 4 * 2  # one colour bar per map row and model
    plt.close(fig)
    # a row that is zero everywhere (a diagonal model's covariance between pixels) says so, without a bar
    zero = dict(panel, cov_positive=torch.zeros_like(panel["cov_positive"]))
    fig = figures.plot_observation_panels({"a": zero, "b": louder}, n_cols=2)
    assert len(fig.axes) == len(axes) + 7
    assert [t.get_text() for t in fig.axes[4 * 4].texts] == ["0 everywhere"]
    plt.close(fig)
    fig = figures.plot_observation_panels({"a": panel, "b": louder}, n_cols=2)
    for r, kind in enumerate(figures.ROW_TITLES):
        for m, p in enumerate((panel, louder)):
            limits = {ax.images[0].get_clim() for ax in axes[r * 4 + 2 * m:r * 4 + 2 * (m + 1)]}
            assert len(limits) == 1, f"row {kind} mixes scales within a model"
            if kind in ("mean", "sample"):
                assert limits == {(0.0, 1.0)}
            else:
                assert limits.pop()[1] == pytest.approx(float(p[kind][:2].mean(1).abs().max()), rel=1e-5)
    plt.close(fig)


def test_plot_mosaics_draws_each_block_as_one_grid():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    blocks = {"left": torch.rand(3, 4, 1, 5, 6), "right": torch.rand(3, 4, 1, 5, 6)}
    fig = figures.plot_mosaics(blocks, "title")
    assert [ax.get_title() for ax in fig.axes] == ["left", "right"]
    height, width = fig.axes[0].images[0].get_array().shape[:2]
    assert (height, width) == (3 * 5 + 4 * 1, 4 * 6 + 5 * 1)  # make_grid's 1-pixel padding
    plt.close(fig)


def test_slerp_grid_corners_and_edges(model):
    z = torch.randn(1, 4)
    grid = figures.slerp_grid(model, z, n=3, seed=1)
    assert grid.shape == (5, 5, *SHAPE)
    obs = model.decode(z)
    g = torch.Generator().manual_seed(1)
    tl, tr, bl, br = torch.randn(4, 3, generator=g, dtype=torch.float64)
    omega_d = torch.randn(obs.loc.shape, generator=g)
    corner = obs.rsample(omega_p=tl.float()[None], omega_d=omega_d)
    torch.testing.assert_close(grid[0, 0].flatten(), corner[0], atol=1e-5, rtol=1e-5)
    mid_top = obs.rsample(omega_p=slerp(tl, tr, 0.5).float()[None], omega_d=omega_d)
    # grid[row, col]: the top row walks from tl (left) to tr (right)
    torch.testing.assert_close(grid[0, 2].flatten(), mid_top[0], atol=1e-5, rtol=1e-5)


def test_component_sweep_at_scale_one_is_the_sample(model):
    z = torch.randn(1, 4)
    sweep = figures.component_sweep(model, z, [0, 2], scales=torch.tensor([1.0, 0.0]), others=1.0, seed=2)
    obs = model.decode(z)
    g = torch.Generator().manual_seed(2)
    wp, wd = torch.randn(1, 3, generator=g), torch.randn(obs.loc.shape, generator=g)
    torch.testing.assert_close(sweep[0, 0].flatten(), obs.rsample(omega_p=wp, omega_d=wd)[0], atol=1e-5, rtol=1e-4)
    # scale 0 is floored at 0.03 as in the paper's code: that component only, scaled by 0.03
    want = obs.scale_components(torch.tensor([1.0, 1.0, 0.03])).rsample(omega_p=wp, omega_d=wd)[0]
    torch.testing.assert_close(sweep[1, 1].flatten(), want, atol=1e-5, rtol=1e-4)


def test_pca_comparison_on_exactly_low_rank_data():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(30, 2, generator=g)
    train = (0.5 + torch.randn(200, 2, generator=g) @ basis.T * 0.1).reshape(200, 1, 5, 6)
    held = (0.5 + torch.randn(20, 2, generator=g) @ basis.T * 0.1).reshape(20, 1, 5, 6)
    pca = pca_baseline.fit_pca(train, n_components=2)
    dist = DistributionOnly((1, 5, 6), rank=2)
    with torch.no_grad():
        dist.loc.copy_(torch.from_numpy(pca.mean_).float())
        dist.cov_factor.copy_(basis * 0.1)
    numbers = pca_baseline.compare_with_pca(dist, pca, held)
    assert numbers["recon_mse_pca"] < 1e-10 and numbers["recon_mse_ours"] < 1e-10
    assert pca_baseline.pca_samples(pca, 7).shape == (7, 30)


def test_record_merges_json_atomically(tmp_path):
    figures.record(tmp_path, a=1)
    data = figures.record(tmp_path, b=2.5)
    assert data == {"a": 1, "b": 2.5}
    assert not list(tmp_path.glob(".*.tmp"))


def test_variance_during_training_draws_each_runs_log(tmp_path):
    for name, scale in (("a", 1.0), ("b", 10.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics_steps.csv").write_text(
            "step,mean_variance\n" + "".join(f"{i},{scale * (i + 1)}\n" for i in range(4)))
    fig = figures.plot_variance_during_training({"a": tmp_path / "a", "b": tmp_path / "b"}, "t")
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["a", "b"] and fig.axes[0].get_yscale() == "log"
    assert list(lines[1].get_ydata()) == [10.0, 20.0, 30.0, 40.0]


def test_prior_codes_are_drawn_one_way_with_each_callers_stream():
    """figures.prior_z and VAE.sample_prior draw through networks.prior_codes: N(0, I) codes on the
    CPU, n·latent_dim normals of the caller's generator, in order (a fresh one per seed for prior_z)."""
    from sosvae_core.networks import prior_codes
    m = VAE(SHAPE, "sos", channels=(8, 16), blocks=1, latent_dim=4, rank=3).eval()
    expected = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(figures.prior_z(m, 5, 3), expected)
    assert torch.equal(prior_codes(4, 5, torch.Generator().manual_seed(3)), expected)
    assert prior_codes(4, 2).device.type == "cpu" and prior_codes(4, 2).dtype == torch.float32
    ours, theirs = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    with torch.no_grad():
        assert torch.equal(m.sample_prior(3, generator=ours).mean, m.decode(torch.randn(3, 4, generator=theirs)).mean)
    assert torch.equal(torch.randn(2, generator=ours), torch.randn(2, generator=theirs))  # no more of the stream used
