"""Run folders: found by name, trained once then loaded; metrics read back; clear errors."""
import csv

import numpy as np
import pytest
import torch

from sosvae_core.configs import get_config
from sosvae_core.runs import get_or_train, load_run, read_metrics, run_name
from sosvae_core.train import Trainer


def smoke(model, **kw):
    return get_config("lfw", "smoke", model=model, lr=1e-3, pretrain_epochs=1, **kw)


def test_get_or_train_trains_once_then_loads(lfw, tmp_path, monkeypatch):
    cfg = smoke("beta", epochs=1)
    m1 = get_or_train(cfg, runs_dir=tmp_path, datasets=lfw, progress=False)
    assert (tmp_path / run_name(cfg) / "done.json").exists()
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("trained twice"))
    m2 = get_or_train(cfg, runs_dir=tmp_path, datasets=lfw, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not m2.training
    # runtime-only fields find the same run (no retraining) and come back as asked
    fast = cfg.replace(fid_n=7, amp=True, checkpoint_every=3, channels_last=True)
    assert run_name(fast) == run_name(cfg)
    m3 = get_or_train(fast, runs_dir=tmp_path, datasets=lfw, progress=False)
    assert m3.config.fid_n == 7 and m3.config == fast
    # a field that changes what is trained is another run
    assert run_name(cfg.replace(lr=cfg.lr * 2)) != run_name(cfg)
    # the metrics logs read back as arrays, one value per logged step / epoch
    run = tmp_path / run_name(cfg)
    epochs = read_metrics(run, "epochs")
    with open(run / "metrics_epochs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(epochs) == set(rows[0]) and len(epochs["nll"]) == len(rows) == 1
    np.testing.assert_allclose(epochs["nll"], [float(rows[0]["nll"])])
    assert len(read_metrics(run)["step"]) >= 1


def test_load_run_without_a_checkpoint_says_how_to_fix_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*; train it first"):
        load_run(tmp_path)
