"""The paper's claims, one object each: number, title, the paper's value (from the paper's
constants), the measure, and the pass rule, fixed before the run (notebook 11 and `run_all.sh`).

| # | claim (paper section) | measure | pass rule |
|---|---|---|---|
| 1 | β-VAE's sample − mean is pixel noise, SOS-VAE's is spatially coherent (Figs. 1–2) | neighbour correlation of sample − mean | abs(β) < 0.1 and SOS > 0.5 |
| 2 | SOS-VAE's average per-pixel variance is 0.0322 on CelebA (App. A) | mean of diag(PPᵀ) + ε over 64 prior z | within 2× of 0.0322 |
| 3 | SOS samples beat β-VAE samples and are no worse than β-VAE means (Table 1) | FID, same N | SOS samples < β samples and ≤ β means |
| 4 | SOS-VAE beats Dorta et al. on 64×64 gray, means and samples (Table 1) | FID, same N | SOS < Dorta for both |
| 5 | the covariance to the central pixel follows image structure (Fig. 2) | concentration of Σ₊ on the pixel's region | median ≥ 0.3 |
| 6 | slerp between samples is smooth and ends on the samples (Fig. 4) | corner error, largest / average step | ≤ 1e-5 and ≤ 2 |
| 7 | an edit recolours regions, not the whole image (Fig. 6) | propagation and unchanged fraction | ≥ 0.1 and ≥ 0.25 for every edit |
| 8 | the distribution-only model is as expressive as a 25-component PCA (Fig. 7) | held-out projection MSE | ≤ 1.2 × PCA's |
| 9 | without εI and ξ_H the variance explodes (App. A: 11.76 against 0.0322) | average variance ratio | ≥ 10 |
| 10 | *beyond the paper:* SOS-VAE's conditional scores hidden pixels better than the β-VAE's marginal | bits per hidden dimension, inpainting | β − SOS > 2 SE, both boxes |
| 11 | the β-VAE's means vary more over prior codes than SOS-VAE's (Sec. 4.1, Fig. 2) | variance of the decoded means over 64 prior z | β − SOS > 2 SE, paired over the codes |

Each rule is a `rules.Rule`, its text and predicate made from one set of named thresholds.
The thresholds are `scorecard`'s constants; measures 5, 7 and 11 and the levels of 5 and 7 are
explained in its docstring.

Claim 10 is ours, not the paper's (notebook 12, `inpainting.py`): on held-out test images a
centred box of a quarter of the image, or a random box of that area, is hidden; z is fitted to
the visible pixels alone, and the hidden 8-bit values are scored in bits per hidden dimension
under SOS-VAE's conditional p(x_hid | x_vis, z) and the β-VAE's marginal p(x_hid | z) (its
conditional). The rule asks for the difference, paired over the images, to exceed twice its
standard error for both kinds of box.

Claim 11 is the paper's (Sec. 4.1: "we observe more variation in the means of the β-VAE,
suggesting that as more variation can be modelled in the observation space, less needs to be
modelled in the latent space"). The paper gives an ordering and no number, so a ratio to
reach would be a level of our own making; the rule asks instead whether the codes show the
ordering beyond their own noise: the β-VAE's variation minus SOS-VAE's, paired over the same
prior codes, must exceed twice its standard error (the measure: `scorecard`'s docstring).

Adding a claim is one `Claim` with its measure, and its test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .inpainting import MASKS
from .networks import model_device
from .rules import Rule
from .scorecard import (AUTHORS_CONCENTRATION, AUTHORS_EDITS, COHERENCE_NOISE_MAX, COHERENCE_STRUCTURED_MIN,
                        CONCENTRATION_MIN, EDIT_PROPAGATION_MIN, EDIT_UNCHANGED_LEVEL, EDIT_UNCHANGED_MIN,
                        EXPLOSION_RATIO_MIN, FACE_DATASETS, PAIRED_SE_FACTOR, PAPER_PIXEL_VARIANCE,
                        PAPER_PIXEL_VARIANCE_UNSTABILISED, PCA_FACTOR, PRIOR_CODES, REGION_TAU, SLERP_ENDPOINT_MAX,
                        SLERP_STEP_RATIO_MAX, VARIANCE_FACTOR, covariance_structure, editing_claim, gray_dataset,
                        inpainting_claim, mean_variation, prior_pixel_variance, slerp_claim, table1_numbers,
                        training_variance)


@dataclass(frozen=True, repr=False)
class Claim:
    """One claim: where it is measured (the datasets of a notebook context), how
    (`measure(bench, dataset)` → our numbers and a note), the paper's value on a dataset (from
    the paper's constants) and the rule."""
    number: int
    title: str
    where: Callable[[Any], List[str]]
    measure: Callable[["Bench", str], Tuple[dict, str]]
    paper: Callable[[str], str]
    rule: Rule

    def __repr__(self) -> str:
        return f"Claim({self.number}, {self.title!r}, {self.rule!r})"


