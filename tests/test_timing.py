"""The per-image cost the Fig. 3 notebook reports: what it times, not how fast it is."""
import math

import torch

from sosvae_core.networks import VAE
from sosvae_core.timing import median_seconds, observation_cost


def test_median_seconds_warms_up_once_then_times_each_call():
    calls = []
    assert median_seconds(lambda: calls.append(1), repeats=3) >= 0
    assert len(calls) == 4


def test_observation_cost_times_the_nll_backward_and_a_sample_per_image():
    torch.manual_seed(0)
    model = VAE((1, 8, 8), "sos", latent_dim=4, rank=3, channels=(4, 8), blocks=1).eval()
    cost = observation_cost(model, torch.rand(5, 1, 8, 8), repeats=2)
    assert set(cost) == {"log_prob_backward_ms_per_image", "sample_ms_per_image"}
    assert all(math.isfinite(v) and v > 0 for v in cost.values())
    assert model.head.factor.weight.grad is not None  # the backward pass ran through P's head
