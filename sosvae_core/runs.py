"""Run folders: one per trained config, found by name, trained once and then loaded.

A run folder `<runs>/<experiment>-<profile>-<model>-<hash>` holds what `Trainer` writes:
`config.json`, `checkpoint.pt` (model, optimiser, multipliers, RNG states: an exact resume),
`metrics_steps.csv` and `metrics_epochs.csv`, `done.json` once finished, and `fid.json` (FID
results cached by protocol). The hash covers every config field that changes what is trained
(`Config.identity()`); runtime-only fields (amp, channels_last, compile, checkpoint_every,
fid_n) do not, so a run trained with one setting is found with another. Where `<runs>` is:
`sosvae_core.paths.runs_root`. Every file is written atomically (`sosvae_core.paths`).
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .configs import Config
from .networks import build_model
from .paths import runs_root
from .train import Trainer, select_device


def run_name(cfg: Config) -> str:
    """A readable folder name, unique to what the config trains: experiment-profile-model-<hash>
    (runtime-only fields such as amp or fid_n are not part of the hash)."""
    digest = hashlib.sha256(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.experiment}-{cfg.profile}-{cfg.model}-{digest}"


def load_run(run_dir, device: str = "auto") -> torch.nn.Module:
    """The trained model of a finished (or checkpointed) run folder, in eval mode."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint in {run_dir}; train it first "
                                f"(python -m sosvae_core train ...)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = Config.from_dict(state["config"])
    image_shape = tuple(state["image_shape"])
    model = build_model(cfg, image_shape)
    model.load_state_dict(state["model"])
    model.config = cfg
    return model.to(select_device(device)).eval()


def get_or_train(cfg: Config, runs_dir=None, data_root=None, device: str = "auto",
                 progress: bool = True, datasets: Optional[Dict] = None, cache_dir=None) -> torch.nn.Module:
    """Train `cfg` once (resuming an interrupted run), then load it from its run folder."""
    run_dir = runs_root(runs_dir) / run_name(cfg)
    if not (run_dir / "done.json").exists():
        if progress:
            state = "resuming the interrupted run" if (run_dir / "checkpoint.pt").exists() else "training"
            print(f"{state} {run_dir.name} ({cfg.model} on {cfg.dataset}, {cfg.profile} profile, {cfg.epochs} epochs): "
                  f"no finished run in {run_dir.parent}", flush=True)
        Trainer(cfg, run_dir, datasets=datasets, data_root=data_root, device=device,
                progress=progress, cache_dir=cache_dir).fit()
    elif progress:
        print(f"loaded {run_dir.name} ({cfg.model} on {cfg.dataset}) from {run_dir.parent}", flush=True)
    model = load_run(run_dir, device)
    model.config = cfg  # the same run; the runtime-only fields as asked now (e.g. fid_n)
    model.run_dir = run_dir
    return model


def read_metrics(run_dir, kind: str = "steps") -> Dict[str, np.ndarray]:
    """A run's metrics log as arrays: kind "steps" (every logged step) or "epochs"."""
    with open(Path(run_dir) / f"metrics_{kind}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in (rows[0] if rows else {})}
