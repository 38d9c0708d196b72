"""One runs folder for the command line, run_all.sh and Jupyter, and atomic writes (sosvae_core.paths)."""
import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sosvae_core import paths, runner
from sosvae_core.__main__ import main as cli
from sosvae_core.configs import get_config
from sosvae_core.notebook import setup
from sosvae_core.paths import atomic_file, write_json, write_text
from sosvae_core.runs import run_name


def test_runs_root_order_argument_then_environment_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_RUNS_DIR, str(tmp_path / "env"))
    assert paths.runs_root(tmp_path / "arg") == tmp_path / "arg"
    assert paths.runs_root() == tmp_path / "env"
    monkeypatch.delenv(paths.ENV_RUNS_DIR)
    assert paths.runs_root() == paths.home() / "runs"


def test_home_is_the_checkout_holding_the_package():
    # the tests run from a source checkout: pyproject.toml beside sosvae_core/
    assert (paths.home() / "pyproject.toml").is_file()
    assert (paths.home() / "sosvae_core" / "paths.py").is_file()


def test_home_outside_a_checkout_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "_PACKAGE", tmp_path / "site-packages" / "sosvae_core")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.home() == tmp_path / "xdg" / "sosvae"


def test_cache_root_sits_beside_the_runs_unless_told(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.ENV_CACHE_DIR, raising=False)
    assert paths.cache_root(runs_dir=tmp_path / "a" / "runs") == tmp_path / "a" / "cache"
    assert paths.cache_root(tmp_path / "c") == tmp_path / "c"
    monkeypatch.setenv(paths.ENV_CACHE_DIR, str(tmp_path / "env"))
    assert paths.cache_root(runs_dir=tmp_path / "a" / "runs") == tmp_path / "env"


def test_cache_root_is_the_one_resolver_the_data_layer_uses_too(monkeypatch, tmp_path):
    """The app's default is cache/ beside the runs; the data layer called on its own caches only
    where told (beside_runs=False); $SOSVAE_CACHE_DIR overrides both defaults; False turns it off."""
    from sosvae_core.data import store
    monkeypatch.delenv(paths.ENV_CACHE_DIR, raising=False)
    monkeypatch.delenv(paths.ENV_RUNS_DIR, raising=False)
    assert paths.cache_root() == paths.home() / "cache"
    assert paths.cache_root(beside_runs=False) is None
    assert paths.cache_root(True, beside_runs=False) is None and paths.cache_root("", beside_runs=False) is None
    assert paths.cache_root(False) is None and paths.cache_root(False, beside_runs=False) is None
    assert paths.cache_root("~/c", beside_runs=False) == Path.home() / "c"
    monkeypatch.setenv(paths.ENV_CACHE_DIR, str(tmp_path / "env"))
    assert paths.cache_root() == paths.cache_root(beside_runs=False) == paths.cache_root(True) == tmp_path / "env"
    assert paths.cache_root(tmp_path / "arg", beside_runs=False) == tmp_path / "arg"
    assert paths.cache_root(False) is None
    assert store.cache_root is paths.cache_root  # no second resolver in the data layer
    assert not hasattr(store, "resolve_cache_dir")


def test_a_run_trained_by_the_cli_is_loaded_by_a_notebook(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(paths.ENV_RUNS_DIR, str(tmp_path / "runs"))
    monkeypatch.delenv(paths.ENV_DATA_ROOT, raising=False)
    assert cli(["train", "--config", "lfw", "--profile", "smoke", "--no-progress"]) == 0
    folder = tmp_path / "runs" / run_name(get_config("lfw", "smoke", "sos"))
    assert (folder / "done.json").exists()
    capsys.readouterr()
    ctx = setup("smoke", "lfw", output_dir=tmp_path / "out" / "10_widgets")
    assert ctx.runs_dir == tmp_path / "runs" and ctx.cache_dir == paths.cache_root()
    model = ctx.model("sos")
    assert model.run_dir == folder
    assert f"loaded {folder.name}" in capsys.readouterr().out  # loaded, not trained again


def test_run_all_hands_the_notebooks_the_shared_runs_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_RUNS_DIR, str(tmp_path / "shared"))
    seen = []

    def fake_run_notebook(path, output, parameters, stream=None, prefix=""):
        seen.append(parameters["runs_dir"])
        return {"notebook": path.name, "wall_time_s": 0.0, "metrics": {}, "figures": []}

    monkeypatch.setattr(runner, "run_notebook", fake_run_notebook)
    summary = runner.run_all("smoke", only=["00", "10"], output=tmp_path / "out")
    assert seen == [str((tmp_path / "shared").resolve())] * 2
    assert summary["runs_dir"] == seen[0]
    runner.run_all("smoke", only=["00"], output=tmp_path / "out", runs_dir=tmp_path / "mine")
    assert seen[-1] == str((tmp_path / "mine").resolve())
    assert not (tmp_path / "out" / "runs").exists()  # no private runs folder under the outputs


