"""Beyond the paper (notebook 13): what the fixed ε costs, and how much rank is enough.

**The price of coherence.** With Σ = PPᵀ + εI, the part of a residual r = x − μ that P cannot
explain is scored at precision 1/ε: the NLL holds a term ½·‖r_⊥‖²/ε. The paper's ε = 1e-5 makes
the samples y = μ + Pω_p + √ε·ω_d coherent (the pixel noise √ε·ω_d is invisible), and makes
every unexplained residual expensive. Re-scoring a trained model's μ and P post hoc with a
larger ε (`likelihood.WithDiagonal`) trades one against the other: the test bits per dimension
fall, and the samples gain pixel noise, so their neighbour correlation falls. `eps_tradeoff`
measures both, with FID and KID of the samples, over a grid of ε; the β-VAE (a learned
per-pixel variance, no P) and the `sos_learned_eps` model (one learned ε under the entropy
bound) are points beside the curve (`model_point`).

**Rank.** The paper chose R = 25 by the computation at hand ("the only unbiased way of selecting
[R] is through ablation"). `rank_point` measures one trained rank: test bits per dimension, FID
and KID of samples, the average per-pixel variance over prior codes, claims 5 and 7's measures,
the share of the variance in P's top component, and the time of one training step. ξ_H follows
R by the documented rule (`configs.rescaled_target_entropy`), so every rank has the paper's
per-pixel variance budget.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from . import likelihood
from .networks import model_device

EPS_GRID = (1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
FID_EPS = (1e-5, 1e-3, 1e-2, 1e-1)  # the grid's points whose samples get FID and KID (Inception is slow on a CPU)
RANKS = (1, 2, 5, 10, 25, 50)  # the full sweep (results/rank_ablation/)
QUICK_RANKS = (1, 25)  # the sweep `run_all.sh` trains: the ends, within its time budget


@torch.no_grad()
def sample_coherence(model, n: int = 64, seed: int = 0) -> float:
    """The neighbour correlation of sample − mean over n prior codes (`figures.spatial_coherence`)."""
    from .figures import prior_z, spatial_coherence
    obs = model.decode(prior_z(model, n, seed).to(model_device(model)))
    omega_p, omega_d = obs.draw_noise(torch.Generator().manual_seed(seed))
    residual = obs.rsample(omega_p=omega_p, omega_d=omega_d) - obs.mean
    return spatial_coherence(residual.float().cpu().reshape(n, *model.image_shape))


def _sample_fid(model, extractor, reference, n: int, seed: int) -> Dict[str, float]:
    from .table1 import _cached_fid
    result = _cached_fid(model, reference, n, "samples", extractor, seed, progress=False)
    return {"fid_samples": result["fid"], "kid_samples": result["kid"], "kid_samples_std": result["kid_std"]}


def eps_tradeoff(model, images: torch.Tensor, k: int, extractor, reference, n_fid: int,
                 eps_grid: Sequence[float] = EPS_GRID, fid_eps: Sequence[float] = FID_EPS,
                 seed: int = 0) -> List[dict]:
    """One row per ε of the grid for a trained low-rank model re-scored with that diagonal:
    test bits per dimension (K-sample bound, ± SE), sample coherence, and for ε in `fid_eps`
    FID and KID of n_fid samples against `reference` (`table1.dataset_reference`)."""
    bits = likelihood.evaluate(model, images, k=k, seed=seed, eps_values=list(eps_grid))
    rows = []
    for eps in eps_grid:
        rescored = likelihood.WithDiagonal(model, eps)
        row = {"eps": float(eps), "bits_per_dim": bits[float(eps)]["bits_per_dim"],
               "bits_per_dim_se": bits[float(eps)]["bits_per_dim_se"],
               "coherence": sample_coherence(rescored, seed=seed)}
        if any(abs(eps - e) <= 1e-12 * e for e in fid_eps):
            row.update(_sample_fid(rescored, extractor, reference, n_fid, seed))
        rows.append(row)
    return rows


def model_point(model, images: torch.Tensor, k: int, extractor, reference, n_fid: int, seed: int = 0) -> dict:
    """The same measures for a model as it was trained (the β-VAE, the learned-ε model), its
    FID and KID cached in its run folder as Table 1's are."""
    bits = likelihood.evaluate(model, images, k=k, seed=seed)
    point = {"bits_per_dim": bits["bits_per_dim"], "bits_per_dim_se": bits["bits_per_dim_se"],
             "coherence": sample_coherence(model, seed=seed), **_sample_fid(model, extractor, reference, n_fid, seed)}
    head = getattr(getattr(model, "head", None), "log_eps", None)
    if head is not None:
        point["learned_eps"] = float(head.detach().exp())
    return point


