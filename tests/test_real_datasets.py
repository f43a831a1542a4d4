"""Loaders of real/datasets.py, on tiny files written here in each data set's distributed format."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
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
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
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
