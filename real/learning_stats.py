"""Per-example learning statistics of the trainer (forgetting, first-learned epoch), and their
comparison between USEFUL's upsampled cluster and the rest.

:class:`LearningStats` counts, per example ``i`` and epoch ``t``, its presentations and the correct
minibatch predictions, and at the end of the epoch reduces them to one bit ``c_{t,i}`` by a rule:
``"all"`` (default; correct at every presentation), ``"any"`` or ``"majority"`` (``2 correct >
presented``).  An example not presented in epoch ``t`` keeps ``c_{t-1,i}`` (``c_{0,i} = 0``).
From the ``(T, n)`` bit matrix ``c`` with epoch labels ``e_1 < ... < e_T``:

* ``forgetting_count_i = #{t in 2..T : c_{t-1,i} = 1, c_{t,i} = 0}`` (Toneva et al., 2019, between
  epochs rather than presentations, so an upsampled example is not counted twice per epoch);
* ``first_learned_epoch_i = e_t`` for the smallest ``t`` with ``c_{t,i} = 1``, else ``-1``;
* ``learned_from_epoch_i = e_s`` for the smallest ``s`` with ``c_{t,i} = 1`` for all ``t >= s``,
  ``-1`` if ``c_{T,i} = 0``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from theory.plumbing.config import check_choice, check_int

__all__ = ["LearningStats", "LEARNING_RULES", "learning_stats_from_history", "cluster_table", "learning_report"]

LEARNING_RULES = ("all", "any", "majority")


def learning_stats_from_history(history: np.ndarray, epochs: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The three statistics (int64, length n) of a (T, n) bool matrix ``history`` with the epoch labels
    ``epochs`` (default ``1..T``, strictly increasing)."""
    h = np.asarray(history).astype(bool, copy=False)
    if h.ndim != 2:
        raise ValueError(f"history must be a (epochs, n) matrix, got shape {h.shape}")
    t_count, n = h.shape
    labels = np.arange(1, t_count + 1, dtype=np.int64) if epochs is None else np.asarray(epochs, dtype=np.int64)
    if labels.shape != (t_count,):
        raise ValueError(f"epochs has {labels.size} labels for a history of {t_count} epochs")
    if np.any(np.diff(labels) <= 0):
        raise ValueError("epochs must be strictly increasing")
    if t_count == 0:
        return {"forgetting_count": np.zeros(n, dtype=np.int64), "first_learned_epoch": np.full(n, -1, dtype=np.int64),
                "learned_from_epoch": np.full(n, -1, dtype=np.int64)}
    forgetting = (h[:-1] & ~h[1:]).sum(axis=0).astype(np.int64)
    first = np.where(h.any(axis=0), labels[h.argmax(axis=0)], -1).astype(np.int64)
    # s = 1 + (the last t with c_t = 0), or the first epoch if never incorrect
    last_wrong = t_count - 1 - (~h)[::-1].argmax(axis=0)
    start = np.where((~h).any(axis=0), last_wrong + 1, 0)
    learned_from = np.where(h[-1], labels[np.minimum(start, t_count - 1)], -1).astype(np.int64)
    return {"forgetting_count": forgetting, "first_learned_epoch": first, "learned_from_epoch": learned_from}


