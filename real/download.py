"""``useful-train download DATASET --data-dir DIR [--mirror URL]``: fetch a data set, verify it, unpack it.

Only this command (and :func:`ensure_dataset`, which the trainer calls when asked to) ever touches the
network; the loaders of :mod:`real.datasets` never do.

What happens, in order (every failure is one line: exit 2 for bad input or a bad file, exit 1 when the
network or the disk fails):

1. ``DIR/<folder>`` (or ``DIR`` itself) already holds the data set: if useful-train installed it
   (it carries ``.useful-download.json``) and its files are unchanged, or if the loader accepts it, say
   so and do nothing.  A folder that is not ours is never modified, whatever it holds.
2. Each archive is downloaded into ``DIR/.useful-download/<file>.part`` with HTTP Range requests, so an
   interrupted download resumes where it stopped (a server that ignores Range restarts from the
   beginning), with a timeout, a bounded number of retries with exponential backoff, and a progress bar
   on a terminal.  An archive the user put at ``DIR/<file>`` is used instead (and left in place).
3. The archive's published MD5 is checked before anything is unpacked.  A mismatch removes the download
   and stops with one line naming the file and both checksums.
4. The archive is unpacked into a temporary folder inside ``DIR/.useful-download/``.  Every member is
   checked first: absolute paths, ``..``, symbolic and hard links, devices and FIFOs are refused (one
   line naming the member); tar members then go through :mod:`tarfile`'s ``"data"`` filter where this
   Python has it.
5. The loader of :mod:`real.datasets` must accept the unpacked folder (and the split sizes must be the
   published ones); then it gets ``.useful-download.json`` and is renamed into ``DIR/<folder>`` in one
   step.  A killed unpack therefore leaves no half data set in ``DIR`` (its temporary folder is removed
   by the next run), and only a verified, complete folder ever appears.

Sources (:data:`SOURCES`; ``--mirror URL`` replaces the base address, file names stay):

==============  ==============================================================  ===================
data set        archive(s) and where the checksum comes from                    folder in DIR
==============  ==============================================================  ===================
cifar10         cifar-10-python.tar.gz, MD5 on the CIFAR page and in torchvision  cifar-10-batches-py
cifar100        cifar-100-python.tar.gz, MD5 on the CIFAR page and in torchvision cifar-100-python
stl10           stl10_binary.tar.gz, MD5 recorded by torchvision                  stl10_binary
cinic10         CINIC-10.tar.gz, no published checksum (size and structure only)  CINIC-10
tinyimagenet    tiny-imagenet-200.zip, MD5 recorded by common loaders             tiny-imagenet-200
fashion-mnist   four idx .gz files, MD5s in the Fashion-MNIST README/torchvision fashion-mnist
==============  ==============================================================  ===================
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import hashlib
import http.client
import json
import logging
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from theory.plumbing.cli import EnvironmentFailure
from theory.plumbing.config import ConfigError, check_int, check_number

__all__ = ["MARKER", "SOURCES", "RemoteFile", "Source", "ensure_dataset", "register_commands"]

log = logging.getLogger(__name__)

MARKER = ".useful-download.json"
"""File written into every data set folder this module installs (what, from where, which checksums)."""

_WORK = ".useful-download"  # DIR/.useful-download: .part files, verified archives, temporary unpacks
_CHUNK = 1 << 20
_TAR_DATA_FILTER = hasattr(tarfile, "data_filter")  # Python >= 3.12, and 3.8.17 / 3.9.17 / 3.10.12 / 3.11.4


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source: its name (appended to the base address) and its published MD5.

    ``md5`` is None when the authors publish no checksum (then only the transfer length, the archive's
    own CRCs and the unpacked structure are checked, and the command says so)."""

    filename: str
    md5: str | None


