"""Image-classification data sets: one record each (:data:`DATASETS`) and the loaders that read them.

A :class:`DatasetInfo` holds every fact about a data set (shape, classes, layout, source, files and
MD5s, how it unpacks); the loaders and ``useful-train download`` (:mod:`real.download`) read it, and no
other module of real/ holds those facts.  Nothing is downloaded here.

Data files are untrusted.  Loaders read them as the authors distribute them; anything missing,
truncated or malformed is a :class:`DatasetError`: one line naming the file, the expected layout and
where to get it.  CIFAR pickles go through a restricted unpickler (plain containers, strings, bytes,
numbers, None, numpy arrays and scalars; any other global, ``os.system`` or a class, is refused before
it runs).  Labels must be integers (``3.0`` is refused like ``3.7``) in ``[0, num_classes)``, one per
image.  The memory a load needs (from file sizes, an idx header, an image count) is checked before
allocating (:func:`~theory.plumbing.config.check_allocation`): one line, not an out-of-memory kill.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np
import torch

from theory.plumbing.config import ConfigError, check_allocation

__all__ = ["DATASETS", "Dataset", "DatasetError", "DatasetInfo", "RemoteFile", "default_data_dir",
           "load_dataset", "long_tailed_indices"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 2051, 2049

Split = tuple[np.ndarray, np.ndarray]


class DatasetError(ConfigError):
    """A data set is missing, truncated or malformed: a ConfigError on the flag that chose the files."""

    def __init__(self, message: str, field: str = "--data-dir"):
        super().__init__(field, message=message)


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name (appended to the base address) and its MD5 (None: none published)."""

    filename: str
    md5: str | None


@dataclass(frozen=True)
class DatasetInfo:
    """Everything about one data set, in one place."""

    name: str  # what load_dataset and --dataset take
    loader: Callable[..., tuple[Split, Split, int]] | None  # (info, folder) -> (train, test, classes); None: generated
    shape: tuple[int, int, int]  # image shape (C, H, W)
    num_classes: int | None  # None where the files list them (Tiny-ImageNet's wnids.txt)
    layout: str  # what the loader expects in the folder (error messages)
    where: str  # where the authors publish it (error messages)
    base_url: str = ""  # the folder holding `files` (ends with "/"); --mirror replaces it
    files: tuple[RemoteFile, ...] = ()  # the published files (empty: nothing to download)
    unpack: Literal["tar.gz", "zip", "none"] = "none"  # each file is an archive, or the files are the data
    folder: str = ""  # the data set's folder in --data-dir (also looked for by the loader)
    aliases: tuple[str, ...] = ()  # other folder names the loader looks for
    probe: tuple[str, ...] = ()  # paths the folder must have ("a|b": either; trailing "/": a folder)
    split_sizes: tuple[int, int] | None = None  # published (training, test) image counts a download must have
    checksum_origin: str = ""  # where the MD5s come from

    def __post_init__(self):
        if len(self.shape) != 3 or min(self.shape) < 1 or self.unpack not in ("tar.gz", "zip", "none"):
            raise ValueError(f"{self.name}: bad shape {self.shape} or unpack {self.unpack!r}")
        if self.files and not (self.base_url.endswith("/") and self.folder and self.probe):
            raise ValueError(f"{self.name}: a downloadable data set needs a base_url ending in '/', a folder and "
                             f"a probe")


@dataclass(frozen=True, eq=False)  # tensors have no boolean equality
class Dataset:
    """A data set in memory: uint8 images ``(N, C, H, W)`` (contiguous, CPU), int64 labels in
    ``[0, num_classes)``, and the per-channel mean and std of ``train_x / 255``."""

    name: str  # one of DATASETS
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:  # all supported images are square
        return int(self.train_x.shape[2])


# --- errors, paths and the checks every loader shares ---


def _error(name: str, problem: str, path: Path | str) -> DatasetError:
    """The one-line error ``"<name>: <problem> <path> (expected ...; get it from ...)"``."""
    info = DATASETS[name]
    message = f"{name}: {problem} {path} (expected {info.layout}; get it from {info.where})"
    return DatasetError(" ".join(message.split()))


