"""Table 1 (Section 4.3): FID of decoded means and of samples for trained runs, the paper's
values beside ours (as a table and as bars, `plot_fid_table`), and the `python -m sosvae_core fid`
command.

Built on `sosvae_core.fid` (the metric itself, which knows nothing of models, configs, data or
runs): the reference statistics are those of the images a config trains on
(`dataset_reference`); the generated images (`generate_images`) are the decoded means
E[x | z] or samples x ~ p(x | z) for prior codes z ~ N(0, I) or, with `posterior_codes`, for
the codes of encoded test images; `fid_of_model` scores them, and a run's results are
remembered in its folder (`fid.json`).

The paper generates N = 50,000 images per FID. FID is biased upward at small N, so numbers at
another N compare only with numbers at the same N and reference, never with the paper's table.
Each number comes with KID (`sosvae_core.kid`) on the same features, which is unbiased at any N.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from . import fid, observations
from .kid import kernel_inception_distance
from .networks import model_device, prior_codes
from .paths import cache_root, read_json, write_json


# The paper's Table 1 (FID of means, of samples; N = 50,000 generated images). The
# "brain" rows are the paper's UK Biobank numbers: our OASIS slices stand in for UKBB,
# so they are a reference point, not the same experiment.
PAPER_N = 50_000  # generated images per FID in Table 1 (Section 4.3)
PAPER_TABLE1 = {
    ("celeba", "beta"): (121.65, 196.40),
    ("celeba", "sos"): (132.93, 104.62),
    ("brain", "beta"): (211.24, 332.89),
    ("brain", "sos"): (141.87, 79.712),
    ("celeba64_gray", "beta"): (90.97, 257.11),
    ("celeba64_gray", "dorta"): (73.44, 77.72),
    ("celeba64_gray", "sos"): (70.43, 74.66),
}
# how a dataset is named in Table 1 and the figure captions: the brain rows' paper values are UK Biobank's
DATASET_LABELS = {"brain": "brain: OASIS (paper: UK Biobank)"}


def dataset_reference(cfg, extractor: fid.FeatureExtractor, n: int, data_root=None, cache_dir=None,
                      progress: bool = True) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Reference statistics of the images a config trains on (its whole seeded subset,
    at its transform and size), cached under ``cache_dir`` (default: `paths.cache_root`).
    Uses min(n, number of images) images: (mu, sigma, number used, features)."""
    from .data import dataset_args, load_dataset

    key = {"dataset": cfg.dataset, "image_size": list(cfg.image_size) if cfg.image_size else None,
           "n_images": cfg.n_images, "split_seed": cfg.split_seed, "split": "all"}
    cache = cache_root(cache_dir)

    def batches():
        data = load_dataset(**dataset_args(cfg), data_root=data_root, split="all", cache_dir=cache,
                            augment=False, progress=progress)
        images = data.images[:n]
        for i in range(0, len(images), extractor.batch_size):
            yield images[i:i + extractor.batch_size]

    n_available = cfg.n_images
    return fid.reference_statistics(key, batches, extractor, cache / "fid", min(n, n_available), progress=progress)


def posterior_codes(model, n: int, data_root=None, cache_dir=None, progress: bool = True) -> dict[str, Any]:
    """The posterior means q(z|x).loc of the first ``n`` test images of the model's config.

    FID of their decodes against :func:`dataset_reference` separates decoding real images'
    codes from decoding prior codes: a model that does well on the first and not on the
    second fails where the prior draws codes that no training image has, whether its
    training codes leave those regions empty or its decoder is unconstrained there. The
    reference is the first N images of the whole subset, so some of the scored images'
    originals can be in it: ``reference_overlap`` counts them."""
    from .data import dataset_args, load_dataset, load_splits

    if not getattr(model, "latent_dim", 0):
        raise ValueError(f"the {getattr(model, 'kind', 'given')} model has no encoder, so it has no test codes; "
                         f"use prior codes")
    cfg = model.config
    cache = cache_root(cache_dir)
    kw = dict(dataset_args(cfg), data_root=data_root, cache_dir=cache, progress=progress)
    test = load_splits(augment=False, **kw)["test"]
    if len(test) < n:
        raise ValueError(f"the test split of {cfg.dataset} holds {len(test)} images, fewer than n = {n}; "
                         f"pass n ≤ {len(test)}")
    device = model_device(model)
    with _eval_mode(model), torch.no_grad():
        codes = torch.cat([model.encode(test.to_float(test.images[i:i + 100], device)).loc.cpu()
                           for i in range(0, n, 100)])[:n]
    overlap = None
    if test.files:
        reference_files = set(load_dataset(split="all", augment=False, **kw).files[:n])
        overlap = len(reference_files.intersection(test.files[:n]))
    return {"codes": codes, "reference_overlap": overlap}


What = Literal["means", "samples"]


