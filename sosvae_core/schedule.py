"""The training schedule (paper Section 3.3): mean-only pre-training, then the variance heads
released, and the learning rates of both phases.

Pre-training trains the mean alone, the variance heads frozen, until the mean's validation NLL
has levelled off (`levelled_off`), for `pretrain_epochs` at most. The optimiser is Adam over
the parameter groups by role (`parameter_groups`), and their learning rates a LambdaLR
schedule, one lambda per group (`learning_rate`): a function of the step and of the step that
released the variance heads, both in the checkpoint, so a resumed run recomputes them from its
step. `train.Trainer` runs it.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from .configs import Config

PLATEAU_WINDOW = 3  # epochs over which pre-training's validation gain is averaged


def parameter_groups(model: torch.nn.Module, diagonal_lr_factor: float) -> Dict[str, list]:
    """The model's parameters by role, the roles that hold any, in this order: everything else
    ("network"), the variance heads that mean-only pre-training freezes ("released"), and with a
    `diagonal_lr_factor` other than 1 the log-scale diagonal heads ("diagonal")."""
    released = list(model.variance_parameters())
    diagonal = list(model.diagonal_parameters()) if diagonal_lr_factor != 1 else []
    released_ids, diagonal_ids = {id(p) for p in released}, {id(p) for p in diagonal}
    roles = {"network": [p for p in model.parameters() if id(p) not in released_ids],
             "released": [p for p in released if id(p) not in diagonal_ids], "diagonal": diagonal}
    return {role: params for role, params in roles.items() if params}


def learning_rate(cfg: Config, role: str, n: int, release_step: Optional[int], steps_per_epoch: int) -> float:
    """The rate of group `role` in the n-th step (counted from 1; n = 0, before any, is
    pre-training's), the variance heads released at step `release_step` (None: not yet): lr, or
    lr_after_pretrain once pre-training has ended; for the released variance heads it ramps
    linearly over the first `release_warmup_epochs`.
    Adam's first update of a parameter is ±lr whatever its gradient, so a head released
    at full rate moves all R components by the same step, in the sign pattern of one
    gradient: a single component over the whole image that the likelihood, whose pull on
    a large singular value s is only ~1/s, then hardly shrinks (docs/findings/release_warmup.md).
    The log-scale diagonal heads (β-VAE variance, learned D, Dorta's log L_ii) run at
    `diagonal_lr_factor` × that rate when it is set: each step moves their log-variance by
    at most ~lr per input feature, and they start at ε, ~8 nats below a fitted variance."""
    pretrain = release_step is None or n <= release_step
    base = cfg.lr if pretrain or cfg.lr_after_pretrain is None else cfg.lr_after_pretrain
    factor = 1.0
    if not pretrain:
        ramp = cfg.release_warmup_epochs * steps_per_epoch
        if ramp > 0:
            factor = min(1.0, (n - release_step) / ramp)
    scale = {"network": 1.0, "released": factor, "diagonal": factor * cfg.diagonal_lr_factor}
    return base * scale[role]


def levelled_off(val_nll: List[float], tol: float) -> bool:
    """Whether mean-only pre-training's validation NLL, one value per epoch so far, has levelled
    off: over the last PLATEAU_WINDOW epochs it gained less per epoch than `tol`
    (`pretrain_min_improvement`) times the gain since the first pre-training epoch (a slow start
    does not end pre-training, nor does one noisy epoch; a flat tail does)."""
    if len(val_nll) <= PLATEAU_WINDOW:
        return False
    recent = (val_nll[-1 - PLATEAU_WINDOW] - val_nll[-1]) / PLATEAU_WINDOW
    return recent < tol * (val_nll[0] - val_nll[-1])
