"""Tests for sosvae_core.data: locating, decoding, splitting, caching, errors.

Fake datasets are small folders of JPEG/PNG written with PIL under tmp_path.
The real-data tests read SOSVAE_DATA_ROOT and skip (with the reason) when unset.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sosvae_core.data as D
from sosvae_core.data import DataError, load_dataset, load_splits, store
from sosvae_core.paths import ENV_CACHE_DIR, ENV_DATA_ROOT

REAL_ROOT = os.environ.get(ENV_DATA_ROOT, "").strip()
needs_real_data = pytest.mark.skipif(
    not REAL_ROOT, reason=f"{ENV_DATA_ROOT} is not set: real CelebA/brain data unavailable"
)


@pytest.fixture(autouse=True)
def _no_ambient_cache(monkeypatch):
    # A CI-wide cache dir must not receive (or serve) the fake datasets.
    monkeypatch.delenv(ENV_CACHE_DIR, raising=False)


def write_images(folder: Path, n: int, size=(178, 218), mode="RGB", ext=".jpg", start=1, seed=0) -> list[Path]:
    """n smooth random images named NNNNNN.ext; size is PIL (W, H)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for k in range(n):
        small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        im = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BILINEAR).convert(mode)
        path = folder / f"{start + k:06d}{ext}"
        im.save(path)
        paths.append(path)
    return paths


def write_partition(folder: Path, names: list[str], labels: list[int]) -> None:
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {l}\n" for n, l in zip(names, labels)))


@pytest.fixture
def celeba_root(tmp_path) -> Path:
    write_images(tmp_path / "img_align_celeba", 40)
    return tmp_path


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- errors