@dataclass(frozen=True)
class Source:
    """Where a data set comes from and what it must look like once unpacked.

    Attributes
    ----------
    dataset : name as :func:`real.datasets.load_dataset` knows it.
    base_url : address of the folder holding ``files`` (ends with ``/``); ``--mirror`` replaces it.
    files : the files to fetch, with their checksums.
    unpack : ``"tar.gz"``, ``"zip"`` (each file is an archive) or ``"none"`` (the files are the data).
    folder : the folder the data set gets in ``DIR``.
    probe : relative paths that must all exist in the data set's folder (``a|b``: either; a trailing
        ``/``: a folder, else a file); used to find the folder in an archive and in ``DIR``.
    split_sizes : published ``(training, test)`` image counts the unpacked data must have (None: any).
    checksum_origin : where the checksums come from (documentation and the command's output).
    """

    dataset: str
    base_url: str
    files: tuple[RemoteFile, ...]
    unpack: Literal["tar.gz", "zip", "none"]
    folder: str
    probe: tuple[str, ...]
    split_sizes: tuple[int, int] | None
    checksum_origin: str


SOURCES: Mapping[str, Source] = MappingProxyType({
    "cifar10": Source(
        "cifar10", "https://www.cs.toronto.edu/~kriz/",
        (RemoteFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        "tar.gz", "cifar-10-batches-py", ("data_batch_1", "test_batch"), (50000, 10000),
        "published on https://www.cs.toronto.edu/~kriz/cifar.html; the same value is torchvision's "
        "CIFAR10.tgz_md5"),
    "cifar100": Source(
        "cifar100", "https://www.cs.toronto.edu/~kriz/",
        (RemoteFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        "tar.gz", "cifar-100-python", ("train", "test"), (50000, 10000),
        "published on https://www.cs.toronto.edu/~kriz/cifar.html; the same value is torchvision's "
        "CIFAR100.tgz_md5"),
    "stl10": Source(
        "stl10", "https://ai.stanford.edu/~acoates/stl10/",
        (RemoteFile("stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb"),),
        "tar.gz", "stl10_binary", ("train_X.bin", "test_X.bin"), (5000, 8000),
        "torchvision's STL10.tgz_md5 (the STL-10 page publishes none)"),
    "cinic10": Source(
        "cinic10", "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/",
        (RemoteFile("CINIC-10.tar.gz", None),),
        "tar.gz", "CINIC-10", ("train/", "test/"), (90000, 90000),
        "none published (neither the DataShare item nor github.com/BayesWatch/cinic-10 gives one): the "
        "transfer length, the gzip CRC and the unpacked structure (90,000 training and 90,000 test "
        "images) are checked, the content is not"),
    "tinyimagenet": Source(
        "tinyimagenet", "http://cs231n.stanford.edu/",
        (RemoteFile("tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de"),),
        "zip", "tiny-imagenet-200", ("wnids.txt", "val/val_annotations.txt"), (100000, 10000),
        "not published by CS231n; the value recorded by the common Tiny-ImageNet loaders (e.g. "
        "Avalanche's TinyImagenet.md5)"),
    "fashion-mnist": Source(
        "fashion-mnist", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        (RemoteFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
         RemoteFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
         RemoteFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
         RemoteFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")),
        "none", "fashion-mnist",
        ("train-images-idx3-ubyte.gz|train-images-idx3-ubyte", "t10k-labels-idx1-ubyte.gz|t10k-labels-idx1-ubyte"),
        (60000, 10000),
        "published in the table of https://github.com/zalandoresearch/fashion-mnist (README); the same "
        "values are torchvision's FashionMNIST.resources"),
})
"""The published sources (read-only).  Tests and other callers pass their own mapping to
:func:`ensure_dataset` (``sources=``) instead of changing this one."""


@dataclass(frozen=True)
class Installed:
    """What :func:`ensure_dataset` found or did: the folder, and one of ``"installed"`` (downloaded
    and unpacked now), ``"present"`` (installed earlier by useful-train, unchanged), ``"accepted"``
    (a folder useful-train did not make, which the loader accepts; left as is) or ``"debian"``
    (Debian's ``dataset-fashion-mnist`` package)."""

    path: Path
    status: Literal["installed", "present", "accepted", "debian"]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Net:
    timeout: float
    retries: int
    backoff: float
    progress: bool
    mirror: str | None


class _Retry(Exception):
    """A transfer failed in a way another attempt may fix (connection cut, timeout, HTTP 5xx)."""


# ----------------------------------------------------------------------------------------------
# public entry point


def ensure_dataset(name: str, data_dir: str | os.PathLike | None, *, mirror: str | None = None,
                   sources: Mapping[str, Source] | None = None, timeout: float = 60.0, retries: int = 5,
                   backoff: float = 1.0, progress: bool | None = None) -> Path:
    """Make sure ``data_dir`` holds the data set ``name``, downloading it if needed; return its folder.

    Nothing happens when the data set is already there (installed earlier by useful-train and unchanged,
    or a folder the loader accepts); a folder that useful-train did not make is never modified.
    Otherwise the archives are downloaded (resuming an interrupted download), their published checksums
    verified, unpacked into a temporary folder inside ``data_dir``, checked with
    :func:`real.datasets.load_dataset`, and renamed into place in one step.

    Parameters
    ----------
    name : a data set of ``sources`` (``cifar10``, ``cifar100``, ``stl10``, ``cinic10``,
        ``tinyimagenet``, ``fashion-mnist``).
    data_dir : the folder to put it in (created if missing), the same ``--data-dir`` that training
        takes.  None is allowed only for ``fashion-mnist`` when Debian's ``dataset-fashion-mnist``
        package is installed.
    mirror : base address replacing the source's (``http://`` or ``https://``); file names stay.
    sources : the registry to use (default :data:`SOURCES`).
    timeout : seconds a connection or a read may stall.
    retries : attempts after a failure that received nothing, each after ``backoff * 2**k`` seconds
        (an attempt that received data resets the count).
    backoff : first waiting time in seconds.
    progress : show a progress bar on stderr; None: only when stderr is a terminal.

    Returns
    -------
    Path
        The data set's folder; ``load_dataset(name, path)`` (and ``load_dataset(name, data_dir)``) load it.

    Raises
    ------
    ConfigError
        Bad input (unknown name, bad ``mirror``, a file that is not a folder), a checksum mismatch, an
        unsafe archive member, or a data set the loader rejects (a :class:`~real.datasets.DatasetError`);
        one line each.
    EnvironmentFailure
        The network or the disk failed (after the retries); a partial download is kept for the next run.
    """
    return _ensure(name, data_dir, mirror=mirror, sources=sources, timeout=timeout, retries=retries,
                   backoff=backoff, progress=progress).path


def _ensure(name: str, data_dir: str | os.PathLike | None, *, mirror: str | None = None,
            sources: Mapping[str, Source] | None = None, timeout: float = 60.0, retries: int = 5,
            backoff: float = 1.0, progress: bool | None = None) -> Installed:
    registry = SOURCES if sources is None else sources
    key = name.strip().lower().replace("_", "-")
    if key not in registry:
        raise ConfigError("dataset", message=f"download: unknown data set {name!r}; choose one of: "
                                             f"{', '.join(sorted(registry))}")
    source = registry[key]
    check_number("--timeout", timeout, low=0.0, low_open=True)
    check_int("--retries", retries, low=0)
    check_number("--backoff", backoff, low=0.0)
    base = _base_url(mirror) if mirror is not None else source.base_url
    if data_dir is None:
        from .datasets import default_data_dir

        debian = default_data_dir(key) if key == "fashion-mnist" else None
        if debian is not None:
            return Installed(debian, "debian", ("Debian's dataset-fashion-mnist package",))
        raise ConfigError("--data-dir", message=f"--data-dir: needed to download {key} (the folder to put it in)")
    if not str(data_dir).strip():
        raise ConfigError("--data-dir", message="--data-dir: got '', expected a folder")
    root = Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError("--data-dir", message=f"--data-dir: {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    net = _Net(float(timeout), int(retries), float(backoff),
               sys.stderr.isatty() if progress is None else bool(progress), mirror)
    with _locked(root):
        found = _present(source, root)
        if found is not None:
            return found
        return _install(source, root, base, net)


# ----------------------------------------------------------------------------------------------
# what is there already


def _probe(folder: Path, source: Source) -> bool:
    """Whether ``folder`` has every path of ``source.probe``."""
    for entry in source.probe:
        ok = False
        for alternative in entry.split("|"):
            path = folder / alternative.rstrip("/")
            ok = ok or (path.is_dir() if alternative.endswith("/") else path.is_file())
        if not ok:
            return False
    return True


def _inventory(folder: Path) -> tuple[int, int]:
    """Number of regular files under ``folder`` (the marker excluded) and their total size."""
    count = total = 0
    for parent, _dirs, files in os.walk(folder):
        for file in files:
            path = Path(parent) / file
            if path.parent == folder and file == MARKER:
                continue
            count += 1
            total += path.lstat().st_size
    return count, total


def _present(source: Source, root: Path) -> Installed | None:
    """The data set already in ``root/<folder>`` or in ``root`` itself, or None when there is none.

    A folder useful-train made (it has :data:`MARKER`) must be unchanged; any other folder must be
    accepted by the loader.  A folder that is neither is refused, never modified (an empty
    ``root/<folder>`` is removed: there is nothing in it to lose)."""
    from .datasets import DatasetError, load_dataset

    target = root / source.folder
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    for folder in (target, root):
        if folder == root and not ((root / MARKER).is_file() or _probe(root, source)):
            continue
        if not folder.exists():
            continue
        if folder.is_symlink() or not folder.is_dir():
            raise DatasetError(f"{source.dataset}: {folder} exists and is not a folder; it is left as is: move it "
                               f"away or choose another --data-dir")
        marker = folder / MARKER
        if marker.is_file():
            try:
                record = json.loads(marker.read_text())
                expected = (int(record["files"]), int(record["bytes"]))
                same_dataset = record["dataset"] == source.dataset
            except (ValueError, KeyError, TypeError, OSError):
                raise DatasetError(f"{source.dataset}: {marker} is unreadable; remove {folder} and download "
                                   f"again") from None
            if not same_dataset:
                raise DatasetError(f"{source.dataset}: {folder} holds {record['dataset']!r} (see {marker}); "
                                   f"choose another --data-dir")
            found = _inventory(folder)
            if found != expected:
                raise DatasetError(f"{source.dataset}: {folder} was installed by useful-train with {expected[0]} "
                                   f"files ({expected[1]} bytes) but now has {found[0]} files ({found[1]} bytes); "
                                   f"it is left as is: remove it and download again")
            log.info("%s is already in %s (installed by useful-train, unchanged)", source.dataset, folder)
            return Installed(folder, "present")
        log.info("%s: checking %s with the loader", source.dataset, folder)
        try:
            load_dataset(source.dataset, folder)
        except DatasetError as err:
            raise DatasetError(f"{source.dataset}: {folder} exists but is not a valid data set ({err}); it was not "
                               f"made by useful-train, so it is left as is: move it away or choose another "
                               f"--data-dir") from None
        log.info("%s is already in %s (the loader accepts it)", source.dataset, folder)
        return Installed(folder, "accepted")
    return None


@contextlib.contextmanager
def _locked(root: Path):
    """Hold an exclusive lock on ``root`` (flock on the folder) so two downloads never interleave."""
    import fcntl

    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another download into %s to finish", root)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------------------------
# installing


def _install(source: Source, root: Path, base: str, net: _Net) -> Installed:
    from .datasets import DatasetError

    work = root / _WORK
    work.mkdir(exist_ok=True)
    for stale in work.glob("unpack-*"):  # left by a killed run; we hold the lock, so none is in use
        log.info("removing %s, left by an interrupted run", stale)
        shutil.rmtree(stale, ignore_errors=True)
    notes: list[str] = []
    tmp = None
    copies: list[tuple[Path, bool]] = []
    try:
        for remote in source.files:
            copies.append(_obtain(source, remote, root, work, base, net, notes))
        tmp = Path(tempfile.mkdtemp(prefix="unpack-", dir=work))
        staging = tmp / "staging"
        staging.mkdir()
        for (path, ours), remote in zip(copies, source.files):
            if source.unpack == "none":
                (os.replace if ours else shutil.copyfile)(path, staging / remote.filename)
            else:
                log.info("unpacking %s", path.name)
                try:
                    _unpack(source, path, staging, root)
                except _CorruptArchive as err:
                    raise DatasetError(f"{source.dataset}: {path.name} is not a valid {source.unpack} archive "
                                       f"({err}); nothing was installed") from None
        folder = _find_folder(staging, source)
        if folder is None:
            raise DatasetError(f"{source.dataset}: the unpacked files do not have the expected layout "
                               f"({', '.join(source.probe)} in one folder); nothing was installed")
        _check_loads(source, folder)
        count, total = _inventory(folder)
        from theory.plumbing.atomic import atomic_write_json

        atomic_write_json(folder / MARKER, {
            "dataset": source.dataset,
            "sources": [{"file": r.filename, "md5": r.md5,
                         "from": base + urllib.parse.quote(r.filename) if ours else f"{path} (put there by the user)"}
                        for (path, ours), r in zip(copies, source.files)],
            "checksum_origin": source.checksum_origin,
            "files": count,
            "bytes": total,
            "installed": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
        target = root / source.folder
        if target.exists() or target.is_symlink():
            raise DatasetError(f"{source.dataset}: {target} appeared while unpacking; it is left as is and "
                               f"nothing was installed")
        os.rename(folder, target)
        _fsync_dir(root)
        for (path, ours), _ in zip(copies, source.files):
            if ours:
                path.unlink(missing_ok=True)
        log.info("%s installed in %s", source.dataset, target)
        return Installed(target, "installed", tuple(notes))
    except DatasetError:
        # The archives cannot give a valid data set (an unsafe member, a corrupt archive, a layout the
        # loader rejects): keeping the downloads would only make the next run fail the same way.
        for path, ours in copies:
            if ours:
                path.unlink(missing_ok=True)
        raise
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise EnvironmentFailure(f"{source.dataset}: not enough disk space in {root} "
                                     f"({err.filename or ''}); the partial unpack was removed") from None
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.rmdir()  # only when empty: a .part kept for resuming stays


def _find_folder(staging: Path, source: Source) -> Path | None:
    """The unpacked data set: ``staging/<folder>``, ``staging`` itself, or its only subfolder."""
    candidates = [staging / source.folder, staging]
    subfolders = [p for p in staging.iterdir() if p.is_dir() and not p.is_symlink()]
    if len(subfolders) == 1:
        candidates.append(subfolders[0])
    return next((c for c in candidates if c.is_dir() and _probe(c, source)), None)


def _check_loads(source: Source, folder: Path) -> None:
    """The loader must accept the unpacked folder, with the published split sizes."""
    from .datasets import DatasetError, load_dataset

    log.info("%s: checking the unpacked files with the loader", source.dataset)
    try:
        ds = load_dataset(source.dataset, folder)
    except DatasetError as err:
        raise DatasetError(f"{source.dataset}: the unpacked archive is not a valid data set ({err}); nothing "
                           f"was installed") from None
    sizes = (int(ds.train_x.shape[0]), int(ds.test_x.shape[0]))
    del ds
    if source.split_sizes is not None and sizes != tuple(source.split_sizes):
        raise DatasetError(f"{source.dataset}: the unpacked archive holds {sizes[0]} training and {sizes[1]} test "
                           f"images, not the published {source.split_sizes[0]} and {source.split_sizes[1]}; "
                           f"nothing was installed")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------------------------
# downloading


def _base_url(mirror: str) -> str:
    parsed = urllib.parse.urlsplit(mirror.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment:
        raise ConfigError("--mirror", message=f"--mirror: got {mirror!r}, expected an http:// or https:// address "
                                              f"of the folder holding the archives")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/") + "/", "", ""))


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksum_error(source: Source, remote: RemoteFile, which: str, found: str, what: str):
    from .datasets import DatasetError

    return DatasetError(f"{source.dataset}: checksum mismatch for {which}: its MD5 is {found}, the published MD5 "
                        f"of {remote.filename} is {remote.md5}; {what}")


def _obtain(source: Source, remote: RemoteFile, root: Path, work: Path, base: str, net: _Net,
            notes: list[str]) -> tuple[Path, bool]:
    """A verified local copy of ``remote`` and whether it is ours (to move or delete afterwards)."""
    user_copy = root / remote.filename
    if user_copy.is_file():
        if remote.md5 is not None:
            found = _md5(user_copy)
            if found != remote.md5:
                raise _checksum_error(source, remote, str(user_copy), found,
                                      "this file was not downloaded by useful-train, so it is left as is: move it "
                                      "away to download a fresh copy")
            notes.append(f"{remote.filename}: MD5 {found} ({source.checksum_origin})")
        else:
            notes.append(f"{remote.filename}: nothing (no published checksum); only the unpacked structure is checked")
        log.info("using %s, which is already there", user_copy)
        return user_copy, False
    done = work / remote.filename
    if done.is_file():
        if remote.md5 is None or _md5(done) == remote.md5:
            notes.append(f"{remote.filename}: MD5 {remote.md5} ({source.checksum_origin})" if remote.md5 else
                         f"{remote.filename}: nothing (no published checksum); only the unpacked structure is checked")
            return done, True
        log.warning("%s no longer matches its checksum; downloading it again", done)
        done.unlink()
    url = base + urllib.parse.quote(remote.filename)
    part = work / (remote.filename + ".part")
    resumed = _fetch(url, part, net)
    if remote.md5 is not None:
        found = _md5(part)
        if found != remote.md5 and resumed:
            log.warning("%s does not match its checksum after resuming an earlier partial download; downloading "
                        "it again from the beginning", remote.filename)
            part.unlink()
            _fetch(url, part, net)
            found = _md5(part)
        if found != remote.md5:
            part.unlink()
            raise _checksum_error(source, remote, f"{remote.filename} downloaded from {url}", found,
                                  f"the download was removed (run the command again; if this repeats, the "
                                  f"server{' (--mirror)' if net.mirror else ''} serves a different file)")
        notes.append(f"{remote.filename}: MD5 {found} ({source.checksum_origin})")
    else:
        log.warning("%s: %s has no published checksum; checking only the transfer length and the unpacked "
                    "structure", source.dataset, remote.filename)
        notes.append(f"{remote.filename}: no published checksum, so only the transfer length, the archive's "
                     f"CRCs and the unpacked structure")
    os.replace(part, done)
    return done, True


def _fetch(url: str, part: Path, net: _Net) -> bool:
    """Download ``url`` into ``part``, resuming from its current length; returns whether it resumed."""
    resumed = part.is_file() and part.stat().st_size > 0
    if resumed:
        log.info("resuming %s from byte %d", url, part.stat().st_size)
    else:
        log.info("downloading %s", url)
    failures = 0
    while True:
        before = part.stat().st_size if part.is_file() else 0
        try:
            _fetch_once(url, part, before, net)
            return resumed
        except _Retry as exc:
            after = part.stat().st_size if part.is_file() else 0
            failures = 0 if after > before else failures + 1
            if failures > net.retries:
                kept = f"; {part} is kept, run the command again to resume" if after else ""
                raise EnvironmentFailure(f"download of {url} failed after {net.retries + 1} attempts without "
                                         f"progress: {exc}{kept}") from None
            delay = net.backoff * 2 ** (failures - 1) if failures else 0.0
            log.warning("download of %s interrupted (%s); retrying%s", url, exc,
                        f" in {delay:g} s" if delay else "")
            time.sleep(min(delay, 300.0))


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` of a ``Content-Range: bytes START-END/TOTAL`` header (None where unknown)."""
    if not value or not value.startswith("bytes "):
        return None, None
    spec, _, total = value[6:].partition("/")
    start = spec.split("-", 1)[0]
    return (int(start) if start.isdigit() else None), (int(total) if total.isdigit() else None)


def _fetch_once(url: str, part: Path, offset: int, net: _Net) -> None:
    headers = {"User-Agent": "useful-sb-download (urllib)", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=net.timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:  # asked past the end: the .part is not a prefix of this file
            _start, total = _content_range(err.headers.get("Content-Range"))
            if total == offset:
                return  # complete already (the run that downloaded it stopped before checking it)
            log.warning("%s is longer than %s; downloading it again from the beginning", part, url)
            part.unlink()
            raise _Retry("the partial download did not fit the file on the server") from None
        if err.code in (408, 425, 429) or err.code >= 500:
            raise _Retry(f"HTTP {err.code} {err.reason}") from None
        hint = " (check --mirror)" if net.mirror else ""
        raise EnvironmentFailure(f"download of {url} failed: HTTP {err.code} {err.reason}{hint}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise _Retry(str(reason) or type(err).__name__) from None
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"the server sent bytes from {start}, not {offset}; starting again")
            mode = "ab"
        elif response.status == 200:
            if offset:
                log.warning("the server ignores range requests; downloading %s again from the beginning", url)
            offset, total, mode = 0, length, "wb"
        else:
            raise EnvironmentFailure(f"download of {url} failed: unexpected HTTP status {response.status}")
        if total is None and length is not None:
            total = offset + length
        if total is not None:
            free = shutil.disk_usage(part.parent).free
            if free < total - offset:
                raise EnvironmentFailure(f"not enough disk space in {part.parent}: {url} needs {total - offset} "
                                         f"more bytes, {free} are free")
        bar = _progress_bar(net, total, offset, part.name)
        try:
            with part.open(mode) as out:
                try:
                    while True:
                        block = response.read1(_CHUNK)  # what has arrived, so a kill loses little
                        if not block:
                            break
                        out.write(block)
                        if bar is not None:
                            bar.update(len(block))
                except (http.client.HTTPException, OSError) as err:
                    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise EnvironmentFailure(f"not enough disk space in {part.parent} to download {url}; "
                                                 f"{part} is kept, free some space and run the command again "
                                                 f"to resume") from None
                    out.flush()
                    raise _Retry(f"{type(err).__name__} after {out.tell()} bytes") from None
                finally:
                    out.flush()
                    os.fsync(out.fileno())
        finally:
            if bar is not None:
                bar.close()
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Retry(f"the connection closed after {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise _Retry(f"received {size} bytes, more than the {total} announced; starting again")


def _progress_bar(net: _Net, total: int | None, initial: int, label: str):
    if not net.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                file=sys.stderr, leave=False)


# ----------------------------------------------------------------------------------------------
# unpacking


class _CorruptArchive(Exception):
    """The archive cannot be read (truncated, bad CRC, not an archive)."""


def _unsafe(source: Source, archive: Path, member: str, why: str, root: Path):
    from .datasets import DatasetError

    return DatasetError(f"{source.dataset}: refusing to unpack {archive.name}: member {member!r} {why}; nothing "
                        f"from it was installed in {root}")


def _member_path(source: Source, archive: Path, member: str, staging: Path, root: Path) -> Path | None:
    """Where ``member`` goes under ``staging``, refusing names that would land outside it."""
    if "\x00" in member:
        raise _unsafe(source, archive, member, "has a NUL byte in its name", root)
    if member.startswith(("/", "\\")) or (len(member) > 1 and member[1] == ":" and member[0].isalpha()):
        raise _unsafe(source, archive, member, "has an absolute path", root)
    parts = [p for p in member.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(source, archive, member, "has a '..' component and would land outside the folder", root)
    if not parts:
        return None
    dest = staging.joinpath(*parts)
    inside = os.path.realpath(staging)
    if os.path.commonpath([inside, os.path.realpath(dest)]) != inside:  # staging holds no links; belt and braces
        raise _unsafe(source, archive, member, "would land outside the folder", root)
    return dest


def _write_member(dest: Path, data) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(data, out, _CHUNK)


def _unpack(source: Source, archive: Path, staging: Path, root: Path) -> None:
    if source.unpack == "tar.gz":
        _unpack_tar(source, archive, staging, root)
    elif source.unpack == "zip":
        _unpack_zip(source, archive, staging, root)
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(f"unknown archive kind {source.unpack!r}")


def _unpack_tar(source: Source, archive: Path, staging: Path, root: Path) -> None:
    """Extract a .tar.gz member by member, each checked before it is written."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                dest = _member_path(source, archive, member.name, staging, root)
                if member.issym():
                    raise _unsafe(source, archive, member.name, f"is a symbolic link (to {member.linkname!r})", root)
                if member.islnk():
                    raise _unsafe(source, archive, member.name, f"is a hard link (to {member.linkname!r})", root)
                if member.ischr() or member.isblk():
                    raise _unsafe(source, archive, member.name, "is a device file", root)
                if member.isfifo():
                    raise _unsafe(source, archive, member.name, "is a FIFO", root)
                if not (member.isreg() or member.isdir()):
                    raise _unsafe(source, archive, member.name, "is not a regular file or folder", root)
                if dest is None:
                    continue
                if _TAR_DATA_FILTER:
                    try:
                        tar.extract(member, staging, filter="data")
                    except tarfile.FilterError as err:
                        raise _unsafe(source, archive, member.name, f"is refused by tarfile's data filter ({err})",
                                      root) from None
                elif member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                else:
                    _write_member(dest, tar.extractfile(member))
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise _CorruptArchive(f"{type(err).__name__}: {err}") from None
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _CorruptArchive(f"{type(err).__name__}: {err}") from None


def _unpack_zip(source: Source, archive: Path, staging: Path, root: Path) -> None:
    """Extract a .zip member by member, each checked before it is written (zipfile has no filter)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # check every member before writing any
                _member_path(source, archive, info.filename, staging, root)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise _unsafe(source, archive, info.filename, "is a symbolic link", root)
                if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise _unsafe(source, archive, info.filename, "is a device or other special file", root)
            need = sum(info.file_size for info in infos)
            free = shutil.disk_usage(staging).free
            if need > free:
                raise EnvironmentFailure(f"{source.dataset}: not enough disk space in {root} to unpack "
                                         f"{archive.name}: it needs {need} bytes, {free} are free")
            for info in infos:
                dest = _member_path(source, archive, info.filename, staging, root)
                if dest is None:
                    continue
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                else:
                    with zf.open(info) as data:
                        _write_member(dest, data)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError) as err:
        raise _CorruptArchive(f"{type(err).__name__}: {err}") from None
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _CorruptArchive(f"{type(err).__name__}: {err}") from None


# ----------------------------------------------------------------------------------------------
# command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=sorted(SOURCES), metavar="DATASET",
                        help="one of: " + ", ".join(sorted(SOURCES)))
    parser.add_argument("--data-dir", required=True, metavar="DIR",
                        help="folder to put the data set in (created if missing); the same --data-dir that "
                             "`useful-train run` takes")
    parser.add_argument("--mirror", metavar="URL", default=None,
                        help="base address replacing the authors' (file names stay), e.g. an institutional mirror")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=60.0,
                        help="seconds a connection or read may stall before a retry (default 60)")
    parser.add_argument("--retries", metavar="N", type=int, default=5,
                        help="retries after a failed attempt that received nothing, with exponential backoff "
                             "(default 5)")


def _handler(args: argparse.Namespace) -> int:
    # Progress goes to stdout, so that stderr holds only a failure's one line (and, on a terminal, the bar).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        done = _ensure(args.dataset, args.data_dir, mirror=args.mirror, timeout=args.timeout, retries=args.retries)
    finally:
        log.removeHandler(handler)
        log.setLevel(previous[0])
        log.propagate = previous[1]
    # What was found or done is already logged above; add what was verified, and how to use it.
    for note in done.notes:
        print(f"verified: {note}")
    print(f"use it with: useful-train run --dataset {args.dataset} --data-dir {Path(args.data_dir).expanduser()}")
    return 0


def register_commands(register_command) -> None:
    register_command("download", "download a data set from its authors' published location, verify its "
                     "checksum and unpack it into --data-dir", _arguments, _handler)
