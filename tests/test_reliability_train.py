"""Reliability of ``useful-train`` (issue 7): ten SIGKILLs and resumes, determinism, bad data through the
command line, run-directory guards not covered by tests/test_real_train.py, and the user mistakes listed
in docs/reliability.md.  CPU, synthetic data set, cnn-small, tiny sizes."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, env, flags

from real.cli import main
from real.config import TrainConfig
from real.rundir import load_checkpoint, read_metrics, read_partition
from real.train import train

TINY = dict(dataset="synthetic", model="cnn-small", synthetic_train=128, synthetic_test=64, batch_size=32)
COMPARED = ("phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")  # not timing fields


def _rows(path: Path) -> list[tuple]:
    return [tuple(r[k] for k in COMPARED) for r in read_metrics(path)]


def _model(path: Path) -> dict:
    return load_checkpoint(path / "checkpoint.pt")["model"]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# Ten SIGKILLs at random points, each followed by --resume: same weights and metrics as without.

KILLED = dict(TINY, epochs=10, useful=True, separate_epoch=3, deterministic=True)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _temporaries(out: Path) -> list[str]:
    try:
        return [n for n in os.listdir(out) if n.endswith(".tmp")]
    except FileNotFoundError:
        return []


def test_ten_sigkills_then_resume_equal_uninterrupted_run(tmp_path):
    rng = random.Random(20241)
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "real", "run", *flags(**KILLED), "--out", str(out)]
    kills: list[dict] = []
    completed = False
    for attempt in range(40):
        if len(kills) == 10:
            break
        # The first two kills come right after a checkpoint of the pre-split phase; then a mix of
        # random delays from the start (imports, data, training), kills after the next checkpoint
        # (plus a random delay) and kills while a temporary file of an atomic write exists.
        mode = "after-checkpoint" if len(kills) < 2 else rng.choice(["delay", "after-checkpoint", "after-checkpoint", "during-write"])
        delay = rng.uniform(0.5, 4.0) if mode == "delay" else rng.uniform(0.0, 0.3)
        ckpt_before = _mtime(out / "checkpoint.pt")
        proc = subprocess.Popen(args + (["--resume"] if attempt else []), env=env(), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            start, deadline = time.time(), time.time() + 90
            changes, last, hit = 0, ckpt_before, None
            while proc.poll() is None and time.time() < deadline:
                now = _mtime(out / "checkpoint.pt")
                if now != last:
                    changes, last = changes + 1, now
                if mode == "delay" and time.time() - start >= delay:
                    hit = "delay"
                elif mode == "after-checkpoint" and changes >= 1:
                    time.sleep(delay)
                    hit = "after-checkpoint"
                elif mode == "during-write" and _temporaries(out):
                    hit = "during-write:" + ",".join(_temporaries(out))
                elif mode == "during-write" and changes >= 2:  # none caught: fall back
                    hit = "after-checkpoint"
                if hit:
                    rows = len(read_metrics(out)) if (out / "metrics.jsonl").exists() else 0
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    kills.append({"mode": hit, "rows": rows, "partition": (out / "partition.npz").exists(),
                                  "checkpoint": (out / "checkpoint.pt").exists()})
                    break
                time.sleep(0.001 if mode == "during-write" else 0.005)
            else:
                stderr = proc.stderr.read().decode()
                assert proc.returncode == 0, stderr
                completed = True
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        if completed:
            break
    assert len(kills) == 10, kills
    # Pre-split phase (a checkpoint, no partition yet) was hit, and the main phase too.
    assert any(k["checkpoint"] and not k["partition"] for k in kills), kills
    if not completed:
        res = subprocess.run(args + ["--resume"], env=env(), cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert not _temporaries(out) and not (out / "run.lock").exists()

    ref = tmp_path / "ref"
    assert train(TrainConfig(**KILLED, out=str(ref)))["status"] == "completed"
    assert _same_weights(_model(out), _model(ref))
    assert _rows(out) == _rows(ref)
    assert [(p, e) for p, e, *_ in _rows(out)] == [("separate", e) for e in (1, 2, 3)] + [("main", e) for e in range(1, 11)]
    assert np.array_equal(read_partition(out)["indices"], read_partition(ref)["indices"])


# ----------------------------------------------------------------------------------------------
# Determinism on the CPU.


def test_two_deterministic_cpu_runs_are_identical(tmp_path):
    kw = dict(TINY, epochs=3, useful=True, separate_epoch=1, optimizer="sam", deterministic=True)
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(TrainConfig(**kw, out=str(a)))["status"] == "completed"
    assert train(TrainConfig(**kw, out=str(b)))["status"] == "completed"
    assert _rows(a) == _rows(b)
    assert _same_weights(_model(a), _model(b))
    c = tmp_path / "c"  # another seed: different numbers (the comparison above is not vacuous)
    assert train(TrainConfig(**{**kw, "seed": 1}, out=str(c)))["status"] == "completed"
    assert _rows(a) != _rows(c)


# ----------------------------------------------------------------------------------------------
# Bad data files through the command line: exit 2, one line naming the file, nothing written.


def _cifar10(parent: Path) -> Path:
    root = parent / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, size=4)]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.mark.parametrize("problem", ["missing", "truncated", "shape", "labels", "not-pickle"])
def test_bad_cifar10_files_through_cli(problem, tmp_path, capsys):
    root = _cifar10(tmp_path / "data")
    target = root / "data_batch_3"
    if problem == "missing":
        target.unlink()
    elif problem == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    elif problem == "shape":
        target.write_bytes(pickle.dumps({b"data": np.zeros((4, 1000), np.uint8), b"labels": [0] * 4}))
    elif problem == "labels":
        target.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}))
    else:
        target.write_text("not a pickle\n")
    code = main(["run", "--dataset", "cifar10", "--model", "cnn-small", "--epochs", "1", "--data-dir",
                 str(tmp_path / "data"), "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: --data-dir:"), err
    assert "data_batch_3" in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------
# Run-directory guards not covered by tests/test_real_train.py.


def test_diverged_run_refused_without_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "div"
    argv = ["run", *flags(**TINY), "--epochs", "20", "--lr", "1e6", "--schedule", "constant", "--synthetic-train", "64",
            "--out", str(out), "--device", "cpu"]
    assert main(argv) == 1
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged run" in err[0] and "--resume" in err[0] and "--overwrite" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    ok = ["run", *flags(**TINY), "--epochs", "1", "--out", str(out), "--device", "cpu", "--overwrite"]
    assert main(ok) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


def test_resume_removes_temporaries_of_an_interrupted_write(tmp_path):
    out = tmp_path / "r"
    cfg = TrainConfig(**TINY, epochs=2, out=str(out), deterministic=True)
    assert train(cfg)["status"] == "completed"
    # Make it an unfinished run (as if killed after epoch 1, in the middle of writing the checkpoint).
    ckpt = load_checkpoint(out / "checkpoint.pt")
    (out / "summary.json").unlink()
    (out / ".checkpoint.pt.12345.tmp").write_bytes(b"half a checkpoint")
    (out / ".metrics.jsonl.999.tmp").write_text('{"epoch": ')
    assert ckpt["epoch"] == 2
    assert train(TrainConfig(**TINY, epochs=2, out=str(out), deterministic=True, resume=True))["status"] == "completed"
    assert not _temporaries(out)


# ----------------------------------------------------------------------------------------------
# The plausible mistakes of docs/reliability.md: one line, exit 2, nothing written.


def _mistakes(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "empty").mkdir()
    (tmp / "typo.toml").write_text('dataset = "synthetic"\nlearnig_rate = 0.1\n')
    return [
        (["--dataset", "cifar10", "--data-dir", str(tmp / "nonexistent")], "--data-dir"),
        (["--dataset", "cifar10", "--data-dir", str(tmp / "empty")], "data_batch_1"),
        (["--rho", "-0.05"], "--rho"),
        (["--model", "resnet50"], "--model"),
        (["--config", str(tmp / "typo.toml")], "learnig_rate"),
        (["--batch-size", "0"], "--batch-size"),
        (["--useful", "--separate-epoch", "abc"], "separate-epoch"),
        (["--useful", "--upsample-factor", "0"], "--upsample-factor"),
        (["--optimizer", "SAM"], "optimizer"),
        (["--dataset", "cifar-10"], "--dataset"),
        (["--epochs", "10", "--useful", "--separate-epoch", "20"], "--separate-epoch"),
        (["--label-noise", "1.0"], "--label-noise"),
    ]


def test_user_mistakes_one_line_exit_2(tmp_path, capsys):
    for extra, name in _mistakes(tmp_path):
        code = main(["run", *extra, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and name in err, (extra, err)
        assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exc:
        main(["run", "--out"])
    assert exc.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tmp_path, capsys):
    code = main(["run", *flags(**TINY), "--epochs", "1", "--device", "cuda", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "error: --device: got 'cuda', but CUDA is not available on this machine"
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------
# Trust at the boundaries (issue 13): files not ours, crafted checkpoints, failures before the first
# checkpoint, file-system errors, wrong-shape state files.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

QUICK = ["run", *flags(**TINY), "--epochs", "1", "--device", "cpu"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


@pytest.mark.parametrize("mode", [[], ["--resume"], ["--overwrite"]])
def test_a_folder_of_someone_elses_files_is_never_touched(tmp_path, capsys, mode):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"experiment": "my own notes"}\n')
    (out / "metrics.jsonl").write_text('{"accuracy": 0.9}\n')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*QUICK, "--out", str(out), *mode]) == 2
    line = _one_line(capsys)
    assert "--out" in line and "not written by useful-train" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["crafted", "empty", "truncated", "not-a-checkpoint"])
def test_resume_from_a_bad_checkpoint_is_one_line_and_runs_no_code(tmp_path, capsys, kind):
    out = tmp_path / "r"
    assert train(TrainConfig(**TINY, epochs=1, out=str(out)))["status"] == "completed"
    (out / "summary.json").unlink()  # an unfinished run: --resume reads the checkpoint
    marker = tmp_path / "pwned"
    ckpt = out / "checkpoint.pt"
    if kind == "crafted":
        torch.save({"format": "useful-sb/run/1", "config": {}, "model": _Payload(marker)}, ckpt)
    elif kind == "empty":
        ckpt.write_bytes(b"")
    elif kind == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: len(ckpt.read_bytes()) // 2])
    else:
        ckpt.write_bytes(pickle.dumps({"model": 1}))
    assert main(["run", "--out", str(out), "--resume"]) == 2
    line = _one_line(capsys)
    assert "--resume" in line and "checkpoint.pt" in line
    assert not marker.exists()


def test_a_failure_before_the_first_checkpoint_leaves_no_files(tmp_path, monkeypatch, capsys):
    """A fresh run that fails (or is interrupted) before its first checkpoint removes its config.json:
    the next command starts fresh instead of refusing an 'unfinished run' with nothing to resume."""
    import real.train as T

    out = tmp_path / "f"
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(T, "build_phase", fail)
        with pytest.raises(type(error)):
            train(TrainConfig(**TINY, epochs=1, out=str(out)))
        assert out.is_dir() and not any((out / n).exists() for n in ("config.json", "metrics.jsonl", "run.lock"))
    monkeypatch.undo()
    assert main([*QUICK, "--out", str(out)]) == 0


def test_ctrl_c_is_130_with_one_line(tmp_path, monkeypatch, capsys):
    import real.train as T

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "train_epoch", interrupt)
    assert main([*QUICK, "--out", str(tmp_path / "c")]) == 130
    assert _one_line(capsys) == "error: interrupted"
    assert not (tmp_path / "c" / "config.json").exists()


def test_out_that_is_a_file_and_a_full_disk(tmp_path, monkeypatch, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    assert main([*QUICK, "--out", str(target)]) == 2
    assert "--out" in _one_line(capsys) and target.read_text() == "keep me"
    # The disk fills up when the first checkpoint is written: one line, exit 1, no temporary file.
    import errno

    import theory.plumbing.atomic as A

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "full"
    real_fsync = os.fsync
    monkeypatch.setattr(A.os, "fsync", lambda fd: full(fd) if not os.path.isdir(f"/proc/self/fd/{fd}") else real_fsync(fd))
    assert main([*QUICK, "--out", str(out)]) == 1
    assert "No space left on device" in _one_line(capsys)
    assert not _temporaries(out) and not (out / "config.json").exists()


def test_an_empty_test_split_is_one_line(tmp_path, monkeypatch, capsys):
    import real.data as data_module
    from real.datasets import load_dataset

    def no_test(*args, **kwargs):
        ds = load_dataset(*args, **kwargs)
        return type(ds)(**{**ds.__dict__, "test_x": ds.test_x[:0], "test_y": ds.test_y[:0]})

    monkeypatch.setattr(data_module, "load_dataset", no_test)
    assert main([*QUICK, "--out", str(tmp_path / "e")]) == 2
    assert "test split is empty" in _one_line(capsys)
    assert not (tmp_path / "e").exists()


_WRONG_SHAPES = st.one_of(st.just("[]"), st.just("null"), st.just("3"), st.just('"text"'), st.just("{"),
                          st.just("\u00ff\u00fe"), st.lists(st.integers(), max_size=3).map(json.dumps))


@settings(max_examples=40, suppress_health_check=list(HealthCheck))
@given(which=st.sampled_from(["config.json", "summary.json", "metrics.jsonl"]), text=_WRONG_SHAPES)
def test_wrong_shape_state_files_are_one_line(tmp_path_factory, which, text):
    """A run folder whose state file is valid JSON of the wrong shape (or not JSON): compare and run
    --resume end with one line and exit 2 (in process: main() is the command), and leave the file as
    it was."""
    import contextlib
    import io

    from real.rundir import FORMAT
    from theory.plumbing.config import to_jsonable

    out = tmp_path_factory.mktemp("w") / "run"
    out.mkdir()
    cfg = TrainConfig(**TINY, epochs=1, out=str(out))
    (out / "config.json").write_text(json.dumps({"format": FORMAT, **to_jsonable(cfg)}))
    (out / "summary.json").write_text(json.dumps({"status": "completed", "final_test_acc": 0.5}))
    (out / which).write_text(text)
    for argv in (["compare", str(out)], ["run", "--out", str(out), "--resume"]):
        err, sink = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(sink):
            code = main(argv)
        lines = err.getvalue().strip().splitlines()
        if which == "metrics.jsonl" and argv[0] == "run":
            assert code == 0  # resuming a completed run reads its summary, not its metrics: nothing to do
            continue
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (argv, text, err.getvalue())
        assert (out / which).read_text() == text


def test_sigterm_keeps_the_checkpoint_and_releases_the_lock(tmp_path):
    """SIGTERM (scancel, preemption, torchrun stopping its workers) ends a run like Ctrl-C: exit 130,
    the last checkpoint kept, run.lock released, so a requeued job (on any node) resumes."""
    out = tmp_path / "t"
    args = ["-m", "real", "run", *flags(**TINY), "--epochs", "20", "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, *args], env=env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted"
    assert not (out / "run.lock").exists() and load_checkpoint(out)["epoch"] >= 1
    resumed = subprocess.run([sys.executable, "-m", "real", "run", "--out", str(out), "--resume", "--epochs", "20"],
                             env=env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "resuming" in resumed.stderr or resumed.returncode == 0


def test_a_huge_upsample_factor_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """The upsampled index list's worst case (every example upsampled) is checked once the data set's
    size is known and before the pre-split phase trains: one line naming --upsample-factor, exit 2,
    nothing written."""
    import real.train as T

    def never(*args, **kwargs):  # pragma: no cover - reached only if the check came too late
        raise AssertionError("training started")

    monkeypatch.setattr(T, "run_epoch", never)
    out = tmp_path / "u"
    assert main([*QUICK, "--useful", "--separate-epoch", "1", "--upsample-factor", str(10**15), "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert line.startswith("error: --upsample-factor:") and "available" in line
    assert not out.exists()
