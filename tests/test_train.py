import csv
import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sosvae_core import metrics_log
from sosvae_core.__main__ import main as cli
from sosvae_core.configs import get_config
from sosvae_core.observations import REGISTRY
from sosvae_core.paths import folder_lock
from sosvae_core.runs import get_or_train, load_run, read_metrics, run_name
from sosvae_core.metrics_log import epoch_line, read_log
from sosvae_core.train import Trainer, TrainingDiverged

KILL_WORKER = Path(__file__).resolve().parent / "_kill_worker.py"


def epochs_log(run_dir):
    with open(run_dir / "metrics_epochs.csv") as f:
        return list(csv.DictReader(f))


def smoke(model, **kw):
    kw.setdefault("epochs", 8)  # 56 steps: 8 epochs of 7 batches of the 70 training faces
    kw.setdefault("pretrain_epochs", 1)
    return get_config("lfw", "smoke", model=model, lr=1e-3, **kw)


@pytest.mark.parametrize("model", list(REGISTRY))
def test_smoke_training_reduces_the_loss(model, lfw, tmp_path):
    cfg = smoke(model)
    Trainer(cfg, tmp_path, datasets=lfw, progress=False, tensorboard=False).fit()
    rows = epochs_log(tmp_path)
    assert len(rows) == cfg.epochs
    first, last = float(rows[0]["nll"]), float(rows[-1]["nll"])
    # last/first: 0.39–0.69 for the Gaussian models (8 smoke epochs); the Laplace model's L1 loss
    # falls with the mean's absolute error (0.82), while its mean's validation error falls as the β-VAE's
    assert last < 0.85 * first, (first, last)
    assert float(rows[-1]["val_nll"]) < float(rows[0]["val_nll"])
    for key in ("nll", "kl", "entropy", "lambda_kl", "lambda_entropy", "mean_variance", "grad_norm", "val_nll"):
        assert key in rows[0]
    assert json.loads((tmp_path / "done.json").read_text())["epochs"] == cfg.epochs


def test_mean_only_pretraining_freezes_the_covariance(lfw, tmp_path):
    cfg = smoke("sos", epochs=1, pretrain_epochs=1)
    tr = Trainer(cfg, tmp_path, datasets=lfw, progress=False, tensorboard=False)
    before = [p.detach().clone() for p in tr.model.variance_parameters()]
    mean_before = tr.model.head.mean.bias.detach().clone()
    tr.fit()
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.variance_parameters()))
    assert not torch.equal(mean_before, tr.model.head.mean.bias)


def test_learning_rate_after_pretraining_and_the_means_validation_error(lfw, tmp_path):
    cfg = smoke("sos", epochs=3, pretrain_epochs=1, lr_after_pretrain=1e-4)
    tr = Trainer(cfg, tmp_path / "run", datasets=lfw, progress=False, tensorboard=False)
    steps = len(lfw["train"].images) // cfg.batch_size
    tr.fit(max_steps=steps - 1)  # within the pre-training epoch
    assert [g["lr"] for g in tr.optimizer.param_groups] == [cfg.lr, cfg.lr]
    tr.fit(max_steps=steps + 1)
    assert [g["lr"] for g in tr.optimizer.param_groups] == [1e-4, 1e-4]
    # a resumed run keeps the lower rate
    again = Trainer(cfg, tmp_path / "run", datasets=lfw, progress=False, tensorboard=False)
    again.fit()
    assert [g["lr"] for g in again.optimizer.param_groups] == [1e-4, 1e-4]
    m = read_metrics(tmp_path / "run", "epochs")
    assert len(m["val_mean_mse"]) == 3 and (m["val_mean_mse"] > 0).all()
    # the mean's validation error is the decoded mean's squared error, per pixel, averaged over images
    again.model.eval()
    x = lfw["val"].to_float() if hasattr(lfw["val"], "to_float") else lfw["val"].images.float() / 255
    torch.manual_seed(cfg.seed + 2)
    with torch.no_grad():
        nll, kl, _, obs = again.objective(x, distribution=True)
    assert m["val_mean_mse"][-1] == pytest.approx(float((obs.mean - x.flatten(1)).pow(2).mean()), rel=1e-5)


