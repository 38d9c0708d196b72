"""The papermill runner behind run_all.sh: the results page of a stopped or killed run, strict JSON,
a quiet kernel shutdown, and a damaged run named in one line."""
import json
import signal
import subprocess
import sys

import nbformat
import pytest

from sosvae_core import runner

# run_all with notebook 00 done at once and 02 running until the process is stopped
STOPPED_RUN = """
import sys, threading
from sosvae_core import runner

def run_notebook(path, output, parameters, stream=None, prefix=""):
    if path.name.startswith("00"):
        return {"notebook": path.name, "wall_time_s": 1.0, "metrics": {"nll": float("nan")}, "figures": []}
    print("running", path.name, flush=True)
    threading.Event().wait()

runner.run_notebook = run_notebook
sys.exit(runner.main(["--profile", "smoke", "--only", "00", "02", "--jobs", "1", "--output", sys.argv[1]]))
"""


def strict(path):
    def refuse(name):
        raise AssertionError(f"{name} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_or_killed_run_leaves_the_results_page_of_the_notebooks_done(stop, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", STOPPED_RUN, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert next(line for line in proc.stdout if line.startswith("running") or not line) == "running 02_fig1_fig2_structured_uncertainty.ipynb\n"
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (143 if stop == signal.SIGTERM else -signal.SIGKILL), err
    if stop == signal.SIGTERM:
        assert err.endswith(f"stopped (SIGTERM); the results so far: {out / 'index.html'}\n")
    page = (out / "index.html").read_text()
    assert 'id="00_quickstart"' in page  # written after notebook 00, and again on SIGTERM
    summary = strict(out / "summary.json")  # NaN is null: strict parsers read it
    assert [(b["notebook"], b["metrics"]) for b in summary["notebooks"]] == [("00_quickstart.ipynb", {"nll": None})]


def notebook(path, *cells):
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    book.cells = [nbformat.v4.new_code_cell("profile = 'smoke'\nruns_dir = None\noutput_dir = None")]
    book.cells[0].metadata["tags"] = ["parameters"]
    book.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(book, path)
    return path


def test_a_successful_notebook_shuts_its_kernel_down_without_keyboard_interrupt(tmp_path, capfd):
    # the kernel lingers in the handler of papermill's last request, as a loaded machine can make it:
    # jupyter_client's SIGINT at shutdown would land there and the kernel log it
    book = notebook(tmp_path / "00_quiet.ipynb",
                    "import time\nkernel = get_ipython().kernel\nreply = kernel.shell_handlers['kernel_info_request']\n"
                    "async def lingering(*args):\n    await reply(*args)\n    time.sleep(1.0)\n"
                    "kernel.shell_handlers['kernel_info_request'] = lingering")
    runner.run_notebook(book, tmp_path / "out", {})
    assert "KeyboardInterrupt" not in capfd.readouterr().err


def test_run_all_names_a_damaged_checkpoint_in_one_line(lfw, tmp_path):
    from sosvae_core.configs import get_config
    from sosvae_core.runs import get_or_train
    runs = tmp_path / "runs"
    run = get_or_train(get_config("lfw", "smoke", "sos", epochs=1), runs_dir=runs, datasets=lfw, progress=False).run_dir
    (run / "checkpoint.pt").write_bytes(b"damaged")
    book = notebook(tmp_path / "00_loads.ipynb",
                    "from sosvae_core.notebook import setup\n"
                    "ctx = setup(profile, 'lfw', None, 'cpu', output_dir, 0, runs_dir)\nctx.model('sos', epochs=1)")
    with pytest.raises(runner.NotebookFailed) as info:
        runner.run_notebook(book, tmp_path / "out", {"runs_dir": str(runs)})
    message = str(info.value)
    assert f"DamagedFile: checkpoint {run / 'checkpoint.pt'} is damaged (" in message and "\n" not in message
    assert "; delete it to train the run again" in message


def test_a_param_reaches_only_the_notebooks_that_declare_it(tmp_path):
    from sosvae_core.runner import NOTEBOOKS, declared_parameters, parse_params, run_all
    assert parse_params(["k=1000", "ranks=[1, 5]", "name=abc"]) == {"k": 1000, "ranks": [1, 5], "name": "abc"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_params(["k"])
    book = sorted(NOTEBOOKS.glob("13_*.ipynb"))[0]
    assert {"k", "ranks", "train_missing", "profile"} <= declared_parameters(book)
    with pytest.raises(ValueError, match=r"no notebook among those run takes the parameter\(s\) \['k'\]"):
        run_all("smoke", only=["00"], output=tmp_path, runs_dir=tmp_path / "runs", params={"k": 5})
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_the_notebooks_share_the_cores_only_while_they_run(tmp_path, monkeypatch):
    """--jobs N: each kernel started inside run_all inherits its share of the cores through the
    thread variables; afterwards os.environ is as it was (a variable that was unset is unset again),
    also when a notebook fails."""
    from sosvae_core import pool
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(pool.os, "cpu_count", lambda: 4)
    seen, failing = [], []

    def fake_run_notebook(path, output, parameters, stream=None, prefix=""):
        seen.append({k: pool.os.environ.get(k) for k in pool.THREAD_VARIABLES})
        if path.name[:2] in failing:
            raise runner.NotebookFailed(f"{path.name} failed")
        return {"notebook": path.name, "wall_time_s": 0.0, "metrics": {}, "figures": []}

    def unchanged():
        return pool.os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in pool.os.environ

    monkeypatch.setattr(runner, "run_notebook", fake_run_notebook)
    run = dict(only=["00", "02"], output=tmp_path / "out", runs_dir=tmp_path / "runs", jobs=2)
    runner.run_all("smoke", **run)
    assert seen == [{"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}] * 2 and unchanged()
    failing.append("02")
    with pytest.raises(runner.NotebookFailed):
        runner.run_all("smoke", **run)
    assert unchanged()
    failing.clear()
    runner.run_all("smoke", **dict(run, jobs=1))  # one at a time: the environment as it is
    assert seen[-2:] == [{"OMP_NUM_THREADS": "7", "MKL_NUM_THREADS": None}] * 2 and unchanged()


def test_scoped_environment_restores_set_and_unset_variables(monkeypatch):
    import os

    from sosvae_core.pool import scoped_environment
    monkeypatch.setenv("SOSVAE_TEST_SET", "before")
    monkeypatch.delenv("SOSVAE_TEST_UNSET", raising=False)
    with pytest.raises(RuntimeError):
        with scoped_environment({"SOSVAE_TEST_SET": "inside", "SOSVAE_TEST_UNSET": "inside"}):
            assert os.environ["SOSVAE_TEST_SET"] == os.environ["SOSVAE_TEST_UNSET"] == "inside"
            raise RuntimeError
    assert os.environ["SOSVAE_TEST_SET"] == "before" and "SOSVAE_TEST_UNSET" not in os.environ