@torch.no_grad()
def top_component_share(model, n: int = 64, seed: int = 0) -> float:
    """The median over n prior codes of s₁² / Σ_r s_r²: the share of P's variance in its top direction."""
    from .figures import prior_z
    s = model.decode(prior_z(model, n, seed).to(model_device(model))).principal_components()[1]
    return float((s[:, 0] ** 2 / (s ** 2).sum(-1)).median())


def rank_point(model, images: torch.Tensor, k: int, extractor, reference, n_fid: int, batch: torch.Tensor,
               edits: Optional[dict] = None, seed: int = 0) -> dict:
    """Every measure of the rank ablation for one trained SOS-VAE (module docstring). `batch`:
    training images for the step time; `edits`: the scripted edits of claim 7 (None: skipped)."""
    from .editing import PAPER_EDIT_SCALE
    from .scorecard import covariance_structure, editing_claim, prior_pixel_variance
    from .timing import training_step_seconds
    point = {"rank": int(model.rank), **model_point(model, images, k, extractor, reference, n_fid, seed),
             "pixel_variance": prior_pixel_variance(model, 64, seed),
             "concentration": covariance_structure(model, 16, seed)["median_concentration"],
             "top_component_share": top_component_share(model, seed=seed),
             "step_seconds": training_step_seconds(model, batch)}
    if edits is not None:
        claim = editing_claim(model, edits, PAPER_EDIT_SCALE, seed=seed)
        point["unchanged_fraction"] = min(e["unchanged_fraction"] for e in claim["edits"].values())
        point["propagation"] = min(e["propagation"] for e in claim["edits"].values())
    return point


# -- figures ------------------------------------------------------------------------------------

def plot_tradeoff(rows: List[dict], points: Dict[str, dict], title: str = ""):
    """Test bits per dimension against sample coherence, one point per ε (labelled, FID beside
    where measured), the paper's ε circled, and the models as trained beside the curve."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    x, y = [r["bits_per_dim"] for r in rows], [r["coherence"] for r in rows]
    ax.plot(x, y, "-o", color="tab:blue", label="SOS-VAE, μ and P re-scored with ε")
    for r in rows:
        text = f"ε={r['eps']:g}" + (f"\nFID {r['fid_samples']:.0f}" if "fid_samples" in r else "")
        ax.annotate(text, (r["bits_per_dim"], r["coherence"]), textcoords="offset points", xytext=(6, 4), fontsize=7)
    paper = min(rows, key=lambda r: abs(r["eps"] - 1e-5))
    ax.plot([paper["bits_per_dim"]], [paper["coherence"]], "o", ms=14, mfc="none", mec="tab:red",
            label="the paper's ε = 1e-5 (as trained)")
    for (name, p), marker in zip(points.items(), ("s", "D", "^", "v")):
        ax.plot([p["bits_per_dim"]], [p["coherence"]], marker, ms=8, label=f"{name}: FID {p['fid_samples']:.0f}")
    ax.set_xscale("log")
    ax.set_xlabel("test bits per dimension (lower: a better likelihood)")
    ax.set_ylabel("neighbour correlation of sample − mean\n(1: coherent changes, 0: pixel noise)")
    ax.margins(0.12)
    ax.legend(fontsize=7, loc="lower right")  # the worst corner, a poor likelihood and pixel noise, stays empty
    ax.set_title(title, fontsize=9)
    return fig


RANK_CURVES = [("bits_per_dim", "test bits / dim"), ("fid_samples", "FID of samples"), ("kid_samples", "KID×10³ of samples"),
               ("pixel_variance", "per-pixel variance (prior)"), ("concentration", "claim 5: concentration"),
               ("unchanged_fraction", "claim 7: unchanged fraction"), ("top_component_share", "share in top component"),
               ("step_seconds", "training step (s)")]


def plot_rank_curves(points: List[dict], title: str = ""):
    """Each measure of the rank ablation against R (log scale), one small panel per measure."""
    import matplotlib.pyplot as plt
    points = sorted(points, key=lambda p: p["rank"])
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.2), layout="constrained")
    ranks = [p["rank"] for p in points]
    for ax, (key, label) in zip(axes.flat, RANK_CURVES):
        values = [p.get(key, float("nan")) for p in points]
        ax.plot(ranks, values, "-o")
        if key == "bits_per_dim":
            ax.errorbar(ranks, values, yerr=[p["bits_per_dim_se"] for p in points], fmt="none", capsize=3)
        if key == "kid_samples":
            ax.errorbar(ranks, values, yerr=[p["kid_samples_std"] for p in points], fmt="none", capsize=3)
        ax.set_xscale("log")
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("rank R", fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig
