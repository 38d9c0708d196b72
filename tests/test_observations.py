"""The registry of observation models: every entry builds, trains through one interface and
is sampled with the same (ω_p, ω_d)."""
import pytest
import torch

from sosvae_core.__main__ import build_parser
from sosvae_core.configs import MODELS, get_config
from sosvae_core.observations import REGISTRY, ObservationDistribution, get_observation_model, label
from sosvae_core.networks import build_model


def test_configs_and_the_command_line_offer_exactly_the_registered_models():
    assert MODELS == tuple(REGISTRY)
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    model = next(a for a in train._actions if a.dest == "model")
    assert list(model.choices) == list(REGISTRY)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_model_decodes_to_an_observation_distribution_sampled_from_the_same_noise(name):
    cfg = get_config("lfw", "smoke", model=name)
    torch.manual_seed(0)
    model = build_model(cfg, (1, 25, 25)).eval()
    obs = model.decode(torch.zeros(2, cfg.latent_dim)) if REGISTRY[name].latent else model.distribution(2)
    assert isinstance(obs, ObservationDistribution) and obs.loc.shape == (2, 625)
    omega_p, omega_d = obs.draw_noise(torch.Generator().manual_seed(3))
    assert omega_p.shape == (2, obs.noise_rank) and omega_d.shape == (2, 625)
    again = obs.draw_noise(torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = obs.rsample(omega_p=omega_p, omega_d=omega_d)
        torch.testing.assert_close(y, obs.rsample(omega_p=again[0], omega_d=again[1]))
        assert torch.isfinite(obs.log_prob(y)).all() and torch.isfinite(obs.entropy()).all()


@pytest.mark.parametrize("name", list(REGISTRY))
def test_the_registry_decides_which_bounds_apply(name):
    spec, cfg = REGISTRY[name], get_config("celeba", "quick", model=name)
    assert (cfg.target_entropy_at is not None) == spec.entropy_bound
    assert (cfg.target_kl is not None) == spec.latent
    assert (cfg.release_warmup_epochs > 0) == spec.warm_release
    assert label(name) == spec.label


def test_the_papers_models_keep_their_bounds():
    # the paper's two, and the learned-ε variant (beyond the paper: does the bound alone hold ε?)
    assert [n for n, m in REGISTRY.items() if m.entropy_bound] == ["sos", "distribution", "sos_learned_eps"]
    assert [n for n, m in REGISTRY.items() if not m.latent] == ["distribution"]
    assert [n for n, m in REGISTRY.items() if not m.warm_release] == ["sos_learned_diag"]


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown observation model 'gamma'; choose one of sos, beta"):
        get_observation_model("gamma")
    assert label("gamma") == "gamma"
    with pytest.raises(ValueError, match="the 'distribution' model has no decoder head"):
        REGISTRY["distribution"].make_head(4, (1, 5, 5), rank=2, eps=1e-5, stencil=3)
