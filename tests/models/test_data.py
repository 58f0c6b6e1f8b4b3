import gzip
import struct

import numpy as np
import pytest
import torch

from models import data


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    with (gzip.open if compress else open)(path, "wb") as handle:
        handle.write(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_images_and_labels(tmp_path, compress):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, -1, 70000], dtype=">i4")
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"images{suffix}", images, compress)
    write_idx(tmp_path / f"labels{suffix}", labels, compress)
    np.testing.assert_array_equal(data.read_idx(tmp_path / f"images{suffix}"), images)
    read_labels = data.read_idx(tmp_path / f"labels{suffix}")
    assert read_labels.tolist() == [7, -1, 70000] and read_labels.dtype.byteorder in "=|"


def test_load_split_reads_a_folder_in_the_debian_layout(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(6, dtype=np.uint8))
    split = data.load_split("test", tmp_path)
    assert len(split) == 6 and split.labels.dtype == np.int64
    np.testing.assert_array_equal(split.images, images)


def test_missing_file_says_how_to_get_the_data(tmp_path):
    with pytest.raises(data.DatasetError, match="apt-get install dataset-fashion-mnist"):
        data.load_split("train", tmp_path)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + b"\x00" * 100, "truncated"),
        (b"\x12\x34\x56\x78" + b"\x00" * 64, "bad magic"),
        (b"", "bad magic"),
    ],
)
def test_corrupt_files_give_one_line_errors(tmp_path, content, problem):
    path = tmp_path / "broken.idx"
    path.write_bytes(content)
    with pytest.raises(data.DatasetError, match=problem) as info:
        data.read_idx(path)
    assert "\n" not in str(info.value) and "dataset-fashion-mnist" in str(info.value)


def test_broken_gzip_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(data.DatasetError, match="corrupt"):
        data.read_idx(path)


def test_real_fashion_mnist_is_installed_and_has_the_documented_statistics():
    train, test = data.load_split("train"), data.load_split("test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    mean, std = data.compute_mean_std(train)
    assert abs(mean - data.MEAN) < 1e-4 and abs(std - data.STD) < 1e-4


def test_augment_is_reproducible_and_keeps_shape():
    batch = data.normalise(torch.from_numpy(data.load_split("test").images[:16]))
    fill = (0 - data.MEAN) / data.STD
    first = data.augment(batch, torch.Generator().manual_seed(3), fill=fill, erase_probability=0.5)
    second = data.augment(batch, torch.Generator().manual_seed(3), fill=fill, erase_probability=0.5)
    other = data.augment(batch, torch.Generator().manual_seed(4), fill=fill, erase_probability=0.5)
    assert first.shape == batch.shape
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_augment_without_padding_flip_or_erasing_is_identity():
    batch = data.normalise(torch.from_numpy(data.load_split("test").images[:4]))
    out = data.augment(batch, torch.Generator().manual_seed(0), fill=0.0, padding=0, flip=False)
    assert torch.equal(out, batch)
