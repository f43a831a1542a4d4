"""TensorBoard event files of a run (``--tensorboard``): per-epoch scalars and USEFUL's split.

Rank 0 writes them into the run directory's TensorBoard folder (the tags: docs/training.md).

Resume.  An epoch is flushed before its checkpoint, so a killed run may leave steps on disk that its
checkpoint lacks (and a session without ``--tensorboard`` leaves steps out).  So every session's file
starts with TensorBoard's purge marker at the first step a run can write (``SummaryWriter(purge_step=s)``:
the reader drops every earlier event at a step >= s), then the checkpointed record (metrics.jsonl's rows,
partition.npz's split) in step order: the curves hold each step once, the values of an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from theory.plumbing.config import ConfigError

__all__ = ["INSTALL", "check_installed", "global_step", "epoch_scalars", "split_scalars", "event_files", "Board"]

log = logging.getLogger("real.tensorboard")

INSTALL = "pip install 'useful-sb[tensorboard]'"
EPOCH_TAGS = {"train_loss": "train/loss", "train_acc": "train/accuracy", "test_loss": "test/loss",
              "test_acc": "test/accuracy", "lr": "train/lr", "images_per_second": "train/images_per_second"}


def check_installed() -> None:
    """A ConfigError on ``--tensorboard`` unless torch.utils.tensorboard can be imported."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as err:
        raise ConfigError("--tensorboard", message=f"--tensorboard: needs the tensorboard package ({err}): "
                                                   f"{INSTALL}") from None


def global_step(phase: str, epoch: int, epochs: int) -> int:
    """The step of ``phase``'s epoch ``epoch`` in a run of ``epochs`` epochs: main epoch e is step e (the split
    step 0), pre-split epoch e step ``e - epochs - 1``, so steps increase in the order a run writes them."""
    return epoch if phase == "main" else epoch - epochs - 1


def epoch_scalars(row: Mapping) -> dict[str, float]:
    """The tags and values of one row of metrics.jsonl."""
    main = row["phase"] == "main"
    return {**{("" if main else "separate/") + tag: float(row[key]) for key, tag in EPOCH_TAGS.items()},
            "phase": float(main)}


def split_scalars(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The tags and values of the split, from partition.npz's arrays."""
    mask, losses = np.asarray(arrays["upsample"], dtype=bool), np.asarray(arrays["losses"], dtype=np.float64)
    sizes, up = np.asarray(arrays["class_sizes"]), np.asarray(arrays["upsampled_per_class"])
    out = {"split/upsampled": float(mask.sum()), "split/upsampled_fraction": float(mask.mean())}
    for side, members in (("upsampled", mask), ("rest", ~mask)):
        if members.any():  # an empty group has no mean loss
            out[f"split/mean_loss_{side}"] = float(losses[members].mean())
    width = len(str(len(sizes) - 1))
    for c in range(len(sizes)):
        name = f"split/class_{c:0{width}d}/"
        out[name + "size_upsampled"], out[name + "size_rest"] = float(up[c]), float(sizes[c] - up[c])
        out.update({name + f"mean_loss_{side}": value for side in ("upsampled", "rest")
                    if math.isfinite(value := float(arrays[f"mean_loss_{side}"][c]))})
    return out


def event_files(folder: Path) -> list[Path]:
    """The event files in ``folder``, in TensorBoard's reading order (by name)."""
    return sorted(p for p in Path(folder).glob("*tfevents*") if p.is_file()) if Path(folder).is_dir() else []


def _created(path: Path) -> int:
    """The creation second in an event file's name (``events.out.tfevents.SECONDS.HOST...``), or 0."""
    part = path.name.split(".")[3:4]
    return int(part[0]) if part and part[0].isdigit() else 0


class Board:
    """The run's SummaryWriter (rank 0): one event file per session, flushed every epoch, that starts with
    the purge marker and the checkpointed ``rows`` and ``split`` (or None), as the module docstring says."""

    def __init__(self, folder: Path, *, epochs: int, rows: Sequence[Mapping], split: Mapping[str, np.ndarray] | None):
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard reads a folder's files in name order, and a name starts with its creation second:
        # wait (at most 2 s) until this session's file sorts after every earlier one.
        newest, deadline = max(map(_created, event_files(folder)), default=-1), time.time() + 2.0
        while int(time.time()) <= newest and time.time() < deadline:
            time.sleep(0.05)
        self.epochs = epochs
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=global_step("separate", 0, epochs),
                                    max_queue=10_000, flush_secs=10**6)
        record = [(global_step(r["phase"], r["epoch"], epochs), epoch_scalars(r)) for r in rows]
        record += [(global_step("main", 0, epochs), split_scalars(split))] if split is not None else []
        for step, scalars in sorted(record, key=lambda item: item[0]):
            self.write(step, scalars)
        if record:
            log.info("tensorboard: %d step(s) of %s written again from the checkpoint", len(record), folder)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def epoch(self, row: Mapping) -> None:
        """One epoch's scalars, flushed (before the epoch's checkpoint)."""
        self.write(global_step(row["phase"], row["epoch"], self.epochs), epoch_scalars(row))

    def split(self, arrays: Mapping[str, np.ndarray]) -> None:
        """The split's scalars at step 0, flushed."""
        self.write(global_step("main", 0, self.epochs), split_scalars(arrays))

    def close(self) -> None:
        self.writer.close()
