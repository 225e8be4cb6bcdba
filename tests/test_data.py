import numpy as np
import pytest
import torch
from PIL import Image

import gan.data as data_module
from gan.data import load_images
from gan.errors import DatasetError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_is_the_real_mnist():
    train, test = load_images("mnist", 28, 1), load_images("mnist", 28, 1, split="test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == TRAIN_COUNTS
    assert torch.bincount(test.labels).tolist() == TEST_COUNTS
    batch = train.batch(torch.arange(1000))
    assert batch.dtype == torch.float32 and batch.min() == -1.0 and batch.max() == 1.0


def test_resized_and_rgb_variants():
    grey32 = load_images("mnist", 32, 1, split="test")
    rgb64 = load_images("mnist", 64, 3, split="test")
    assert grey32.images.shape == (10000, 1, 32, 32)
    assert rgb64.images.shape == (10000, 1, 64, 64)  # stored once, not three times
    batch = rgb64.batch(torch.arange(8))
    assert batch.shape == (8, 3, 64, 64) and torch.equal(batch[:, 0], batch[:, 2])
    # Same digit, same ink: resizing keeps the mean intensity within a few levels.
    m28 = load_images("mnist", 28, 1, split="test").images[:100].float().mean()
    assert abs(grey32.images[:100].float().mean() - m28) < 3


def test_second_load_comes_from_the_cache(monkeypatch, dataset_cache):
    load_images("mnist", 28, 1, split="test")
    assert (dataset_cache / "mnist-test-28px-1ch-v1.pt").exists()

    def no_decoding(split):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(data_module, "_decode_mnist", no_decoding)
    assert len(load_images("mnist", 28, 1, split="test")) == 10000


def test_a_corrupt_cache_file_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GANSTUDY_CACHE", str(tmp_path))
    (tmp_path / "mnist-test-28px-1ch-v1.pt").write_bytes(b"garbage")
    assert len(load_images("mnist", 28, 1, split="test")) == 10000
    assert torch.load(tmp_path / "mnist-test-28px-1ch-v1.pt", weights_only=True)[
        "images"].shape == (10000, 1, 28, 28)
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def write_faces(folder, n=5):
    folder.mkdir()
    for i in range(n):
        h, w = 50 + 10 * i, 90 + 10 * i  # different sizes, all wider than tall
        array = np.empty((h, w, 3), dtype=np.uint8)
        array[:] = (200, 30, 90)  # a flat colour survives JPEG and resizing
        array[:, :15] = 0  # a dark strip at the left edge: the center crop cuts 20 px away
        Image.fromarray(array).save(folder / f"face_{i}.jpg", quality=95)


def test_folder_dataset_of_jpegs(tmp_path):
    write_faces(tmp_path / "faces")
    data = load_images(f"folder:{tmp_path / 'faces'}", 64, 3)
    assert data.images.shape == (5, 3, 64, 64) and data.labels is None
    mean_rgb = data.images.float().mean(dim=(0, 2, 3))
    assert torch.allclose(mean_rgb, torch.tensor([200.0, 30.0, 90.0]), atol=6), mean_rgb
    assert load_images(f"folder:{tmp_path / 'faces'}", 32, 1).images.shape == (5, 1, 32, 32)
    # Adding an image changes the cache key: the new image is seen.
    Image.new("RGB", (40, 40)).save(tmp_path / "faces" / "extra.png")
    assert len(load_images(f"folder:{tmp_path / 'faces'}", 64, 3)) == 6


def test_folder_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_images(f"folder:{tmp_path / 'empty'}", 32, 1)
    with pytest.raises(DatasetError, match="not a directory"):
        load_images(f"folder:{tmp_path / 'missing'}", 32, 1)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"cannot read image .*x\.jpg"):
        load_images(f"folder:{tmp_path / 'broken'}", 32, 1)


def test_absent_torchvision_dataset_says_where_and_how(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.delenv("GANSTUDY_OFFLINE", raising=False)
    # A mirror that refuses at once stands in for "offline", whatever this machine can reach.
    monkeypatch.setattr(tvd.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DatasetError) as err:
        load_images("fashion_mnist", 28, 1, data_dir=str(tmp_path / "tv"))
    message = str(err.value)
    assert message.startswith("fashion_mnist: not found in ") and str(tmp_path / "tv") in message
    assert "download failed" in message and "FashionMNIST files" in message
    assert "\n" not in message


def test_offline_mode_does_not_try_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("GANSTUDY_OFFLINE", "1")
    with pytest.raises(DatasetError, match=r"cifar10: not found in .* \(GANSTUDY_OFFLINE is set\)"):
        load_images("cifar10", 32, 3, data_dir=str(tmp_path / "tv"))
    assert not (tmp_path / "tv").exists() or not any((tmp_path / "tv").rglob("*.gz"))
