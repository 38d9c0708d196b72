"""Shared test setup: trained runs and caches go to a temporary folder, never to the checkout's
runs/ and cache/ (unless $SOSVAE_RUNS_DIR / $SOSVAE_CACHE_DIR name a folder on purpose)."""
import os
import tempfile

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