def test_released_variance_heads_warm_up_linearly_and_resume_on_schedule(lfw, tmp_path):
    cfg = smoke("sos", epochs=4, pretrain_epochs=1, release_warmup_epochs=2)
    steps = len(lfw["train"].images) // cfg.batch_size  # 7 per epoch: a ramp of 14 steps
    tr = Trainer(cfg, tmp_path / "run", datasets=lfw, progress=False, tensorboard=False)
    variance = {id(p) for p in tr.model.variance_parameters()}
    assert {id(p) for p in tr.optimizer.param_groups[1]["params"]} == variance
    assert not variance & {id(p) for p in tr.optimizer.param_groups[0]["params"]}
    tr.fit(max_steps=steps)  # the pre-training epoch: every parameter at lr
    assert [g["lr"] for g in tr.optimizer.param_groups] == [cfg.lr, cfg.lr] and tr.release_step is None
    before = [p.detach().clone() for p in tr.model.variance_parameters()]
    tr.fit(max_steps=steps + 1)  # the first step after release moves the heads by ~lr/14, not lr
    assert tr.release_step == steps
    assert tr.optimizer.param_groups[1]["lr"] == pytest.approx(cfg.lr / 14)
    moved = max(float((a - b.detach()).abs().max()) for a, b in zip(before, tr.model.variance_parameters()))
    assert 0 < moved <= 1.01 * cfg.lr / 14
    tr.fit(max_steps=steps + 3)
    assert tr.optimizer.param_groups[1]["lr"] == pytest.approx(3 * cfg.lr / 14)
    assert tr.optimizer.param_groups[0]["lr"] == cfg.lr
    # a resumed run keeps the release step and finishes the ramp on schedule
    again = Trainer(cfg, tmp_path / "run", datasets=lfw, progress=False, tensorboard=False)
    again.fit(max_steps=steps + 10)
    assert again.release_step == steps
    assert again.optimizer.param_groups[1]["lr"] == pytest.approx(10 * cfg.lr / 14)
    again.fit()
    assert again.optimizer.param_groups[1]["lr"] == cfg.lr


@pytest.mark.parametrize("model, released", [("beta", 0), ("sos_learned_diag", 1), ("dorta", 1)])
def test_log_scale_diagonal_heads_take_their_own_learning_rate(model, released, lfw, tmp_path):
    cfg = smoke(model, epochs=3, pretrain_epochs=1, release_warmup_epochs=1, diagonal_lr_factor=10.0)
    steps = len(lfw["train"].images) // cfg.batch_size
    tr = Trainer(cfg, tmp_path / "run", datasets=lfw, progress=False, tensorboard=False)
    groups = [{id(p) for p in g["params"]} for g in tr.optimizer.param_groups]
    diagonal = {id(p) for p in tr.model.diagonal_parameters()}
    variance = {id(p) for p in tr.model.variance_parameters()}
    assert diagonal and diagonal <= variance and (diagonal < variance) == bool(released)
    assert tr.group_roles == ["network"] + ["released"] * released + ["diagonal"]
    assert groups[-1] == diagonal and set().union(*groups) == {id(p) for p in tr.model.parameters()}
    if released:  # P (or Dorta's stencil weights) keeps the network's rate
        assert groups[1] == variance - diagonal
    tr.fit(max_steps=steps + 1)  # first released step of a one-epoch ramp: lr/7 and 10·lr/7
    lrs = [g["lr"] for g in tr.optimizer.param_groups]
    assert lrs[0] == cfg.lr and lrs[-1] == pytest.approx(10 * cfg.lr / steps)
    if released:
        assert lrs[1] == pytest.approx(cfg.lr / steps)
    tr.fit()
    assert tr.optimizer.param_groups[-1]["lr"] == pytest.approx(10 * cfg.lr)
    # without the factor the groups are as before: the network and every variance head
    plain = Trainer(smoke(model), tmp_path / "plain", datasets=lfw, progress=False, tensorboard=False)
    assert plain.group_roles == ["network", "released"]
    assert {id(p) for p in plain.optimizer.param_groups[1]["params"]} == {
        id(p) for p in plain.model.variance_parameters()}


