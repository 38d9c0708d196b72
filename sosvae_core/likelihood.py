"""Test log-likelihood in bits per dimension: the importance-weighted bound on dequantised images.

The paper reports no likelihood. A density model is usually compared by a bound on the
log-likelihood of held-out images in bits per dimension, and that number shows what the
paper's fixed ε costs (notebook 13).

**Dequantisation.** The images are 8-bit values n ∈ {0, …, 255}^S that the models see as
n/255. The models are densities p(x) over x ∈ ℝ^S, so the probability they give an 8-bit
image is the mass of its bin: with x = (n + u)/255, u ∈ [−½, ½)^S (bins of width 1/255 centred
on the training values), the change of variables dx = 255^−S du gives

    P(n) = ∫ p((n + u)/255) · 255^−S du  ≥  exp(E_u[log p((n + u)/255)]) · 255^−S      (Jensen),

so log P(n) ≥ E_u[log p(x)] − S·log 255, estimated with one u per image.

**The importance-weighted bound** (Burda, Grosse & Salakhutdinov, 2016). For a VAE,
log p(x) = log E_q[p(x | z)p(z)/q(z | x)] is bounded for every K by

    L_K(x) = E[ log (1/K) Σ_k p(x | z_k) p(z_k) / q(z_k | x) ],   z_k ~ q(z | x),

with L_1 the ELBO, L_K ≤ L_{K+1}, and L_K → log p(x) as K → ∞. A model with no latent (the
distribution-only model) has log p(x) in closed form.

**Bits per dimension** of one image: −(L_K(x) − S·log 255)/(S·ln 2), lower is better; a
uniform guess over the 256 values scores 8. `evaluate` reports the mean over images with its
standard error, the ELBO's beside it.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch

from .networks import compiled_decoders, model_device

LEVELS = 255  # the images are n/255 for 8-bit n: the bins are 1/255 wide


def dequantise(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x = (n + u)/255 with u ~ U[−½, ½) for images n/255 in [0, 1] (uint8 images are taken as n)."""
    n = images.double() if images.dtype == torch.uint8 else images.double() * LEVELS
    n = n.round()
    u = torch.rand(n.shape, generator=generator, dtype=torch.float64).to(n.device) - 0.5
    return ((n + u) / LEVELS).to(torch.float32)


def bits_per_dim(log_density: torch.Tensor, num_dims: int) -> torch.Tensor:
    """−(log p(x) − S·log 255)/(S·ln 2): a continuous log density of dequantised images (nats,
    any shape) as bits per dimension of the 8-bit images (module docstring)."""
    return -(log_density.double() - num_dims * math.log(LEVELS)) / (num_dims * math.log(2))


def _standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)


def _rescored(obs, eps_values):
    """p(x | z) as decoded, or (eps_values given) the same μ and P under each fixed diagonal."""
    if eps_values is None:
        return [obs]
    from .observations import LowRankNormal
    if not isinstance(obs, LowRankNormal):
        raise ValueError(f"re-scoring ε needs a low-rank model (sos, distribution, sos_learned_diag, sos_learned_eps), "
                         f"not {type(obs).__name__}")
    return [LowRankNormal(obs.loc, obs.cov_factor, float(e), validate_args=False) for e in eps_values]