def _need(name: str, path: Path, folder: bool = False) -> Path:
    """``path`` if it is a file (a folder with ``folder``), else the data set's "missing" error."""
    if not (path.is_dir() if folder else path.is_file()):
        raise _error(name, "missing directory" if folder else "missing", path)
    return path


def _check_memory(name: str, nbytes: int, what: str) -> None:
    check_allocation("--data-dir", nbytes, f"the {name} data set ({what})")


def default_data_dir(name: str) -> Path | None:
    """Debian's ``dataset-fashion-mnist`` folder for ``fashion-mnist`` when it exists, else None."""
    if _canonical(name) == "fashion-mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return DEBIAN_FASHION_MNIST
    return None


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _root(info: DatasetInfo, data_dir: str | Path | None) -> Path:
    """The folder holding the files: ``data_dir/<folder or alias>`` if present, else ``data_dir``."""
    data_dir = default_data_dir(info.name) if data_dir is None else data_dir
    if data_dir is None:
        raise _error(info.name, "no data_dir given and no default location; pass the directory holding", info.folder)
    path = Path(data_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise _error(info.name, "not a directory:", path)
    _need(info.name, path, folder=True)
    return next((path / sub for sub in (info.folder, *info.aliases) if (path / sub).is_dir()), path)


def _check_split(info: DatasetInfo, x: np.ndarray, y: np.ndarray, where: Path | str) -> Split:
    """Check one split: at least one image, one integer label each, in range (the images' dtype and shape
    are checked by the loader that read them)."""
    if len(x) == 0:
        raise _error(info.name, "no images in", where)
    if y.ndim != 1 or len(y) != len(x):
        raise _error(info.name, f"{y.size} labels for {len(x)} images in", where)
    if y.min() < 0 or y.max() >= info.num_classes:
        raise _error(info.name, f"labels outside [0, {info.num_classes}) (min {y.min()}, max {y.max()}) in", where)
    return x, y


def _describe(value: object) -> str:
    """A short description of a value found where labels or images were expected."""
    if isinstance(value, (bool, np.bool_)):
        return f"the boolean {bool(value)}"
    if isinstance(value, (float, np.floating)):
        return f"the float {float(value)!r}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} (nested labels)"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, (str, bytes)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__}"


def _integer_labels(name: str, raw: object, path: Path, key: str, num_classes: int) -> np.ndarray:
    """int64 labels from a flat list/tuple of integers or a 1-d integer array, else refused.  The range is
    checked on Python integers, before a cast could wrap 2**64 - 1 to -1."""
    if isinstance(raw, np.ndarray):
        if raw.ndim != 1 or raw.dtype.kind not in "iu":
            want = "a flat list of integer labels" if raw.ndim != 1 else "integer labels"
            raise _error(name, f"{key!r} is {_describe(raw)}, not {want}, in", path)
    elif isinstance(raw, (list, tuple)):
        for i, value in enumerate(raw):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise _error(name, f"{key!r}[{i}] is {_describe(value)}, not an integer label, in", path)
    else:
        raise _error(name, f"{key!r} is {_describe(raw)}, not a list of integer labels, in", path)
    low, high = (int(min(raw)), int(max(raw))) if len(raw) else (0, 0)
    if low < 0 or high >= num_classes:
        raise _error(name, f"labels outside [0, {num_classes}) (min {low}, max {high}) in", path)
    return np.asarray(raw, dtype=np.int64)


def _channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of ``x / 255`` (x is never empty) from byte histograms (no float copy)."""
    counts = np.zeros((x.shape[1], 256), dtype=np.int64)
    for start in range(0, len(x), chunk):
        for c in range(x.shape[1]):
            counts[c] += np.bincount(x[start:start + chunk, c].ravel(), minlength=256)
    values, total = np.arange(256, dtype=np.float64) / 255.0, counts.sum(axis=1).astype(np.float64)
    mean = counts @ values / total
    std = np.sqrt(np.maximum(counts @ values**2 / total - mean**2, 0.0))
    return tuple(map(float, mean)), tuple(map(float, std))


# --- CIFAR-10 / CIFAR-100 (python pickles, read by a restricted unpickler) ---


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a global that a data file never needs."""


