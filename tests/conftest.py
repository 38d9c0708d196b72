"""Shared test setup: trained runs and caches go to a temporary folder, never to the checkout's
runs/ and cache/ (unless $SOSVAE_RUNS_DIR / $SOSVAE_CACHE_DIR name a folder on purpose)."""
import os
import tempfile

from sosvae_core.paths import ENV_CACHE_DIR, ENV_RUNS_DIR

_SESSION_DIR = None


def pytest_configure(config):
    global _SESSION_DIR
    if not os.environ.get(ENV_RUNS_DIR) or not os.environ.get(ENV_CACHE_DIR):
        _SESSION_DIR = tempfile.TemporaryDirectory(prefix="sosvae-tests-")
        os.environ.setdefault(ENV_RUNS_DIR, os.path.join(_SESSION_DIR.name, "runs"))
        os.environ.setdefault(ENV_CACHE_DIR, os.path.join(_SESSION_DIR.name, "cache"))


def pytest_unconfigure(config):
    if _SESSION_DIR is not None:
        _SESSION_DIR.cleanup()
