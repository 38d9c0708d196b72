"""Shared test setup: trained runs and caches go to a temporary folder, never to the checkout's
runs/ and cache/ (unless $SOSVAE_RUNS_DIR / $SOSVAE_CACHE_DIR name a folder on purpose); the
bundled LFW faces split once for every test that trains on them."""
import os
import tempfile

import pytest

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
