"""The on-disk store: the decoded subset, cached or packed, with its checksum.

Cache
-----
With ``cache_dir`` (default ``$SOSVAE_CACHE_DIR``; no cache when neither is
set, ``cache_dir=False`` turns it off; `paths.cache_root` decides) the decoded
subset is stored as ``<cache_dir>/<name>-<hash>.pt``, keyed by dataset name, transform
description, image_size, a hash of the sorted file list (relative names and
byte sizes), n_images and seed. It is written atomically (temp file in the
same folder, fsync, ``os.replace``) and carries a crc32 of the pixels; an
unreadable, partial, stale or damaged file is reported and rebuilt. The
bundled ``lfw`` set decodes in a fraction of a second and is never cached.

A packed dataset (`pack_dataset`, `python -m sosvae_core pack`) is the decoded subset as one
uint8 tensor file; passed as the data root it gives exactly the same splits without the
image files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
import zlib
from pathlib import Path

import torch

from ..paths import atomic_file, cache_root
from .sources import (DEFAULT_N_IMAGES, DataError, DatasetSpec, _bundled_images, _normalise_image_size, _short,
                      _resize_tensor_images, _spec, decode_images, find_dataset_dir, list_image_files,
                      resolve_data_root)

log = logging.getLogger(__name__)
# Bump when decoding changes in a way the transform descriptions do not capture.
CACHE_FORMAT = 1


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


def _checksum(images: torch.Tensor) -> int:
    # torch.load does not notice flipped bytes inside a tensor; a crc32 does, in about half the
    # time the read takes (benchmarks/bench_data.py).
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


def decoded_subset(
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

    cache = cache_root(cache_dir, beside_runs=False)
    key = _cache_key(spec, image_size, files, n, seed)
    cache_file = _cache_path(cache, spec, key) if cache else None
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
    images, files, skipped, gen, _ = decoded_subset(spec, data_root, n_images, seed, size, False,
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
