"""The run directory: its files, the fresh / resume / done decision, the checkpoint, reading runs back.

The one owner of the run-directory format (no other module names a run file)::

    DIR/config.json         the resolved configuration, with "format": FORMAT (our marker)
    DIR/metrics.jsonl       one JSON object per epoch (phase, epoch, steps, loss, accuracy, lr, ...)
    DIR/summary.json        written when the run ends (status completed or diverged)
    DIR/checkpoint.pt       the state after the last finished epoch (loads with weights_only=True)
    DIR/partition.npz       USEFUL's split (real/useful.py decides its content)
    DIR/learning_stats.npz  per-example learning statistics; DIR/clusters.md their table by cluster
    DIR/easy_feature.npz    with --easy-feature: has_easy per training and test example, the positions
    DIR/group_accuracy.npz  with --easy-feature: training accuracy per group and window of iterations
    DIR/curves.png          loss and accuracy per epoch
    DIR/run.lock            the live process that owns DIR
    DIR/sharpness.json      useful-train sharpness's report (written later, on request)
    DIR/tensorboard/        TensorBoard event files (--tensorboard; real/tensorboard.py writes them)

Rank 0 writes every file atomically (theory.plumbing.atomic): a reader, or a run resumed after ``kill -9``,
sees the old file or the new one.  The checkpoint is written before metrics.jsonl, which may lag it and never
leads it.  :func:`open_run` locks and decides before writing anything; a folder with run files whose
config.json is not ours is refused, ``--overwrite`` included: nothing of the user's is touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from theory.plumbing.atomic import atomic_open, atomic_save_npz, atomic_write_json, atomic_write_text, to_json
from theory.plumbing.cli import os_error_line
from theory.plumbing.config import ConfigError, config_from_mapping, to_jsonable
from theory.plumbing.lock import RunLock, RunLockError
from theory.useful import Partition

from . import distributed as D
from .config import TrainConfig, computed_config, legacy_fields
from .group_accuracy import GroupAccuracy
from .learning_stats import LearningStats
from .tensorboard import Board, event_files

__all__ = ["FORMAT", "RUN_FILES", "Run", "RunState", "RunLock", "RunLockError", "open_run", "is_run_dir",
           "remove_run_files", "has_run_files", "run_status", "read_config", "load_run_config", "read_summary",
           "read_metrics", "read_partition", "read_learning_stats", "read_easy_feature", "read_group_accuracy",
           "load_checkpoint", "checkpoint_path", "state_digest", "config_differences", "iter_run_dirs"]

log = logging.getLogger("real.rundir")

FORMAT = "useful-sb/run/1"  # config.json's marker: this folder was written by useful-train
CONFIG, METRICS, SUMMARY, CHECKPOINT = "config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"
PARTITION, LEARNING_STATS, CLUSTERS, CURVES = "partition.npz", "learning_stats.npz", "clusters.md", "curves.png"
EASY_FEATURE, GROUP_ACCURACY = "easy_feature.npz", "group_accuracy.npz"
SHARPNESS = "sharpness.json"  # written by useful-train sharpness, not by the run (--overwrite keeps it)
TENSORBOARD = "tensorboard"  # the folder of the run's event files (--overwrite removes them, nothing else in it)
# The files a run writes: --overwrite removes exactly these and TENSORBOARD's event files.
RUN_FILES = (CONFIG, METRICS, SUMMARY, CHECKPOINT, PARTITION, LEARNING_STATS, CLUSTERS, CURVES, EASY_FEATURE,
             GROUP_ACCURACY)


# Reading a run directory (compare, grid, sharpness, the CLI's --resume).


def _refusal(flag: str, text: str) -> ConfigError:
    """A one-line ConfigError on ``flag`` (exit 2)."""
    return ConfigError(flag, message=f"{flag}: {text}")


def _bad_run_dir(path: Path, what: str) -> ConfigError:
    return _refusal("RUN_DIR", f"{path} {what}")


def _read_json(file: Path, what: str) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _bad_run_dir(file, f"is not readable JSON ({what}): {err}") from None


def has_run_files(path: str | os.PathLike) -> bool:
    return any((Path(path) / name).exists() for name in RUN_FILES)


def run_status(path: str | os.PathLike) -> str | None:
    """summary.json's status (``completed``, ``diverged``), or None (no summary, or an unreadable one)."""
    try:
        status = (read_summary(path) or {}).get("status")
    except ConfigError:
        return None
    return status if isinstance(status, str) else None