def former_learning_rates(cfg, roles, step, pretrain, release_step, steps_per_epoch):
    """The rates the trainer set by hand before each step, before its LambdaLR schedule."""
    base = cfg.lr if pretrain or cfg.lr_after_pretrain is None else cfg.lr_after_pretrain
    factor = 1.0
    if not pretrain:
        ramp = cfg.release_warmup_epochs * steps_per_epoch
        if ramp > 0:
            factor = min(1.0, (step - release_step + 1) / ramp)
    scale = {"network": 1.0, "released": factor, "diagonal": factor * cfg.diagonal_lr_factor}
    return [base * scale[role] for role in roles]


@pytest.mark.parametrize("model, settings", [
    ("sos_learned_diag", dict(pretrain_epochs=1, release_warmup_epochs=2, diagonal_lr_factor=10.0,
                              lr_after_pretrain=3e-4)),
    ("sos", dict(pretrain_epochs=0, release_warmup_epochs=1.5))])
def test_the_schedule_gives_the_former_learning_rates_at_every_step(model, settings, lfw, tmp_path, monkeypatch):
    cfg = smoke(model, epochs=4, **settings)
    steps = len(lfw["train"].images) // cfg.batch_size
    seen = []
    plain_step = Trainer.train_step

    def train_step(self, idx, pretrain):
        seen.append((self.step, pretrain, [g["lr"] for g in self.optimizer.param_groups]))
        return plain_step(self, idx, pretrain)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    Trainer(cfg, tmp_path, datasets=lfw, progress=False, tensorboard=False).fit(max_steps=steps + 3)  # mid-ramp
    tr = Trainer(cfg, tmp_path, datasets=lfw, progress=False, tensorboard=False)
    tr.fit()  # resumed
    assert [s for s, _, _ in seen] == list(range(cfg.epochs * steps))
    release = next(s for s, pretrain, _ in seen if not pretrain)
    assert release == settings["pretrain_epochs"] * steps
    for step, pretrain, rates in seen:
        assert rates == former_learning_rates(cfg, tr.group_roles, step, pretrain, release, steps), step
    ramped = {rates[1] for _, pretrain, rates in seen if not pretrain}
    assert len(ramped) == math.ceil(cfg.release_warmup_epochs * steps)  # one per step of the ramp, the last in full


def test_a_checkpoint_without_the_schedule_state_resumes_bit_identically(lfw, tmp_path):
    # a checkpoint from before the LambdaLR schedule: its optimiser's groups hold no initial_lr
    cfg = smoke("sos_learned_diag", epochs=3, pretrain_epochs=1, release_warmup_epochs=1, diagonal_lr_factor=10.0,
                lr_after_pretrain=3e-4)
    full = Trainer(cfg, tmp_path / "a", datasets=lfw, progress=False, tensorboard=False).fit()
    Trainer(cfg, tmp_path / "b", datasets=lfw, progress=False, tensorboard=False).fit(max_steps=10)  # mid-ramp
    state = torch.load(tmp_path / "b/checkpoint.pt", weights_only=False)
    for group in state["optimizer"]["param_groups"]:
        del group["initial_lr"]
    assert "schedule" not in state and "scheduler" not in state
    torch.save(state, tmp_path / "b/checkpoint.pt")
    resumed = Trainer(cfg, tmp_path / "b", datasets=lfw, progress=False, tensorboard=False).fit()
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [[{k: v for k, v in r.items() if k != "wall_time"} for r in read_log(tmp_path / run / "metrics_steps.csv")[1]]
            for run in ("a", "b")]
    assert len(rows[0]) == 3 * len(lfw["train"].images) // cfg.batch_size and rows[0] == rows[1]


