"""Data-parallel training under torchrun (2 CPU processes, gloo) against one process.

What must hold (sosvae_core/train.py, "Distributed"):
  - step s trains on the same global batch as one process: the DistributedSampler
    shards one shared permutation by striding, so rank r gets rows r, r + 2, ... of the
    global batch; the flips and the posterior noise are drawn for the global batch and
    sharded the same way;
  - the gradient is the global batch's (the loss is scaled by the world size before
    DDP averages) and the multipliers see the all-reduced violations, so every rank
    holds the same weights and multipliers;
  - rank 0 checkpoints, every rank resumes from that file.

The comparison uses norm='group': BatchNorm statistics are per process, so with
BatchNorm a 2-process run is a different model (on CUDA one would convert to
SyncBatchNorm first). It runs in float64 (tests/_ddp_worker.py), because in float32
the two runs separate quickly although both are right: summing in another order
changes a gradient in its 7th digit, and Adam, which divides by the gradient's own
size, turns those digits into whole steps where a gradient is ~0 (the biases of the
convolutions in front of a norm layer are exactly such parameters: the norm removes
them). Measured on this smoke config after 42 steps at lr 1e-3, float32: the means
differ by up to 0.08 (pixels in [0, 1]) and λ_KL by 4 %; float64: the outputs agree
to ~1e-10 and the multipliers to ~1e-13 relative.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sosvae_core.configs import get_config
from sosvae_core.data import load_splits
from sosvae_core.networks import build_model
from sosvae_core.objective import ObjectiveTerms
from sosvae_core.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_ddp_worker.py"
# both multipliers become active within the run (λ_H from about step 18)
SETTINGS = ["norm=group", "epochs=6", "lr=1e-3", "target_kl=2.0", "target_entropy_at=(625, -2700.0)", "checkpoint_every=4"]
STEPS = 42  # 6 epochs of 7 batches of 10 (70 training faces)
TIMEOUT = 300


def run(args, tmp_path, float64=False, world=1):
    """One training command: under torchrun (a free port found by --standalone) or alone."""
    env = {k: v for k, v in os.environ.items() if k not in
           ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DDP_TEST_FLOAT64")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), SOSVAE_RUNS_DIR=str(tmp_path / "runs"))
    if float64:
        env["DDP_TEST_FLOAT64"] = "1"
    launch = [sys.executable]
    if world > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    done = subprocess.run(launch + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def worker(tmp_path, name, world, float64=False):
    """Train the smoke config through the CLI with per-rank dumps; returns the dumps."""
    dump = tmp_path / f"dump-{name}"
    dump.mkdir()
    run([WORKER, dump, "train", "--config", "lfw", "--profile", "smoke", "--run-dir", tmp_path / name,
         "--device", "cpu", "--no-progress", "--set", *SETTINGS], tmp_path, float64, world)
    return [torch.load(dump / f"rank{r}.pt") for r in range(world)]


def outputs(dump, dtype):
    """The trained network's outputs on the validation images, z = posterior mean."""
    cfg = get_config("lfw", "smoke", "sos", norm="group")  # the architecture is all that matters here
    x = load_splits("lfw", n_images=200, seed=42, progress=False)["val"].to_float().to(dtype)
    model = build_model(cfg, x.shape[1:]).to(dtype)
    model.load_state_dict(dump["model"])
    model.eval()
    with torch.no_grad():
        q = model.encode(x)
        obs = model.head(model.decoder(q.loc))  # decode() would cast to float32
        return {"q_loc": q.loc, "q_scale": q.scale, "mean": obs.loc, "P": obs.cov_factor,
                "nll": -obs.log_prob(x.flatten(1))}


