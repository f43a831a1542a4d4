"""The interface every simulator backend implements, and the plain reference backend.

A backend holds the state of ``R >= 1`` independent runs that share the rule (gd/sgd/sam/usam),
the shapes ``(n, P, d, J)`` and full-batch vs minibatch, and may differ in everything else: data,
initialization, multiplicities, learning rate, rho, feature strengths, minibatch schedule.

    backend = make_backend("numba", specs, dtype="float64")
    F_e, F_d = backend.advance(100)      # (100, R): feature outputs after each step
    W = backend.weights()                # (R, J, d) float64
    f = backend.train_outputs()          # (R, n) float64, at the current weights

``advance`` raises :class:`SimulationDiverged` naming the run and the iteration (1-based, counted
from the start of the run) at which the weights or outputs stopped being finite.

Backends: ``reference`` (this module: theory's dense float64 update, one run at a time; slow, the
definition), ``numba`` (:mod:`sims.backend_numba`) and ``torch`` (:mod:`sims.backend_torch`, CPU or
CUDA, all runs in one batched computation).  The fast ones are tested against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from theory.plumbing.config import check, check_choice
from theory.data import PatchData
from theory.model import check_multiplicities, feature_output, outputs
from theory.updates import RULES, batch_counts, update

__all__ = ["RunSpec", "SimulationDiverged", "Backend", "ReferenceBackend", "make_backend"]


class SimulationDiverged(RuntimeError):
    """The weights or outputs of a run became non-finite."""

    def __init__(self, run: int, iteration: int):
        self.run = run
        self.iteration = iteration
        super().__init__(f"run {run} diverged at iteration {iteration} (non-finite weights or outputs)")


@dataclass(frozen=True, eq=False)
class RunSpec:
    """Everything one run needs.

    Attributes
    ----------
    train : the training sample (dense patches, labels, has_fast, noise mask, features).
    W0 : (J, d) initial weights.
    multiplicities : (n,) example weights (1, or k for upsampled examples) for full-batch rules.
    rule : gd, sgd, sam or usam.
    lr, rho : step size and SAM/USAM radius.
    beta_e, beta_d : feature strengths (for the feature outputs ``F = sum_j (beta <w_j, v>)^3``).
    schedule : (iterations, batch_size) minibatch indices (``theory.updates.minibatch_schedule``),
        or None for full batch.  Step t uses weights ``batch_counts(schedule[t])``.
    """

    train: PatchData
    W0: np.ndarray
    multiplicities: np.ndarray
    rule: str
    lr: float
    rho: float
    beta_e: float
    beta_d: float
    schedule: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_choice("rule", self.rule, RULES)
        n = self.train.n
        check(self.W0.ndim == 2 and self.W0.shape[1] == self.train.X.shape[2], "W0", self.W0.shape, "shape (J, d)")
        object.__setattr__(self, "multiplicities", check_multiplicities(self.multiplicities, n))
        check(self.rule != "sgd" or self.schedule is not None, "schedule", None, "a minibatch schedule for sgd")


class Backend(Protocol):
    n_runs: int
    iteration: int

    def advance(self, steps: int) -> tuple[np.ndarray, np.ndarray]: ...

    def weights(self) -> np.ndarray: ...

    def train_outputs(self) -> np.ndarray: ...


def check_compatible(specs: Sequence[RunSpec]) -> None:
    """All runs of one backend share the rule, shapes and batch mode."""
    check(len(specs) >= 1, "specs", len(specs), "at least one run")
    first = specs[0]
    for spec in specs[1:]:
        check(spec.rule == first.rule, "rule", spec.rule, f"the same rule in every run ({first.rule!r})")
        check(spec.train.X.shape == first.train.X.shape, "train", spec.train.X.shape, f"shape {first.train.X.shape} in every run")
        check(spec.W0.shape == first.W0.shape, "W0", spec.W0.shape, f"shape {first.W0.shape} in every run")
        same_batch = (spec.schedule is None) == (first.schedule is None) and (
            spec.schedule is None or spec.schedule.shape[1] == first.schedule.shape[1]
        )
        check(same_batch, "batch_size", None, "the same batch size in every run")


class ReferenceBackend:
    """theory's dense float64 updates, one run after the other (the definition; slow)."""

    def __init__(self, specs: Sequence[RunSpec], *, dtype: str = "float64", device: str = "cpu"):
        check_compatible(specs)
        check(dtype == "float64", "dtype", dtype, "'float64' for the reference backend")
        self.specs = list(specs)
        self.n_runs = len(self.specs)
        self.iteration = 0
        self._W = [np.array(s.W0, dtype=np.float64, copy=True) for s in self.specs]

    def advance(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        F_e = np.empty((steps, self.n_runs))
        F_d = np.empty((steps, self.n_runs))
        for s in range(steps):
            t = self.iteration + s
            for r, spec in enumerate(self.specs):
                if spec.schedule is not None:
                    m = batch_counts(spec.schedule[t], spec.train.n)
                else:
                    m = spec.multiplicities
                rule = "gd" if spec.rule == "sgd" else spec.rule
                with np.errstate(all="ignore"):
                    W = update(self._W[r], spec.train.X, spec.train.y, m, rule=rule, lr=spec.lr, rho=spec.rho)
                if not np.all(np.isfinite(W)):
                    raise SimulationDiverged(r, t + 1)
                self._W[r] = W
                F_e[s, r] = feature_output(W, spec.train.v_e, spec.beta_e)
                F_d[s, r] = feature_output(W, spec.train.v_d, spec.beta_d)
        self.iteration += steps
        return F_e, F_d

    def weights(self) -> np.ndarray:
        return np.stack(self._W)

    def train_outputs(self) -> np.ndarray:
        return np.stack([outputs(W, s.train.X) for W, s in zip(self._W, self.specs)])


def make_backend(name: str, specs: Sequence[RunSpec], *, dtype: str = "float64", device: str = "cpu") -> Backend:
    """Build backend ``name`` ("reference", "numba" or "torch") for ``specs``."""
    check_choice("backend", name, ("reference", "numba", "torch"))
    if name == "reference":
        return ReferenceBackend(specs, dtype=dtype, device=device)
    if name == "numba":
        from .backend_numba import NumbaBackend

        return NumbaBackend(specs, dtype=dtype, device=device)
    from .backend_torch import TorchBackend

    return TorchBackend(specs, dtype=dtype, device=device)
