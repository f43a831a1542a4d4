"""Small archives in the real distributed formats, a local HTTP server, and test registries.

Used by tests/test_real_download.py (imported as ``download_fixtures``) and, as
``python -m tests.download_fixtures install ...``, by the tests that SIGKILL an install half-way.

Nothing here touches the internet: the server listens on 127.0.0.1, and the test registries point at
it (or at 127.0.0.1:9, where nothing listens, when a test must prove that ``--mirror`` is used).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import pickle
import struct
import sys
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

UNREACHABLE = "http://127.0.0.1:9/nowhere/"  # the discard port: connection refused, never the internet
WNIDS = ("n01443537", "n01629819", "n01641577")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------------------------------------------
# archives


def tar_gz(entries: list[tuple]) -> bytes:
    """A .tar.gz from ``(name, kind, payload)`` entries.

    kind: ``"file"`` (payload: bytes), ``"dir"``, ``"symlink"`` / ``"hardlink"`` (payload: link target),
    ``"chr"`` (a character device), ``"fifo"``.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_500_000_000
            if kind == "file":
                info.size, info.mode = len(payload), 0o644
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.mode = 0o755 if kind == "dir" else 0o644
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = payload
            tar.addfile(info)
    return buffer.getvalue()


def zip_bytes(entries: list[tuple]) -> bytes:
    """A .zip from ``(name, kind, payload)`` entries; kind ``"file"``, ``"dir"`` or ``"symlink"``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, kind, payload in entries:
            info = zipfile.ZipInfo(name, date_time=(2017, 7, 14, 0, 0, 0))
            if kind == "dir":
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            elif kind == "symlink":
                info.external_attr = 0o120777 << 16
                zf.writestr(info, payload.encode())
            else:
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, payload)
    return buffer.getvalue()


def cifar10_members(per_batch: int = 3, seed: int = 0) -> tuple[list[tuple], dict[str, np.ndarray]]:
    """The members of cifar-10-python.tar.gz (real names, pickles of numpy arrays) and the arrays."""
    rng = np.random.default_rng(seed)
    entries: list[tuple] = [("cifar-10-batches-py", "dir", None)]
    xs, ys = [], []
    for i in range(1, 7):
        name = f"data_batch_{i}" if i <= 5 else "test_batch"
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {b"batch_label": f"{name} of 6".encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)]}
        entries.append((f"cifar-10-batches-py/{name}", "file", pickle.dumps(batch, protocol=2)))
        xs.append(data)
        ys.append(labels)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [b"airplane", b"automobile"], b"num_vis": 3072}
    entries.append(("cifar-10-batches-py/batches.meta", "file", pickle.dumps(meta, protocol=2)))
    entries.append(("cifar-10-batches-py/readme.html", "file", b"<html>CIFAR-10</html>\n"))
    expected = {"train_x": np.concatenate(xs[:5]).reshape(-1, 3, 32, 32), "train_y": np.concatenate(ys[:5]),
                "test_x": xs[5].reshape(-1, 3, 32, 32), "test_y": np.asarray(ys[5])}
    return entries, expected


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def fashion_files(n_train: int = 6, n_test: int = 4, seed: int = 1) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The four gzipped idx files of Fashion-MNIST (real names and headers) and their arrays."""
    rng = np.random.default_rng(seed)
    files, expected = {}, {}
    for prefix, n, split in (("train", n_train, "train"), ("t10k", n_test, "test")):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        files[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(_idx(images, 2051), mtime=0)
        files[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(_idx(labels, 2049), mtime=0)
        expected[f"{split}_x"], expected[f"{split}_y"] = images[:, None], labels.astype(np.int64)
    return files, expected


def _jpeg(rng: np.random.Generator) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def tinyimagenet_entries(per_class: int = 2, seed: int = 2) -> list[tuple]:
    """The layout of tiny-imagenet-200.zip: wnids.txt, words.txt, train/<wnid>/images, val, test."""
    rng = np.random.default_rng(seed)
    root = "tiny-imagenet-200/"
    entries: list[tuple] = [(root, "dir", None), (root + "wnids.txt", "file", "\n".join(WNIDS) + "\n"),
                            (root + "words.txt", "file", "".join(f"{w}\tthing {w}\n" for w in WNIDS))]
    for wnid in WNIDS:
        entries.append((f"{root}train/{wnid}/images/", "dir", None))
        boxes = []
        for j in range(per_class):
            entries.append((f"{root}train/{wnid}/images/{wnid}_{j}.JPEG", "file", _jpeg(rng)))
            boxes.append(f"{wnid}_{j}.JPEG\t0\t0\t63\t63")
        entries.append((f"{root}train/{wnid}/{wnid}_boxes.txt", "file", "\n".join(boxes) + "\n"))
    lines = []
    for j, wnid in enumerate(WNIDS * 2):
        entries.append((f"{root}val/images/val_{j}.JPEG", "file", _jpeg(rng)))
        lines.append(f"val_{j}.JPEG\t{wnid}\t0\t0\t63\t63")
    entries.append((root + "val/val_annotations.txt", "file", "\n".join(lines) + "\n"))
    entries.append((root + "test/images/test_0.JPEG", "file", _jpeg(rng)))
    return entries


def cinic10_entries(flat: bool = True, seed: int = 3) -> list[tuple]:
    """CINIC-10's layout: train/valid/test with 10 class folders of PNGs (at the top, or in CINIC-10/)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    prefix = "./" if flat else "CINIC-10/"
    entries: list[tuple] = [] if flat else [("CINIC-10", "dir", None)]
    for split in ("train", "valid", "test"):
        for cls in classes:
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
            entries.append((f"{prefix}{split}/{cls}/cifar10-{split}-{cls}.png", "file", buffer.getvalue()))
    return entries


# ----------------------------------------------------------------------------------------------
# registries


def registry(name: str, files: dict[str, bytes], *, base_url: str = UNREACHABLE, split_sizes=None,
             checksums: bool = True):
    """A one-entry registry like ``real.datasets.DATASETS[name]`` but for these small files, with their MD5s.

    The production record is copied (loader, layout, probe, folder) and only the files, their checksums,
    the base address and the split sizes are replaced, so production behaviour is exercised on test data."""
    from real.datasets import DATASETS, RemoteFile

    source = DATASETS[name]
    remote = tuple(RemoteFile(f, md5(data) if checksums else None) for f, data in files.items())
    source = dataclasses.replace(source, base_url=base_url, files=remote, split_sizes=split_sizes,
                                 checksum_origin="computed by the test")
    return {name: source}


# ----------------------------------------------------------------------------------------------
# HTTP server


@dataclass
class Served:
    """A request the server answered: path, Range header, status, and how many body bytes it sent."""

    path: str
    range: str | None
    status: int
    sent: int


@dataclass
class Behaviour:
    files: dict[str, bytes]
    ignore_range: bool = False
    cut_after: dict[str, int] = field(default_factory=dict)  # first response for the path stops after N bytes
    fail_first: dict[str, int] = field(default_factory=dict)  # answer 503 to the first N requests
    chunk_delay: float = 0.0
    log: list[Served] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        b = self.server.behaviour  # type: ignore[attr-defined]
        path = self.path
        rng = self.headers.get("Range")
        with b.lock:
            failing = b.fail_first.get(path, 0)
            if failing:
                b.fail_first[path] = failing - 1
            cut = b.cut_after.pop(path, None)
        if failing:
            self._reply(path, rng, 503, b"", {})
            return
        data = b.files.get(path)
        if data is None:
            self._reply(path, rng, 404, b"not found", {})
            return
        start, status, headers = 0, 200, {}
        if rng and not b.ignore_range:
            assert rng.startswith("bytes=") and rng.endswith("-"), rng
            start = int(rng[6:-1])
            if start >= len(data):
                self._reply(path, rng, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            status, headers = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        entry = Served(path, rng, status, 0)
        with b.lock:  # logged before the client sees anything (see _reply)
            b.log.append(entry)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        limit = len(body) if cut is None else min(cut, len(body))
        step = 4096
        while entry.sent < limit:
            piece = body[entry.sent:min(limit, entry.sent + step)]
            entry.sent += len(piece)  # counted before the client can have it
            self.wfile.write(piece)
            self.wfile.flush()
            if b.chunk_delay:
                time.sleep(b.chunk_delay)
        if cut is not None:
            self.close_connection = True

    def _reply(self, path, rng, status, body, headers):
        b = self.server.behaviour  # type: ignore[attr-defined]
        with b.lock:  # logged before the client can see the answer, so the log keeps the requests' order
            b.log.append(Served(path, rng, status, len(body)))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class Server:
    """``with Server({"/mirror/x.tar.gz": data}) as s: s.url("/mirror/")`` on 127.0.0.1, a free port."""

    def __init__(self, files: dict[str, bytes], **behaviour):
        self.behaviour = Behaviour(files=dict(files), **behaviour)

    def __enter__(self) -> Server:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.behaviour = self.behaviour  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    @property
    def log(self) -> list[Served]:
        with self.behaviour.lock:
            return list(self.behaviour.log)


# ----------------------------------------------------------------------------------------------
# a process to kill half-way (python -m tests.download_fixtures install ...)


def _install_main(argv: list[str]) -> int:
    """Install from a registry written by :func:`registry_json`, each archive member taking ``--slow`` s."""
    parser = argparse.ArgumentParser()
    parser.add_argument("registry")
    parser.add_argument("name")
    parser.add_argument("data_dir")
    parser.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args(argv)
    from real import download
    from real.datasets import DATASETS, RemoteFile

    spec = json.loads(Path(args.registry).read_text())
    spec["files"] = tuple(RemoteFile(f, h) for f, h in spec["files"])
    spec["split_sizes"] = tuple(spec["split_sizes"]) if spec["split_sizes"] else None
    source = dataclasses.replace(DATASETS[args.name], **spec)
    if args.slow:
        member_path = download._member_path

        def slow(*a, **k):
            time.sleep(args.slow)
            return member_path(*a, **k)

        download._member_path = slow
    download.ensure_dataset(args.name, args.data_dir, sources={args.name: source}, retries=0, progress=False)
    return 0


def registry_json(source) -> str:
    """The fields :func:`registry` replaces in a production record, as JSON (the rest is the record's)."""
    return json.dumps({"base_url": source.base_url, "files": [[f.filename, f.md5] for f in source.files],
                       "split_sizes": source.split_sizes, "checksum_origin": source.checksum_origin})


if __name__ == "__main__":  # pragma: no cover - run by the tests in a subprocess
    if sys.argv[1:2] == ["install"]:
        sys.exit(_install_main(sys.argv[2:]))
    sys.exit("usage: python -m tests.download_fixtures install REGISTRY NAME DIR [--slow S]")
