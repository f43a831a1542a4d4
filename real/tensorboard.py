"""TensorBoard event files of a run (``--tensorboard``): per-epoch scalars and USEFUL's split.

Rank 0 writes them with ``torch.utils.tensorboard.SummaryWriter`` into the run directory's
TensorBoard folder (its name is real/rundir.py's), so ``tensorboard --logdir runs/`` shows every run.
Tensorboard is an optional extra (``pip install 'useful-sb[tensorboard]'``); without it the flag is
refused when the configuration is validated (:func:`check_installed`).

Tags (float32, as TensorBoard stores scalars):

* every epoch: ``train/loss``, ``train/accuracy``, ``test/loss``, ``test/accuracy``, ``train/lr``,
  ``train/images_per_second`` and ``phase`` (0 before USEFUL's split, 1 after); the pre-split phase's
  epochs carry the prefix ``separate/`` (``separate/train/loss``, ...), so ``train/loss`` of a USEFUL
  run and of its baseline are the same curve over the same epochs;
* at the split (USEFUL runs): ``split/upsampled`` (examples), ``split/upsampled_fraction``,
  ``split/mean_loss_upsampled`` / ``split/mean_loss_rest``, and per class ``c``
  ``split/class_c/size_upsampled``, ``size_rest``, ``mean_loss_upsampled``, ``mean_loss_rest``
  (with ``--partition useful`` the upsampled examples and the rest are the class's two 2-means
  clusters); partition.npz holds the same numbers.

Steps are a pure function of (phase, epoch) (:func:`global_step`), increasing in the order a run
writes them: main epoch ``e`` is step ``e`` (epoch 0 is the split, step 0), pre-split epoch ``e`` is
step ``e - epochs - 1`` (negative: the pre-split phase comes first, whatever its length).

Resume.  Every epoch is written (and flushed) before its checkpoint, so a run killed in between has
one step on disk that its checkpoint does not hold.  The resumed session's writer starts with
TensorBoard's purge marker (``SummaryWriter(purge_step=s)``: a ``SessionLog.START`` event at step
``s``): TensorBoard's reader drops every earlier event at a step ``>= s``, and the resumed run
rewrites those steps in order (a step that is written again also replaces the old value in
TensorBoard's data server).  ``s`` is the first step the checkpointed record holds that the event
files lack (all of them if tensorboard was off until this session), else the step after the
checkpoint's last; the record's steps from ``s`` on are written again from the checkpoint
(metrics.jsonl's rows, partition.npz's split).  So the curves continue without a step twice and with
the values of an uninterrupted run.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from theory.plumbing.config import ConfigError

__all__ = ["INSTALL", "check_installed", "global_step", "epoch_scalars", "split_scalars", "event_files", "Board",
           "open_board"]

log = logging.getLogger("real.tensorboard")

INSTALL = "pip install 'useful-sb[tensorboard]'"
EPOCH_TAGS = {"train_loss": "train/loss", "train_acc": "train/accuracy", "test_loss": "test/loss",
              "test_acc": "test/accuracy", "lr": "train/lr", "images_per_second": "train/images_per_second"}
PHASE_TAG, SPLIT_TAG = "phase", "split/upsampled"  # written with every epoch / once at the split


def check_installed() -> None:
    """Raise a :class:`ConfigError` on ``--tensorboard`` unless tensorboard can be imported."""
    try:  # the writer, and the reader a resume uses
        for module in ("torch.utils.tensorboard", "tensorboard.backend.event_processing.event_accumulator"):
            importlib.import_module(module)
    except ImportError as err:
        raise ConfigError("--tensorboard", message=f"--tensorboard: needs the tensorboard package ({err}): "
                                                   f"{INSTALL}") from None


def global_step(phase: str, epoch: int, epochs: int) -> int:
    """The step of ``phase``'s epoch ``epoch`` in a run of ``epochs`` epochs: ``epoch`` in the main
    phase (0 is the split), ``epoch - epochs - 1`` before the split (at most ``epochs`` epochs)."""
    return epoch if phase == "main" else epoch - epochs - 1


def epoch_scalars(row: Mapping) -> dict[str, float]:
    """The tags and values of one row of metrics.jsonl."""
    prefix = "" if row["phase"] == "main" else "separate/"
    out = {prefix + tag: float(row[key]) for key, tag in EPOCH_TAGS.items()}
    out[PHASE_TAG] = 1.0 if row["phase"] == "main" else 0.0
    return out


def split_scalars(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The tags and values of the split, from partition.npz's arrays (empty groups have no mean loss)."""
    mask = np.asarray(arrays["upsample"], dtype=bool)
    losses = np.asarray(arrays["losses"], dtype=np.float64)
    sizes, up = np.asarray(arrays["class_sizes"]), np.asarray(arrays["upsampled_per_class"])
    out = {SPLIT_TAG: float(mask.sum()), "split/upsampled_fraction": float(mask.mean())}
    if mask.any():
        out["split/mean_loss_upsampled"] = float(losses[mask].mean())
    if not mask.all():
        out["split/mean_loss_rest"] = float(losses[~mask].mean())
    width = len(str(len(sizes) - 1))
    for c in range(len(sizes)):
        name = f"split/class_{c:0{width}d}/"
        out[name + "size_upsampled"], out[name + "size_rest"] = float(up[c]), float(sizes[c] - up[c])
        for side in ("upsampled", "rest"):
            value = float(arrays[f"mean_loss_{side}"][c])
            if math.isfinite(value):
                out[name + f"mean_loss_{side}"] = value
    return out


