"""The scorecard's measures and rules on synthetic cases, and against dense float64 references."""
import math
import types

import pytest
import torch

from sosvae_core import claims, editing, figures, rules, scorecard as sc
from sosvae_core.observations import LowRankNormal

C, H, W = 1, 12, 10


def face_image():
    """A bright 'face' ellipse in the centre on a dark background, (C, H, W)."""
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    face = ((yy - H / 2) / (H / 3)) ** 2 + ((xx - W / 2) / (W / 3)) ** 2 <= 1
    return face, torch.where(face, 0.8, 0.2).to(torch.float64).expand(C, H, W).clone()


def distribution(columns, mean):
    P = torch.stack([c.flatten() for c in columns], dim=-1).unsqueeze(0)
    return LowRankNormal(mean.flatten().unsqueeze(0), P, 1e-5)


def _dense_concentration(obs, mean, tau=0.1):
    """Claim 5's measure from the dense float64 covariance matrix, with numpy."""
    import numpy as np
    dense = obs.covariance_matrix[0].numpy()
    i = figures.centre_pixel((C, H, W))
    row = dense[i].copy()
    row[i] = 0.0
    positive = np.clip(row, 0, None).reshape(C, H, W).mean(0)
    m = mean.numpy()
    distance = np.sqrt(((m - m[:, H // 2:H // 2 + 1, W // 2:W // 2 + 1]) ** 2).mean(0))
    region, outside = distance <= tau, distance > tau
    region[H // 2, W // 2] = False
    a, b = positive[region].mean(), positive[outside].mean()
    return (a - b) / (a + b)


def _concentration(obs, mean):
    i = figures.centre_pixel((C, H, W))
    cov = obs.covariance_row(i)[0].clone()
    cov[i] = 0
    return sc.covariance_concentration(mean, cov.clamp(min=0).reshape(C, H, W), (H // 2, W // 2))


def test_concentration_matches_a_dense_reference():
    torch.manual_seed(0)
    face, mean = face_image()
    columns = [torch.randn(C, H, W, dtype=torch.float64) for _ in range(4)]
    obs = distribution(columns, mean)
    assert _concentration(obs, mean) == pytest.approx(_dense_concentration(obs, mean), rel=1e-12, abs=1e-12)


def test_a_single_global_component_fails_the_structure_rule():
    face, mean = face_image()
    brightness = torch.ones(C, H, W, dtype=torch.float64) * 0.3  # the whole image brighter or darker
    value = _concentration(distribution([brightness], mean), mean)
    assert abs(value) < 1e-12
    assert claims.check(5, {"median_concentration": value}) is False


def test_covariance_that_follows_the_face_passes_the_structure_rule():
    face, mean = face_image()
    on_face = torch.where(face, 0.3, 0.0).to(torch.float64).expand(C, H, W)
    on_background = torch.where(face, 0.0, 0.3).to(torch.float64).expand(C, H, W)
    value = _concentration(distribution([on_face, on_background], mean), mean)
    assert value == pytest.approx(1.0)
    assert claims.check(5, {"median_concentration": value}) is True


def test_covariance_on_the_background_is_negative_and_fails():
    face, mean = face_image()
    # the central pixel co-varies with the background more than with its own face
    background_heavy = torch.where(face, 0.05, 0.3).to(torch.float64).expand(C, H, W)
    value = _concentration(distribution([background_heavy], mean), mean)
    assert value < 0
    assert claims.check(5, {"median_concentration": value}) is False


def test_a_mean_without_regions_has_no_concentration_and_fails():
    grey = torch.full((C, H, W), 0.5, dtype=torch.float64)
    positive = torch.rand(C, H, W, dtype=torch.float64)
    assert math.isnan(sc.covariance_concentration(grey, positive, (H // 2, W // 2)))
    assert claims.check(5, {"median_concentration": float("nan")}) is False


def _edit(mean, change, stroke):
    conditional = mean + change
    conditional[:, stroke] = mean[:, stroke] - 0.4  # the stroke itself
    mask = torch.zeros(C, H, W, dtype=torch.bool)
    mask[:, stroke] = True
    return sc.edit_locality(mean, conditional, mask)


def test_a_global_colour_cast_fails_the_locality_rule_and_a_regional_edit_passes():
    face, mean = face_image()
    stroke = torch.zeros(H, W, dtype=torch.bool)
    stroke[1, 4:6] = True
    # global cast: every pixel moves by about the same amount (a gentle gradient)
    cast = 0.2 + 0.05 * torch.linspace(0, 1, W, dtype=torch.float64).expand(C, H, W)
    glob = _edit(mean, cast, stroke)
    assert glob["propagation"] > 0.1 and glob["unchanged_fraction"] < 0.05
    assert claims.check(7, {"edits": {"hair": glob}}) is False
    # regional: the background (hair) darkens, the face stays, as in the authors' editor
    regional = _edit(mean, torch.where(face, 0.0, -0.25).to(torch.float64).expand(C, H, W).clone(), stroke)
    assert regional["propagation"] > 0.5 and regional["unchanged_fraction"] > 0.3
    assert claims.check(7, {"edits": {"hair": regional}}) is True
    # the authors' hair edit: the face still moves, about a third as much as hair and
    # background (measured on their editor image); it must pass its own example
    authors = _edit(mean, torch.where(face, -0.08, -0.25).to(torch.float64).expand(C, H, W).clone(), stroke)
    assert authors["unchanged_fraction"] > sc.EDIT_UNCHANGED_MIN
    assert claims.check(7, {"edits": {"hair": authors}}) is True
    # no propagation at all (a pixel-independent model) fails too
    none = _edit(mean, torch.zeros(C, H, W, dtype=torch.float64), stroke)
    assert none["propagation"] == 0.0
    assert claims.check(7, {"edits": {"hair": none}}) is False
    assert claims.check(7, {"edits": {"hair": regional, "forehead": glob}}) is False


def test_slerp_steps_of_an_even_grid_and_of_a_jump():
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    grid = (t[None, :] + 0.5 * t[:, None])[..., None, None, None].expand(7, 7, 1, 2, 2)  # even along both axes
    assert sc.slerp_steps(grid) == pytest.approx(1.0, rel=1e-9)
    jump = grid.clone()
    jump[:, 4:] += 0.5  # one large step in every row
    assert sc.slerp_steps(jump) > sc.SLERP_STEP_RATIO_MAX


def test_slerp_grid_corners_are_the_corner_samples_and_steps_are_even():
    from sosvae_core.networks import VAE
    torch.manual_seed(0)
    model = VAE((3, 8, 6), "sos", latent_dim=3, rank=25, channels=(4, 8), blocks=1).eval()
    with torch.no_grad():
        model.head.factor.weight.normal_(0, 0.1)
    out = sc.slerp_claim(model, n_inner=5)
    assert out["corner_error"] <= 1e-6
    assert claims.check(6, out) is True


def test_rules_of_the_numeric_claims():
    assert claims.check(1, {"coherence_beta": 0.01, "coherence_sos": 0.9}) is True
    assert claims.check(1, {"coherence_beta": 0.3, "coherence_sos": 0.9}) is False
    assert claims.check(2, {"pixel_variance": 0.0322}) is True
    assert claims.check(2, {"pixel_variance": 0.07}) is False and claims.check(2, {"pixel_variance": 0.015}) is False
    fids = {"beta_means": 121.65, "beta_samples": 196.40, "sos_means": 132.93, "sos_samples": 104.62}
    assert claims.check(3, fids) is True  # the paper's own numbers pass
    assert claims.check(3, dict(fids, sos_samples=130.0)) is False
    gray = {"dorta_means": 73.44, "dorta_samples": 77.72, "sos_means": 70.43, "sos_samples": 74.66}
    assert claims.check(4, gray) is True
    assert claims.check(4, dict(gray, sos_means=75.0)) is False
    assert claims.check(8, {"mse_ours": 0.0144, "mse_pca": 0.0142}) is True
    assert claims.check(8, {"mse_ours": 0.02, "mse_pca": 0.0142}) is False
    assert claims.check(9, {"ratio": 11.76 / 0.0322}) is True and claims.check(9, {"ratio": 1.4}) is False
    # claim 10 (beyond the paper): the gain must clear 2 standard errors for both boxes
    inpaint = {"centre_gain": 0.5, "centre_gain_se": 0.2, "random_gain": 0.3, "random_gain_se": 0.1}
    assert claims.check(10, inpaint) is True
    assert claims.check(10, dict(inpaint, random_gain=0.15)) is False  # 1.5 standard errors: not enough
    assert claims.check(10, dict(inpaint, centre_gain=-80.0)) is False  # SOS-VAE worse
    assert claims.check(3, {}) is None  # not measured
    unknown = max(claims.CLAIMS) + 1
    with pytest.raises(ValueError, match=f"unknown claim {unknown}"):
        claims.check(unknown, {})


def test_every_claim_has_a_title_and_a_rule_and_formats():
    assert set(claims.CLAIMS) == set(range(1, 12))
    assert all(c.number == n and c.title and str(c.rule) for n, c in claims.CLAIMS.items())
    assert "beyond the paper" in claims.CLAIMS[10].title and "beyond the paper" in str(claims.CLAIMS[10].rule)
    assert "Sec. 4.1" in claims.CLAIMS[11].title
    rows = [claims.row(2, "celeba", {"pixel_variance": 0.03}, "0.0322"),
            claims.row(7, "celeba", {"edits": {"hair": {"propagation": 1.0, "unchanged_fraction": 0.5}}}, "—"),
            claims.row(4, "celeba64_gray", {}, "—")]
    text = sc.format_scorecard(rows)
    assert "PASS" in text and "n/a" in text and "2 of 2 measured claims pass" in text
    md = sc.markdown_scorecard(rows)
    assert md.count("\n") == len(rows) + 1 and "unchanged 0.50" in md
    fig = sc.plot_scorecard(rows, "t")
    cells = fig.axes[0].tables[0].get_celld()
    assert [cells[(i + 1, 3)].get_text().get_text() for i in range(3)] == ["pass", "pass", "—"]


def test_a_rule_text_and_predicate_come_from_the_same_thresholds():
    rule = rules.Rule("x < {low} (n = {n})", lambda o, low: o["x"] < low, dict(low=1.0), dict(n=3))
    assert str(rule) == "x < 1.0 (n = 3)"
    assert rule({"x": 0.5}) is True and rule({"x": 1.0}) is False and rule({}) is None
    with pytest.raises(ValueError, match="must be its thresholds"):  # the text states one level, the test another
        rules.Rule("x < {low}", lambda o, high: o["x"] < high, dict(low=1.0, high=2.0))
    with pytest.raises(ValueError, match="must be its thresholds"):  # a level the text leaves out
        rules.Rule("x < 1", lambda o, low: o["x"] < low, dict(low=1.0))
    with pytest.raises(ValueError, match="must be its thresholds"):  # a setting the predicate compares against
        rules.Rule("x < {n}", lambda o, n: o["x"] < n, settings=dict(n=3))


def test_evaluate_measures_every_claim_on_its_datasets_main_first(monkeypatch):
    below = rules.Rule("x < {low}", lambda o, low: o["x"] < low, dict(low=0.5))
    measure = lambda bench, dataset: ({"x": 1.0 if dataset == "brain" else 0.0}, f"on {dataset}")  # noqa: E731
    fake = {n: claims.Claim(n, f"claim {n}", where, measure, lambda dataset: f"paper on {dataset}", below)
            for n, where in [(2, lambda ctx: ["brain", ctx.dataset]), (1, lambda ctx: [ctx.dataset])]}
    monkeypatch.setattr(claims, "CLAIMS", fake)
    rows = claims.evaluate(types.SimpleNamespace(dataset="celeba"))
    assert [(r["claim"], r["dataset"], r["pass"]) for r in rows] == [(1, "celeba", True), (2, "celeba", True),
                                                                      (2, "brain", False)]
    assert rows[2] == {"claim": 2, "title": "claim 2", "dataset": "brain", "ours": {"x": 1.0},
                       "paper": "paper on brain", "rule": "x < 0.5", "pass": False, "note": "on brain"}


class FixedMeans(torch.nn.Module):
    """Decodes the i-th of n codes to the i-th row of `means`, whatever the code."""
    latent_dim = 4

    def __init__(self, means):
        super().__init__()
        self.means = torch.nn.Parameter(torch.as_tensor(means, dtype=torch.float64), requires_grad=False)

    def decode(self, z):
        return types.SimpleNamespace(mean=self.means[:z.shape[0]])


def test_variation_of_the_means_by_hand():
    """Three codes, two pixel values. SOS-VAE: pixel 0 stays at 0, pixel 1 takes 0, 2, 4
    (variances 0 and 4, average 2). β-VAE: 1, 3, 5 and 1, 3, 7 (variances 4 and 28/3, average
    20/3). Per code, n/(n − 1) · mean of (μ_i − μ̄)²: SOS-VAE 3, 0, 3; β-VAE 25/3, 1/3, 34/3;
    their differences 16/3, 1/3, 25/3 have mean 14/3, standard deviation 7/√3, SE 7/3."""
    sos = FixedMeans([[0, 0], [0, 2], [0, 4]])
    beta = FixedMeans([[1, 1], [3, 3], [5, 7]])
    spread = sc.mean_spread(sc.prior_means(sos, 3))
    torch.testing.assert_close(spread, torch.tensor([3.0, 0.0, 3.0], dtype=torch.float64))
    out = sc.mean_variation(sos, beta, n=3)
    assert out["variation_sos"] == pytest.approx(2.0) and out["variation_beta"] == pytest.approx(20 / 3)
    assert out["ratio"] == pytest.approx(0.3) and out["n_codes"] == 3
    assert out["difference"] == pytest.approx(14 / 3) and out["difference_se"] == pytest.approx(7 / 3)
    # the same codes decoded by a real model: the variation is the unbiased variance over codes, averaged over pixels
    from sosvae_core.networks import VAE
    torch.manual_seed(0)
    model = VAE((3, 8, 6), "beta", latent_dim=3, channels=(4, 8), blocks=1).eval()
    with torch.no_grad():
        means = model.decode(figures.prior_z(model, 5, seed=2)).mean.double()
    assert sc.mean_variation(model, model, n=5, seed=2)["variation_sos"] == pytest.approx(
        float(means.flatten(1).var(0, unbiased=True).mean()), rel=1e-9)


def test_rule_of_the_variation_of_the_means():
    """Claim 11 passes when the β-VAE's means vary more than SOS-VAE's by more than twice the
    standard error of the paired difference."""
    measured = {"variation_sos": 0.01, "variation_beta": 0.02, "ratio": 0.5, "difference": 0.01, "n_codes": 64}
    assert claims.check(11, dict(measured, difference_se=0.004)) is True  # 2.5 standard errors
    assert claims.check(11, dict(measured, difference_se=0.006)) is False  # 1.7: within the noise of the codes
    assert claims.check(11, dict(measured, difference=-0.01, difference_se=0.001)) is False  # SOS-VAE's vary more
    assert claims.check(11, {"ratio": 0.5}) is None  # not measured
    text = str(claims.CLAIMS[11].rule)
    assert f"{sc.PRIOR_CODES} prior codes" in text and f"> {sc.PAIRED_SE_FACTOR:g} × its standard error" in text


def test_scaled_edit_equals_the_conditional_mean_of_the_scaled_distribution():
    """The authors' editing protocol: condition N(μ, (aP)(aP)ᵀ + εI) on the edit, dense float64."""
    torch.manual_seed(1)

    class Fixed(torch.nn.Module):  # decodes every z to one float64 N(μ, PPᵀ + εI)
        image_shape = (3, 6, 5)

        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Parameter(torch.rand(1, 90, dtype=torch.float64))
            self.factor = torch.nn.Parameter(0.2 * torch.randn(1, 90, 4, dtype=torch.float64))

        def decode(self, z):
            return LowRankNormal(self.loc, self.factor, 1e-5)

    model = Fixed()
    table = {"dot": dict(stroke=(0.5, 0.5, 0.5, 0.5), colour=(0.1, 0.2, 0.9), width=0.01)}
    z = torch.randn(1, 3, dtype=torch.float64)
    out = editing.edit_sequence(model, z, ["dot"], edit_table=table, component_scale=0.03)
    obs = model.decode(z)
    mu, P = obs.loc[0], 0.03 * obs.cov_factor[0]
    sigma = P @ P.T + 1e-5 * torch.eye(P.shape[0], dtype=torch.float64)
    m = out["masks"][0].flatten()
    b = out["edited"][0].flatten()[m]
    want = mu.clone()
    want[~m] = mu[~m] + sigma[~m][:, m] @ torch.linalg.solve(sigma[m][:, m], b - mu[m])
    want[m] = b
    torch.testing.assert_close(out["conditional"][0].flatten(), want, rtol=1e-7, atol=1e-9)
    assert m.sum() == 6  # the two pixels nearest the point, all three channels


def test_training_variance_reads_the_last_logged_epoch(tmp_path):
    (tmp_path / "metrics_epochs.csv").write_text("epoch,mean_variance\n0,0.5\n1,0.0625\n")

    class Run:
        run_dir = tmp_path

    assert sc.training_variance(Run()) == 0.0625
    assert math.isnan(sc.training_variance(object()))  # no run folder: not logged


def test_table1_numbers_feed_claims_3_and_4():
    rows = [{"dataset": "celeba", "model": k, "n": 250, "fid_means": m, "fid_samples": s}
            for k, m, s in [("beta", 120.0, 200.0), ("sos", 130.0, 110.0), ("dorta", 140.0, 150.0)]]
    numbers = sc.table1_numbers(rows, "celeba", ("beta", "sos"))
    assert numbers == {"beta_means": 120.0, "beta_samples": 200.0, "sos_means": 130.0, "sos_samples": 110.0, "n": 250}
    assert claims.check(3, numbers) is True  # 110 < 200 and 110 ≤ 120
    assert claims.check(4, sc.table1_numbers(rows, "celeba", ("dorta", "sos"))) is True
    rows[1]["fid_samples"] = 125.0  # worse than the β-VAE means
    assert claims.check(3, sc.table1_numbers(rows, "celeba", ("beta", "sos"))) is False
    with pytest.raises(ValueError, match="no Table 1 row"):
        sc.table1_numbers(rows, "brain", ("beta", "sos"))


def test_kid_is_ruled_beside_fid_and_a_disagreement_is_flagged():
    rows = [{"dataset": "celeba", "model": k, "n": 250, "fid_means": m, "fid_samples": s, "kid_means": km,
             "kid_samples": ks} for k, m, s, km, ks in [("beta", 120.0, 200.0, 30.0, 90.0), ("sos", 130.0, 110.0, 35.0, 25.0)]]
    numbers = sc.table1_numbers(rows, "celeba", ("beta", "sos"))
    assert numbers["kid"] == {"beta_means": 30.0, "beta_samples": 90.0, "sos_means": 35.0, "sos_samples": 25.0}
    assert claims.kid_agreement(3, numbers) == "KID agrees (pass)" and numbers["kid_verdict"] is True
    rows[1]["kid_samples"] = 31.0  # KID: SOS samples worse than the β-VAE means, FID still passes
    numbers = sc.table1_numbers(rows, "celeba", ("beta", "sos"))
    assert claims.kid_agreement(3, numbers) == "FID AND KID DISAGREE: the rule on KID would fail"
    assert claims.check(3, numbers) is True  # the verdict stays FID's, as the rule says
    line = claims.row(3, "celeba", numbers, "paper", claims.kid_agreement(3, numbers))
    assert "KID×10³: beta_means 30" in sc.ours_text(line) and "DISAGREE" in sc.markdown_claim([line], 3)
    del rows[0]["kid_means"]  # rows without KID: nothing to compare
    assert claims.kid_agreement(3, sc.table1_numbers(rows, "celeba", ("beta", "sos"))) == ""


def test_median_concentration_of_a_panel_needs_a_region_in_most_codes():
    face, mean = face_image()
    on_face = torch.where(face, 0.3, 0.0).to(torch.float64).expand(C, H, W)
    grey = torch.full((C, H, W), 0.5, dtype=torch.float64)
    panel = {"mean": torch.stack([mean, mean, grey]), "cov_positive": torch.stack([on_face, on_face * 0.5, on_face])}
    assert sc.median_concentration(panel) == pytest.approx(1.0)  # two of three codes measured, both 1
    panel = {"mean": torch.stack([mean, grey, grey]), "cov_positive": torch.stack([on_face] * 3)}
    assert math.isnan(sc.median_concentration(panel))  # one of three codes has a region
