"""Helpers shared by the tests that run the command lines in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def env() -> dict:
    """The environment for a subprocess: this checkout first on PYTHONPATH, one OpenMP thread by default."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def run_module(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS...`` from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env=env(), cwd=REPO)


def flags(**kw) -> list[str]:
    """Keyword arguments as command-line flags: ``batch_size=8`` -> ``--batch-size 8``; True -> bare flag."""
    out = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            out.append(flag)
        elif v is not False:
            out += [flag, str(v)]
    return out


def kill_when(module: str, args: list[str], ready, *, timeout: float = 90, poll: float = 0.01) -> None:
    """Start ``python -m MODULE ARGS``, wait until ``ready()`` is true, then SIGKILL it.

    Fails the test if the process ends on its own first or ``ready()`` stays false for ``timeout`` s.
    """
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, "the process ended before it could be killed: " + proc.stderr.read().decode()
            assert time.time() < deadline, "the condition to kill never came"
            time.sleep(poll)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def unfinish(out: Path, epochs: int = 2) -> None:
    """Make a finished run in ``out`` look like an ``epochs``-epoch run stopped where it ended:
    ``epochs`` in its configuration and checkpoint, no summary (the resume tests' starting point)."""
    import json

    import torch

    from real.rundir import load_checkpoint
    from theory.plumbing.atomic import atomic_write_json

    cfg = json.loads((out / "config.json").read_text())
    cfg["epochs"] = epochs
    atomic_write_json(out / "config.json", cfg)
    ckpt = load_checkpoint(out)
    ckpt["config"]["epochs"] = epochs
    torch.save(ckpt, out / "checkpoint.pt")
    (out / "summary.json").unlink()
