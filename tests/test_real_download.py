"""``useful-train download`` and real.download.ensure_dataset, against a local HTTP server.

Every archive here is small and written in the data set's real format (tests/download_fixtures.py);
the registries the tests pass carry those archives' own MD5s (``sources=`` or a monkeypatched
``real.download.DATASETS``), so the production records are never altered and nothing touches the
internet (the test registries' base address is 127.0.0.1:9, where nothing listens: a test passes
only if ``--mirror`` really replaced it).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import urllib.parse
from pathlib import Path

import download_fixtures as fx
import numpy as np
import pytest
from helpers import kill_when, run_module

from real import download
from real.cli import main
from real.datasets import DATASETS, DEBIAN_FASHION_MNIST, DatasetError, RemoteFile, load_dataset
from real.download import MARKER, ensure_dataset
from theory.plumbing.cli import EnvironmentFailure
from theory.plumbing.config import ConfigError

ARCHIVE = "cifar-10-python.tar.gz"


def _cifar10(**kw) -> tuple[bytes, dict]:
    entries, expected = fx.cifar10_members(**kw)
    return fx.tar_gz(entries), expected


def _cli(capsys, monkeypatch, registry, *argv) -> tuple[int, str, str]:
    """``useful-train ARGV`` in this process with ``registry`` as the records real.download reads."""
    monkeypatch.setattr(download, "DATASETS", registry)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _assert_nothing_installed(data_dir: Path, folder: str = "cifar-10-batches-py") -> None:
    assert not (data_dir / folder).exists()
    assert not list(data_dir.rglob("*.part"))
    assert not list(data_dir.rglob("unpack-*"))
    with pytest.raises(DatasetError):
        load_dataset("cifar10", data_dir)


# ----------------------------------------------------------------------------------------------
# success in each layout


def test_cifar10_download_verifies_unpacks_and_the_loader_accepts_it(tmp_path):
    archive, expected = _cifar10()
    registry = fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(15, 3))
    data_dir = tmp_path / "data"
    with fx.Server({f"/mirror/{ARCHIVE}": archive}) as server:
        done = download._ensure("cifar10", data_dir, mirror=server.url("/mirror"), sources=registry, progress=False)
        assert [(r.path, r.range, r.status) for r in server.log] == [(f"/mirror/{ARCHIVE}", None, 200)]
        assert done.status == "installed" and done.path == data_dir / "cifar-10-batches-py"
        assert any(fx.md5(archive) in note for note in done.notes)
        ds = load_dataset("cifar10", data_dir)
        for key, value in expected.items():
            assert np.array_equal(getattr(ds, key).numpy(), value), key
        # Only the data set is left: no archive, no .part, no work folder.
        assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-py"]
        record = json.loads((done.path / MARKER).read_text())
        assert record["dataset"] == "cifar10" and record["sources"][0]["md5"] == fx.md5(archive)
        assert record["sources"][0]["from"] == server.url(f"/mirror/{ARCHIVE}")
        assert record["files"] == 8  # six batches, batches.meta, readme.html
        # A second call finds it and asks the server nothing.
        again = download._ensure("cifar10", data_dir, mirror=server.url("/mirror"), sources=registry, progress=False)
        assert again.status == "present" and again.path == done.path and len(server.log) == 1
        assert ensure_dataset("cifar10", data_dir, mirror=server.url("/mirror"), sources=registry) == done.path


def test_tinyimagenet_zip(tmp_path):
    archive = fx.zip_bytes(fx.tinyimagenet_entries(per_class=2))
    registry = fx.registry("tinyimagenet", {"tiny-imagenet-200.zip": archive}, split_sizes=(6, 6))
    with fx.Server({"/tiny-imagenet-200.zip": archive}) as server:
        path = ensure_dataset("tinyimagenet", tmp_path, mirror=server.url("/"), sources=registry, progress=False)
    assert path == tmp_path / "tiny-imagenet-200" and (path / "test" / "images" / "test_0.JPEG").is_file()
    ds = load_dataset("tinyimagenet", tmp_path)
    assert ds.num_classes == 3 and ds.train_x.shape == (6, 3, 64, 64) and ds.test_x.shape == (6, 3, 64, 64)
    assert ds.test_y.tolist() == [0, 1, 2, 0, 1, 2]


def test_fashion_mnist_files_are_kept_byte_identical(tmp_path):
    files, expected = fx.fashion_files()
    registry = fx.registry("fashion-mnist", files, split_sizes=(6, 4))
    with fx.Server({f"/f/{name}": data for name, data in files.items()}) as server:
        path = ensure_dataset("fashion-mnist", tmp_path, mirror=server.url("/f/"), sources=registry, progress=False)
    assert path == tmp_path / "fashion-mnist"
    for name, data in files.items():
        assert (path / name).read_bytes() == data
    ds = load_dataset("fashion-mnist", tmp_path)
    assert np.array_equal(ds.train_x.numpy(), expected["train_x"])
    assert np.array_equal(ds.test_y.numpy(), expected["test_y"])


@pytest.mark.parametrize("flat", [True, False])
def test_cinic10_without_published_checksum_checks_structure(tmp_path, flat):
    archive = fx.tar_gz(fx.cinic10_entries(flat=flat))
    registry = fx.registry("cinic10", {"CINIC-10.tar.gz": archive}, split_sizes=(10, 10), checksums=False)
    with fx.Server({"/CINIC-10.tar.gz": archive}) as server:
        done = download._ensure("cinic10", tmp_path, mirror=server.url("/"), sources=registry, progress=False)
    assert done.path == tmp_path / "CINIC-10" and any("no published checksum" in n for n in done.notes)
    assert load_dataset("cinic10", tmp_path).train_x.shape == (10, 3, 32, 32)
    # The structure check is real: other split sizes than the published ones are refused.
    wrong = {"cinic10": dataclasses.replace(registry["cinic10"], split_sizes=(90000, 90000))}
    with fx.Server({"/CINIC-10.tar.gz": archive}) as server:
        with pytest.raises(DatasetError, match="holds 10 training and 10 test images, not the published 90000"):
            ensure_dataset("cinic10", tmp_path / "other", mirror=server.url("/"), sources=wrong, progress=False)
    _assert_nothing_installed(tmp_path / "other", "CINIC-10")


def test_truncated_archive_without_checksum_is_refused_and_removed(tmp_path):
    archive = fx.tar_gz(fx.cinic10_entries())
    registry = fx.registry("cinic10", {"CINIC-10.tar.gz": archive[:-200]}, split_sizes=None, checksums=False)
    with fx.Server({"/CINIC-10.tar.gz": archive[:-200]}) as server:
        with pytest.raises(DatasetError, match="CINIC-10.tar.gz is not a valid tar.gz archive"):
            ensure_dataset("cinic10", tmp_path, mirror=server.url("/"), sources=registry, progress=False)
    assert _listing(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# checksums


def test_wrong_checksum_exit_2_one_line_nothing_left(tmp_path, capsys, monkeypatch):
    archive, _ = _cifar10()
    registry = fx.registry("cifar10", {ARCHIVE: archive})
    published = "0123456789abcdef0123456789abcdef"
    registry["cifar10"] = dataclasses.replace(registry["cifar10"], files=(RemoteFile(ARCHIVE, published),))
    data_dir = tmp_path / "data"
    with fx.Server({f"/{ARCHIVE}": archive}) as server:
        code, out, err = _cli(capsys, monkeypatch, registry, "download", "cifar10", "--data-dir", str(data_dir),
                              "--mirror", server.url("/"))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "checksum" in err and ARCHIVE in err and published in err and fx.md5(archive) in err
    assert _listing(data_dir) == []  # no data set folder, no .part, no work folder
    _assert_nothing_installed(data_dir)


def test_wrong_checksum_against_the_published_md5_subprocess(tmp_path):
    """The production registry (real published MD5) through ``python -m real download``: our small
    archive is not the published one, so it must be refused before anything is unpacked."""
    archive, _ = _cifar10()
    data_dir = tmp_path / "data"
    with fx.Server({f"/kriz/{ARCHIVE}": archive}) as server:
        proc = run_module("real", "download", "cifar10", "--data-dir", str(data_dir), "--mirror",
                          server.url("/kriz/"), "--retries", "0")
        assert [r.path for r in server.log] == [f"/kriz/{ARCHIVE}"]  # the mirror replaced the base address
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: ") and "checksum" in line
    assert "c58f30108f718f92721af3b95e74349a" in line and fx.md5(archive) in line and ARCHIVE in line
    assert _listing(data_dir) == []


def test_archive_put_there_by_the_user_is_used_and_kept(tmp_path, capsys, monkeypatch):
    archive, expected = _cifar10()
    registry = fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(15, 3))
    (tmp_path / ARCHIVE).write_bytes(archive)
    code, out, err = _cli(capsys, monkeypatch, registry, "download", "cifar10", "--data-dir", str(tmp_path))
    assert code == 0 and err == "", err  # no network: the registry's address is unreachable
    assert "cifar10 installed in" in out and f"verified: {ARCHIVE}: MD5 {fx.md5(archive)}" in out
    assert (tmp_path / ARCHIVE).read_bytes() == archive  # the user's file stays
    assert np.array_equal(load_dataset("cifar10", tmp_path).test_y.numpy(), expected["test_y"])
    # A user's archive with another checksum is refused and left alone.
    other = tmp_path / "other"
    other.mkdir()
    bad = archive[:100] + bytes([archive[100] ^ 1]) + archive[101:]
    (other / ARCHIVE).write_bytes(bad)
    code, out, err = _cli(capsys, monkeypatch, registry, "download", "cifar10", "--data-dir", str(other))
    assert code == 2 and "checksum" in err and "left as is" in err and len(err.splitlines()) == 1
    assert (other / ARCHIVE).read_bytes() == bad
    assert sorted(p.name for p in other.iterdir()) == [ARCHIVE]


# ----------------------------------------------------------------------------------------------
# interrupted and stale downloads (pooch restarts a file; its temporary file is never taken for data)


def test_cut_transfer_is_retried_and_the_file_is_whole(tmp_path):
    files, _ = fx.fashion_files(n_train=40)
    name = "train-images-idx3-ubyte.gz"
    cut = len(files[name]) // 3
    registry = fx.registry("fashion-mnist", files, split_sizes=(40, 4))
    with fx.Server({f"/{k}": v for k, v in files.items()}, cut_after={f"/{name}": cut}) as server:
        path = ensure_dataset("fashion-mnist", tmp_path, mirror=server.url("/"), sources=registry, backoff=0,
                              progress=False)
        served = [r for r in server.log if r.path == f"/{name}"]
    assert [(r.range, r.status, r.sent) for r in served] == [(None, 200, cut), (None, 200, len(files[name]))]
    assert (path / name).read_bytes() == files[name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fashion-mnist"]


def test_download_killed_half_way_leaves_no_data_set_and_the_next_run_cleans_up(tmp_path):
    archive, expected = _cifar10(per_batch=40)  # about 0.75 MB, served slowly
    registry = fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(200, 40))
    data_dir = tmp_path / "data"
    work = data_dir / ".useful-download"

    def partial_files():
        return [p for p in work.glob("*") if p.is_file() and p.stat().st_size > 64 * 1024] if work.is_dir() else []

    with fx.Server({f"/{ARCHIVE}": archive}, chunk_delay=0.01) as server:
        spec = tmp_path / "registry.json"
        spec.write_text(fx.registry_json(dataclasses.replace(registry["cifar10"], base_url=server.url("/"))))
        _kill_when(["install", str(spec), "cifar10", str(data_dir)], lambda: bool(partial_files()))
        left = partial_files()
        assert [p.name for p in left] != [ARCHIVE] and len(left) == 1  # pooch's temporary file, not the archive
        assert not (data_dir / "cifar-10-batches-py").exists() and not (work / ARCHIVE).exists()
        with pytest.raises(DatasetError):
            load_dataset("cifar10", data_dir)
        server.behaviour.chunk_delay = 0.0
        ensure_dataset("cifar10", data_dir, mirror=server.url("/"), sources=registry, progress=False)
        assert [(r.range, r.status) for r in server.log[1:]] == [(None, 200)]
    assert np.array_equal(load_dataset("cifar10", data_dir).train_x.numpy(), expected["train_x"])
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-py"]


def test_archive_in_the_work_folder_no_longer_matching_is_downloaded_again(tmp_path):
    archive, _ = _cifar10()
    registry = fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(15, 3))
    work = tmp_path / ".useful-download"
    work.mkdir()
    (work / ARCHIVE).write_bytes(b"x" * 100)  # not this archive
    (work / "tmp1234abcd").write_bytes(b"half of something")  # a killed run's temporary file
    with fx.Server({f"/{ARCHIVE}": archive}) as server:
        ensure_dataset("cifar10", tmp_path, mirror=server.url("/"), sources=registry, progress=False)
        assert [(r.range, r.status) for r in server.log] == [(None, 200)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]


def test_retries_with_backoff_then_one_line_exit_1(tmp_path, capsys, monkeypatch):
    archive, _ = _cifar10()
    registry = fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(15, 3))
    sleeps = []
    monkeypatch.setattr(download.time, "sleep", sleeps.append)
    with fx.Server({f"/{ARCHIVE}": archive}, fail_first={f"/{ARCHIVE}": 3}) as server:
        ensure_dataset("cifar10", tmp_path / "a", mirror=server.url("/"), sources=registry, retries=3, backoff=0.5,
                       progress=False)
        assert [r.status for r in server.log] == [503, 503, 503, 200]
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff
    with fx.Server({f"/{ARCHIVE}": archive}, fail_first={f"/{ARCHIVE}": 10}) as server:
        code, out, err = _cli(capsys, monkeypatch, registry, "download", "cifar10", "--data-dir",
                              str(tmp_path / "b"), "--mirror", server.url("/"), "--retries", "2")
        assert len(server.log) == 3
    assert code == 1 and len(err.splitlines()) == 1 and "failed after 3 attempts" in err and "HTTP 503" in err
    assert _listing(tmp_path / "b") == []


def test_network_errors_are_one_line_exit_1_subprocess(tmp_path):
    proc = run_module("real", "download", "cifar10", "--data-dir", str(tmp_path), "--mirror", fx.UNREACHABLE,
                      "--retries", "0")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: download of http://127.0.0.1:9/nowhere/cifar-10-python.tar.gz failed")
    with fx.Server({}) as server:
        with pytest.raises(EnvironmentFailure, match="HTTP 404.*check --mirror"):
            ensure_dataset("cifar10", tmp_path, mirror=server.url("/"), progress=False)


# ----------------------------------------------------------------------------------------------
# unsafe archives


BAD_TAR_MEMBERS = {
    "dotdot": ("cifar-10-batches-py/../../evil", "file", b"pwned"),
    "absolute": ("/tmp/useful-sb-test-evil-absolute", "file", b"pwned"),
    "symlink": ("cifar-10-batches-py/link", "symlink", "/etc/passwd"),
    "symlink-dir": ("cifar-10-batches-py/up", "symlink", "../.."),
    "hardlink": ("cifar-10-batches-py/hard", "hardlink", "/etc/passwd"),
    "device": ("cifar-10-batches-py/dev", "chr", None),
    "fifo": ("cifar-10-batches-py/fifo", "fifo", None),
}


@pytest.mark.parametrize("kind", sorted(BAD_TAR_MEMBERS))
def test_unsafe_tar_member_refused_nothing_written_outside(tmp_path, capsys, monkeypatch, kind):
    entries, _ = fx.cifar10_members()
    bad = BAD_TAR_MEMBERS[kind]
    archive = fx.tar_gz(entries[:3] + [bad] + entries[3:])
    registry = fx.registry("cifar10", {ARCHIVE: archive})
    data_dir = tmp_path / "deep" / "data"
    with fx.Server({f"/{ARCHIVE}": archive}) as server:
        code, out, err = _cli(capsys, monkeypatch, registry, "download", "cifar10", "--data-dir", str(data_dir),
                              "--mirror", server.url("/"))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "refusing to unpack cifar-10-python.tar.gz" in err and repr(bad[0]) in err
    assert _listing(tmp_path) == ["deep", "deep/data"]  # nothing outside DIR, nothing left inside
    assert not Path("/tmp/useful-sb-test-evil-absolute").exists()


@pytest.mark.parametrize("member, kind, why", [
    ("tiny-imagenet-200/../../evil.txt", "file", "'..'"),
    ("/tmp/useful-sb-test-evil-zip", "file", "absolute"),
    ("tiny-imagenet-200/link", "symlink", "symbolic link"),
])
def test_unsafe_zip_member_refused(tmp_path, member, kind, why):
    entries = fx.tinyimagenet_entries(per_class=1)
    archive = fx.zip_bytes(entries + [(member, kind, "/etc/passwd" if kind == "symlink" else b"pwned")])
    registry = fx.registry("tinyimagenet", {"tiny-imagenet-200.zip": archive})
    data_dir = tmp_path / "deep" / "data"
    with fx.Server({"/tiny-imagenet-200.zip": archive}) as server:
        with pytest.raises(DatasetError) as exc:
            ensure_dataset("tinyimagenet", data_dir, mirror=server.url("/"), sources=registry, progress=False)
    message = str(exc.value)
    assert "\n" not in message and repr(member) in message and why in message
    assert _listing(tmp_path) == ["deep", "deep/data"]
    assert not Path("/tmp/useful-sb-test-evil-zip").exists()


# ----------------------------------------------------------------------------------------------
# atomic installation


def _kill_when(args: list[str], ready, timeout: float = 60.0) -> None:
    """Run ``python -m tests.download_fixtures ARGS`` and SIGKILL it once ``ready()`` holds."""
    kill_when("tests.download_fixtures", args, ready, timeout=timeout, poll=0.005)


def test_killed_unpack_leaves_no_data_set_and_the_next_run_cleans_up(tmp_path):
    archive, expected = _cifar10()
    registry = fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(15, 3))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / ARCHIVE).write_bytes(archive)  # no network needed
    spec = tmp_path / "registry.json"
    spec.write_text(fx.registry_json(registry["cifar10"]))
    half_way = ".useful-download/unpack-*/staging/cifar-10-batches-py/data_batch_3"
    _kill_when(["install", str(spec), "cifar10", str(data_dir), "--slow", "0.3"],
               lambda: any(data_dir.glob(half_way)))
    assert not (data_dir / "cifar-10-batches-py").exists()
    with pytest.raises(DatasetError):  # nothing the loader would take for the data set
        load_dataset("cifar10", data_dir)
    assert list(data_dir.glob(".useful-download/unpack-*"))  # the killed run's temporary folder
    ensure_dataset("cifar10", data_dir, sources=registry, progress=False)
    assert sorted(p.name for p in data_dir.iterdir()) == sorted([ARCHIVE, "cifar-10-batches-py"])
    assert np.array_equal(load_dataset("cifar10", data_dir).train_y.numpy(), expected["train_y"])


def test_a_stale_half_unpack_is_not_a_data_set(tmp_path):
    archive, _ = _cifar10()
    registry = fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(15, 3))
    stale = tmp_path / ".useful-download" / "unpack-old" / "staging" / "cifar-10-batches-py"
    stale.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2"):
        (stale / name).write_bytes(b"half")
    with pytest.raises(DatasetError):
        load_dataset("cifar10", tmp_path)
    with fx.Server({f"/{ARCHIVE}": archive}) as server:
        ensure_dataset("cifar10", tmp_path, mirror=server.url("/"), sources=registry, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]


# ----------------------------------------------------------------------------------------------
# folders that are already there


def test_users_folder_is_never_overwritten(tmp_path, capsys, monkeypatch):
    archive, _ = _cifar10()
    registry = fx.registry("cifar10", {ARCHIVE: archive})
    mine = tmp_path / "cifar-10-batches-py"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    code, out, err = _cli(capsys, monkeypatch, registry, "download", "cifar10", "--data-dir", str(tmp_path))
    assert code == 2 and len(err.splitlines()) == 1 and "left as is" in err and str(mine) in err
    assert _listing(tmp_path) == ["cifar-10-batches-py", "cifar-10-batches-py/notes.txt"]
    assert (mine / "notes.txt").read_text() == "my notes"


def test_users_valid_folder_is_accepted_without_network(tmp_path, capsys, monkeypatch):
    entries, _ = fx.cifar10_members()
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name, kind, payload in entries[1:]:
        (tmp_path / name).write_bytes(payload)
    before = {p: p.stat().st_mtime_ns for p in root.iterdir()}
    code, out, err = _cli(capsys, monkeypatch, fx.registry("cifar10", {ARCHIVE: b""}), "download", "cifar10",
                          "--data-dir", str(tmp_path))
    assert code == 0 and "is already in" in out and "the loader accepts it" in out and err == ""
    assert {p: p.stat().st_mtime_ns for p in root.iterdir()} == before
    # The data set's own folder given as --data-dir works too.
    assert ensure_dataset("cifar10", root, sources=fx.registry("cifar10", {ARCHIVE: b""})) == root


def test_installed_folder_changed_since_is_refused(tmp_path):
    archive, _ = _cifar10()
    registry = fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(15, 3))
    with fx.Server({f"/{ARCHIVE}": archive}) as server:
        path = ensure_dataset("cifar10", tmp_path, mirror=server.url("/"), sources=registry, progress=False)
    (path / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="installed by useful-train with 8 files .* now has 7 files"):
        ensure_dataset("cifar10", tmp_path, sources=registry)
    assert not (path / "data_batch_4").exists() and (path / "data_batch_5").exists()


# ----------------------------------------------------------------------------------------------
# input errors, registry, command line


def test_input_errors_one_line_exit_2(tmp_path, capsys, monkeypatch):
    registry = fx.registry("cifar10", {ARCHIVE: b""})
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["download", "cifar10", "--data-dir", str(tmp_path), "--mirror", "ftp://example.org/"], "--mirror"),
        (["download", "cifar10", "--data-dir", str(tmp_path), "--mirror", "not a url"], "--mirror"),
        (["download", "cifar10", "--data-dir", str(a_file)], "--data-dir"),
        (["download", "cifar10", "--data-dir", str(tmp_path), "--retries", "-1"], "--retries"),
        (["download", "cifar10", "--data-dir", str(tmp_path), "--timeout", "0"], "--timeout"),
        (["download", "imagenet", "--data-dir", str(tmp_path)], "invalid choice"),
        (["download", "cifar10"], "--data-dir"),
        (["download", "cifar10", "--data-dir", ""], "--data-dir"),
    ]
    for argv, expected in cases:
        try:
            code, _out, err = _cli(capsys, monkeypatch, registry, *argv)
        except SystemExit as exit_:  # argparse's usage errors (one line, status 2)
            code, (_out, err) = exit_.code, capsys.readouterr()
        assert code == 2 and len(err.splitlines()) == 1 and expected in err, (argv, err)
    assert _listing(tmp_path) == ["file"]
    with pytest.raises(ConfigError, match="nothing to download for 'synthetic'"):
        ensure_dataset("synthetic", tmp_path)


def test_production_records_are_the_published_ones():
    md5s = {name: {f.filename: f.md5 for f in info.files} for name, info in DATASETS.items() if info.files}
    assert md5s == {
        "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
        "stl10": {"stl10_binary.tar.gz": "91f7769df0f17e558f3565bffb0c7dfb"},
        "cinic10": {"CINIC-10.tar.gz": None},
        "tinyimagenet": {"tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de"},
        "fashion-mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                          "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                          "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                          "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    }
    urls = {name: info.base_url for name, info in DATASETS.items() if info.files}
    assert urls == {
        "cifar10": "https://www.cs.toronto.edu/~kriz/",
        "cifar100": "https://www.cs.toronto.edu/~kriz/",
        "stl10": "http://ai.stanford.edu/~acoates/stl10/",  # the archive the authors' page links to
        "cinic10": "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/",
        "tinyimagenet": "http://cs231n.stanford.edu/",
        "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    }
    with pytest.raises(TypeError):
        DATASETS["cifar10"] = DATASETS["cifar100"]  # type: ignore[index]


def test_each_data_set_fact_has_one_definition():
    """The records in real/datasets.py are the only place a data set's address, checksum, file name,
    folder, image shape or class count is written: no other module of real/ holds one."""
    real = Path(download.__file__).parent
    facts = set()
    for info in DATASETS.values():
        facts |= {info.base_url, info.where, info.folder, *(f.filename for f in info.files)}
        facts |= {f.md5 for f in info.files if f.md5} | {"x".join(map(str, info.shape)), repr(info.shape)}
        host = urllib.parse.urlsplit(info.base_url).netloc
        facts |= {host} if host else set()
    facts -= {"", "nowhere", *DATASETS}  # the names themselves are what other modules use
    for path in sorted(real.glob("*.py")):
        if path.name == "datasets.py":
            continue
        text = path.read_text()
        assert not [fact for fact in facts if fact in text], path.name
    source = (real / "datasets.py").read_text()
    for info in DATASETS.values():  # and in datasets.py each checksum is written once
        assert all(source.count(f.md5) == 1 for f in info.files if f.md5), info.name


def test_download_reads_the_record(tmp_path):
    """The record decides where the files come from, their names, checksums, folder and split sizes."""
    archive, _ = _cifar10()
    moved = dataclasses.replace(fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(15, 3))["cifar10"],
                                folder="elsewhere")
    with fx.Server({f"/b/{ARCHIVE}": archive}) as server:
        record = dataclasses.replace(moved, base_url=server.url("/b/"))
        path = ensure_dataset("cifar10", tmp_path, sources={"cifar10": record}, progress=False)
        assert path == tmp_path / "elsewhere" and [r.path for r in server.log] == [f"/b/{ARCHIVE}"]
        with pytest.raises(DatasetError, match="not the published 16 and 3"):
            ensure_dataset("cifar10", tmp_path / "x", sources={"cifar10": dataclasses.replace(
                record, split_sizes=(16, 3))}, progress=False)


def test_success_output_and_no_progress_bar_off_a_terminal(tmp_path, capsys, monkeypatch):
    archive, _ = _cifar10()
    registry = fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(15, 3))
    with fx.Server({f"/{ARCHIVE}": archive}) as server:
        code, out, err = _cli(capsys, monkeypatch, registry, "download", "cifar10", "--data-dir", str(tmp_path),
                              "--mirror", server.url("/"))
    assert code == 0 and err == ""  # stderr is not a terminal here: no bar, and logs go to stdout
    assert "verified" in out and "useful-train run --dataset cifar10 --data-dir" in out
    code, out, err = _cli(capsys, monkeypatch, registry, "download", "cifar10", "--data-dir", str(tmp_path))
    assert code == 0 and "is already in" in out and "unchanged" in out


def test_progress_bar_when_asked(tmp_path, capsys):
    archive, _ = _cifar10()
    registry = fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(15, 3))
    with fx.Server({f"/{ARCHIVE}": archive}) as server:
        ensure_dataset("cifar10", tmp_path, mirror=server.url("/"), sources=registry, progress=True)
    err = capsys.readouterr().err
    assert ARCHIVE in err and "B/s" in err  # tqdm's bar, on stderr


def test_download_is_a_subcommand():
    proc = run_module("real", "--help")
    assert proc.returncode == 0 and "download" in proc.stdout


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_needs_no_download():
    assert ensure_dataset("fashion-mnist", None) == DEBIAN_FASHION_MNIST  # the production record, no network


def test_no_data_dir_is_refused_for_other_data_sets():
    with pytest.raises(ConfigError, match="--data-dir: needed to download cifar10"):
        ensure_dataset("cifar10", None)


def test_gzip_payloads_in_fixtures_are_real_idx():
    files, _ = fx.fashion_files()
    header = gzip.decompress(files["train-images-idx3-ubyte.gz"])[:16]
    assert header[:4] == (2051).to_bytes(4, "big") and header[8:16] == (28).to_bytes(4, "big") * 2


def test_run_with_download_fetches_then_trains(tmp_path, capsys, monkeypatch):
    """``useful-train run --download --mirror URL``: the data set is fetched and verified into
    --data-dir, then trained on; a wrong checksum stops the run before anything is written."""
    archive, _ = _cifar10(per_batch=8)
    registry = fx.registry("cifar10", {ARCHIVE: archive}, split_sizes=(40, 8))
    data_dir, out = tmp_path / "data", tmp_path / "run"
    run = ["run", "--dataset", "cifar10", "--data-dir", str(data_dir), "--model", "cnn-small", "--epochs", "1",
           "--batch-size", "8", "--device", "cpu", "--download"]
    with fx.Server({f"/{ARCHIVE}": archive}) as server:
        bad = dict(registry)
        bad["cifar10"] = dataclasses.replace(registry["cifar10"], files=(RemoteFile(ARCHIVE, "0" * 32),))
        code, _, err = _cli(capsys, monkeypatch, bad, *run, "--mirror", server.url("/"), "--out", str(out))
        assert code == 2 and "checksum" in err and len(err.splitlines()) == 1 and not out.exists()
        code, _, err = _cli(capsys, monkeypatch, registry, *run, "--mirror", server.url("/"), "--out", str(out))
    assert code == 0, err
    assert (data_dir / "cifar-10-batches-py").is_dir() and (out / "summary.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["download"] is True and config["mirror"] == server.url("/")
    code, _, err = _cli(capsys, monkeypatch, registry, "run", "--dataset", "synthetic", "--download", "--out",
                        str(tmp_path / "s"))
    assert code == 2 and "--download" in err
