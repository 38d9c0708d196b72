"""The documents a newcomer reads: the README (short, every command and file in it real), the
notebooks' prose (no number typed in from a past run), the package docstring's module map, the
API reference built from the docstrings, the licence and the citation file."""
import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GENERATED = ("outputs", "runs", "api", "cache")  # folders the commands write, absent in a fresh clone
EXTERNAL = ("list_eval_partition.txt", "showcase_images/")  # in a data root, in the authors' repository


def _readme_code_blocks(lang: str):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def test_the_readme_fits_150_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the lab log belongs in docs/"


def _readme_commands():
    """Each command the README shows: the bash blocks' lines and the inline `python …`/`bash …` spans."""
    text = README.read_text()
    lines = [line.split("#")[0].strip() for block in _readme_code_blocks("bash") for line in block.splitlines()]
    lines += re.findall(r"`((?:python|bash) [^`]+)`", text)
    commands = set()
    for line in filter(None, lines):
        words = line.split()
        if words[0] == "bash":
            commands.add((words[1],))
        elif words[:2] == ["python", "-m"]:
            sub = words[3] if len(words) > 3 and words[2] == "sosvae_core" and not words[3].startswith("-") else None
            commands.add(("-m", words[2]) + ((sub,) if sub else ()))
        elif words[0] == "python":
            commands.add((words[1],))
    return sorted(commands)


def test_every_command_in_the_readme_answers_help():
    commands = _readme_commands()
    assert ("run_all.sh",) in commands and ("test.sh",) in commands and ("-m", "sosvae_core", "train") in commands
    for command in commands:
        if command[0].endswith(".sh"):
            argv = ["bash", command[0], "--no-install", "--help"]
        else:
            argv = [sys.executable, *command, "--help"]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (argv, done.stdout[-500:], done.stderr[-2000:])


def _named_paths(text: str):
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    spans = re.findall(r"`([\w./-]+(?:\.(?:py|sh|md|txt|toml|yml|cff|png|ipynb)|/))`", text)
    return {p for p in links + spans if not p.startswith(("http", "#"))}