CLAIMS: Dict[int, Claim] = {}


def _register(claim: Claim) -> None:
    if claim.number in CLAIMS:
        raise ValueError(f"claim {claim.number} is defined twice; give the new one the next free number")
    CLAIMS[claim.number] = claim


class Bench:
    """What the measures of one `evaluate` share: the notebook context, each model loaded once,
    the FID feature extractor loaded when first needed, and SOS-VAE's prior variance (claims 2, 9)."""

    def __init__(self, ctx, n_images: int = 16):
        self.ctx, self.n_images = ctx, n_images
        self._models, self._variances, self._extractor = {}, {}, None

    def model(self, kind: str, dataset: Optional[str] = None):
        key = (kind, dataset or self.ctx.dataset)
        if key not in self._models:
            self._models[key] = self.ctx.model(kind, dataset=key[1])
        return self._models[key]

    def prior_variance(self, kind: str) -> float:
        """`scorecard.prior_pixel_variance` of the main dataset's model over PRIOR_CODES prior codes."""
        if kind not in self._variances:
            self._variances[kind] = prior_pixel_variance(self.model(kind), PRIOR_CODES, self.ctx.seed)
        return self._variances[kind]

    def table1(self, dataset: str, kinds: Sequence[str], compared: Sequence[str]) -> dict:
        """`scorecard.table1_numbers` of `compared` from Table 1 of `kinds` on a dataset (from the
        runs' cache when notebooks 08 and 09 computed it: same N, seed and weights)."""
        from . import fid, table1
        models = {(dataset, kind): self.model(kind, dataset) for kind in kinds}
        if self._extractor is None:
            self._extractor = fid.load_feature_extractor(device=model_device(next(iter(models.values()))))
        rows = table1.table1(models, self._extractor, data_root=self.ctx.data_root, cache_dir=self.ctx.cache_dir,
                             seed=self.ctx.seed, progress=False)
        return table1_numbers(rows, dataset, compared)


# -- where a claim is measured -----------------------------------------------------------------

def figure2_datasets(ctx) -> List[str]:
    """Fig. 2's datasets: the main one, and the brain slices when a data root is given."""
    return [ctx.dataset] + (["brain"] if ctx.has_real_data and ctx.dataset != "brain" else [])


def face_datasets(ctx) -> List[str]:
    """The main dataset when it holds faces (claims 2 and 7 are stated for faces)."""
    return [ctx.dataset] if ctx.dataset in FACE_DATASETS else []


def main_dataset(ctx) -> List[str]:
    return [ctx.dataset]


def gray_datasets(ctx) -> List[str]:
    """The 64×64 gray comparison with Dorta et al. (notebook 09)."""
    return [gray_dataset(ctx)]


def _paper_says(text: str) -> Callable[[str], str]:
    """The paper's value where it is the same on every dataset."""
    return lambda dataset: text


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


