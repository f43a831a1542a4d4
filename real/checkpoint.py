"""Files of a run directory, written so that a crash at any instant leaves a usable state.

Every file is written atomically (through :mod:`theory.plumbing.atomic`): the bytes go to a temporary file in
the same directory, which is flushed, ``fsync``-ed and renamed over the target with ``os.replace``
(atomic on POSIX), and the directory is ``fsync``-ed.  A reader, or a run resumed after ``kill -9``, sees either the old or the
new file, never a torn one.

A run directory is owned by one live process at a time: :class:`RunLock` holds ``run.lock`` with the
owner's PID, host and process start time; a lock whose owner is gone (e.g. killed) is stale and is
taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

from theory.plumbing.atomic import atomic_save_npz, atomic_write_bytes, atomic_write_json, atomic_write_text, to_json

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "write_jsonl",
    "read_jsonl",
    "atomic_torch_save",
    "atomic_save_npz",
    "load_checkpoint",
    "state_digest",
    "RunLock",
    "RunLockError",
    "RUN_FILES",
]

# Files a run writes (removed by --overwrite; nothing else in the directory is touched).
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "partition.npz", "curves.png")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Rewrite a JSON-lines file atomically, one compact strict-JSON object per line."""
    atomic_write_text(path, "".join(to_json(r, indent=None) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The objects of a JSON-lines file (blank lines skipped)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`atomic_torch_save` (it holds RNG states and numpy arrays,
    so it is loaded with ``weights_only=False``: load only checkpoints you wrote)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors (in key order).

    Two models have the same digest iff their states are bitwise equal (up to hash collisions);
    used to record that the main phase of a USEFUL run starts from a fresh initialization.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(name.encode())
        if not isinstance(t, torch.Tensor):
            h.update(repr(t).encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# The run lock.


class RunLockError(RuntimeError):
    """The run directory is in use by another live process."""


def _process_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A zombie (killed, not yet reaped) is not a live run.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    return True


class RunLock:
    """``DIR/run.lock`` holding ``{"pid", "host", "start"}`` of the process that owns ``DIR``.

    ``acquire`` creates it exclusively; if it exists and its owner is alive (same host, the PID
    exists and has the recorded start time) it raises :class:`RunLockError`; a stale lock is
    replaced.  ``release`` removes it if it is still ours.  A lock from another host is treated as
    live (we cannot check it).
    """

    NAME = "run.lock"

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / self.NAME
        self.held = False

    def _mine(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start_time(os.getpid())}

    def owner(self) -> dict | None:
        """The lock's content, or None if there is no lock (or it is unreadable)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _owner_alive(self, owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return True
        pid = int(owner.get("pid", -1))
        if pid == os.getpid():
            return False  # our own stale lock (e.g. left by an earlier call in this process)
        if not _pid_alive(pid):
            return False
        start = owner.get("start")
        now = _process_start_time(pid)
        return start is None or now is None or start == now  # PID reused by another process: stale

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            # Write the content to a temporary file, then hard-link it to the lock's name: the lock
            # appears complete or not at all, and link() fails if it exists (atomic test-and-set).
            fd, tmp = tempfile.mkstemp(prefix=".run.lock.", dir=str(self.path.parent))
            with os.fdopen(fd, "w") as fh:
                json.dump(self._mine(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                owner = self.owner()
                if owner is not None and self._owner_alive(owner):
                    raise RunLockError(
                        f"{self.path.parent} is in use by a live run (pid {owner.get('pid')} on "
                        f"{owner.get('host')}); wait for it or stop it"
                    ) from None
                # Stale (or unreadable) lock: remove it and try again.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self.held = True
            return
        raise RunLockError(f"could not take {self.path} (another process keeps taking it)")

    def release(self) -> None:
        if not self.held:
            return
        owner = self.owner()
        if owner is not None and int(owner.get("pid", -1)) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
