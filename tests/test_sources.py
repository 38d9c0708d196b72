"""sosvae_core.data.sources: the dataset specs, finding the images, decoding them, and the
one-line errors for data that is missing, corrupt or of the wrong size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sosvae_core.data as D
from sosvae_core.data import DataError, load_dataset, load_splits
from sosvae_core.paths import ENV_DATA_ROOT
from data_fakes import REAL_ROOT, needs_real_data, one_line, write_images

pytestmark = pytest.mark.usefixtures("no_ambient_cache")


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
