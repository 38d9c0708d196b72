import pytest

import json
import math

from sosvae_core.configs import (EXPERIMENTS, MODELS, PROFILES, Config, floor_entropy, get_config,
                                 implied_pixel_variance, rescaled_target_entropy)


def test_entropy_targets_give_back_the_papers_values():
    # exactly, not to a rounding of the budget: the rule is anchored at the paper's sizes
    assert get_config("celeba", "paper").target_entropy((3, 218, 178)) == pytest.approx(-504750, abs=1e-6)
    assert get_config("celeba64_gray", "paper").target_entropy((1, 64, 64)) == pytest.approx(-17630, abs=1e-6)
    assert floor_entropy(1, 1e-5) == pytest.approx(-4.337524, abs=1e-6)
    # the budgets above the εI floor that the paper's two values leave
    assert -504750 - floor_entropy(116412, 1e-5) == pytest.approx(189.867, abs=1e-3)
    assert -17630 - floor_entropy(4096, 1e-5) == pytest.approx(136.499, abs=1e-3)


@pytest.mark.parametrize("experiment", ["celeba", "celeba64_gray", "brain", "lfw"])
def test_entropy_rule_keeps_the_implied_pixel_variance_across_sizes_and_ranks(experiment):
    cfg = get_config(experiment, "paper")
    anchor_v = implied_pixel_variance(int(cfg.target_entropy_at[0]), cfg.target_entropy_at[1], 1e-5, 25)
    for shape, rank in [((3, 218, 178), 25), ((3, 54, 44), 25), ((1, 32, 32), 25), ((1, 25, 25), 5),
                        ((1, 208, 176), 25)]:
        target = cfg.replace(rank=rank).target_entropy(shape)
        assert implied_pixel_variance(math.prod(shape), target, 1e-5, rank) == pytest.approx(anchor_v, rel=1e-9)


def test_entropy_rule_by_hand():
    # a dense reference: an equal spectrum with s² = S(v − ε)/(Rε)·ε has exactly entropy ξ_H
    import torch
    S, R, eps = 7128, 25, 1e-5
    v = implied_pixel_variance(116412, -504750.0, eps, 25)
    target = rescaled_target_entropy((116412, -504750.0), S, eps, R)
    s2 = torch.full((R,), S * (v - eps) / R, dtype=torch.float64)
    H = S * 0.5 * math.log(2 * math.pi * math.e * eps) + 0.5 * torch.log1p(s2 / eps).sum()
    assert float(H) == pytest.approx(target, abs=1e-6)
    # for S ≫ R the budget grows by R/2 nats per e-fold of S (the closed form in configs)
    budget = target - floor_entropy(S, eps)
    assert budget == pytest.approx(189.867 + 12.5 * math.log(S / 116412), abs=1e-2)
    # a 54×44×3 image keeps the paper's per-pixel variance, where a constant budget did not
    constant = floor_entropy(S, eps) + 189.867
    assert (implied_pixel_variance(S, constant, eps, R) - eps) / (v - eps) == pytest.approx(116412 / S, rel=1e-3)
    with pytest.raises(ValueError, match="at or below the entropy of N"):
        implied_pixel_variance(S, floor_entropy(S, eps) - 1, eps, R)


def test_paper_profile_carries_the_papers_hyperparameters():
    c = get_config("celeba", "paper")
    assert (c.latent_dim, c.rank, c.eps, c.target_kl, c.n_images, c.batch_size, c.lr) == (128, 25, 1e-5, 45.0, 10_000, 25, 1e-4)
    assert c.channels == (64, 128, 256, 512) and c.image_size is None and c.damping == 10.0
    assert get_config("brain", "paper").target_kl == 15.0


