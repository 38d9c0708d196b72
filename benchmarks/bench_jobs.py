"""Runs trained one after the other on every core, against side by side with one thread each (not a test).

    python benchmarks/bench_jobs.py [--experiment portraits] [--profile quick] [--epochs 1]
        [--kinds sos,beta] [--data-root DIR] [--jobs 2]

Trains the same runs twice, from scratch, into two temporary runs folders, through
`pool.train_all`: once with jobs=1 (each run uses all cores) and once with jobs=N
(N runs at once, cores/N threads each). Prints both wall times and their ratio, the
speed-up that `run_all.sh --jobs N` gets on training. Both passes pay the same process
start and data decoding per run, so the ratio is of the training itself.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

from sosvae_core.configs import get_config
from sosvae_core.pool import train_all


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="portraits")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--kinds", default="sos,beta")
    ap.add_argument("--data-root")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    cfgs = [get_config(args.experiment, args.profile, kind, epochs=args.epochs, pretrain_epochs=0)
            for kind in args.kinds.split(",")]
    times = {}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        os.environ.setdefault("SOSVAE_CACHE_DIR", str(Path(tmp) / "cache"))  # decode once, for both passes
        for jobs in (1, args.jobs):
            t0 = time.perf_counter()
            train_all(cfgs, runs_dir=Path(tmp) / f"runs-{jobs}", data_root=args.data_root, device="cpu",
                      jobs=jobs, stream=io.StringIO())
            times[jobs] = time.perf_counter() - t0
    print(f"{len(cfgs)} runs of {args.experiment}/{args.profile}, {args.epochs} epoch(s) each, {os.cpu_count()} cores")
    print(f"  one after the other, all cores: {times[1]:7.1f} s")
    print(f"  {args.jobs} side by side:              {times[args.jobs]:7.1f} s   speed-up {times[1] / times[args.jobs]:.2f}×")


if __name__ == "__main__":
    main()
