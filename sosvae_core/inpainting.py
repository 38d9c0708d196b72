"""Inpainting with structured uncertainty: how well a model predicts pixels it has not seen.

Not in the paper. The paper edits with the conditional mean of p(x | z); here the whole
conditional p(x_hid | x_vis, z) is scored on held-out images, for every observation model by
the same protocol:

1. **A hidden region** (`box_masks`): a centred box of a quarter of the image, or a box of the
   same area with a seeded random aspect ratio (½ to 2) and position, one per image; all
   channels of a pixel are hidden together.
2. **The code, from the visible pixels only** (`fit_codes`): z* maximises
   log p(x_vis | z) + log p(z), the model's marginal over the visible pixels (`visible_log_prob`)
   plus the standard normal prior, by Adam over z with the network frozen, batched over images,
   starting from the encoder's mean of the image with its hidden pixels painted in the visible
   pixels' mean colour (which depends on the visible pixels alone).
3. **The score** (`score_hidden`): on the dequantised image x̃ = (n + u)/255, u ~ U[−½, ½)
   (`likelihood.dequantise`, the same x̃ for fitting and scoring), in bits per hidden dimension

       bits = −(log p(x̃_hid | x̃_vis, z*) − K·log 255) / (K·ln 2),   K hidden values

   (`likelihood.bits_per_dim`): by Jensen, an upper bound on −log₂ of the probability the model
   gives the hidden 8-bit values, per value, at z*; a uniform guess scores 8. SOS-VAE answers
   with its conditional (`LowRankNormal.conditional`); a pixel-independent model's conditional is
   its marginal. SOS-VAE's marginal p(x̃_hid | z*) is scored too, so the conditional's gain over
   it is what conditioning in observation space adds on top of the same z*. The mean squared
   error of the conditional mean is taken against the 8-bit truth n/255.

`evaluate` runs the three steps for one model and remembers the per-image numbers in the
model's run folder (`inpainting.json`), so notebook 12 and the scorecard compute them once.
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .likelihood import bits_per_dim, dequantise
from .networks import model_device
from .observations import LowRankNormal, PixelIndependent
from .observations.base import LOG_2PI
from .paths import read_json, write_json

__all__ = ["MASKS", "STEPS", "box_masks", "visible_log_prob", "fit_codes", "score_hidden", "evaluate",
           "evaluate_models", "summarise", "paired_difference", "completions"]

MASKS = ("centre", "random")
FRACTION = 0.25  # of the image hidden
# Adam steps per image, per profile: the quick profile's fit the CPU budget of run_all.sh and stop
# short of convergence (docs/findings/inpainting.md)
STEPS = {"smoke": 5, "quick": 30, "paper": 300}
LR = 0.1
PROTOCOL = "inpainting-v1"  # changes when the protocol does, so that remembered numbers are recomputed


def box_masks(image_shape: Sequence[int], n: int, kind: str, fraction: float = FRACTION,
              seed: int = 0) -> torch.Tensor:
    """n hidden regions, bool (n, C, H, W) (True: hidden): a centred box of `fraction` of the
    image ("centre", the same for every image) or boxes of that area with a random aspect ratio
    from ½ to 2 and a random position inside the image ("random", one per image, seeded)."""
    if kind not in MASKS:
        raise ValueError(f"kind must be one of {MASKS}, got {kind!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction = {fraction}; hide a part of the image, 0 < fraction < 1")
    C, H, W = image_shape
    area = fraction * H * W
    masks = torch.zeros(n, C, H, W, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        aspect = 1.0 if kind == "centre" else math.exp((torch.rand((), generator=g).item() - 0.5) * 2 * math.log(2))
        h = min(H, max(1, round(math.sqrt(area * aspect * H / W))))
        w = min(W, max(1, round(area / h)))
        if kind == "centre":
            top, left = (H - h) // 2, (W - w) // 2
        else:
            top = int(torch.randint(0, H - h + 1, (), generator=g))
            left = int(torch.randint(0, W - w + 1, (), generator=g))
        masks[i, :, top:top + h, left:left + w] = True
    return masks


def visible_log_prob(obs, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """log p(x_vis | z) for each image with its own visible pixels: obs a batch (B,) of
    distributions over S values, x (B, S), visible bool (B, S) → (B,).

    Low rank: with the rows of P and the residuals of the hidden pixels set to 0 the covariance
    is block diagonal, Σ_vis ⊕ D_hid, so the full log_prob is the visible marginal's plus
    log N(0; 0, D_i) for each hidden pixel, which is taken off again. Pixel-independent: the
    sum of the visible pixels' log densities."""
    v = visible.to(x.dtype)
    if isinstance(obs, LowRankNormal):
        zeroed = LowRankNormal(obs.loc * v, obs.cov_factor * v.unsqueeze(-1), obs.cov_diag, validate_args=False)
        hidden = (0.5 * (LOG_2PI + obs.cov_diag.log()) * (1 - v)).sum(-1)
        return zeroed.log_prob(x * v) + hidden
    if isinstance(obs, PixelIndependent):
        pixels = type(obs)(obs.loc.unsqueeze(-1), obs.variance.unsqueeze(-1), validate_args=False)
        return (pixels.log_prob(x.unsqueeze(-1)) * v).sum(-1)
    raise ValueError(f"inpainting needs the low-rank or a pixel-independent observation model, not "
                     f"{type(obs).__name__}")


