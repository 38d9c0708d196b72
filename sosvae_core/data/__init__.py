"""Datasets for SOS-VAE: decode once into a uint8 tensor, serve floats in [0, 1].

Images are decoded with PIL once into a compact ``uint8`` tensor ``(N, C, H, W)``
(optionally cached on disk), and :class:`ImageTensorDataset` serves float
tensors ``(C, H, W)`` in ``[0, 1]`` from it, flipping horizontally on the fly in
torch when augmentation is on. Epochs therefore never decode JPEGs, and the
whole data path is a tensor that can later be moved to a GPU in one go.

Three modules, one job each:
    sources  the dataset specs, finding the images on disk, decoding them with PIL;
    store    the decoded subset on disk: the cache and packed datasets, with checksums;
    splits   the seeded train / val / test split and the datasets that serve it.
"""
from . import sources, splits, store
from .sources import (BRAIN_SIZE, CELEBA_SIZE, DATASETS, DEFAULT_N_IMAGES, DataError, DatasetSpec, decode_images,
                      find_dataset_dir, find_partition_file, list_image_files, output_shape, resolve_data_root)
from .splits import ImageTensorDataset, dataset_args, load_dataset, load_splits, split_sizes, take, to_float
from .store import pack_dataset

__all__ = [
    "sources", "store", "splits",  # the modules (the API reference documents each)
    "BRAIN_SIZE", "CELEBA_SIZE", "DATASETS", "DEFAULT_N_IMAGES", "DataError", "DatasetSpec", "ImageTensorDataset", "dataset_args",
    "decode_images", "find_dataset_dir", "find_partition_file", "list_image_files", "load_dataset", "load_splits",
    "output_shape", "pack_dataset", "resolve_data_root", "split_sizes", "take", "to_float",
]
