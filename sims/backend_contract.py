"""The contract between the simulator's driver and its backends: RunSpec, the Backend protocol, errors.

A backend holds the state of ``R >= 1`` independent runs that share the rule (gd/sgd/sam/usam),
the shapes ``(n, P, d, J)`` and full-batch vs minibatch, and may differ in everything else: data,
initialization, multiplicities, learning rate, rho, feature strengths, minibatch schedule.

    backend = make_backend("numba", specs, dtype="float64")   # sims.backends
    F_e, F_d = backend.advance(100)      # (100, R): feature outputs after each step
    W = backend.weights()                # (R, J, d) float64
    f = backend.train_outputs()          # (R, n) float64, at the current weights

``advance`` raises :class:`SimulationDiverged` naming the run and the iteration (1-based, counted
from the start of the run) at which the weights or outputs stopped being finite.

This module imports no backend: the reference (:mod:`sims.backend_reference`), numba
(:mod:`sims.backend_numba`) and torch (:mod:`sims.backend_torch`) backends each import it, and
:func:`sims.backends.make_backend` picks one by name.  The structured backends share the choice of
computation path (:func:`choose_path`) and its flop count (:func:`flops_per_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from theory.data import PatchData
from theory.model import check_multiplicities
from theory.plumbing.config import check, check_choice
from theory.updates import RULES

__all__ = ["RunSpec", "SimulationDiverged", "Backend", "check_compatible", "choose_path", "flops_per_step"]


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
    """R runs advanced together (see the module docstring)."""

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




def choose_path(Mb: int, d: int) -> str:
    """Gram space (``2 Mb^2 J`` flops per product) when cheaper than direct (``4 Mb d J``).

    ``Mb`` is the number of basis rows (noise rows plus the two feature rows), ``d`` the patch dimension.
    """
    return "gram" if Mb < 2 * d else "direct"


def flops_per_step(path: str, Mb: int, d: int, J: int, rule: str) -> int:
    """Floating-point operations of the matrix products of one full-batch step (elementwise work not counted).

    gram: ``2 Mb^2 J`` per product, one product for GD/SGD, two for SAM/USAM; direct: ``4 Mb d J``
    per gradient, one or two gradients.
    """
    per = 2 * Mb * Mb * J if path == "gram" else 4 * Mb * d * J
    return per * (2 if rule in ("sam", "usam") else 1)