def event_files(folder: Path) -> list[Path]:
    """The event files in ``folder`` (the names TensorBoard reads), in TensorBoard's reading order."""
    return sorted(p for p in Path(folder).glob("*tfevents*") if p.is_file()) if Path(folder).is_dir() else []


class Board:
    """The run's SummaryWriter (rank 0): one event file per training session, flushed every epoch."""

    def __init__(self, folder: Path, *, epochs: int, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(folder)
        # TensorBoard reads a folder's files in name order, and a name starts with the second it was
        # created in: wait until this session's file sorts after every earlier one.
        newest, deadline = max((_created(p) for p in event_files(folder)), default=None), time.time() + 2.0
        while newest is not None and int(time.time()) <= newest and time.time() < deadline:
            time.sleep(0.05)
        self.epochs = epochs
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step, max_queue=10_000, flush_secs=10**6)

    def _write(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def epoch(self, row: Mapping) -> None:
        """One epoch's scalars, flushed to the file (before the epoch's checkpoint)."""
        self._write(global_step(row["phase"], row["epoch"], self.epochs), epoch_scalars(row))
        self.writer.flush()

    def split(self, arrays: Mapping[str, np.ndarray]) -> None:
        """The split's scalars at step 0, flushed."""
        self._write(global_step("main", 0, self.epochs), split_scalars(arrays))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _created(path: Path) -> int:
    """The creation second in an event file's name (``events.out.tfevents.SECONDS.HOST...``), or 0."""
    parts = path.name.split(".")
    return int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0


def _steps_on_disk(folder: Path) -> dict[str, set[int]]:
    """The steps of the epoch and split tags as TensorBoard's reader sees them (purges applied)."""
    if not event_files(folder):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    reader = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0: keep every event
    tb_log = logging.getLogger("tensorboard")
    level = tb_log.level
    tb_log.setLevel(logging.ERROR)  # it warns of every purge marker it applies: expected here
    try:
        reader.Reload()
    finally:
        tb_log.setLevel(level)
    tags = set(reader.Tags()[SCALARS])
    return {tag: {e.step for e in reader.Scalars(tag)} for tag in (PHASE_TAG, SPLIT_TAG) if tag in tags}


def open_board(folder: Path, *, epochs: int, rows: Sequence[Mapping], split: Mapping[str, np.ndarray] | None,
               fresh: bool) -> Board:
    """The writer of a session that starts from the checkpointed record ``rows`` (metrics.jsonl's
    rows) and ``split`` (partition.npz's arrays, or None): on a fresh run an empty folder (the caller
    removed earlier files); on a resumed one the purge step and rewrite of the module's docstring."""
    record = sorted([(global_step(r["phase"], r["epoch"], epochs), PHASE_TAG, r) for r in rows]
                    + ([(global_step("main", 0, epochs), SPLIT_TAG, split)] if split is not None else []),
                    key=lambda item: item[0])
    purge = None
    if not fresh and event_files(folder):
        on_disk = _steps_on_disk(folder)
        missing = [step for step, tag, _ in record if step not in on_disk.get(tag, ())]
        purge = missing[0] if missing else (record[-1][0] + 1 if record else global_step("separate", 0, epochs))
    board = Board(folder, epochs=epochs, purge_step=purge)
    rewrite = [(step, tag, item) for step, tag, item in record if purge is None or step >= purge]
    for step, tag, item in rewrite:
        board._write(step, epoch_scalars(item) if tag == PHASE_TAG else split_scalars(item))
    board.writer.flush()
    if purge is not None:
        log.info("tensorboard: continuing %s from step %d (%d step(s) rewritten from the checkpoint)", folder, purge,
                 len(rewrite))
    return board
