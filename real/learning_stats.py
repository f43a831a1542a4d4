"""Per-example learning statistics of the trainer (forgetting, first-learned epoch), and their
comparison between USEFUL's upsampled cluster and the rest.

During training, each minibatch already yields a prediction for each of its examples.
:class:`LearningStats` accumulates, per example ``i`` and epoch, how often it was presented and how
often it was classified correctly (two ``index_add_`` on the device per batch, no host sync), and at
the end of each epoch reduces them to one bit ``c_{t,i}`` ("correct in epoch t"):

* rule ``"all"`` (default): ``c_{t,i} = [correct_{t,i} = presented_{t,i}]`` (correct at every
  presentation of the epoch; an upsampled example is presented k times per epoch);
* rule ``"any"``: ``c_{t,i} = [correct_{t,i} > 0]``;
* rule ``"majority"``: ``c_{t,i} = [2 correct_{t,i} > presented_{t,i}]``;
* an example not presented in epoch ``t`` keeps its previous bit, ``c_{t,i} = c_{t-1,i}``
  (``c_{0,i} = 0`` before the first epoch).

From the ``(epochs, n)`` bit matrix ``c`` (:func:`learning_stats_from_history`), with epoch labels
``e_1 < ... < e_T`` (the numbers passed to :meth:`LearningStats.end_epoch`):

* ``forgetting_count_i = #{t in 2..T : c_{t-1,i} = 1, c_{t,i} = 0}`` (Toneva et al., 2019, counted
  between consecutive epochs rather than consecutive presentations, so an upsampled example is not
  counted twice per epoch);
* ``first_learned_epoch_i = e_t`` for the smallest ``t`` with ``c_{t,i} = 1``, else ``-1`` (never);
* ``learned_from_epoch_i = e_s`` for the smallest ``s`` with ``c_{t,i} = 1`` for all ``t >= s`` (the
  first epoch of the final run of correct epochs), ``-1`` if ``c_{T,i} = 0``.

:func:`cluster_table` compares these between the examples USEFUL upsampled and the rest.

"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["LearningStats", "LEARNING_RULES", "learning_stats_from_history", "cluster_table", "learning_report"]

LEARNING_RULES = ("all", "any", "majority")



def learning_stats_from_history(history: np.ndarray, epochs: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Forgetting counts and learning epochs from a per-epoch correctness matrix.

    Parameters
    ----------
    history : (T, n) bool array, ``history[t, i]`` = example ``i`` correct in the ``t``-th epoch.
    epochs : the T epoch labels ``e_1 < ... < e_T`` (default ``1..T``).

    Returns
    -------
    dict with int64 arrays of length n:

    * ``forgetting_count``: ``#{t >= 2 : c_{t-1} = 1, c_t = 0}``;
    * ``first_learned_epoch``: ``e_t`` of the first ``t`` with ``c_t = 1``, ``-1`` if never;
    * ``learned_from_epoch``: ``e_s`` of the smallest ``s`` with ``c_t = 1`` for all ``t >= s``,
      ``-1`` if the example is not correct in the last epoch (or ``T = 0``).
    """
    h = np.asarray(history)
    if h.ndim != 2:
        raise ValueError(f"history must be a (epochs, n) matrix, got shape {h.shape}")
    h = h.astype(bool, copy=False)
    t_count, n = h.shape
    labels = np.arange(1, t_count + 1, dtype=np.int64) if epochs is None else np.asarray(epochs, dtype=np.int64)
    if labels.shape != (t_count,):
        raise ValueError(f"epochs has {labels.size} labels for a history of {t_count} epochs")
    if t_count > 1 and not np.all(np.diff(labels) > 0):
        raise ValueError("epochs must be strictly increasing")
    if t_count == 0:
        none = np.full(n, -1, dtype=np.int64)
        return {"forgetting_count": np.zeros(n, dtype=np.int64), "first_learned_epoch": none,
                "learned_from_epoch": none.copy()}
    # forgetting_i = sum_{t>=2} c_{t-1,i} (1 - c_{t,i})
    forgetting = (h[:-1] & ~h[1:]).sum(axis=0).astype(np.int64)
    # first_learned_i = e_{argmin_t c_{t,i} = 1}
    ever = h.any(axis=0)
    first = np.where(ever, labels[h.argmax(axis=0)], -1).astype(np.int64)
    # learned_from_i = e_{s}, s = 1 + (last t with c_{t,i} = 0), or e_1 if never incorrect
    wrong = ~h
    ever_wrong = wrong.any(axis=0)
    last_wrong = t_count - 1 - wrong[::-1].argmax(axis=0)
    start = np.where(ever_wrong, last_wrong + 1, 0)
    learned_from = np.where(h[-1], labels[np.minimum(start, t_count - 1)], -1).astype(np.int64)
    return {"forgetting_count": forgetting, "first_learned_epoch": first, "learned_from_epoch": learned_from}


