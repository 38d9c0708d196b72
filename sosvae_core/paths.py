"""Where things live and how they are written: the environment variables, the one default for
runs and caches, and the atomic writes every file of a run, cache or report goes through.

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

Every file is written atomically (`atomic_file`): to a uniquely named temp file beside it,
flushed to disk, then renamed over the old one, so that a reader, another process or a run
killed half-way never sees a half-written checkpoint, cache, metrics log or JSON.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

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


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb", **open_kwargs) -> Iterator[Any]:
    """Open a temp file beside `path` for writing; on success fsync it and rename it over `path`.

    On any error the temp file is removed and `path` keeps its old content. Files are made
    readable by all (0644), as a cache may be shared. `mode` is "wb" or "w" (text: utf-8 unless
    `encoding` is given)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'wb' or 'w', not {mode!r}")
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> Path:
    """Write `text` (utf-8) to `path` atomically."""
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path, obj: Any, sort_keys: bool = True) -> Path:
    """Write `obj` as indented JSON to `path` atomically (numbers numpy or torch gives become floats)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=float))