@torch.no_grad()
def log_weights(model, x: torch.Tensor, k: int, generator: Optional[torch.Generator] = None,
                codes_per_batch: int = 256, eps_values: Optional[Sequence[float]] = None,
                fixed_rows: bool = False) -> torch.Tensor:
    """log p(x | z_k) + log p(z_k) − log q(z_k | x) for k codes z_k ~ q(z | x) per image: (k, B);
    with `eps_values`, (len(eps_values), k, B): the same codes, each decoded once, scored with
    the decoded μ and P under each fixed diagonal εI.

    x: (B, C, H, W) on any device. The k·B codes are decoded `codes_per_batch` at a time, so
    memory stays bounded whatever k is; with `fixed_rows`, every decode gets codes_per_batch
    rows (a short chunk is padded with repeats of its first code, scored and dropped), so that
    a compiled decoder compiles once."""
    device = model_device(model)
    x = x.to(device)
    q = model.encode(x)
    loc, scale = q.loc, q.scale  # (B, latent)
    flat = x.flatten(1)
    per_chunk = max(1, codes_per_batch // x.shape[0])
    out = []
    for start in range(0, k, per_chunk):
        c = min(per_chunk, k - start)
        eps = torch.randn((c, *loc.shape), generator=generator, dtype=loc.dtype).to(device)
        z = loc + scale * eps  # (c, B, latent)
        codes, images, n = z.reshape(-1, z.shape[-1]), flat.repeat(c, 1), c * x.shape[0]
        if fixed_rows and n < max(codes_per_batch, x.shape[0]):
            pad = max(codes_per_batch, x.shape[0]) - n
            codes, images = torch.cat([codes, codes[:1].expand(pad, -1)]), torch.cat([images, images[:1].expand(pad, -1)])
        obs = model.decode(codes)
        log_px = torch.stack([d.log_prob(images)[:n].reshape(c, -1) for d in _rescored(obs, eps_values)])
        log_q = (-0.5 * eps.pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        out.append(log_px.double() + (_standard_normal_log_prob(z).double() - log_q.double()))
    out = torch.cat(out, dim=1)
    return out[0] if eps_values is None else out


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """L_K = log (1/K) Σ_k w_k per image, from log weights (K, B)."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


@torch.no_grad()
def evaluate(model, images: torch.Tensor, k: int = 1000, seed: int = 0, batch_size: int = 8,
             codes_per_batch: int = 256, eps_values: Optional[Sequence[float]] = None, compile: bool = False):
    """Bits per dimension of held-out images (B, C, H, W) in [0, 1]: the K-sample bound and the
    ELBO, each as a mean over images with its standard error; a model with no latent gives its
    exact log-likelihood for both. Seeded: the dequantisation and the codes are reproducible.

    With `eps_values`, a low-rank model's trained μ and P are scored under each fixed diagonal
    εI instead of its own, from the same codes: {ε: result} (the price of coherence, notebook 13).
    `compile` decodes through `networks.compiled_decoders`, every decode of one size so that it
    compiles once (seconds): equal to float32 rounding, faster once K·N codes repay that."""
    if k < 1:
        raise ValueError(f"k = {k}; the bound needs at least one code per image (k ≥ 1)")
    if images.shape[0] < 2:
        raise ValueError("give at least 2 images, so that the standard error is defined")
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    S = images[0].numel()
    latent = bool(getattr(model, "latent_dim", 0))
    bound, elbo = [], []
    with compiled_decoders(model) if compile and latent else contextlib.nullcontext():
        for start in range(0, images.shape[0], batch_size):
            x = dequantise(images[start:start + batch_size], generator)
            b, e = _batch_bounds(model, x, k, generator, codes_per_batch, eps_values, latent, compile)
            bound.append(b)
            elbo.append(e)
    bound, elbo = torch.cat(bound, dim=1), torch.cat(elbo, dim=1)  # (variants, images)
    results = []
    for i in range(bound.shape[0]):
        result = {"n_images": int(images.shape[0]), "k": int(k) if latent else 0, "num_dims": int(S),
                  "seed": int(seed)}
        for name, values in (("bits_per_dim", bound[i]), ("elbo_bits_per_dim", elbo[i])):
            bpd = bits_per_dim(values, S)
            result[name] = float(bpd.mean())
            result[f"{name}_se"] = float(bpd.std() / math.sqrt(len(bpd)))
        results.append(result)
    return results[0] if eps_values is None else {float(e): r for e, r in zip(eps_values, results)}


def _batch_bounds(model, x, k, generator, codes_per_batch, eps_values, latent, fixed_rows):
    """(bound, ELBO) log densities of a batch of dequantised images x, each (variants, B)."""
    if latent:
        log_w = log_weights(model, x, k, generator, codes_per_batch, eps_values, fixed_rows)
        log_w = log_w if eps_values is not None else log_w[None]
        return torch.stack([iwae_bound(w) for w in log_w]), log_w.mean(1)
    # a single distribution over images: the exact likelihood
    flat = x.flatten(1).to(model_device(model))
    exact = torch.stack([d.log_prob(flat).double() for d in _rescored(model.distribution(x.shape[0]), eps_values)])
    return exact, exact


class WithDiagonal(torch.nn.Module):
    """A trained low-rank model with its fixed diagonal εI replaced by `eps`, everything else
    unchanged: the paper's likelihood re-scored post hoc (notebook 13, `nll --eps`)."""

    def __init__(self, model, eps: float):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps = {eps}; the diagonal must be positive (e.g. 1e-3)")
        self.model, self.eps = model, float(eps)
        self.latent_dim = getattr(model, "latent_dim", 0)
        self.image_shape, self.rank = model.image_shape, getattr(model, "rank", None)
        # the wrapper takes the model's mode: a caller that restores the wrapper's mode (as FID's image
        # generation does) must not switch the model's batch normalisation to batch statistics
        self.train(model.training)

    def encode(self, x):
        return self.model.encode(x)

    def decode(self, z, validate: bool = False):
        return _rescored(self.model.decode(z), [self.eps])[0]

    def distribution(self, batch: int = 1):
        return _rescored(self.model.distribution(batch), [self.eps])[0]


def held_out_images(cfg, n: Optional[int] = None, data_root=None, cache_dir=None) -> torch.Tensor:
    """The first n held-out test images (all if None) of a config's seeded split, in [0, 1]."""
    from .data import dataset_args, load_splits
    from .paths import cache_root
    test = load_splits(augment=False, progress=False, data_root=data_root, cache_dir=cache_root(cache_dir),
                       **dataset_args(cfg))["test"]
    if n is not None and n > len(test):
        raise ValueError(f"the test split of {cfg.dataset} holds {len(test)} images, fewer than n = {n}; "
                         f"pass n ≤ {len(test)}")
    return test.to_float(test.images[:n] if n is not None else None)


def nll_cli(args) -> int:
    """`python -m sosvae_core nll --run RUN [--k K] [--n N] [--eps E]`: one JSON line."""
    import json
    import time

    from .runs import load_run

    model = load_run(args.run, args.device)
    cfg = model.config
    if args.eps is not None:
        model = WithDiagonal(model, args.eps)
    images = held_out_images(cfg, args.n, data_root=args.data_root, cache_dir=args.cache_dir)
    start = time.perf_counter()
    result = evaluate(model, images, k=args.k, seed=args.seed, batch_size=args.batch_size, compile=args.compile)
    result.update(wall_time_s=round(time.perf_counter() - start, 1), run=str(args.run), model=cfg.model,
                  dataset=cfg.dataset, profile=cfg.profile, eps=args.eps if args.eps is not None else cfg.eps)
    print(json.dumps(result))
    return 0
