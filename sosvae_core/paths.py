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
beside the runs folder (`cache_root`; the data layer called on its own caches only where told).

The home folder is the source checkout when the package is imported from one (an editable
install: `pyproject.toml` beside the package), else `~/.cache/sosvae`. It does not depend
on the working directory, which differs between Jupyter (`notebooks/`) and the shell.

Every whole file is written atomically (`atomic_file`): to a uniquely named temp file beside
it, flushed to disk, then renamed over the old one, so that a reader, another process or a run
killed half-way never sees a half-written checkpoint, cache or JSON. (The metrics logs grow by
whole rows instead, and a resumed run cuts them back to its checkpoint: `train.Trainer`.)
JSON is strict: NaN and ±inf are written as null.

One writer at a time: `folder_lock` holds an OS file lock on a folder (a run folder) for as
long as the process lives; a second writer is told, in one line, which process holds it.
Readers take no lock. A failed read or write becomes one line naming the path and the fix
(`os_error_message`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

try:
    import fcntl
except ImportError:  # Windows: no flock; run folders go unlocked there
    fcntl = None

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


def cache_root(cache_dir=None, runs_dir=None, beside_runs: bool = True) -> Optional[Path]:
    """The cache: the argument, else $SOSVAE_CACHE_DIR, else cache/ beside the runs folder.

    `cache_dir=False` turns the cache off (None). `beside_runs=False` is the data layer's
    default: a library call that names no cache and finds no $SOSVAE_CACHE_DIR caches nothing
    (None), so that it never writes where it was not told to."""
    if cache_dir is False:
        return None
    if cache_dir not in (None, True) and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    return _env(ENV_CACHE_DIR) or (runs_root(runs_dir).parent / "cache" if beside_runs else None)


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb", **open_kwargs) -> Iterator[Any]:
    """Open a temp file beside `path` for writing; on success fsync it and rename it over `path`.

    On any error the temp file is removed and `path` keeps its old content; a failed write
    (disk full, read-only) raises its OSError naming `path`, also where the writer wrapped it
    (torch.save reports a full disk as "unexpected pos …"). Files are made readable by all
    (0644), as a cache may be shared. `mode` is "wb" or "w" (text: utf-8 unless `encoding` is given)."""
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
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = os_error_in(err) if isinstance(err, Exception) else None
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from err


def write_text(path, text: str) -> Path:
    """Write `text` (utf-8) to `path` atomically."""
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def _finite(obj: Any) -> Any:
    """`obj` with every non-finite float as None: strict JSON has no NaN or Infinity."""
    if isinstance(obj, float):  # numpy's float64 too
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path, obj: Any, sort_keys: bool = True) -> Path:
    """Write `obj` as indented JSON to `path` atomically (numbers numpy or torch gives become floats;
    NaN and ±inf become null)."""
    return write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=sort_keys, allow_nan=False,
                                       default=lambda x: _finite(float(x))))


def first_line(exc: BaseException) -> str:
    """First line of an exception message, bounded: torch's load errors run to paragraphs."""
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return text if len(text) <= 160 else text[:157] + "..."


class DamagedFile(ValueError):
    """A file that exists but cannot be read as what it should be; the message names it and the fix."""


def read_json(path, fix: str) -> Any:
    """The JSON in `path`; a damaged file raises DamagedFile naming it and `fix`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DamagedFile(f"{path} is not valid JSON ({reason}); {fix}") from None


# -- failed reads and writes ---------------------------------------------------------------

NO_SPACE = {errno.ENOSPC: ("the disk is full", "free space there"),  # errno: (what it means, the fix)
            errno.EDQUOT: ("the disk quota is used up", "free space there"),
            errno.EFBIG: ("a file size limit, ulimit -f", "raise it")}
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def os_error_in(err: BaseException) -> Optional[OSError]:
    """The OSError that `err` is or was raised from (its cause or context), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def os_error_message(err: OSError, again: str = "run the same command again") -> str:
    """A failed read or write in one line: the path, what went wrong, the fix. `again` says how
    to carry on once the fix is made (a run resumes from its last checkpoint)."""
    path = err.filename if err.filename is not None else "a file"
    reason = err.strerror or str(err)
    if err.errno in NO_SPACE:
        what, fix = NO_SPACE[err.errno]
        return f"cannot write {path}: {reason} ({what}); {fix}, then {again}"
    if err.errno in NOT_WRITABLE:
        return (f"cannot write {path}: {reason}; use a folder you can write to (--runs-dir / "
                f"$SOSVAE_RUNS_DIR for runs, --output for run_all), or make that one writable")
    return f"{path}: {reason}; check that path, then {again}"


# -- one writer per folder -----------------------------------------------------------------

LOCK_NAME = ".lock"


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock; the message names it."""


def _holder(fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    return text or "another process (starting up)"


@contextlib.contextmanager
def folder_lock(folder, wait: bool = False, waiting: Optional[Callable[[str], None]] = None) -> Iterator[Path]:
    """Hold `<folder>/.lock` for one writer: an OS file lock (flock), which the OS releases when
    the process ends, killed or not, so a stale lock never outlives its holder.

    The holder writes who it is (pid, host, start, command) into the file. Another process
    gets FolderBusy naming it, or with `wait` blocks until it is free, telling `waiting` once
    in a line. Folder and lock file are created as needed; readers do not lock."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy = f"{folder} is in use by {_holder(fd)}"
                if not wait:
                    raise FolderBusy(f"{busy}; wait for it to finish (train --wait) or use another folder") from None
                if waiting is not None:
                    waiting(f"{busy}; waiting for it to finish")
                fcntl.flock(fd, fcntl.LOCK_EX)
        program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
        command = " ".join(["python -m sosvae_core" if program == "__main__.py" else program, *sys.argv[1:]])
        me = (f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} "
              f"({command[:160]})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
