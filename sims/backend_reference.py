"""The reference backend: theory's dense float64 update, one run after the other (the definition; slow).

The fast backends (:mod:`sims.backend_numba`, :mod:`sims.backend_torch`) are tested against it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from theory.model import feature_output, outputs
from theory.plumbing.config import check
from theory.updates import batch_counts, update

from .backend_contract import RunSpec, SimulationDiverged, check_compatible

__all__ = ["ReferenceBackend"]


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
