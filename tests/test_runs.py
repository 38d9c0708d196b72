"""Run folders: found by name, trained once then loaded; metrics read back; clear errors."""
import csv
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from sosvae_core.__main__ import main as cli
from sosvae_core.configs import get_config
from sosvae_core.notebook import setup
from sosvae_core.paths import ENV_RUNS_DIR, DamagedFile
from sosvae_core.runs import data_identity, get_or_train, load_run, read_metrics, run_name
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


def test_the_data_are_part_of_the_run_name(tmp_path, celeba_root):
    cfg = get_config("celeba", "smoke", "sos")
    name = run_name(cfg, celeba_root)
    moved = tmp_path / "moved"  # elsewhere, in torchvision's layout: the same images, the same run
    shutil.copytree(celeba_root / "img_align_celeba", moved / "celeba" / "img_align_celeba")
    assert run_name(cfg, moved) == name and data_identity(cfg, moved)["files"] == 40
    (moved / "celeba" / "img_align_celeba" / sorted(os.listdir(moved / "celeba" / "img_align_celeba"))[0]).unlink()
    assert run_name(cfg, moved) != name  # other images, another run
    # the bundled data: a fixed fingerprint, whatever the data root
    assert data_identity(get_config("lfw", "smoke"), moved) == {
        "dataset": "lfw", "source": "bundled", "files": None, "fingerprint": "c38346f3dfbad281"}
    assert data_identity(get_config("portraits", "smoke"))["fingerprint"] == "d7fbd3913a99a673"


def test_another_data_root_trains_another_run_and_resume_checks_the_data(tmp_path, celeba_root, no_ambient_cache,
                                                                         capsys):
    cfg = get_config("celeba", "smoke", "beta", epochs=1)
    other = tmp_path / "other"
    shutil.copytree(celeba_root / "img_align_celeba", other / "img_align_celeba")
    (other / "img_align_celeba" / sorted(os.listdir(other / "img_align_celeba"))[0]).unlink()
    first = get_or_train(cfg, runs_dir=tmp_path / "runs", data_root=celeba_root, device="cpu", progress=True)
    capsys.readouterr()
    second = get_or_train(cfg, runs_dir=tmp_path / "runs", data_root=other, device="cpu", progress=True)
    assert capsys.readouterr().out.startswith("training ")  # not "loaded" from the first data's run
    assert second.run_dir != first.run_dir
    assert json.loads((second.run_dir / "done.json").read_text())["data"]["files"] == 39
    assert cli(["train", "--resume", str(first.run_dir), "--data-root", str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: the run in {first.run_dir} was trained on other data (celeba: folder of 40 images" in err
    assert "than these (celeba: folder of 39 images" in err and "resume it with the --data-root it was trained on" in err


def test_a_damaged_checkpoint_is_named_with_its_fix_by_every_loader(lfw, tmp_path, capsys, monkeypatch):
    cfg = smoke("sos", epochs=1)
    run = get_or_train(cfg, runs_dir=tmp_path, datasets=lfw, progress=False).run_dir
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:3000])
    damaged = rf"^checkpoint {re.escape(str(path))} is damaged \(.*\); delete it to train the run again$"
    with pytest.raises(DamagedFile, match=damaged):
        load_run(run)
    capsys.readouterr()
    with pytest.raises(DamagedFile, match=damaged):
        get_or_train(cfg, runs_dir=tmp_path, datasets=lfw, progress=True)
    assert "loaded" not in capsys.readouterr().out  # said only once it is
    monkeypatch.setenv(ENV_RUNS_DIR, str(tmp_path))  # the notebooks' loader
    ctx = setup("smoke", "lfw", output_dir=tmp_path / "out")
    with pytest.raises(DamagedFile, match=damaged):
        ctx.model("sos", lr=1e-3, pretrain_epochs=1, epochs=1)
    for command in (["train", "--resume", str(run)], ["fid", "--run", str(run)]):
        assert cli(command) == 2
        err = capsys.readouterr().err
        assert re.match(damaged, err.removeprefix("error: ").rstrip()) and len(err.splitlines()) == 1, err
    path.unlink()  # the fix: the run is trained again
    get_or_train(cfg, runs_dir=tmp_path, datasets=lfw, progress=True)
    assert capsys.readouterr().out.startswith(f"training {run.name}")