# -- claim 1 --------------------------------------------------------------------------------------

def _coherence(bench: Bench, dataset: str) -> Tuple[dict, str]:
    from .figures import observation_panel, spatial_coherence
    test = bench.ctx.test_images(dataset, bench.n_images)
    ours = {}
    for kind in ("beta", "sos"):
        model = bench.model(kind, dataset)
        with torch.no_grad():
            z = model.encode(test.to(model_device(model))).loc
        ours[f"coherence_{kind}"] = spatial_coherence(observation_panel(model, z, bench.ctx.seed)["difference"])
    return ours, ""


_register(Claim(
    number=1, title="sample − mean: pixel noise (β-VAE) against spatially coherent (SOS-VAE)",
    where=figure2_datasets, measure=_coherence,
    paper=_paper_says("β-VAE: uncorrelated pixel noise; SOS-VAE: spatially coherent (Figs. 1–2, no number given)"),
    rule=Rule("abs(coherence β-VAE) < {noise_max} and coherence SOS-VAE > {structured_min}",
              lambda o, noise_max, structured_min: (abs(o["coherence_beta"]) < noise_max
                                                    and o["coherence_sos"] > structured_min),
              dict(noise_max=COHERENCE_NOISE_MAX, structured_min=COHERENCE_STRUCTURED_MIN))))


# -- claim 2 --------------------------------------------------------------------------------------

def _pixel_variance(bench: Bench, dataset: str) -> Tuple[dict, str]:
    ours = {"pixel_variance": bench.prior_variance("sos"), "training_batches": training_variance(bench.model("sos"))}
    return ours, (f"over {PRIOR_CODES} prior codes; training_batches: the last epoch's encoded training images, as "
                  f"the paper's code logs it (not the rule)"
                  + ("" if dataset == "celeba" else f"; the paper's number is for CelebA, {dataset} stands in"))


_register(Claim(
    number=2, title="SOS-VAE's average per-pixel variance", where=face_datasets, measure=_pixel_variance,
    paper=_paper_says(f"{PAPER_PIXEL_VARIANCE} (CelebA 218×178, App. A)"),
    rule=Rule("{low:.4f} ≤ mean per-pixel variance ≤ {high:.4f}",
              lambda o, low, high: low <= o["pixel_variance"] <= high,
              dict(low=PAPER_PIXEL_VARIANCE / VARIANCE_FACTOR, high=PAPER_PIXEL_VARIANCE * VARIANCE_FACTOR))))


# -- claims 3 and 4: Table 1 ----------------------------------------------------------------------

def kid_agreement(claim: int, numbers: dict) -> str:
    """For claims 3 and 4 (ruled on FID): the same rule applied to KID, and whether the two
    metrics agree. A disagreement is reported, never hidden: '' when they agree."""
    if "kid" not in numbers:
        return ""
    fid_verdict, kid_verdict = check(claim, numbers), check(claim, numbers["kid"])
    numbers["kid_verdict"] = kid_verdict
    if fid_verdict == kid_verdict:
        return f"KID agrees ({'pass' if kid_verdict else 'fail'})"
    return f"FID AND KID DISAGREE: the rule on KID would {'pass' if kid_verdict else 'fail'}"


def _fid_against_beta(bench: Bench, dataset: str) -> Tuple[dict, str]:
    fids = bench.table1(dataset, ("beta", "sos"), ("beta", "sos"))
    note = [f"N = {fids['n']} generated images", kid_agreement(3, fids),
            "OASIS slices stand in for UK Biobank" if dataset == "brain" else ""]
    return fids, "; ".join(filter(None, note))


def _table1_against_beta(dataset: str) -> str:
    from .table1 import PAPER_N, PAPER_TABLE1
    sos, beta = PAPER_TABLE1.get((dataset, "sos")), PAPER_TABLE1.get((dataset, "beta"))
    if not (sos and beta):
        return "—"
    return f"SOS samples {sos[1]} < β samples {beta[1]}, β means {beta[0]} (N = {PAPER_N:,})"


