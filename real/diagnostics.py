"""Diagnostics of the full-scale trainer: per-example learning statistics and sharpness.

Learning statistics (the paper's forgetting / first-learned comparison of USEFUL's two clusters)
-------------------------------------------------------------------------------------------------
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

Sharpness of a checkpoint
-------------------------
For a fixed set of batches ``B_1..B_m`` with ``n_b`` examples each, the objective is the
example-weighted mean cross-entropy

    L(theta) = sum_b n_b L_b(theta) / sum_b n_b,    L_b = loss_fn(model(x_b; theta), y_b)  (batch mean)

(model in eval mode: batch norm uses its running statistics, dropout is off; weight decay is not
included, it would add ``weight_decay * I``).  :func:`hessian_vector_product` computes ``H v`` exactly
by double backward (Pearlmutter's trick): ``H v = grad_theta <grad_theta L, v>``.
:func:`top_hessian_eigenvalues` runs Lanczos (``scipy.sparse.linalg.eigsh``, ``which="LA"``) on that
operator; :func:`hessian_trace` is Hutchinson's estimator ``tr H = E_v[v^T H v]`` with Rademacher
``v``.  :func:`sharpness_report` does all of it for a run directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LearningStats",
    "LEARNING_RULES",
    "learning_stats_from_history",
    "cluster_table",
    "hessian_vector_product",
    "top_hessian_eigenvalues",
    "hessian_trace",
    "l1_norm",
    "fixed_batches",
    "load_run_model",
    "sharpness_report",
]

LEARNING_RULES = ("all", "any", "majority")


# ----------------------------------------------------------------------------------------------
# Learning statistics.


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

    def add_epoch(self, correct: np.ndarray, epoch: int, presented: np.ndarray | None = None) -> None:
        """Commit a whole epoch's bits at once (e.g. from an evaluation pass); ``presented`` (bool,
        default all) marks the examples the bits are for, the others keep their previous bit."""
        if self._open_epoch is not None:
            raise ValueError(f"add_epoch while epoch {self._open_epoch} is open")
        if self.epochs and epoch <= self.epochs[-1]:
            raise ValueError(f"epoch {epoch} is not after the last committed epoch {self.epochs[-1]}")
        row = np.asarray(correct, dtype=bool).reshape(-1)
        if row.shape != (self.n,):
            raise ValueError(f"correct must have {self.n} entries, got {row.size}")
        mask = np.ones(self.n, dtype=bool) if presented is None else np.asarray(presented, dtype=bool).reshape(-1)
        self._commit(np.where(mask, row, self._state), mask.astype(np.int64), int(epoch))

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
        """Everything needed to continue (numpy arrays and Python scalars; the history bit-packed)."""
        pending = None
        if self._open_epoch is not None and self._seen is not None:
            pending = {"epoch": self._open_epoch, "seen": self._seen.cpu().numpy().copy(),
                       "correct": self._correct.cpu().numpy().copy()}
        rows = self.history
        return {
            "version": 1,
            "n": self.n,
            "rule": self.rule,
            "keep_history": self.keep_history,
            "epochs": list(self.epochs),
            "state": np.packbits(self._state),
            "forgetting": self._forgetting.copy(),
            "first": self._first.copy(),
            "learned_from": self._learned_from.copy(),
            "presentations": self._presentations.copy(),
            "history": None if rows is None else np.packbits(rows, axis=1),
            "pending": pending,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content (counters go to ``self.device`` on the next update)."""
        if int(state["n"]) != self.n:
            raise ValueError(f"state is for {state['n']} examples, this LearningStats has {self.n}")
        self.rule = state["rule"]
        self.keep_history = bool(state["keep_history"])
        self.epochs = [int(e) for e in state["epochs"]]
        self._state = np.unpackbits(np.asarray(state["state"], dtype=np.uint8), count=self.n).astype(bool)
        self._forgetting = np.asarray(state["forgetting"], dtype=np.int64).copy()
        self._first = np.asarray(state["first"], dtype=np.int64).copy()
        self._learned_from = np.asarray(state["learned_from"], dtype=np.int64).copy()
        self._presentations = np.asarray(state["presentations"], dtype=np.int64).copy()
        packed = state.get("history")
        if self.keep_history and packed is not None:
            bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1, count=self.n).astype(bool)
            self._rows = list(bits)
        else:
            self._rows = []
        self._seen = self._correct = None
        self._open_epoch = None
        pending = state.get("pending")
        if pending is not None:
            device = self.device or torch.device("cpu")
            self._seen = torch.tensor(np.asarray(pending["seen"]), dtype=torch.int32, device=device)
            self._correct = torch.tensor(np.asarray(pending["correct"]), dtype=torch.int32, device=device)
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


