"""Kernel Inception Distance (Bińkowski, Sutherland, Arbel & Gretton, ICLR 2018): the metric alone.

KID is the squared maximum mean discrepancy between the Inception features of generated
images X and reference images Y under the cubic polynomial kernel of the features'
dimension d,

    k(x, y) = (xᵀy / d + 1)³,

estimated without bias (the diagonal terms left out):

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (n(n−1)) − 2 Σ_{i,j} k(x_i, y_j) / (mn).

Unlike FID, whose small-N bias differs between models, its expectation does not depend on the
number of images, so KID at N = 250 estimates the same number as at N = 50,000. The protocol
here is the authors': the mean and standard deviation of MMD²_u over `n_subsets` random
subsets of `subset_size` images of each set, drawn without replacement (by default 100
subsets of min(1,000, half the smaller set) images: with half the images a subset differs from
the next, so the spread says how much the number moves with the images drawn). The features
are the same Inception pool3 features as FID's (`sosvae_core.fid.activations`). Reported in
the usual units: MMD²_u × 1,000.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

SCALE = 1000.0  # KID is reported ×10³


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(a_i, b_j) = (a_iᵀb_j / d + 1)³ for feature rows a (m, d) and b (n, d), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² of feature sets x (m, d) and y (n, d) under `polynomial_kernel`."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"MMD² needs at least 2 images per set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kernel_inception_distance(generated: np.ndarray, reference: np.ndarray, n_subsets: int = 100,
                              subset_size: Optional[int] = None, seed: int = 0) -> Dict[str, float]:
    """KID ×10³ of two feature sets (module docstring): {"kid", "kid_std", "n_subsets", "subset_size"}."""
    m, n = len(generated), len(reference)
    if subset_size is None:
        subset_size = min(1000, m // 2, n // 2)
    if not 2 <= subset_size <= min(m, n):
        raise ValueError(f"subset_size = {subset_size} with {m} generated and {n} reference images; "
                         f"give 2 ≤ subset_size ≤ {min(m, n)} (or more images)")
    if n_subsets < 1:
        raise ValueError(f"n_subsets = {n_subsets}; give at least 1")
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_unbiased(generated[rng.choice(m, subset_size, replace=False)],
                                     reference[rng.choice(n, subset_size, replace=False)])
                       for _ in range(n_subsets)]) * SCALE
    return {"kid": float(values.mean()), "kid_std": float(values.std(ddof=1)) if n_subsets > 1 else 0.0,
            "n_subsets": int(n_subsets), "subset_size": int(subset_size)}
