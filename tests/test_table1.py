"""Table 1 for trained runs: images generated from a model and their FID, the paper's values, the
formatting, test codes and the fid command."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributions as D

from sosvae_core import fid, kid, table1


@pytest.fixture(scope="module")
def extractor() -> fid.FeatureExtractor:
    # Explicit empty hub dir: the tests must not depend on the user's cache.
    return fid.load_feature_extractor(hub_dir="/nonexistent-hub-dir")


class FakeSOSModel(torch.nn.Module):
    """Tiny stand-in for the VAE: decode(z) -> p(x|z) over flattened pixels.

    Like the SOS-VAE decoder, p(x|z) is a Gaussian with a low-rank-plus-
    diagonal covariance, so .sample() differs from .mean by correlated noise.
    """

    def __init__(self, latent_dim: int = 4, image_shape: tuple[int, int, int] = (1, 28, 28), rank: int = 2):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = image_shape
        d = int(np.prod(image_shape))
        self.to_mean = torch.nn.Linear(latent_dim, d)
        self.to_factor = torch.nn.Linear(latent_dim, d * rank)
        self.rank = rank
        with torch.no_grad():
            g = torch.Generator().manual_seed(123)
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def decode(self, z: torch.Tensor) -> D.Distribution:
        mean = torch.sigmoid(self.to_mean(z))
        factor = 0.05 * torch.tanh(self.to_factor(z)).reshape(z.shape[0], -1, self.rank)
        diag = torch.full_like(mean, 0.01**2)
        return D.LowRankMultivariateNormal(mean, factor, diag)



@pytest.mark.slow
def test_self_fid_is_zero_and_fid_grows_with_noise(extractor, tmp_path):
    model = FakeSOSModel()
    n = 16
    ref = fid.reference_statistics(
        {"data": "fake model means", "seed": 0},
        lambda: table1.generate_images(model, n, "means", batch_size=n, seed=0),
        extractor,
        tmp_path,
        n=n,
        progress=False,
    )
    assert ref[2] == n

    # Same model, same seed: the very same images, so FID ~ 0.
    result = table1.fid_of_model(model, ref, n, "means", extractor, batch_size=n, seed=0, progress=False)
    assert result["n"] == n and result["n_reference"] == n and result["what"] == "means"
    assert result["backend"] == extractor.backend and result["weights_sha256"] == extractor.weights_sha256
    scale = np.trace(ref[1])  # rounding error is relative to the covariance size
    assert abs(result["fid"]) < 1e-6 * scale + 1e-3

    clean = torch.cat(list(table1.generate_images(model, n, "means", batch_size=n, seed=0))).float() / 255
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(clean.shape, generator=g)
    fids, kids = [abs(result["fid"])], [result["kid"]]
    assert ref[3].shape == (n, 2048) and result["kid_std"] >= 0 and result["kid_subsets"] == "100 × 8"
    for level in (0.05, 0.2):
        act = fid.activations([clean + level * noise], extractor, progress=False)
        fids.append(fid.frechet_distance(act.mean(0), np.cov(act, rowvar=False), ref[0], ref[1]))
        kids.append(kid.kernel_inception_distance(act, ref[3], seed=0)["kid"])
    assert fids[0] < fids[1] < fids[2], fids
    assert kids[0] < kids[1] < kids[2], kids


# ---------------------------------------------------------------------------
# Generation from a model
# ---------------------------------------------------------------------------


def test_generate_images_seeded_means_and_samples():
    model = FakeSOSModel()
    model.train()

    def images(what: str, seed: int) -> torch.Tensor:
        return torch.cat(list(table1.generate_images(model, 10, what, batch_size=4, seed=seed)))

    torch.manual_seed(99)
    global_state = torch.get_rng_state()
    means = images("means", 0)
    samples = images("samples", 0)
    assert torch.equal(torch.get_rng_state(), global_state)  # caller's RNG untouched
    assert model.training  # mode restored

    for x in (means, samples):
        assert x.dtype == torch.uint8 and x.shape == (10, 1, 28, 28)
    assert torch.equal(means, images("means", 0))
    assert torch.equal(samples, images("samples", 0))
    assert not torch.equal(means, images("means", 1))
    assert not torch.equal(samples, means)
    # a sample is its mean plus small, correlated noise
    assert (samples.float() - means.float()).abs().mean() < 0.1 * 255

    batches = list(table1.generate_images(model, 10, "means", batch_size=4))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    with pytest.raises(ValueError):
        next(table1.generate_images(model, 1, "modes"))


def test_generate_images_from_given_codes():
    """codes replace the prior's draws, in order; a wrong shape is a one-line error."""
    model = FakeSOSModel()
    codes = torch.randn(7, model.latent_dim, generator=torch.Generator().manual_seed(5))
    means = torch.cat(list(table1.generate_images(model, 6, "means", batch_size=4, codes=codes)))
    with torch.no_grad():
        expected = fid.to_uint8(model.decode(codes[:6]).mean.reshape(6, *model.image_shape))
    assert torch.equal(means, expected)
    assert not torch.equal(means, torch.cat(list(table1.generate_images(model, 6, "means", batch_size=4))))
    samples = torch.cat(list(table1.generate_images(model, 6, "samples", batch_size=4, codes=codes)))
    assert torch.equal(samples, torch.cat(list(table1.generate_images(model, 6, "samples", batch_size=4, codes=codes))))
    assert not torch.equal(samples, means)
    for bad in (codes[:5], codes[:, :3], codes[0]):
        with pytest.raises(ValueError, match="codes must have shape"):
            next(table1.generate_images(model, 6, "means", codes=bad))