_register(Claim(
    number=3, title="Table 1: SOS samples beat β-VAE samples and are no worse than β-VAE means",
    where=figure2_datasets, measure=_fid_against_beta, paper=_table1_against_beta,
    rule=Rule("FID SOS samples < FID β samples and FID SOS samples ≤ FID β means (same N)",
              lambda o: o["sos_samples"] < o["beta_samples"] and o["sos_samples"] <= o["beta_means"])))


def _fid_against_dorta(bench: Bench, dataset: str) -> Tuple[dict, str]:
    fids = bench.table1(dataset, ("beta", "dorta", "sos"), ("dorta", "sos"))
    return fids, "; ".join(filter(None, [f"N = {fids['n']} generated images", kid_agreement(4, fids)]))


def _table1_against_dorta(dataset: str) -> str:
    from .table1 import PAPER_N, PAPER_TABLE1
    sos, dorta = (PAPER_TABLE1[("celeba64_gray", kind)] for kind in ("sos", "dorta"))
    return f"SOS {sos[0]} / {sos[1]} < Dorta {dorta[0]} / {dorta[1]} (means / samples, N = {PAPER_N:,})"


_register(Claim(
    number=4, title="Table 1, 64×64 gray: SOS-VAE beats Dorta et al. (means and samples)",
    where=gray_datasets, measure=_fid_against_dorta, paper=_table1_against_dorta,
    rule=Rule("FID SOS < FID Dorta et al., for means and for samples (same N)",
              lambda o: o["sos_means"] < o["dorta_means"] and o["sos_samples"] < o["dorta_samples"])))


# -- claim 5 --------------------------------------------------------------------------------------

def _concentration(bench: Bench, dataset: str) -> Tuple[dict, str]:
    cov = covariance_structure(bench.model("sos", dataset), bench.n_images, bench.ctx.seed)
    return ({"median_concentration": cov["median_concentration"], "n_codes": cov["n_codes"]},
            f"over {cov['n_codes']} prior codes, as the authors' figure")


def _authors_concentration(dataset: str) -> str:
    brain = dataset == "brain"
    return (f"{AUTHORS_CONCENTRATION['brain' if brain else 'celeba']} (the authors' "
            f"{'ukbb_results.png' if brain else 'celeba_results.png'}, median over its 10 prior codes; "
            + ("Fig. 2d: +cov. follows the brain's structure)" if brain else
               "Fig. 2b: +cov. covers the face, −cov. faint on hair and background)"))


_register(Claim(
    number=5, title="covariance to the central pixel follows image structure",
    where=figure2_datasets, measure=_concentration, paper=_authors_concentration,
    rule=Rule("median concentration of Σ₊ on the central pixel's region ≥ {concentration_min} (τ = {tau})",
              lambda o, concentration_min: (_ok(o["median_concentration"])
                                            and o["median_concentration"] >= concentration_min),
              dict(concentration_min=CONCENTRATION_MIN), dict(tau=REGION_TAU))))


# -- claim 6 --------------------------------------------------------------------------------------

_register(Claim(
    number=6, title="slerp of ω_p is smooth and ends on the samples", where=main_dataset,
    measure=lambda bench, dataset: (slerp_claim(bench.model("sos"), seed=bench.ctx.seed), ""),
    paper=_paper_says("Fig. 4: smooth transitions (no number given)"),
    rule=Rule("corner error ≤ {endpoint_max:g} and largest step ≤ {step_ratio_max} × the path's average step",
              lambda o, endpoint_max, step_ratio_max: (o["corner_error"] <= endpoint_max
                                                       and o["step_ratio"] <= step_ratio_max),
              dict(endpoint_max=SLERP_ENDPOINT_MAX, step_ratio_max=SLERP_STEP_RATIO_MAX))))


# -- claim 7 --------------------------------------------------------------------------------------