def test_missing_root_names_path_and_fix(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as exc:
        load_dataset("celeba", data_root=missing, progress=False)
    msg = one_line(exc)
    assert str(missing) in msg and "does not exist" in msg
    assert "--data-root" in msg and "SOSVAE_DATA_ROOT" in msg


def test_no_root_at_all_for_a_download_dataset(monkeypatch):
    monkeypatch.delenv(ENV_DATA_ROOT, raising=False)
    with pytest.raises(DataError, match="needs a data root.*SOSVAE_DATA_ROOT") as exc:
        load_dataset("brain", progress=False)
    one_line(exc)


def test_empty_folder_says_where_it_looked(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    (tmp_path / "img_align_celeba" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as exc:
        load_dataset("celeba", data_root=tmp_path, progress=False)
    msg = one_line(exc)
    assert "no images" in msg
    assert str(tmp_path / "img_align_celeba") in msg and str(tmp_path / "celeba" / "img_align_celeba") in msg


def test_unknown_dataset_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="split must be"):
        load_dataset("lfw", split="training")
    with pytest.raises(DataError, match="on_corrupt"):
        load_dataset("lfw", on_corrupt="ignore")
    with pytest.raises(DataError, match="partition"):
        load_splits("lfw", partition="paper")


def _corrupt_folder(tmp_path) -> tuple[Path, list[Path]]:
    folder = tmp_path / "img_align_celeba"
    paths = write_images(folder, 10)
    paths[3].write_bytes(b"this is not a jpeg")  # unidentifiable
    data = paths[6].read_bytes()
    paths[6].write_bytes(data[: len(data) // 2])  # truncated JPEG
    return tmp_path, [paths[3], paths[6]]


def test_corrupt_images_are_skipped_with_a_count(tmp_path):
    root, bad = _corrupt_folder(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 2 corrupt image\(s\) of 10"):
        splits = load_splits("celeba", data_root=root, progress=False)
    assert sum(len(s) for s in splits.values()) == 8
    assert all(s.n_skipped == 2 for s in splits.values())
    assert sorted(splits["train"].skipped_files) == sorted(p.name for p in bad)
    kept = {f for s in splits.values() for f in s.files}
    assert not kept & {p.name for p in bad}


def test_corrupt_images_error_mode_names_the_file(tmp_path):
    root, bad = _corrupt_folder(tmp_path)
    with pytest.raises(DataError) as exc:
        load_dataset("celeba", data_root=root, on_corrupt="error", progress=False)
    msg = one_line(exc)
    assert str(bad[0]) in msg and "corrupt" in msg and "on_corrupt='skip'" in msg


def test_celeba_wrong_size_names_file_and_expected(tmp_path):
    folder = tmp_path / "img_align_celeba"
    write_images(folder, 5)
    odd = write_images(folder, 1, size=(100, 120), start=99)[0]
    for name in ("celeba", "celeba64_gray"):
        with pytest.raises(DataError) as exc:
            load_dataset(name, data_root=tmp_path, progress=False)
        msg = one_line(exc)
        assert str(odd) in msg and "100x120" in msg and "178x218" in msg


def test_celeba_grayscale_file_is_a_channel_error(tmp_path):
    folder = tmp_path / "img_align_celeba"
    write_images(folder, 5)
    gray = write_images(folder, 1, mode="L", start=50)[0]
    with pytest.raises(DataError) as exc:
        load_dataset("celeba", data_root=tmp_path, progress=False)
    msg = one_line(exc)
    assert str(gray) in msg and "mode L" in msg and "RGB" in msg
    # The grayscale comparison set converts to gray anyway, so the file is fine there.
    assert load_dataset("celeba64_gray", data_root=tmp_path, split="all", progress=False).image_shape == (1, 64, 64)


def test_brain_mixed_sizes_error_unless_resized(tmp_path):
    root = tmp_path / "brain_oasis"
    write_images(root / "A", 6, size=(176, 208), mode="L")
    odd = write_images(root / "B", 1, size=(200, 200), mode="L", ext=".png", start=7)[0]
    with pytest.raises(DataError) as exc:
        load_dataset("brain", data_root=tmp_path, progress=False)
    msg = one_line(exc)
    assert str(odd) in msg and "200x200" in msg and "176x208" in msg and "image_size" in msg
    ds = load_dataset("brain", data_root=tmp_path, split="all", image_size=(52, 44), progress=False)
    assert ds.images.shape == (7, 1, 52, 44) and ds.images.dtype == torch.uint8


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", ["plain", "torchvision", "direct"])
def test_celeba_layouts_are_found(tmp_path, layout):
    folder = {
        "plain": tmp_path / "img_align_celeba",
        "torchvision": tmp_path / "celeba" / "img_align_celeba",
        "direct": tmp_path / "img_align_celeba",
    }[layout]
    write_images(folder, 6)
    root = folder if layout == "direct" else tmp_path
    assert D.find_dataset_dir("celeba", root) == folder
    ds = load_dataset("celeba", data_root=root, split="all", progress=False)
    assert len(ds) == 6 and ds.image_shape == (3, 218, 178)


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_images(tmp_path / "celeba" / "img_align_celeba", 3)
    monkeypatch.setenv(ENV_DATA_ROOT, str(tmp_path))
    assert D.resolve_data_root() == tmp_path
    assert D.resolve_data_root(tmp_path / "x") == tmp_path / "x"  # explicit wins
    assert len(load_dataset("celeba", split="all", progress=False)) == 3
    monkeypatch.delenv(ENV_DATA_ROOT)
    assert D.resolve_data_root() is None


def test_brain_nested_layouts_are_found(tmp_path):
    for cls in ("NonDemented", "MildDemented"):
        write_images(tmp_path / "brain_oasis" / cls, 3, size=(176, 208), mode="L")
    assert D.find_dataset_dir("brain", tmp_path) == tmp_path / "brain_oasis"
    ds = load_dataset("brain", data_root=tmp_path, split="all", progress=False)
    assert len(ds) == 6 and ds.image_shape == (1, 208, 176)
    assert ds.files[0].startswith("MildDemented/")  # sorted relative paths
    # The root may also be the slice folder itself, classes nested inside.
    assert D.find_dataset_dir("brain", tmp_path / "brain_oasis") == tmp_path / "brain_oasis"


# --------------------------------------------------------------------------- splits


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


# --------------------------------------------------------------------------- cache


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


# --------------------------------------------------------------------------- transforms


def test_transform_shapes(celeba_root):
    rgb = load_dataset("celeba", data_root=celeba_root, n_images=10, split="all", progress=False)
    assert rgb.images.shape == (10, 3, 218, 178) and rgb.images.dtype == torch.uint8
    gray = load_dataset("celeba64_gray", data_root=celeba_root, n_images=10, split="all", progress=False)
    assert gray.images.shape == (10, 1, 64, 64) and gray[0].shape == (1, 64, 64)
    quick = load_dataset("celeba", data_root=celeba_root, n_images=10, split="all", image_size=(64, 52), progress=False)
    assert quick.image_shape == (3, 64, 52) and "resize 64x52" in quick.transform_description
    assert D.output_shape("celeba", (64, 52)) == (3, 64, 52) and D.output_shape("brain") == (1, 208, 176)
    x = rgb[0]
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x, rgb.images[0].float() / 255)


def test_celeba64_gray_is_the_centre_crop(tmp_path):
    # A 178x218 image white inside the 148x148 centre box and black outside crops to all white.
    arr = np.zeros((218, 178, 3), dtype=np.uint8)
    arr[35:183, 15:163] = 255
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    Image.fromarray(arr).save(folder / "000001.png")
    ds = load_dataset("celeba64_gray", data_root=tmp_path, split="all", progress=False)
    assert ds.images.min() >= 250


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


def test_lfw_is_the_bundled_default(monkeypatch):
    monkeypatch.delenv(ENV_DATA_ROOT, raising=False)
    assert D.find_dataset_dir("lfw") is None
    sp = load_splits("lfw", progress=False)
    # the 100 faces of lfw_subset (its other 100 images are background patches)
    assert [len(sp[s]) for s in ("train", "val", "test")] == [70, 20, 10]
    ds = sp["train"]
    assert ds.images.dtype == torch.uint8 and ds.image_shape == (1, 25, 25)
    assert ds.flip  # faces are flipped for training, like CelebA
    from skimage.data import lfw_subset
    picked = torch.cat([sp[s].images[:, 0].float() / 255 for s in ("train", "val", "test")])
    # every picked image is one of the faces, none is a non-face patch
    nearest = torch.cdist(picked.flatten(1), torch.from_numpy(lfw_subset()).float().flatten(1)).argmin(1)
    assert (nearest < 100).all() and len(set(nearest.tolist())) == 100
    x = ds[0]
    assert x.shape == (1, 25, 25) and 0.0 <= x.min() <= x.max() <= 1.0
    assert load_dataset("lfw", split="all", image_size=(32, 32), progress=False).image_shape == (1, 32, 32)


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


# --------------------------------------------------------------------------- real data


@needs_real_data
@pytest.mark.parametrize(
    "name, shape",
    [("celeba", (3, 218, 178)), ("celeba64_gray", (1, 64, 64)), ("brain", (1, 208, 176))],
)
def test_real_loaders(name, shape):
    sp = load_splits(name, data_root=REAL_ROOT, n_images=50, seed=0, cache_dir=False, progress=False)
    assert [len(sp[s]) for s in ("train", "val", "test")] == [35, 10, 5]
    for ds in sp.values():
        assert ds.images.dtype == torch.uint8 and ds.image_shape == shape and ds.n_skipped == 0
        x = ds[0]
        assert x.dtype == torch.float32 and x.shape == shape
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert ds.images.float().std() > 10  # real pictures, not a constant


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


def test_portraits_are_the_bundled_default_and_deterministic(monkeypatch):
    from sosvae_core import portraits
    monkeypatch.delenv(ENV_DATA_ROOT, raising=False)
    a, b = portraits.render(12, seed=3), portraits.render(12, seed=3)
    assert a.dtype == np.uint8 and a.shape == (12, 3, portraits.HEIGHT, portraits.WIDTH)
    assert np.array_equal(a, b) and not np.array_equal(a, portraits.render(12, seed=4))
    sp = load_splits("portraits", n_images=200, progress=False)
    assert [len(sp[s]) for s in ("train", "val", "test")] == [140, 40, 20]
    assert sp["train"].image_shape == (3, 44, 36) and sp["train"].flip
    # the corners are background, the centre is face: they vary independently across portraits
    x = torch.cat([sp[s].images for s in ("train", "val", "test")]).float() / 255
    corner, centre = x[:, :, 1, 1], x[:, :, 22, 18]
    r = torch.corrcoef(torch.stack([corner[:, 0], centre[:, 0]]))[0, 1]
    assert abs(float(r)) < 0.3 and corner.std(0).min() > 0.1
    # colour images resize through the same path as gray ones
    small = load_dataset("portraits", split="all", n_images=10, image_size=(22, 18), progress=False)
    assert small.image_shape == (3, 22, 18)


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
