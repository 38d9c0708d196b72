"""sosvae_core.data.store: the decoded-image cache (atomic, checksummed, rebuilt when damaged)
and packed datasets."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from sosvae_core.data import DataError, load_dataset, load_splits, store
from sosvae_core.paths import ENV_CACHE_DIR
from data_fakes import write_images

pytestmark = pytest.mark.usefixtures("no_ambient_cache")


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = store.decode_images

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "decode_images", counting)
    return calls


def test_cache_is_written_atomically_and_reused(celeba_root, tmp_path, monkeypatch, count_decodes):
    cache = tmp_path / "cache"
    replaced = []
    real_replace = os.replace

    def spy_replace(src, dst):
        src, dst = Path(src), Path(dst)
        replaced.append((src, dst, dst.exists()))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    a = load_splits("celeba64_gray", data_root=celeba_root, n_images=20, cache_dir=cache, progress=False)
    assert count_decodes == [20]
    (src, dst, existed), = replaced
    assert src.parent == dst.parent == cache and src.name.startswith(".") and not existed
    assert [p.name for p in cache.iterdir()] == [dst.name]  # no temp file left behind

    b = load_splits("celeba64_gray", data_root=celeba_root, n_images=20, cache_dir=cache, progress=False)
    assert count_decodes == [20]  # served from the cache
    for s in a:
        assert torch.equal(a[s].images, b[s].images) and a[s].files == b[s].files

    # Anything in the key makes a new entry: seed, image size, the file list.
    load_splits("celeba64_gray", data_root=celeba_root, n_images=20, seed=1, cache_dir=cache, progress=False)
    load_splits("celeba64_gray", data_root=celeba_root, n_images=20, image_size=32, cache_dir=cache, progress=False)
    write_images(celeba_root / "img_align_celeba", 1, start=900)
    load_splits("celeba64_gray", data_root=celeba_root, n_images=20, cache_dir=cache, progress=False)
    assert len(count_decodes) == 4 and len(list(cache.glob("*.pt"))) == 4


def test_cache_dir_from_environment(celeba_root, tmp_path, monkeypatch, count_decodes):
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "envcache"))
    load_dataset("celeba64_gray", data_root=celeba_root, n_images=10, progress=False)
    load_dataset("celeba64_gray", data_root=celeba_root, n_images=10, progress=False)
    assert len(count_decodes) == 1 and len(list((tmp_path / "envcache").glob("*.pt"))) == 1
    load_dataset("celeba64_gray", data_root=celeba_root, n_images=10, cache_dir=False, progress=False)
    assert len(count_decodes) == 2  # cache_dir=False turns it off


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bitflip"])
def test_corrupt_cache_is_rebuilt(celeba_root, tmp_path, count_decodes, damage):
    cache = tmp_path / "cache"
    first = load_dataset("celeba", data_root=celeba_root, n_images=8, split="all", cache_dir=cache, progress=False)
    (path,) = cache.glob("*.pt")
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(b"\x00" * 100)
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # inside the image tensor: torch.load would not notice
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt or stale.*rebuilding"):
        again = load_dataset("celeba", data_root=celeba_root, n_images=8, split="all", cache_dir=cache, progress=False)
    assert len(count_decodes) == 2
    assert torch.equal(first.images, again.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file is good again
        load_dataset("celeba", data_root=celeba_root, n_images=8, split="all", cache_dir=cache, progress=False)
    assert len(count_decodes) == 2


def test_failed_cache_write_warns_and_leaves_nothing(celeba_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def broken_save(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.warns(UserWarning, match="cannot write cache.*No space left"):
        ds = load_dataset("celeba64_gray", data_root=celeba_root, n_images=5, split="all", cache_dir=cache, progress=False)
    assert len(ds) == 5 and list(cache.iterdir()) == []


def test_packed_dataset_gives_the_same_splits(celeba_root, tmp_path):
    from sosvae_core.data import pack_dataset
    packed = pack_dataset("celeba64_gray", tmp_path / "p.pt", data_root=celeba_root, n_images=12, seed=3, progress=False)
    a = load_splits("celeba64_gray", data_root=celeba_root, n_images=12, seed=3, progress=False)
    b = load_splits("celeba64_gray", data_root=packed, n_images=12, seed=3, progress=False)
    for split in ("train", "val", "test"):
        assert torch.equal(a[split].images, b[split].images)
    with pytest.raises(DataError, match="holds seed=3 but 4 was asked for"):
        load_splits("celeba64_gray", data_root=packed, n_images=12, seed=4, progress=False)
    with pytest.raises(DataError, match="holds name='celeba64_gray' but 'celeba' was asked for"):
        load_splits("celeba", data_root=packed, n_images=12, seed=3, progress=False)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a tensor")
    with pytest.raises(DataError, match="not a readable packed dataset"):
        load_splits("celeba64_gray", data_root=junk, n_images=12, seed=3, progress=False)