def _edit_locality(bench: Bench, dataset: str) -> Tuple[dict, str]:
    from .editing import PAPER_EDIT_SCALE, PAPER_EDITS
    edits = PAPER_EDITS[dataset]
    measured = editing_claim(bench.model("sos"), edits, PAPER_EDIT_SCALE, seed=bench.ctx.seed)
    return measured, (f"authors' protocol: components scaled to {PAPER_EDIT_SCALE}, one-pixel strokes "
                      f"({', '.join(edits)}), median over {measured['n_codes']} prior codes")


_register(Claim(
    number=7, title="an edit recolours regions, not the whole image", where=face_datasets, measure=_edit_locality,
    paper=_paper_says("the authors' editor.png: "
                      + "; ".join(f"{k}: propagation {v['propagation']}, unchanged {v['unchanged_fraction']}"
                                  for k, v in AUTHORS_EDITS.items())
                      + " (Fig. 6: hair edit leaves the face, forehead edit leaves hair and background)"),
    rule=Rule("every edit: propagation ≥ {propagation_min} and unchanged fraction (d < {level}·p95) "
              "≥ {unchanged_min}",
              lambda o, propagation_min, unchanged_min: all(
                  e["propagation"] >= propagation_min and e["unchanged_fraction"] >= unchanged_min
                  for e in o["edits"].values()),
              dict(propagation_min=EDIT_PROPAGATION_MIN, unchanged_min=EDIT_UNCHANGED_MIN),
              dict(level=EDIT_UNCHANGED_LEVEL))))


# -- claim 8 --------------------------------------------------------------------------------------

def _against_pca(bench: Bench, dataset: str) -> Tuple[dict, str]:
    from .pca_baseline import compare_with_pca, fit_pca
    ctx, dist = bench.ctx, bench.model("distribution")
    pca = fit_pca(ctx.splits()["train"].to_float(), n_components=dist.rank, seed=ctx.seed)
    numbers = compare_with_pca(dist, pca, ctx.test_images())
    return {"mse_ours": numbers["recon_mse_ours"], "mse_pca": numbers["recon_mse_pca"]}, ""


_register(Claim(
    number=8, title="distribution-only model ≈ 25-component PCA", where=main_dataset, measure=_against_pca,
    paper=_paper_says("Fig. 7: little perceivable difference from PCA (no number given)"),
    rule=Rule("projection MSE distribution-only ≤ {factor} × PCA's",
              lambda o, factor: o["mse_ours"] <= factor * o["mse_pca"], dict(factor=PCA_FACTOR))))


# -- claim 9 --------------------------------------------------------------------------------------

def _explosion(bench: Bench, dataset: str) -> Tuple[dict, str]:
    unstable = bench.model("sos_learned_diag")
    stabilised, unstabilised = bench.prior_variance("sos"), bench.prior_variance("sos_learned_diag")
    ours = {"variance_stabilised": stabilised, "variance_unstabilised": unstabilised,
            "ratio": unstabilised / stabilised,
            "training_batches_ratio": training_variance(unstable) / training_variance(bench.model("sos"))}
    return ours, (f"unstabilised model trained {unstable.config.epochs} epochs; variances over {PRIOR_CODES} prior "
                  f"codes (training_batches_ratio: the last epoch's logged variances, not the rule)")


_register(Claim(
    number=9, title="App. A: without εI and ξ_H the variance explodes", where=main_dataset, measure=_explosion,
    paper=_paper_says(f"{PAPER_PIXEL_VARIANCE_UNSTABILISED} against {PAPER_PIXEL_VARIANCE} "
                      f"(ratio {PAPER_PIXEL_VARIANCE_UNSTABILISED / PAPER_PIXEL_VARIANCE:.0f}; 100 epochs)"),
    rule=Rule("average variance unstabilised ≥ {ratio_min:g} × stabilised",
              lambda o, ratio_min: o["ratio"] >= ratio_min, dict(ratio_min=EXPLOSION_RATIO_MIN))))


