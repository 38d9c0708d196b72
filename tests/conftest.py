"""Shared test setup: trained runs and caches go to a temporary folder, never to the checkout's
runs/ and cache/ (unless $SOSVAE_RUNS_DIR / $SOSVAE_CACHE_DIR name a folder on purpose); the
bundled LFW faces split once for every test that trains on them."""
import os
import tempfile

import pytest
import torch

from sosvae_core.paths import ENV_CACHE_DIR, ENV_RUNS_DIR

_SESSION_DIR = None


def pytest_configure(config):
    global _SESSION_DIR
    unset = [name for name in (ENV_RUNS_DIR, ENV_CACHE_DIR) if not os.environ.get(name, "").strip()]
    if unset:  # an empty value counts as unset, as in sosvae_core.paths
        _SESSION_DIR = tempfile.TemporaryDirectory(prefix="sosvae-tests-")
        for name in unset:
            os.environ[name] = os.path.join(_SESSION_DIR.name, "runs" if name == ENV_RUNS_DIR else "cache")


def pytest_unconfigure(config):
    if _SESSION_DIR is not None:
        _SESSION_DIR.cleanup()


@pytest.fixture(scope="session")
def lfw():
    """The bundled LFW faces' seeded splits (70 / 20 / 10): what the smoke tests train on."""
    from sosvae_core.data import load_splits
    return load_splits("lfw", n_images=200, seed=42, progress=False)


def synthetic_lowrank_dataset(
    n: int,
    image_shape=(1, 8, 8),
    rank: int = 2,
    seed: int = 0,
    noise: float = 0.02,
    factor_scale: float = 0.1,
) -> tuple:
    """Images drawn from a known low-rank Gaussian N(mu, P P^T + noise^2 I).

    Returns ``(dataset, mu, P)`` with ``mu`` of shape (D,) and ``P`` of shape
    (D, rank), D = C*H*W (flattened in C, H, W order; ``mu.view(image_shape)``
    gives the mean image). ``mu`` is a smooth image around 0.5 and the columns
    of ``P`` are random with per-pixel std about ``factor_scale`` in total.
    Samples may leave [0, 1], so the dataset has a float32 backing tensor and
    never flips.
    """
    c, h, w = (int(v) for v in image_shape)
    d = c * h * w
    g = torch.Generator().manual_seed(int(seed))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    base = 0.5 + 0.2 * torch.cos(torch.pi * xx / 2) * torch.cos(torch.pi * yy / 2) - 0.1
    mu = (base[None].expand(c, h, w) + 0.05 * torch.arange(c).view(c, 1, 1)).reshape(d).to(torch.float64)
    p = torch.randn(d, rank, generator=g, dtype=torch.float64) * (factor_scale / max(rank, 1) ** 0.5)
    z = torch.randn(n, rank, generator=g, dtype=torch.float64)
    eps = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = mu + z @ p.T + noise * eps
    from sosvae_core.data import ImageTensorDataset
    ds = ImageTensorDataset(
        x.to(torch.float32).view(n, c, h, w), name="synthetic_lowrank",
        transform_description=f"synthetic low-rank gaussian rank={rank} noise={noise} seed={seed}",
        flip=False,
    )
    return ds, mu.to(torch.float32), p.to(torch.float32)


@pytest.fixture
def lowrank_data():
    """`synthetic_lowrank_dataset`, for tests that need images of a known covariance."""
    return synthetic_lowrank_dataset


@pytest.fixture
def no_ambient_cache(monkeypatch):
    """For the data tests: a CI-wide cache dir must not receive (or serve) the fake datasets."""
    monkeypatch.delenv(ENV_CACHE_DIR, raising=False)


@pytest.fixture
def celeba_root(tmp_path):
    """A data root holding 40 fake aligned-CelebA JPEGs (178×218) in img_align_celeba/."""
    from data_fakes import write_images
    write_images(tmp_path / "img_align_celeba", 40)
    return tmp_path


@pytest.fixture
def full_disk(monkeypatch):
    """A disk that fills up, without root: every file `paths.atomic_file` opens takes writes until
    `limit` bytes in all have been written, then raises ENOSPC. Returns the function that sets
    the limit (None: no limit)."""
    import errno
    real, left = os.fdopen, {"bytes": None}

    class Filling:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            if left["bytes"] is not None:
                if len(data) > left["bytes"]:
                    left["bytes"] = 0
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                left["bytes"] -= len(data)
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Filling(real(fd, *a, **k)))
    return lambda limit: left.update(bytes=limit)
