"""Spherical linear interpolation of the observation noise (paper Section 4.2, Appendix D).

Interpolating two samples y_a, y_b of one observation distribution moves their noise
along a great circle, y_t = μ + P·slerp(ω_pa, ω_pb; t) + √ε·ω_d (eq. 4 and eq. 8), so every
intermediate noise vector keeps the norm a draw from N(0, I_R) is likely to have.
"""
from __future__ import annotations

from typing import Union

import torch

__all__ = ["slerp"]


def slerp(a: torch.Tensor, b: torch.Tensor, t: Union[float, torch.Tensor],
          eps: float = 1e-6) -> torch.Tensor:
    """Spherical linear interpolation (eq. 8, Appendix D) along the last dimension.

        slerp(a, b; t) = sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b,  cos θ = âᵀb̂.

    Degenerate cases: a ≈ b (θ → 0) reduces to linear interpolation, the limit of
    the formula; a ≈ −b has no unique great circle, so we pass through a fixed
    direction m orthogonal to a (norm half-way between |a| and |b|), i.e. two
    quarter-turn slerps a → m → b.  t may be a float or a tensor of shape (..., 1)
    or (...) broadcasting against the leading dimensions of a and b.
    """
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.dim() > 0:
        t = t.unsqueeze(-1)
    a, b = torch.broadcast_tensors(a, b)
    out, antipodal = _slerp_formula(a, b, t, eps)
    if antipodal.any():
        na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
        # Gram–Schmidt on the axis least aligned with a gives a deterministic orthogonal m
        axis = torch.zeros_like(a).scatter_(-1, a.abs().argmin(-1, keepdim=True), 1.0)
        ortho = axis - (axis * a).sum(-1, keepdim=True) * a / (na * na).clamp_min(1e-30)
        mid = ortho / ortho.norm(dim=-1, keepdim=True) * (na + nb) / 2
        first, _ = _slerp_formula(a, mid, 2 * t, eps)
        second, _ = _slerp_formula(mid, b, 2 * t - 1, eps)
        out = torch.where(antipodal, torch.where(t < 0.5, first, second), out)
    return out


def _slerp_formula(a, b, t, eps):
    """Eq. 8 with the θ → 0 limit; also says where a ≈ −b (left to the caller)."""
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    cos = ((a * b).sum(-1, keepdim=True) / (na * nb).clamp_min(1e-30)).clamp(-1, 1)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    degenerate = sin <= eps
    safe_sin = torch.where(degenerate, torch.ones_like(sin), sin)
    out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / safe_sin
    out = torch.where(degenerate & (cos > 0), (1 - t) * a + t * b, out)
    return out, degenerate & (cos <= 0)
