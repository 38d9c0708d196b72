"""SOS-VAE: structured (low-rank) uncertainty in the observation space of VAEs.

A reference implementation of Langley, Monteiro, Jones, Pawlowski and Glocker, *Structured
Uncertainty in the Observation Space of Variational Autoencoders*, TMLR 2022. The decoder
outputs p(x | z) = N(μ(z), P(z)P(z)ᵀ + εI) with P of rank R = 25 and ε = 1e-5 (eq. 3); a
sample is y = μ + Pω_p + √ε·ω_d (eq. 4).

The package in two layers. The library stands alone and imports nothing from the layer above
(a test checks it):

- `observations` — one module per observation model, each its distribution and decoder head,
  and the registry:
  - `observations.base`: the shared noise interface (ω_p, ω_d), the heads' start, the checks, `ObservationModel`;
  - `observations.lowrank`: the paper's `LowRankNormal` N(μ, PPᵀ + D), a torch Distribution;
  - `observations.woodbury`: its O(S·R²) algebra (Woodbury, the determinant lemma) and their gradients;
  - `observations.sos`: the models built on it: SOS-VAE's head, App. A's learned diagonal, a learned ε, the distribution-only model;
  - `observations.diagonal`: the β-VAE's N(μ, diag(σ²));
  - `observations.dorta`: Dorta et al. 2018, N(μ, (LLᵀ)⁻¹) with a sparse stencil Cholesky factor;
  - `observations.dorta_solvers`: its solvers: wavefront triangular solves, selected inversion;
  - `observations.banded`: its conditional given an edit, N(μ, Λ⁻¹) with a banded precision;
  - `observations.laplace`: independent Laplace pixels, an L1 baseline (not in the paper).
  - `observations.kl`: closed-form `kl_divergence` between the Gaussian models and torch's.
- `slerp` — spherical interpolation of the noise (eq. 8, Appendix D).
- `networks` — the ResNet encoder and decoder for any C×H×W; the VAE takes its head from the registry.
- `objective` — the constrained ELBO: KL ≤ ξ_KL, H ≤ ξ_H, the modified differential method of multipliers;
  `ObjectiveTerms`, a model's NLL, KL and entropy per image.
- `train` — the `Trainer`: mean-only pre-training, exact resume, checkpoints, a NaN detector, DDP.
- `schedule` — mean-only pre-training and its end, the parameter groups by role, their learning rates.
- `checkpoints` — a run folder's config and checkpoint read and checked against the run asked for; the RNG states.
- `metrics_log` — a run's metrics logs (whole rows only, cut back on resume), its TensorBoard events, the epoch's line.
- `runs` — run folders: `run_name`, `get_or_train` (train once, then load), `load_run`, `read_metrics`.
- `pool` — several runs trained at once on a CPU, each in a process of its own.
- `data` — CelebA, 64×64 gray CelebA, brain slices, the bundled portraits and LFW faces:
  - `data.sources`: the dataset specs, finding the images on disk, decoding them;
  - `data.store`: the decoded subset on disk, cache and packed datasets, with checksums;
  - `data.splits`: the seeded train / val / test split, the datasets that serve it, a config's data.
- `portraits` — the bundled synthetic portraits.
- `configs` — named experiments × profiles (smoke / quick / paper); the entropy target across sizes.
- `fid` — offline FID (pytorch-fid's protocol) and FID∞, with cached reference statistics.
- `inception` — FID's Inception network: its weights found offline, pytorch-fid's preprocessing, the features.
- `kid` — the Kernel Inception Distance, unbiased at any N, on FID's features.
- `likelihood` — test log-likelihood in bits per dimension: the importance-weighted bound on dequantised images.
- `inpainting` — hidden pixels of held-out images scored under each model's conditional (beyond the paper).
- `paths` — the environment variables, where runs and caches live, atomic writes.

On top of it, the paper and the apps:

- `figures` — the paper's figures as functions; spatial coherence.
- `pca_baseline` — Fig. 7: the distribution-only model against a PCA of the same images.
- `editing` — editing by conditioning (eqs. 6–7): brushes, colours, the scripted edits, the component floor.
- `table1` — Table 1 for trained runs: images generated from a model, their FID, the paper's values beside ours, their bars, the `fid` command.
- `timing` — the per-image costs and training-step times the notebooks report (Fig. 3, notebook 13),
  the widgets' callback latencies (notebook 10).
- `tradeoffs` — beyond the paper: the price of the fixed ε in test likelihood, and the rank ablation (notebook 13).
- `scorecard` — the claims' measures and the levels their rules ask for; the scorecard shown as text, Markdown, a figure.
- `claims` — each claim of the paper one object: the paper's value, the measure, the rule fixed before the run (notebook 11).
- `rules` — a claim's pass rule: its predicate and its text made from one set of thresholds.
- `authors_figures` — claims 5 and 7's measures read off the authors' published images.
- `widgets` — the ipywidgets panels of notebook 10, one module per panel:
  - `widgets.components`: the principal components of P on sliders (eq. 5, Fig. 5);
  - `widgets.slerp_grid`: the bilinear slerp between four ω_p (eq. 8, Fig. 4);
  - `widgets.latent`: z → mean, a sample, the variance and a clicked pixel's covariance (eq. 4);
  - `widgets.edit`: painted strokes completed by the conditional (eqs. 6–7, Fig. 6);
  - `widgets.base`: z → p(y | z), the controls and mouse events every panel shares;
  - `widgets.rendering`: PNGs, the variance and covariance colour maps, the layout.
- `notebook` — what every notebook does first.
- `runner` — the papermill runner behind `run_all.sh`.
- `report` — the results page `outputs/index.html`.

The command line is `python -m sosvae_core train|pack|fid|nll|authors-figures` (also `sosvae`).
"""
__version__ = "0.1.0"
