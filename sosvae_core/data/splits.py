"""Splits and datasets: the seeded train / val / test split of the decoded subset, served as
float images in [0, 1] from the compact uint8 tensor.

Subset and split
----------------
Like the paper, a seeded random subset of ``n_images`` (default 10,000; all
images when fewer exist) is drawn from the sorted file list and then split
70/20/10 into train/val/test by a seeded permutation (val = int(0.2 n),
test = int(0.1 n), train = the rest, as in the public SOS-VAE code). CelebA's
``list_eval_partition.txt`` is *not* used for this by default, because the
paper uses its own random split; pass ``partition='official'`` to assign the
subset's images to train/val/test from that file instead.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .sources import DataError, DatasetSpec, _normalise_image_size, _spec, find_partition_file
from .store import decoded_subset

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- dataset


def take(images: torch.Tensor, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``images[index]`` along dim 0 as a new tensor.

    On CPU this goes through numpy, whose gather of large uint8 image tensors is far
    faster than torch's index_select (benchmarks/README.md, "Data").
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
        flip: bool | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> torch.Tensor:
        """Gather a float batch (B, C, H, W) without a DataLoader, flipping vectorised: the
        batch path of the trainer.

        Draws the flips as one ``torch.rand(B · world)`` and keeps rows ``rank::world`` of it
        (``shard = (rank, world)``): under data parallelism each process holds those rows of
        the global batch and flips them as one process would. It consumes the RNG differently
        from ``__getitem__`` (not interchangeable for exact resumption). ``flip`` defaults to
        the dataset's own setting.
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.to_float(take(self.images, idx), device=device)
        if self.flip if flip is None else flip:
            rank, world = shard
            g = generator if generator is not None else self.generator
            mask = (torch.rand(len(idx) * world, generator=g)[rank::world] < 0.5).to(x.device)
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


def _official_partition(files: list[str], folder: Path | None, name: str) -> dict[str, torch.Tensor]:
    """The indices of `files` in each split of CelebA's list_eval_partition.txt beside `folder`."""
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
    return {s: torch.nonzero(labels == k).flatten() for k, s in enumerate(SPLITS)}


def _transform_description(spec: DatasetSpec, size: tuple[int, int] | None) -> str:
    """How a dataset's images were made: the spec's transform, and the resize when one is asked for."""
    return spec.transform_description if size is None else f"{spec.transform_description}; resize {size[0]}x{size[1]} (HxW)"


def dataset_args(cfg) -> dict:
    """What a config (`sosvae_core.configs.Config`) trains on, as `load_splits` / `load_dataset`
    arguments: the one mapping from a config to its data, so that training, the figures and
    FID all see the same images."""
    return dict(name=cfg.dataset, n_images=cfg.n_images, seed=cfg.split_seed, image_size=cfg.image_size)


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
    images, files, skipped, gen, folder = decoded_subset(
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
        parts = _official_partition(files, folder, name)

    flip_train = spec.flip if augment is None else bool(augment)
    out = {}
    for split, idx in parts.items():
        out[split] = ImageTensorDataset(
            take(images, idx), name=name, transform_description=_transform_description(spec, size),
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
    images, files, skipped, _, _ = decoded_subset(
        spec, data_root, n_images, seed, size, cache_dir, on_corrupt, num_workers, progress
    )
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} corrupt image(s) in {name} (first: {skipped[0]})", stacklevel=2
        )
    return ImageTensorDataset(
        images, name=name, transform_description=_transform_description(spec, size), flip=bool(augment),
        files=files, n_skipped=len(skipped), skipped_files=skipped,
    )
