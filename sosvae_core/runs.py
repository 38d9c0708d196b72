"""Run folders: one per trained config and data, found by name, trained once and then loaded.

A run folder `<runs>/<experiment>-<profile>-<model>-<hash>` holds what `Trainer` writes:
`config.json`, `checkpoint.pt` (model, optimiser, multipliers, RNG states: an exact resume),
`metrics_steps.csv` and `metrics_epochs.csv`, `done.json` once finished, `fid.json` (FID
results cached by protocol) and `.lock` (held by the one process writing it). The hash covers
every config field that changes what is trained (`Config.identity()`) and the data it trains
on (`data_identity`); runtime-only fields (amp, channels_last, compile, checkpoint_every,
fid_n) do not, so a run trained with one setting is found with another. Where `<runs>` is:
`sosvae_core.paths.runs_root`. Checkpoint, config and JSON files are written atomically, the
metrics logs a whole row at a time (`sosvae_core.train`). Loading takes no lock.
"""
from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .configs import Config
from .data import DATASETS, find_dataset_dir, list_image_files, resolve_data_root
from .data import DataError
from .networks import build_model
from .paths import DamagedFile, first_line, runs_root
from .metrics_log import read_log
from .checkpoints import config_differences, read_checkpoint, read_config
from .train import Trainer, select_device


def data_identity(cfg: Config, data_root=None) -> dict:
    """What `cfg` trains on, wherever it lies: the dataset, its source (bundled, a folder or a
    packed file; data_root, else $SOSVAE_DATA_ROOT) and a fingerprint.

    A folder's fingerprint hashes the sorted relative names and byte sizes of its images, the
    listing the decoded-image cache keys on, not their contents: listing 15,000 files takes about
    0.1 s, reading them minutes, and a moved or copied folder keeps its fingerprint. A packed
    dataset's hashes the names it holds (it records no sizes), so it differs from its folder's;
    a bundled one's is its transform description, which is versioned when its images change."""
    spec = DATASETS[cfg.dataset]
    root = resolve_data_root(data_root)
    if spec.bundled:
        source, items = "bundled", [spec.transform_description]
    elif root is not None and root.is_file():
        source, items = "packed", _packed_names(root)
    else:
        folder = find_dataset_dir(cfg.dataset, data_root)
        source, items = "folder", [f"{name}\t{size}" for name, size in list_image_files(folder, spec.recursive)]
    return {"dataset": cfg.dataset, "source": source, "files": None if spec.bundled else len(items),
            "fingerprint": hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]}


def _packed_names(path: Path) -> list:
    try:  # memory-mapped: the names without reading the images
        blob = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return sorted([*blob["files"], *blob["skipped"]])
    except Exception as err:
        raise DataError(f"data root {path} is a file but not a readable packed dataset ({first_line(err)}); pass a "
                        f"folder, or re-create it with `python -m sosvae_core pack`") from None


def run_name(cfg: Config, data_root=None, data: Optional[dict] = None) -> str:
    """A readable folder name, unique to what the config trains and on what data:
    experiment-profile-model-<hash> (runtime-only fields such as amp or fid_n are not part of
    the hash). `data`: the `data_identity` when already known, else found from data_root."""
    data = data if data is not None else data_identity(cfg, data_root)
    key = json.dumps({"config": cfg.identity(), "data": data}, sort_keys=True)
    return f"{cfg.experiment}-{cfg.profile}-{cfg.model}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def is_finished(run_dir) -> bool:
    """done.json and the checkpoint it vouches for are there."""
    return (Path(run_dir) / "done.json").exists() and (Path(run_dir) / "checkpoint.pt").exists()


def run_config(run_dir) -> Config:
    """The Config of a run folder: its config.json, else the one its checkpoint holds."""
    run_dir = Path(run_dir)
    if (run_dir / "config.json").exists():
        return read_config(run_dir / "config.json")
    if (run_dir / "checkpoint.pt").exists():
        return Config.from_dict(read_checkpoint(run_dir / "checkpoint.pt")["config"])
    raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json); pass the folder that `train` printed")


def load_run(run_dir, device: str = "auto") -> torch.nn.Module:
    """The trained model of a finished (or checkpointed) run folder, in eval mode. A damaged
    checkpoint raises DamagedFile naming it and the fix."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint in {run_dir}; train it first "
                                f"(python -m sosvae_core train ...)")
    state = read_checkpoint(path)
    try:
        cfg = Config.from_dict(state["config"])
        model = build_model(cfg, tuple(state["image_shape"]))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise DamagedFile(f"checkpoint {path} does not hold a model of this version ({first_line(err)}); "
                          f"delete it to train the run again") from None
    model.config = cfg
    return model.to(select_device(device)).eval()


def get_or_train(cfg: Config, runs_dir=None, data_root=None, device: str = "auto",
                 progress: bool = True, datasets: Optional[Dict] = None, cache_dir=None,
                 wait: bool = True) -> torch.nn.Module:
    """Train `cfg` on the data at data_root once (resuming an interrupted run), then load it from
    its run folder. A run another process is training is waited for (`wait`), then loaded."""
    data = data_identity(cfg, data_root)
    run_dir = runs_root(runs_dir) / run_name(cfg, data=data)
    trained = not is_finished(run_dir)
    if trained:
        if progress:
            state = "resuming the interrupted run" if (run_dir / "checkpoint.pt").exists() else "training"
            print(f"{state} {run_dir.name} ({cfg.model} on {cfg.dataset}, {cfg.profile} profile, {cfg.epochs} epochs): "
                  f"no finished run in {run_dir.parent}", flush=True)
        Trainer(cfg, run_dir, datasets=datasets, data_root=data_root, device=device,
                progress=progress, cache_dir=cache_dir, data_identity=data).fit(wait=wait)
    model = load_run(run_dir, device)
    differ = config_differences(model.config, cfg, ignore=())
    if differ:  # the folder's run was resumed with other epochs
        raise ValueError(f"the run folder {run_dir} holds another run ({differ}); move it away to train "
                         f"this config again")
    if progress and not trained:
        print(f"loaded {run_dir.name} ({cfg.model} on {cfg.dataset}) from {run_dir.parent}", flush=True)
    model.config = cfg  # the same run; the runtime-only fields as asked now (e.g. fid_n)
    model.run_dir = run_dir
    return model


def read_metrics(run_dir, kind: str = "steps") -> Dict[str, np.ndarray]:
    """A run's metrics log as arrays: kind "steps" (every logged step) or "epochs". A row that a
    running or interrupted training has not finished writing is left out."""
    path = Path(run_dir) / f"metrics_{kind}.csv"
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no metrics log (not trained yet?)", str(path))
    header, rows = read_log(path)
    return {k: np.array([float(r[k]) for r in rows]) for k in (header if rows else [])}
