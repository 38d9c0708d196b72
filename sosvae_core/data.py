"""Datasets for SOS-VAE: decode once into a uint8 tensor, serve floats in [0, 1].

Images are decoded with PIL once into a compact ``uint8`` tensor ``(N, C, H, W)``
(optionally cached on disk), and :class:`ImageTensorDataset` serves float
tensors ``(C, H, W)`` in ``[0, 1]`` from it, flipping horizontally on the fly in
torch when augmentation is on. Epochs therefore never decode JPEGs, and the
whole data path is a tensor that can later be moved to a GPU in one go.

Datasets (see :data:`DATASETS`)
-------------------------------
``celeba``
    Aligned CelebA at full resolution, 3x218x178 RGB (the paper's setup);
    random horizontal flip for training. Every image must be 178x218 (WxH) RGB.
``celeba64_gray``
    The comparison with Dorta et al. (2018): centre crop 148x148, resize to
    64x64 (bilinear, antialiased), grayscale -> 1x64x64. Neither the public
    SOS-VAE code (biomedia-mira/sos-vae, whose CelebA loader has no crop at
    all) nor Dorta et al.'s paper fixes the crop, so we use the common
    148x148 centre square of the 178x218 aligned image (box left=15, top=35),
    which keeps the face and drops most background before the 64x64 resize.
``brain``
    A folder (any nesting) of PNG/JPEG slices, converted to grayscale, native
    176x208 (WxH) -> 1x208x176. Every slice must have that size unless
    ``image_size`` is given, in which case every slice is resized. Flipped for
    training, like the public SOS-VAE brain loader.
``portraits``
    The bundled default that needs no download: synthetic aligned portraits
    (``sosvae_core.portraits``, 4000 drawn from a fixed seed) -> uint8 3x44x36,
    flipped for training. Regions (skin, hair, background, clothes) vary in colour
    independently, the structure the paper's claims are about.
``lfw``
    Bundled, no download: the 100 faces of
    ``skimage.data.lfw_subset()`` (grayscale 25x25 face crops) -> uint8 1x25x25,
    flipped for training. The subset's other 100 images are background patches
    (non-faces) and are left out: a face model trained on both learns a blur of faces
    and patches.

``image_size=(H, W)`` resizes (bilinear, antialiased) after the dataset's own
transform, e.g. CelebA at 64x52 for quick CPU profiles; it is part of the
cache key.

Locating the data
-----------------
The data root comes from the ``data_root`` argument, else the environment
variable ``SOSVAE_DATA_ROOT`` (see :func:`resolve_data_root`). CelebA is
looked for, in this order, in ``root/img_align_celeba/`` (a plain download),
``root/celeba/img_align_celeba/`` (torchvision's ``CelebA`` layout) and
``root`` itself when it directly holds images (the ``img_align_celeba``
folder). The brain slices are looked for in ``root/brain_oasis/``,
``root/brain/`` and then ``root`` itself (searched recursively).

Subset and split
----------------
Like the paper, a seeded random subset of ``n_images`` (default 10,000; all
images when fewer exist) is drawn from the sorted file list and then split
70/20/10 into train/val/test by a seeded permutation (val = int(0.2 n),
test = int(0.1 n), train = the rest, as in the public SOS-VAE code). CelebA's
``list_eval_partition.txt`` is *not* used for this by default, because the
paper uses its own random split; pass ``partition='official'`` to assign the
subset's images to train/val/test from that file instead.

Cache
-----
With ``cache_dir`` (default ``$SOSVAE_CACHE_DIR``; no cache when neither is
set, ``cache_dir=False`` turns it off) the decoded subset is stored as
``<cache_dir>/<name>-<hash>.pt``, keyed by dataset name, transform
description, image_size, a hash of the sorted file list (relative names and
byte sizes), n_images and seed. It is written atomically (temp file in the
same folder, fsync, ``os.replace``) and carries a crc32 of the pixels; an
unreadable, partial, stale or damaged file is reported and rebuilt. The
bundled ``lfw`` set decodes in a fraction of a second and is never cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .paths import ENV_CACHE_DIR, ENV_DATA_ROOT, atomic_file

__all__ = [
    "DATASETS",
    "DEFAULT_N_IMAGES",
    "ENV_CACHE_DIR",
    "ENV_DATA_ROOT",
    "DataError",
    "DatasetSpec",
    "ImageTensorDataset",
    "decode_images",
    "find_dataset_dir",
    "find_partition_file",
    "list_image_files",
    "load_dataset",
    "load_splits",
    "output_shape",
    "resolve_cache_dir",
    "resolve_data_root",
    "split_sizes",
    "synthetic_lowrank_dataset",
    "take",
    "to_float",
]

log = logging.getLogger(__name__)

DEFAULT_N_IMAGES = 10_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS = ("train", "val", "test")
# Bump when decoding changes in a way the transform descriptions do not capture.
CACHE_FORMAT = 1

CELEBA_SIZE = (178, 218)  # PIL (W, H) of aligned CelebA
BRAIN_SIZE = (176, 208)  # PIL (W, H) of the OASIS slices
DORTA_CROP = 148


class DataError(ValueError):
    """A problem with the data on disk, with a one-line message saying how to fix it."""


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class DatasetSpec:
    """How one named dataset is found and turned into a (C, H, W) uint8 array."""

    name: str
    channels: int
    height: int  # native output size, before any image_size override
    width: int
    flip: bool  # random horizontal flip for the train split by default
    transform_description: str  # goes into cache keys: change it when the transform changes
    # PIL image (already loaded) + its path + override -> PIL image of the final mode.
    prepare: Callable[[Image.Image, Path, tuple[int, int] | None], Image.Image] | None = None
    subdirs: tuple[str, ...] = ()  # candidate folders under the data root, in order
    recursive: bool = False
    bundled: bool = False  # needs no data root

    @property
    def native_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


def _check_size(im: Image.Image, path: Path, expected: tuple[int, int], what: str, fix: str) -> None:
    if im.size != expected:
        raise DataError(
            f"{path}: image is {im.size[0]}x{im.size[1]} (WxH) but {what} expects "
            f"{expected[0]}x{expected[1]}; {fix}"
        )


def _check_colour(im: Image.Image, path: Path) -> None:
    # A single-band image in a CelebA folder means the wrong files (or a grayscale copy).
    if len(im.getbands()) < 3 and im.mode != "P":
        raise DataError(
            f"{path}: image has mode {im.mode} ({len(im.getbands())} channel) but celeba "
            f"expects 3-channel RGB aligned CelebA images; point the data root at the original "
            f"img_align_celeba JPEGs"
        )


_CELEBA_FIX = "point the data root at the aligned img_align_celeba images (not in-the-wild)"


def _prepare_celeba(im: Image.Image, path: Path, image_size: tuple[int, int] | None) -> Image.Image:
    _check_size(im, path, CELEBA_SIZE, "aligned CelebA", _CELEBA_FIX)
    _check_colour(im, path)
    return im.convert("RGB")


def _prepare_celeba64_gray(im: Image.Image, path: Path, image_size: tuple[int, int] | None) -> Image.Image:
    _check_size(im, path, CELEBA_SIZE, "aligned CelebA", _CELEBA_FIX)
    left = (CELEBA_SIZE[0] - DORTA_CROP) // 2
    top = (CELEBA_SIZE[1] - DORTA_CROP) // 2
    im = im.crop((left, top, left + DORTA_CROP, top + DORTA_CROP)).convert("L")
    return im.resize((64, 64), Image.Resampling.BILINEAR)


def _prepare_brain(im: Image.Image, path: Path, image_size: tuple[int, int] | None) -> Image.Image:
    # With an explicit image_size every slice gets resized, so any size is fine.
    if image_size is None:
        _check_size(
            im, path, BRAIN_SIZE, "the brain set",
            "all slices must share that size; pass image_size=(H, W) to resize them",
        )
    return im.convert("L")


DATASETS: dict[str, DatasetSpec] = {
    "celeba": DatasetSpec(
        name="celeba", channels=3, height=218, width=178, flip=True,
        transform_description="aligned celeba 178x218 rgb, no crop",
        prepare=_prepare_celeba, subdirs=("img_align_celeba", "celeba/img_align_celeba"),
    ),
    "celeba64_gray": DatasetSpec(
        name="celeba64_gray", channels=1, height=64, width=64, flip=True,
        transform_description="aligned celeba 178x218, centre crop 148 (15,35), gray L, bilinear 64x64",
        prepare=_prepare_celeba64_gray, subdirs=("img_align_celeba", "celeba/img_align_celeba"),
    ),
    "brain": DatasetSpec(
        name="brain", channels=1, height=208, width=176, flip=True,
        transform_description="brain slices 176x208, gray L",
        prepare=_prepare_brain, subdirs=("brain_oasis", "brain"), recursive=True,
    ),
    "lfw": DatasetSpec(
        name="lfw", channels=1, height=25, width=25, flip=True,
        transform_description="skimage lfw_subset faces [0:100] 25x25 gray, round(x*255)",
        bundled=True,
    ),
    "portraits": DatasetSpec(
        name="portraits", channels=3, height=44, width=36, flip=True,
        transform_description="sosvae_core.portraits.render v2, 44x36 rgb",
        bundled=True,
    ),
}


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def _normalise_image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0:
        raise DataError(f"image_size must be positive (H, W), got {tuple(image_size)}")
    return (h, w)


def output_shape(name: str, image_size: int | Sequence[int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) that ``load_dataset(name, image_size=...)`` serves."""
    spec = _spec(name)
    size = _normalise_image_size(image_size)
    return (spec.channels, *size) if size else spec.native_shape