def test_model_specific_targets():
    assert get_config("celeba", "quick", "beta").target_entropy((3, 54, 44)) is None
    assert get_config("celeba", "quick", "sos_learned_diag").target_entropy_at is None
    # Appendix A drops the stabilisers: the ablation releases its variance heads at full rate
    assert get_config("celeba", "quick", "sos_learned_diag").release_warmup_epochs == 0
    assert get_config("celeba", "quick", "sos").release_warmup_epochs == 1
    assert get_config("celeba", "quick", "distribution").target_kl is None


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
@pytest.mark.parametrize("profile", PROFILES)
def test_every_config_builds_and_round_trips(experiment, profile):
    for model in MODELS:
        c = get_config(experiment, profile, model)
        assert Config.from_dict(__import__("json").loads(c.to_json())) == c


def test_bad_names_and_overrides():
    with pytest.raises(ValueError, match="unknown experiment 'x'"):
        get_config("x")
    with pytest.raises(ValueError, match="unknown profile"):
        get_config("lfw", "fast")
    with pytest.raises(ValueError, match="unknown observation model"):
        get_config("lfw", "quick", "vq")
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['epoch'\]"):
        get_config("lfw", "quick", epoch=3)


def test_damping_and_release_follow_the_papers_code_except_where_documented():
    for experiment in EXPERIMENTS:
        # the quick brain slices' calibrated ξ_H is a bound only (configs.py)
        assert get_config(experiment, "quick", "sos").one_sided_damping == (experiment == "brain"), experiment
        assert get_config(experiment, "quick", "sos").release_warmup_epochs == 1, experiment
        assert get_config(experiment, "smoke", "sos").release_warmup_epochs == 0, experiment
        assert not get_config(experiment, "paper", "sos").one_sided_damping, experiment
        assert get_config(experiment, "paper", "sos").release_warmup_epochs == 0, experiment  # released at full rate
        assert get_config(experiment, "paper", "sos").lr_after_pretrain is None  # the paper: one lr throughout


def test_quick_brain_entropy_bound_is_calibrated_at_its_own_size():
    """The quick brain slices use a budget of 70 nats above the εI floor at 52×44 (configs.py),
    below the entropy an unconstrained quick model settles at; the other profiles keep the
    64×64 gray anchor, rescaled to their size."""
    quick = get_config("brain", "quick")
    S = 52 * 44
    assert quick.target_entropy((1, 52, 44)) - floor_entropy(S, quick.eps) == pytest.approx(70.0, abs=1e-6)
    for profile in ("smoke", "paper"):
        assert get_config("brain", profile).target_entropy_at == (64 * 64, -17630.0)


def test_quick_heads_see_64_feature_maps_as_the_papers():
    """Every quick network gives its observation heads 64 feature maps (configs.py: with 16 the
    25 columns of P could not take shapes of their own); the paper profile keeps its own
    network, whose last level already has 64 channels."""
    for experiment in EXPERIMENTS:
        for model in ("sos", "beta", "dorta", "sos_learned_diag"):
            quick = get_config(experiment, "quick", model)
            assert quick.head_channels == 64 and quick.channels[0] == 16, (experiment, model)
        paper = get_config(experiment, "paper")
        assert paper.head_channels is None and paper.channels[0] == 64, experiment