def test_ranks_take_rows_of_the_global_batch_with_its_flips_and_noise(tmp_path):
    """In one process: the shard of rank r (rows r::2) sees exactly the flips and the
    posterior noise that the whole global batch gets in a single process."""
    data = load_splits("lfw", n_images=200, seed=42, progress=False)
    data["train"].flip = True
    cfg = get_config("lfw", "smoke", "sos", norm="group")
    tr = Trainer(cfg, tmp_path, datasets=data, device="cpu", progress=False, tensorboard=False)
    idx = torch.arange(10)
    start = tr.flip_gen.get_state()
    whole = tr._batch(idx, True)
    torch.manual_seed(3)
    nll = ObjectiveTerms(tr.model, "sos")(whole)[0]
    for rank in (0, 1):
        tr.rank, tr.world = rank, 2
        tr.flip_gen.set_state(start)
        shard = tr._batch(idx[rank::2], True)
        assert torch.equal(shard, whole[rank::2])
        torch.manual_seed(3)
        shard_nll = ObjectiveTerms(tr.model, "sos", rank=rank, world=2)(shard)[0]
        torch.testing.assert_close(shard_nll, nll[rank::2], rtol=1e-5, atol=0)
    data["train"].flip = False


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(tmp_path):
    one, = worker(tmp_path, "one", world=1, float64=True)
    rank0, rank1 = worker(tmp_path, "two", world=2, float64=True)
    assert one["step"] == rank0["step"] == rank1["step"] == STEPS

    # the same global batches, sharded by striding
    for s, r0, r1 in zip(one["steps"], rank0["steps"], rank1["steps"]):
        assert s["idx"] == [i for pair in zip(r0["idx"], r1["idx"]) for i in pair]
    # the ranks agree exactly: weights and, at every step, the multipliers
    assert all(torch.equal(rank0["model"][k], rank1["model"][k]) for k in rank0["model"])
    assert [(s["lambda_kl"], s["lambda_entropy"]) for s in rank0["steps"]] == \
        [(s["lambda_kl"], s["lambda_entropy"]) for s in rank1["steps"]]
    assert rank0["steps"][-1]["lambda_kl"] > 100 and rank0["steps"][-1]["lambda_entropy"] > 100

    # and match the single process up to float64 rounding: measured ≤ 1e-14 relative for
    # the multipliers and ≤ 5e-13 for the outputs; float32 rounding alone would be 1e-7,
    # and a wrong batch, noise or gradient scale shows at 1e-3 and more
    for s, r in zip(one["steps"], rank0["steps"]):
        for key in ("grad_norm", "lambda_kl", "lambda_entropy"):  # Adam alone would hide a
            assert abs(s[key] - r[key]) <= 1e-10 * max(1.0, abs(s[key])), (key, s[key], r[key])  # wrong scale
    # Compared as functions, because the biases in front of a norm layer drift apart
    # with no effect on them (see the module docstring).
    a, b = outputs(one, torch.float64), outputs(rank0, torch.float64)
    for key in a:
        scale = float(a[key].abs().max())
        err = float((a[key] - b[key]).abs().max())
        assert err <= 1e-9 * max(scale, 1e-3), (key, err, scale)


def read_log(path):
    """A metrics log without its wall-time column (the only field that may differ)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "wall_time"} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_torchrun_resume_after_interruption_gives_identical_weights(tmp_path):
    """The real entry point (`torchrun -m sosvae_core train`), float32: stopped mid-epoch
    with --max-steps and resumed with --resume, it ends exactly where an uninterrupted
    2-process run ends."""
    rank0, rank1 = worker(tmp_path, "full", world=2)
    assert all(torch.equal(rank0["model"][k], rank1["model"][k]) for k in rank0["model"])
    assert all(torch.equal(rank0["multipliers"][k], rank1["multipliers"][k]) for k in rank0["multipliers"])

    cli = ["-m", "sosvae_core", "train", "--device", "cpu", "--no-progress"]  # gloo, also on a GPU host
    out = run(cli + ["--config", "lfw", "--profile", "smoke", "--run-dir", tmp_path / "cut",
                     "--max-steps", "19", "--set", *SETTINGS], tmp_path, world=2)
    assert "stopped at epoch 2, step 19" in out  # mid-epoch, after a periodic checkpoint at 16
    out = run(cli + ["--resume", tmp_path / "cut"], tmp_path, world=2)
    assert f"finished: epoch 6, step {STEPS}" in out

    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for key in ("model", "multipliers"):
        assert all(torch.equal(full[key][k], resumed[key][k]) for k in full[key]), key
    assert all(torch.equal(full["model"][k], rank0["model"][k]) for k in full["model"])
    for state_a, state_b in zip(full["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    for kind in ("steps", "epochs"):
        assert read_log(tmp_path / "full" / f"metrics_{kind}.csv") == \
            read_log(tmp_path / "cut" / f"metrics_{kind}.csv"), kind
