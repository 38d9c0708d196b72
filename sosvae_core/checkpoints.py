"""A run folder's config and checkpoint: reading them, checking them against the run asked
for, and the random states that make a resumed run exact (paper Section 3.3).

`checkpoint.pt` holds the whole training state (`train.Trainer.state_dict`): model,
optimiser, multipliers, epoch and step, the pre-training decision, every RNG and the data's
identity; `config.json` the Config as trained. A damaged file raises DamagedFile naming it
and the fix. A folder continues only the run it holds: the same config but for
RESUMABLE_FIELDS, no more epochs than asked for, and the same data where both are known.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .configs import RUNTIME_FIELDS, Config
from .paths import DamagedFile, first_line, read_json

# Fields a run folder's config may change on resume: how long it trains, and how fast it goes
# or is evaluated. Every other field decides what is trained.
RESUMABLE_FIELDS = ("epochs", *RUNTIME_FIELDS)


def config_differences(saved: Config, asked: Config, ignore=RESUMABLE_FIELDS) -> str:
    """The fields two configs disagree on, outside `ignore`, as 'name: saved there, asked here'; '' if none."""
    a, b = saved.identity(), asked.identity()
    return "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(set(a) | set(b))
                     if k not in ignore and a.get(k) != b.get(k))


def read_config(path) -> Config:
    """The Config in a run folder's config.json; a damaged file raises DamagedFile naming it."""
    fix = "delete it (checkpoint.pt holds the config too) or use another run folder"
    data = read_json(path, fix)
    try:
        return Config.from_dict(data)
    except (TypeError, ValueError, AttributeError) as err:
        raise DamagedFile(f"{path} holds no valid config ({first_line(err)}); {fix}") from None


def read_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint's state; an unreadable one raises DamagedFile naming it and the fix."""
    open(path, "rb").close()  # failing to open it is an OSError (its path, permissions); failing to read it, damage
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise DamagedFile(f"checkpoint {path} is damaged ({first_line(err)}); delete it to train the run "
                          f"again") from None
    if not isinstance(state, dict) or not {"model", "config", "step", "epoch"} <= set(state):
        raise DamagedFile(f"checkpoint {path} is not a sosvae_core checkpoint; delete it to train the run again")
    return state


def refuse_another_run(saved: Config, asked: Config, run_dir: Path) -> None:
    """The folder's run must be the one asked for, but for RESUMABLE_FIELDS; else a ValueError naming the fields."""
    differ = config_differences(saved, asked)
    if differ:
        raise ValueError(f"the run folder {run_dir} holds another run ({differ}); use another run "
                         f"folder, or continue that run with --resume {run_dir}")


def check_checkpoint(state: dict, asked: Config, run_dir: Path, data_identity: Optional[dict]) -> None:
    """A checkpoint continues the run asked for: the same config (but for RESUMABLE_FIELDS), no
    more epochs than asked for, and the same data (`runs.data_identity`) where both are known."""
    try:
        saved = Config.from_dict(state["config"])
    except (TypeError, ValueError) as err:
        raise DamagedFile(f"checkpoint {run_dir / 'checkpoint.pt'} holds no valid config ({first_line(err)}); "
                          f"delete it to train the run again") from None
    refuse_another_run(saved, asked, run_dir)
    if state["epoch"] > asked.epochs:
        raise ValueError(f"the run in {run_dir} has trained {state['epoch']} epochs, more than "
                         f"epochs={asked.epochs}; ask for epochs={state['epoch']} or more")
    known = state.get("data"), data_identity
    if None not in known and known[0] != known[1]:
        raise ValueError(f"the run in {run_dir} was trained on other data ({_describe(known[0])}) "
                         f"than these ({_describe(known[1])}); resume it with the --data-root it was "
                         f"trained on, or train a new run")


def _describe(data: dict) -> str:
    files = f" of {data['files']:,} images" if data.get("files") is not None else ""
    return f"{data.get('dataset')}: {data.get('source')}{files}, fingerprint {data.get('fingerprint')}"


def rng_state(flip_gen: torch.Generator, device: torch.device) -> dict:
    """Every random state a training step draws from: Python's, numpy's, torch's, the flips' own
    generator and, on CUDA, the training device's."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "flip": flip_gen.get_state()}
    if device.type == "cuda":  # the training device's only: under torchrun every rank
        state["cuda"] = torch.cuda.get_rng_state(device)  # resumes it onto its own GPU
    return state


def set_rng_state(state: dict, flip_gen: torch.Generator, device: torch.device) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    flip_gen.set_state(state["flip"])
    if "cuda" in state and device.type == "cuda":
        if isinstance(state["cuda"], list):  # older checkpoints: every device's state
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            torch.cuda.set_rng_state(state["cuda"], device)