def _as_tensor(values: torch.Tensor | np.ndarray | Sequence[int], dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    return t.to(device=device if device is not None else t.device, dtype=dtype, non_blocking=True)


class LearningStats:
    """Per-example learning statistics accumulated during training (see the module docstring).

    Usage in a training loop (one call per batch; ``correct`` is ``logits.argmax(1) == y`` that the
    loop computes anyway)::

        stats = LearningStats(n_train, device=device)
        for epoch in range(1, epochs + 1):
            for idx, x, y in batches:
                ...
                stats.update(idx, logits.argmax(1) == y, epoch)
            stats.end_epoch(epoch)           # one host transfer of 2 n int32 per epoch
        stats.result()

    ``update`` only does two ``index_add_`` into int32 counters on the counters' device (duplicated
    indices in a batch, e.g. upsampled copies, are all counted); nothing is synchronized until
    ``end_epoch``.

    Parameters
    ----------
    n : number of training examples (indices are in ``[0, n)``).
    keep_history : keep the (epochs, n) bit matrix (``n / 8`` bytes per epoch once packed in the
        state dict); without it, :meth:`result` uses running accumulators (same numbers).
    rule : how an epoch's presentations make one bit: ``"all"`` (correct at every presentation),
        ``"any"`` or ``"majority"``.
    device : where the per-epoch counters live (default: the device of the first ``indices``).
    """

    def __init__(self, n: int, *, keep_history: bool = True, rule: str = "all",
                 device: str | torch.device | None = None):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if rule not in LEARNING_RULES:
            raise ValueError(f"rule must be one of {', '.join(LEARNING_RULES)}, got {rule!r}")
        self.n = int(n)
        self.keep_history = bool(keep_history)
        self.rule = rule
        self.device = torch.device(device) if device is not None else None
        self._seen: torch.Tensor | None = None  # (n,) int32 presentations in the open epoch
        self._correct: torch.Tensor | None = None  # (n,) int32 correct presentations in the open epoch
        self._open_epoch: int | None = None
        self.epochs: list[int] = []
        self._rows: list[np.ndarray] = []
        self._state = np.zeros(self.n, dtype=bool)  # c_{t,i} of the last committed epoch
        self._forgetting = np.zeros(self.n, dtype=np.int64)
        self._first = np.full(self.n, -1, dtype=np.int64)
        self._learned_from = np.full(self.n, -1, dtype=np.int64)
        self._presentations = np.zeros(self.n, dtype=np.int64)

    # -- accumulation -----------------------------------------------------------------------

    def _counters(self, like: torch.Tensor) -> None:
        if self.device is None:
            self.device = like.device
        if self._seen is None:
            self._seen = torch.zeros(self.n, dtype=torch.int32, device=self.device)
            self._correct = torch.zeros(self.n, dtype=torch.int32, device=self.device)

    def update(self, indices: torch.Tensor | np.ndarray, correct: torch.Tensor | np.ndarray, epoch: int) -> None:
        """Record one batch: ``indices`` (B,) example indices, ``correct`` (B,) bool, in ``epoch``.

        ``presented_i += #{b : indices_b = i}``, ``correct_i += #{b : indices_b = i, correct_b}``.
        """
        if self._open_epoch is None:
            if self.epochs and epoch <= self.epochs[-1]:
                raise ValueError(f"epoch {epoch} is not after the last committed epoch {self.epochs[-1]}")
            self._open_epoch = int(epoch)
        elif epoch != self._open_epoch:
            raise ValueError(f"update for epoch {epoch} while epoch {self._open_epoch} is open; call end_epoch first")
        idx = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(np.asarray(indices))
        self._counters(idx)
        idx = _as_tensor(idx, torch.int64, self.device).reshape(-1)
        ok = _as_tensor(correct, torch.int32, self.device).reshape(-1)
        if idx.shape != ok.shape:
            raise ValueError(f"indices and correct differ in length: {tuple(idx.shape)} vs {tuple(ok.shape)}")
        self._seen.index_add_(0, idx, torch.ones_like(ok))
        self._correct.index_add_(0, idx, ok)

    def end_epoch(self, epoch: int, *, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Commit ``epoch``: reduce its counters to one bit per example (rule), update the statistics.

        ``all_reduce`` (e.g. :func:`real.distributed.all_reduce_sum`) sums the counters over ranks
        first when each rank saw only its shard.
        """
        if self._open_epoch is not None and epoch != self._open_epoch:
            raise ValueError(f"end_epoch({epoch}) while epoch {self._open_epoch} is open")
        if self.epochs and epoch <= self.epochs[-1]:
            raise ValueError(f"epoch {epoch} is not after the last committed epoch {self.epochs[-1]}")
        if self._seen is None:
            seen = np.zeros(self.n, dtype=np.int64)
            good = np.zeros(self.n, dtype=np.int64)
        else:
            counts = torch.stack([self._seen, self._correct])
            if all_reduce is not None:
                counts = all_reduce(counts)
            seen, good = counts.cpu().numpy().astype(np.int64)
            self._seen.zero_()
            self._correct.zero_()
        self._commit(self._reduce(seen, good), seen, int(epoch))
        self._open_epoch = None

    def _reduce(self, seen: np.ndarray, good: np.ndarray) -> np.ndarray:
        if self.rule == "all":
            bit = good == seen
        elif self.rule == "any":
            bit = good > 0
        else:
            bit = 2 * good > seen
        return np.where(seen > 0, bit, self._state)  # not presented: keep the previous bit

    def _commit(self, row: np.ndarray, seen: np.ndarray, epoch: int) -> None:
        # Running form of learning_stats_from_history (same numbers without the matrix).
        self._forgetting += self._state & ~row
        self._first[(self._first < 0) & row] = epoch
        self._learned_from[~row] = -1
        self._learned_from[row & (self._learned_from < 0)] = epoch
        self._presentations += seen
        self._state = row.copy()
        self.epochs.append(epoch)
        if self.keep_history:
            self._rows.append(row.copy())

    # -- results ----------------------------------------------------------------------------

    @property
    def history(self) -> np.ndarray | None:
        """The (epochs, n) bool matrix, or None without ``keep_history``."""
        if not self.keep_history:
            return None
        return np.stack(self._rows) if self._rows else np.zeros((0, self.n), dtype=bool)

    def result(self) -> dict[str, np.ndarray]:
        """``forgetting_count``, ``first_learned_epoch``, ``learned_from_epoch`` (int64, length n),
        ``presentations`` (total presentations per example), ``epochs`` (the committed epoch labels)
        and, with ``keep_history``, ``history`` ((epochs, n) bool)."""
        epochs = np.asarray(self.epochs, dtype=np.int64)
        if self.keep_history:
            history = self.history
            out = learning_stats_from_history(history, epochs)
            out["history"] = history
        else:
            out = {"forgetting_count": self._forgetting.copy(), "first_learned_epoch": self._first.copy(),
                   "learned_from_epoch": self._learned_from.copy()}
        out["presentations"] = self._presentations.copy()
        out["epochs"] = epochs
        return out

    # -- resume -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue, as CPU tensors and plain data (a checkpoint loads with
        ``weights_only=True``); the history bit-packed."""
        pending = None
        if self._open_epoch is not None and self._seen is not None:
            pending = {"epoch": self._open_epoch, "seen": self._seen.cpu().clone(), "correct": self._correct.cpu().clone()}
        rows = self.history
        t = torch.from_numpy
        return {
            "version": 1,
            "n": self.n,
            "rule": self.rule,
            "keep_history": self.keep_history,
            "epochs": list(self.epochs),
            "state": t(np.packbits(self._state)),
            "forgetting": t(self._forgetting.copy()),
            "first": t(self._first.copy()),
            "learned_from": t(self._learned_from.copy()),
            "presentations": t(self._presentations.copy()),
            "history": None if rows is None else t(np.packbits(rows, axis=1)),
            "pending": pending,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content (counters go to ``self.device`` on the next update)."""
        def arr(value: Any, dtype) -> np.ndarray:
            return (value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)).astype(dtype)

        if int(state["n"]) != self.n:
            raise ValueError(f"state is for {state['n']} examples, this LearningStats has {self.n}")
        self.rule = state["rule"]
        self.keep_history = bool(state["keep_history"])
        self.epochs = [int(e) for e in state["epochs"]]
        self._state = np.unpackbits(arr(state["state"], np.uint8), count=self.n).astype(bool)
        self._forgetting = arr(state["forgetting"], np.int64)
        self._first = arr(state["first"], np.int64)
        self._learned_from = arr(state["learned_from"], np.int64)
        self._presentations = arr(state["presentations"], np.int64)
        packed = state.get("history")
        if self.keep_history and packed is not None:
            bits = np.unpackbits(arr(packed, np.uint8), axis=1, count=self.n).astype(bool)
            self._rows = list(bits)
        else:
            self._rows = []
        self._seen = self._correct = None
        self._open_epoch = None
        pending = state.get("pending")
        if pending is not None:
            device = self.device or torch.device("cpu")
            self._seen = torch.as_tensor(arr(pending["seen"], np.int32), device=device)
            self._correct = torch.as_tensor(arr(pending["correct"], np.int32), device=device)
            self.device = device
            self._open_epoch = int(pending["epoch"])


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def cluster_table(stats: Mapping[str, np.ndarray], upsampled_mask: np.ndarray) -> str:
    """A markdown table comparing USEFUL's upsampled cluster with the rest (and all examples).

    Rows: examples; mean forgetting count; unforgettable fraction (learned at some epoch and never
    forgotten); never-learned fraction (``first_learned_epoch = -1``); mean first-learned epoch and
    mean learned-from epoch (each over the examples where it is defined); fraction correct at the end
    (``learned_from_epoch >= 0``); mean presentations when ``stats`` has them.  The paper's
    expectation: the upsampled (slow-learnable) cluster is learned later and forgotten more often.
    """
    mask = np.asarray(upsampled_mask, dtype=bool).reshape(-1)
    forgetting = np.asarray(stats["forgetting_count"], dtype=np.float64)
    first = np.asarray(stats["first_learned_epoch"], dtype=np.int64)
    learned_from = np.asarray(stats["learned_from_epoch"], dtype=np.int64)
    if not (forgetting.shape == first.shape == learned_from.shape == mask.shape):
        raise ValueError(f"upsampled_mask has {mask.size} entries, the statistics {forgetting.size}")
    groups = (("upsampled", mask), ("rest", ~mask), ("all", np.ones_like(mask)))

    def mean(values: np.ndarray, where: np.ndarray) -> float:
        return float(values[where].mean()) if where.any() else math.nan

    def frac(flag: np.ndarray, where: np.ndarray) -> float:
        return float(flag[where].mean()) if where.any() else math.nan

    learned = first >= 0
    rows: list[tuple[str, list[str]]] = [
        ("examples", [str(int(g.sum())) for _, g in groups]),
        ("mean forgetting count", [_fmt(mean(forgetting, g)) for _, g in groups]),
        ("unforgettable fraction", [_fmt(frac(learned & (forgetting == 0), g), 3) for _, g in groups]),
        ("never learned fraction", [_fmt(frac(~learned, g), 3) for _, g in groups]),
        ("mean first-learned epoch", [_fmt(mean(first.astype(np.float64), g & learned)) for _, g in groups]),
        ("mean learned-from epoch", [_fmt(mean(learned_from.astype(np.float64), g & (learned_from >= 0))) for _, g in groups]),
        ("correct at the end fraction", [_fmt(frac(learned_from >= 0, g), 3) for _, g in groups]),
    ]
    if "presentations" in stats:
        pres = np.asarray(stats["presentations"], dtype=np.float64)
        rows.append(("mean presentations", [_fmt(mean(pres, g), 1) for _, g in groups]))
    lines = ["| statistic | " + " | ".join(name for name, _ in groups) + " |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines)


def learning_report(learning: Mapping[str, "LearningStats"], upsample: np.ndarray | None, *,
                    method: str = "", k: int = 1, separated_at: Mapping | None = None) -> tuple[dict[str, np.ndarray], str | None]:
    """What learning_stats.npz and clusters.md hold, from the statistics of each phase.

    Arrays: the main phase's ``forgetting_count``, ``first_learned_epoch``, ``learned_from_epoch``,
    ``presentations``, ``epochs``, ``history``; the pre-split phase's with the prefix ``separate_``;
    ``upsample`` when there is a partition.  The markdown (None without a partition) compares the
    upsampled cluster with the rest in each phase (:func:`cluster_table`)."""
    results = {name: stats.result() for name, stats in learning.items()}
    arrays: dict[str, np.ndarray] = {}
    for name, result in results.items():
        prefix = "" if name == "main" else f"{name}_"
        arrays.update({prefix + key: np.asarray(value) for key, value in result.items()})
    if upsample is None:
        return arrays, None
    mask = np.asarray(upsample, dtype=bool)
    arrays["upsample"] = mask
    where = "" if not separated_at else f" after {separated_at.get('epoch')} epoch(s) and {separated_at.get('steps')} step(s)"
    text = ["# Learning statistics of the upsampled cluster and the rest", "",
            f"Partition: {method}, k = {k}, {int(mask.sum())} of {mask.size} examples upsampled{where}.  An example "
            "counts as correct in an epoch when its minibatch prediction on its (augmented) training input was right "
            "at every presentation of the epoch; forgetting = correct in one epoch, wrong in the next "
            "(see real/learning_stats.py).", ""]
    titles = {"main": "Main phase (trained on the upsampled data)",
              "separate": "Pre-split phase (the epochs before the split, original data)"}
    for name in ("main", "separate"):
        if name in results and len(results[name]["epochs"]):
            epochs = results[name]["epochs"]
            text += [f"## {titles[name]}: epochs {int(epochs[0])}-{int(epochs[-1])}", "",
                     cluster_table(results[name], mask), ""]
    return arrays, "\n".join(text)