class LearningStats:
    """Per-example learning statistics accumulated during training, on the device (no host sync per batch);
    ``keep_history`` keeps the (epochs, n) bit matrix, the statistics are running accumulators either way."""

    def __init__(self, n: int, *, keep_history: bool = True, rule: str = "all",
                 device: str | torch.device | None = None):
        check_int("n", n, low=0)
        check_choice("rule", rule, LEARNING_RULES)
        self.n, self.keep_history, self.rule = int(n), bool(keep_history), rule
        self.device = torch.device(device) if device is not None else None
        self._counts: torch.Tensor | None = None  # (2, n) int32: presentations, correct ones, in the open epoch
        self._open_epoch: int | None = None
        self.epochs: list[int] = []
        self._rows: list[np.ndarray] = []
        self._state = np.zeros(self.n, dtype=bool)  # c_{t,i} of the last committed epoch
        # The running form of learning_stats_from_history (the same numbers without the matrix), int64.
        self._running = {key: np.full(self.n, start, dtype=np.int64) for key, start in
                         (("forgetting", 0), ("first", -1), ("learned_from", -1), ("presentations", 0))}

    def _check_epoch(self, epoch: int) -> None:
        if self._open_epoch is not None and epoch != self._open_epoch:
            raise ValueError(f"epoch {epoch} while epoch {self._open_epoch} is open; call end_epoch first")
        if self.epochs and epoch <= self.epochs[-1]:
            raise ValueError(f"epoch {epoch} is not after the last committed epoch {self.epochs[-1]}")

    def update(self, indices: torch.Tensor | np.ndarray, correct: torch.Tensor | np.ndarray, epoch: int) -> None:
        """Record one batch: example ``indices`` (B,), duplicates all counted, and whether each was right (B,)."""
        self._check_epoch(epoch)
        self._open_epoch = int(epoch)
        idx = torch.as_tensor(indices)
        self.device = self.device or idx.device
        if self._counts is None:
            self._counts = torch.zeros(2, self.n, dtype=torch.int32, device=self.device)
        idx = idx.to(self.device, torch.int64, non_blocking=True).reshape(-1)
        ok = torch.as_tensor(correct).to(self.device, torch.int32, non_blocking=True).reshape(-1)
        if idx.shape != ok.shape:
            raise ValueError(f"indices and correct differ in length: {tuple(idx.shape)} vs {tuple(ok.shape)}")
        self._counts.index_add_(1, idx, torch.stack([torch.ones_like(ok), ok]))  # presentations, correct ones

    def end_epoch(self, epoch: int, *, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Commit ``epoch``: one bit per example by the rule (``all_reduce`` sums the counters over ranks)."""
        self._check_epoch(epoch)
        seen = good = np.zeros(self.n, dtype=np.int64)
        if self._counts is not None:
            counts = self._counts if all_reduce is None else all_reduce(self._counts)
            seen, good = counts.cpu().numpy().astype(np.int64)
            self._counts.zero_()
        bit = {"all": good == seen, "any": good > 0, "majority": 2 * good > seen}[self.rule]
        row = np.where(seen > 0, bit, self._state)  # not presented: keeps its bit
        r = self._running
        r["forgetting"] += self._state & ~row
        r["first"][(r["first"] < 0) & row] = epoch
        r["learned_from"][~row] = -1
        r["learned_from"][row & (r["learned_from"] < 0)] = epoch
        r["presentations"] += seen
        self._state = row
        self.epochs.append(int(epoch))
        if self.keep_history:
            self._rows.append(row)
        self._open_epoch = None

    @property
    def history(self) -> np.ndarray | None:
        """The (epochs, n) bool matrix, or None without ``keep_history``."""
        if not self.keep_history:
            return None
        return np.stack(self._rows) if self._rows else np.zeros((0, self.n), dtype=bool)

    def result(self) -> dict[str, np.ndarray]:
        """The three statistics, ``history`` (with ``keep_history``), ``presentations`` and ``epochs``."""
        r, history = self._running, {"history": self.history} if self.keep_history else {}
        return {"forgetting_count": r["forgetting"].copy(), "first_learned_epoch": r["first"].copy(),
                "learned_from_epoch": r["learned_from"].copy(), **history, "presentations": r["presentations"].copy(),
                "epochs": np.asarray(self.epochs, dtype=np.int64)}

    def state_dict(self) -> dict[str, Any]:
        """CPU tensors and plain data (a checkpoint loads with ``weights_only=True``), history bit-packed."""
        pending = None
        if self._open_epoch is not None and self._counts is not None:
            seen, correct = self._counts.cpu().clone()
            pending = {"epoch": self._open_epoch, "seen": seen, "correct": correct}
        rows, t = self.history, torch.from_numpy
        return {"version": 1, "n": self.n, "rule": self.rule, "keep_history": self.keep_history,
                "epochs": list(self.epochs), "state": t(np.packbits(self._state)),
                **{key: t(value.copy()) for key, value in self._running.items()},
                "history": None if rows is None else t(np.packbits(rows, axis=1)), "pending": pending}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content."""
        if int(state["n"]) != self.n:
            raise ValueError(f"state is for {state['n']} examples, this LearningStats has {self.n}")
        self.rule, self.keep_history = state["rule"], bool(state["keep_history"])
        self.epochs = [int(e) for e in state["epochs"]]
        self._state = np.unpackbits(np.asarray(state["state"], dtype=np.uint8), count=self.n).astype(bool)
        self._running = {key: np.asarray(state[key]).astype(np.int64) for key in self._running}
        packed = state.get("history") if self.keep_history else None
        self._rows = [] if packed is None else list(
            np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1, count=self.n).astype(bool))
        self._counts, self._open_epoch = None, None
        if (pending := state.get("pending")) is not None:
            self.device = self.device or torch.device("cpu")
            self._counts = torch.stack([torch.as_tensor(pending["seen"]), torch.as_tensor(pending["correct"])]).to(
                self.device, torch.int32)
            self._open_epoch = int(pending["epoch"])


