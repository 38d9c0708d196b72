"""Training several runs at once: the command each job runs, the schedule, and a failing job."""
import io

import pytest

from sosvae_core import __main__ as cli
from sosvae_core import pool
from sosvae_core.configs import get_config
from sosvae_core.notebook import context
from sosvae_core.runs import run_name


def config_of_command(cmd):
    """The config that `python -m sosvae_core train` builds from a job's command line."""
    args = cli.build_parser().parse_args(cmd[3:])
    return get_config(args.config, args.profile, args.model, **cli._parse_overrides(args.set))


@pytest.mark.parametrize("data", [None, "/data"])
def test_each_planned_job_trains_the_run_folder_the_notebooks_load(tmp_path, data, monkeypatch):
    monkeypatch.delenv("SOSVAE_DATA_ROOT", raising=False)  # data=None: the bundled default
    ctx = context("quick", data_root=tmp_path if data else None, runs_dir=tmp_path / "runs")
    plan = ctx.planned_configs()
    datasets = {c.experiment for c in plan}
    assert datasets == ({"celeba", "brain", "celeba64_gray"} if data else {"portraits", "lfw"})
    # one folder per planned config (the data's identity, the same for all, stubbed: no images here)
    from sosvae_core.notebook import MAIN_MODELS
    beyond = ctx.beyond_the_paper_configs()
    expected = len(MAIN_MODELS) + (2 if data else 0) + 3 + len(beyond)  # main, brain, gray, notebook 13
    assert len({run_name(c, data={}) for c in plan}) == len(plan) == expected
    for cfg in plan:
        cmd = pool.train_command(cfg, tmp_path / "runs", tmp_path / "cache")
        # the plan is the profiles as they are, but for the rank sweep's ranks
        assert ("--set" in cmd) == (cfg.rank != ctx.config("sos").rank)
        assert config_of_command(cmd) == cfg


def test_overrides_and_runtime_fields_reach_the_job():
    cfg = get_config("lfw", "smoke", "sos", epochs=5, upsample="transpose", channels=(4, 8), amp=True)
    cmd = pool.train_command(cfg, "runs", "cache")
    assert config_of_command(cmd) == cfg
    assert run_name(config_of_command(cmd)) == run_name(cfg)


def test_jobs_are_checked_and_longest_runs_start_first(monkeypatch):
    with pytest.raises(ValueError, match="jobs must be a whole number ≥ 1"):
        pool.parse_jobs("0")
    with pytest.raises(ValueError, match="--jobs 2"):
        pool.parse_jobs("two")
    monkeypatch.setenv(pool.ENV_JOBS, "3")
    assert pool.default_jobs("cpu") == 3
    monkeypatch.delenv(pool.ENV_JOBS)
    assert 1 <= pool.default_jobs("cpu") <= 4
    big, small = get_config("celeba", "quick", "sos"), get_config("lfw", "smoke", "sos")
    assert pool.relative_cost(big) > pool.relative_cost(small)
    order = sorted(context("quick").planned_configs(), key=pool.relative_cost, reverse=True)
    # the two portrait runs with SOS-VAE's step cost (the ablation's fused step is level with it) first
    assert {c.model for c in order[:2]} == {"sos", "sos_learned_diag"} and order[-1].model == "distribution"


def test_two_jobs_train_side_by_side_and_a_second_call_loads(tmp_path):
    cfgs = [get_config("lfw", "smoke", kind, epochs=1) for kind in ("sos", "beta")]
    out = io.StringIO()
    trained = pool.train_all(cfgs + cfgs[:1], runs_dir=tmp_path / "runs", device="cpu", jobs=2, stream=out)
    assert set(trained) == {run_name(c) for c in cfgs} and all(t > 0 for t in trained.values())
    text = out.getvalue()
    assert "training 2 run(s), 2 at a time" in text
    for kind in ("sos", "beta"):
        assert f"[lfw/{kind}] epoch 1/1" in text  # each job's epoch line is relayed
        assert (tmp_path / "runs" / run_name(get_config("lfw", "smoke", kind, epochs=1)) / "done.json").exists()
    assert pool.train_all(cfgs, runs_dir=tmp_path / "runs", device="cpu", jobs=2, stream=out) == {}
    assert not list((tmp_path / "runs").glob(".*.stderr"))


def test_a_failing_job_is_named_with_the_end_of_its_error(tmp_path):
    bad = get_config("lfw", "smoke", "sos", epochs=1, batch_size=1000)  # more than the training split
    with pytest.raises(RuntimeError, match=r"training lfw-smoke-sos-\w+ failed \(exit \d+\):[\s\S]*lower batch_size"):
        pool.train_all([bad], runs_dir=tmp_path / "runs", device="cpu", jobs=2, stream=io.StringIO())