def generate_images(
    model: torch.nn.Module,
    n: int,
    what: What = "means",
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    seed: int = 0,
    codes: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``n`` generated images as uint8 (B, C, H, W) CPU batches.

    z ~ N(0, I) comes from a generator seeded with ``seed`` (`networks.prior_codes`; per batch
    its codes, then the seed of its noise), or z is the first ``n`` rows of ``codes`` (e.g.
    :func:`posterior_codes`, the encoded test images). ``what='means'`` decodes the mean of
    p(x|z); ``what='samples'`` draws x ~ p(x|z) for the same z as ``'means'`` with the same
    seed. The draw uses the global RNG (``Distribution.sample`` takes no generator), so each
    batch seeds a forked global RNG from the same seeded generator: the same
    (seed, batch_size) gives the same images, and the caller's RNG is untouched.
    """
    if what not in ("means", "samples"):
        raise ValueError(f"what must be 'means' or 'samples', got {what!r}")
    if codes is not None and (codes.dim() != 2 or codes.shape[0] < n or codes.shape[1] != model.latent_dim):
        raise ValueError(f"codes must have shape (≥ {n}, {model.latent_dim}), got {tuple(codes.shape)}; "
                         f"pass n ≤ the number of codes")
    device = torch.device(device)
    shape = tuple(model.image_shape)
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the images do not depend on the device
    with _eval_mode(model):
        done = 0
        while done < n:
            b = min(batch_size, n - done)
            z = prior_codes(model.latent_dim, b, gen) if codes is None else codes[done:done + b]
            noise_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            with torch.no_grad():
                x = _mean_or_sample(model.decode(z.to(device)), what, noise_seed, device)
            yield fid.to_uint8(x.reshape(b, *shape)).cpu()
            done += b


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """The model in evaluation mode inside, its own mode restored after (also on an error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _mean_or_sample(px_z, what: What, noise_seed: int, device: torch.device) -> torch.Tensor:
    """The mean of p(x|z), or a sample from the global RNG seeded with ``noise_seed`` in a fork."""
    if what == "means":
        return px_z.mean
    on_cuda = device.type == "cuda"
    cuda_index = (device.index if device.index is not None else torch.cuda.current_device()) if on_cuda else None
    with torch.random.fork_rng(devices=[cuda_index] if on_cuda else []):
        if on_cuda:
            with torch.cuda.device(cuda_index):
                torch.cuda.manual_seed(noise_seed)
        else:
            torch.default_generator.manual_seed(noise_seed)
        return px_z.sample()


def fid_of_model(
    model: torch.nn.Module,
    reference: tuple[np.ndarray, ...],
    n: int,
    what: What = "means",
    extractor: fid.FeatureExtractor | None = None,
    batch_size: int = 100,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    codes: torch.Tensor | None = None,
    extrapolate: bool = False,
) -> dict[str, Any]:
    """FID of ``n`` decoded means or samples from the prior (or from ``codes``, see
    :func:`generate_images`) against ``reference``; with ``extrapolate``, also FID∞ and
    its slope from subsets of the same images (`sosvae_core.fid.fid_infinity`).

    ``reference`` is (mu, sigma), or the (mu, sigma, n_used, features) returned by
    `sosvae_core.fid.reference_statistics` (or `dataset_reference`), with whose features KID
    is computed too (`kid`, `kid_std`, ×10³, see `sosvae_core.kid`). The model runs on ``device`` (default: the extractor's device).
    """
    if extractor is None:
        extractor = fid.load_feature_extractor()
    device = extractor.device if device is None else torch.device(device)
    images = generate_images(model, n, what=what, batch_size=batch_size, device=device, seed=seed, codes=codes)
    act = fid.activations(images, extractor, n=n, progress=progress)
    result: dict[str, Any] = {
        "fid": fid.frechet_distance(act.mean(axis=0), np.cov(act, rowvar=False), reference[0], reference[1]),
        "n": act.shape[0],
        "what": what,
        "codes": "prior" if codes is None else "given",
        "seed": seed,
        "backend": extractor.backend,
        "weights_sha256": extractor.weights_sha256,
    }
    if len(reference) > 2:
        result["n_reference"] = int(reference[2])
    if len(reference) > 3:
        kid = kernel_inception_distance(act, reference[3], seed=seed)
        result.update(kid=kid["kid"], kid_std=kid["kid_std"], kid_subsets=f"{kid['n_subsets']} × {kid['subset_size']}")
    if extrapolate:
        extrapolated = fid.fid_infinity(act, reference, seed=seed)
        result.update(fid_inf=extrapolated["fid_inf"], fid_inf_slope=extrapolated["slope"])
    return result


def fid_cli(args) -> int:
    """`python -m sosvae_core fid --run RUN [--n N] [--what means|samples] [--codes prior|test]
    [--extrapolate]`: prints one JSON line."""
    from .runs import load_run

    model = load_run(args.run, args.device)
    cfg = model.config
    n = args.n or cfg.fid_n
    extractor = fid.load_feature_extractor(args.weights, device=model_device(model),
                                       batch_size=args.batch_size)
    reference = dataset_reference(cfg, extractor, n, data_root=args.data_root, cache_dir=args.cache_dir)
    extra, codes = {}, None
    if args.codes == "test":
        extra = posterior_codes(model, n, data_root=args.data_root, cache_dir=args.cache_dir)
        codes = extra.pop("codes")
    result = fid_of_model(model, reference, n, what=args.what, extractor=extractor, codes=codes,
                          extrapolate=args.extrapolate)
    result.update(codes=args.codes, **extra)
    result.update(run=str(args.run), model=cfg.model, dataset=cfg.dataset, profile=cfg.profile)
    if n < PAPER_N:
        result["note"] = "FID is biased upward at small N; compare only numbers with the same N"
    print(json.dumps(result))
    return 0


def table1(models: dict, extractor: fid.FeatureExtractor, data_root=None, cache_dir=None, n: int | None = None,
           seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """FID of means and samples for {(dataset, kind): model}, with the paper's values beside.

    N defaults to each model's config `fid_n`; reference statistics are cached per dataset."""
    rows, references = [], {}
    for (dataset, kind), model in models.items():
        cfg = model.config
        n_used = n or cfg.fid_n
        ref_key = (dataset, n_used)
        if ref_key not in references:
            references[ref_key] = dataset_reference(cfg, extractor, n_used, data_root, cache_dir, progress)
        row = {"dataset": dataset, "model": kind, "n": n_used}
        for what in ("means", "samples"):
            result = _cached_fid(model, references[ref_key], n_used, what, extractor, seed, progress)
            row[f"fid_{what}"] = result["fid"]
            row[f"kid_{what}"], row[f"kid_{what}_std"] = result["kid"], result["kid_std"]
            row["n_reference"], row["kid_subsets"] = result.get("n_reference"), result["kid_subsets"]
        paper = PAPER_TABLE1.get((dataset, kind))
        row["paper_means"], row["paper_samples"] = paper if paper else (None, None)
        row.update(backend=extractor.backend, weights_sha256=extractor.weights_sha256)
        rows.append(row)
    return rows


def _cached_fid(model, reference, n: int, what: str, extractor: fid.FeatureExtractor, seed: int,
                progress: bool) -> dict[str, Any]:
    """fid_of_model, remembered in the model's run folder (`fid.json`) when it has one:
    a trained run's FID for the same N, seed, reference and weights is computed once."""
    run_dir = getattr(model, "run_dir", None)
    key = f"{what}|n={n}|seed={seed}|n_reference={reference[2] if len(reference) > 2 else None}|" \
          f"{extractor.backend}|{extractor.weights_sha256}|{fid.PROTOCOL}"
    path = Path(run_dir) / "fid.json" if run_dir is not None else None
    cache = read_json(path, "delete it: FID results are recomputed") if path is not None and path.exists() else {}
    if key in cache and "kid" in cache[key]:  # an entry without KID predates it
        return cache[key]
    result = fid_of_model(model, reference, n, what=what, extractor=extractor, seed=seed, progress=progress)
    if path is not None:
        cache[key] = result
        write_json(path, cache, sort_keys=False)
    return result


TABLE1_HEADER = ("dataset", "model", "N (generated / reference)", "FID means", "paper", "FID samples", "paper",
                 "KID×10³ means", "KID×10³ samples")


def table1_cells(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Table 1's cells as text, one tuple per row in TABLE1_HEADER's order (Markdown here, HTML in report.py).
    KID is the mean ± standard deviation over subsets (`sosvae_core.kid`); the paper reports none."""
    fmt = lambda v: "—" if v is None else f"{v:.2f}"
    kid = lambda r, w: f"{r[f'kid_{w}']:.1f} ± {r[f'kid_{w}_std']:.1f}" if r.get(f"kid_{w}") is not None else "—"
    return [(DATASET_LABELS.get(r["dataset"], r["dataset"]), observations.label(r["model"]),
             f"{r['n']} / {r['n_reference']}", fmt(r["fid_means"]), fmt(r["paper_means"]), fmt(r["fid_samples"]),
             fmt(r["paper_samples"]), kid(r, "means"), kid(r, "samples")) for r in rows]


def format_table1(rows: list[dict[str, Any]]) -> str:
    """Markdown table: ours next to the paper's (N = PAPER_N = 50,000) where known."""
    lines = ["| " + " | ".join(TABLE1_HEADER) + " |", "|" + "---|" * len(TABLE1_HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table1_cells(rows)]
    return "\n".join(lines)


def plot_fid_table(rows: list[dict[str, Any]], title: str = ""):
    """Bars of FID for means and samples per (dataset, model), with the paper's where known."""
    import matplotlib.pyplot as plt
    labels = [f"{r['dataset']}\n{r['model']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.5))
    ax.bar(x - 0.2, [r["fid_means"] for r in rows], 0.4, label="ours: means")
    ax.bar(x + 0.2, [r["fid_samples"] for r in rows], 0.4, label="ours: samples")
    for i, r in enumerate(rows):
        for dx, key in ((-0.2, "paper_means"), (0.2, "paper_samples")):
            if r.get(key) is not None:
                ax.plot([i + dx - 0.18, i + dx + 0.18], [r[key]] * 2, "k-", lw=2)
    if any(r.get(key) is not None for r in rows for key in ("paper_means", "paper_samples")):
        ax.plot([], [], "k-", lw=2, label=f"paper (N = {PAPER_N:,})")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(f"FID (N = {rows[0]['n']})")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
