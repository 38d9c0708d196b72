"""Where the images come from: the dataset specs, finding them on disk, decoding them with PIL.

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
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..paths import ENV_DATA_ROOT
from ..paths import first_line as _short

DEFAULT_N_IMAGES = 10_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

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
    stack = [(folder, "")]  # a folder and its relative prefix: string joins, not Path.relative_to
    while stack:
        current, prefix = stack.pop()
        with os.scandir(current) as it:
            for entry in it:
                if entry.is_dir() and recursive and not entry.name.startswith("."):
                    stack.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file() and _is_image(entry.name):
                    out.append((prefix + entry.name, entry.stat().st_size))
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
        from ..portraits import render
        return torch.from_numpy(render())
    return _lfw_images()


def _resize_tensor_images(images: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    # Bundled images are already a tensor: resize each via PIL, like the folder path.
    pil = lambda img: Image.fromarray(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy())
    out = [_to_chw(_resize(pil(img), image_size)) for img in images]
    return torch.from_numpy(np.stack(out))
