"""Loaders of real/datasets.py, on tiny files written here in each data set's distributed format."""

from __future__ import annotations

import gzip
import pickle
import struct
import tempfile
from pathlib import Path

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from PIL import Image

from real.datasets import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    Dataset,
    DatasetError,
    default_data_dir,
    load_dataset,
    long_tailed_indices,
)
from theory.plumbing.config import ConfigError

CINIC_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _numpy_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(x.shape[1], -1) / 255.0
    return pixels.mean(axis=1), pixels.std(axis=1)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------------------------


def _pickle(path: Path, obj) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(parent: Path, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    root = parent / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = _rng(1)
    xs, ys = [], []
    for i in range(1, 7):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        name = f"data_batch_{i}" if i <= 5 else "test_batch"
        _pickle(root / name, {b"batch_label": name.encode(), b"data": data, b"labels": labels})
        xs.append(data)
        ys.append(labels)
    train_x, train_y = np.concatenate(xs[:5]), np.concatenate(ys[:5])
    return train_x, train_y, xs[5], np.asarray(ys[5])


def test_cifar10_round_trip_from_parent_and_folder(tmp_path):
    train_x, train_y, test_x, test_y = write_cifar10(tmp_path)
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py", str(tmp_path)):
        ds = load_dataset("cifar10", data_dir)
        assert isinstance(ds, Dataset) and ds.name == "cifar10" and ds.num_classes == 10
        assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape == (15, 3, 32, 32)
        assert ds.train_x.is_contiguous() and ds.train_y.dtype == torch.int64
        assert np.array_equal(ds.train_x.numpy(), train_x.reshape(-1, 3, 32, 32))
        assert np.array_equal(ds.train_y.numpy(), train_y)
        assert np.array_equal(ds.test_x.numpy(), test_x.reshape(-1, 3, 32, 32))
        assert np.array_equal(ds.test_y.numpy(), test_y)
    # Row-major RGB planes: green plane of image 4 at row 5, column 7.
    assert ds.train_x[4, 1, 5, 7].item() == train_x[4, 1024 + 5 * 32 + 7]
    assert (ds.in_channels, ds.image_size) == (3, 32)
    mean, std = _numpy_stats(train_x.reshape(-1, 3, 32, 32))
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(ds.std, std, rtol=1e-9)


def test_cifar10_missing_file_names_it(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", tmp_path)
    message = _one_line(exc)
    assert "data_batch_3" in message and "cs.toronto.edu" in message


def test_cifar10_truncated_pickle_names_file(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="data_batch_2"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    "batch, problem",
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, "labels"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "shape"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels outside"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}, "labels outside"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
        ([1, 2, 3], "not a dict"),
    ],
)
def test_cifar10_malformed_batch(tmp_path, batch, problem):
    write_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", batch)
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", tmp_path)
    assert "test_batch" in _one_line(exc) and problem in str(exc.value)


def write_cifar100(parent: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    root = parent / "cifar-100-python"
    root.mkdir(parents=True)
    rng, out = _rng(2), {}
    for split, n in (("train", 6), ("test", 4)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [0, 99] + [int(v) for v in rng.integers(0, 100, size=n - 2)]
        _pickle(root / split, {b"data": data, b"fine_labels": fine, b"coarse_labels": [0] * n})
        out[split] = data.reshape(-1, 3, 32, 32), np.asarray(fine)
    return out


def test_cifar100_round_trip(tmp_path):
    expected = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100
    assert np.array_equal(ds.train_x.numpy(), expected["train"][0])
    assert np.array_equal(ds.train_y.numpy(), expected["train"][1])
    assert np.array_equal(ds.test_x.numpy(), expected["test"][0])
    assert np.array_equal(ds.test_y.numpy(), expected["test"][1])


def test_cifar100_errors(tmp_path):
    write_cifar100(tmp_path)
    root = tmp_path / "cifar-100-python"
    _pickle(root / "test", {b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [100]})
    with pytest.raises(DatasetError, match=r"labels outside \[0, 100\).*cifar-100-python/test"):
        load_dataset("cifar100", root)
    (root / "train").write_bytes((root / "train").read_bytes()[:-50])
    with pytest.raises(DatasetError, match="truncated.*cifar-100-python/train"):
        load_dataset("cifar100", root)
    (root / "train").unlink()
    with pytest.raises(DatasetError, match="missing .*cifar-100-python/train"):
        load_dataset("cifar100", root)


# --------------------------------------------------------------------------------------------
# STL-10
# --------------------------------------------------------------------------------------------


def _stl_images(n: int, offset: int) -> np.ndarray:
    """Images with an asymmetric known pattern, indexed [image, channel, row, column]."""
    i, c, r, col = np.meshgrid(np.arange(n), np.arange(3), np.arange(96), np.arange(96), indexing="ij")
    return ((offset + 7 * i + 60 * c + r + 3 * col) % 256).astype(np.uint8)


def write_stl10(parent: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    root = parent / "stl10_binary"
    root.mkdir(parents=True)
    out = {}
    for split, n, labels in (("train", 3, [1, 10, 4]), ("test", 2, [2, 7])):
        images = _stl_images(n, offset=0 if split == "train" else 11)
        # STL-10 stores each channel column-major: the file holds image[c].T row by row.
        images.transpose(0, 1, 3, 2).tofile(root / f"{split}_X.bin")
        np.asarray(labels, dtype=np.uint8).tofile(root / f"{split}_y.bin")
        out[split] = images, np.asarray(labels) - 1
    return out


def test_stl10_round_trip_column_major(tmp_path):
    expected = write_stl10(tmp_path)
    ds = load_dataset("stl10", tmp_path)
    assert ds.train_x.shape == (3, 3, 96, 96) and ds.image_size == 96
    assert np.array_equal(ds.train_x.numpy(), expected["train"][0])
    assert np.array_equal(ds.test_x.numpy(), expected["test"][0])
    assert ds.train_y.tolist() == [0, 9, 3] and ds.test_y.tolist() == [1, 6]
    # Pixel (row 2, column 5) of channel 1 of image 1 follows the pattern, not its transpose.
    assert ds.train_x[1, 1, 2, 5].item() == (7 + 60 + 2 + 15) % 256
    assert ds.train_x.is_contiguous()


def test_stl10_truncated_images(tmp_path):
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated.*train_X.bin"):
        load_dataset("stl10", tmp_path)


def test_stl10_label_count_and_range(tmp_path):
    write_stl10(tmp_path)
    root = tmp_path / "stl10_binary"
    np.asarray([1, 2], dtype=np.uint8).tofile(root / "train_y.bin")
    with pytest.raises(DatasetError, match="2 labels for 3 images.*train_y.bin"):
        load_dataset("stl10", root)
    np.asarray([1, 11], dtype=np.uint8).tofile(root / "test_y.bin")
    np.asarray([1, 2, 3], dtype=np.uint8).tofile(root / "train_y.bin")
    with pytest.raises(DatasetError, match="outside 1..10.*test_y.bin"):
        load_dataset("stl10", root)
    (root / "test_X.bin").unlink()
    with pytest.raises(DatasetError, match="missing .*test_X.bin"):
        load_dataset("stl10", root)


# --------------------------------------------------------------------------------------------
# CINIC-10 (PNG folders)
# --------------------------------------------------------------------------------------------


def write_cinic10(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng, out = _rng(3), {}
    for split, per_class in (("train", 2), ("test", 1)):
        xs, ys = [], []
        for label, cls in enumerate(CINIC_CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for j in range(per_class):
                if label == 3 and j == 0:  # a grayscale image, as CINIC-10 has some
                    gray = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
                    Image.fromarray(gray).save(folder / f"gray-{j}.png")
                    pixels = np.repeat(gray[None], 3, axis=0)
                else:
                    rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                    Image.fromarray(rgb).save(folder / f"img-{j}.png")
                    pixels = rgb.transpose(2, 0, 1)
                xs.append(pixels)
                ys.append(label)
        out[split] = np.stack(xs), np.asarray(ys)
    (root / "valid").mkdir()
    return out


def test_cinic10_round_trip(tmp_path):
    expected = write_cinic10(tmp_path)
    ds = load_dataset("cinic10", tmp_path)
    assert ds.num_classes == 10 and ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (10, 3, 32, 32)
    assert np.array_equal(ds.train_x.numpy(), expected["train"][0])
    assert np.array_equal(ds.train_y.numpy(), expected["train"][1])
    assert np.array_equal(ds.test_x.numpy(), expected["test"][0])
    assert np.array_equal(ds.test_y.numpy(), expected["test"][1])


def test_cinic10_corrupt_and_wrong_size_png(tmp_path):
    write_cinic10(tmp_path)
    path = tmp_path / "test" / "dog" / "img-0.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DatasetError) as exc:
        load_dataset("cinic10", tmp_path)
    assert "test/dog/img-0.png" in _one_line(exc) and "corrupt" in str(exc.value)
    Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(path)
    with pytest.raises(DatasetError, match="wrong image size.*img-0.png"):
        load_dataset("cinic10", tmp_path)


def test_cinic10_missing_split_and_classes(tmp_path):
    write_cinic10(tmp_path)
    (tmp_path / "test" / "ship" / "img-0.png").unlink()
    (tmp_path / "test" / "ship").rmdir()
    with pytest.raises(DatasetError, match="class folders.*test"):
        load_dataset("cinic10", tmp_path)
    with pytest.raises(DatasetError, match=r"missing directory .*nowhere.*github.com/BayesWatch"):
        load_dataset("cinic10", tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet (JPEG folders, val split as test)
# --------------------------------------------------------------------------------------------

WNIDS = ["n02", "n01", "n03"]


def _decoded(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def write_tinyimagenet(parent: Path) -> Path:
    root = parent / "tiny-imagenet-200"
    rng = _rng(4)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for wnid in WNIDS:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{wnid}_{j}.JPEG")
    lines = []
    for j, wnid in enumerate(["n03", "n01", "n02", "n01"]):
        name = f"val_{j}.JPEG"
        if j == 2:  # grayscale JPEG, converted to RGB by the loader
            pixels = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        else:
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "val" / "images" / name)
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tinyimagenet_round_trip(tmp_path):
    root = write_tinyimagenet(tmp_path)
    ds = load_dataset("tinyimagenet", tmp_path)
    assert ds.num_classes == 3 and ds.train_x.shape == (6, 3, 64, 64) and ds.test_x.shape == (4, 3, 64, 64)
    # Classes are the sorted wnids: n01 -> 0, n02 -> 1, n03 -> 2.
    assert ds.train_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.test_y.tolist() == [2, 0, 1, 0]
    train_files = [root / "train" / w / "images" / f"{w}_{j}.JPEG" for w in sorted(WNIDS) for j in range(2)]
    assert np.array_equal(ds.train_x.numpy(), np.stack([_decoded(p) for p in train_files]))
    val_files = [root / "val" / "images" / f"val_{j}.JPEG" for j in range(4)]
    assert np.array_equal(ds.test_x.numpy(), np.stack([_decoded(p) for p in val_files]))
    gray = ds.test_x[2]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_tinyimagenet_corrupt_jpeg(tmp_path):
    root = write_tinyimagenet(tmp_path)
    path = root / "train" / "n03" / "images" / "n03_1.JPEG"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetError, match="corrupt.*n03_1.JPEG"):
        load_dataset("tinyimagenet", root)


def test_tinyimagenet_annotation_errors(tmp_path):
    root = write_tinyimagenet(tmp_path)
    annotations = root / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="'n99'.*not in wnids.txt.*val_annotations.txt"):
        load_dataset("tinyimagenet", root)
    annotations.write_text("val_9.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="missing .*val_9.JPEG"):
        load_dataset("tinyimagenet", root)
    annotations.write_text("val_0.JPEG n01\n")
    with pytest.raises(DatasetError, match="malformed line 1.*val_annotations.txt"):
        load_dataset("tinyimagenet", root)
    (root / "wnids.txt").unlink()
    with pytest.raises(DatasetError, match="missing .*wnids.txt"):
        load_dataset("tinyimagenet", root)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files, optionally gzipped)
# --------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_fashion(root: Path, gz: bool, n_train: int = 5, n_test: int = 3) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng, out = _rng(5), {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for stem, array, magic in ((f"{prefix}-images-idx3-ubyte", images, 2051),
                                   (f"{prefix}-labels-idx1-ubyte", labels, 2049)):
            payload = _idx_bytes(array, magic)
            if gz:
                (root / f"{stem}.gz").write_bytes(gzip.compress(payload))
            else:
                (root / stem).write_bytes(payload)
        out[prefix] = images[:, None], labels.astype(np.int64)
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_round_trip(tmp_path, gz):
    expected = write_fashion(tmp_path, gz)
    ds = load_dataset("fashion-mnist", tmp_path)
    assert ds.train_x.shape == (5, 1, 28, 28) and (ds.in_channels, ds.image_size) == (1, 28)
    assert np.array_equal(ds.train_x.numpy(), expected["train"][0])
    assert np.array_equal(ds.train_y.numpy(), expected["train"][1])
    assert np.array_equal(ds.test_x.numpy(), expected["t10k"][0])
    assert np.array_equal(ds.test_y.numpy(), expected["t10k"][1])
    assert len(ds.mean) == 1 and len(ds.std) == 1


def test_fashion_mnist_truncated_gzip(tmp_path):
    write_fashion(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", tmp_path)


def test_fashion_mnist_truncated_raw(tmp_path):
    write_fashion(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError, match="header says.*train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", tmp_path)


@pytest.mark.parametrize(
    "stem, array, magic, problem",
    [
        ("train-images-idx3-ubyte", np.zeros((5, 28, 28)), 2049, "magic number 2049"),
        ("train-images-idx3-ubyte", np.zeros((5, 32, 32)), 2051, "32x32"),
        ("train-labels-idx1-ubyte", np.zeros(5), 2051, "magic number 2051"),
        ("train-labels-idx1-ubyte", np.zeros(4), 2049, "4 labels for 5 images"),
        ("train-labels-idx1-ubyte", np.full(5, 10), 2049, "labels outside"),
    ],
)
def test_fashion_mnist_malformed(tmp_path, stem, array, magic, problem):
    write_fashion(tmp_path, gz=False)
    (tmp_path / stem).write_bytes(_idx_bytes(array, magic))
    with pytest.raises(DatasetError) as exc:
        load_dataset("fashion-mnist", tmp_path)
    assert problem in _one_line(exc) and stem in str(exc.value)


def test_fashion_mnist_missing_file(tmp_path):
    write_fashion(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="missing .*t10k-labels-idx1-ubyte.*fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_default():
    assert default_data_dir("fashion-mnist") == DEBIAN_FASHION_MNIST
    ds = load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train_y.numpy()).tolist() == [6000] * 10
    assert abs(ds.mean[0] - 0.2860) < 1e-3 and abs(ds.std[0] - 0.3530) < 1e-3


# --------------------------------------------------------------------------------------------
# names, directories, defaults
# --------------------------------------------------------------------------------------------


def test_unknown_dataset_lists_choices():
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'.*cifar10.*synthetic"):
        load_dataset("imagenet")


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "synthetic"])
def test_missing_directory_names_path(tmp_path, name):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(DatasetError) as exc:
        load_dataset(name, missing)
    assert str(missing) in _one_line(exc) and "get it from" in str(exc.value)


def test_no_data_dir_without_default():
    assert default_data_dir("cifar10") is None
    with pytest.raises(DatasetError, match="cifar10: no data_dir given"):
        load_dataset("cifar10")


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset("stl10", path)


# --------------------------------------------------------------------------------------------
# long-tailed subsets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.0, 2.0, 10.0, 100.0])
def test_long_tailed_counts_follow_formula(ratio):
    labels = _rng(6).permutation(np.repeat(np.arange(10), 120))
    kept = long_tailed_indices(labels, ratio, seed=0)
    counts = np.bincount(labels[kept], minlength=10)
    expected = [max(1, int(np.floor(120 * ratio ** (-c / 9) + 1e-9))) for c in range(10)]
    assert counts.tolist() == expected
    assert counts[0] == 120 and (ratio != 100.0 or counts[9] == 1)
    assert np.all(np.diff(kept) > 0) and kept.dtype == np.int64


def test_long_tailed_ratio_one_keeps_all_and_is_deterministic():
    labels = _rng(7).integers(0, 5, size=300)
    assert np.array_equal(long_tailed_indices(labels, 1.0, seed=3), np.arange(300))
    a, b = long_tailed_indices(labels, 5.0, seed=1), long_tailed_indices(labels, 5.0, seed=1)
    c = long_tailed_indices(labels, 5.0, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and len(a) == len(c)


def test_long_tailed_rejects_bad_input():
    with pytest.raises(ValueError, match="imbalance_ratio"):
        long_tailed_indices(np.arange(10) % 2, 0.5, seed=0)
    with pytest.raises(ValueError, match="1-d integer"):
        long_tailed_indices(np.zeros(4), 2.0, seed=0)


def test_load_dataset_long_tail_applies_to_train_only():
    full = load_dataset("synthetic", synthetic_train=1000, synthetic_test=100, seed=3)
    lt = load_dataset("synthetic", synthetic_train=1000, synthetic_test=100, seed=3, long_tail_ratio=10.0)
    keep = long_tailed_indices(full.train_y.numpy(), 10.0, seed=3)
    assert torch.equal(lt.train_x, full.train_x[keep]) and torch.equal(lt.test_x, full.test_x)
    counts = np.bincount(lt.train_y.numpy(), minlength=10)
    assert counts[0] == 100 and counts[9] == 10
    np.testing.assert_allclose(lt.mean, _numpy_stats(lt.train_x.numpy())[0], rtol=1e-12)


# --------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------


def test_synthetic_shapes_and_determinism():
    a = load_dataset("synthetic", seed=5, synthetic_train=64, synthetic_test=32)
    b = load_dataset("synthetic", seed=5, synthetic_train=64, synthetic_test=32)
    c = load_dataset("synthetic", seed=6, synthetic_train=64, synthetic_test=32)
    assert a.train_x.shape == (64, 3, 32, 32) and a.test_x.shape == (32, 3, 32, 32)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64 and a.num_classes == 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y) and a.mean == b.mean
    assert not torch.equal(a.train_x, c.train_x)
    assert np.bincount(a.train_y.numpy()).tolist() == [7, 7, 7, 7, 6, 6, 6, 6, 6, 6]
    bigger = load_dataset("synthetic", seed=5, synthetic_train=128, synthetic_test=32)
    assert torch.equal(bigger.test_x, a.test_x)  # the test split does not depend on the train size


def test_synthetic_is_learnable():
    ds = load_dataset("synthetic", seed=0, synthetic_train=500, synthetic_test=200)
    x, xt = ds.train_x.flatten(1).double(), ds.test_x.flatten(1).double()
    centroids = torch.stack([x[ds.train_y == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(xt, centroids).argmin(1) == ds.test_y).double().mean().item()
    assert accuracy > 0.5  # chance is 0.1


# --------------------------------------------------------------------------------------------
# untrusted pickles: a restricted unpickler
# --------------------------------------------------------------------------------------------


class _Exploit:
    """Pickles as a call of ``func(*args)``; unpickled by plain pickle it would run it."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _exploits(marker: Path) -> dict[str, object]:
    import builtins
    import os
    import posix
    import subprocess

    command = f"touch {marker}"
    return {
        "posix.system": _Exploit(posix.system, command),
        "os.system": _Exploit(os.system, command),  # pickled as posix.system on Linux
        "subprocess.call": _Exploit(subprocess.call, ["touch", str(marker)]),
        "subprocess.Popen": _Exploit(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": _Exploit(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "builtins.exec": _Exploit(builtins.exec, f"open({str(marker)!r}, 'w')"),
    }


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("how", ["posix.system", "os.system", "subprocess.call", "subprocess.Popen",
                                 "builtins.eval", "builtins.exec"])
def test_crafted_pickle_never_runs_code(tmp_path, how, protocol):
    write_cifar10(tmp_path)
    marker = tmp_path / "marker"
    exploit = _exploits(marker)[how]
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    # The exploit hides inside an otherwise well-formed batch, as the labels.
    _pickle_with(path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": exploit}, protocol)
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", tmp_path)
    message = _one_line(exc)
    assert not marker.exists()
    assert f"refusing to load {path}: it asks for " in message
    module, name = {"os.system": "posix.system"}.get(how, how).split(".")
    if protocol < 3:  # pickle writes Python 2 names at these protocols (builtins -> __builtin__, ...)
        import _compat_pickle

        module, name = _compat_pickle.REVERSE_NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.REVERSE_IMPORT_MAPPING.get(module, module)
    assert f"it asks for {module}.{name}," in message


def _pickle_with(path: Path, obj, protocol: int) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def test_crafted_pickle_through_the_command_line(tmp_path, capsys):
    from real.cli import main

    write_cifar10(tmp_path)
    marker = tmp_path / "marker"
    _pickle_with(tmp_path / "cifar-10-batches-py" / "test_batch", _exploits(marker)["builtins.eval"], 4)
    code = main(["run", "--dataset", "cifar10", "--model", "cnn-small", "--epochs", "1", "--data-dir",
                 str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not marker.exists()
    assert err.startswith("error: --data-dir: cifar10: refusing to load") and "test_batch" in err
    assert "builtins.eval" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_real_format_batches_load_at_every_protocol(tmp_path, protocol):
    train_x, train_y, test_x, test_y = write_cifar10(tmp_path)
    root = tmp_path / "cifar-10-batches-py"
    rng = _rng(9)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    labels = np.asarray([3, 0, 9, 1], dtype=np.int64)  # numpy labels and numpy scalars are admitted
    batch = {b"batch_label": b"testing batch 1 of 1", b"data": data, b"labels": [labels[0], int(labels[1]), 9, 1],
             b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"], "coarse": np.arange(4)}
    _pickle_with(root / "test_batch", batch, protocol)
    _pickle_with(root / "data_batch_5", {"data": train_x[12:], "labels": np.asarray(train_y[12:], np.uint8)}, protocol)
    ds = load_dataset("cifar10", tmp_path)
    assert np.array_equal(ds.test_x.numpy(), data.reshape(-1, 3, 32, 32)) and ds.test_y.tolist() == [3, 0, 9, 1]
    assert np.array_equal(ds.train_y.numpy(), train_y)


def test_numpy_1_module_names_are_admitted(tmp_path):
    """Pickles written by numpy 1.x (and the distributed CIFAR files) name numpy.core.multiarray."""
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251
    raw = pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=2)
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    ds = load_dataset("cifar10", tmp_path)
    assert np.array_equal(ds.test_x.numpy(), data.reshape(-1, 3, 32, 32)) and ds.test_y.tolist() == [1, 2]


def test_codecs_encode_and_bytes_only_as_pickle_emits_them(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    import _codecs

    _pickle_with(path, {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                        b"x": _Exploit(_codecs.encode, "abc", "rot13")}, 2)
    with pytest.raises(DatasetError, match="truncated or corrupt pickle.*test_batch"):
        load_dataset("cifar10", tmp_path)
    _pickle_with(path, {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Exploit(bytes, 10 ** 12)}, 2)
    with pytest.raises(DatasetError, match="truncated or corrupt pickle.*test_batch"):  # no 1 TB allocation
        load_dataset("cifar10", tmp_path)
    _pickle_with(path, {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"empty": b""}, 2)
    assert load_dataset("cifar10", tmp_path).test_y.tolist() == [0]  # what Python itself writes for b""


# --------------------------------------------------------------------------------------------
# labels and images of CIFAR batches: refused unless exactly right
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, problem",
    [
        ([0, 3.7], "'labels'[1] is the float 3.7, not an integer label"),
        ([0, 3.0], "'labels'[1] is the float 3.0, not an integer label"),  # integral floats are refused too
        ([0, [1]], "'labels'[1] is a list (nested labels)"),
        ([[0], [1]], "'labels'[0] is a list (nested labels)"),
        ([True, False], "'labels'[0] is the boolean True"),
        ([0, "1"], "'labels'[1] is a str"),
        (np.asarray([0.0, 1.0]), "float64 array of shape (2,), not integer labels"),
        (np.asarray([[0], [1]]), "int64 array of shape (2, 1), not a flat list"),
        (np.asarray([True, False]), "bool array"),
        ([0, 2 ** 70], "labels outside [0, 10) (min 0, max 1180591620717411303424)"),
        (np.asarray([0, 2 ** 64 - 1], np.uint64), "labels outside [0, 10) (min 0, max 18446744073709551615)"),
        ([0, -1], "labels outside"),
        ([0, 1, 2], "3 labels for 2 images"),
        (b"\x00\x01", "'labels' is a bytes of length 2"),
        ({0: 1}, "'labels' is a dict"),
    ],
)
def test_cifar_label_problems_one_line_naming_file(tmp_path, labels, problem):
    write_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "data_batch_4", {b"data": np.zeros((2, 3072), np.uint8),
                                                               b"labels": labels})
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", tmp_path)
    message = _one_line(exc)
    assert problem in message and "data_batch_4" in message


@pytest.mark.parametrize(
    "data, problem",
    [
        (np.zeros((2, 3072), np.float32), "float32"),
        (np.zeros((2, 3072), np.int16), "int16"),
        (np.zeros((2, 32, 32, 3), np.uint8), "(2, 32, 32, 3)"),
        (np.zeros(3072, np.uint8), "(3072,)"),
        (np.zeros((0, 3072), np.uint8), "no images"),
        ([[0] * 3072] * 2, "'data' is a list"),
        (b"\x00" * 6144, "'data' is a bytes"),
        (np.asarray([None, None], dtype=object), "object"),
    ],
)
def test_cifar_image_problems_one_line_naming_file(tmp_path, data, problem):
    write_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": data, b"labels": []})
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", tmp_path)
    assert problem in _one_line(exc) and "test_batch" in str(exc.value)


def test_dataset_error_is_a_config_error():
    from theory.plumbing.config import ConfigError

    err = DatasetError("cifar10: missing x")
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)
    assert err.field == "--data-dir" and str(err) == "cifar10: missing x"


# Hypothesis: whatever the labels or images are, the loader returns them exactly or refuses with one
# DatasetError line naming the file; never another exception, never silently changed labels.

_label_values = st.one_of(
    st.integers(-3, 12), st.integers(-(2 ** 80), 2 ** 80), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), st.text(max_size=3), st.binary(max_size=3),
    st.lists(st.integers(0, 9), max_size=2), st.tuples(st.integers(0, 9)),
)
def _label_strategy():
    def array(draw_dtype_shape):
        dtype, shape = draw_dtype_shape
        return hnp.arrays(dtype=dtype, shape=shape)

    dtypes = st.sampled_from([np.int8, np.uint8, np.int32, np.int64, np.uint64, np.float32, np.float64, np.bool_,
                              np.complex64])
    shapes = hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4)
    return st.one_of(
        st.lists(_label_values, max_size=5),
        st.lists(st.integers(0, 9), min_size=3, max_size=3),  # valid when there are 3 images
        st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(0, 9)),
        st.tuples(dtypes, shapes).flatmap(array),
        hnp.arrays(np.int64, 3, elements=st.integers(-2, 11)),
        _label_values,
    )


def _expected_labels(labels, n: int):
    """The labels the loader must return, or None when it must refuse them."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            return None
        values = [int(v) for v in labels]
    elif isinstance(labels, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            return None
        values = list(labels)
    else:
        return None
    if len(values) != n or not all(0 <= v < 10 for v in values):
        return None
    return values


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(labels=_label_strategy())
def test_hypothesis_cifar_labels(labels):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar10(root, per_batch=1)
        path = root / "cifar-10-batches-py" / "test_batch"
        _pickle(path, {b"data": np.full((3, 3072), 7, np.uint8), b"labels": labels})
        expected = _expected_labels(labels, 3)
        if expected is None:
            with pytest.raises(DatasetError) as exc:
                load_dataset("cifar10", root)
            assert "\n" not in str(exc.value) and str(path) in str(exc.value)
        else:
            assert load_dataset("cifar10", root).test_y.tolist() == expected


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(
    hnp.arrays(dtype=st.sampled_from([np.uint8, np.int8, np.uint16, np.float32, np.bool_]),
               shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3)),
    hnp.arrays(np.uint8, st.tuples(st.integers(0, 3), st.sampled_from([3071, 3072, 3073]))),
))
def test_hypothesis_cifar_images(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar10(root, per_batch=1)
        path = root / "cifar-10-batches-py" / "data_batch_1"
        n = data.shape[0] if data.ndim else 0
        _pickle(path, {b"data": data, b"labels": [0] * n})
        valid = data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072 and n > 0
        if valid:
            ds = load_dataset("cifar10", root)
            assert np.array_equal(ds.train_x.numpy()[:n], data.reshape(-1, 3, 32, 32))
        else:
            with pytest.raises(DatasetError) as exc:
                load_dataset("cifar10", root)
            assert "\n" not in str(exc.value) and str(path) in str(exc.value)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=300))
def test_hypothesis_random_bytes_as_a_pickle(payload):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar10(root, per_batch=1)
        path = root / "cifar-10-batches-py" / "data_batch_3"
        path.write_bytes(payload)
        with pytest.raises(DatasetError) as exc:
            load_dataset("cifar10", root)
        assert "\n" not in str(exc.value) and str(path) in str(exc.value)


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from([2049, 2051, 0, 2 ** 32 - 1]),
       dims=st.lists(st.integers(0, 2 ** 32 - 1), min_size=1, max_size=3),
       body=st.binary(max_size=64), gz=st.booleans())
def test_hypothesis_idx_headers(magic, dims, body, gz):
    """Random idx headers (up to 2**96 announced bytes) and bodies: one line, no allocation of what
    the header announces."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fashion(root, gz=False)
        payload = struct.pack(f">{1 + len(dims)}I", magic, *dims) + body
        target = root / "t10k-labels-idx1-ubyte"
        target.unlink()
        (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(payload)) if gz else target.write_bytes(payload)
        try:
            ds = load_dataset("fashion-mnist", root)
        except ConfigError as err:  # DatasetError, or the memory check (also a ConfigError)
            assert "\n" not in str(err) and ("t10k-labels-idx1-ubyte" in str(err) or err.field == "--data-dir")
        else:
            assert magic == 2049 and len(dims) == 1 and dims[0] == len(body) == 3
            assert ds.test_y.tolist() == list(body)


# --------------------------------------------------------------------------------------------
# memory: checked before allocating
# --------------------------------------------------------------------------------------------


def test_synthetic_huge_sizes_refused_before_allocating():
    from theory.plumbing.config import ConfigError

    with pytest.raises(ConfigError) as exc:
        load_dataset("synthetic", synthetic_train=10 ** 12, synthetic_test=5)
    assert exc.value.field == "--synthetic-train" and "synthetic data set" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_dataset("synthetic", synthetic_train=5, synthetic_test=10 ** 12)
    assert exc.value.field == "--synthetic-test"


def test_synthetic_huge_sizes_through_the_command_line(tmp_path, capsys):
    from real.cli import main

    code = main(["run", "--dataset", "synthetic", "--model", "cnn-small", "--epochs", "1", "--synthetic-train",
                 str(10 ** 12), "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: --synthetic-train:"), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("writer, name", [
    (lambda p: write_cifar10(p), "cifar10"),
    (lambda p: write_stl10(p), "stl10"),
    (lambda p: write_fashion(p, gz=True), "fashion-mnist"),
    (lambda p: write_cinic10(p), "cinic10"),
    (lambda p: write_tinyimagenet(p), "tinyimagenet"),
])
def test_loaded_data_sets_check_memory_first(tmp_path, monkeypatch, writer, name):
    import theory.plumbing.config as config

    writer(tmp_path)
    monkeypatch.setattr(config, "available_memory", lambda: 1000)
    with pytest.raises(config.ConfigError) as exc:
        load_dataset(name, tmp_path)
    assert exc.value.field == "--data-dir" and "1000 bytes is available" in _one_line(exc) and name in str(exc.value)


def test_idx_header_announcing_more_than_memory(tmp_path):
    write_fashion(tmp_path, gz=True)
    huge = struct.pack(">4I", 2051, 2 ** 31, 28, 28) + b"\0" * 100
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(huge))
    from theory.plumbing.config import ConfigError

    with pytest.raises(ConfigError, match="--data-dir: .*train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", tmp_path)


def test_idx_with_more_bytes_than_the_header_says(tmp_path):
    write_fashion(tmp_path, gz=True)
    payload = _idx_bytes(np.zeros(5, np.uint8), 2049) + b"extra"
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(payload))
    with pytest.raises(DatasetError, match="more bytes than the 13 the header says.*train-labels"):
        load_dataset("fashion-mnist", tmp_path)


def test_gzip_with_a_bad_crc_is_refused(tmp_path):
    write_fashion(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # the CRC32 in the trailer
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="corrupt gzip.*t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", tmp_path)


def _reference_synthetic_split(rng, n, colours, patterns, colour_prob=0.8):
    """The synthetic generator drawn in one piece (as it was before chunking)."""
    labels = rng.permutation(np.arange(n) % len(colours)).astype(np.int64)
    has_colour = rng.random(n) < colour_prob
    signal = patterns[labels] + has_colour[:, None, None, None] * colours[labels][:, :, None, None]
    images = 128.0 + signal + rng.normal(0.0, 40.0, size=(n, 3, 32, 32))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels


def test_chunked_synthetic_equals_one_piece():
    import real.datasets as datasets

    rng = _rng(11)
    colours, patterns = rng.normal(0, 40, (10, 3)), rng.normal(0, 30, (10, 3, 32, 32))
    n = 2 * datasets._SYNTHETIC_CHUNK + 17
    x, y = datasets._synthetic_split(np.random.default_rng(4), n, colours, patterns)
    rx, ry = _reference_synthetic_split(np.random.default_rng(4), n, colours, patterns)
    assert np.array_equal(x, rx) and np.array_equal(y, ry)


def test_loaders_read_the_record(tmp_path, monkeypatch):
    """The class count, image shape and folder a loader checks are the record's (DATASETS), not its own."""
    import dataclasses

    import real.datasets as datasets

    write_cifar10(tmp_path)  # labels 0..9
    fewer = dataclasses.replace(DATASETS["cifar10"], num_classes=5)
    monkeypatch.setattr(datasets, "DATASETS", {**DATASETS, "cifar10": fewer})
    with pytest.raises(DatasetError, match=r"labels outside \[0, 5\)"):
        load_dataset("cifar10", tmp_path)
    smaller = dataclasses.replace(DATASETS["cifar10"], shape=(3, 16, 16))
    monkeypatch.setattr(datasets, "DATASETS", {**DATASETS, "cifar10": smaller})
    with pytest.raises(DatasetError, match=r"not \(N, 768\) uint8"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "cifar-10-batches-py").rename(tmp_path / "moved")
    monkeypatch.setattr(datasets, "DATASETS", {**DATASETS, "cifar10": dataclasses.replace(
        DATASETS["cifar10"], folder="moved")})
    assert load_dataset("cifar10", tmp_path).train_x.shape == (15, 3, 32, 32)
    assert set(DATASETS) == {"cifar10", "cifar100", "stl10", "cinic10", "tinyimagenet", "fashion-mnist", "synthetic"}


@pytest.mark.parametrize("images", [np.zeros((2, 3, 8, 8), np.uint8), np.zeros((2, 3, 32, 32), np.float32),
                                    np.zeros((2, 32, 32), np.uint8)])
def test_a_loader_that_breaks_its_record_is_refused(images, tmp_path, monkeypatch):
    """Whatever a loader (a new one included) returns must be uint8 (N, *record.shape): one line, not a crash later."""
    import dataclasses

    import real.datasets as datasets

    labels, good = np.zeros(2, np.int64), np.zeros((2, 3, 32, 32), np.uint8)
    for train, test in ((images, good), (good, images)):
        splits = ((train, labels), (test, labels), 10)
        broken = dataclasses.replace(DATASETS["synthetic"], loader=lambda info, root, splits=splits: splits)
        monkeypatch.setattr(datasets, "DATASETS", {**DATASETS, "synthetic": broken})
        with pytest.raises(DatasetError, match=r"^synthetic: the loader gave images .* not \(N, 3, 32, 32\) uint8$"):
            load_dataset("synthetic", tmp_path)