# --------------------------------------------------------------------------- locating


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path | None:
    """Explicit ``data_root``, else ``$SOSVAE_DATA_ROOT``, else None (the bundled dataset)."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    env = os.environ.get(ENV_DATA_ROOT, "").strip()
    return Path(env).expanduser() if env else None


def resolve_cache_dir(cache_dir: str | os.PathLike | bool | None = None) -> Path | None:
    """Explicit ``cache_dir``, else ``$SOSVAE_CACHE_DIR``, else None (no cache). False disables."""
    if cache_dir is False or cache_dir == "":
        return None
    if cache_dir is not None and cache_dir is not True:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE_DIR, "").strip()
    return Path(env).expanduser() if env else None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _holds_images(folder: Path, recursive: bool) -> bool:
    if not folder.is_dir():
        return False
    it = folder.rglob("*") if recursive else folder.iterdir()
    return any(p.is_file() and _is_image(p.name) for p in it)


def find_dataset_dir(name: str, data_root: str | os.PathLike | None = None) -> Path | None:
    """Folder that holds the images of dataset ``name`` (None for the bundled ``lfw``).

    Candidates are tried in order: each of the spec's sub-folders under the root
    (celeba: ``img_align_celeba``, ``celeba/img_align_celeba``; brain:
    ``brain_oasis``, ``brain``), then the root itself if it holds images.
    """
    spec = _spec(name)
    if spec.bundled:
        return None
    root = resolve_data_root(data_root)
    if root is None:
        raise DataError(
            f"dataset {name!r} needs a data root; pass --data-root DIR or set {ENV_DATA_ROOT} "
            f"(only 'lfw' is bundled)"
        )
    if not root.exists():
        raise DataError(
            f"data root {root} does not exist; pass --data-root DIR or set {ENV_DATA_ROOT} "
            f"to the folder holding your {name} download"
        )
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder; pass --data-root DIR or set {ENV_DATA_ROOT}")
    candidates = [root / sub for sub in spec.subdirs] + [root]
    for folder in candidates:
        if _holds_images(folder, spec.recursive):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"no images ({'/'.join(IMAGE_EXTENSIONS)}) for {name!r} found; looked in {looked}"
        f"{' (recursively)' if spec.recursive else ''}"
    )


def list_image_files(folder: Path, recursive: bool = False) -> list[tuple[str, int]]:
    """Sorted ``(relative posix path, size in bytes)`` of the images in ``folder``."""
    out: list[tuple[str, int]] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        with os.scandir(current) as it:
            for entry in it:
                if entry.is_dir() and recursive and not entry.name.startswith("."):
                    stack.append(Path(entry.path))
                elif entry.is_file() and _is_image(entry.name):
                    rel = Path(entry.path).relative_to(folder).as_posix()
                    out.append((rel, entry.stat().st_size))
    out.sort()
    return out


def find_partition_file(image_dir: Path) -> Path | None:
    """CelebA ``list_eval_partition.txt`` beside or inside the image folder, if any."""
    for cand in (image_dir.parent / "list_eval_partition.txt", image_dir / "list_eval_partition.txt"):
        if cand.is_file():
            return cand
    return None


# --------------------------------------------------------------------------- decoding


def _resize(im: Image.Image, image_size: tuple[int, int] | None) -> Image.Image:
    if image_size is None or im.size == (image_size[1], image_size[0]):
        return im
    return im.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)


def _to_chw(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_images(
    paths: Sequence[Path],
    spec: DatasetSpec,
    image_size: tuple[int, int] | None = None,
    on_corrupt: str = "skip",
    num_workers: int | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Decode ``paths`` (in the given order) into a uint8 tensor (N_kept, C, H, W).

    Returns the tensor, the indices of the decoded paths and ``(index, reason)``
    of the skipped corrupt ones. Decoding runs in a thread pool: PIL releases
    the GIL while decoding and resizing, so threads use all cores.
    """
    if on_corrupt not in ("skip", "error"):
        raise DataError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    c, h, w = (spec.channels, *image_size) if image_size else spec.native_shape
    out = np.empty((len(paths), c, h, w), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)

    def work(chunk: range) -> list[tuple[int, str]]:
        bad = []
        for i in chunk:
            path = paths[i]
            try:
                with Image.open(path) as im:
                    im.load()  # decode now, so truncated files fail here
                    im = spec.prepare(im, path, image_size)
            except DataError:
                raise
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
                if on_corrupt == "error":
                    raise DataError(
                        f"corrupt or unreadable image {path} ({type(exc).__name__}: {_short(exc)}); "
                        f"delete or re-download it, or pass on_corrupt='skip'"
                    ) from exc
                bad.append((i, f"{type(exc).__name__}: {_short(exc)}"))
                continue
            out[i] = _to_chw(_resize(im, image_size))
            ok[i] = True
        return bad

    chunk = 32
    chunks = [range(s, min(s + chunk, len(paths))) for s in range(0, len(paths), chunk)]
    workers = max(1, num_workers if num_workers is not None else min(8, os.cpu_count() or 1))
    skipped: list[tuple[int, str]] = []
    bar = tqdm(total=len(paths), desc=f"decoding {spec.name}", unit="img", disable=not progress)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        # map() yields in order, so the first bad file in file order is the one reported.
        for part, bad in zip(chunks, pool.map(work, chunks)):
            skipped.extend(bad)
            bar.update(len(part))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    kept = np.flatnonzero(ok).tolist()
    images = torch.from_numpy(out if len(kept) == len(paths) else out[kept])
    return images, kept, skipped


