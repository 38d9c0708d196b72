"""Wall-clock costs the notebooks report next to their figures (Fig. 3's per-image cost).

Timings are measurements of this machine, never asserted in tests; `benchmarks/` holds the
benchmarks with their baselines.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict

import torch

from .networks import model_device


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """The median wall time of `fn()` over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def observation_cost(model, images: torch.Tensor, repeats: int = 5) -> Dict[str, float]:
    """Milliseconds per image for the observation model of `model` at the codes of `images`:
    the NLL with its backward pass (a training step's likelihood part) and one sample."""
    device = model_device(model)
    x = images.to(device)
    with torch.no_grad():
        z = model.encode(x).loc

    def log_prob_backward():
        model.zero_grad(set_to_none=True)
        (-model.decode(z).log_prob(x.flatten(1)).sum()).backward()

    def sample():
        with torch.no_grad():
            model.decode(z).sample()

    n = len(images)
    return {"log_prob_backward_ms_per_image": 1e3 * median_seconds(log_prob_backward, repeats) / n,
            "sample_ms_per_image": 1e3 * median_seconds(sample, repeats) / n}


def training_step_seconds(model, images: torch.Tensor, repeats: int = 3) -> float:
    """Seconds of one optimisation step's forward and backward pass on `images` (a batch): the
    encoder, a reparameterised code, the decoder, the NLL and the entropy (no optimiser step, no
    update of the weights). A model with no latent scores its one distribution. Timed on a copy
    in training mode, so the model's own normalisation statistics stay as they are."""
    import copy
    model = copy.deepcopy(model).train()
    x = images.to(model_device(model))

    def step():
        model.zero_grad(set_to_none=True)
        if getattr(model, "latent_dim", 0):
            q = model.encode(x)
            obs = model.decode(q.rsample())
        else:
            obs = model.distribution(x.shape[0])
        (-obs.log_prob(x.flatten(1)).sum() + obs.entropy().sum()).backward()

    return median_seconds(step, repeats)