# -- claim 10, beyond the paper -------------------------------------------------------------------

def _inpainting(bench: Bench, dataset: str) -> Tuple[dict, str]:
    measured = inpainting_claim(bench.ctx)
    return measured, (f"{measured['n']} test images, z from the visible pixels by {measured['steps']} Adam steps; "
                      f"gain = β-VAE bits − SOS-VAE bits per hidden dimension (notebook 12)")


_register(Claim(
    number=10, title="beyond the paper: SOS-VAE's conditional scores hidden pixels better than the β-VAE's marginal",
    where=main_dataset, measure=_inpainting,
    paper=_paper_says("— (beyond the paper: the paper uses the conditional mean only)"),
    rule=Rule("beyond the paper: for the centred and the random box, bits per hidden dimension β-VAE marginal − "
              "SOS-VAE conditional > {se_factor:g} × its standard error (paired over the test images)",
              lambda o, se_factor: all(o[f"{kind}_gain"] > se_factor * o[f"{kind}_gain_se"] for kind in MASKS),
              dict(se_factor=PAIRED_SE_FACTOR))))


# -- claim 11 -------------------------------------------------------------------------------------

def _mean_variation(bench: Bench, dataset: str) -> Tuple[dict, str]:
    ours = mean_variation(bench.model("sos", dataset), bench.model("beta", dataset), PRIOR_CODES, bench.ctx.seed)
    return ours, (f"the same {PRIOR_CODES} prior codes for both models; variation: the variance of the decoded means "
                  f"over the codes, averaged over pixels; ratio: SOS-VAE's over the β-VAE's (not the rule)")


_register(Claim(
    number=11, title="Sec. 4.1: the β-VAE's means vary more over prior codes than SOS-VAE's",
    where=figure2_datasets, measure=_mean_variation,
    paper=_paper_says("Sec. 4.1 (Fig. 2): \"we observe more variation in the means of the β-VAE\" (no number given)"),
    rule=Rule("variation of the means over {n_codes} prior codes: β-VAE − SOS-VAE > {se_factor:g} × its "
              "standard error (paired over the codes)",
              lambda o, se_factor: o["difference"] > se_factor * o["difference_se"],
              dict(se_factor=PAIRED_SE_FACTOR), dict(n_codes=PRIOR_CODES))))


# -- verdicts and the whole scorecard -------------------------------------------------------------

def check(claim: int, ours: dict) -> Optional[bool]:
    """The pass rule of a claim applied to its measured numbers; None if not measured."""
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim}; the claims are {sorted(CLAIMS)}")
    return CLAIMS[claim].rule(ours)


def row(claim: int, dataset: str, ours: dict, paper: str, note: str = "") -> dict:
    """One scorecard line: the claim, ours, the paper's, the rule and the verdict."""
    return {"claim": claim, "title": CLAIMS[claim].title, "dataset": dataset, "ours": ours, "paper": paper,
            "rule": str(CLAIMS[claim].rule), "pass": check(claim, ours), "note": note}


def evaluate(ctx, n_images: int = 16) -> List[dict]:
    """Measure every claim on the trained runs of a notebook context (trains what is missing).

    Each claim is measured on the datasets its `where` names: the main dataset (CelebA, or
    the bundled faces) carries every claim, the brain slices add Fig. 2's claims when a data
    root is given, claim 4 runs on the gray dataset that notebook 09 uses. FID numbers come
    from the runs' cache when notebooks 08 and 09 computed them already. Lines are ordered by
    claim, the main dataset first.
    """
    bench, rows = Bench(ctx, n_images), []
    for claim in CLAIMS.values():
        for dataset in claim.where(ctx):
            ours, note = claim.measure(bench, dataset)
            rows.append(row(claim.number, dataset, ours, claim.paper(dataset), note))
    return sorted(rows, key=lambda r: (r["claim"], r["dataset"] != ctx.dataset))
