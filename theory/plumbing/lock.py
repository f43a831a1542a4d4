"""A folder lock shared by sims/ and real/: one live process owns a folder; a dead owner's lock is taken over.

Moved from ``real/checkpoint.py`` (same semantics, plus a lock name and garbled files read as stale):

    with RunLock(folder):                      # folder/run.lock
        ...
    with RunLock(folder, name="sweep.lock"):   # another name for another kind of owner
        ...

The lock file holds ``{"pid", "host", "start"}`` (the process start time in clock ticks since boot,
from ``/proc``).  :meth:`RunLock.acquire` creates it exclusively (written to a temporary file, then
hard-linked to its name: it appears complete or not at all).  If it exists:

* its owner is alive (same host, the PID exists, is not a zombie, and has the recorded start time):
  :class:`RunLockError`;
* a lock from another host is treated as live (it cannot be checked);
* otherwise it is stale (owner dead, PID reused by another process, our own PID left by an earlier
  call) and is replaced.  A garbled lock file (not JSON, or JSON that is not an object with an
  integer ``pid``: a list, ``null``, a string) is stale too, never an error.

:meth:`RunLock.release` removes the file if it is still ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from pathlib import Path

__all__ = ["RunLock", "RunLockError", "holding"]


class RunLockError(RuntimeError):
    """The folder is in use by another live process."""


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
    except (OverflowError, OSError):  # a PID no process can have
        return False
    # A zombie (killed, not yet reaped) is not a live owner.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    return True


class RunLock:
    """``DIR/<name>`` (default ``run.lock``) holding ``{"pid", "host", "start"}`` of the folder's owner."""

    NAME = "run.lock"

    def __init__(self, directory: str | os.PathLike, name: str | None = None):
        self.path = Path(directory) / (name or self.NAME)
        self.held = False

    def _mine(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start_time(os.getpid())}

    def owner(self) -> dict | None:
        """The lock's owner ``{"pid": int, "host", "start"}``, or None if there is no readable lock.

        A file that is not JSON, or JSON of another shape (a list, null, no integer ``pid``), reads as None.
        """
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        pid = data.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            return None
        return data

    def _owner_alive(self, owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return True
        pid = owner["pid"]
        if pid == os.getpid():
            return False  # our own stale lock (e.g. left by an earlier call in this process)
        if not _pid_alive(pid):
            return False
        start = owner.get("start")
        now = _process_start_time(pid)
        return start is None or now is None or start == now  # PID reused by another process: stale

    def acquire(self) -> None:
        """Take the lock; :class:`RunLockError` if a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=str(self.path.parent))
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(self._mine(), fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.link(tmp, self.path)  # atomic test-and-set: fails if the lock exists
            except FileExistsError:
                owner = self.owner()
                if owner is not None and self._owner_alive(owner):
                    raise RunLockError(
                        f"{self.path.parent} is in use by a live process (pid {owner.get('pid')} on "
                        f"{owner.get('host')}); wait for it or stop it"
                    ) from None
                # Stale, garbled or unreadable: remove it and try again.
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
        """Remove the lock file if this object holds it and it is still ours."""
        if not self.held:
            return
        owner = self.owner()
        if owner is not None and owner["pid"] == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def holding(directory: str | os.PathLike, name: str | None = None, *, flag: str = "--out"):
    """Hold ``directory``'s lock for the block; a live owner is a ConfigError on ``flag`` (one line,
    exit 2: the folder the flag names is in use)."""
    from .config import ConfigError

    lock = RunLock(directory, name)
    try:
        lock.acquire()
    except RunLockError as err:
        raise ConfigError(flag, message=f"{flag}: {err}") from None
    try:
        yield lock
    finally:
        lock.release()
