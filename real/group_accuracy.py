"""Training accuracy per group of examples at iteration granularity (a training-loop observer).

With a planted easy feature (real/planted.py) the groups are without (0) and with (1) the feature.
Per window of ``window`` iterations, the fraction of each group's presentations that the training
step predicted right shows when each group is fit, also inside the first epoch.  Windows restart at
each epoch; the counts stay on the device and reach the host once per epoch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from theory.plumbing.config import check_int

__all__ = ["GroupAccuracy", "GROUP_NAMES"]

GROUP_NAMES = ("without_easy", "with_easy")  # group 0, group 1 of a planted feature


class GroupAccuracy:
    """Per-group training accuracy per window of iterations; ``groups`` (n,) is each training
    example's group in ``[0, num_groups)`` (default ``num_groups``: ``max(groups) + 1``, at least 2)."""

    def __init__(self, groups: np.ndarray, *, window: int, num_groups: int | None = None,
                 device: str | torch.device = "cpu"):
        groups = np.asarray(groups).astype(np.int64).reshape(-1)
        check_int("window", window, low=1)
        self.num_groups = int(num_groups if num_groups is not None else max(2, int(groups.max(initial=0)) + 1))
        if groups.size and (groups.min() < 0 or groups.max() >= self.num_groups):
            raise ValueError(f"groups must lie in [0, {self.num_groups})")
        self.window, self.groups_host, self.device = int(window), groups, torch.device(device)
        self._groups = torch.as_tensor(groups, device=self.device)
        self._counts: torch.Tensor | None = None  # (capacity * G * 2,) int64, index (window * G + group) * 2 + correct
        self._step, self._open_epoch = 0, None  # iterations of the open epoch so far, and its number
        self.iterations = 0  # iterations of all committed epochs
        self.rows: list[np.ndarray] = []  # committed windows: [epoch, start, end, seen_0.., correct_0..]

    def update(self, indices: torch.Tensor, correct: torch.Tensor, epoch: int) -> None:
        """Record one iteration's batch: example ``indices`` (B,) and whether each was right (B,) bool."""
        if self._open_epoch is not None and epoch != self._open_epoch:
            raise ValueError(f"update for epoch {epoch} while epoch {self._open_epoch} is open")
        self._open_epoch = int(epoch)
        slot, G = self._step // self.window, self.num_groups
        if self._counts is None or (slot + 1) * 2 * G > self._counts.numel():  # grow: double the windows
            grown = torch.zeros(max(2 * (slot + 1), 16) * 2 * G, dtype=torch.int64, device=self.device)
            if self._counts is not None:
                grown[: self._counts.numel()] = self._counts
            self._counts = grown
        key = (slot * G + self._groups[indices.to(self.device)]) * 2 + correct.to(self.device, torch.int64)
        self._counts.index_add_(0, key, torch.ones_like(key))
        self._step += 1

    def end_epoch(self, epoch: int, *, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Commit the open epoch's windows (one host transfer; ``all_reduce`` sums over ranks)."""
        if self._open_epoch is not None and epoch != self._open_epoch:
            raise ValueError(f"end_epoch({epoch}) while epoch {self._open_epoch} is open")
        slots = -(-self._step // self.window)
        if slots:
            counts = self._counts[: slots * 2 * self.num_groups]
            if all_reduce is not None:
                counts = all_reduce(counts.clone())
            table = counts.cpu().numpy().reshape(slots, self.num_groups, 2)
            starts = self.iterations + self.window * np.arange(slots)
            ends = np.minimum(starts + self.window, self.iterations + self._step)
            rows = np.column_stack([np.full(slots, epoch), starts, ends, table.sum(axis=2), table[:, :, 1]])
            self.rows.extend(rows.astype(np.int64))
            self._counts.zero_()
        self.iterations += self._step
        self._step, self._open_epoch = 0, None

    def _table(self) -> np.ndarray:
        return np.stack(self.rows) if self.rows else np.zeros((0, 3 + 2 * self.num_groups), dtype=np.int64)

    def result(self) -> dict[str, np.ndarray]:
        """Per window (iterations ``[start, end)`` of the phase): ``epoch``, ``start``, ``end``, ``seen``,
        ``correct`` and ``accuracy`` (NaN where a group was not seen); each example's ``groups``, ``window``."""
        G, rows = self.num_groups, self._table()
        seen, correct = rows[:, 3 : 3 + G], rows[:, 3 + G :]
        accuracy = np.where(seen > 0, correct / np.maximum(seen, 1), np.nan)
        return {"epoch": rows[:, 0], "start": rows[:, 1], "end": rows[:, 2], "seen": seen, "correct": correct,
                "accuracy": accuracy, "groups": self.groups_host.astype(np.int8), "window": np.int64(self.window)}

    def state_dict(self) -> dict[str, Any]:
        """CPU tensors and plain data (a checkpoint loads with ``weights_only=True``), open epoch included."""
        pending = None
        if self._open_epoch is not None and self._counts is not None:
            pending = {"epoch": self._open_epoch, "step": self._step, "counts": self._counts.cpu().clone()}
        return {"version": 1, "window": self.window, "num_groups": self.num_groups, "iterations": self.iterations,
                "groups": torch.from_numpy(self.groups_host.astype(np.int8)), "rows": torch.from_numpy(self._table()),
                "pending": pending}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: str | torch.device = "cpu") -> GroupAccuracy:
        obj = cls(state["groups"].numpy(), window=int(state["window"]), num_groups=int(state["num_groups"]),
                  device=device)
        obj.iterations = int(state["iterations"])
        obj.rows = list(state["rows"].numpy().astype(np.int64))
        if (pending := state.get("pending")) is not None:
            obj._counts = pending["counts"].to(device=obj.device, dtype=torch.int64)
            obj._step, obj._open_epoch = int(pending["step"]), int(pending["epoch"])
        return obj
