"""Train several runs at once on a CPU, each in a process of its own.

    train_all(cfgs, runs_dir=..., data_root=..., jobs=2)

The quick networks are small: their convolutions use a second core poorly, so on a
CPU two runs side by side, one thread each, finish sooner than the same two runs one
after the other on both cores (`benchmarks/bench_jobs.py` measures it;
benchmarks/README.md has the numbers).
Each job is `python -m sosvae_core train` with its thread count set, so a run trained
here is the same run folder that the command line and the notebooks find. Runs that
are already finished are only loaded later; the longest runs start first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator, Optional

from .configs import Config, get_config
from .observations import get_observation_model
from .paths import cache_root, runs_root

ENV_JOBS = "SOSVAE_JOBS"


def default_jobs(device: str = "auto") -> int:
    """How many runs to train at once: one on a GPU; on a CPU one per core, up to 4
    ($SOSVAE_JOBS overrides)."""
    if os.environ.get(ENV_JOBS):
        return parse_jobs(os.environ[ENV_JOBS])
    from .train import select_device
    if select_device(device).type != "cpu":
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def parse_jobs(value) -> int:
    try:
        jobs = int(value)
    except (TypeError, ValueError):
        jobs = 0
    if jobs < 1:
        raise ValueError(f"jobs must be a whole number ≥ 1, got {value!r}; use e.g. --jobs 2 (or {ENV_JOBS}=2)")
    return jobs


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # read by torch when a process starts


def threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def thread_environment(jobs: int) -> dict:
    """The environment variables that give a process started now its share of the cores."""
    return dict.fromkeys(THREAD_VARIABLES, str(threads_per_job(jobs)))


@contextlib.contextmanager
def scoped_environment(values: dict) -> Iterator[None]:
    """`os.environ` with `values` set inside the `with` block (for the processes started there) and
    as it was after it, also when the block raises: a variable that was unset is unset again."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _discard(log) -> None:
    log.close()
    if os.path.exists(log.name):
        os.unlink(log.name)


def relative_cost(cfg: Config) -> float:
    """A rough training cost (image pixels × images × epochs × the model's step cost), to start
    the longest runs first: a long run started last would leave the other cores idle."""
    h, w = cfg.image_size if cfg.image_size else (218, 178)
    return float(h * w * cfg.n_images * cfg.epochs) * get_observation_model(cfg.model).step_cost


def train_command(cfg: Config, runs_dir: Path, cache_dir: Path, data_root=None, device: str = "auto") -> list:
    """The command line that trains `cfg` into its run folder under `runs_dir`."""
    cmd = [sys.executable, "-m", "sosvae_core", "train", "--config", cfg.experiment, "--profile", cfg.profile,
           "--model", cfg.model, "--runs-dir", str(runs_dir), "--cache-dir", str(cache_dir), "--device", device,
           "--wait"]  # another process writing the run (a second run_all) is waited for, as the notebooks do
    if data_root:  # absolute: the job may start in another folder than the caller's
        cmd += ["--data-root", str(Path(data_root).resolve())]
    ours, base = dataclasses.asdict(cfg), dataclasses.asdict(get_config(cfg.experiment, cfg.profile, cfg.model))
    changed = {k: v for k, v in ours.items() if base.get(k) != v}  # overrides, runtime fields included
    if changed:
        cmd += ["--set"] + [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in changed.items()]
    return cmd


def _relay(pipe, stream, lock) -> None:
    for line in iter(pipe.readline, ""):
        with lock:
            stream.write(line)
            stream.flush()


def train_all(cfgs: Iterable[Config], runs_dir=None, data_root=None, device: str = "auto",
              jobs: Optional[int] = None, stream=None) -> dict:
    """Train every config that no run folder has finished, `jobs` at a time (longest first).

    What each job prints (a line per epoch) goes to `stream` as it comes; a failed job
    stops the others and raises with the end of its error output. Returns {run name:
    seconds} of the runs trained now."""
    from .runs import is_finished, run_name
    stream = stream or sys.stdout
    runs = runs_root(runs_dir).resolve()
    cache = cache_root(runs_dir=runs).resolve()
    jobs = parse_jobs(jobs) if jobs is not None else default_jobs(device)
    todo = {}  # run name (which depends on the data too): config
    for cfg in cfgs:
        name = run_name(cfg, data_root)
        if name not in todo and not is_finished(runs / name):
            todo[name] = cfg
    todo = sorted(todo.items(), key=lambda item: relative_cost(item[1]), reverse=True)
    if not todo:
        return {}
    threads = threads_per_job(min(jobs, len(todo)))
    env = dict(os.environ, **thread_environment(min(jobs, len(todo))), PYTHONUNBUFFERED="1")
    print(f"training {len(todo)} run(s), {min(jobs, len(todo))} at a time, {threads} thread(s) each: "
          + ", ".join(name for name, _ in todo), file=stream, flush=True)
    lock = threading.Lock()
    queue, running, times = deque(todo), [], {}
    runs.mkdir(parents=True, exist_ok=True)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                name, cfg = queue.popleft()
                err = (runs / f".{name}.stderr").open("w+")
                proc = subprocess.Popen(train_command(cfg, runs, cache, data_root, device), env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=err)
                relay = threading.Thread(target=_relay, args=(proc.stdout, stream, lock), daemon=True)
                relay.start()
                running.append((name, proc, err, relay, time.time()))
            time.sleep(0.2)
            for item in list(running):
                name, proc, err, relay, t0 = item
                if proc.poll() is None:
                    continue
                relay.join()
                running.remove(item)
                err.seek(0)
                tail = err.read().strip().splitlines()[-15:]
                _discard(err)
                if proc.returncode != 0:
                    raise RuntimeError(f"training {name} failed (exit {proc.returncode}):\n  "
                                       + "\n  ".join(tail))
                times[name] = round(time.time() - t0, 1)
    finally:
        for _, proc, err, relay, _ in running:  # a failure or an interrupt: stop the others
            proc.terminate()
            proc.wait()
            _discard(err)
    return times
