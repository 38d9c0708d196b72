"""Wall-clock costs the notebooks report next to their figures (Fig. 3's per-image cost), and the
widget panels' callback latencies (notebook 10, `benchmarks/bench_widgets.py`).

Timings are measurements of this machine, never asserted in tests; `benchmarks/` holds the
benchmarks with their baselines.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import numpy as np
import torch

from .networks import model_device


def _time(fn: Callable[[], object]) -> float:
    """Seconds of one call of `fn()`."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """The median wall time of `fn()` over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median([_time(fn) for _ in range(repeats)])


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


# -- the widget panels' callbacks ----------------------------------------------------------

def _stats(times_s: List[float]) -> dict:
    ms = [t * 1e3 for t in times_s]
    return {"median_ms": round(statistics.median(ms), 3), "max_ms": round(max(ms), 3), "n": len(ms)}


def measure_latency(model_or_distribution, repeats: int = 5, seed: int = 0,
                    image_shape=None, dataset=None) -> dict:
    """Callback latencies of the four widget panels (`sosvae_core.widgets`), in ms (median and
    max over `repeats`).

    Each time is one Python callback, from the control's new value (or the mouse
    event) to the new PNG bytes set on the Image widget, i.e. everything the kernel does;
    the browser's transfer and drawing are not included. Measured:
        component_slider  one slider tick: U·(s·a·Vᵀω_p) + PNG;
        slerp_slider      one tx tick: two nested slerps, P ω_p + PNG;
        latent_click      a click on the mean: covariance_row + two PNGs;
        edit_stroke_up    mouse-up of a 10-point stroke: conditional mean + two PNGs;
        edit_stroke_all   the whole stroke, mouse-down, 8 moves (live preview) and up;
        edit_resample     "resample the rest": the whole conditional and a sample of it + PNG;
        edit_undo         undo one stroke (re-conditions on the rest);
        new_z             decode a new z and factorise P (once per z, not per tick).
    """
    from .observations import ObservationDistribution
    from .widgets import ComponentPanel, LatentPanel, SlerpPanel  # the widgets extra, only here
    results: dict = {}
    comp = ComponentPanel(model_or_distribution, image_shape=image_shape, seed=seed)
    C, H, W = comp.image_shape
    results.update(image_shape=[C, H, W], rank=len(comp.sliders), zoom=comp.zoom)
    comp.sliders[0].value = 1.5  # warm-up
    ticks = []
    for i in range(repeats):  # each tick a real change, else no callback runs
        slider = comp.sliders[(i + 1) % len(comp.sliders)]
        value = round(-3.0 + 0.3 * i, 1)
        ticks.append((slider, value if value != slider.value else value + 0.1))
    results["component_slider"] = _stats(
        [_time(lambda s=s, v=v: setattr(s, "value", v)) for s, v in ticks])
    results["new_z"] = _stats([_time(lambda: comp.set_z(None)) for _ in range(max(1, repeats // 2))])

    sl = SlerpPanel(model_or_distribution, image_shape=image_shape, seed=seed)
    sl.tx.value = 0.5
    results["slerp_slider"] = _stats(
        [_time(lambda t=t: setattr(sl.tx, "value", float(t))) for t in np.linspace(0.1, 0.9, repeats)])

    if not isinstance(model_or_distribution, ObservationDistribution):
        lp = LatentPanel(model_or_distribution, dataset, seed=seed)
        z = lp.zoom
        clicks = [(int((c + 0.5) * z), int((r + 0.5) * z))
                  for r, c in zip(np.linspace(0, H - 1, repeats).astype(int),
                                  np.linspace(W - 1, 0, repeats).astype(int))]
        results["latent_click"] = _stats([_time(lambda p=p: lp.mouse_down(*p)) for p in clicks])
    results.update(_edit_latency(model_or_distribution, repeats, seed, image_shape))
    return results


def _edit_latency(model_or_distribution, repeats: int, seed: int, image_shape) -> dict:
    """The edit panel's rows of `measure_latency`: strokes, resampling, undo."""
    from .widgets import EditPanel
    ep = EditPanel(model_or_distribution, image_shape=image_shape, seed=seed)
    C, H, W = ep.image_shape
    up, whole = [], []
    for i in range(repeats):
        row = (i + 1) * H / (repeats + 1)
        xs = np.linspace(0.2 * W, 0.8 * W, 10) * ep.zoom
        ys = np.full(10, row * ep.zoom)
        t0 = time.perf_counter()
        ep.mouse_down(xs[0], ys[0])
        for x, y in zip(xs[1:-1], ys[1:-1]):
            ep.mouse_move(x, y)
        up.append(_time(lambda: ep.mouse_up(xs[-1], ys[-1])))
        whole.append(time.perf_counter() - t0)
    results = {"edit_stroke_up": _stats(up), "edit_stroke_all": _stats(whole),
               "edited_pixels_at_end": int(ep.mask[0].sum()),
               "edit_resample": _stats([_time(ep.resample) for _ in range(repeats)])}
    ep.view.value = ep.MEAN  # undo is timed on the conditional mean
    results["edit_undo"] = _stats([_time(ep.undo) for _ in range(repeats)])
    return results
