"""The paper's figures as functions: compute arrays, then draw them (Sections 4.2–4.5).

Each `*_panel` function returns plain tensors (so tests can check the math) and
each `plot_*` function draws them with matplotlib. The notebooks only call these. Fig. 7's
comparison with PCA is `pca_baseline`'s, Table 1's bars are `table1.plot_fid_table`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from .editing import floor_scales
from .networks import model_device, prior_codes
from .paths import write_json
from .runs import read_metrics
from .slerp import slerp


# -- small helpers ------------------------------------------------------------------------

def as_images(flat: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """(B, S) → (B, C, H, W)."""
    return flat.reshape(flat.shape[0], *image_shape)


def centre_pixel(image_shape: Sequence[int]) -> int:
    """Flat index of the central pixel, channel 0, as the paper's code uses."""
    _, H, W = image_shape
    return (H // 2) * W + W // 2


def spatial_coherence(residuals: torch.Tensor) -> float:
    """Mean correlation of horizontally and vertically neighbouring residual pixels.

    residuals: (B, C, H, W), e.g. sample − mean. Independent pixel noise gives ≈ 0;
    spatially structured noise (the paper's claim 1) gives clearly positive values.
    Pearson correlation over all neighbour pairs of an image, averaged over images.
    """
    r = residuals.double()
    r = r - r.mean(dim=(1, 2, 3), keepdim=True)
    pairs = [(r[..., :, :-1], r[..., :, 1:]), (r[..., :-1, :], r[..., 1:, :])]
    corrs = []
    for a, b in pairs:
        num = (a * b).sum(dim=(1, 2, 3))
        den = (a.pow(2).sum(dim=(1, 2, 3)) * b.pow(2).sum(dim=(1, 2, 3))).sqrt().clamp_min(1e-30)
        corrs.append(num / den)
    return float(torch.stack(corrs).mean())


def record(output_dir, **metrics) -> dict:
    """Merge key numbers into `<output_dir>/metrics.json` (read by the notebook tests)."""
    path = Path(output_dir) / "metrics.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(metrics)
    write_json(path, data)
    return data


def prior_z(model, n: int, seed: int) -> torch.Tensor:
    """The model's first n prior codes for `seed` (`networks.prior_codes` from a fresh generator)."""
    return prior_codes(model.latent_dim, n, torch.Generator().manual_seed(seed))


# -- Figs. 1–2: mean, sample, residual, variance, covariance to the centre -----------------

@torch.no_grad()
def observation_panel(model, z: torch.Tensor, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Rows of Figs. 1–2 for latent codes z: each (B, C, H, W) on the CPU.

    mean, sample, sample − mean, per-pixel variance, and the covariance of every
    pixel with the central pixel (channel 0), split into positive and negative parts
    with the central entry itself zeroed so it does not dominate (as the paper's code).
    """
    shape = model.image_shape
    obs = model.decode(z.to(model_device(model)))
    omega_p, omega_d = obs.draw_noise(torch.Generator().manual_seed(seed))
    sample = obs.rsample(omega_p=omega_p, omega_d=omega_d)
    centre = centre_pixel(shape)
    cov = obs.covariance_row(centre).clone()
    cov[:, centre] = 0
    out = {"mean": obs.mean, "sample": sample, "difference": sample - obs.mean,
           "variance": obs.variance, "cov_positive": cov.clamp(min=0), "cov_negative": (-cov).clamp(min=0)}
    return {k: as_images(v.float().cpu(), shape) for k, v in out.items()}


def fig2_panels(models: Dict[str, "torch.nn.Module"], n: int, seed: int = 0,
                images: Optional[torch.Tensor] = None) -> Dict[str, Dict[str, torch.Tensor]]:
    """Fig. 2's rows (`observation_panel`) for each model of {label: model}, from the same codes:
    n prior codes z ~ N(0, I), as the paper's figure, or the posterior means of `images`
    (e.g. held-out test images, (B, C, H, W) in [0, 1])."""
    out = {}
    for label, model in models.items():
        if images is None:
            z = prior_z(model, n, seed)
        else:
            with torch.no_grad():
                z = model.encode(images[:n].to(model_device(model))).loc
        out[label] = observation_panel(model, z, seed)
    return out


ROW_TITLES = {"mean": "mean", "sample": "sample", "difference": "sample − mean",
              "variance": "variance", "cov_positive": "+cov. to centre", "cov_negative": "−cov. to centre"}


def _show(ax, img: torch.Tensor, kind: str, vmax: Optional[float] = None):
    """Draw one (C, H, W) panel: images clamped to [0, 1], maps on the scale given."""
    ax.set_xticks([]), ax.set_yticks([])
    if kind in ("mean", "sample"):
        arr = img.clamp(0, 1).permute(1, 2, 0).numpy()
        return ax.imshow(arr.squeeze(-1) if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
    m = img.mean(0).numpy()
    if kind == "difference":
        lim = vmax or (np.abs(m).max() + 1e-12)
        return ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    # variance and covariance maps: channel mean
    return ax.imshow(m, cmap="magma", vmin=0, vmax=vmax or (m.max() + 1e-12))


def _suptitle(fig, title: str, fontsize: float = 9) -> None:
    """The figure's caption, wrapped to the figure's width (about 1.9 characters per point of width)."""
    import textwrap
    width = max(40, int(fig.get_figwidth() * 72 * 1.9 / fontsize))
    fig.suptitle(textwrap.fill(title, width), fontsize=fontsize)


def plot_observation_panels(panels: Dict[str, Dict[str, torch.Tensor]], n_cols: int = 4,
                            title: str = ""):
    """One column block per model (e.g. β-VAE | SOS-VAE), rows as in Fig. 2.

    Each map row (sample − mean, variance, ± covariance; channel means) of each model is
    drawn on one scale, with its colour bar at the block's end: the magnitudes of β-VAE
    and SOS-VAE are read off the bars (they differ by orders of magnitude, so one shared
    scale would leave the β-VAE's maps black).
    """
    import matplotlib.pyplot as plt
    rows = list(ROW_TITLES)
    names = list(panels)
    fig, axes = plt.subplots(len(rows), n_cols * len(names), squeeze=False, layout="constrained",
                             figsize=(1.4 * n_cols * len(names) + 0.8 * len(names), 1.5 * len(rows)))
    for r, kind in enumerate(rows):
        for m, name in enumerate(names):
            imgs = panels[name][kind][:n_cols]
            peak = None if kind in ("mean", "sample") else float(imgs.mean(1).abs().max())
            block = axes[r, m * n_cols:(m + 1) * n_cols]
            for c, ax in enumerate(block):
                image = _show(ax, imgs[c], kind, None if peak is None else peak + 1e-12)
                if c == 0 and m == 0:
                    ax.set_ylabel(ROW_TITLES[kind], fontsize=8)
                if r == 0 and c == 0:
                    ax.set_title(name, fontsize=9, loc="left")
            if peak == 0.0:  # e.g. the β-VAE's covariance between two pixels: a colour bar of nothing
                block[0].text(0.5, 0.5, "0 everywhere", color="white", fontsize=7, ha="center", va="center",
                              transform=block[0].transAxes)
            elif peak is not None:
                bar = fig.colorbar(image, ax=list(block), fraction=0.04, pad=0.02)
                bar.ax.tick_params(labelsize=6)
    _suptitle(fig, title)
    return fig


def plot_mosaics(blocks: Dict[str, torch.Tensor], title: str = "", cell: float = 0.45):
    """Image grids side by side, one per label (Figs. 3 and 7): each block (rows, cols, C, H, W)
    drawn as one mosaic, clamped to [0, 1]."""
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid
    first = next(iter(blocks.values()))
    rows, cols, _, H, W = first.shape
    fig, axes = plt.subplots(1, len(blocks), squeeze=False, layout="constrained",
                             figsize=(cell * cols * len(blocks) + 0.4, cell * rows * H / W + 0.6))
    for ax, (label, grid) in zip(axes[0], blocks.items()):
        r, c = grid.shape[:2]
        mosaic = make_grid(grid.reshape(r * c, *grid.shape[2:]).clamp(0, 1).float(), nrow=c, padding=1,
                           pad_value=1.0)
        ax.imshow(mosaic.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    _suptitle(fig, title)
    return fig


# -- Fig. 4: slerp over ω_p ----------------------------------------------------------------------

@torch.no_grad()
def slerp_grid(model, z: torch.Tensor, n: int = 5, seed: int = 0, return_corners: bool = False):
    """(n+2)×(n+2) samples for one z whose ω_p slerps between four random corners.

    The top and bottom edges are slerp(tl, tr, i/(n+1)) and slerp(bl, br, i/(n+1)); the
    cell in row j, column i is the slerp between those at j/(n+1) (paper eq. 8 and
    Appendix D). ω_d is fixed, so only the structured part moves.
    Returns (n+2, n+2, C, H, W) indexed [row, column]; with return_corners, also the
    four corner samples (tl, tr, bl, br) drawn directly from their ω_p, (4, C, H, W).
    """
    obs = model.decode(z[:1].to(model_device(model)))
    if obs.noise_rank == 0:
        raise ValueError(f"slerp_grid interpolates ω_p, and {type(obs).__name__} has none; "
                         f"use a model with structured noise (e.g. SOS-VAE)")
    g = torch.Generator().manual_seed(seed)
    corners = torch.randn(4, obs.noise_rank, generator=g, dtype=torch.float64)
    tl, tr, bl, br = corners
    omega_d = torch.randn(obs.loc.shape, generator=g).to(obs.loc.device)
    t = torch.linspace(0, 1, n + 2, dtype=torch.float64)
    top, bottom = slerp(tl, tr, t), slerp(bl, br, t)  # (n+2, R)
    cells = torch.stack([slerp(top[i], bottom[i], t) for i in range(n + 2)], dim=1)  # (rows, cols, R)
    omega_p = cells.reshape(-1, obs.noise_rank).to(obs.loc)
    y = obs.rsample(omega_p=omega_p.unsqueeze(1), omega_d=omega_d.expand(omega_p.shape[0], *obs.loc.shape))
    grid = y[:, 0].reshape(n + 2, n + 2, *model.image_shape).cpu()
    if not return_corners:
        return grid
    direct = obs.rsample(omega_p=corners.to(obs.loc).unsqueeze(1), omega_d=omega_d.expand(4, *obs.loc.shape))
    return grid, direct[:, 0].reshape(4, *model.image_shape).cpu()


def plot_grid(images: torch.Tensor, title: str = "", row_labels: Optional[Sequence[str]] = None,
              col_labels: Optional[Sequence[str]] = None, cell: float = 0.9):
    """Draw a (rows, cols, C, H, W) grid of images clamped to [0, 1]."""
    import matplotlib.pyplot as plt
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows * images.shape[-2] / images.shape[-1] + 0.5),
                             squeeze=False, layout="constrained")
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            _show(ax, images[i, j], "mean")
            if row_labels is not None and j == 0:
                ax.set_ylabel(row_labels[i], fontsize=7)
            if col_labels is not None and i == 0:
                ax.set_title(col_labels[j], fontsize=7)
    _suptitle(fig, title, 10)
    return fig


def plot_edits(chains: Sequence, edit_names: Sequence[str], title: str = "", cell: float = 1.3):
    """Fig. 6's rows: for each (row label, result of `editing.edit_sequence`), the mean with the
    strokes pasted and below it the conditional mean; one column per edit after the mean."""
    rows, labels = [], []
    for label, chain in chains:
        rows += [torch.cat([chain["mean"], chain["edited"]]), torch.cat([chain["mean"], chain["conditional"]])]
        labels += [label, "cond. mean"]
    return plot_grid(torch.stack(rows), title, row_labels=labels, col_labels=["mean"] + list(edit_names), cell=cell)


def plot_conditional_samples(chain: Dict[str, torch.Tensor], edit_names: Sequence[str], title: str = "",
                             cell: float = 1.1):
    """Plausible completions of an edit: per edit (rows), the mean with the strokes so far, the
    conditional mean and the conditional samples of `editing.edit_sequence(..., n_samples=n)`."""
    rows = [torch.cat([chain["edited"][i:i + 1], chain["conditional"][i:i + 1], chain["samples"][i]])
            for i in range(len(edit_names))]
    n = chain["samples"].shape[1]
    labels = [f"after {' + '.join(edit_names[:i + 1])}" for i in range(len(edit_names))]
    return plot_grid(torch.stack(rows), title, row_labels=labels,
                     col_labels=["edit", "cond. mean"] + [f"sample {j + 1}" for j in range(n)], cell=cell)


def plot_variance_maps(maps: Dict[str, torch.Tensor], title: str = "", cell: float = 1.6,
                       scale_from: Optional[str] = None):
    """Per-pixel variance maps side by side (each (C, H, W), channel mean), on one colour scale: that
    of the map named `scale_from` (default: the largest), with one colour bar."""
    import matplotlib.pyplot as plt
    names = list(maps)
    _, H, W = next(iter(maps.values())).shape
    vmax = float(maps[scale_from].mean(0).max()) if scale_from else max(float(m.mean(0).max()) for m in maps.values())
    fig, axes = plt.subplots(1, len(names), squeeze=False, layout="constrained",
                             figsize=(cell * len(names) + 0.8, cell * H / W + 0.7))
    for ax, name in zip(axes[0], names):
        image = _show(ax, maps[name], "variance", vmax + 1e-12)
        ax.set_title(name, fontsize=7)
    bar = fig.colorbar(image, ax=list(axes[0]), fraction=0.04, pad=0.02)
    bar.ax.tick_params(labelsize=6)
    _suptitle(fig, title)
    return fig


def plot_completions(images: Dict[str, torch.Tensor], title: str = "", cell: float = 0.95):
    """Inpainting (notebook 12): one row per image, the columns of {label: (n, C, H, W)} in order
    (e.g. masked, each model's completions, truth)."""
    labels = list(images)
    grid = torch.stack([images[k] for k in labels], 1)
    return plot_grid(grid, title, col_labels=labels, cell=cell)


# -- Fig. 5 and App. B: principal-component scaling (eq. 5) ------------------------------------

PAPER_SCALES = torch.arange(-5.0, 5.01, 0.5)  # −5 … +5 in steps of 0.5 (21 values)


def scale_labels(scales=PAPER_SCALES) -> List[str]:
    """Column labels for a component sweep: the scale, or the floor it is drawn at (0 → +0.03)."""
    from .editing import COMPONENT_FLOOR
    return [f"{floor_scales(t):+.2f}" if abs(t) < COMPONENT_FLOOR else f"{t:+.1f}" for t in torch.as_tensor(scales).tolist()]


@torch.no_grad()
def prior_component_sweep(model, seed: int = 0):
    """Figs. 5, 9 and 10 for one prior code: its singular values s (R,) and every
    component's sweep through PAPER_SCALES (R, len(PAPER_SCALES), C, H, W)."""
    z = prior_z(model, 1, seed)
    _, s, _ = model.decode(z.to(model_device(model))).principal_components()
    return s[0].cpu(), component_sweep(model, z, range(model.rank), seed=seed)

@torch.no_grad()
def component_sweep(model, z: torch.Tensor, components: Iterable[int], scales=PAPER_SCALES,
                    others: float = 0.03, seed: int = 0) -> torch.Tensor:
    """Scale one principal component at a time through `scales` (eq. 5).

    The other components are scaled by `others`: 0.03 as in the paper's code, so each
    row isolates its component; 1.0 keeps them. Every scale is floored at ±0.03 as the
    paper's code does (`floor_scales`): the column labelled 0 is drawn at 0.03.
    ω_p and ω_d are fixed across the figure. Returns (len(components), len(scales), C, H, W).
    """
    obs = model.decode(z[:1].to(model_device(model)))
    g = torch.Generator().manual_seed(seed)
    omega_p = torch.randn(1, obs.rank, generator=g).to(obs.loc)
    omega_d = torch.randn(obs.loc.shape, generator=g).to(obs.loc)
    U, s, V = obs.principal_components()  # computed once for all rows
    rows = []
    for r in components:
        a = torch.full((len(scales), obs.rank), others, dtype=s.dtype, device=s.device)
        a[:, r] = torch.as_tensor(scales, dtype=s.dtype)
        a = floor_scales(a)
        P = U @ ((s * a).unsqueeze(-1) * V.mT)  # (len(scales), S, R)
        y = obs.loc + (P @ omega_p.mT).squeeze(-1) + obs.diagonal.sqrt() * omega_d
        rows.append(y.reshape(len(scales), *model.image_shape).cpu())
    return torch.stack(rows)


# -- App. A: the variance explosion without the stabilisers -------------------------------------

@torch.no_grad()
def average_variance(model, images: torch.Tensor, batch_size: int = 50) -> float:
    """Average per-pixel variance of p(x|z) with z the encoder's mean of held-out images."""
    dev = model_device(model)
    total, count = 0.0, 0
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(dev)
        obs = model.decode(model.encode(x).loc)
        total += float(obs.variance.sum())
        count += obs.variance.numel()
    return total / count


def save_figure(fig, output_dir, name: str) -> Path:
    path = Path(output_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


# -- training curves ------------------------------------------------------------------------

CURVES = [("nll", "reconstruction NLL (nats/image)", "symlog"), ("kl", "KL (nats/image)", "linear"),
          ("entropy", "entropy H[p(x|z)] (nats/image)", "linear"), ("lambda_kl", "λ_KL", "symlog"),
          ("lambda_entropy", "λ_H", "symlog"), ("mean_variance", "mean pixel variance", "log"),
          ("val_mean_mse", "the mean's squared error, validation (per epoch)", "log")]
EPOCH_CURVES = ("val_mean_mse",)  # read from the per-epoch log, not smoothed


def plot_training_curves(runs: Dict[str, Path], targets: Optional[Dict[str, float]] = None, smooth: int = 5,
                         title: str = ""):
    """Loss terms and both multipliers against the step, one line per run.

    targets: optional horizontal lines, e.g. {"kl": ξ_KL, "entropy": ξ_H}.
    """
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.8), layout="constrained")
    for ax in axes.flat[len(CURVES):]:
        ax.axis("off")
    for name, run_dir in runs.items():
        logs = {"steps": read_metrics(run_dir), "epochs": read_metrics(run_dir, "epochs")}
        for ax, (key, label, scale) in zip(axes.flat, CURVES):
            m = logs["epochs" if key in EPOCH_CURVES else "steps"]
            y = m.get(key)
            if y is None or not np.isfinite(y).any():
                continue
            if key not in EPOCH_CURVES and smooth > 1 and len(y) > smooth:
                y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            ax.plot(m["step"][:len(y)], y, label=name, lw=1.2, marker="." if key in EPOCH_CURVES else None)
    for ax, (key, label, scale) in zip(axes.flat, CURVES):
        if targets and key in targets and targets[key] is not None:
            ax.axhline(targets[key], color="k", ls="--", lw=0.8, label=f"target {targets[key]:.4g}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_yscale(scale)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _suptitle(fig, title)
    return fig


def plot_variance_during_training(run_dirs: Dict[str, Path], title: str = ""):
    """App. A: the average per-pixel variance of the training batches against the step, one line
    per run, on a log scale."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, run_dir in run_dirs.items():
        m = read_metrics(run_dir)
        ax.plot(m["step"], m["mean_variance"], label=name)
    ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_ylabel("mean pixel variance"), ax.legend()
    ax.set_title(title, fontsize=8)
    return fig
