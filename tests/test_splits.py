"""sosvae_core.data.splits: the seeded subset and its 70/20/10 split, the datasets that serve
it, flips, the trainer's batch path and a config's data."""
from __future__ import annotations

import pytest
import torch

import sosvae_core.data as D
from sosvae_core.data import DataError, load_dataset, load_splits
from data_fakes import write_images, write_partition

pytestmark = pytest.mark.usefixtures("no_ambient_cache")


def test_subset_and_70_20_10_split(celeba_root):
    splits = load_splits("celeba64_gray", data_root=celeba_root, n_images=30, seed=3, progress=False)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [21, 6, 3]
    names = [set(splits[s].files) for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert len(set.union(*names)) == 30
    assert D.split_sizes(10_000) == (7000, 2000, 1000)
    # More requested than exist: all of them.
    assert len(load_dataset("celeba64_gray", data_root=celeba_root, split="all", n_images=500, progress=False)) == 40


def test_split_is_seeded(celeba_root):
    def files(seed):
        sp = load_splits("celeba64_gray", data_root=celeba_root, n_images=20, seed=seed, progress=False)
        return {k: v.files for k, v in sp.items()}

    assert files(0) == files(0)
    assert files(0) != files(1)
    a = load_splits("celeba64_gray", data_root=celeba_root, n_images=20, seed=0, progress=False)
    b = load_splits("celeba64_gray", data_root=celeba_root, n_images=20, seed=0, progress=False)
    assert torch.equal(a["val"].images, b["val"].images)


def test_official_partition_is_optional(tmp_path):
    folder = tmp_path / "img_align_celeba"
    paths = write_images(folder, 12)
    labels = [0] * 6 + [1] * 4 + [2] * 2
    write_partition(tmp_path, [p.name for p in paths], labels)
    sp = load_splits("celeba64_gray", data_root=tmp_path, partition="official", progress=False)
    assert sp["train"].files == [p.name for p in paths[:6]]
    assert sp["val"].files == [p.name for p in paths[6:10]]
    assert sp["test"].files == [p.name for p in paths[10:]]
    # Default is the paper's random 70/20/10, ignoring the file.
    sp = load_splits("celeba64_gray", data_root=tmp_path, progress=False)
    assert [len(sp[s]) for s in ("train", "val", "test")] == [9, 2, 1]
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match="list_eval_partition.txt"):
        load_splits("celeba64_gray", data_root=tmp_path, partition="official", progress=False)


def test_flip_only_with_augment_and_reproducible(celeba_root):
    sp = load_splits("celeba", data_root=celeba_root, n_images=10, progress=False)
    train, val = sp["train"], sp["val"]
    assert train.flip and not val.flip
    x = train.images[0].float() / 255
    torch.manual_seed(0)
    draws = [train[0] for _ in range(20)]
    assert any(torch.equal(d, x) for d in draws) and any(torch.equal(d, x.flip(-1)) for d in draws)
    assert all(torch.equal(d, x) or torch.equal(d, x.flip(-1)) for d in draws)
    torch.manual_seed(0)
    assert all(torch.equal(d, train[0]) for d in draws)  # same RNG state, same flips
    assert all(torch.equal(val[0], val.images[0].float() / 255) for _ in range(10))

    no_aug = load_dataset("celeba", data_root=celeba_root, n_images=10, augment=False, progress=False)
    assert not no_aug.flip and all(torch.equal(no_aug[0], x) for _ in range(10))
    g = torch.Generator().manual_seed(5)
    batch = train.get_batch([0, 1, 2, 3], generator=g)
    assert batch.shape == (4, 3, 218, 178)


def test_tensor_dataset_helpers():
    imgs = torch.randint(0, 256, (5, 1, 4, 6), dtype=torch.uint8)
    ds = D.ImageTensorDataset(imgs, name="t")
    assert torch.equal(ds.to_float(), imgs.float() / 255) and ds.to_float().dtype == torch.float32
    assert torch.equal(D.to_float(imgs[:2]), imgs[:2].float() / 255)
    with pytest.raises(DataError):
        D.ImageTensorDataset(torch.zeros(3, 4, 4))


def test_synthetic_lowrank_dataset(lowrank_data):
    ds, mu, p = lowrank_data(4000, (1, 6, 5), rank=2, seed=1, noise=0.02)
    assert ds.images.dtype == torch.float32 and ds.image_shape == (1, 6, 5) and len(ds) == 4000
    assert mu.shape == (30,) and p.shape == (30, 2) and not ds.flip
    x = ds.images.reshape(4000, -1).double()
    assert torch.allclose(x.mean(0), mu.double(), atol=0.01)
    cov = torch.cov(x.T)
    true = p.double() @ p.double().T + 0.02**2 * torch.eye(30, dtype=torch.float64)
    assert (cov - true).abs().max() < 0.15 * true.abs().max()
    ds2, mu2, p2 = lowrank_data(4000, (1, 6, 5), rank=2, seed=1, noise=0.02)
    assert torch.equal(ds.images, ds2.images) and torch.equal(p, p2)
    item = ds[0]
    item += 1  # items are copies; the backing tensor is untouched
    assert torch.equal(ds.images, ds2.images)


def test_dataset_args_are_what_a_config_trains_on():
    from sosvae_core.configs import get_config
    from sosvae_core.data import dataset_args
    cfg = get_config("celeba", "quick", n_images=77, split_seed=3)
    assert dataset_args(cfg) == {"name": "celeba", "n_images": 77, "seed": 3, "image_size": (54, 44)}
    lfw = load_splits(**dataset_args(get_config("lfw", "smoke")), progress=False)
    assert [len(lfw[s]) for s in ("train", "val", "test")] == [70, 20, 10]


def test_get_batch_shards_the_global_batchs_flips():
    """Rank r of `world` processes gets rows r::world of the flips one process draws."""
    sp = load_splits("lfw", progress=False)
    train = sp["train"]
    idx = torch.arange(8)
    whole = train.get_batch(idx, generator=torch.Generator().manual_seed(5), flip=True)
    for rank in (0, 1):
        part = train.get_batch(idx[rank::2], generator=torch.Generator().manual_seed(5), flip=True, shard=(rank, 2))
        torch.testing.assert_close(part, whole[rank::2], rtol=0, atol=0)
    plain = train.get_batch(idx, flip=False)
    torch.testing.assert_close(plain, train.to_float(train.images[:8]), rtol=0, atol=0)
    assert not torch.equal(whole, plain)  # some of the 8 were flipped