def is_run_dir(path: str | os.PathLike) -> bool:
    """True if ``path/config.json`` is readable and carries our marker."""
    try:
        read_config(path)
    except ConfigError:
        return False
    return True


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """config.json's TrainConfig fields (marker removed); a missing, unreadable or foreign file is a ConfigError."""
    file = Path(path) / CONFIG
    if not file.is_file():
        raise _bad_run_dir(Path(path), f"has no {CONFIG} (not a run directory)")
    data = _read_json(file, "the run's configuration")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _bad_run_dir(file, f'was not written by useful-train (no "format": "{FORMAT}")')
    return {k: v for k, v in data.items() if k != "format"}


def load_run_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The stored TrainConfig with ``overrides`` (e.g. ``data_dir``); unknown fields are refused, not dropped.
    ``tensorboard`` is off unless overridden: reading a run writes no event files and needs no tensorboard."""
    return config_from_mapping(TrainConfig, {**read_config(path), "tensorboard": False, **overrides},
                               source=str(Path(path) / CONFIG))


def read_summary(path: str | os.PathLike) -> dict | None:
    """summary.json, or None if there is none (an unfinished run); a malformed one is a ConfigError."""
    file = Path(path) / SUMMARY
    if not file.exists():
        return None
    data = _read_json(file, "the run's summary")
    if not isinstance(data, dict):
        raise _bad_run_dir(file, f"holds {type(data).__name__}, expected an object")
    return data


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """metrics.jsonl's rows ([] if absent); a line that is not a JSON object is a ConfigError."""
    file = Path(path) / METRICS
    if not file.exists():
        return []
    rows = []
    with open(file, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if not isinstance(row, dict):
                    raise _bad_run_dir(file, f"line {number} is not a JSON object")
                rows.append(row)
    return rows


def _read_npz(path: str | os.PathLike, name: str) -> dict[str, np.ndarray]:
    with np.load(Path(path) / name, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_partition(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """partition.npz's arrays (scalars as 0-d arrays, ``method`` as a str)."""
    arrays = _read_npz(path, PARTITION)
    return {**arrays, "method": str(arrays["method"])}


def read_learning_stats(path: str | os.PathLike) -> dict[str, np.ndarray]:
    return _read_npz(path, LEARNING_STATS)


def read_easy_feature(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """easy_feature.npz's arrays (``has_easy_train``, ``has_easy_test``, ``positions``, ...)."""
    return _read_npz(path, EASY_FEATURE)


def read_group_accuracy(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """group_accuracy.npz's arrays (the pre-split phase's with the prefix ``separate_``)."""
    return _read_npz(path, GROUP_ACCURACY)


def checkpoint_path(path: str | os.PathLike) -> Path:
    """The checkpoint of a run directory (or ``path`` itself if it is a file)."""
    path = Path(path)
    return path / CHECKPOINT if path.is_dir() else path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint, read with ``weights_only=True`` (tensors and plain data: a crafted file cannot run
    code); an empty, truncated or foreign file is a ConfigError naming it."""
    path = checkpoint_path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise _bad_run_dir(path, "does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise _bad_run_dir(path, f"is not a readable useful-train checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise _bad_run_dir(path, f'is not a useful-train checkpoint (no "format": "{FORMAT}")')
    return ckpt


def state_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors (in key order): equal
    digests mean bitwise-equal states (recorded to show the main phase starts afresh)."""
    h = hashlib.sha256()
    for name, t in sorted(state_dict.items()):
        h.update(name.encode())
        if not isinstance(t, torch.Tensor):
            h.update(repr(t).encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def iter_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The distinct run directories among ``paths`` (resolved; a folder given twice counts once)."""
    return list(dict.fromkeys(Path(p).resolve() for p in paths))


# What a run carries from epoch to epoch and phase to phase.


@dataclass
class RunState:
    """The run's record besides the phase's own state: saved in every checkpoint."""

    phase: str = "main"  # the phase in progress: "separate" (USEFUL's pre-split phase) or "main"
    metrics: list[dict] = field(default_factory=list)
    partition: Partition | None = None
    separated_at: dict | None = None  # {"epoch": e, "steps": s}: where the pre-split phase ended
    init_digest: dict[str, str] = field(default_factory=dict)
    train_seconds: float = 0.0
    train_images: float = 0.0
    wall_before: float = 0.0  # wall seconds of earlier sessions (before a resume)
    learning: dict[str, LearningStats] = field(default_factory=dict)  # per phase
    groups: dict[str, GroupAccuracy] = field(default_factory=dict)  # per phase (with --easy-feature)
    session_start: float = field(default_factory=time.perf_counter)

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.session_start

    @property
    def multiplicities(self) -> np.ndarray | None:
        return None if self.partition is None else self.partition.multiplicities

    def state_dict(self) -> dict:
        p = self.partition
        partition = None if p is None else {"multiplicities": torch.from_numpy(np.asarray(p.multiplicities, np.int64)),
                                            "k": int(p.k), "method": p.method}
        totals = {"train_seconds": self.train_seconds, "train_images": self.train_images,
                  "wall_seconds": self.wall_seconds()}
        return {"phase": self.phase, "metrics": self.metrics, "partition": partition, "separated_at": self.separated_at,
                "init_digest": self.init_digest, "totals": totals,
                "learning": {name: stats.state_dict() for name, stats in self.learning.items()},
                "groups": {name: acc.state_dict() for name, acc in self.groups.items()}}

    def load_state_dict(self, state: Mapping, n_train: int, device: torch.device) -> None:
        p, totals = state["partition"], state["totals"]
        self.phase, self.metrics, self.separated_at = state["phase"], list(state["metrics"]), state["separated_at"]
        if p is not None:
            self.partition = Partition.from_multiplicities(p["multiplicities"].numpy(), k=p["k"], method=p["method"])
        self.init_digest, self.wall_before = dict(state["init_digest"]), totals["wall_seconds"]
        self.train_seconds, self.train_images = totals["train_seconds"], totals["train_images"]
        for name, stats_state in state["learning"].items():
            self.learning[name] = LearningStats(n_train, device=device)
            self.learning[name].load_state_dict(stats_state)
        for name, acc_state in state.get("groups", {}).items():  # (a run from before --easy-feature has none)
            self.groups[name] = GroupAccuracy.from_state_dict(acc_state, device=device)


# An open run.


class Run:
    """A run directory opened by :func:`open_run` for one session (a context manager that releases the
    lock).  ``state`` is the run's record; ``done``: the folder holds a completed run, nothing to train."""

    def __init__(self, path: Path, cfg: TrainConfig, info: D.DistInfo, lock: RunLock | None):
        self.path, self.cfg, self.info, self.lock = path, cfg, info, lock
        self.state = RunState()
        self.done = False
        self._checkpoint: dict | None = None  # the payload to restore, until it is used
        self._fresh = False  # this session started the run (nothing was there to resume)
        self.board = None  # rank 0's TensorBoard writer (--tensorboard), opened by open_run

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type=None, *exc: object) -> None:
        """Close the TensorBoard writer and release the lock.  A fresh run that fails before its first
        checkpoint leaves no files (the next command would refuse them as an unfinished run)."""
        try:
            if self.board is not None:
                self.board.close()
                self.board = None
            # the checkpoint on disk decides, not a flag: a signal can land right after its rename
            if exc_type is not None and self._fresh and self.info.is_main and not (self.path / CHECKPOINT).exists():
                remove_run_files(self.path)  # all ours: a fresh run started in a folder without run files
        finally:
            if self.lock is not None:
                self.lock.release()

    def save(self, ph) -> None:
        """Checkpoint ``ph`` and the run's record, then rewrite metrics.jsonl (rank 0)."""
        if not self.info.is_main:
            return
        payload = {"format": FORMAT, "config": to_jsonable(self.cfg), **ph.state_dict(), "run": self.state.state_dict()}
        with atomic_open(self.path / CHECKPOINT) as fh:
            torch.save(payload, fh)
        self._write_metrics()

    def restore(self, ph) -> None:
        """Load the checkpoint's phase state into ``ph`` if the checkpoint is of that phase."""
        if self._checkpoint is not None and self._checkpoint["phase"] == ph.name:
            ph.load_state_dict(self._checkpoint)
            self._checkpoint = None

    def _write_metrics(self) -> None:
        atomic_write_text(self.path / METRICS, "".join(to_json(r, indent=None) + "\n" for r in self.state.metrics))

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """The epoch's row to TensorBoard (``--tensorboard``, rank 0), before its checkpoint."""
        if self.board is not None:
            self.board.epoch(row)

    def write_partition(self, arrays: Mapping[str, np.ndarray]) -> None:
        """partition.npz and, with ``--tensorboard``, the split's scalars (rank 0)."""
        if self.info.is_main:
            atomic_save_npz(self.path / PARTITION, **arrays)
        if self.board is not None:
            self.board.split(arrays)

    def summary(self) -> dict | None:
        return read_summary(self.path)

    def finish(self, summary: dict, *, learning: tuple[dict, str | None] | None, curves_png: bytes | None,
               easy_feature: Mapping[str, np.ndarray] | None = None) -> dict:
        """Write the run's closing files (rank 0) and return the summary."""
        if not self.info.is_main:
            return summary
        if easy_feature is not None:
            atomic_save_npz(self.path / EASY_FEATURE, **easy_feature)
            atomic_save_npz(self.path / GROUP_ACCURACY, **{("" if name == "main" else f"{name}_") + key: value
                                                           for name, acc in self.state.groups.items()
                                                           for key, value in acc.result().items()})
        if learning is not None:
            arrays, table = learning
            atomic_save_npz(self.path / LEARNING_STATS, **arrays)
            if table is not None:
                atomic_write_text(self.path / CLUSTERS, table)
        self._write_metrics()
        atomic_write_json(self.path / SUMMARY, summary)
        if curves_png is not None:
            with atomic_open(self.path / CURVES) as fh:
                fh.write(curves_png)
        return summary


# Opening a run: fresh, resume or done.


def remove_run_files(path: str | os.PathLike) -> None:
    """Remove the files a run writes (RUN_FILES and the event files) from ``path``, nothing else."""
    path = Path(path)
    for file in [path / name for name in RUN_FILES] + event_files(path / TENSORBOARD):
        file.unlink(missing_ok=True)


def _decide(cfg: TrainConfig, path: Path) -> str:
    """Rank 0, lock held: ``"fresh"``, ``"resume"`` or ``"done"``; a refusal is a ConfigError on --out."""
    if path.exists() and not path.is_dir():
        raise _refusal("--out", f"{path} exists and is not a directory")
    # Run files beside a config.json that is not ours (or none): the user's, not ours to touch.
    foreign = [] if is_run_dir(path) else [name for name in RUN_FILES if (path / name).exists()] + [
        f"{TENSORBOARD}/{p.name}" for p in event_files(path / TENSORBOARD)][:1]
    if foreign:
        raise _refusal("--out", f"{path} holds {', '.join(foreign)} not written by useful-train (config.json without "
                                "its marker); choose another folder")
    for tmp in [t for name in RUN_FILES for t in path.glob(f".{name}.*.tmp")]:  # of writes a kill interrupted
        tmp.unlink(missing_ok=True)
    if has_run_files(path) and not cfg.overwrite:  # a stored run: done, continued, or refused
        try:
            status = (read_summary(path) or {}).get("status")
        except ConfigError as err:
            raise _refusal("--out", str(err).split(": ", 1)[-1]) from None
        if status == "completed":
            if cfg.resume:
                return "done"
            raise _refusal("--out", f"{path} holds a completed run (summary.json status 'completed'); pass "
                                    "--overwrite to replace it")
        if not cfg.resume:
            what = "a diverged run" if status == "diverged" else "an unfinished run"
            raise _refusal("--out", f"{path} holds {what}; pass --resume to continue it or --overwrite to start over")
    if cfg.overwrite or not (path / CHECKPOINT).exists():  # (a run that died before its first checkpoint too)
        remove_run_files(path)
        return "fresh"
    return "resume"


def config_differences(stored: Mapping[str, Any], cfg: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(field, stored value, current value)`` for each computed field that differs; a field the stored run
    predates counts as what it computed (:func:`real.config.legacy_fields`), else as its default."""
    stored = {**computed_config(TrainConfig()), **legacy_fields(stored)}
    return [(name, stored[name], now) for name, now in computed_config(cfg).items() if stored[name] != now]


# OSErrors that say the folder given as --out cannot be used (bad input, exit 2); the others (a full
# disk, an I/O error) are the environment's (exit 1, through theory.plumbing.cli.cli_entry).
_UNUSABLE_OUT = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG)


@contextlib.contextmanager
def _refusals_as_config_errors():
    try:
        yield
    except RunLockError as err:
        raise _refusal("--out", str(err)) from None
    except OSError as err:
        if err.errno not in _UNUSABLE_OUT:
            raise
        raise _refusal("--out", os_error_line(err)) from None


def open_run(cfg: TrainConfig, info: D.DistInfo, n_train: int) -> Run:
    """Open ``cfg.out``: lock, decide (rank 0, broadcast), check a stored run's configuration, then write
    config.json; nothing is written before every check has passed (a refusal is one ConfigError)."""
    path = Path(cfg.out)
    run = Run(path, cfg, info, RunLock(path) if info.is_main else None)
    try:
        decision, error = "fresh", None
        if info.is_main:  # rank 0 takes the lock and decides; every rank gets its decision, or its refusal
            try:
                with _refusals_as_config_errors():
                    run.lock.acquire()
                    decision = _decide(cfg, path)
            except ConfigError as err:
                error = (err.field, str(err))
        decision, error = D.broadcast_object((decision, error))
        if error is not None:
            raise ConfigError(error[0], message=error[1])
        try:
            run._checkpoint = ckpt = load_checkpoint(path / CHECKPOINT) if decision == "resume" else None
        except ConfigError as err:  # an empty, truncated or foreign checkpoint: nothing to resume from
            raise _refusal("--resume", str(err).split(": ", 1)[-1] + "; pass --overwrite to start over") from None
        diff = [] if decision == "fresh" else config_differences(ckpt["config"] if ckpt else read_config(path), cfg)
        if diff:  # the stored run must be this configuration
            raise ConfigError(diff[0][0], message=f"--resume: the configuration differs from the run in {path}: "
                              + ", ".join(f"--{n.replace('_', '-')} is {now!r}, was {then!r}" for n, then, now in diff))
        run.done, run._fresh = decision == "done", decision == "fresh"
        if run.done:
            log.info("%s is already completed; nothing to resume", path)
            return run
        if run._fresh:
            run.state.phase = "separate" if cfg.useful else "main"
        else:
            run.state.load_state_dict(ckpt["run"], n_train, info.device)
            log.info("resuming %s: %s phase after epoch %d", path, ckpt["phase"], ckpt["epoch"])
        if info.is_main:
            with _refusals_as_config_errors():
                if ckpt is not None:
                    run._write_metrics()  # drops any line written after the checkpoint
                atomic_write_json(path / CONFIG, {"format": FORMAT, **to_jsonable(cfg)})
                if cfg.tensorboard:  # continues the event files from the checkpointed record
                    split = run.state.partition is not None and (path / PARTITION).exists()
                    run.board = Board(path / TENSORBOARD, epochs=cfg.epochs, rows=run.state.metrics,
                                      split=read_partition(path) if split else None)
    except BaseException as err:
        run.__exit__(type(err), err, None)
        raise
    return run