def test_pretraining_ends_when_the_validation_nll_levels_off(lfw, tmp_path):
    cfg = smoke("sos", epochs=3, pretrain_epochs=20, pretrain_min_improvement=0.05)
    tr = Trainer(cfg, tmp_path, datasets=lfw, progress=False, tensorboard=False)
    # a slow start is no plateau; neither is one noisy epoch; a flat tail over 3 epochs is
    for nll in [100.0, 99.5, 90.0, 60.0, 61.0, 40.0, 35.0, 34.0]:
        tr._update_pretrain(nll)
        assert not tr.pretrain_done, nll
    tr._update_pretrain(33.5)  # the last 3 epochs gained 0.5/epoch < 5 % of the 66.5 gained
    assert tr.pretrain_done
    # the decision and the history survive a checkpoint
    tr.save_checkpoint()
    again = Trainer(cfg, tmp_path, datasets=lfw, progress=False, tensorboard=False)
    again.load_checkpoint()
    assert again.pretrain_done and again.pretrain_val_nll == tr.pretrain_val_nll
    # without a tolerance, pre-training always runs its full count
    plain = Trainer(smoke("sos", pretrain_epochs=5), tmp_path / "b", datasets=lfw, progress=False, tensorboard=False)
    for nll in [10.0, 10.0, 10.0, 10.0, 10.0]:
        plain._update_pretrain(nll)
    assert not plain.pretrain_done


def test_pretraining_stops_early_in_a_real_run(lfw, tmp_path):
    cfg = smoke("sos", epochs=12, pretrain_epochs=10, pretrain_min_improvement=0.5)
    Trainer(cfg, tmp_path, datasets=lfw, progress=False, tensorboard=False).fit()
    rows = epochs_log(tmp_path)
    flags = [float(r["pretrain"]) for r in rows]
    used = int(sum(flags))
    assert flags == [1.0] * used + [0.0] * (len(rows) - used)  # one block, then the covariance
    assert 4 <= used < 10  # at least the window + 1 epochs, and before the cap


def principal_angles_deg(A, B):
    qa, _ = torch.linalg.qr(A.double())
    qb, _ = torch.linalg.qr(B.double())
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(max=1)
    return torch.rad2deg(torch.arccos(cos))


@pytest.mark.parametrize("model", ["distribution", "sos"])
def test_recovers_the_covariance_subspace_of_low_rank_data(model, tmp_path, lowrank_data):
    ds, mu, P_true = lowrank_data(600, (1, 8, 8), rank=2, seed=0, noise=0.01, factor_scale=0.2)
    data = {"train": ds, "val": None}
    # No entropy target here: with the reference's always-on damping it would pull H up
    # to ξ_H and inflate P past the data's covariance. The VAE gets almost no latent
    # capacity (ξ_KL = 0.5 nats), so P must carry the covariance at every z.
    cfg = get_config("lfw", "smoke", model=model, rank=2, epochs=30, pretrain_epochs=2, lr=1e-2,
                     batch_size=50, target_kl=0.5, target_entropy_at=None)
    fitted = Trainer(cfg, tmp_path, datasets=data, progress=False, tensorboard=False).fit().eval()
    if model == "distribution":
        factors = fitted.cov_factor.detach()[None]
    else:
        with torch.no_grad():
            z = torch.randn(20, cfg.latent_dim, generator=torch.Generator().manual_seed(0))
            factors = fitted.decode(z).cov_factor
    # two random 2-d subspaces of R^64 are typically ~80° apart
    worst = max(float(principal_angles_deg(P, P_true).max()) for P in factors)
    assert worst < 10.0, worst


