"""Files useful-sim writes: their format markers, reading state files safely, refusing to touch files not ours.

Every file useful-sim writes carries a marker saying which of its formats it is:

- a run's ``STEM.json``: ``"format": "useful-sb/sim-run/1"``; its ``STEM.npz``: a ``format`` array
  (0-d string) ``useful-sb/sim-run/1``; a USEFUL run's ``STEM_partition.npz``: ``useful-sb/sim-partition/1``;
- a sweep's ``sweep.json``: ``"format": "useful-sb/sim-sweep/1"``;
- ``claims.json``: ``"format": "useful-sb/sim-claims/1"``;
- the report's figures (PNG): ``useful-sb/sim-figure/1`` in the ``Software`` text chunk.

A command replaces only files that carry a marker of ours; any other file in the way ends the
command with one line naming it (:class:`StateFileError`, exit status 2).  A state file that is not
JSON, or JSON of the wrong shape (a list, ``null``, ...), is reported the same way, never overwritten.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from theory.plumbing.config import ConfigError

__all__ = [
    "RUN_FORMAT", "PARTITION_FORMAT", "SWEEP_FORMAT", "CLAIMS_FORMAT", "FIGURE_FORMAT",
    "StateFileError", "read_json_object", "marker", "require_ours", "require_folder", "remove_ours",
]

RUN_FORMAT = "useful-sb/sim-run/1"
PARTITION_FORMAT = "useful-sb/sim-partition/1"
SWEEP_FORMAT = "useful-sb/sim-sweep/1"
CLAIMS_FORMAT = "useful-sb/sim-claims/1"
FIGURE_FORMAT = "useful-sb/sim-figure/1"
_PREFIX = "useful-sb/sim-"


class StateFileError(ConfigError):
    """A file in ``--out`` that useful-sim cannot use or must not overwrite (one line, exit 2)."""

    def __init__(self, path: str | Path, problem: str, hint: str = "move it away or choose another --out"):
        super().__init__("--out", str(path), message=f"--out: {path} {problem}; {hint}")
        self.path = Path(path)


def _shape(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def read_json_object(path: str | Path, fmt: str, *, what: str) -> dict:
    """The JSON object in ``path``, which must carry ``"format": fmt``; else :class:`StateFileError`.

    ``what`` names the file's role in the message (e.g. "a sweep index").  Errors reading the file
    (``OSError``) propagate (exit 1 on the command line).
    """
    path = Path(path)
    text = path.read_bytes()
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise StateFileError(path, f"is not valid JSON (expected {what} written by useful-sim)") from None
    if not isinstance(data, dict):
        raise StateFileError(path, f"holds {_shape(data)}, not a JSON object (expected {what} written by useful-sim)")
    if data.get("format") != fmt:
        found = data.get("format")
        got = f'"format": {json.dumps(found)}' if "format" in data else 'no "format" key'
        raise StateFileError(path, f'was not written by useful-sim as {what} ({got}, expected "{fmt}")')
    return data


def marker(path: str | Path) -> str | None:
    """The useful-sim format marker of the file at ``path``, or None (missing, unreadable or not ours)."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_bytes())
            found = data.get("format") if isinstance(data, dict) else None
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arr = data["format"] if "format" in data.files else None
                found = str(arr[()]) if arr is not None and arr.dtype.kind == "U" and arr.ndim == 0 else None
        elif path.suffix == ".png":
            head = path.read_bytes()
            found = FIGURE_FORMAT if FIGURE_FORMAT.encode() in head else None
        else:
            return None
    except (OSError, ValueError, UnicodeDecodeError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return found if isinstance(found, str) and found.startswith(_PREFIX) else None


def require_ours(paths: Iterable[str | Path], *, hint: str = "move it away or choose another --out") -> None:
    """:class:`StateFileError` for the first existing path that carries no marker of ours."""
    for path in paths:
        path = Path(path)
        if path.is_dir():
            raise StateFileError(path, "is a folder where useful-sim writes a file", hint)
        if path.exists() and marker(path) is None:
            raise StateFileError(path, "exists and was not written by useful-sim (no format marker)", hint)


def remove_ours(paths: Iterable[str | Path]) -> None:
    """Delete each path that exists and carries a marker of ours (others are left alone)."""
    for path in paths:
        path = Path(path)
        if path.is_file() and marker(path) is not None:
            path.unlink(missing_ok=True)


def require_folder(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a folder to write into: refused (exit 2) if it exists and is not a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(flag, str(path), message=f"{flag}: {path} is a file, expected a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(flag, str(path), message=f"{flag}: {parent} is a file, expected a folder")
            break
    return path
