"""``useful-train download DATASET --data-dir DIR [--mirror URL]``: fetch a data set, verify it, unpack it.

Only this command and :func:`ensure_dataset` (``run --download``) touch the network; what they fetch and
check is the record in :data:`real.datasets.DATASETS`.  Failures are one line: exit 2 for bad input or a
bad file, 1 when the network or the disk fails.  A data set already in ``DIR/<folder>`` (or ``DIR``) is
used if ours (:data:`MARKER`) and unchanged, or if the loader accepts it; a folder we did not make is
never modified.  Otherwise :func:`pooch.retrieve` fetches each file into ``DIR/.useful-download/`` and
checks its published MD5 (a user's copy at ``DIR/<file>`` is checked and used, never moved); archives
are unpacked there by hand, refusing unsafe members; the loader must accept the result with the
published split sizes; then it gets :data:`MARKER` and is renamed to ``DIR/<folder>`` in one step, so a
killed run leaves no data set (the next run removes its temporary files).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import pooch
import requests
from tqdm import tqdm

from theory.plumbing.atomic import atomic_write_json
from theory.plumbing.cli import EnvironmentFailure
from theory.plumbing.config import ConfigError, check_int, check_number

from .datasets import DATASETS, DatasetError, DatasetInfo, RemoteFile, _canonical, default_data_dir, load_dataset

__all__ = ["HELP", "MARKER", "Installed", "add_arguments", "command", "ensure_dataset"]

log = logging.getLogger(__name__)

HELP = "download a data set from its authors' published location, verify its checksum and unpack it into --data-dir"
MARKER = ".useful-download.json"
"""File written into every data set folder this module installs (what, from where, which checksums)."""

_WORK = ".useful-download"  # DIR/.useful-download: pooch's temporary files, verified archives, unpacks
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Installed:
    """What :func:`ensure_dataset` found or did: the folder and ``"installed"`` (now), ``"present"``
    (installed by useful-train earlier, unchanged), ``"accepted"`` (not ours, the loader accepts it; left
    as is) or ``"debian"`` (Debian's ``dataset-fashion-mnist`` package)."""

    path: Path
    status: Literal["installed", "present", "accepted", "debian"]
    notes: tuple[str, ...] = ()


def ensure_dataset(name: str, data_dir: str | os.PathLike | None, **options) -> Path:
    """Make sure ``data_dir`` (created if missing; None: Debian's fashion-mnist only) holds the data set ``name``,
    downloading it if needed; return its folder.  Options (docs/training.md): ``sources`` (default
    :data:`real.datasets.DATASETS`), ``mirror``, ``timeout`` (seconds a read may stall), ``retries``
    (waiting ``backoff * 2**k`` s), ``progress`` (a bar on stderr; None: when stderr is a terminal)."""
    return _ensure(name, data_dir, **options).path


def _ensure(name: str, data_dir: str | os.PathLike | None, *, mirror: str | None = None,
            sources: Mapping[str, DatasetInfo] | None = None, timeout: float = 60.0, retries: int = 5,
            backoff: float = 1.0, progress: bool | None = None) -> Installed:
    registry = DATASETS if sources is None else sources
    key = _canonical(name)
    if key not in registry or not registry[key].files:
        choices = ", ".join(sorted(k for k, info in registry.items() if info.files))
        raise ConfigError("dataset", message=f"download: nothing to download for {name!r}; choose one of: {choices}")
    info = registry[key]
    check_number("--timeout", timeout, low=0.0, low_open=True)
    check_int("--retries", retries, low=0)
    check_number("--backoff", backoff, low=0.0)
    base = info.base_url if mirror is None else _base_url(mirror)
    if data_dir is None:
        if (debian := default_data_dir(key)) is not None:
            return Installed(debian, "debian", ("Debian's dataset-fashion-mnist package",))
        raise ConfigError("--data-dir", message=f"--data-dir: needed to download {key} (the folder to put it in)")
    if not str(data_dir).strip():
        raise ConfigError("--data-dir", message="--data-dir: got '', expected a folder")
    root = Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError("--data-dir", message=f"--data-dir: {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    hint = " (check --mirror)" if mirror else ""
    fetch = partial(_retrieve, timeout=float(timeout), retries=int(retries), backoff=float(backoff),
                    progress=sys.stderr.isatty() if progress is None else progress, hint=hint)
    with _locked(root):
        return _present(info, root) or _install(info, root, base, fetch)


def _base_url(mirror: str) -> str:
    parsed = urllib.parse.urlsplit(mirror.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment:
        raise ConfigError("--mirror", message=f"--mirror: got {mirror!r}, expected an http:// or https:// address "
                                              f"of the folder holding the archives")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/") + "/", "", ""))


@contextlib.contextmanager
def _locked(root: Path):
    """flock on ``root``, so a second download into it waits for the first.  By hand, not
    theory.plumbing.lock.RunLock: that refuses a live owner at once and leaves a file in DIR when killed."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another download into %s to finish", root)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.fsync(fd)  # makes an install's rename durable
        os.close(fd)  # releases the lock


# --- what is there already


def _probe(folder: Path, info: DatasetInfo) -> bool:
    """Whether ``folder`` has every path of ``info.probe``."""
    return all(any((folder / alt).is_dir() if alt.endswith("/") else (folder / alt).is_file()
                   for alt in entry.split("|")) for entry in info.probe)


def _inventory(folder: Path) -> tuple[int, int]:
    """Number of regular files under ``folder`` (the marker excluded) and their total size."""
    paths = [Path(parent) / f for parent, _dirs, files in os.walk(folder) for f in files]
    sizes = [p.lstat().st_size for p in paths if p != folder / MARKER]
    return len(sizes), sum(sizes)


def _present(info: DatasetInfo, root: Path) -> Installed | None:
    """The data set already in ``root/<folder>`` or ``root``, or None (an empty ``root/<folder>`` is removed:
    there is nothing in it to lose)."""
    target = root / info.folder
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    folder = target if target.exists() else root if (root / MARKER).is_file() or _probe(root, info) else None
    if folder is None:
        return None
    if folder.is_symlink() or not folder.is_dir():
        raise DatasetError(f"{info.name}: {folder} exists and is not a folder; it is left as is: move it away or "
                           f"choose another --data-dir")
    marker = folder / MARKER
    if marker.is_file():  # ours: the same data set, with as many files and bytes
        try:
            record = json.loads(marker.read_text())
            expected, dataset = (int(record["files"]), int(record["bytes"])), record["dataset"]
        except (ValueError, KeyError, TypeError, OSError):
            raise DatasetError(f"{info.name}: {marker} is unreadable; remove {folder} and download again") from None
        if dataset != info.name:
            raise DatasetError(f"{info.name}: {folder} holds {dataset!r} (see {marker}); choose another --data-dir")
        if (found := _inventory(folder)) != expected:
            raise DatasetError(f"{info.name}: {folder} was installed by useful-train with {expected[0]} files "
                               f"({expected[1]} bytes) but now has {found[0]} files ({found[1]} bytes); it is left "
                               f"as is: remove it and download again")
        log.info("%s is already in %s (installed by useful-train, unchanged)", info.name, folder)
        return Installed(folder, "present")
    log.info("%s: checking %s with the loader", info.name, folder)
    try:
        load_dataset(info.name, folder)
    except DatasetError as err:
        raise DatasetError(f"{info.name}: {folder} exists but is not a valid data set ({err}); it was not made by "
                           f"useful-train, so it is left as is: move it away or choose another --data-dir") from None
    log.info("%s is already in %s (the loader accepts it)", info.name, folder)
    return Installed(folder, "accepted")


# --- installing


def _install(info: DatasetInfo, root: Path, base: str, fetch: Callable[..., Path]) -> Installed:
    """Download (or find) each file, stage the data set and move it into place."""
    work = root / _WORK
    work.mkdir(exist_ok=True)
    for stale in [*work.glob("unpack-*"), *work.glob("tmp*")]:  # a killed run's; we hold the lock
        log.info("removing %s, left by an interrupted run", stale)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    copies: list[Path] = []  # a user's copy is root/<file>; the ones we downloaded are in work
    try:
        for remote in info.files:
            copies.append(_obtain(info, remote, root, work, base, fetch))
        with tempfile.TemporaryDirectory(prefix="unpack-", dir=work, ignore_cleanup_errors=True) as tmp:
            target = _stage(info, root, Path(tmp), copies, base)
        _drop(copies, root)
        log.info("%s installed in %s", info.name, target)
        unchecked = "no published checksum, so only the transfer length, the archive's CRCs and the unpacked structure"
        return Installed(target, "installed", tuple(f"{r.filename}: " + (
            unchecked if r.md5 is None else f"MD5 {r.md5} ({info.checksum_origin})") for r in info.files))
    except DatasetError:
        # The files cannot give a valid data set (an unsafe member, a corrupt archive, a layout the
        # loader rejects): keeping the downloads would only make the next run fail the same way.
        _drop(copies, root)
        raise
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise EnvironmentFailure(f"{info.name}: not enough disk space in {root} ({err.filename or ''}); "
                                     f"the partial download or unpack was removed") from None
        raise
    finally:
        with contextlib.suppress(OSError):
            work.rmdir()  # only when empty


def _drop(copies: list[Path], root: Path) -> None:
    """Delete the files we downloaded (never the user's, in ``root``)."""
    for path in copies:
        if path.parent != root:
            path.unlink(missing_ok=True)


def _stage(info: DatasetInfo, root: Path, tmp: Path, copies: list[Path], base: str) -> Path:
    """Unpack (or copy) into ``tmp/staging``, check it with the loader, mark it, rename it to ``root/<folder>``."""
    staging = tmp / "staging"
    staging.mkdir()
    for path, remote in zip(copies, info.files):
        if info.unpack == "none":  # ours are moved, a user's copy is copied
            (shutil.copyfile if path.parent == root else os.replace)(path, staging / remote.filename)
        else:
            log.info("unpacking %s", path.name)
            _unpack(info, path, staging, root)
    # The data set is staging/<folder>, staging itself or its only subfolder.
    subfolders = [p for p in staging.iterdir() if p.is_dir() and not p.is_symlink()]
    candidates = [staging / info.folder, staging, *(subfolders if len(subfolders) == 1 else [])]
    folder = next((c for c in candidates if c.is_dir() and _probe(c, info)), None)
    if folder is None:
        raise DatasetError(f"{info.name}: the unpacked files do not have the expected layout "
                           f"({', '.join(info.probe)} in one folder); nothing was installed")
    log.info("%s: checking the unpacked files with the loader", info.name)
    try:
        ds = load_dataset(info.name, folder)
    except DatasetError as err:
        raise DatasetError(f"{info.name}: the unpacked archive is not a valid data set ({err}); nothing "
                           f"was installed") from None
    if info.split_sizes is not None and (sizes := (len(ds.train_x), len(ds.test_x))) != tuple(info.split_sizes):
        raise DatasetError(f"{info.name}: the unpacked archive holds {sizes[0]} training and {sizes[1]} test "
                           f"images, not the published {info.split_sizes[0]} and {info.split_sizes[1]}; "
                           f"nothing was installed")
    count, total = _inventory(folder)
    atomic_write_json(folder / MARKER, {
        "dataset": info.name,
        "sources": [{"file": r.filename, "md5": r.md5, "from": f"{path} (put there by the user)"
                     if path.parent == root else base + urllib.parse.quote(r.filename)}
                    for path, r in zip(copies, info.files)],
        "checksum_origin": info.checksum_origin, "files": count, "bytes": total,
        "installed": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    target = root / info.folder
    if target.exists() or target.is_symlink():
        raise DatasetError(f"{info.name}: {target} appeared while unpacking; it is left as is and nothing was "
                           f"installed")
    os.rename(folder, target)  # made durable by _locked's fsync of root
    return target


# --- downloading (pooch)


def _obtain(info: DatasetInfo, remote: RemoteFile, root: Path, work: Path, base: str,
            fetch: Callable[..., Path]) -> Path:
    """A verified local copy of ``remote``: the user's ``root/<file>``, else one downloaded into ``work``."""
    if remote.md5 is None:
        log.warning("%s: %s has no published checksum; checking only the transfer length and the unpacked "
                    "structure", info.name, remote.filename)
    user_copy = root / remote.filename
    if user_copy.is_file():
        if remote.md5 is not None and (found := pooch.file_hash(str(user_copy), alg="md5")) != remote.md5:
            raise DatasetError(f"{info.name}: checksum mismatch for {user_copy}: its MD5 is {found}, the published "
                               f"MD5 of {remote.filename} is {remote.md5}; this file was not downloaded by "
                               f"useful-train, so it is left as is: move it away to download a fresh copy")
        log.info("using %s, which is already there", user_copy)
        return user_copy
    return fetch(info, remote, base + urllib.parse.quote(remote.filename), work)


def _retrieve(info: DatasetInfo, remote: RemoteFile, url: str, work: Path, *, timeout: float, retries: int,
              backoff: float, progress: bool, hint: str) -> Path:
    """:func:`pooch.retrieve` with our own retries: pooch's ``retry_if_failed`` also retries a checksum
    mismatch, with fixed waits; ours retry network failures only, with exponential backoff."""
    known = None if remote.md5 is None else f"md5:{remote.md5}"
    logger = pooch.get_logger()  # pooch logs every download to stderr; ours are logged already
    for attempt in range(retries + 1):
        # total=1 until pooch sets the Content-Length: pooch tests the bar's truth, which needs a total
        bar = progress and tqdm(total=1, unit="B", unit_scale=True, unit_divisor=1024, desc=remote.filename,
                                file=sys.stderr, leave=False)
        downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=_CHUNK, timeout=timeout,
                                          headers={"Accept-Encoding": "identity"})  # the bytes the MD5 is of
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            return Path(pooch.retrieve(url, known, fname=remote.filename, path=work, downloader=downloader))
        except ValueError as err:  # pooch's hash mismatch; it deleted the download
            raise DatasetError(f"{info.name}: checksum mismatch for {remote.filename} downloaded from {url}: {err} "
                               f"(run the command again; if this repeats, the server{hint} serves a different "
                               f"file)") from None
        except requests.RequestException as err:
            status = getattr(err.response, "status_code", None)
            reason = f"HTTP {status} {err.response.reason}" if status else (str(err) or type(err).__name__)
            if status is not None and status not in (408, 425, 429) and status < 500:
                raise EnvironmentFailure(f"download of {url} failed: {reason}{hint}") from None
            if attempt == retries:
                raise EnvironmentFailure(f"download of {url} failed after {attempt + 1} attempts: {reason}") from None
            delay = min(backoff * 2 ** attempt, 300.0)
            log.warning("download of %s failed (%s); retrying in %g s", url, reason, delay)
            time.sleep(delay)
        finally:
            logger.setLevel(level)
            if bar is not False:
                bar.close()


# --- unpacking: by hand, because pooch's Untar/Unzip write whatever the archive holds (links, devices,
# '..' and absolute paths); every member is checked before it is written


def _member_path(info: DatasetInfo, archive: Path, member: tarfile.TarInfo | zipfile.ZipInfo, staging: Path,
                 root: Path) -> tuple[Path | None, bool]:
    """Where a safe archive member goes under ``staging`` (None: the top folder) and whether it is a folder."""
    kind, name = _kind(member), member.filename if isinstance(member, zipfile.ZipInfo) else member.name
    parts = [p for p in name.split("/") if p not in ("", ".")]
    why = next((why for bad, why in (
        (kind not in ("file", "dir"), kind),
        ("\x00" in name, "has a NUL byte in its name"),
        (name.startswith(("/", "\\")) or (name[1:2] == ":" and name[:1].isalpha()), "has an absolute path"),
        (".." in parts, "has a '..' component and would land outside the folder"),
    ) if bad), None)
    if why is not None:
        raise DatasetError(f"{info.name}: refusing to unpack {archive.name}: member {name!r} {why}; nothing "
                           f"from it was installed in {root}")
    return staging.joinpath(*parts) if parts else None, kind == "dir"


def _kind(member: tarfile.TarInfo | zipfile.ZipInfo) -> str:
    """``"file"``, ``"dir"``, or why the archive member is refused."""
    if isinstance(member, zipfile.ZipInfo):
        mode = member.external_attr >> 16
        if stat.S_ISLNK(mode):
            return "is a symbolic link"
        if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return "is a device or other special file"
        return "dir" if member.is_dir() else "file"
    if member.issym() or member.islnk():
        return f"is a {'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r})"
    return ("file" if member.isreg() else "dir" if member.isdir() else "is a FIFO" if member.isfifo()
            else "is a device file" if member.ischr() or member.isblk() else "is not a regular file or folder")


def _unpack(info: DatasetInfo, archive: Path, staging: Path, root: Path) -> None:
    """Extract ``archive`` member by member into ``staging`` (a zip's members are all checked first)."""
    try:
        zipped = info.unpack == "zip"
        with zipfile.ZipFile(archive) if zipped else tarfile.open(archive, "r:gz") as ar:
            checked = ((*_member_path(info, archive, m, staging, root), m) for m in (ar.infolist() if zipped else ar))
            for dest, is_dir, member in (list(checked) if zipped else checked):  # a tar is read as a stream
                if dest is not None and is_dir:
                    dest.mkdir(parents=True, exist_ok=True)
                elif dest is not None:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                    with os.fdopen(fd, "wb") as out, (ar.open if zipped else ar.extractfile)(member) as src:
                        shutil.copyfileobj(src, out, _CHUNK)
    except (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error,
            NotImplementedError, OSError) as err:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DatasetError(f"{info.name}: {archive.name} is not a valid {info.unpack} archive "
                           f"({type(err).__name__}: {err}); nothing was installed") from None


# --- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``download`` subcommand's arguments."""
    names = sorted(name for name, info in DATASETS.items() if info.files)
    parser.add_argument("dataset", choices=names, metavar="DATASET", help="the data set to fetch: one of "
                        + ", ".join(names))
    parser.add_argument("--data-dir", required=True, metavar="DIR",
                        help="folder to put it in (required; created if missing), the --data-dir `run` takes")
    parser.add_argument("--mirror", metavar="URL", default=None,
                        help="http(s) address replacing the authors' folder, file names kept (default: the authors')")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=60.0,
                        help="seconds a connection or read may stall before the attempt fails (> 0; default 60)")
    parser.add_argument("--retries", metavar="N", type=int, default=5,
                        help="retries after a network failure, waits doubling from 1 s (>= 0; default 5)")


def command(args: argparse.Namespace) -> int:
    """Run ``useful-train download``; progress on stdout, so stderr holds only a failure's one line."""
    handler, previous = logging.StreamHandler(sys.stdout), (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        done = _ensure(args.dataset, args.data_dir, mirror=args.mirror, timeout=args.timeout, retries=args.retries)
    finally:
        log.removeHandler(handler)
        log.setLevel(previous[0])
        log.propagate = previous[1]
    for note in done.notes:
        print(f"verified: {note}")
    print(f"use it with: useful-train run --dataset {args.dataset} --data-dir {Path(args.data_dir).expanduser()}")
    return 0
