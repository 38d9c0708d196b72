import pytest

from sosvae_core.configs import EXPERIMENTS, MODELS, PROFILES, Config, floor_entropy, get_config


def test_entropy_targets_give_back_the_papers_values():
    assert get_config("celeba", "paper").target_entropy((3, 218, 178)) == pytest.approx(-504750, abs=1)
    assert get_config("celeba64_gray", "paper").target_entropy((1, 64, 64)) == pytest.approx(-17630, abs=1)
    assert floor_entropy(1, 1e-5) == pytest.approx(-4.337524, abs=1e-6)


def test_paper_profile_carries_the_papers_hyperparameters():
    c = get_config("celeba", "paper")
    assert (c.latent_dim, c.rank, c.eps, c.target_kl, c.n_images, c.batch_size, c.lr) == (128, 25, 1e-5, 45.0, 10_000, 25, 1e-4)
    assert c.channels == (64, 128, 256, 512) and c.image_size is None and c.damping == 10.0
    assert get_config("brain", "paper").target_kl == 15.0


def test_model_specific_targets():
    assert get_config("celeba", "quick", "beta").target_entropy((3, 54, 44)) is None
    assert get_config("celeba", "quick", "sos_learned_diag").entropy_budget is None
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
    with pytest.raises(ValueError, match="unknown model"):
        get_config("lfw", "quick", "vq")
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['epoch'\]"):
        get_config("lfw", "quick", epoch=3)
