"""One runs folder for the command line, run_all.sh and Jupyter (sosvae_core.paths)."""
from pathlib import Path

from sosvae_core import paths, runner
from sosvae_core.__main__ import main as cli
from sosvae_core.configs import get_config
from sosvae_core.notebook import setup
from sosvae_core.train import run_name


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
