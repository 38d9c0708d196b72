"""Observation models p(y | z): one module per model, each a distribution and its decoder head.

    lowrank   N(μ, PPᵀ + D), SOS-VAE's likelihood (Section 3); its algebra in woodbury
    sos       the models built on it: SOS-VAE's head, its Appendix A ablation, a learned ε,
              Section 4.5's distribution-only model
    diagonal  N(μ, diag(σ²)), the β-VAE baseline (Section 4.1)
    dorta     N(μ, (LLᵀ)⁻¹) with a sparse Cholesky factor, Dorta et al. 2018 (Section 4.3);
              its solvers (wavefront, selected inversion) in dorta_solvers, its conditional
              given an edit (a banded precision) in banded
    laplace   independent Laplace pixels, an L1 baseline (not in the paper)

`REGISTRY` maps each config `model` name to its `ObservationModel`: the head, the label
and which bounds apply. To add a model, write one module with its distribution (a
subclass of `base.ObservationDistribution`), its head and its `ObservationModel`, import
the module below and add its `ObservationModel` to `REGISTRY`, one line.

The distributions are torch Distributions (batch shapes, `expand`, value validation, second
derivatives); `kl` registers closed-form `torch.distributions.kl_divergence` between the
Gaussian ones and torch's MultivariateNormal and Independent(Normal, 1). Each answers
`conditional(mask, values)`, the distribution of the unedited pixels given the edited ones:
low rank again for the low-rank model, the marginal for the pixel-independent ones, and for
Dorta et al.'s a `BandedPrecisionNormal` (the precision's sub-block).
"""
from __future__ import annotations

from . import banded, base, diagonal, dorta, dorta_solvers, kl, laplace, lowrank, sos, woodbury  # kl: registers kl_divergence for the Gaussians
from .banded import BandedPrecisionNormal
from .base import ObservationDistribution, ObservationModel
from .diagonal import DiagonalHead, DiagonalNormal, PixelIndependent
from .dorta import SparsePrecisionHead, SparsePrecisionNormal
from .lowrank import CapacitanceError, LowRankNormal
from .sos import DistributionOnly, LowRankHead

REGISTRY = {m.name: m for m in (
    sos.SOS,
    diagonal.BETA,
    dorta.DORTA,
    sos.DISTRIBUTION,
    sos.SOS_LEARNED_DIAG,
    sos.SOS_LEARNED_EPS,
    laplace.LAPLACE,
)}


def get_observation_model(name: str) -> ObservationModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown observation model '{name}'; choose one of {', '.join(REGISTRY)}") from None


def label(name: str) -> str:
    """The model's name in tables and figures (the config name if it is not registered)."""
    return REGISTRY[name].label if name in REGISTRY else name


__all__ = [
    "base", "lowrank", "woodbury", "sos", "diagonal", "dorta", "dorta_solvers", "banded", "laplace", "kl",  # the modules (the API reference documents each)
    "REGISTRY", "get_observation_model", "label", "ObservationModel", "ObservationDistribution",
    "LowRankNormal", "LowRankHead", "DistributionOnly", "CapacitanceError",
    "PixelIndependent", "DiagonalNormal", "DiagonalHead",
    "SparsePrecisionNormal", "SparsePrecisionHead", "BandedPrecisionNormal",
]
