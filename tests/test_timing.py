"""The per-image cost the Fig. 3 notebook reports and the widgets' callback latencies: what they
time, not how fast it is."""
import math

import torch

from sosvae_core.networks import VAE
from sosvae_core.timing import measure_latency, median_seconds, observation_cost
from test_widgets import tiny_vae


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


def test_a_training_step_is_timed_on_a_copy_that_leaves_the_model_as_it_was():
    from sosvae_core.observations import DistributionOnly
    from sosvae_core.timing import training_step_seconds
    torch.manual_seed(0)
    model = VAE((1, 8, 8), "sos", latent_dim=4, rank=3, channels=(4, 8), blocks=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert training_step_seconds(model, torch.rand(5, 1, 8, 8), repeats=2) > 0
    assert not model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())  # BatchNorm statistics and gradients untouched
    assert training_step_seconds(DistributionOnly((1, 4, 4), rank=2), torch.rand(3, 1, 4, 4), repeats=1) > 0


def test_measure_latency_reports_every_callback():
    model = tiny_vae((1, 6, 5))
    report = measure_latency(model, repeats=2)
    for key in ("component_slider", "slerp_slider", "latent_click", "edit_stroke_up",
                "edit_stroke_all", "edit_undo", "edit_resample", "new_z"):
        assert report[key]["median_ms"] >= 0 and report[key]["n"] >= 1
    assert report["image_shape"] == [1, 6, 5]
