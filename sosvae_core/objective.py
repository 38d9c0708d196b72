"""The constrained ELBO of SOS-VAE (paper Section 3.3, eq. 3).

Training minimises the reconstruction NLL subject to two upper bounds per image,

    KL(q(z|x) ‖ p(z)) ≤ ξ_KL      and      H[p(x|z)] ≤ ξ_H,

with the modified differential method of multipliers (Platt & Barr 1988): each
constraint g ≤ ξ adds λ·(g − ξ) + (c/2)·(g − ξ)² to the loss, the network descends
the gradient, and the multiplier λ *ascends* it, λ ← max(0, λ + η_λ·(g − ξ)).
The damping c makes the constrained optimum an attractor rather than a saddle.

Like the paper's code, NLL, KL and entropy are summed over the batch and the
targets are per image times the batch size; the damping (10) and the multiplier
step (SGD, lr 1) act on those batch sums. Logged values are per image.

`ObjectiveTerms` computes the three terms per image for a model (the encoder, one posterior
sample, the decoder's observation model); the trainer runs it as it is, under
DistributedDataParallel, or through `compiled`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn
from torch.distributions import Normal

from .observations import get_observation_model


@dataclass
class ConstraintConfig:
    target_kl: Optional[float] = 45.0  # ξ_KL, nats per image; None: no KL constraint (β = 1)
    target_entropy: Optional[float] = None  # ξ_H, nats per image; None: no entropy constraint
    damping: float = 10.0
    multiplier_lr: float = 1.0
    # The paper's code damps always, which also pulls a satisfied g up towards ξ (the
    # bound then acts like an equality). One-sided damping only pushes g down.
    one_sided_damping: bool = False


class Multipliers(nn.Module):
    """The Lagrange multipliers λ_KL and λ_H, kept ≥ 0, updated by gradient ascent."""

    def __init__(self):
        super().__init__()
        self.kl = nn.Parameter(torch.zeros(()))
        self.entropy = nn.Parameter(torch.zeros(()))

    @torch.no_grad()
    def ascend(self, violations: Dict[str, torch.Tensor], lr: float) -> None:
        """λ ← max(0, λ + lr·(g − ξ)) for each active constraint (batch sums)."""
        for name, v in violations.items():
            lam = getattr(self, name)
            lam.add_(lr * v.detach().to(lam.dtype)).clamp_(min=0.0)


def standard_normal_kl(q: Normal) -> torch.Tensor:
    """KL(q(z|x) ‖ N(0, I)) per image, closed form: ½ Σ (σ² + m² − 1 − log σ²).

    torch's kl_divergence(q, Normal(0, 1)) term for term (bit for bit), without its
    registry look-up, which torch.compile cannot trace."""
    var = q.scale.pow(2)
    return (0.5 * (var + q.loc.pow(2) - 1 - var.log())).sum(-1)


def lagrangian(nll: torch.Tensor, kl: Optional[torch.Tensor], entropy: torch.Tensor,
               multipliers: Multipliers, cfg: ConstraintConfig,
               reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
    """Loss to minimise, and the constraint violations (g − ξ) as batch sums.

    nll, kl, entropy: per-image values, shape (B,); kl is None without a latent.
    reduce: under data parallelism, sums a detached tensor over all processes, so that
    the damping coefficient and the multiplier step use the global batch's violation.
    """
    B = nll.shape[0]
    loss = nll.sum()
    violations = {}
    if kl is not None and cfg.target_kl is None:
        loss = loss + kl.sum()  # the plain ELBO
    terms = {"kl": (kl, cfg.target_kl), "entropy": (entropy, cfg.target_entropy)}
    for name, (g, target) in terms.items():
        if g is None or target is None:
            continue
        local = g.sum() - target * B
        violations[name] = reduce(local.detach()) if reduce else local.detach()
        lam = getattr(multipliers, name)
        # λ·(g − ξ) + (c/2)(g − ξ)², written as (λ + c·sg(g − ξ))·(g − ξ) like the paper's
        # code: its gradient in the network is (λ + c(g − ξ))∇g, the MDMM update
        damped = violations[name].clamp(min=0) if cfg.one_sided_damping else violations[name]
        loss = loss + (lam.detach() + cfg.damping * damped) * local
    return loss, violations


def mean_variance(obs) -> torch.Tensor:
    """Average per-pixel variance (a 0-d tensor), NaN where it is not cheap (the Dorta model's)."""
    nan = torch.full((), float("nan"), device=obs.loc.device)
    if getattr(obs, "variance_is_expensive", False):
        return nan
    try:
        with torch.no_grad():
            return obs.variance.mean()
    except NotImplementedError:
        return nan


class ObjectiveTerms(torch.nn.Module):
    """x → (NLL, KL, entropy) per image, and the mean per-pixel variance (`mean_variance`),
    or with `distribution=True` the observation model itself instead.

    A module of its own so that DistributedDataParallel sees tensor outputs; a training
    step takes the variance, so that a compiled step returns tensors only (the
    distribution's views of the heads' outputs cannot leave a compiled graph); evaluation
    reads the distribution (its mean). The
    networks may run under bf16 autocast; the likelihood always runs in float32.
    Under data parallelism every rank draws the posterior noise of the whole global
    batch and keeps its own rows (rank, rank + world, ...: the rows the sampler gave
    it), so that each image gets the z that one process would have drawn for it.
    """

    def __init__(self, model: torch.nn.Module, kind: str, amp: bool = False, rank: int = 0, world: int = 1):
        super().__init__()
        self.model, self.kind, self.amp = model, kind, amp
        self.latent = get_observation_model(kind).latent
        self.rank, self.world = rank, world

    def forward(self, x: torch.Tensor, distribution: bool = False):
        if not self.latent:  # a model that is its own distribution: no encoder, no KL
            obs, kl = self.model.distribution(x.shape[0]), None
        else:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
                q = self.model.encode(x)
                # validation runs on rank 0 alone, so it draws for its own batch only
                rank, world = (self.rank, self.world) if self.model.training else (0, 1)
                noise = torch.randn((x.shape[0] * world, q.loc.shape[-1]), dtype=q.loc.dtype,
                                    device=q.loc.device)[rank::world]
                obs = self.model.decode(q.loc + noise * q.scale)  # = q.rsample() when world = 1
            kl = standard_normal_kl(q).float()
        nll, entropy = -obs.log_prob(x.flatten(1).float()), obs.entropy()
        return nll, kl, entropy, obs if distribution else mean_variance(obs)


def compiled(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile of a training step's forward pass. Its random draws (the posterior noise)
    come from torch's generator as in eager mode (inductor's own would differ), so a compiled
    step equals the eager one to float rounding and resumes from the checkpointed RNG state."""
    return torch.compile(module, options={"fallback_random": True, "layout_optimization": False})