# ----------------------------------------------------------------------------------------------
# Sharpness.

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _params(model: nn.Module) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params


@contextlib.contextmanager
def _evaluating(model: nn.Module, eval_mode: bool):
    """Eval mode (if asked) and the math attention kernel (the fused ones have no double backward);
    the model's mode is restored afterwards."""
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            kernel = sdpa_kernel(SDPBackend.MATH)
        except ImportError:  # pragma: no cover - old torch
            kernel = contextlib.nullcontext()
        with kernel:
            yield
    finally:
        model.train(was_training)


def _hvp(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], vector: torch.Tensor,
         params: list[torch.Tensor]) -> torch.Tensor:
    """``H v`` of ``L = sum_b n_b L_b / sum_b n_b``, one batch at a time: ``H_b v = grad <grad L_b, v>``."""
    first = params[0]
    v = vector.to(device=first.device, dtype=first.dtype).reshape(-1)
    sizes = [p.numel() for p in params]
    if v.numel() != sum(sizes):
        raise ValueError(f"vector has {v.numel()} entries, the model {sum(sizes)} parameters")
    vs = [chunk.view_as(p) for chunk, p in zip(torch.split(v, sizes), params)]
    total = torch.zeros_like(v)
    n_total = 0
    for x, y in batches:
        n_b = int(y.shape[0])
        with torch.enable_grad():
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            dot = sum((g * u).sum() for g, u in zip(grads, vs) if g is not None and g.requires_grad)
            if isinstance(dot, torch.Tensor) and dot.requires_grad:
                hv = torch.autograd.grad(dot, params, allow_unused=True)
            else:  # the gradient does not depend on the parameters: H = 0
                hv = [None] * len(params)
        flat = torch.cat([(torch.zeros_like(p) if h is None else h).reshape(-1) for h, p in zip(hv, params)])
        total += n_b * flat.detach()
        n_total += n_b
    if n_total == 0:
        raise ValueError("no batches")
    return total / n_total


def hessian_vector_product(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], vector: torch.Tensor,
                           *, eval_mode: bool = True) -> torch.Tensor:
    """Exact ``H v`` of the mean loss over fixed batches, by double backward.

    ``L(theta) = sum_b n_b loss_fn(model(x_b), y_b) / sum_b n_b`` and
    ``H v = grad_theta < grad_theta L, v >`` (Pearlmutter, 1994), accumulated batch by batch.

    Parameters
    ----------
    model : the network; its trainable parameters, in ``model.parameters()`` order, form theta.
    loss_fn : ``loss_fn(logits, y)`` -> scalar mean loss of a batch.
    batches : a sequence of ``(x, y)`` on the model's device (iterated once per call).
    vector : flat (p,) vector (any dtype/device; converted to the parameters').
    eval_mode : evaluate in eval mode (batch norm's running statistics); the mode is restored.

    Returns
    -------
    torch.Tensor
        Flat (p,) ``H v`` in the parameters' dtype and device.
    """
    params = _params(model)
    with _evaluating(model, eval_mode):
        return _hvp(model, loss_fn, batches, vector, params)


def _hvp_operator(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch]):
    from scipy.sparse.linalg import LinearOperator

    params = _params(model)
    p = sum(q.numel() for q in params)
    counter = {"hvp": 0}

    def matvec(x: np.ndarray) -> np.ndarray:
        counter["hvp"] += 1
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return _hvp(model, loss_fn, batches, v, params).detach().cpu().to(torch.float64).numpy()

    return LinearOperator((p, p), matvec=matvec, dtype=np.float64), p, counter