@pytest.mark.parametrize("channels_last", [False, None])  # None: the CPU's choice, channels-last
def test_resume_after_interruption_gives_identical_weights(channels_last, lfw, tmp_path):
    cfg = smoke("sos", epochs=3, checkpoint_every=4, channels_last=channels_last)
    data = dict(lfw)
    data["train"].flip = True  # exercise the flip generator too
    full = Trainer(cfg, tmp_path / "a", datasets=data, progress=False, tensorboard=False).fit()
    interrupted = Trainer(cfg, tmp_path / "b", datasets=data, progress=False, tensorboard=False)
    interrupted.fit(max_steps=19)  # mid-epoch
    assert interrupted.step == 19 and interrupted.step_in_epoch > 0
    resumed = Trainer(cfg, tmp_path / "b", datasets=data, progress=False, tensorboard=False).fit()
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list(csv.reader(open(tmp_path / "a/metrics_steps.csv")))) == \
        len(list(csv.reader(open(tmp_path / "b/metrics_steps.csv"))))
    data["train"].flip = False


def test_a_switch_left_to_the_device_takes_its_measured_choice(lfw, tmp_path):
    tr = Trainer(smoke("sos", channels_last=None), tmp_path, datasets=lfw, progress=False, tensorboard=False)
    assert tr.switches == {"channels_last": True, "compile": False}
    assert tr.model.encoder.body[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("model,message", [("beta", "loss became nan"), ("sos", "the covariance broke down")])
def test_nan_detector_names_the_step(model, message, lfw, tmp_path):
    images = lfw["train"].images.clone().float() / 255
    images[13] = float("nan")
    from sosvae_core.data import ImageTensorDataset
    data = {"train": ImageTensorDataset(images), "val": None}
    cfg = smoke(model, epochs=2)
    with pytest.raises(TrainingDiverged, match=message + r".* at step \d+ \(epoch 0\)"):
        Trainer(cfg, tmp_path, datasets=data, progress=False, tensorboard=False).fit()


def test_variance_explosion_is_detected(lfw, tmp_path):
    cfg = smoke("sos_learned_diag", epochs=2, pretrain_epochs=0)
    tr = Trainer(cfg, tmp_path, datasets=lfw, progress=False, tensorboard=False)
    with torch.no_grad():
        tr.model.head.diag.bias.fill_(1e5)
    with pytest.raises(TrainingDiverged, match=r"mean variance exploded to .* at step 0"):
        tr.fit()


def test_cli_train_resume_and_errors(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--config", "lfw", "--profile", "smoke", "--run-dir", str(run), "--no-progress",
            "--set", "epochs=2"]
    assert cli(args + ["--max-steps", "5"]) == 0
    assert "stopped at epoch 0, step 5" in capsys.readouterr().out
    assert cli(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "finished: epoch 2" in capsys.readouterr().out
    assert load_run(run).image_shape == (1, 25, 25)
    assert cli(["train", "--config", "nope", "--run-dir", str(tmp_path / "x")]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert cli(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert cli(["train", "--config", "celeba", "--profile", "smoke", "--data-root", str(tmp_path / "nowhere"),
                "--run-dir", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1


def test_progress_says_trained_or_loaded_and_prints_a_line_per_epoch(lfw, tmp_path, capsys):
    cfg = smoke("sos", epochs=2)
    get_or_train(cfg, runs_dir=tmp_path, datasets=lfw, progress=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"training {run_name(cfg)} (sos on lfw, smoke profile, 2 epochs)")
    epochs = [line for line in out if line.startswith("[lfw/sos] epoch ")]
    assert [line.split()[2] for line in epochs] == ["1/2", "2/2"]
    for key in ("NLL", "(val", "KL", "H", "λ_KL", "λ_H", "variance", "/epoch", "ETA"):
        assert key in epochs[-1], epochs[-1]
    assert epochs[-1].endswith("ETA 0m00s")
    get_or_train(cfg, runs_dir=tmp_path, datasets=lfw, progress=True)
    assert capsys.readouterr().out.startswith(f"loaded {run_name(cfg)} (sos on lfw)")


def test_epoch_line_formats_missing_numbers_and_long_runs():
    cfg = smoke("distribution", epochs=100)
    line = epoch_line(cfg, 1, {"nll": 12.5, "kl": float("nan"), "wall_time": 4000.0}, pretrain=True)
    assert line.startswith("[lfw/distribution] epoch 1/100 (mean only) · NLL 12.5 (val —) · mean MSE (val) — · KL —")
    assert "· 1h06m/epoch ·" in line and line.endswith("ETA 110h00m")


# -- a run folder under kills, a second writer, bad values and failing disks ------------------------

# 7 steps an epoch (70 training faces, batch 10), a checkpoint every 4 steps and at each epoch's end
KILLED_RUN = ["train", "--config", "lfw", "--profile", "smoke", "--no-progress", "--set", "epochs=3", "checkpoint_every=4"]


def logged(run, kind):
    """A metrics log's whole rows without the wall time (the one column that differs between runs)."""
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in read_log(run / f"metrics_{kind}.csv")[1]]


def killed_at(when, step, run):
    """The command line into `run`, killed with SIGKILL at `when` of `step` (tests/_kill_worker.py)."""
    return subprocess.run([sys.executable, str(KILL_WORKER), when, str(step), *KILLED_RUN, "--run-dir", str(run)],
                          capture_output=True, text=True, timeout=600)


def test_kill_9_at_any_point_resumes_to_the_uninterrupted_weights_and_metrics(tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "killed"
    assert killed_at("never", 0, reference).returncode == 0  # the same processes, uninterrupted
    # before the first checkpoint; mid-epoch; half-way through a step's row, and an epoch's row
    for when, step, checkpoint in [("after-row", 3, None), ("after-row", 10, 8), ("mid-row", 13, 12),
                                   ("mid-epoch-row", 14, 12)]:
        proc = killed_at(when, step, run)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        saved = torch.load(run / "checkpoint.pt", weights_only=False)["step"] if checkpoint else None
        assert saved == checkpoint and (run / "checkpoint.pt").exists() == bool(checkpoint)
        cut = (run / f"metrics_{'epochs' if when == 'mid-epoch-row' else 'steps'}.csv").read_text()
        assert cut.endswith("\n") == (when == "after-row")  # the kill left half a row
        steps = [int(r["step"]) for r in logged(run, "steps")]
        assert steps == list(range(1, step + (when != "mid-row")))  # whole rows, each step once
    finished = killed_at("never", 0, run)
    assert finished.returncode == 0, finished.stderr
    for kind in ("steps", "epochs"):  # no step twice, and the epoch averages of the uninterrupted run
        assert logged(run, kind) == logged(reference, kind)
    a, b = (torch.load(r / "checkpoint.pt", weights_only=False)["model"] for r in (reference, run))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_cut_last_row_is_left_out_and_resume_continues(lfw, tmp_path):
    cfg = smoke("sos", epochs=2, checkpoint_every=4)
    Trainer(cfg, tmp_path, datasets=lfw, progress=False, tensorboard=False).fit(max_steps=5)
    with open(tmp_path / "metrics_steps.csv", "a") as f:
        f.write("0.5,1234.5,0.1")  # what a full disk leaves of the next row
    assert list(read_metrics(tmp_path)["step"]) == [1, 2, 3, 4, 5]  # a reader sees whole rows
    Trainer(cfg, tmp_path, datasets=lfw, progress=False, tensorboard=False).fit()  # was a TypeError
    assert list(read_metrics(tmp_path)["step"]) == list(range(1, 15))
    assert (tmp_path / "metrics_steps.csv").read_text().endswith("\n")


def test_a_second_writer_is_told_who_holds_the_run_and_stops_or_waits(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "sosvae_core", "train", "--config", "lfw", "--profile", "smoke",
               "--no-progress", "--set", "epochs=1", "--run-dir", str(run)]
    busy = f"{run} is in use by process {os.getpid()} on "
    with folder_lock(run):  # this process trains there
        second = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert second.returncode == 2 and second.stderr.startswith(f"error: {busy}"), second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "(train --wait)" in second.stderr
        assert [p.name for p in run.iterdir()] == [".lock"]  # it wrote nothing
        waiting = subprocess.Popen(command + ["--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = next(line for line in waiting.stderr if busy in line or not line)
        assert line.startswith(busy) and line.rstrip().endswith("; waiting for it to finish"), line
        assert not (run / "config.json").exists()
    out, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0 and "finished: epoch 1" in out, err
    assert [int(r["step"]) for r in logged(run, "steps")] == list(range(1, 8))


def test_another_run_is_refused_before_anything_is_written_and_resume_takes_what_may_change(lfw, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--config", "lfw", "--profile", "smoke", "--no-progress", "--run-dir", str(run), "--set",
            "epochs=1"]
    assert cli(base) == 0
    config = (run / "config.json").read_text()
    capsys.readouterr()
    assert cli(base + ["--model", "beta"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the run folder {run} holds another run (model: 'sos' there, 'beta' here")
    assert len(err.strip().splitlines()) == 1 and (run / "config.json").read_text() == config
    # --resume applies epochs and the runtime fields, and refuses the rest by name
    assert cli(["train", "--resume", str(run), "--no-progress", "--set", "epochs=2", "checkpoint_every=3"]) == 0
    assert "finished: epoch 2, step 14" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["epochs"] == 2 and len(epochs_log(run)) == 2
    assert cli(["train", "--resume", str(run), "--set", "lr=0.5"]) == 2
    assert "--resume cannot change what the run trains (lr: 0.001 there, 0.5 here); only epochs," \
        in capsys.readouterr().err
    assert cli(["train", "--resume", str(run), "--model", "beta"]) == 2
    assert "--model cannot go with --resume" in capsys.readouterr().err
    assert cli(["train", "--resume", str(run), "--set", "epochs=1"]) == 2
    assert "has trained 2 epochs, more than epochs=1; ask for epochs=2 or more" in capsys.readouterr().err


def test_a_run_folder_extended_by_resume_is_not_loaded_as_the_shorter_config(lfw, tmp_path):
    cfg = smoke("beta", epochs=1)
    run = get_or_train(cfg, runs_dir=tmp_path, datasets=lfw, progress=False).run_dir
    Trainer(cfg.replace(epochs=2), run, datasets=lfw, progress=False, tensorboard=False).fit()
    with pytest.raises(ValueError, match=r"holds another run \(epochs: 2 there, 1 here\); move it away"):
        get_or_train(cfg, runs_dir=tmp_path, datasets=lfw, progress=False)


@pytest.mark.parametrize("setting", ["epochs=abc", "rank=0", "batch_size=0", "seed=1.5", "damping=nan",
                                     "channels=()", "batch_size=-5", "eps=0", "rank=-1"])
def test_bad_config_values_are_one_line_before_anything_is_written(setting, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["train", "--config", "lfw", "--profile", "smoke", "--run-dir", str(run), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: config field {setting.split('=')[0]} must be ") and "\n" not in err, err
    assert not run.exists()  # no config.json, no done.json after 0 steps


def failing(real, code, when):
    """`real(path, …)`, but raising OSError `code` on `path` where `when(path, …)` holds."""
    def call(path, *args, **kwargs):
        if when(path, *args):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)
    return call


def test_read_only_folder_and_full_disk_are_one_line_with_the_fix(tmp_path, capsys, monkeypatch, full_disk):
    run = tmp_path / "runs" / "run"
    args = ["train", "--config", "lfw", "--profile", "smoke", "--no-progress", "--set", "epochs=2", "--run-dir",
            str(run)]
    with monkeypatch.context() as patch:  # as root, chmod would not stop a write
        patch.setattr(os, "mkdir", failing(os.mkdir, errno.EROFS, lambda path, *_: str(tmp_path / "runs") in str(path)))
        assert cli(args) == 2
    assert capsys.readouterr().err == (f"error: cannot write {run}: Read-only file system; use a "
                                       f"folder you can write to (--runs-dir / $SOSVAE_RUNS_DIR for runs, --output "
                                       f"for run_all), or make that one writable\n")
    with monkeypatch.context() as patch:  # the disk fills while logging step 5
        patch.setattr(metrics_log, "_append", failing(metrics_log._append, errno.ENOSPC, lambda path, text: ",5,0," in text))
        assert cli(args) == 2
    assert capsys.readouterr().err == (f"error: cannot write {run / 'metrics_steps.csv'}: No space left on device "
                                       f"(the disk is full); free space there, then run the same command again: the "
                                       f"run resumes from its last checkpoint\n")
    full_disk(20_000)  # then while writing the checkpoint: config.json fits, the checkpoint does not
    assert cli(args) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write {run / 'checkpoint.pt'}: No space left on device")
    full_disk(None)
    assert cli(args) == 0  # space again: the run resumes and finishes, every step once
    assert [int(r["step"]) for r in logged(run, "steps")] == list(range(1, 15))


def test_damaged_config_and_checkpoint_are_named_with_their_fix(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["train", "--config", "lfw", "--profile", "smoke", "--no-progress", "--run-dir", str(run),
                "--set", "epochs=1"]) == 0
    (run / "config.json").write_text("{garbage")
    capsys.readouterr()
    assert cli(["train", "--resume", str(run), "--no-progress", "--set", "epochs=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'config.json'} is not valid JSON (") and len(err.splitlines()) == 1
    assert "; delete it (checkpoint.pt holds the config too) or use another run folder" in err
    (run / "config.json").unlink()  # the fix: the checkpoint's config is resumed
    assert cli(["train", "--resume", str(run), "--no-progress", "--set", "epochs=2"]) == 0
    assert "finished: epoch 2" in capsys.readouterr().out
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    assert cli(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {checkpoint} is damaged (") and len(err.splitlines()) == 1
    assert err.rstrip().endswith("; delete it to train the run again")



@pytest.mark.slow
def test_a_compiled_training_step_gives_the_eager_step(lfw, tmp_path):
    # `--set compile=True` (inductor): the first step's loss, terms and gradient norm are eager
    # mode's to float32 rounding; the variance heads train in it (no pre-training)
    cfg = smoke("sos", epochs=1, pretrain_epochs=0)
    rows = {}
    for compile in (False, True):
        Trainer(cfg.replace(compile=compile), tmp_path / str(compile), datasets=lfw, progress=False,
                tensorboard=False).fit(max_steps=1)
        rows[compile] = read_log(tmp_path / str(compile) / "metrics_steps.csv")[1][0]
    for key in ("loss", "nll", "kl", "entropy", "mean_variance", "grad_norm"):
        assert float(rows[True][key]) == pytest.approx(float(rows[False][key]), rel=1e-5), key


@pytest.mark.slow
@pytest.mark.parametrize("model", list(REGISTRY))
def test_every_model_compiles_to_the_eager_loss_and_gradients(model, lfw):
    # torch.compile's tracing (dynamo, AOT autograd) of a training step, without inductor's code
    # generation: the loss and every gradient are eager mode's, and only Dorta et al.'s sparse
    # solve (shapes that depend on the data) breaks the graph
    from torch._dynamo.utils import counters
    from sosvae_core.objective import ConstraintConfig, Multipliers, ObjectiveTerms, lagrangian
    from sosvae_core.networks import build_model
    cfg = smoke(model, pretrain_epochs=0)
    x = lfw["train"].images[:cfg.batch_size].float() / 255
    torch.manual_seed(0)
    net = build_model(cfg, x.shape[1:])
    terms = ObjectiveTerms(net, model)
    constraints = ConstraintConfig(cfg.target_kl, cfg.target_entropy(x.shape[1:]))
    torch._dynamo.reset()
    counters.clear()
    results = []
    for forward in (terms, torch.compile(terms, backend="aot_eager")):
        torch.manual_seed(1)
        nll, kl, entropy, _ = forward(x)
        loss = lagrangian(nll, kl, entropy, Multipliers(), constraints)[0]
        results.append((loss, torch.autograd.grad(loss, list(net.parameters()))))
    (eager, eager_grads), (compiled, compiled_grads) = results
    torch.testing.assert_close(compiled, eager)
    scale = max(float(g.abs().max()) for g in eager_grads)  # a bias before a norm layer: rounding noise only
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)
    assert (sum(counters["graph_break"].values()) > 0) == (model == "dorta"), dict(counters["graph_break"])
