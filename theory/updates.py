"""Update rules: GD, SGD, SAM and USAM (unnormalized SAM), with example multiplicities.

    GD    W <- W - eta grad L(W)
    SGD   the same on a minibatch B:  L_B(W) = sum_{i in B} l_i(W) / |B|   (repeats count twice)
    SAM   eps = rho grad L(W) / ||grad L(W)||_F ;  W <- W - eta grad L(W + eps)
    USAM  eps = rho grad L(W) ;                   W <- W - eta grad L(W + eps)

Minibatch SAM/USAM take ``eps`` on the same minibatch.  When ``grad L(W) = 0`` SAM's ``eps`` is 0.

Multiplicities ``m`` weight the loss (``theory.model``).  For SGD the upsampled dataset is sampled
as a list: example ``i`` appears ``m_i`` times (integer multiplicities) in the list that is shuffled
every epoch and cut into minibatches (:func:`minibatch_schedule`).  A minibatch is then the weight
vector of its counts (:func:`batch_counts`), so every rule is "a weighted full-batch step" and the
fast backends only need that one primitive.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .plumbing.config import check, check_choice, check_int, check_number
from .model import check_multiplicities, gradient

__all__ = [
    "RULES",
    "perturbation",
    "update",
    "minibatch_schedule",
    "batch_counts",
    "train",
]

RULES = ("gd", "sgd", "sam", "usam")


def perturbation(
    W: np.ndarray, X: np.ndarray, y: np.ndarray, m: np.ndarray | None, rho: float, *, normalized: bool = True
) -> np.ndarray:
    """SAM's ascent step ``eps = rho g / ||g||_F`` (normalized) or USAM's ``eps = rho g``."""
    g = gradient(W, X, y, m)
    if not normalized:
        return rho * g
    norm = np.linalg.norm(g)
    return rho * g / norm if norm > 0 else np.zeros_like(g)


def update(
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    m: np.ndarray | None = None,
    *,
    rule: str,
    lr: float,
    rho: float = 0.0,
) -> np.ndarray:
    """One step of ``rule`` on the examples weighted by ``m``; returns the new W.

    ``"sgd"`` is the GD step on the minibatch's weights (see :func:`batch_counts`).
    """
    check_choice("rule", rule, RULES)
    check_number("lr", lr, low=0.0, low_open=True)
    check_number("rho", rho, low=0.0)
    if rule in ("gd", "sgd"):
        return W - lr * gradient(W, X, y, m)
    eps = perturbation(W, X, y, m, rho, normalized=(rule == "sam"))
    return W - lr * gradient(W + eps, X, y, m)


def minibatch_schedule(
    multiplicities: np.ndarray, batch_size: int, iterations: int, seed: int | np.random.Generator
) -> np.ndarray:
    """Indices of each minibatch, shape (iterations, batch_size).

    The list ``repeat(arange(n), multiplicities)`` is shuffled each epoch and the concatenation of
    epochs is cut into consecutive batches (sampling without replacement within an epoch).
    """
    m = np.asarray(multiplicities)
    check(np.issubdtype(m.dtype, np.integer) or bool(np.all(m == np.round(m))), "multiplicities", "non-integer", "integer multiplicities for SGD")
    m = np.round(m).astype(np.int64)
    check(bool(np.all(m >= 0)) and m.sum() > 0, "multiplicities", "negative or all zero", "non-negative integers, not all zero")
    check_int("batch_size", batch_size, low=1, high=int(m.sum()))
    check_int("iterations", iterations, low=0)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    base = np.repeat(np.arange(len(m)), m)
    needed = iterations * batch_size
    epochs = -(-needed // len(base)) if needed else 0
    stream = np.concatenate([rng.permutation(base) for _ in range(epochs)]) if epochs else np.zeros(0, np.int64)
    return stream[:needed].reshape(iterations, batch_size)


def batch_counts(batch: np.ndarray, n: int) -> np.ndarray:
    """A minibatch's index list as float64 weights (how often each example appears)."""
    return np.bincount(batch, minlength=n).astype(np.float64)


def train(
    W0: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    *,
    rule: str,
    lr: float,
    iterations: int,
    rho: float = 0.0,
    multiplicities: np.ndarray | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Reference training loop: ``iterations`` steps of ``rule`` from ``W0``.

    Full batch for gd/sam/usam when ``batch_size`` is None; ``rule="sgd"`` (or any rule with a
    ``batch_size``) uses :func:`minibatch_schedule` with ``seed``.  ``callback(t, W)`` is called
    after every step t = 1..iterations.
    """
    check_choice("rule", rule, RULES)
    n = len(y)
    m = check_multiplicities(multiplicities, n)
    minibatch = rule == "sgd" or batch_size is not None
    if minibatch:
        check(batch_size is not None, "batch_size", batch_size, "an integer for minibatch training")
        schedule = minibatch_schedule(m, batch_size, iterations, seed)
    step_rule = "gd" if rule == "sgd" else rule
    W = np.array(W0, dtype=np.float64, copy=True)
    for t in range(iterations):
        weights = batch_counts(schedule[t], n) if minibatch else m
        W = update(W, X, y, weights, rule=step_rule, lr=lr, rho=rho)
        if callback is not None:
            callback(t + 1, W)
    return W