def _top_eigs(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], k: int, tol: float, seed: int,
              eval_mode: bool) -> tuple[np.ndarray, int]:
    from scipy.sparse.linalg import eigsh

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    with _evaluating(model, eval_mode):
        op, p, counter = _hvp_operator(model, loss_fn, batches)
        if k >= p:
            raise ValueError(f"k = {k} eigenvalues need more than k parameters (the model has {p})")
        v0 = np.random.default_rng(seed).standard_normal(p)
        values = eigsh(op, k=k, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    return np.sort(np.asarray(values, dtype=np.float64))[::-1], counter["hvp"]


def top_hessian_eigenvalues(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], k: int = 1, *,
                            tol: float = 1e-3, seed: int = 0, eval_mode: bool = True) -> np.ndarray:
    """The ``k`` largest (algebraic) Hessian eigenvalues of the mean loss over ``batches``.

    Implicitly restarted Lanczos (ARPACK through ``scipy.sparse.linalg.eigsh``, ``which="LA"``) on a
    ``LinearOperator`` whose matvec is :func:`hessian_vector_product` (float64 on the host, the
    parameters' dtype on the device); ``tol`` is ARPACK's relative accuracy, the start vector is
    ``N(0, I)`` from ``seed``.  Returns the eigenvalues in decreasing order.
    """
    values, _ = _top_eigs(model, loss_fn, batches, k, tol, seed, eval_mode)
    return values


