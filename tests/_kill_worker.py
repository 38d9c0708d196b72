"""Test helper, not a test: the real command line (`python -m sosvae_core train ...`) that kills
itself with SIGKILL, as `kill -9` or a crash would (no clean-up runs), at a chosen point:

    python tests/_kill_worker.py WHEN STEP train --config lfw ...

WHEN is "after-row" (step STEP's metrics row is written), "mid-row" (half of step STEP's row is
written) or "mid-epoch-row" (half of the epochs-log row written at step STEP).
"""
import os
import signal
import sys

from sosvae_core import metrics_log
from sosvae_core.__main__ import main

when, at = sys.argv[1], int(sys.argv[2])
plain_write, plain_append = metrics_log.MetricsLog.write, metrics_log._append


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def half_then_die(path, text):
    plain_append(path, text[:len(text) // 2])
    die()


def write(self, kind, row):
    hit = row["step"] == at and kind == ("epochs" if when == "mid-epoch-row" else "steps")
    if hit and when != "after-row":
        metrics_log._append = half_then_die
    plain_write(self, kind, row)
    if hit:
        die()


metrics_log.MetricsLog.write = write
sys.exit(main(sys.argv[3:]))