def test_posterior_codes_needs_an_encoder():
    from sosvae_core.observations import DistributionOnly

    with pytest.raises(ValueError, match="distribution model has no encoder"):
        table1.posterior_codes(DistributionOnly((1, 8, 8), rank=2), 4)


def test_fid_cli_on_a_trained_run(tmp_path, capsys, monkeypatch):
    """`python -m sosvae_core fid --run RUN`: one JSON line with the number and its protocol."""
    import json

    from sosvae_core.__main__ import main as cli
    from sosvae_core.data import load_splits
    from sosvae_core.runs import load_run

    run = tmp_path / "run"
    assert cli(["train", "--config", "lfw", "--profile", "smoke", "--run-dir", str(run), "--no-progress",
                "--set", "epochs=1", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert cli(["fid", "--run", str(run), "--n", "12", "--what", "samples", "--cache-dir", str(tmp_path / "cache"),
                "--device", "cpu", "--batch-size", "12"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["fid"] > 0 and result["n"] == 12 and result["what"] == "samples"
    assert result["backend"].startswith("torchscript") and len(result["weights_sha256"]) == 64
    assert "biased upward" in result["note"]
    assert result["codes"] == "prior"
    assert list((tmp_path / "cache" / "fid").glob("*.npz")), "reference statistics were not cached"
    assert "fid_inf" not in result

    # --extrapolate adds FID∞ from subsets of the same 12 images (two sizes here, to keep the test short)
    from sosvae_core import fid
    full_fid, original = result["fid"], fid.fid_infinity
    monkeypatch.setattr(fid, "fid_infinity", lambda act, reference, seed=0: original(act, reference, ns=[6, 12],
                                                                                      repeats=1, seed=seed))
    assert cli(["fid", "--run", str(run), "--n", "12", "--what", "samples", "--cache-dir", str(tmp_path / "cache"),
                "--device", "cpu", "--batch-size", "12", "--extrapolate"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["fid"] == pytest.approx(full_fid)
    assert np.isfinite(result["fid_inf"]) and np.isfinite(result["fid_inf_slope"])
    # the line through (1/6, FID₆) and (1/12, FID₁₂) meets 1/N = 0 at 2·FID₁₂ − FID₆
    assert result["fid_inf"] == pytest.approx(full_fid - result["fid_inf_slope"] / 12)

    # the posterior means of the test images (10 of the smoke subset's 100) instead of the prior
    common = ["--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--batch-size", "8", "--what", "means"]
    assert cli(["fid", "--run", str(run), "--n", "8", "--codes", "test", *common]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["codes"] == "test" and result["n"] == 8 and result["fid"] > 0
    assert 0 <= result["reference_overlap"] <= 8
    model = load_run(run, "cpu")
    got = table1.posterior_codes(model, 8, cache_dir=tmp_path / "cache", progress=False)
    splits = load_splits("lfw", n_images=model.config.n_images, seed=model.config.split_seed,
                         cache_dir=tmp_path / "cache", progress=False)
    model.eval()
    with torch.no_grad():
        expected = model.encode(splits["test"].images[:8].float() / 255).loc
    torch.testing.assert_close(got["codes"], expected)
    assert got["reference_overlap"] == result["reference_overlap"]
    with pytest.raises(ValueError, match="holds 10 images"):
        table1.posterior_codes(model, 11, cache_dir=tmp_path / "cache", progress=False)


# Table 1 as the paper prints it (method, dataset, FID; the dataset cell is left empty
# below its first row), tab-separated as in the paper's text.
PAPER_TABLE1_TEXT = """\
β -VAE (MEANS)\tCELEBA\t121.65
β -VAE (SAMPLES)\t\t196.40
SOS-VAE (MEANS)\t\t132.93
SOS-VAE (SAMPLES)\t\t104.62
β -VAE (MEANS)\tUKBB\t211.24
β -VAE (SAMPLES)\t\t332.89
SOS-VAE (MEANS)\t\t141.87
SOS-VAE (SAMPLES)\t\t79.712
β -VAE (MEANS)\t64x64 GRAYSCALE CELEBA\t90.97
β -VAE (SAMPLES)\t\t257.11
DORTA ET AL. (MEANS)\t\t73.44
DORTA ET AL. (SAMPLES)\t\t77.72
SOS-VAE (MEANS)\t\t70.43
SOS-VAE (SAMPLES)\t\t74.66
"""


def test_paper_table1_values_are_the_papers_printed_numbers():
    datasets = {"CELEBA": "celeba", "UKBB": "brain", "64x64 GRAYSCALE CELEBA": "celeba64_gray"}
    models = {"β -VAE": "beta", "SOS-VAE": "sos", "DORTA ET AL.": "dorta"}
    parsed, dataset = {}, None
    for line in PAPER_TABLE1_TEXT.splitlines():
        method, cell, value = line.split("\t")
        dataset = datasets[cell] if cell else dataset
        name, what = method.rsplit(" (", 1)
        parsed.setdefault((dataset, models[name]), {})[what.rstrip(")")] = float(value)
    assert len(parsed) == 7 and sum(len(v) for v in parsed.values()) == 14
    assert {k: (v["MEANS"], v["SAMPLES"]) for k, v in parsed.items()} == table1.PAPER_TABLE1
    assert table1.PAPER_N == 50_000  # the caption's and Section 4.3's N


def test_format_table1_puts_the_papers_values_beside_ours_and_names_the_brain_stand_in():
    rows = [{"dataset": d, "model": k, "n": 250, "n_reference": 600, "fid_means": 200.0 + i, "fid_samples": 300.0 + i,
             "paper_means": table1.PAPER_TABLE1[(d, k)][0], "paper_samples": table1.PAPER_TABLE1[(d, k)][1],
             "kid_means": 40.0 + i, "kid_means_std": 2.04, "kid_samples": 61.25, "kid_samples_std": 3.0}
            for i, (d, k) in enumerate([("celeba", "sos"), ("brain", "beta")])]
    lines = table1.format_table1(rows).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| celeba | SOS-VAE | 250 / 600 | 200.00 | 132.93 | 300.00 | 104.62 | 40.0 ± 2.0 | 61.2 ± 3.0 |"
    assert lines[3] == ("| brain: OASIS (paper: UK Biobank) | β-VAE | 250 / 600 | 201.00 | 211.24 | 301.00 | 332.89 | "
                        "41.0 ± 2.0 | 61.2 ± 3.0 |")


def test_a_damaged_fid_cache_is_named_with_its_fix(tmp_path):
    from types import SimpleNamespace

    from sosvae_core.paths import DamagedFile
    (tmp_path / "fid.json").write_text('{"means|n=5": ')
    model = SimpleNamespace(run_dir=tmp_path)
    extractor = SimpleNamespace(backend="b", weights_sha256="w")
    with pytest.raises(DamagedFile, match=r"fid.json is not valid JSON \(.*\); delete it: FID results are recomputed"):
        table1._cached_fid(model, (None, None, 5), 5, "means", extractor, 0, False)