def hessian_trace(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *, samples: int = 100, seed: int = 0,
                  eval_mode: bool = True) -> tuple[float, float]:
    """Hutchinson's estimate of ``tr H`` and its standard error.

    ``tr H = E[v^T H v]`` for Rademacher ``v`` (entries +-1 with probability 1/2); with ``S``
    samples ``z_s = v_s^T H v_s`` the estimate is ``mean(z)`` and its standard error
    ``std(z, ddof=1) / sqrt(S)`` (NaN for ``S = 1``).  Its variance per sample is
    ``2 sum_{i != j} H_ij^2``.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    params = _params(model)
    p = sum(q.numel() for q in params)
    gen = torch.Generator().manual_seed(int(seed))
    z = np.empty(samples, dtype=np.float64)
    with _evaluating(model, eval_mode):
        for s in range(samples):
            v = (torch.randint(0, 2, (p,), generator=gen) * 2 - 1).to(torch.float64)
            hv = _hvp(model, loss_fn, batches, v, params)
            z[s] = float(torch.dot(hv.to(torch.float64).cpu(), v))
    stderr = float(z.std(ddof=1) / math.sqrt(samples)) if samples > 1 else math.nan
    return float(z.mean()), stderr


def l1_norm(model: nn.Module) -> float:
    """``sum_j |theta_j|`` over all of the model's parameters (buffers such as batch-norm running
    statistics excluded), accumulated in float64."""
    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            total += float(p.detach().abs().sum(dtype=torch.float64))
    return total


# ----------------------------------------------------------------------------------------------
# A run directory's checkpoint.


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Remove ``torch.compile``'s ``_orig_mod.`` and DDP's ``module.`` prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_run_model(path: str | Path, *, data_dir: str | None = None, device: str | torch.device = "cpu"):
    """The model of a run directory (or of a checkpoint file inside one) and its training data.

    Reads ``config.json`` (or, if absent, the checkpoint's ``"config"``) and ``checkpoint.pt``
    (written by :mod:`real.train`: a dict whose ``"model"`` is the unwrapped module's state dict; a
    bare state dict is accepted too), rebuilds the model with :func:`real.train.init_model`
    (:func:`real.models.build_model`) and loads the training data as the trainer does
    (:func:`real.train.load_training_data`: same labels, label noise included).

    Returns ``(model, data, cfg, info)`` with ``info = {"run_dir", "checkpoint", "phase", "epoch"}``.
    ``data_dir`` overrides the stored one (a run made on another machine).
    """
    from theory.plumbing.config import ConfigError, config_from_mapping

    from .checkpoint import load_checkpoint
    from .config import TrainConfig
    from .train import init_model, load_training_data

    path = Path(path)
    ckpt_path = path / "checkpoint.pt" if path.is_dir() else path
    run_dir = ckpt_path.parent
    if not ckpt_path.is_file():
        raise ConfigError("RUN_DIR", message=f"RUN_DIR: {run_dir} has no checkpoint.pt")
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    config_file = run_dir / "config.json"
    if config_file.is_file():
        try:
            stored = json.loads(config_file.read_text())
        except ValueError as err:
            raise ConfigError("RUN_DIR", message=f"RUN_DIR: {config_file} is not valid JSON ({err})") from None
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
        stored = dict(ckpt["config"])
    else:
        raise ConfigError("RUN_DIR", message=f"RUN_DIR: {run_dir} has no config.json")
    fields = set(TrainConfig.__dataclass_fields__)
    mapping = {k: v for k, v in stored.items() if k in fields and v is not None}
    mapping.pop("out", None)
    mapping.update({"resume": False, "overwrite": False, "compile": False})
    if data_dir is not None:
        mapping["data_dir"] = data_dir
    cfg = config_from_mapping(TrainConfig, mapping, source=str(config_file))
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), Mapping):
        state = ckpt["model"]
    elif isinstance(ckpt, Mapping) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state = ckpt
    else:
        raise ConfigError("RUN_DIR", message=f"RUN_DIR: {ckpt_path} holds no model state dict")
    data = load_training_data(cfg, torch.device("cpu"))
    model = init_model(cfg, data.dataset)
    model.load_state_dict(_strip_prefixes(state))
    model.to(torch.device(device))
    info = {
        "run_dir": str(run_dir),
        "checkpoint": str(ckpt_path),
        "phase": ckpt.get("phase") if isinstance(ckpt, dict) else None,
        "epoch": ckpt.get("epoch") if isinstance(ckpt, dict) else None,
    }
    return model, data, cfg, info


def fixed_batches(x_uint8: torch.Tensor, y: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
                  batches: int, batch_size: int, seed: int = 0, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> list[Batch]:
    """The first ``batches`` batches of ``batch_size`` of a seeded permutation of the (un-augmented)
    examples, normalized (:func:`real.augment.normalize`) and moved to ``device``.  The permutation
    is ``numpy.random.default_rng(seed).permutation(N)``; the last batch may be short if ``N`` is
    smaller than ``batches * batch_size``."""
    from .augment import normalize

    if batches < 1 or batch_size < 1:
        raise ValueError(f"batches and batch_size must be positive, got {batches} and {batch_size}")
    n = int(x_uint8.shape[0])
    order = np.random.default_rng(seed).permutation(n)[: batches * batch_size]
    out = []
    for start in range(0, len(order), batch_size):
        idx = torch.as_tensor(order[start : start + batch_size], dtype=torch.int64)
        xb = normalize(x_uint8[idx], mean, std, dtype=dtype).to(device)
        out.append((xb, y[idx].to(device)))
    return out


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def sharpness_report(path: str | Path, *, batches: int = 10, batch_size: int = 128, k: int = 1,
                     trace_samples: int = 50, seed: int = 0, device: str = "cpu", tol: float = 1e-3,
                     dtype: str = "float32", data_dir: str | None = None) -> dict[str, Any]:
    """Sharpness of a run directory's checkpoint (or of a checkpoint file).

    The model (:func:`load_run_model`, eval mode) is evaluated on a fixed sample of the
    un-augmented training set (:func:`fixed_batches`: the first ``batches`` batches of
    ``batch_size`` of the permutation seeded by ``seed``), with the (un-smoothed) mean cross-entropy.

    Returns
    -------
    dict
        ``top_eigenvalues`` (k largest, decreasing), ``trace`` and ``trace_stderr`` (Hutchinson with
        ``trace_samples`` Rademacher vectors; omitted as None when ``trace_samples = 0``),
        ``l1_norm``, ``loss`` and ``accuracy`` on the sample, ``batches``, ``examples``,
        ``parameters``, ``hvp_count`` (matrix-vector products used by Lanczos), ``phase`` and
        ``epoch`` of the checkpoint, ``run_dir``, ``dtype``, ``device``, ``seconds``.
    """
    from .distributed import resolve_device

    start = time.perf_counter()
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    dev = resolve_device(device)
    model, data, cfg, info = load_run_model(path, data_dir=data_dir, device="cpu")
    model = model.to(device=dev, dtype=dtypes[dtype])
    ds = data.dataset
    fixed = fixed_batches(data.train_x, data.train_y, mean=ds.mean, std=ds.std, batches=batches,
                          batch_size=batch_size, seed=seed, device=dev, dtype=dtypes[dtype])
    examples = sum(int(b[1].shape[0]) for b in fixed)
    with _evaluating(model, True), torch.no_grad():
        loss_sum = correct = 0.0
        for x, y in fixed:
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
    eigs, hvps = _top_eigs(model, _cross_entropy, fixed, k, tol, seed, True)
    trace = stderr = None
    if trace_samples > 0:
        trace, stderr = hessian_trace(model, _cross_entropy, fixed, samples=trace_samples, seed=seed)
    return {
        "top_eigenvalues": [float(v) for v in eigs],
        "trace": trace,
        "trace_stderr": stderr,
        "l1_norm": l1_norm(model),
        "loss": loss_sum / examples,
        "accuracy": correct / examples,
        "batches": len(fixed),
        "batch_size": batch_size,
        "examples": examples,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "hvp_count": hvps,
        "k": k,
        "tol": tol,
        "trace_samples": trace_samples,
        "seed": seed,
        "phase": info["phase"],
        "epoch": info["epoch"],
        "run_dir": info["run_dir"],
        "dtype": dtype,
        "device": str(dev),
        "seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------------------------
# CLI: useful-train sharpness RUN_DIR...


def _sharpness_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (checkpoint.pt + config.json)")
    parser.add_argument("--batches", type=int, default=10, help="fixed batches of the training set (default 10)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per batch (default 128)")
    parser.add_argument("--k", type=int, default=1, help="number of top Hessian eigenvalues (default 1)")
    parser.add_argument("--trace-samples", type=int, default=50,
                        help="Hutchinson samples for the trace (default 50; 0 skips the trace)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batches and of the random vectors")
    parser.add_argument("--tol", type=float, default=1e-3, help="Lanczos relative tolerance (default 1e-3)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="default float32")
    parser.add_argument("--data-dir", default=None, help="override the data directory stored in config.json")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="file name of the report inside each RUN_DIR (default sharpness.json), or a path "
                             "when a single RUN_DIR is given")


def _sharpness_handler(args) -> int:
    from theory.plumbing.config import ConfigError

    from .checkpoint import atomic_write_json

    for name, value, low in (("--batches", args.batches, 1), ("--batch-size", args.batch_size, 1),
                             ("--k", args.k, 1), ("--trace-samples", args.trace_samples, 0)):
        if value < low:
            raise ConfigError(name, value, f"an integer >= {low}")
    for run in args.runs:
        try:
            report = sharpness_report(run, batches=args.batches, batch_size=args.batch_size, k=args.k,
                                      trace_samples=args.trace_samples, seed=args.seed, device=args.device,
                                      tol=args.tol, dtype=args.dtype, data_dir=args.data_dir)
        except ValueError as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError("RUN_DIR", message=f"RUN_DIR: {run}: {err}") from None
        run_dir = Path(report["run_dir"])
        if args.out is None:
            target = run_dir / "sharpness.json"
        elif len(args.runs) == 1:
            target = Path(args.out)
        else:  # one report per run: the file name inside each run directory
            target = run_dir / Path(args.out).name
        atomic_write_json(target, report)
        eigs = ", ".join(f"{v:.4g}" for v in report["top_eigenvalues"])
        trace = "n/a" if report["trace"] is None else (
            f"{report['trace']:.4g} ± {report['trace_stderr']:.2g}"
            if report["trace_stderr"] is not None and math.isfinite(report["trace_stderr"])
            else f"{report['trace']:.4g}")
        print(f"{run_dir}: top eigenvalue(s) {eigs}; trace {trace}; L1 norm {report['l1_norm']:.6g}; "
              f"loss {report['loss']:.4f}, acc {report['accuracy']:.4f} on {report['examples']} examples "
              f"({report['phase']} epoch {report['epoch']}); {report['seconds']:.1f} s -> {target}")
    return 0


def register_commands(register_command) -> None:
    register_command("sharpness", "Hessian top eigenvalue(s), trace (Hutchinson) and L1 norm of runs' checkpoints",
                     _sharpness_arguments, _sharpness_handler)