def _start(model, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The encoder's mean for the images with their hidden pixels in the visible pixels' mean colour."""
    shape = (x.shape[0], *model.image_shape)
    img, vis = x.reshape(shape), visible.reshape(shape).to(x.dtype)
    colour = (img * vis).sum((-2, -1), keepdim=True) / vis.sum((-2, -1), keepdim=True).clamp_min(1)
    with torch.no_grad():
        return model.encode(img * vis + colour * (1 - vis)).loc


def fit_codes(model, x: torch.Tensor, visible: torch.Tensor, steps: int = STEPS["quick"], lr: float = LR,
              batch_size: int = 100) -> Dict[str, torch.Tensor]:
    """z* = argmax_z log p(x_vis | z) + log p(z) by `steps` Adam steps (module docstring), the
    network frozen; x (B, S) and visible bool (B, S) on any device. Returns 'z' (B, latent) and
    'objective' (steps + 1, B), the objective per image along the way (nats, prior included)."""
    device = model_device(model)
    model.eval()
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    codes, traces = [], []
    try:
        for start in range(0, x.shape[0], batch_size):
            xb, vb = x[start:start + batch_size].to(device), visible[start:start + batch_size].to(device)
            z = _start(model, xb, vb).clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            trace = []
            for step in range(steps + 1):
                objective = visible_log_prob(model.decode(z), xb, vb) - 0.5 * (z * z).sum(-1)
                trace.append(objective.detach().double().cpu())
                if step == steps:
                    break
                opt.zero_grad(set_to_none=True)
                (-objective.sum()).backward()
                opt.step()
            codes.append(z.detach())
            traces.append(torch.stack(trace))
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return {"z": torch.cat(codes), "objective": torch.cat(traces, 1)}


def _groups(hidden: torch.Tensor) -> List[torch.Tensor]:
    """Indices of the images that share a hidden region (B, S): each group is conditioned at once."""
    _, inverse = torch.unique(hidden, dim=0, return_inverse=True)
    return [(inverse == g).nonzero().squeeze(-1) for g in range(int(inverse.max()) + 1)]


@torch.no_grad()
def score_hidden(model, z: torch.Tensor, x: torch.Tensor, truth: torch.Tensor,
                 hidden: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per image (B,): bits per hidden dimension of x (dequantised, (B, S)) under the conditional
    p(x_hid | x_vis, z) and the marginal p(x_hid | z), the squared error of each one's mean
    against `truth` (B, S) and its predicted variance, each averaged over the hidden values,
    and the number of hidden values K."""
    device = model_device(model)
    out = {f"{what}_{name}": torch.zeros(x.shape[0], dtype=torch.float64)
           for what in ("bits", "mse", "variance") for name in ("conditional", "marginal")}
    out["hidden_dims"] = torch.zeros(x.shape[0], dtype=torch.float64)
    for idx in _groups(hidden):
        h = hidden[idx[0]].to(device)
        obs = model.decode(z[idx].to(device))
        xi, ti = x[idx].to(device), truth[idx].to(device)
        K = int(h.sum())
        for name, dist in (("conditional", obs.conditional(~h, xi[:, ~h])), ("marginal", obs.marginal(h))):
            out[f"bits_{name}"][idx] = bits_per_dim(dist.log_prob(xi[:, h]), K).cpu()
            out[f"mse_{name}"][idx] = (dist.mean - ti[:, h]).double().pow(2).mean(-1).cpu()
            out[f"variance_{name}"][idx] = dist.variance.double().mean(-1).cpu()
        out["hidden_dims"][idx] = float(K)
    return out


def _images_key(images: torch.Tensor) -> str:
    """A short fingerprint of the 8-bit images, so that other images are not taken for these."""
    n = (images.detach().double().cpu() * 255).round().to(torch.uint8).numpy().tobytes()
    return hashlib.sha256(n).hexdigest()[:16]


def evaluate(model, images: torch.Tensor, kind: str, steps: int = STEPS["quick"], lr: float = LR,
             fraction: float = FRACTION, seed: int = 0, batch_size: int = 100) -> dict:
    """The protocol (module docstring) for one model on held-out images (N, C, H, W) in [0, 1]:
    per image the bits per hidden dimension ('bits_conditional', 'bits_marginal'), the squared
    errors ('mse_conditional', 'mse_marginal') and 'hidden_dims', with the protocol's settings.
    Remembered in the model's run folder (`inpainting.json`) when it has one. Seeded: the regions
    and the dequantisation depend on `seed` alone, so every model sees the same x̃."""
    if images.shape[0] < 2:
        raise ValueError("give at least 2 images, so that a standard error is defined")
    if not getattr(model, "latent_dim", 0):
        raise ValueError(f"inpainting fits a latent code; the '{getattr(model, 'kind', '?')}' model has none")
    key = (f"{kind}|n={images.shape[0]}|images={_images_key(images)}|steps={steps}|lr={lr}|fraction={fraction}|"
           f"seed={seed}|{PROTOCOL}")
    run_dir = getattr(model, "run_dir", None)
    path = Path(run_dir) / "inpainting.json" if run_dir is not None else None
    cache = read_json(path, "delete it: the inpainting numbers are recomputed") if path and path.exists() else {}
    if key in cache:
        return cache[key]
    t0 = time.perf_counter()
    hidden = box_masks(images.shape[1:], images.shape[0], kind, fraction, seed).flatten(1)
    truth = images.flatten(1).float()
    x = dequantise(images, torch.Generator().manual_seed(seed)).flatten(1)
    fit = fit_codes(model, x, ~hidden, steps, lr, batch_size)
    scores = score_hidden(model, fit["z"], x, truth, hidden)
    objective = fit["objective"]
    result = {"kind": kind, "n": int(images.shape[0]), "steps": steps, "lr": lr, "fraction": fraction, "seed": seed,
              "protocol": PROTOCOL, "model": getattr(getattr(model, "config", None), "model", None),
              "wall_time_s": round(time.perf_counter() - t0, 1),
              **{k: v.tolist() for k, v in scores.items()},
              # how far the last steps still moved the objective: converged when small against its scale
              "objective_start": objective[0].tolist(), "objective_end": objective[-1].tolist(),
              "objective_last_tenth": (objective[-1] - objective[-1 - max(1, steps // 10)]).tolist()}
    if path is not None:
        fresh = read_json(path, "delete it: the inpainting numbers are recomputed") if path.exists() else {}
        fresh[key] = result
        write_json(path, fresh, sort_keys=False)
    return result


def evaluate_models(models: Dict[str, "torch.nn.Module"], images: torch.Tensor, steps: int, seed: int = 0,
                    masks: Sequence[str] = MASKS) -> Dict[str, Dict[str, dict]]:
    """`evaluate` for each {name: model} and each kind of hidden region: {name: {mask: result}}."""
    return {name: {kind: evaluate(model, images, kind, steps=steps, seed=seed) for kind in masks}
            for name, model in models.items()}


def summarise(values: Sequence[float]) -> Dict[str, float]:
    """Mean and its standard error (sample standard deviation / √N)."""
    t = torch.as_tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "se": float(t.std() / math.sqrt(len(t))), "n": int(len(t))}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Mean ± standard error of a − b over the same images (paired: the images' own spread cancels)."""
    return summarise((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).tolist())


def table_rows(results: Dict[str, Dict[str, dict]]) -> List[dict]:
    """`evaluate_models`' results as rows: per model and answer (SOS-VAE: its conditional and its
    marginal; a pixel-independent model: its marginal, which is its conditional), per kind of
    box, bits per hidden dimension, the mean's squared error and the predicted variance (mean ±
    SE), and the RMS of the error in predicted standard deviations (1 for a calibrated model)."""
    rows = []
    for name, per_mask in results.items():
        first = next(iter(per_mask.values()))
        same = first["bits_conditional"] == first["bits_marginal"]
        for answer in (("marginal",) if same else ("conditional", "marginal")):
            row = {"model": name, "answer": answer + (" (= its conditional)" if same else "")}
            for kind, r in per_mask.items():
                for what in ("bits", "mse", "variance"):
                    row[f"{kind}_{what}"] = summarise(r[f"{what}_{answer}"])
                row[f"{kind}_error_in_std"] = math.sqrt(row[f"{kind}_mse"]["mean"] / row[f"{kind}_variance"]["mean"])
                row["n"], row["steps"] = r["n"], r["steps"]
            rows.append(row)
    return rows


def markdown_table(rows: List[dict], labels: Optional[Dict[str, str]] = None) -> str:
    """`table_rows` as a Markdown table (notebook 12): bits per hidden dimension and MSE, mean ± SE."""
    masks = [k[:-5] for k in rows[0] if k.endswith("_bits")]
    head = "| model | answer | " + " | ".join(f"bits/dim, {m} box | MSE, {m} box | error / predicted std, {m}"
                                              for m in masks) + " |"
    lines = [head, "|---|---|" + "---|" * (3 * len(masks))]
    for r in rows:
        cells = []
        for m in masks:
            b, e = r[f"{m}_bits"], r[f"{m}_mse"]
            cells += [f"{b['mean']:.3f} ± {b['se']:.3f}", f"{e['mean']:.5f} ± {e['se']:.5f}", f"{r[f'{m}_error_in_std']:.1f}"]
        name = (labels or {}).get(r["model"], r["model"])
        lines.append(f"| {name} | {r['answer']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@torch.no_grad()
def completion_panel(models: Dict[str, "torch.nn.Module"], images: torch.Tensor, kind: str,
                     steps: int = STEPS["quick"], seed: int = 0, n_samples: int = 2,
                     labels: Optional[Dict[str, str]] = None) -> Dict[str, torch.Tensor]:
    """The columns of the inpainting figure for a few images (n, C, H, W): the masked input
    (hidden pixels grey), then per model its conditional mean and `n_samples` samples (a low-rank
    model also its conditional standard deviation, channel mean, scaled to its largest value per
    image), then the truth. The
    regions, the dequantisation and the fitting are those of `evaluate` for these images."""
    hidden = box_masks(images.shape[1:], images.shape[0], kind, seed=seed)
    x = dequantise(images, torch.Generator().manual_seed(seed)).flatten(1)
    columns = {"masked": torch.where(hidden, torch.full_like(images, 0.5), images)}
    for name, model in models.items():
        label = (labels or {}).get(name, name)
        with torch.enable_grad():
            z = fit_codes(model, x, ~hidden.flatten(1), steps)["z"]
        done = [completions(model, images[i], hidden[i], z[i], n_samples, seed + i) for i in range(len(images))]
        columns[f"{label}\nmean"] = torch.stack([d["mean"] for d in done])
        for j in range(n_samples):
            columns[f"{label}\nsample {j + 1}"] = torch.stack([d["samples"][j] for d in done])
        if isinstance(model.decode(z[:1].to(model_device(model))), LowRankNormal):
            std = torch.stack([d["std"] for d in done]).mean(1, keepdim=True)  # channel mean, drawn gray
            std = std / std.amax((1, 2, 3), keepdim=True).clamp_min(1e-12)
            columns[f"{label}\nstd (scaled)"] = std.expand_as(images)
    columns["truth"] = images
    return columns


@torch.no_grad()
def completions(model, image: torch.Tensor, hidden: torch.Tensor, z: torch.Tensor, n_samples: int = 3,
                seed: int = 0) -> Dict[str, torch.Tensor]:
    """One image's completions, (C, H, W) each with the visible pixels as they are: 'mean' (the
    conditional mean), 'samples' (n_samples, C, H, W) of p(x_hid | x_vis, z) and 'std' (the
    conditional standard deviation, 0 on the visible pixels). image (C, H, W), hidden bool
    (C, H, W), z (latent,) from `fit_codes`."""
    device = model_device(model)
    x, h = image.flatten().to(device), hidden.flatten().to(device)
    cond = model.decode(z.reshape(1, -1).to(device)).conditional(~h, x[~h].unsqueeze(0))
    omega_p, omega_d = cond.draw_noise(torch.Generator().manual_seed(seed), torch.Size([n_samples]))
    filled = x.expand(n_samples + 2, -1).clone()
    filled[0, h] = cond.mean[0]
    filled[1:-1, h] = cond.rsample(omega_p=omega_p, omega_d=omega_d)[:, 0]
    filled[-1] = 0
    filled[-1, h] = cond.variance[0].sqrt()
    out = filled.reshape(n_samples + 2, *image.shape).cpu()
    return {"mean": out[0], "samples": out[1:-1], "std": out[-1]}