def _latin1_encode(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode`` as Python's pickler uses it for ``bytes`` at protocols 0-2, and nothing more."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode with other arguments than (str, 'latin1')")
    return text.encode("latin-1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as the pickler uses it for ``b""`` (``bytes(n)``: an allocation the file does not pay for)."""
    if args:
        raise pickle.UnpicklingError("bytes() with arguments")
    return b""


# The globals a data pickle may name: numpy's own reconstructors (resolved from numpy itself, under the
# 1.x and 2.x module names) and the two calls Python's pickler writes for bytes.
_PICKLE_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes, ("__builtin__", "bytes"): _empty_bytes,
    **{(f"{core}.{module}", name): found for core in ("numpy.core", "numpy._core") for module, name, found in (
        ("multiarray", "_reconstruct", np.zeros(1).__reduce__()[0]),
        ("multiarray", "scalar", np.int64(0).__reduce__()[0]),
        ("numeric", "_frombuffer", np.zeros(1).__reduce_ex__(5)[0]))},  # protocol 5
}


class _DataUnpickler(pickle.Unpickler):
    """Refuses any global but :data:`_PICKLE_GLOBALS` (``posix.system``, any class) before it runs."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise _Refused(f"{module}.{name}")
        return _PICKLE_GLOBALS[module, name]


def _unpickle(info: DatasetInfo, path: Path, label_key: str) -> Split:
    """Read one CIFAR pickle: ``data`` uint8 ``(N, C*H*W)`` RGB planes and a flat list of integer labels."""
    name, pixels, path = info.name, math.prod(info.shape), _need(info.name, path)
    try:
        with path.open("rb") as f:
            batch = _DataUnpickler(f, encoding="bytes").load()
    except _Refused as refused:
        raise DatasetError(f"{name}: refusing to load {path}: it asks for {refused}, which a data file never needs "
                           f"(only containers, numbers, strings, bytes and numpy arrays are allowed)") from None
    except Exception as exc:  # any unpickling failure means a truncated or corrupt file
        raise _error(name, f"truncated or corrupt pickle ({type(exc).__name__})", path) from None
    if not isinstance(batch, dict):
        raise _error(name, "pickle is not a dict", path)
    data, labels = (batch.get(key.encode(), batch.get(key)) for key in ("data", label_key))
    if data is None or labels is None:
        raise _error(name, f"pickle lacks key {('data' if data is None else label_key)!r}", path)
    if not isinstance(data, np.ndarray):
        raise _error(name, f"'data' is {_describe(data)}, not a numpy uint8 array, in", path)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        raise _error(name, f"wrong data shape {data.shape} ({data.dtype}), not (N, {pixels}) uint8, in", path)
    labels = _integer_labels(name, labels, path, label_key, info.num_classes)
    return _check_split(info, data.reshape(-1, *info.shape), labels, path)


def _load_cifar(info: DatasetInfo, root: Path, train: tuple[str, ...], test: tuple[str, ...],
                label_key: str) -> tuple[Split, Split, int]:
    total = sum(_need(info.name, root / f).stat().st_size for f in train + test)
    # Unpickling holds the file's bytes and the array built from them; concatenating copies once more.
    _check_memory(info.name, 3 * total, f"reading {total} bytes of pickles in {root}")
    train, test = (tuple(map(np.concatenate, zip(*(_unpickle(info, root / f, label_key) for f in names))))
                   for names in (train, test))
    return train, test, info.num_classes


# --- STL-10 (raw binaries, column-major images, labels 1..10) ---


def _load_stl10(info: DatasetInfo, root: Path) -> tuple[Split, Split, int]:
    paths = [[_need("stl10", root / f"{split}_{xy}.bin") for xy in "Xy"] for split in ("train", "test")]
    total = sum(x_path.stat().st_size for x_path, _ in paths)
    _check_memory("stl10", 2 * total, f"reading {total} bytes of images in {root}")  # the bytes, a transposed copy
    per_image, splits = math.prod(info.shape), []
    for x_path, y_path in paths:
        raw = np.fromfile(x_path, dtype=np.uint8)
        if raw.size == 0 or raw.size % per_image:
            raise _error("stl10", f"truncated file ({raw.size} bytes, not a multiple of {per_image})", x_path)
        # Each channel is stored column-major: reshape, then swap the two spatial axes.
        images = np.ascontiguousarray(raw.reshape(-1, *info.shape).transpose(0, 1, 3, 2))
        labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
        if labels.size == len(images) and (labels.min() < 1 or labels.max() > info.num_classes):
            raise _error("stl10", f"labels outside 1..{info.num_classes} (min {labels.min()}, max {labels.max()}) "
                         f"in", y_path)
        splits.append(_check_split(info, images, labels - 1, y_path))
    return splits[0], splits[1], info.num_classes


# --- image folders (CINIC-10, Tiny-ImageNet), decoded by PIL ---


def _read_images(info: DatasetInfo, paths: list[Path], labels: list[int], where: Path) -> Split:
    """Decode image files (grayscale converted to RGB) in threads into ``(N, C, H, W)`` uint8, with labels."""
    from PIL import Image  # Pillow ships with matplotlib; imported lazily

    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")  # a full decode: truncation surfaces here
        except FileNotFoundError:
            raise _error(info.name, "missing", path) from None
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
            raise _error(info.name, f"truncated or corrupt image ({type(exc).__name__})", path) from None
        if rgb.size != info.shape[:0:-1]:
            raise _error(info.name, f"wrong image size {rgb.size[0]}x{rgb.size[1]}, not {info.shape[2]}x"
                         f"{info.shape[1]}, in", path)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)

    if not paths:
        raise _error(info.name, "no images in", where)
    _check_memory(info.name, len(paths) * math.prod(info.shape),
                  f"decoding {len(paths)} images of {'x'.join(map(str, info.shape))} in {where}")
    out = np.empty((len(paths), *info.shape), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        for i, image in enumerate(pool.map(read, paths)):
            out[i] = image
    return out, np.asarray(labels, dtype=np.int64)


def _class_folders(info: DatasetInfo, split_dir: Path, classes: list[str], sub: str, suffixes: tuple[str, ...]
                   ) -> Split:
    """The images ``split_dir/<class>/<sub>/*<suffix>``, labelled by the class's index in ``classes``."""
    per_class = [sorted(p for p in _need(info.name, split_dir / cls / sub, folder=True).iterdir()
                        if p.is_file() and p.suffix.lower() in suffixes) for cls in classes]
    labels = [label for label, files in enumerate(per_class) for _ in files]
    return _read_images(info, [path for files in per_class for path in files], labels, split_dir)


def _load_cinic10(info: DatasetInfo, root: Path) -> tuple[Split, Split, int]:
    dirs = [_need("cinic10", root / split, folder=True) for split in ("train", "test")]
    classes, found = (sorted(p.name for p in d.iterdir() if p.is_dir()) for d in dirs)
    if len(classes) != info.num_classes:  # the training split's class folders are the classes
        raise _error("cinic10", f"found {len(classes)} class folders, not {info.num_classes}, in", dirs[0])
    if found != classes:
        raise _error("cinic10", f"class folders {found} differ from {classes} in", dirs[1])
    return *(_class_folders(info, d, classes, "", (".png",)) for d in dirs), info.num_classes


def _load_tinyimagenet(info: DatasetInfo, root: Path) -> tuple[Split, Split, int]:
    """Classes from wnids.txt; the test split is val/, labelled by val/val_annotations.txt."""
    path = _need("tinyimagenet", root / "wnids.txt")
    wnids = sorted(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not wnids or len(set(wnids)) != len(wnids):
        raise _error("tinyimagenet", "empty or duplicated class ids in", path)
    train = _class_folders(info, root / "train", wnids, "images", (".jpeg", ".jpg"))
    index, paths, labels = {wnid: i for i, wnid in enumerate(wnids)}, [], []
    path = _need("tinyimagenet", root / "val" / "val_annotations.txt")
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) < 2:
            raise _error("tinyimagenet", f"malformed line {number} (want filename<TAB>wnid...) in", path)
        if fields[1] not in index:
            raise _error("tinyimagenet", f"label {fields[1]!r} on line {number} is not in wnids.txt, in", path)
        paths.append(_need("tinyimagenet", root / "val" / "images" / fields[0]))
        labels.append(index[fields[1]])
    if not paths:
        raise _error("tinyimagenet", "no annotated images in", path)
    return train, _read_images(info, paths, labels, root / "val"), len(wnids)


# --- Fashion-MNIST (idx files, optionally gzipped) ---


def _read_idx(root: Path, stem: str, magic: int, image_dims: list[int]) -> tuple[np.ndarray, Path]:
    """Read the idx file ``stem`` or ``stem.gz``, checking its magic number, dims and byte count.  The body
    is read only up to the size the header announces (plus one byte), after checking the memory it needs."""
    path = root / stem if (root / stem).is_file() else _need("fashion-mnist", root / f"{stem}.gz")
    header_len = 4 * (2 + len(image_dims))  # the magic number, the count, the image dims
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            header = f.read(header_len)
            if len(header) < header_len:
                raise _error("fashion-mnist", f"truncated header ({len(header)} bytes)", path)
            found_magic, *dims = struct.unpack(f">{header_len // 4}I", header)
            if found_magic != magic:
                raise _error("fashion-mnist", f"bad idx magic number {found_magic} (want {magic})", path)
            if dims[1:] != image_dims:
                raise _error("fashion-mnist", f"wrong image dims {dims[1]}x{dims[2]}, not "
                             f"{image_dims[0]}x{image_dims[1]}, in", path)
            body_len = math.prod(dims)  # Python integers: no overflow
            expected = header_len + body_len
            _check_memory("fashion-mnist", 2 * body_len, f"reading the {expected} bytes the header of {path} announces")
            body = f.read(body_len)
            if len(body) < body_len:
                raise _error("fashion-mnist", f"{header_len + len(body)} bytes but the header says {expected}; "
                             f"truncated", path)
            if f.read(1):  # also makes gzip check its trailer (CRC and length)
                raise _error("fashion-mnist", f"more bytes than the {expected} the header says in", path)
    except (OSError, EOFError, zlib.error) as exc:
        raise _error("fashion-mnist", f"truncated or corrupt gzip ({type(exc).__name__})", path) from None
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy(), path


def _load_fashion_mnist(info: DatasetInfo, root: Path) -> tuple[Split, Split, int]:
    splits = []
    for prefix in ("train", "t10k"):
        images, _ = _read_idx(root, f"{prefix}-images-idx3-ubyte", _IDX_IMAGES_MAGIC, list(info.shape[1:]))
        labels, label_path = _read_idx(root, f"{prefix}-labels-idx1-ubyte", _IDX_LABELS_MAGIC, [])
        splits.append(_check_split(info, images[:, None], labels.astype(np.int64), label_path))
    return splits[0], splits[1], info.num_classes


# --- synthetic (generated from the seed) ---


_SYNTHETIC_CHUNK = 1024  # images whose float64 temporaries (5 arrays) exist at once


def _synthetic_split(rng: np.random.Generator, n: int, colours: np.ndarray,
                     patterns: np.ndarray, colour_prob: float = 0.8) -> Split:
    """Balanced labels; every image carries its class's pattern, most also its class's colour.  The noise is
    drawn chunk by chunk (the same stream as one whole draw), so the float64 temporaries stay small."""
    labels = rng.permutation(np.arange(n) % len(colours)).astype(np.int64)
    has_colour = rng.random(n) < colour_prob
    images = np.empty((n, *patterns.shape[1:]), dtype=np.uint8)
    for start in range(0, n, _SYNTHETIC_CHUNK):
        part = slice(start, min(n, start + _SYNTHETIC_CHUNK))
        signal = patterns[labels[part]] + has_colour[part, None, None, None] * colours[labels[part]][:, :, None, None]
        images[part] = np.clip(np.rint(128.0 + signal + rng.normal(0.0, 40.0, size=signal.shape)), 0, 255)
    return images, labels


def _load_synthetic(info: DatasetInfo, seed: int, n_train: int, n_test: int) -> tuple[Split, Split, int]:
    """Per class an oriented stripe pattern (all images) and a colour shift (80 % of them, the fast-learnable
    cue), plus Gaussian pixel noise."""
    if n_train < 1 or n_test < 1:
        raise DatasetError(f"synthetic: sizes must be >= 1, got train={n_train}, test={n_test}",
                           field="--synthetic-train" if n_train < 1 else "--synthetic-test")
    flag = "--synthetic-train" if n_train >= n_test else "--synthetic-test"  # the flag asking for more
    (channels, height, width), k, pixels = info.shape, info.num_classes, math.prod(info.shape)
    # Per image: the pixels, the label, the permutation, the colour mask; plus one chunk of temporaries.
    check_allocation(flag, (n_train + n_test) * (pixels + 33) + 5 * 8 * pixels * _SYNTHETIC_CHUNK,
                     f"the synthetic data set ({n_train} training + {n_test} test images of "
                     f"{channels}x{height}x{width})")
    template_rng, train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    colours = template_rng.normal(0.0, 40.0, size=(k, channels))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    angles = (np.arange(k) * np.pi / k + template_rng.uniform(0, np.pi / k))[:, None, None]
    freqs = template_rng.uniform(0.3, 0.8, size=k)[:, None, None]
    phases = template_rng.uniform(0, 2 * np.pi, size=k)[:, None, None]
    waves = np.sin(freqs * (np.cos(angles) * xx + np.sin(angles) * yy) + phases)
    patterns = 30.0 * waves[:, None] * np.ones((1, channels, 1, 1))
    return (_synthetic_split(train_rng, n_train, colours, patterns),
            _synthetic_split(test_rng, n_test, colours, patterns), k)


# --- the data sets ---

_KRIZ = "https://www.cs.toronto.edu/~kriz/"

DATASETS: Mapping[str, DatasetInfo] = MappingProxyType({info.name: info for info in (
    DatasetInfo(
        "cifar10", partial(_load_cifar, train=tuple(f"data_batch_{i}" for i in range(1, 6)), test=("test_batch",),
                           label_key="labels"), (3, 32, 32), 10,
        "the python version of CIFAR-10: cifar-10-batches-py/data_batch_1..5 and test_batch", _KRIZ + "cifar.html",
        _KRIZ, (RemoteFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),), "tar.gz",
        "cifar-10-batches-py", (), ("data_batch_1", "test_batch"), (50000, 10000),
        "published on the CIFAR page; the same value is torchvision's CIFAR10.tgz_md5"),
    DatasetInfo(
        "cifar100", partial(_load_cifar, train=("train",), test=("test",), label_key="fine_labels"), (3, 32, 32), 100,
        "the python version of CIFAR-100: cifar-100-python/train and test (fine labels)", _KRIZ + "cifar.html",
        _KRIZ, (RemoteFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),), "tar.gz",
        "cifar-100-python", (), ("train", "test"), (50000, 10000),
        "published on the CIFAR page; the same value is torchvision's CIFAR100.tgz_md5"),
    # The authors' page (cs.stanford.edu/~acoates/stl10/) links the archive on ai.stanford.edu, the address
    # torchvision and Hugging Face datasets record with this MD5.
    DatasetInfo(
        "stl10", _load_stl10, (3, 96, 96), 10,
        "the binary version of STL-10: stl10_binary/train_X.bin, train_y.bin, test_X.bin, test_y.bin",
        "https://cs.stanford.edu/~acoates/stl10/", "http://ai.stanford.edu/~acoates/stl10/",
        (RemoteFile("stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb"),), "tar.gz", "stl10_binary", (),
        ("train_X.bin", "test_X.bin"), (5000, 8000), "torchvision's STL10.tgz_md5 (the STL-10 page publishes none)"),
    DatasetInfo(
        "cinic10", _load_cinic10, (3, 32, 32), 10,
        "CINIC-10 image folders: train/<class>/*.png and test/<class>/*.png, 10 classes (valid/ unused)",
        "https://github.com/BayesWatch/cinic-10", "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/",
        (RemoteFile("CINIC-10.tar.gz", None),), "tar.gz", "CINIC-10", ("cinic-10", "cinic10"), ("train/", "test/"),
        (90000, 90000), "none published (neither the DataShare item nor github.com/BayesWatch/cinic-10 gives one): "
        "the transfer length, the gzip CRC and the unpacked structure are checked, the content is not"),
    DatasetInfo(
        "tinyimagenet", _load_tinyimagenet, (3, 64, 64), None,
        "tiny-imagenet-200/ with wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
        "val/val_annotations.txt (the validation split is the test split)",
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "http://cs231n.stanford.edu/",
        (RemoteFile("tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de"),), "zip", "tiny-imagenet-200", (),
        ("wnids.txt", "val/val_annotations.txt"), (100000, 10000),
        "not published by CS231n; the value the common loaders record (e.g. Avalanche's TinyImagenet.md5)"),
    DatasetInfo(
        "fashion-mnist", _load_fashion_mnist, (1, 28, 28), 10,
        "Fashion-MNIST idx files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (optionally .gz)",
        "https://github.com/zalandoresearch/fashion-mnist or `apt-get install dataset-fashion-mnist`",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        (RemoteFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
         RemoteFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
         RemoteFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
         RemoteFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")), "none", "fashion-mnist",
        ("FashionMNIST/raw",),
        ("train-images-idx3-ubyte.gz|train-images-idx3-ubyte", "t10k-labels-idx1-ubyte.gz|t10k-labels-idx1-ubyte"),
        (60000, 10000), "the table of the Fashion-MNIST README; the same values are torchvision's"),
    DatasetInfo("synthetic", None, (3, 32, 32), 10, "nothing (generated in memory from the seed)", "nowhere"),
)})
"""The data sets by name (read-only): what ``--dataset`` accepts, the loaders and ``download`` read."""


def load_dataset(name: str, data_dir: str | Path | None = None, *, seed: int = 0,
                 synthetic_train: int = 512, synthetic_test: int = 256,
                 long_tail_ratio: float | None = None) -> Dataset:
    """Load the data set ``name`` (one of :data:`DATASETS`; case-insensitive, ``_`` for ``-``) as uint8 tensors.

    ``data_dir``: its folder or the folder's parent (None: :func:`default_data_dir`).  ``seed`` seeds the
    synthetic data and the long-tailed training subset that ``long_tail_ratio`` (:func:`long_tailed_indices`)
    keeps."""
    key = _canonical(name)
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    info = DATASETS[key]
    (train_x, train_y), test, num_classes = (_load_synthetic(info, seed, synthetic_train, synthetic_test)
                                             if info.loader is None else info.loader(info, _root(info, data_dir)))
    for x in (train_x, test[0]):  # every loader's contract (a new one's too: docs/architecture.md, "Where to add")
        if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != info.shape:
            raise DatasetError(f"{key}: the loader gave images {x.shape} ({x.dtype}), not (N, "
                               f"{', '.join(map(str, info.shape))}) uint8")
    if long_tail_ratio is not None:
        keep = long_tailed_indices(train_y, long_tail_ratio, seed)
        train_x, train_y = train_x[keep], train_y[keep]
    as_tensor = lambda a, dtype: torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))
    return Dataset(key, as_tensor(train_x, np.uint8), as_tensor(train_y, np.int64), as_tensor(test[0], np.uint8),
                   as_tensor(test[1], np.int64), num_classes, *_channel_stats(train_x))


def long_tailed_indices(labels: np.ndarray, imbalance_ratio: float, seed: int) -> np.ndarray:
    """Sorted int64 indices into ``labels`` (1-d, integers >= 0) of a CIFAR-LT style long-tailed subset: class
    ``c`` of ``C`` keeps ``floor(n_max * imbalance_ratio ** (-c / (C - 1)))`` examples (at least 1, at most
    the ones it has), chosen uniformly at random without replacement with ``seed``."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-d integer array, got {labels.dtype} with shape {labels.shape}")
    if not np.isfinite(imbalance_ratio) or imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1 (n_max / n_min), got {imbalance_ratio}")
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got min {labels.min()}")
    num_classes = int(labels.max()) + 1
    n_max, rng, kept = int(np.bincount(labels).max()), np.random.default_rng(seed), []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        exponent = -c / (num_classes - 1) if num_classes > 1 else 0.0
        take = min(max(1, int(np.floor(n_max * imbalance_ratio**exponent + 1e-9))), members.size)
        kept.append(rng.choice(members, size=take, replace=False) if take < members.size else members)
    return np.sort(np.concatenate(kept)).astype(np.int64)
