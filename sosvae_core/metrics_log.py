"""A run's metrics logs: metrics_steps.csv and metrics_epochs.csv, and its TensorBoard events.

The logs grow by one whole row per write (one write of whole lines), so a process killed
part-way leaves at most a row cut short, which `read_log` leaves out. The `Trainer` flushes
them to disk (`MetricsLog.sync`) before each checkpoint, and a run that starts cuts them back
to the state it continues from (`MetricsLog.cut`): the rows an interrupted process logged
after its last checkpoint go, so a step is never logged twice and the logs equal those of an
uninterrupted run. TensorBoard hides the same events (purge_step). After each epoch the
trainer prints `epoch_line`.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .configs import Config
from .paths import atomic_file

KINDS = ("steps", "epochs")


def read_log(path) -> Tuple[List[str], List[Dict[str, str]]]:
    """A metrics log's header and its whole rows, as text. A row that a crash or a full disk cut
    short (no line end, too few fields, a number cut mid-way) is left out."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    table = list(csv.reader(lines))
    header, rows = (table[0], table[1:]) if table else ([], [])

    def whole(values) -> bool:  # every field there, each a number
        if len(values) != len(header):
            return False
        try:
            [float(v) for v in values]
        except ValueError:
            return False
        return True
    return header, [dict(zip(header, values)) for values in rows if whole(values)]


def _append(path: Path, text: str) -> None:
    # one write of whole lines: killed part-way, it leaves a row read_log drops
    with path.open("a", newline="", encoding="utf-8") as f:
        f.write(text)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MetricsLog:
    """The logs of one run folder. Only the process that writes the folder has them `enabled`;
    elsewhere `write` does nothing and `epoch_average` averages the rows it is given."""

    def __init__(self, run_dir, enabled: bool = True, tensorboard: bool = True):
        self.run_dir, self.enabled, self.tensorboard = Path(run_dir), enabled, tensorboard
        self._fields: Dict[str, Optional[List[str]]] = {}  # each log's header, once it has one
        self._tb = None  # the TensorBoard writer, opened by open_tensorboard

    def path(self, kind: str) -> Path:
        return self.run_dir / f"metrics_{kind}.csv"

    def cut(self, step: int, epoch: int) -> None:
        """Keep in each log only the rows of the state training continues from (`step` steps and
        `epoch` epochs done): those logged after it and a row cut short go."""
        keep = {"steps": lambda r: float(r["step"]) <= step, "epochs": lambda r: float(r["epoch"]) < epoch}
        for kind, wanted in keep.items():
            path = self.path(kind)
            header, rows = read_log(path) if path.exists() else ([], [])
            rows = [r for r in rows if wanted(r)]
            self._fields[kind] = header if rows else None
            if not rows:
                path.unlink(missing_ok=True)
                continue
            with atomic_file(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                writer.writerows([r[k] for k in header] for r in rows)

    def open_tensorboard(self, step: int) -> None:
        """The TensorBoard writer (where asked for and installed), hiding the events logged after
        `step`, as `cut` drops their rows."""
        if not self.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=step + 1 if step else None)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def write(self, kind: str, row: dict) -> None:
        """Append `row` to the `kind` log (its header first, in a new log) and to TensorBoard."""
        if not self.enabled:
            return
        fields = self._fields.get(kind)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields or list(row))
        if fields is None:
            writer.writeheader()
            self._fields[kind] = list(row)
        writer.writerow(row)
        _append(self.path(kind), text.getvalue())
        if self._tb:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, row["step"])

    def sync(self) -> None:
        """Flush the logs to disk: the rows reach it before the checkpoint that follows them."""
        for kind in KINDS:
            if self.path(kind).exists():
                _sync(self.path(kind))

    def epoch_average(self, epoch: int, rows: List[dict]) -> dict:
        """Means over the steps of `epoch` (but their step, epoch and wall time), read back from the
        steps log (a resumed epoch's first steps are there), or over `rows` where this process
        keeps no log."""
        path = self.path("steps")
        if self.enabled and path.exists():
            rows = [r for r in read_log(path)[1] if float(r["epoch"]) == epoch]
        keys = [k for k in (rows[0] if rows else {}) if k not in ("step", "epoch", "wall_time")]
        return {k: float(np.mean([float(r[k]) for r in rows])) for k in keys}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def epoch_line(cfg: Config, epochs_done: int, summary: dict, pretrain: bool) -> str:
    """One line per finished epoch: the losses, both multipliers, the time and the ETA.

    summary: the epoch's averages as logged (wall_time is the run's training time so far)."""
    def num(key, fmt):
        v = summary.get(key)
        return "—" if v is None or not math.isfinite(v) else format(v, fmt)
    per_epoch = summary["wall_time"] / max(epochs_done, 1)
    return (f"[{cfg.experiment}/{cfg.model}] epoch {epochs_done}/{cfg.epochs}" + (" (mean only)" if pretrain else "")
            + f" · NLL {num('nll', '.5g')} (val {num('val_nll', '.5g')}) · mean MSE (val) {num('val_mean_mse', '.3g')}"
            + f" · KL {num('kl', '.3g')}"
            + f" · H {num('entropy', '.5g')} · λ_KL {num('lambda_kl', '.3g')} · λ_H {num('lambda_entropy', '.3g')}"
            + f" · variance {num('mean_variance', '.3g')} · {_duration(per_epoch)}/epoch"
            + f" · ETA {_duration(per_epoch * (cfg.epochs - epochs_done))}")
