"""Where things live: the environment variables, and the one default for runs and caches.

    $SOSVAE_DATA_ROOT    the dataset folder (celeba/, brain_oasis/); unset: the bundled data
    $SOSVAE_RUNS_DIR     the parent of the run folders (trained models)
    $SOSVAE_CACHE_DIR    decoded images and FID reference statistics
    $SOSVAE_FID_WEIGHTS  the Inception weights file for FID
    $SOSVAE_AUTHORS_FIGURES  a folder with the authors' showcase images (optional; a test
                         re-measures the scorecard's reference numbers on them)

The command line (`python -m sosvae_core train`), `run_all.sh` and the notebooks in
Jupyter all find their runs in the same folder, so a model trained by one is loaded by
the others: `--runs-dir` / `runs_dir=` if given, else $SOSVAE_RUNS_DIR, else `runs/` in
the home folder below. The cache is `--cache-dir` / $SOSVAE_CACHE_DIR, else `cache/`
beside the runs folder.

The home folder is the source checkout when the package is imported from one (an editable
install: `pyproject.toml` beside the package), else `~/.cache/sosvae`. It does not depend
on the working directory, which differs between Jupyter (`notebooks/`) and the shell.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

ENV_DATA_ROOT = "SOSVAE_DATA_ROOT"
ENV_RUNS_DIR = "SOSVAE_RUNS_DIR"
ENV_CACHE_DIR = "SOSVAE_CACHE_DIR"
ENV_FID_WEIGHTS = "SOSVAE_FID_WEIGHTS"
ENV_AUTHORS_FIGURES = "SOSVAE_AUTHORS_FIGURES"

_PACKAGE = Path(__file__).resolve().parent


def home() -> Path:
    """The source checkout holding this package, else ~/.cache/sosvae."""
    checkout = _PACKAGE.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache) if cache else Path.home() / ".cache") / "sosvae"


def _env(name: str) -> Optional[Path]:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def runs_root(runs_dir=None) -> Path:
    """The parent of the run folders: the argument, else $SOSVAE_RUNS_DIR, else <home>/runs."""
    if runs_dir is not None and str(runs_dir) != "":
        return Path(runs_dir).expanduser()
    return _env(ENV_RUNS_DIR) or home() / "runs"


def cache_root(cache_dir=None, runs_dir=None) -> Path:
    """The cache: the argument, else $SOSVAE_CACHE_DIR, else cache/ beside the runs folder."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    return _env(ENV_CACHE_DIR) or runs_root(runs_dir).parent / "cache"