def test_every_file_the_readme_names_exists():
    text = README.read_text()
    named = _named_paths(text)
    assert {"docs/differences_from_paper.md", "LICENSE", "CITATION.cff", "docs/images/fig2_portraits.png"} <= named
    missing = [p for p in named if p.split("/")[0] not in GENERATED and p not in EXTERNAL and not (REPO / p).exists()]
    notebooks = re.findall(r"`(\d\d_\w+)`", text)
    missing += [n for n in notebooks if not (REPO / "notebooks" / f"{n}.ipynb").exists()]
    assert len(notebooks) == len(list((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    assert not missing, f"README names what does not exist: {sorted(missing)}"


def test_every_link_in_the_docs_resolves():
    for page in [*(REPO / "docs").rglob("*.md"), REPO / "benchmarks" / "README.md"]:
        for link in re.findall(r"\]\(([^)\s#]+)", page.read_text()):
            if not link.startswith("http"):
                assert (page.parent / link).exists(), f"{page.relative_to(REPO)} links to {link}, which does not exist"


def test_the_readme_picture_is_small_and_made_by_its_command():
    picture = REPO / "docs" / "images" / "fig2_portraits.png"
    assert picture.stat().st_size < 400_000, "keep the committed picture small"
    assert "python docs/readme_figure.py" in README.read_text()


def test_the_readme_library_example_runs_and_agrees_with_torch():
    import torch
    section = README.read_text().split("## The library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    lines = [line for line in code.splitlines() if line.strip() and not line.startswith(("import", "from"))]
    assert len(lines) <= 10, "the library in ten lines"
    scope = {}
    exec(compile(code, "README library example", "exec"), scope)
    p, x = scope["p"], scope["x"]
    dense = torch.distributions.LowRankMultivariateNormal(
        p.loc.double(), p.cov_factor.double(), torch.full_like(p.loc, 1e-5, dtype=torch.float64))
    assert torch.allclose(-scope["nll"].double(), dense.log_prob(x.double()), rtol=1e-5)
    assert scope["y"].shape == x.shape and scope["edited"].shape == x.shape
    assert torch.equal(scope["edited"][:, :10], x[:, :10])  # edited pixels take the edit
    other = torch.distributions.LowRankMultivariateNormal(
        p.loc.double(), 2 * p.cov_factor.double(), torch.full_like(p.loc, 1e-5, dtype=torch.float64))
    assert torch.allclose(scope["kl"].double(), torch.distributions.kl_divergence(dense, other), rtol=1e-4)
    first = torch.linalg.solve(dense.covariance_matrix[0], torch.ones(x.shape[1], dtype=torch.float64))
    assert torch.allclose(scope["hv"][0].double(), -first, rtol=1e-3, atol=1e-3 * float(first.abs().max()))
    assert scope["wide"].batch_shape == (4, x.shape[0])


# -- the notebooks' prose --------------------------------------------------------------------

def _numbers(value):
    """Every number inside a constant (nested tuples, lists, dicts, tensors)."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _numbers(v)
    elif hasattr(value, "tolist"):
        yield from _numbers(value.tolist())


def allowed_numbers():
    """The numbers a notebook's prose may state: the paper's printed values and the constants the
    package takes from the paper or fixes before any run (Table 1, the pass rules, the component
    floor, the scales of Fig. 5), and every config value. Anything else is a number a run
    measured, which the notebook prints from the run itself."""
    from sosvae_core import configs, editing, figures, scorecard, table1
    allowed = set()
    for module in (configs, editing, figures, scorecard, table1):
        for name, value in vars(module).items():
            if name.isupper():
                allowed.update(_numbers(value))
    for experiment in configs.EXPERIMENTS:
        for profile in configs.PROFILES:
            for model in configs.MODELS:
                cfg = configs.get_config(experiment, profile, model)
                allowed.update(_numbers(dataclasses.asdict(cfg)))
    return allowed


# a number written with a decimal point, in scientific notation, or with a thousands separator
NUMBER = re.compile(r"(?<![\w.])[−-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,])[−-]?\d+\.\d+(?:e[−-]?\d+)?|"
                    r"(?<![\w.])\d+e[−-]?\d+")


SECTION = re.compile(r"\bSections? \d+(?:\.\d+)*(?:\s*(?:–|-|and)\s*\d+(?:\.\d+)*)*")  # "Section 3.3" is no number


def _stated_numbers(text: str):
    return [m.group(0) for m in NUMBER.finditer(SECTION.sub("", text))]


def _value(token: str) -> float:
    return float(token.replace("−", "-").replace(",", ""))


def test_the_number_rule_finds_what_it_should():
    found = _stated_numbers("0.34 over 1,400 images, ε = 1e-5, R = 25, Fig. 2, eq. 6–7, Sections 4.2–4.5, 11.76")
    assert found == ["0.34", "1,400", "1e-5", "11.76"]


@pytest.mark.parametrize("path", sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name[:2])
def test_notebook_prose_holds_no_number_from_a_past_run(path):
    """The rule: every number in a markdown cell written with a decimal point, in scientific
    notation or with a thousands separator (section numbers aside) is one of `allowed_numbers()`; a number a run
    measures is printed, or rendered as markdown, by the notebook's code from that run."""
    allowed = allowed_numbers()
    stray = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "markdown":
            continue
        for token in _stated_numbers(cell.source):
            if not any(math.isclose(_value(token), a, rel_tol=1e-9, abs_tol=1e-12) for a in allowed):
                stray.append(token)
    assert not stray, f"{path.name}'s prose states {stray}: print them from the run, or cite the paper's constant"


# -- the package's own documents --------------------------------------------------------------

def test_the_package_docstring_maps_every_module():
    import sosvae_core
    doc = sosvae_core.__doc__
    package = REPO / "sosvae_core"
    modules = {str(p.relative_to(package).with_suffix("")).replace("/", ".") for p in package.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    missing = [m for m in modules if not re.search(rf"\b{re.escape(m.split('.')[-1])}\b", doc)]
    assert not missing, f"sosvae_core/__init__.py's docstring does not name {sorted(missing)}"


@pytest.mark.slow
def test_the_api_reference_builds_without_warnings(tmp_path):
    pytest.importorskip("pdoc")
    done = subprocess.run([sys.executable, "-W", "always", "-m", "pdoc", "sosvae_core", "-o", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warn" not in done.stderr.lower(), done.stderr[-3000:]
    index = (tmp_path / "sosvae_core.html").read_text()
    for module in ("observations", "objective", "train", "figures", "scorecard"):
        assert (tmp_path / "sosvae_core" / f"{module}.html").exists()
        assert f"sosvae_core/{module}.html" in index
    assert (tmp_path / "sosvae_core" / "observations" / "lowrank.html").exists()


def test_the_licence_is_the_one_pyproject_names_and_the_citation_file_is_complete():
    import tomllib

    import yaml
    licence = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert licence == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == licence
    import sosvae_core
    assert cff["version"] == sosvae_core.__version__
    paper = cff["preferred-citation"]
    assert paper["year"] == 2022 and paper["authors"][0]["family-names"] == "Langley"
    assert "cxp7n9q5c4" in paper["url"]