def test_every_notebook_takes_runs_dir_and_uses_setup():
    import json
    for book in runner.list_notebooks():
        source = "".join("".join(c["source"]) for c in json.loads(Path(book).read_text())["cells"])
        assert "runs_dir = None" in source, book.name
        assert "setup(profile, dataset, data_root, device, output_dir, seed, runs_dir)" in source, book.name


def test_atomic_file_replaces_whole_files_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json(path, {"b": np.float32(0.5), "a": 1})
    assert json.loads(path.read_text()) == {"a": 1, "b": 0.5}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')  # sorted keys
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_text(path, "ünïcode\n")
    assert path.read_text(encoding="utf-8") == "ünïcode\n"
    # a failed write keeps the old content and removes its temp file
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_file(path, "w") as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert path.read_text(encoding="utf-8") == "ünïcode\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]
    with atomic_file(tmp_path / "blob.pt") as f:
        torch.save({"x": torch.arange(3)}, f)
    assert torch.equal(torch.load(tmp_path / "blob.pt")["x"], torch.arange(3))
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w'"):
        with atomic_file(path, "a"):
            pass


def test_concurrent_writers_never_share_a_temp_file(tmp_path):
    path = tmp_path / "summary.json"
    a, b = atomic_file(path, "w"), atomic_file(path, "w")
    fa, fb = a.__enter__(), b.__enter__()
    temps = [p.name for p in tmp_path.iterdir()]
    assert len(temps) == 2 and all(t.startswith(".summary.json.") and t.endswith(".tmp") for t in temps)
    fa.write("A"), fb.write("B")
    a.__exit__(None, None, None), b.__exit__(None, None, None)
    assert path.read_text() == "B" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_json_is_strict_nan_and_infinity_become_null(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": float("nan"), "b": [np.float32("nan"), float("inf"), 1.5], "c": np.float64("-inf"),
                      "d": {"e": torch.tensor(float("nan")), "f": (2, None)}})

    def no_constants(name):
        raise AssertionError(f"{name} in {path.read_text()}")
    data = json.loads(path.read_text(), parse_constant=no_constants)
    assert data == {"a": None, "b": [None, None, 1.5], "c": None, "d": {"e": None, "f": [2, None]}}


def test_a_full_disk_names_the_file_even_through_torch_save(tmp_path, full_disk):
    path = tmp_path / "checkpoint.pt"
    write_text(path, "old")
    full_disk(1000)  # torch.save alone would say "unexpected pos …"
    with pytest.raises(OSError) as info:
        with atomic_file(path) as f:
            torch.save({"x": torch.zeros(10_000)}, f)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    message = paths.os_error_message(info.value)
    assert message.startswith(f"cannot write {path}: No space left on device (the disk is full); free space")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_read_json_names_a_damaged_file_and_the_fix(tmp_path):
    (tmp_path / "config.json").write_text('{"epochs": 3')
    with pytest.raises(paths.DamagedFile, match=r"config.json is not valid JSON \(.*\); delete it"):
        paths.read_json(tmp_path / "config.json", "delete it")


HOLDER = """
import sys, time
from sosvae_core.paths import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_one_writer_per_folder_named_in_one_line_and_released_when_it_dies(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(paths.FolderBusy) as info:
            with paths.folder_lock(folder):
                pytest.fail("two writers")
        message = str(info.value)
        assert message.startswith(f"{folder} is in use by process {holder.pid} on ") and "\n" not in message
        assert "wait for it to finish (train --wait) or use another folder" in message
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the OS drops the lock
        holder.wait()
    with paths.folder_lock(folder) as lock:  # free at once
        assert f"process {os.getpid()} " in lock.read_text()