@pytest.mark.parametrize("field, value, allowed", [
    ("epochs", "abc", "a whole number ≥ 1"), ("epochs", 0, "a whole number ≥ 1"),
    ("rank", 0, "a whole number ≥ 1"), ("rank", -1, "a whole number ≥ 1"),
    ("batch_size", 0, "a whole number ≥ 1"), ("batch_size", -5, "a whole number ≥ 1"),
    ("seed", 1.5, "a whole number ≥ 0 and ≤ 4294967295"), ("seed", True, "a whole number"),
    ("damping", float("nan"), "a finite number ≥ 0"), ("eps", 0, "a finite number > 0"),
    ("lr", float("inf"), "a finite number > 0"), ("channels", (), "a non-empty tuple"),
    ("channels", (8, 0), "a non-empty tuple"), ("image_size", 32, "(H, W)"),
    ("stencil", 4, "an odd whole number ≥ 3"), ("norm", "layer", "one of batch, group, none"),
    ("model", "vae", "one of"), ("amp", 1, "True or False"), ("amp", None, "True or False"),
    ("compile", "yes", "True or False or None"), ("fid_n", 1, "a whole number ≥ 2"),
    ("target_kl", -1.0, "a finite number ≥ 0"), ("lr_after_pretrain", 0, "a finite number > 0"),
    ("target_entropy_at", (0, -1.0), "a pixel count > 0"), ("experiment", "a/b", "it names the run folder"),
])
def test_every_field_is_checked_on_creation_in_one_line(field, value, allowed):
    with pytest.raises(ValueError) as info:
        get_config("lfw", "smoke").replace(**{field: value})
    message = str(info.value)
    assert message.startswith(f"config field {field} must be ") and allowed in message, message
    assert repr(value) in message and "\n" not in message


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_the_quick_profile_leaves_the_layout_to_the_device(experiment):
    # channels-last where it measured faster (a CPU), off where nothing is measured; compile off;
    # a run's name does not depend on them, and a setting given explicitly wins
    from sosvae_core.configs import device_switches
    from sosvae_core.runs import run_name
    quick = get_config(experiment, "quick")
    assert device_switches(quick, "cpu") == {"channels_last": True, "compile": False}
    assert device_switches(quick, "cuda") == {"channels_last": False, "compile": False}
    assert device_switches(quick.replace(channels_last=False), "cpu")["channels_last"] is False
    assert device_switches(get_config(experiment, "smoke"), "cpu") == {"channels_last": False, "compile": False}
    data = {"dataset": quick.dataset}  # any data identity: the name's hash covers it and the config
    assert run_name(quick, data=data) == run_name(quick.replace(channels_last=False), data=data)
    assert Config.from_dict(json.loads(quick.to_json())) == quick


def test_numbers_take_their_fields_type_so_equal_configs_are_equal():
    cfg = get_config("lfw", "smoke", lr=1, channels=[8, 16], image_size=[20, 20])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.channels == (8, 16) and cfg.image_size == (20, 20)
    assert cfg == get_config("lfw", "smoke", lr=1.0, channels=(8, 16), image_size=(20, 20))
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    for experiment in EXPERIMENTS:  # every named config is valid as it stands
        for profile in PROFILES:
            for model in MODELS:
                get_config(experiment, profile, model)


def test_both_command_lines_take_their_names_from_the_registries(monkeypatch):
    """Every registered experiment, profile and model is accepted and named in --help of
    `python -m sosvae_core train` and of the runner; a new entry shows without touching the CLI."""
    from sosvae_core import __main__ as cli, configs, runner
    from sosvae_core.observations import REGISTRY

    monkeypatch.setitem(configs.EXPERIMENTS, "new_experiment", dict(EXPERIMENTS["lfw"]))
    monkeypatch.setitem(REGISTRY, "new_model", REGISTRY["sos"])
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    train_help = " ".join(train.format_help().split())
    run_all = runner.build_parser()
    run_all_help = " ".join(run_all.format_help().split())
    for name in configs.EXPERIMENTS:
        assert name in train_help and name in run_all_help
        assert parser.parse_args(["train", "--config", name]).config == name
        assert parser.parse_args(["pack", "--config", name, "--out", "x"]).config == name
        assert run_all.parse_args(["--dataset", name]).dataset == name
    for profile in PROFILES:
        assert parser.parse_args(["train", "--config", "lfw", "--profile", profile]).profile == profile
        assert parser.parse_args(["pack", "--config", "lfw", "--out", "x", "--profile", profile]).profile == profile
        assert run_all.parse_args(["--profile", profile]).profile == profile
    for model in REGISTRY:
        assert model in train_help
        assert parser.parse_args(["train", "--config", "lfw", "--model", model]).model == model
    assert "new_experiment" in train_help and "new_model" in train_help and "portraits" in train_help
    with pytest.raises(SystemExit):
        run_all.parse_args(["--profile", "nope"])