LFW_FACES = 100  # lfw_subset(): the first 100 images are faces, the last 100 non-faces


def _lfw_images() -> torch.Tensor:
    from skimage.data import lfw_subset

    faces = np.asarray(lfw_subset()[:LFW_FACES], dtype=np.float64)  # (100, 25, 25) in [0, 1]
    return torch.from_numpy(np.rint(np.clip(faces, 0.0, 1.0) * 255.0).astype(np.uint8)[:, None])


def _bundled_images(name: str) -> torch.Tensor:
    if name == "portraits":
        from .portraits import render
        return torch.from_numpy(render())
    return _lfw_images()


def _resize_tensor_images(images: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    # Bundled images are already a tensor: resize each via PIL, like the folder path.
    pil = lambda img: Image.fromarray(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy())
    out = [_to_chw(_resize(pil(img), image_size)) for img in images]
    return torch.from_numpy(np.stack(out))


# --------------------------------------------------------------------------- cache


def _cache_key(spec: DatasetSpec, image_size, files: list[tuple[str, int]], n_images: int, seed: int) -> str:
    listing = hashlib.sha256("".join(f"{n}\t{s}\n" for n, s in files).encode()).hexdigest()
    return json.dumps(
        {
            "format": CACHE_FORMAT,
            "dataset": spec.name,
            "transform": spec.transform_description,
            "image_size": list(image_size) if image_size else None,
            "files_sha256": listing,
            "n_files": len(files),
            "n_images": n_images,
            "seed": seed,
        },
        sort_keys=True,
    )


def _short(exc: BaseException) -> str:
    """First line of an exception message, bounded: torch's load errors run to paragraphs."""
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return text if len(text) <= 160 else text[:157] + "..."


def _checksum(images: torch.Tensor) -> int:
    # torch.load does not notice flipped bytes inside a tensor; a crc32 does (~0.2 s/GB).
    return zlib.crc32(memoryview(images.contiguous().numpy()).cast("B"))


def _cache_path(cache_dir: Path, spec: DatasetSpec, key: str) -> Path:
    return cache_dir / f"{spec.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def _read_cache(path: Path, key: str) -> dict | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("key") != key:
            raise ValueError("its key does not match")
        images = blob["images"]
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("it holds no uint8 (N, C, H, W) tensor")
        if len(blob["files"]) != images.shape[0] or _checksum(images) != blob["crc32"]:
            raise ValueError("its checksum or length does not match")
    except Exception as exc:  # any unreadable/partial file is just rebuilt
        warnings.warn(f"cache file {path} is corrupt or stale ({_short(exc)}); rebuilding it", stacklevel=3)
        return None
    return blob


def _write_cache(path: Path, blob: dict) -> None:
    """Write atomically (paths.atomic_file); a failed cache write (disk full, ...) must not
    fail the load itself, so it warns and goes on."""
    try:
        with atomic_file(path) as f:
            torch.save(blob, f)
    except Exception as exc:
        warnings.warn(f"cannot write cache {path} ({_short(exc)}); continuing without it", stacklevel=3)


# --------------------------------------------------------------------------- dataset


def take(images: torch.Tensor, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``images[index]`` along dim 0 as a new tensor.

    On CPU this goes through numpy: torch's index_select on big uint8 image
    tensors took 5-40 s for 10k CelebA images on the 2-core dev machine,
    numpy's gather 0.2 s.
    """
    idx = torch.as_tensor(index, dtype=torch.long)
    if images.device.type == "cpu":
        return torch.from_numpy(images.numpy()[idx.numpy()])
    return images.index_select(0, idx.to(images.device))


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float images -> float32 unchanged in value."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


class ImageTensorDataset(Dataset):
    """Images held in one tensor (uint8, or float for synthetic data), served as float (C, H, W).

    ``__getitem__`` returns only the image (no label), as float32; in [0, 1] for
    uint8 backing. With ``flip=True`` each item is mirrored left-right with
    probability 1/2, drawn with ``torch.rand`` from ``generator`` (default: the
    global torch RNG), so flips are reproducible from the RNG state.
    """

    def __init__(
        self,
        images: torch.Tensor,
        name: str = "images",
        transform_description: str = "",
        flip: bool = False,
        files: list[str] | None = None,
        n_skipped: int = 0,
        skipped_files: list[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if images.ndim != 4:
            raise DataError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise DataError(f"images must be uint8 or floating point, got {images.dtype}")
        self.images = images
        self.name = name
        self.transform_description = transform_description
        self.flip = bool(flip)
        self.files = files
        self.n_skipped = n_skipped
        self.skipped_files = skipped_files or []
        self.generator = generator

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        x = self.images[index]
        # Float backing: copy, so callers never write into the store.
        x = to_float(x) if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)
        if self.flip and torch.rand((), generator=self.generator).item() < 0.5:
            x = x.flip(-1)
        return x

    def to_float(self, x: torch.Tensor | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        """``x`` (default: all images) as float32 in [0, 1], optionally on ``device``."""
        x = self.images if x is None else x
        if device is not None:
            x = x.to(device)  # move the compact uint8 first, convert on the device
        return to_float(x)

    def get_batch(
        self,
        indices: torch.Tensor | Sequence[int],
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Gather a float batch (B, C, H, W) without a DataLoader, flipping vectorised.

        Draws the flips as one ``torch.rand(B)``, so it consumes the RNG differently
        from ``__getitem__`` (not interchangeable for exact resumption).
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.to_float(take(self.images, idx), device=device)
        if self.flip:
            g = generator if generator is not None else self.generator
            mask = (torch.rand(len(idx), generator=g) < 0.5).to(x.device)
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        return x

    def __repr__(self) -> str:
        return (
            f"ImageTensorDataset(name={self.name!r}, n={len(self)}, shape={self.image_shape}, "
            f"dtype={self.images.dtype}, flip={self.flip})"
        )


# --------------------------------------------------------------------------- splits


def split_sizes(n: int) -> tuple[int, int, int]:
    """70/20/10 sizes (train, val, test): val=int(0.2 n), test=int(0.1 n), train gets the rest."""
    n_val, n_test = int(n * 0.2), int(n * 0.1)
    return n - n_val - n_test, n_val, n_test


def _read_partition(path: Path) -> dict[str, int]:
    parts = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise DataError(f"{path}:{line_no}: expected '<image> <0|1|2>', got {line.strip()!r}")
            parts[fields[0]] = int(fields[1])
    return parts


def _decode_subset(
    spec: DatasetSpec,
    data_root,
    n_images: int | None,
    seed: int,
    image_size: tuple[int, int] | None,
    cache_dir,
    on_corrupt: str,
    num_workers: int | None,
    progress: bool,
) -> tuple[torch.Tensor, list[str], list[str], torch.Generator, Path | None]:
    """Seeded subset of the dataset, decoded (or read from cache), in sorted file order."""
    if on_corrupt not in ("skip", "error"):
        raise DataError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    if n_images is not None and n_images <= 0:
        raise DataError(f"n_images must be positive, got {n_images}")
    want = DEFAULT_N_IMAGES if n_images is None else int(n_images)
    gen = torch.Generator().manual_seed(int(seed))

    if spec.bundled:
        images = _bundled_images(spec.name)
        pick = torch.randperm(images.shape[0], generator=gen)[: min(want, images.shape[0])]
        pick = sorted(pick.tolist())
        images = images[pick]
        if image_size is not None:
            images = _resize_tensor_images(images, image_size)
        return images, [f"{spec.name}[{i}]" for i in pick], [], gen, None

    root = resolve_data_root(data_root)
    if root is not None and root.is_file():  # a packed subset (see pack_dataset)
        return _read_packed(root, spec, want, seed, image_size)

    folder = find_dataset_dir(spec.name, data_root)
    files = list_image_files(folder, spec.recursive)
    n = min(want, len(files))
    # Subset by a seeded permutation, then decode in sorted order (stable cache content).
    chosen = sorted(torch.randperm(len(files), generator=gen)[:n].tolist())
    names = [files[i][0] for i in chosen]

    cache_root = resolve_cache_dir(cache_dir)
    key = _cache_key(spec, image_size, files, n, seed)
    cache_file = _cache_path(cache_root, spec, key) if cache_root else None
    blob = _read_cache(cache_file, key) if cache_file else None
    if blob is not None:
        log.info("loaded %s from cache %s", spec.name, cache_file)
        return blob["images"], list(blob["files"]), list(blob["skipped"]), gen, folder

    images, kept, bad = decode_images(
        [folder / nm for nm in names], spec, image_size, on_corrupt, num_workers, progress
    )
    if not kept:
        raise DataError(f"none of the {len(names)} images under {folder} could be read; check the files")
    skipped = [names[i] for i, _ in bad]
    if cache_file is not None:
        blob = {
            "key": key, "images": images, "files": [names[i] for i in kept],
            "skipped": skipped, "crc32": _checksum(images),
        }
        _write_cache(cache_file, blob)
    return images, [names[i] for i in kept], skipped, gen, folder


PACK_FORMAT = "sosvae-packed-v1"


def pack_dataset(name: str, out, data_root=None, n_images: int | None = None, seed: int = 0,
                 image_size=None, progress: bool = True) -> Path:
    """Write the decoded, seeded subset as one uint8 tensor file.

    Passing that file as the data root gives exactly the same splits without the
    image files: a compact way to carry data to a remote GPU (10,000 gray 64×64
    images are 41 MB). Written atomically.
    """
    spec = _spec(name)
    size = _normalise_image_size(image_size)
    images, files, skipped, gen, _ = _decode_subset(spec, data_root, n_images, seed, size, False,
                                                    "skip", None, progress)
    blob = {"format": PACK_FORMAT, "name": spec.name, "transform": spec.transform_description,
            "image_size": size, "n_images": n_images, "seed": seed, "images": images, "files": files,
            "skipped": skipped, "generator": gen.get_state(), "crc32": _checksum(images)}
    out = Path(out)
    with atomic_file(out) as f:
        torch.save(blob, f)
    return out


def _read_packed(path: Path, spec: DatasetSpec, want: int, seed: int, image_size):
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DataError(f"data root {path} is a file but not a readable packed dataset ({_short(exc)}); "
                        f"pass a folder, or re-create it with `python -m sosvae_core pack`") from None
    if not isinstance(blob, dict) or blob.get("format") != PACK_FORMAT:
        raise DataError(f"data root {path} is a file but not a packed dataset; pass the dataset folder instead")
    wanted = {"name": spec.name, "transform": spec.transform_description, "image_size": image_size, "seed": seed}
    for key, value in wanted.items():
        if blob[key] != value:
            raise DataError(f"packed dataset {path} holds {key}={blob[key]!r} but {value!r} was asked for; "
                            f"pack it again with the config you train")
    if blob["images"].shape[0] < want and (blob["n_images"] or DEFAULT_N_IMAGES) < want:
        raise DataError(f"packed dataset {path} holds {blob['images'].shape[0]} images, fewer than the "
                        f"{want} asked for; pack it with --set n_images={want}")
    if _checksum(blob["images"]) != blob["crc32"]:
        raise DataError(f"packed dataset {path} is damaged (checksum mismatch); pack it again")
    gen = torch.Generator()
    gen.set_state(blob["generator"])  # the state after choosing the subset: same split
    return blob["images"], list(blob["files"]), list(blob["skipped"]), gen, None


def load_splits(
    name: str,
    data_root: str | os.PathLike | None = None,
    n_images: int | None = None,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    cache_dir: str | os.PathLike | bool | None = None,
    on_corrupt: str = "skip",
    augment: bool | None = None,
    partition: str = "random",
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, ImageTensorDataset]:
    """Decode dataset ``name`` once and return ``{'train', 'val', 'test'}`` datasets.

    ``partition='random'`` (default, the paper's setup) splits the seeded subset
    70/20/10 with a seeded permutation; ``partition='official'`` assigns it from
    CelebA's ``list_eval_partition.txt`` (celeba datasets only). ``augment``
    forces the flip on/off for the train split (val/test never flip); by
    default the train split flips when the dataset's spec says so.
    """
    spec = _spec(name)
    size = _normalise_image_size(image_size)
    if partition not in ("random", "official"):
        raise DataError(f"partition must be 'random' or 'official', got {partition!r}")
    images, files, skipped, gen, folder = _decode_subset(
        spec, data_root, n_images, seed, size, cache_dir, on_corrupt, num_workers, progress
    )
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} corrupt image(s) of {len(files) + len(skipped)} in {name} "
            f"(first: {skipped[0]}); pass on_corrupt='error' to fail instead",
            stacklevel=2,
        )

    n = images.shape[0]
    if partition == "random":
        perm = torch.randperm(n, generator=gen)
        n_train, n_val, _ = split_sizes(n)
        parts = {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}
    else:
        pfile = find_partition_file(folder) if folder is not None else None
        if pfile is None:
            raise DataError(
                f"partition='official' needs CelebA's list_eval_partition.txt beside {folder or name}; "
                f"add it or use partition='random'"
            )
        table = _read_partition(pfile)
        missing = [f for f in files if Path(f).name not in table]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) (e.g. {missing[0]}) are not listed in {pfile}; "
                f"use the matching partition file or partition='random'"
            )
        labels = torch.tensor([table[Path(f).name] for f in files])
        parts = {s: torch.nonzero(labels == k).flatten() for k, s in enumerate(SPLITS)}

    flip_train = spec.flip if augment is None else bool(augment)
    out = {}
    for split, idx in parts.items():
        out[split] = ImageTensorDataset(
            take(images, idx), name=name,
            transform_description=spec.transform_description if size is None
            else f"{spec.transform_description}; resize {size[0]}x{size[1]} (HxW)",
            flip=flip_train if split == "train" else False,
            files=[files[i] for i in idx.tolist()], n_skipped=len(skipped), skipped_files=skipped,
        )
    return out


def load_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    split: str = "train",
    n_images: int | None = None,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    cache_dir: str | os.PathLike | bool | None = None,
    on_corrupt: str = "skip",
    augment: bool | None = None,
    partition: str = "random",
    num_workers: int | None = None,
    progress: bool = True,
) -> ImageTensorDataset:
    """One split ('train', 'val', 'test', or 'all' = the whole subset, sorted) of dataset ``name``.

    ``augment`` defaults to True only for the train split of datasets that flip.
    See :func:`load_splits` for the other arguments; to get several splits,
    call :func:`load_splits`, which decodes once.
    """
    if split not in (*SPLITS, "all"):
        raise DataError(f"split must be one of train, val, test, all; got {split!r}")
    if split != "all":
        return load_splits(
            name, data_root, n_images, seed, image_size, cache_dir, on_corrupt,
            augment, partition, num_workers, progress,
        )[split]
    spec = _spec(name)
    size = _normalise_image_size(image_size)
    images, files, skipped, _, _ = _decode_subset(
        spec, data_root, n_images, seed, size, cache_dir, on_corrupt, num_workers, progress
    )
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} corrupt image(s) in {name} (first: {skipped[0]})", stacklevel=2
        )
    desc = spec.transform_description if size is None else f"{spec.transform_description}; resize {size[0]}x{size[1]} (HxW)"
    return ImageTensorDataset(
        images, name=name, transform_description=desc, flip=bool(augment),
        files=files, n_skipped=len(skipped), skipped_files=skipped,
    )


# --------------------------------------------------------------------------- synthetic


def synthetic_lowrank_dataset(
    n: int,
    image_shape: Sequence[int] = (1, 8, 8),
    rank: int = 2,
    seed: int = 0,
    noise: float = 0.02,
    factor_scale: float = 0.1,
) -> tuple[ImageTensorDataset, torch.Tensor, torch.Tensor]:
    """Images drawn from a known low-rank Gaussian N(mu, P P^T + noise^2 I).

    Returns ``(dataset, mu, P)`` with ``mu`` of shape (D,) and ``P`` of shape
    (D, rank), D = C*H*W (flattened in C, H, W order; ``mu.view(image_shape)``
    gives the mean image). ``mu`` is a smooth image around 0.5 and the columns
    of ``P`` are random with per-pixel std about ``factor_scale`` in total.
    Samples may leave [0, 1], so the dataset has a float32 backing tensor and
    never flips.
    """
    c, h, w = (int(v) for v in image_shape)
    d = c * h * w
    g = torch.Generator().manual_seed(int(seed))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    base = 0.5 + 0.2 * torch.cos(torch.pi * xx / 2) * torch.cos(torch.pi * yy / 2) - 0.1
    mu = (base[None].expand(c, h, w) + 0.05 * torch.arange(c).view(c, 1, 1)).reshape(d).to(torch.float64)
    p = torch.randn(d, rank, generator=g, dtype=torch.float64) * (factor_scale / max(rank, 1) ** 0.5)
    z = torch.randn(n, rank, generator=g, dtype=torch.float64)
    eps = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = mu + z @ p.T + noise * eps
    ds = ImageTensorDataset(
        x.to(torch.float32).view(n, c, h, w), name="synthetic_lowrank",
        transform_description=f"synthetic low-rank gaussian rank={rank} noise={noise} seed={seed}",
        flip=False,
    )
    return ds, mu.to(torch.float32), p.to(torch.float32)