def cluster_table(stats: Mapping[str, np.ndarray], upsampled_mask: np.ndarray) -> str:
    """A markdown table comparing USEFUL's upsampled cluster with the rest and all examples.  The paper
    expects the upsampled (slow-learnable) cluster to be learned later and forgotten more often."""
    mask = np.asarray(upsampled_mask, dtype=bool).reshape(-1)
    forgetting, first, learned_from = (np.asarray(stats[key], dtype=np.float64)
                                       for key in ("forgetting_count", "first_learned_epoch", "learned_from_epoch"))
    if not (forgetting.shape == first.shape == learned_from.shape == mask.shape):
        raise ValueError(f"upsampled_mask has {mask.size} entries, the statistics {forgetting.size}")
    everywhere = np.ones_like(mask)
    groups = (mask, ~mask, everywhere)
    learned, at_end = first >= 0, learned_from >= 0
    # (label, values, the examples where they are defined, digits): a mean over each group
    means = [("mean forgetting count", forgetting, everywhere, 2),
             ("unforgettable fraction", learned & (forgetting == 0), everywhere, 3),
             ("never learned fraction", ~learned, everywhere, 3),
             ("mean first-learned epoch", first, learned, 2), ("mean learned-from epoch", learned_from, at_end, 2),
             ("correct at the end fraction", at_end, everywhere, 3)]
    if "presentations" in stats:
        means.append(("mean presentations", np.asarray(stats["presentations"], dtype=np.float64), everywhere, 1))
    rows = [("examples", [str(int(g.sum())) for g in groups])]
    rows += [(label, [f"{values[g & where].mean():.{digits}f}" if (g & where).any() else "n/a" for g in groups])
             for label, values, where, digits in means]
    lines = ["| statistic | upsampled | rest | all |", "| --- | ---: | ---: | ---: |"]
    return "\n".join(lines + [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows])


def learning_report(learning: Mapping[str, LearningStats], upsample: np.ndarray | None, *, method: str = "",
                    k: int = 1, separated_at: Mapping | None = None) -> tuple[dict[str, np.ndarray], str | None]:
    """What learning_stats.npz (the pre-split phase's keys prefixed ``separate_``) and clusters.md (None
    without a partition) hold."""
    results = {name: stats.result() for name, stats in learning.items()}
    arrays = {("" if name == "main" else f"{name}_") + key: np.asarray(value)
              for name, result in results.items() for key, value in result.items()}
    if upsample is None:
        return arrays, None
    mask = arrays["upsample"] = np.asarray(upsample, dtype=bool)
    where = (f" after {separated_at.get('epoch')} epoch(s) and {separated_at.get('steps')} step(s)"
             if separated_at else "")
    text = ["# Learning statistics of the upsampled cluster and the rest", "",
            f"Partition: {method}, k = {k}, {int(mask.sum())} of {mask.size} examples upsampled{where}.  An example "
            "counts as correct in an epoch when its minibatch prediction on its (augmented) training input was right "
            "at every presentation of the epoch; forgetting = correct in one epoch, wrong in the next "
            "(see real/learning_stats.py).", ""]
    for name, title in (("main", "Main phase (trained on the upsampled data)"),
                        ("separate", "Pre-split phase (the epochs before the split, original data)")):
        if name in results and len(epochs := results[name]["epochs"]):
            text += [f"## {title}: epochs {int(epochs[0])}-{int(epochs[-1])}", "",
                     cluster_table(results[name], mask), ""]
    return arrays, "\n".join(text)
