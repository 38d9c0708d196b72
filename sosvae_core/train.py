"""Training: one `Trainer` for every model, with exact resume (paper Section 3.3).

A run lives in one folder:
    config.json           the Config, as trained (written once it is checked against the folder)
    checkpoint.pt         the latest state, with the data's identity, written atomically
    metrics_steps.csv     every step: NLL, KL, entropy, both multipliers, mean variance, grad norm
    metrics_epochs.csv    every epoch: the same averaged, plus validation NLL and KL
    done.json             written last: the run finished (after at least one step), its wall time
    .lock                 held by the one process that writes the folder (`paths.folder_lock`)

Resuming restores model, optimiser, multipliers, epoch/step, every RNG and the data
order (the epoch's permutation is re-derived from the seed, the consumed batches
are skipped), so an interrupted CPU run ends with the same weights as one that
was never interrupted. A run that starts cuts the metrics logs back to the state it
continues from (the checkpoint's step, or nothing), so a step is never logged twice and the
logs equal those of an uninterrupted run (`metrics_log`). Only `epochs` and the runtime-only
fields (`checkpoints.RESUMABLE_FIELDS`) may differ from the folder's config.

Mean-only pre-training, its end and the learning rates of each phase are `schedule`'s.

Distributed: under `torchrun`, ranks share the data with a DistributedSampler,
rank 0 writes checkpoints and logs, and the constraint violations are all-reduced
so that the multipliers stay identical on every rank and the gradient equals that
of one process with the same global batch. The sampler strides one shared
permutation, so rank r holds rows r, r + world, ... of each global batch; the flips
and the posterior noise are drawn for the global batch and sharded the same way,
so a run equals the single-process run up to float rounding (tests/test_distributed.py),
provided the norm layers do not depend on the batch: BatchNorm normalises each
rank's shard on its own (use norm='group', or SyncBatchNorm on CUDA).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from .checkpoints import check_checkpoint, read_checkpoint, read_config, refuse_another_run, rng_state, set_rng_state
from .configs import Config, device_switches
from .data import to_float
from .metrics_log import MetricsLog, epoch_line
from .networks import build_model
from .observations import CapacitanceError
from .objective import ConstraintConfig, Multipliers, ObjectiveTerms, compiled, lagrangian
from .paths import atomic_file, folder_lock, os_error_message, write_json, write_text
from .schedule import learning_rate, levelled_off, parameter_groups

VARIANCE_LIMIT = 1e4  # a per-pixel variance this large on [0, 1] images is an explosion


class TrainingDiverged(RuntimeError):
    """The loss or the variance became NaN/Inf or exploded; the message names the step."""


class RunFolderError(RuntimeError):
    """A run folder could not be written (disk full, read-only); the message names the path and the fix."""


def select_device(preference: str = "auto") -> torch.device:
    """cuda, then mps, then cpu, unless a device is named."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Trains one model of a Config on its dataset; `fit()` runs or resumes it."""

    def __init__(self, cfg: Config, run_dir, datasets: Optional[Dict] = None,
                 data_root=None, device: str = "auto", progress: bool = True,
                 cache_dir=None, tensorboard: bool = True, data_identity: Optional[dict] = None):
        """data_identity: what the data are (`runs.data_identity`), kept in the checkpoint and
        checked on resume; found from the config and `data_root` when the trainer loads the data
        itself, else unknown (None) unless given."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self._build_processes(device)
        self._build_data(datasets, data_root, cache_dir, data_identity)
        self._build_model()
        self._reset_progress()
        self._build_optimizer()
        self._build_objective()
        self.logs = MetricsLog(self.run_dir, enabled=self.is_main, tensorboard=tensorboard)

    # -- construction ----------------------------------------------------------------

    def _build_processes(self, device: str) -> None:
        """This process's place under `torchrun` (rank 0 of 1 without it) and its device."""
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        self.device = select_device(device)

    def _build_data(self, datasets: Optional[Dict], data_root, cache_dir, data_identity: Optional[dict]) -> None:
        """The splits (loaded from the config unless given), their identity, and the sampler that
        strides each epoch's one shared permutation over the processes."""
        if datasets is None:
            from .data import dataset_args, load_splits
            if data_identity is None:
                from .runs import data_identity as identify
                data_identity = identify(self.cfg, data_root)
            datasets = load_splits(**dataset_args(self.cfg), data_root=data_root, cache_dir=cache_dir)
        self.data_identity = data_identity
        self.train_set, self.val_set = datasets["train"], datasets.get("val")
        self.image_shape = tuple(self.train_set.images.shape[1:])
        self.flip = bool(getattr(self.train_set, "flip", False))
        self.flip_gen = torch.Generator().manual_seed(self.cfg.seed + 1)  # the flips' own stream: exact resume
        self.sampler = DistributedSampler(range(len(self.train_set.images)), num_replicas=self.world,
                                          rank=self.rank, shuffle=True, seed=self.cfg.seed, drop_last=True)

    def _build_model(self) -> None:
        """The model, its initial weights from the seed, and the speed switches as this device
        takes them (a config may leave them to it): channels-last here, compile in `_build_objective`."""
        seed_everything(self.cfg.seed)
        self.model = build_model(self.cfg, self.image_shape).to(self.device)
        self.switches = device_switches(self.cfg, self.device.type)
        if self.switches["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _reset_progress(self) -> None:
        self.epoch = self.step = self.step_in_epoch = 0
        self.pretrain_done = False  # set when the mean's validation NLL has levelled off
        self.pretrain_val_nll: Optional[list] = None  # validation NLL after each pre-training epoch
        self.release_step: Optional[int] = None  # the first step that trains the variance heads
        self.steps_per_epoch: Optional[int] = None  # set by fit(), once the batches are checked
        self.wall_time = 0.0

    def _build_optimizer(self) -> None:
        """Adam over the parameter groups by role (`schedule.parameter_groups`); a LambdaLR
        schedule sets their rates."""
        groups = parameter_groups(self.model, self.cfg.diagonal_lr_factor)
        self.group_roles = list(groups)
        # a base rate of 1: LambdaLR multiplies it by each lambda, which so gives the rate itself, to the bit
        self.optimizer = torch.optim.Adam([{"params": params} for params in groups.values()], lr=1.0)
        self.schedule = LambdaLR(self.optimizer, [functools.partial(self._learning_rate, r) for r in self.group_roles])

    def _build_objective(self) -> None:
        """The constrained objective (`objective`, evaluation's) and what a training step calls:
        the same under DistributedDataParallel across processes, compiled with `compile`."""
        cfg = self.cfg
        self.multipliers = Multipliers().to(self.device)
        self.constraints = ConstraintConfig(cfg.target_kl, cfg.target_entropy(self.image_shape),
                                            cfg.damping, cfg.multiplier_lr, cfg.one_sided_damping)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.objective = ObjectiveTerms(self.model, cfg.model, self.amp, self.rank, self.world)
        step_objective = self._parallel(self.objective) if self.distributed else self.objective
        self._step_objective = compiled(step_objective) if self.switches["compile"] else step_objective

    def _parallel(self, objective: ObjectiveTerms) -> torch.nn.Module:
        if not objective.latent:
            raise ValueError(f"the {self.cfg.model} model has no network to parallelise; train it in one process")
        # frozen variance heads during mean-only pre-training are 'unused' parameters
        return torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.cfg.pretrain_epochs > 0)

    # -- the learning rates --------------------------------------------------------------

    def _learning_rate(self, role: str, n: int) -> float:
        """The rate of group `role` in the n-th step (`schedule.learning_rate`), from this run's release."""
        return learning_rate(self.cfg, role, n, self.release_step, self.steps_per_epoch)

    def _set_learning_rates(self, pretrain: bool) -> None:
        """Step the schedule to the coming step's rates. It steps before the optimiser: a step's
        rates are known once its epoch has begun (the release), and a stopped run shows them."""
        if not pretrain and self.release_step is None:
            self.release_step = self.step
        with warnings.catch_warnings():  # torch's warning for the order above
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
            self.schedule.step()

    # -- checkpoints -----------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "multipliers": self.multipliers.state_dict(), "epoch": self.epoch,
                "pretrain_done": self.pretrain_done, "pretrain_val_nll": self.pretrain_val_nll,
                "release_step": self.release_step,
                "step": self.step, "step_in_epoch": self.step_in_epoch,
                "wall_time": self.wall_time, "rng": rng_state(self.flip_gen, self.device),
                "image_shape": list(self.image_shape),
                "config": json.loads(self.cfg.to_json()), "data": self.data_identity}

    def save_checkpoint(self) -> None:
        if self.is_main:
            self.logs.sync()  # the logged rows reach the disk before the state that follows them
            with atomic_file(self.checkpoint_path) as f:
                torch.save(self.state_dict(), f)
        if self.distributed:  # no rank runs ahead of (or reads) a checkpoint still being written
            dist.barrier()

    def load_checkpoint(self) -> bool:
        """Restore the folder's checkpoint, if any, once it is checked (`checkpoints.check_checkpoint`):
        the same config (but for its RESUMABLE_FIELDS), no more epochs than asked for, and the same
        data where both are known."""
        if not self.checkpoint_path.exists():
            return False
        state = read_checkpoint(self.checkpoint_path, self.device)
        check_checkpoint(state, self.cfg, self.run_dir, self.data_identity)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.multipliers.load_state_dict(state["multipliers"])
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        self.wall_time = state["wall_time"]
        self.pretrain_done = state.get("pretrain_done", False)
        self.pretrain_val_nll = state.get("pretrain_val_nll")
        self.release_step = state.get("release_step")
        self.schedule.last_epoch = self.step  # the schedule's position is the step (older checkpoints too)
        set_rng_state(state["rng"], self.flip_gen, self.device)
        return True

    # -- one step --------------------------------------------------------------------

    def _batch(self, idx: torch.Tensor, flip: bool) -> torch.Tensor:
        # random horizontal flips from the trainer's own generator (exact resume), drawn for
        # the global batch, this rank's rows (as the noise in ObjectiveTerms)
        x = self.train_set.get_batch(idx, device=self.device, generator=self.flip_gen, flip=flip,
                                     shard=(self.rank, self.world))
        return x.contiguous(memory_format=torch.channels_last) if self.switches["channels_last"] else x

    def train_step(self, idx: torch.Tensor, pretrain: bool) -> dict:
        self.model.train()
        x = self._batch(idx, self.flip)
        try:
            nll, kl, entropy, variance = self._step_objective(x)
        except CapacitanceError as err:  # NaN/huge P reaches the Cholesky before the loss
            raise TrainingDiverged(f"the covariance broke down at step {self.step} (epoch {self.epoch}): "
                                   f"{err}") from None
        loss, violations = lagrangian(nll, kl, entropy, self.multipliers, self.constraints,
                                      reduce=self._all_reduce if self.distributed else None)
        if self.distributed:  # DDP averages gradients; undo it so they are the global sum's
            loss = loss * self.world
        variance = float(variance)
        self._check_finite(loss, variance)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))
        if not torch.isfinite(grad_norm):
            raise TrainingDiverged(f"gradient norm is {float(grad_norm)} at step {self.step} "
                                   f"(epoch {self.epoch}); lower the learning rate")
        self.optimizer.step()
        self.multipliers.ascend(violations, self.constraints.multiplier_lr)
        B = x.shape[0]
        loss, nll, entropy = loss.detach(), nll.detach(), entropy.detach()
        kl = kl.detach() if kl is not None else None
        return {"loss": float(loss) / (B * self.world), "nll": float(nll.mean()),
                "kl": float(kl.mean()) if kl is not None else float("nan"),
                "entropy": float(entropy.mean()), "lambda_kl": self.multipliers.kl.item(),
                "lambda_entropy": self.multipliers.entropy.item(),
                "mean_variance": variance, "grad_norm": float(grad_norm),
                "pretrain": int(pretrain)}

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone()
        dist.all_reduce(t)
        return t

    def _check_finite(self, loss: torch.Tensor, var: float) -> None:
        """var: the step's mean per-pixel variance, NaN where it is not cheap to compute (Dorta)."""
        where = f"at step {self.step} (epoch {self.epoch})"
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} {where}; the last good state is in "
                                   f"{self.checkpoint_path}; lower the learning rate or check the data")
        if not math.isnan(var) and not var <= VARIANCE_LIMIT:
            raise TrainingDiverged(f"mean variance exploded to {var:.3g} {where}; "
                                   f"use the fixed diagonal and the entropy constraint (Appendix A)")

    @torch.no_grad()
    def evaluate(self, dataset, max_images: int = 2000) -> dict:
        """Validation NLL and KL per image (no updates; one posterior sample per image)."""
        if dataset is None or len(dataset.images) == 0:
            return {}
        self.model.eval()
        nll_sum = kl_sum = sq_sum = 0.0
        n = min(len(dataset.images), max_images)
        # Own RNG stream: only rank 0 validates, and the ranks' training RNGs must stay in
        # step (they draw the global batch's noise); fixed noise also makes epochs comparable.
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.cfg.seed + 2)
            for start in range(0, n, self.cfg.batch_size):
                x = to_float(dataset.images[start:start + self.cfg.batch_size]).to(self.device)
                nll, kl, _, obs = self.objective(x, distribution=True)  # rank 0 alone: not through DDP
                nll_sum += float(nll.sum())
                kl_sum += float(kl.sum()) if kl is not None else float("nan")
                sq_sum += float((obs.mean.float() - x.flatten(1)).pow(2).mean(1).sum())
        # val_mean_mse: how well the decoded mean alone fits. Once P is released it can rise
        # while the NLL falls: the NLL hardly restrains the mean along P's directions (its
        # gradient there is damped by ε/(s² + ε)), so the mean may drift there and P grows to cover it.
        return {"val_nll": nll_sum / n, "val_kl": kl_sum / n, "val_mean_mse": sq_sum / n}

    # -- the loop -----------------------------------------------------------------------

    def fit(self, max_steps: Optional[int] = None, resume: bool = True, wait: bool = False) -> torch.nn.Module:
        """Train to `cfg.epochs` (or stop after `max_steps` total steps, checkpointed).

        One writer per run folder: the main process holds its lock while it trains; another
        process gets FolderBusy naming it, or with `wait` waits for it (and then continues from
        where it stopped). Nothing is written before the folder's config, checkpoint and data are
        checked against this run. A failed write raises RunFolderError in one line."""
        try:
            with self._holding(wait):
                return self._fit(max_steps, resume)
        except OSError as err:
            raise RunFolderError(os_error_message(
                err, again="run the same command again: the run resumes from its last checkpoint")) from None

    @contextlib.contextmanager
    def _holding(self, wait: bool):
        if not self.is_main:
            yield
            return
        say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        with folder_lock(self.run_dir, wait=wait, waiting=say):
            try:
                yield
            finally:
                self.logs.close()

    def _fit(self, max_steps: Optional[int], resume: bool) -> torch.nn.Module:
        self._begin(resume)
        self.steps_per_epoch = self._count_steps_per_epoch()
        while self.epoch < self.cfg.epochs:
            pretrain = self._pretraining()
            rows = self._train_epoch(pretrain, max_steps)
            if rows is None:  # stopped at max_steps, checkpointed
                return self.model
            self._end_epoch(rows, pretrain)
        if self.is_main:
            self._finish()
        return self.model

    def _begin(self, resume: bool) -> None:
        """Check the folder's run against this one, restore its checkpoint (with `resume`), then
        claim the folder: the logs cut back to that state, the config written, unfinished again."""
        if self.is_main and (self.run_dir / "config.json").exists():  # before anything in it is written
            refuse_another_run(read_config(self.run_dir / "config.json"), self.cfg, self.run_dir)
        if self.distributed:  # rank 0 holds the folder before any rank reads from it
            dist.barrier()
        if resume:
            self.load_checkpoint()
        if self.is_main:
            self.logs.cut(self.step, self.epoch)
            write_text(self.run_dir / "config.json", self.cfg.to_json())
            if self.epoch < self.cfg.epochs:  # training again: finished no longer
                (self.run_dir / "done.json").unlink(missing_ok=True)
            self.logs.open_tensorboard(self.step)

    def _count_steps_per_epoch(self) -> int:
        per_rank = self.cfg.batch_size // self.world
        if per_rank * self.world != self.cfg.batch_size:
            raise ValueError(f"batch_size {self.cfg.batch_size} does not split over {self.world} "
                             f"processes; use a multiple of the process count")
        steps = len(self.sampler) // per_rank
        if steps == 0:
            raise ValueError(f"the training split has {len(self.train_set.images)} images, fewer "
                             f"than one batch of {self.cfg.batch_size}; lower batch_size")
        return steps

    def _pretraining(self) -> bool:
        """Whether this epoch trains the mean alone (Section 3.3): the variance heads frozen."""
        pretrain = self.epoch < self.cfg.pretrain_epochs and not self.pretrain_done
        for p in self.model.variance_parameters():
            p.requires_grad_(not pretrain)
        return pretrain

    def _train_epoch(self, pretrain: bool, max_steps: Optional[int]) -> Optional[List[dict]]:
        """The epoch's remaining steps and their rows; None once `max_steps` are done (checkpointed)."""
        self.sampler.set_epoch(self.epoch)
        order = torch.tensor(list(self.sampler))
        per_rank = self.cfg.batch_size // self.world
        desc = f"{self.cfg.model} epoch {self.epoch + 1}/{self.cfg.epochs}" + (" (mean only)" if pretrain else "")
        bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=desc, leave=False,
                   disable=not (self.progress and self.is_main))
        rows = []
        while self.step_in_epoch < self.steps_per_epoch:
            if max_steps is not None and self.step >= max_steps:
                bar.close()
                self.save_checkpoint()
                return None
            t0 = time.perf_counter()
            idx = order[self.step_in_epoch * per_rank:(self.step_in_epoch + 1) * per_rank]
            rows.append(self._logged_step(idx, pretrain, t0))
            bar.set_postfix(nll=f"{rows[-1]['nll']:.4g}", kl=f"{rows[-1]['kl']:.3g}", H=f"{rows[-1]['entropy']:.4g}")
            bar.update()
            if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        return rows

    def _logged_step(self, idx: torch.Tensor, pretrain: bool, t0: float) -> dict:
        """One step at its scheduled rates, counted, timed from `t0` and logged; its row."""
        self._set_learning_rates(pretrain)
        row = self.train_step(idx, pretrain)
        self.step += 1
        self.step_in_epoch += 1
        self.wall_time += time.perf_counter() - t0
        row.update(step=self.step, epoch=self.epoch, wall_time=round(self.wall_time, 3))
        self.logs.write("steps", row)
        return row

    def _end_epoch(self, rows: List[dict], pretrain: bool) -> None:
        """The epoch's averages and validation logged, pre-training's end decided, a checkpoint."""
        summary = self.logs.epoch_average(self.epoch, rows)
        summary.update(epoch=self.epoch, step=self.step, wall_time=round(self.wall_time, 3))
        summary.update(self.evaluate(self.val_set) if self.is_main else {})
        if pretrain:
            self._update_pretrain(summary.get("val_nll"))
        self.logs.write("epochs", summary)
        self.epoch += 1
        self.step_in_epoch = 0
        self.save_checkpoint()
        if self.progress and self.is_main:
            print(epoch_line(self.cfg, self.epoch, summary, pretrain), flush=True)

    def _finish(self) -> None:
        if self.step == 0:
            raise RuntimeError(f"{self.run_dir}: no optimisation step was taken, so the run is not finished")
        done = {"epochs": self.epoch, "steps": self.step, "wall_time_s": round(self.wall_time, 2),
                "device": str(self.device), "world_size": self.world, "data": self.data_identity}
        write_json(self.run_dir / "done.json", done, sort_keys=False)

    def _update_pretrain(self, val_nll: Optional[float]) -> None:
        """End mean-only pre-training once the mean's validation NLL has levelled off
        (`schedule.levelled_off`); `pretrain_epochs` is the cap."""
        tol = self.cfg.pretrain_min_improvement
        done = False
        if tol is not None and val_nll is not None and math.isfinite(val_nll):
            self.pretrain_val_nll = (self.pretrain_val_nll or []) + [val_nll]
            done = levelled_off(self.pretrain_val_nll, tol)
        if self.distributed:  # only rank 0 validates: every rank follows its decision
            flag = torch.tensor([float(done)], device=self.device if self.device.type == "cuda" else "cpu")
            dist.broadcast(flag, 0)
            done = bool(flag.item())
        self.pretrain_done = done
