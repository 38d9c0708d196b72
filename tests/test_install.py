"""install.sh installs only when needed; run_all.sh and test.sh call it unless told --no-install."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path):
    """A copy of the scripts, pyproject.toml and constraints.txt, with the install command replaced by a recorder."""
    for name in ("install.sh", "run_all.sh", "test.sh", "pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "sosvae_core").mkdir()
    (tmp_path / "sosvae_core" / "__init__.py").write_text("")  # what the recorded install would make importable
    log = tmp_path / "pip-calls"
    return tmp_path, log, {"SOSVAE_PIP": f"echo install >> '{log}'", "PATH": os.environ["PATH"],
                           "PYTHONPATH": str(tmp_path)}


def run(checkout, *args):
    root, log, env = checkout
    done = subprocess.run(["bash", *args], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().count("install") if log.exists() else 0
    return calls, done.stdout


def test_install_runs_once_then_only_when_pyproject_changes(checkout):
    root = checkout[0]
    assert run(checkout, "install.sh")[0] == 1  # no stamp yet: installs
    calls, said = run(checkout, "install.sh")
    assert calls == 1 and "not reinstalling" in said  # current: skipped, and says so
    with open(root / "pyproject.toml", "a") as f:
        f.write("\n# changed\n")
    assert run(checkout, "install.sh")[0] == 2  # pyproject.toml changed: installs again
    assert run(checkout, "install.sh")[0] == 2
    with open(root / "constraints.txt", "a") as f:
        f.write("\n# changed\n")
    assert run(checkout, "install.sh")[0] == 3  # constraints.txt changed: installs again
    assert run(checkout, "install.sh", "--force")[0] == 4


def test_main_job_and_tests_install_unless_told_not_to(checkout):
    # --no-install skips the step; the rest of the command line goes on to the runner / pytest
    assert run(checkout, "run_all.sh", "--no-install", "--help")[0] == 0
    assert run(checkout, "test.sh", "--no-install", "--version")[0] == 0
    assert run(checkout, "run_all.sh", "--help")[0] == 1
    assert run(checkout, "test.sh", "--version")[0] == 1  # current now: not installed twice


def test_install_runs_again_when_sosvae_core_comes_from_another_checkout(checkout, tmp_path_factory):
    other = tmp_path_factory.mktemp("other-checkout")
    (other / "sosvae_core").mkdir()
    (other / "sosvae_core" / "__init__.py").write_text("")
    assert run(checkout, "install.sh")[0] == 1
    assert run(checkout, "install.sh")[0] == 1  # this checkout's package: skipped
    checkout[2]["PYTHONPATH"] = str(other)
    assert run(checkout, "install.sh")[0] == 2  # another checkout's package: installs this one
    assert run(checkout, "install.sh")[0] == 3
