"""Fig. 7 (Section 4.5): the distribution-only model against a PCA of the same images.

Probabilistic PCA (Tipping & Bishop 1999) is the family of the distribution-only model,
N(m, WWᵀ + σ²I), with σ² fitted where ours fixes ε. `fit_pca` fits scikit-learn's PCA with as
many components as the model's rank R; `compare_with_pca` scores both on held-out images: the
error of projecting them onto each model's R-dimensional subspace, and the log-likelihood per
pixel; `pca_samples` draws from the PCA as notebook 06 shows them.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch


def fit_pca(train: torch.Tensor, n_components: int = 25, seed: int = 0):
    """scikit-learn PCA (probabilistic PCA likelihood via .score) on flattened images."""
    from sklearn.decomposition import PCA
    pca = PCA(n_components=n_components, random_state=seed)
    pca.fit(train.reshape(train.shape[0], -1).double().numpy())
    return pca


def pca_samples(pca, n: int, seed: int = 0) -> torch.Tensor:
    """Samples mean + Σ_k √λ_k ω_k u_k from the 25-component PCA (no isotropic noise)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, pca.n_components_)) * np.sqrt(pca.explained_variance_)
    return torch.from_numpy(pca.mean_ + w @ pca.components_).float()


def subspace_reconstruction_error(x: torch.Tensor, loc: torch.Tensor, basis: torch.Tensor) -> float:
    """Mean squared error per pixel of projecting x − loc onto span(basis) (S × R)."""
    q, _ = torch.linalg.qr(basis.detach().double())
    r = x.reshape(x.shape[0], -1).double() - loc.detach().double()
    return float((r - (r @ q) @ q.T).pow(2).mean())


def compare_with_pca(dist_model, pca, held_out: torch.Tensor) -> Dict[str, float]:
    """Held-out numbers for Fig. 7: reconstruction error in each model's subspace and
    log-likelihood per pixel (ours: N(μ, PPᵀ + εI); PCA: probabilistic PCA, noise fitted)."""
    x = held_out.reshape(held_out.shape[0], -1)
    with torch.no_grad():
        d = dist_model.distribution(1)
        ll_ours = float(d.log_prob(x.to(d.loc)).mean()) / x.shape[1]
        loc, P = d.loc[0].cpu(), d.cov_factor[0].cpu()
    return {
        "recon_mse_ours": subspace_reconstruction_error(x, loc, P),
        "recon_mse_pca": subspace_reconstruction_error(x, torch.from_numpy(pca.mean_),
                                                       torch.from_numpy(pca.components_).T),
        "loglik_per_pixel_ours": ll_ours,
        "loglik_per_pixel_pca": float(pca.score(x.double().numpy())) / x.shape[1],
        "pca_noise_variance": float(pca.noise_variance_),
    }
