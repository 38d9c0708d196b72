"""Editing by Gaussian conditioning (paper Section 4.4, eqs. 6–7, Fig. 6, App. C) and its brushes.

An edit paints values y₂ on some pixels; the model completes the image with the conditional
mean E[y₁ | y₂] (`conditional_mean` of the observation distribution). This module holds the
pieces both the figures and the interactive editor use: the brushes (`stroke_mask`, a
freehand polyline in pixel units; `segment_mask`, a straight stroke in fractions of the
image), brush colours (`colour_to_values`, `paint_values`), the component floor of the
authors' editor (`floor_scales`), the scripted edits (`FACE_EDITS`, `PAPER_EDITS`) and
`edit_sequence`, which applies them.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .networks import model_device
from .observations import LowRankNormal

Points = Sequence[Tuple[float, float]]

# A component scale never reaches 0: the paper's code replaces |a| < 0.03 by ±0.03 (0 by
# +0.03), so "scale 0" in Figs. 5, 9, 10 and in the editor means 0.03.
COMPONENT_FLOOR = 0.03


def floor_scales(scales, floor: float = COMPONENT_FLOOR):
    """Scales with magnitude below `floor` moved to ±floor, keeping their sign (0 → +floor).

    A number gives a number (exact in float64), a tensor a tensor of its dtype."""
    if not isinstance(scales, torch.Tensor):
        return -max(-float(scales), floor) if scales < 0 else max(float(scales), floor)
    sign = torch.where(scales < 0, -1.0, 1.0).to(scales.dtype)
    return sign * scales.abs().clamp(min=floor)


def stroke_mask(points: Points, radius: float, height: int, width: int,
                chunk: int = 64) -> torch.Tensor:
    """Pixels painted by a brush of `radius` along the polyline through `points`.

    points: (row, col) in image pixel units, pixel (r, c) covering [r, r+1) × [c, c+1);
    a pixel is painted when its centre lies within `radius` of the polyline, and the pixel
    under each point always is, so that a thin brush still leaves a mark. Returns a bool
    (H, W) mask. Work is bounded to the strokes' bounding box, a chunk of segments at a
    time. (numpy, not torch: for these tiny arrays torch's per-call overhead dominated.)
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    mask = np.zeros((height, width), dtype=bool)
    if len(pts) == 0:
        return torch.from_numpy(mask)
    starts = pts[:-1] if len(pts) > 1 else pts
    ends = pts[1:] if len(pts) > 1 else pts
    for i in range(0, len(starts), chunk):
        a, b = starts[i:i + chunk], ends[i:i + chunk]
        lo = np.floor(np.minimum(a, b).min(0) - radius - 1).astype(int).clip(0)
        hi = np.ceil(np.maximum(a, b).max(0) + radius + 1).astype(int)
        r0, c0 = lo
        r1, c1 = min(hi[0], height), min(hi[1], width)
        if r0 >= r1 or c0 >= c1:
            continue
        rows, cols = np.meshgrid(np.arange(r0, r1) + 0.5, np.arange(c0, c1) + 0.5, indexing="ij")
        centres = np.stack([rows, cols], -1).reshape(-1, 1, 2)
        ab = b - a
        t = ((centres - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12)
        nearest = a + t.clip(0, 1)[..., None] * ab
        near = ((centres - nearest) ** 2).sum(-1).min(1) <= radius ** 2
        mask[r0:r1, c0:c1] |= near.reshape(r1 - r0, c1 - c0)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < height) & (pts[:, 1] >= 0) & (pts[:, 1] < width)
    under = np.floor(pts[inside]).astype(int)
    mask[under[:, 0], under[:, 1]] = True
    return torch.from_numpy(mask)


def segment_mask(image_shape: Sequence[int], y0: float, x0: float, y1: float, x1: float,
                width: float = 0.04) -> torch.Tensor:
    """A straight stroke from (y0, x0) to (y1, x1), in fractions of the image, all channels
    (the scripted edits of Fig. 6 and the scorecard; `stroke_mask` is the freehand brush).

    Returns a bool (C, H, W) mask: pixels within `width`·min(H, W) of the segment.
    """
    C, H, W = image_shape
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    a = torch.tensor([y0 * (H - 1), x0 * (W - 1)], dtype=torch.float64)
    b = torch.tensor([y1 * (H - 1), x1 * (W - 1)], dtype=torch.float64)
    d = b - a
    t = (((yy - a[0]) * d[0] + (xx - a[1]) * d[1]) / d.pow(2).sum().clamp_min(1e-12)).clamp(0, 1)
    dist = ((yy - a[0] - t * d[0]) ** 2 + (xx - a[1] - t * d[1]) ** 2).sqrt()
    mask = dist <= max(width * min(H, W), 0.5)
    return mask.expand(C, H, W).clone()


# Stroke positions for aligned faces (CelebA and LFW are both aligned on the eyes).
FACE_EDITS = {
    "hair": dict(stroke=(0.06, 0.35, 0.12, 0.65), colour=(0.85, 0.75, 0.2)),  # blond streak
    "skin": dict(stroke=(0.55, 0.28, 0.62, 0.36), colour=(0.9, 0.45, 0.45)),  # flushed cheek
    "background": dict(stroke=(0.1, 0.02, 0.3, 0.06), colour=(0.1, 0.6, 0.2)),  # green backdrop
}

# The authors' editor (their code's sampler → editor): it edits the distribution whose
# principal components are all scaled to their floor of 0.03 (P → U(0.03·S)Vᵀ), with a
# pen of a few pixels painted on the mean. Their published example: a short dark stroke
# on the hair, then a short darker stroke on the forehead (width=0.01: a one-pixel line).
PAPER_EDIT_SCALE = 0.03
PAPER_EDITS = {
    # aligned CelebA (218×178 and its resized quick sizes): hair above the forehead
    "celeba": {
        "hair": dict(stroke=(0.14, 0.46, 0.17, 0.54), colour=(0.08, 0.06, 0.05), width=0.01),
        "forehead": dict(stroke=(0.37, 0.45, 0.39, 0.52), colour=(0.55, 0.40, 0.32), width=0.01),
    },
    # the bundled portraits (44×36): the crown of the hair, and the forehead below the fringe
    "portraits": {
        "hair": dict(stroke=(0.2, 0.45, 0.2, 0.55), colour=(0.08, 0.06, 0.05), width=0.01),
        "forehead": dict(stroke=(0.4, 0.45, 0.4, 0.55), colour=(0.55, 0.40, 0.32), width=0.01),
    },
    # the bundled LFW crops are tighter: the top rows are hair, the forehead just below
    "lfw": {
        "hair": dict(stroke=(0.02, 0.4, 0.02, 0.6), colour=(0.08, 0.06, 0.05), width=0.01),
        "forehead": dict(stroke=(0.2, 0.42, 0.2, 0.58), colour=(0.55, 0.40, 0.32), width=0.01),
    },
}


def colour_to_values(colour, channels: int) -> torch.Tensor:
    """Brush colour → one intensity per channel in [0, 1].

    colour: any CSS colour PIL knows ('#ff8800', 'white', ...) or an (r, g, b) tuple in
    [0, 1]. Gray images get the luminance 0.299 r + 0.587 g + 0.114 b (BT.601).
    """
    if isinstance(colour, str):
        from PIL import ImageColor
        rgb = torch.tensor(ImageColor.getrgb(colour)[:3], dtype=torch.float32) / 255
    else:
        rgb = torch.as_tensor(colour, dtype=torch.float32).reshape(-1)[:3]
        if rgb.numel() == 1:
            rgb = rgb.repeat(3)
    if channels == 3:
        return rgb
    return (rgb * torch.tensor([0.299, 0.587, 0.114])).sum().reshape(1).repeat(channels)


def paint_values(colour, mask: torch.Tensor) -> torch.Tensor:
    """The edited values for a mask (C, H, W): the colour per channel, or its luminance."""
    return colour_to_values(colour, mask.shape[0])[:, None, None].expand(mask.shape)[mask]


@torch.no_grad()
def edit_sequence(model, z: torch.Tensor, edits: Sequence[str], sequential: bool = True,
                  edit_table: Optional[Dict] = None, component_scale: Optional[float] = None,
                  n_samples: int = 0, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Apply named strokes and condition the mean on them (eqs. 6–7).

    sequential=True accumulates the edits (App. C); False applies each on its own.
    component_scale: condition the distribution whose principal components are all
    scaled by this factor (eq. 5; the authors' editor uses 0.03; floored at ±0.03 like
    every component scale); None: the full P.
    Returns (len(edits), C, H, W) tensors: 'edited' (the mean with the strokes so far
    pasted), 'conditional' (the conditional mean) and 'masks' (the pixels conditioned
    on), plus 'mean' (1, C, H, W).

    n_samples > 0 adds the whole conditional (`conditional`): 'samples' (len(edits),
    n_samples, C, H, W), plausible completions with the edited pixels as painted, drawn
    with the same noise (seeded) after every edit; 'variance' (len(edits), C, H, W), the
    conditional variance, 0 on the edited pixels; and 'prior_variance' (1, C, H, W), the
    variance before any edit.
    """
    edit_table = edit_table or FACE_EDITS
    shape = model.image_shape
    obs = model.decode(z[:1].to(model_device(model)))
    if component_scale is not None:
        obs = _components_scaled(obs, component_scale)
    mean = obs.mean[0].detach().cpu().reshape(shape)
    mask = torch.zeros(shape, dtype=torch.bool)
    target = mean.clone()
    edited, conditional, masks, samples, variances = [], [], [], [], []
    if n_samples:
        # one draw of (ω_p, ω_d) for every edit, so that the samples after each edit correspond
        omega_p, omega_d = obs.draw_noise(torch.Generator().manual_seed(seed), torch.Size([n_samples]))
    for name in edits:
        spec = edit_table[name]
        m = segment_mask(shape, *spec["stroke"], width=spec.get("width", 0.04))
        if not sequential:
            mask = torch.zeros(shape, dtype=torch.bool)
            target = mean.clone()
        target[m] = paint_values(spec["colour"], m).to(target.dtype)
        mask |= m
        values = target[mask].unsqueeze(0).to(obs.loc)
        cond = obs.conditional_mean(mask.to(obs.loc.device), values)[0].cpu().reshape(shape)
        paste = mean.clone()
        paste[mask] = target[mask]
        edited.append(paste)
        conditional.append(cond)
        masks.append(mask.clone())
        if n_samples:
            sample, variance = _completions(obs, mask, values, paste, omega_p, omega_d)
            samples.append(sample)
            variances.append(variance)
    out = {"mean": mean.unsqueeze(0), "edited": torch.stack(edited),
           "conditional": torch.stack(conditional), "masks": torch.stack(masks)}
    if n_samples:
        out.update(samples=torch.stack(samples), variance=torch.stack(variances),
                   prior_variance=obs.variance[0].detach().cpu().reshape(1, *shape))
    return out


def _components_scaled(obs, component_scale: float) -> LowRankNormal:
    """The low-rank distribution with every principal component scaled by `component_scale`
    (floored at ±0.03 like every component scale)."""
    if not isinstance(obs, LowRankNormal):
        raise ValueError(f"component_scale needs a low-rank observation model, not {type(obs).__name__}; "
                         f"use component_scale=None")
    # every component scaled alike: U(c·S)Vᵀ = c·P exactly, no SVD needed
    c = floor_scales(float(component_scale))
    return LowRankNormal(obs.loc, obs.cov_factor * c, obs.cov_diag, validate_args=False)


def _completions(obs, mask: torch.Tensor, values: torch.Tensor, paste: torch.Tensor, omega_p: torch.Tensor,
                 omega_d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The whole conditional given an edit (mask (C, H, W), the painted `values`): samples drawn
    with the noise (ω_p, ω_d), the edited pixels as in `paste`, (n, C, H, W); and its variance,
    0 on the edited pixels, (C, H, W)."""
    n_samples = omega_p.shape[0]
    rest = obs.conditional(mask.to(obs.loc.device), values)
    flat = ~mask.reshape(-1)
    drawn = rest.rsample(omega_p=omega_p[..., :rest.noise_rank],
                         omega_d=omega_d[..., flat.to(omega_d.device)])[:, 0].cpu()
    sample = paste.reshape(-1).expand(n_samples, -1).clone()
    sample[:, flat] = drawn.to(sample.dtype)
    variance = torch.zeros(flat.shape)
    variance[flat] = rest.variance[0].cpu().to(variance.dtype)
    return sample.reshape(n_samples, *mask.shape), variance.reshape(mask.shape)


@torch.no_grad()
def authors_protocol(model, z: torch.Tensor, layout: str) -> Dict[str, torch.Tensor]:
    """The authors' published edit (Fig. 6): the one-pixel strokes of PAPER_EDITS[layout] in
    sequence, on the distribution with every component at the floor PAPER_EDIT_SCALE (a model
    without P, e.g. the β-VAE, is conditioned as it is). Returns `edit_sequence`'s tensors."""
    edits = PAPER_EDITS[layout]
    scale = PAPER_EDIT_SCALE if isinstance(model.decode(z[:1].to(model_device(model))), LowRankNormal) else None
    return edit_sequence(model, z, list(edits), sequential=True, edit_table=edits, component_scale=scale)


def variance_decided(chain: Dict[str, torch.Tensor], edit_names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """What each edit of `edit_sequence(..., n_samples=n)` decided, per edit (the edits so far):
    'decided', the share of the total variance before any edit that the conditional no longer
    has, 1 − Σ var_after / Σ var_before; 'halved', the share of the unedited values whose
    variance fell below half of what it was; 'edited', the share of values painted."""
    before = chain["prior_variance"][0].double()
    out = {}
    for i, name in enumerate(edit_names):
        after, unedited = chain["variance"][i].double(), ~chain["masks"][i]
        out[name] = {"decided": float(1 - after.sum() / before.sum()),
                     "halved": float((after[unedited] < 0.5 * before[unedited]).double().mean()),
                     "edited": float(chain["masks"][i].double().mean())}
    return out


def edit_spread(result: Dict[str, torch.Tensor], mask_of_last: Optional[torch.Tensor] = None) -> float:
    """How far an edit propagates: mean |conditional − mean| outside the edited pixels."""
    changed = (result["edited"][-1] != result["mean"][0])
    diff = (result["conditional"][-1] - result["mean"][0]).abs()
    return float(diff[~changed].mean())
